//! berthd's TOML configuration: defaults, loading, and command-line overrides.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default unix socket the daemon serves on.
pub const DEFAULT_ADDRESS: &str = "/run/berth/berthd.sock";
/// Default persistent root.
pub const DEFAULT_ROOT: &str = "/var/lib/berth";
/// Default runtime state directory (tmpfs on most hosts).
pub const DEFAULT_STATE: &str = "/run/berth";
/// Largest gRPC message accepted or sent, as containerd.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Config schema version, kept for containerd familiarity.
    pub version: u32,
    /// Persistent data: metadata database and content store.
    pub root: PathBuf,
    /// Ephemeral state: sockets, runtime bundles.
    pub state: PathBuf,
    pub grpc: GrpcConfig,
    pub metadata: MetadataConfig,
    pub gc: GcConfig,
    pub debug: DebugConfig,
    pub snapshotter: SnapshotterConfig,
}

/// Settings of the snapshotter backends that have any.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotterConfig {
    /// Block snapshotter: pool driver (`auto`, `loop`, `dm-thin`), sizes,
    /// filesystems.
    pub devmapper: berth_snapshotter::devmapper::DevmapperConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Unix socket path. Berth never listens on TCP.
    pub address: PathBuf,
    /// Numeric uid/gid owning the socket (mode 0660).
    pub uid: u32,
    pub gid: u32,
    pub max_recv_message_size: usize,
    pub max_send_message_size: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KvBackend {
    /// redb with immediate durability (default).
    Redb,
    /// sled; only when berthd is built with the `sled` feature.
    Sled,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    pub backend: KvBackend,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Delay between a deletion and the background collection it triggers,
    /// so bursts of deletions share one collection.
    pub schedule_delay_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// tracing filter, e.g. "info" or "berth_services=debug".
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 2,
            root: DEFAULT_ROOT.into(),
            state: DEFAULT_STATE.into(),
            grpc: GrpcConfig::default(),
            metadata: MetadataConfig::default(),
            gc: GcConfig::default(),
            debug: DebugConfig::default(),
            snapshotter: SnapshotterConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: DEFAULT_ADDRESS.into(),
            uid: 0,
            gid: 0,
            max_recv_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_send_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            backend: KvBackend::Redb,
        }
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            schedule_delay_ms: 100,
        }
    }
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path`; a missing file at the default location means defaults.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The full default configuration as TOML (`berthd config default`).
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.root.is_absolute() || !self.state.is_absolute() {
            return Err(ConfigError::Invalid(
                "root and state must be absolute paths".into(),
            ));
        }
        if !self.grpc.address.is_absolute() {
            return Err(ConfigError::Invalid(
                "grpc.address must be an absolute unix socket path".into(),
            ));
        }
        if self.grpc.max_recv_message_size == 0 || self.grpc.max_send_message_size == 0 {
            return Err(ConfigError::Invalid(
                "grpc message size limits must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_toml() {
        let text = Config::default_toml();
        assert!(text.contains("/run/berth/berthd.sock"), "{text}");
        let parsed: Config = toml::from_str(&text).expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("bogus = 1").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn partial_config_keeps_defaults() {
        let c: Config = toml::from_str("root = \"/tmp/x\"\n[grpc]\naddress = \"/tmp/x.sock\"\n")
            .expect("parses");
        assert_eq!(c.root, PathBuf::from("/tmp/x"));
        assert_eq!(c.state, PathBuf::from(DEFAULT_STATE));
        assert_eq!(c.grpc.max_recv_message_size, DEFAULT_MAX_MESSAGE_SIZE);
    }
}
