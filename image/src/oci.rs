//! OCI image types (image-spec v1) and the Docker equivalents as serde
//! structs, media types, platforms and chain IDs.

use std::collections::BTreeMap;

use berth_content::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The annotation naming an image in an OCI layout's index (containerd's).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation with the image's reference name (a tag, or a full name).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Label of a compressed layer blob naming its uncompressed digest.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Label prefix of GC references from content to content.
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Label prefix of GC references from content to snapshots.
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";

/// Whether a media type is an index (OCI or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST
    )
}

/// Whether a media type is a manifest (OCI or Docker schema 2).
pub fn is_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST
    )
}

/// Whether a media type is an image config.
pub fn is_config(media_type: &str) -> bool {
    matches!(media_type, MEDIA_TYPE_OCI_CONFIG | MEDIA_TYPE_DOCKER_CONFIG)
}

/// A platform (`os`/`architecture`/`variant`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// The platform of this host, in OCI terms.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            ..Platform::default()
        }
    }

    /// Parses `os[/arch[/variant]]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || Error::InvalidArgument(format!("platform {s:?}: want os[/arch[/variant]]"));
        if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let host = Platform::host();
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts
                .get(1)
                .map(|a| a.to_string())
                .unwrap_or(host.architecture),
            variant: parts.get(2).map(|v| v.to_string()).unwrap_or_default(),
            ..Platform::default()
        })
    }

    /// Whether a descriptor's platform matches this one (a descriptor
    /// without a platform matches; an empty variant matches any).
    pub fn matches(&self, other: Option<&Platform>) -> bool {
        let Some(o) = other else { return true };
        o.os == self.os
            && o.architecture == self.architecture
            && (self.variant.is_empty() || o.variant.is_empty() || o.variant == self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// A content descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor of `data` with `media_type`.
    pub fn of(media_type: &str, data: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of_bytes(data).to_string(),
            size: data.len() as i64,
            ..Descriptor::default()
        }
    }

    /// The digest, parsed (sha256 only).
    pub fn digest(&self) -> Result<Digest> {
        Digest::parse(&self.digest).map_err(|e| {
            Error::InvalidArgument(format!("descriptor digest {:?}: {e}", self.digest))
        })
    }
}

/// An image index (or Docker manifest list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The parts of an image config that unpacking needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            ..Platform::default()
        }
    }

    /// The diff IDs, parsed.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.rootfs
            .diff_ids
            .iter()
            .map(|d| {
                Digest::parse(d)
                    .map_err(|e| Error::InvalidArgument(format!("config diff_id {d:?}: {e}")))
            })
            .collect()
    }
}

/// One entry of a docker-archive `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// The chain IDs of a list of diff IDs (image-spec: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => *d,
            Some(prev) => Digest::of_bytes(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Parses JSON of a blob, naming it in errors.
pub fn from_json<T: serde::de::DeserializeOwned>(what: &str, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))
}

/// JSON of a value (compact, as containerd writes).
pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("image types serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let c = chain_ids(&[a, b]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::of_bytes(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/amd64").unwrap();
        assert!(p.matches(None));
        assert!(p.matches(Some(&Platform::parse("linux/amd64").unwrap())));
        assert!(!p.matches(Some(&Platform::parse("linux/arm64").unwrap())));
        assert!(Platform::parse("linux//x").is_err());
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().to_string(),
            "linux/arm/v7"
        );
    }
}
