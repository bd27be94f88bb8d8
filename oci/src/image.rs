//! The runtime part of an image config: what a container runs by default.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// `config` of an OCI (or Docker schema 2) image config document: the process defaults.
///
/// Fields keep the image-spec's JSON names; `null` reads as empty, as Docker writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `uid`, `uid:gid`, `name`, `name:group`, ... (empty: root).
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    /// `KEY=value` entries.
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub working_dir: String,
    #[serde(default, deserialize_with = "null_default")]
    pub stop_signal: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// The image config document, for its `config` member.
#[derive(Deserialize)]
struct Document {
    #[serde(default, deserialize_with = "null_default")]
    config: ImageConfig,
}

fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ImageConfig {
    /// Reads the `config` member of an image config blob (the document the manifest's
    /// `config` descriptor points at). A document without one gives the empty config.
    pub fn from_json(document: &[u8]) -> Result<ImageConfig> {
        serde_json::from_slice::<Document>(document)
            .map(|d| d.config)
            .map_err(|e| Error::InvalidArgument(format!("image config: {e}")))
    }

    /// Entrypoint followed by `args`, or by the image's Cmd when `args` is empty (containerd's
    /// `WithImageConfigArgs`).
    pub fn args(&self, args: &[String]) -> Vec<String> {
        let cmd = if args.is_empty() { &self.cmd } else { args };
        self.entrypoint.iter().chain(cmd).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_config_member() {
        let doc = br#"{
            "architecture": "amd64", "os": "linux",
            "config": {
                "User": "1000:1000", "Env": ["PATH=/bin", "A=b"], "Entrypoint": ["/init"],
                "Cmd": ["serve", "--port=80"], "WorkingDir": "/srv", "StopSignal": "SIGQUIT",
                "Labels": {"k": "v"}, "ExposedPorts": {"80/tcp": {}}
            },
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let c = ImageConfig::from_json(doc).unwrap();
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.env, ["PATH=/bin", "A=b"]);
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.stop_signal, "SIGQUIT");
        assert_eq!(c.labels["k"], "v");
        assert_eq!(c.args(&[]), ["/init", "serve", "--port=80"]);
        assert_eq!(c.args(&["x".into()]), ["/init", "x"]);
    }

    #[test]
    fn nulls_and_absent_members_are_empty() {
        let c = ImageConfig::from_json(br#"{"config": {"Env": null, "Cmd": null}}"#).unwrap();
        assert_eq!(c, ImageConfig::default());
        let c = ImageConfig::from_json(br#"{"config": null}"#).unwrap();
        assert_eq!(c, ImageConfig::default());
        let c = ImageConfig::from_json(br#"{"rootfs": {}}"#).unwrap();
        assert_eq!(c, ImageConfig::default());
        let e = ImageConfig::from_json(b"[1]").unwrap_err();
        assert_eq!(e.kind(), berth_errdefs::ErrorKind::InvalidArgument);
    }
}
