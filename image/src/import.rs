//! Importing image archives: OCI image layout tars and docker-archive
//! (`docker save`) tars, as containerd's `archive.ImportIndex` and client
//! `Import` do.
//!
//! The tar is read once, as a stream: every file but the small metadata
//! files (`index.json`, `oci-layout`, `manifest.json`, `repositories`) goes
//! straight into the content store, verified against its name when the name
//! is `blobs/<alg>/<hex>`. Then images are named and recorded, and the GC
//! labels are set on indexes and manifests (containerd's
//! `containerd.io/gc.ref.content.*`).
//!
//! Naming: `io.containerd.image.name` wins; else
//! `org.opencontainers.image.ref.name`, where a bare tag becomes
//! `<base>:<tag>` (base from the options, or `import-<yyyy-mm-dd>` as
//! ctr does) and a full reference stays (or, with a base, only if it starts
//! with it). Docker archives name images from `RepoTags`, normalised
//! (`busybox:1` -> `docker.io/library/busybox:1`), over a synthesised
//! Docker schema 2 manifest.

use std::collections::HashMap;
use std::io::Read;

use berth_archive::Compression;

use crate::error::{Error, Result};
use crate::oci::{
    from_json, to_json, Descriptor, DockerArchiveEntry, ImageConfig, Index, Manifest,
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST,
};
use crate::store::{ContentStore, ImageStore, Labels};
use crate::walk::{label_tree, MAX_JSON};

/// Options of [`import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Base name for bare tags (and the prefix full references must have).
    pub base_name: Option<String>,
}

/// One imported image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub name: String,
    pub target: Descriptor,
}

/// A file of the archive written to the content store.
#[derive(Debug, Clone)]
struct Blob {
    digest: String,
    size: i64,
    compression: Compression,
}

/// Records the first bytes read through it.
struct Peek<'a> {
    inner: &'a mut dyn Read,
    head: Vec<u8>,
}

impl Read for Peek<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.head.len() < 8 {
            let take = (8 - self.head.len()).min(n);
            self.head.extend_from_slice(&buf[..take]);
        }
        Ok(n)
    }
}

const METADATA: &[&str] = &["index.json", "oci-layout", "manifest.json", "repositories"];

fn clean(path: &str) -> String {
    path.trim_start_matches("./").to_string()
}

/// Imports the archive read from `tar` into `content` and `images`.
pub fn import(
    tar: impl Read,
    content: &dyn ContentStore,
    images: &dyn ImageStore,
    opts: &ImportOptions,
) -> Result<Vec<Imported>> {
    let mut archive = tar::Archive::new(tar);
    let mut blobs: HashMap<String, Blob> = HashMap::new();
    let mut meta: HashMap<String, Vec<u8>> = HashMap::new();
    let entries = archive
        .entries()
        .map_err(|e| Error::InvalidArgument(format!("image archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::InvalidArgument(format!("image archive: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        let size = entry.size();
        if METADATA.contains(&path.as_str()) {
            if size > MAX_JSON {
                return Err(Error::InvalidArgument(format!(
                    "image archive: {path} is {size} bytes"
                )));
            }
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(|e| Error::InvalidArgument(format!("image archive: {path}: {e}")))?;
            meta.insert(path, buf);
            continue;
        }
        let expected = match path.strip_prefix("blobs/") {
            Some(rest) => match rest.split_once('/') {
                Some((alg, hex)) => Some(
                    berth_content::Digest::parse(&format!("{alg}:{hex}")).map_err(|e| {
                        Error::InvalidArgument(format!("image archive: blob {path}: {e}"))
                    })?,
                ),
                None => None,
            },
            None => None,
        };
        let mut peek = Peek {
            inner: &mut entry,
            head: Vec::new(),
        };
        let reference = format!("import-{path}");
        let (digest, written) = content.write(
            &reference,
            expected.as_ref().map(|d| (d, size)),
            &mut peek,
            &Labels::new(),
        )?;
        let compression = Compression::detect(&peek.head);
        blobs.insert(
            path,
            Blob {
                digest: digest.to_string(),
                size: written as i64,
                compression,
            },
        );
    }

    let imported = if let Some(index) = meta.get("index.json") {
        let index: Index = from_json("index.json", index)?;
        oci_images(&index, opts)
    } else if let Some(manifest) = meta.get("manifest.json") {
        let entries: Vec<DockerArchiveEntry> = from_json("manifest.json", manifest)?;
        docker_images(&entries, &blobs, content)?
    } else {
        return Err(Error::InvalidArgument(
            "image archive has neither index.json (OCI layout) nor manifest.json (docker-archive)"
                .into(),
        ));
    };
    for img in &imported {
        label_tree(content, &img.target)?;
        images.put(&img.name, &img.target)?;
    }
    Ok(imported)
}

fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The name of an index entry, as containerd's client names it.
fn oci_name(d: &Descriptor, opts: &ImportOptions) -> Option<String> {
    if let Some(n) = d
        .annotations
        .get(ANNOTATION_IMAGE_NAME)
        .filter(|n| !n.is_empty())
    {
        return Some(n.clone());
    }
    let r = d
        .annotations
        .get(ANNOTATION_REF_NAME)
        .filter(|n| !n.is_empty())?;
    let full = r.contains(['/', ':', '@']);
    match &opts.base_name {
        Some(base) if full => r.starts_with(base.as_str()).then(|| r.clone()),
        Some(base) => Some(format!("{base}:{r}")),
        None if full => Some(r.clone()),
        None => Some(format!("import-{}:{r}", today())),
    }
}

fn oci_images(index: &Index, opts: &ImportOptions) -> Vec<Imported> {
    index
        .manifests
        .iter()
        .filter_map(|m| {
            oci_name(m, opts).map(|name| Imported {
                name,
                target: m.clone(),
            })
        })
        .collect()
}

/// `busybox` -> `docker.io/library/busybox:latest`, `a/b:1` ->
/// `docker.io/a/b:1`, `host.io/a:1` kept (Docker's familiar names).
pub fn normalize_docker_name(name: &str) -> String {
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    let mut full = match rest {
        Some(_) if first.contains(['.', ':']) || first == "localhost" => name.to_string(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        full.push_str(":latest");
    }
    full
}

fn docker_images(
    entries: &[DockerArchiveEntry],
    blobs: &HashMap<String, Blob>,
    content: &dyn ContentStore,
) -> Result<Vec<Imported>> {
    let find = |p: &str| {
        blobs
            .get(&clean(p))
            .ok_or_else(|| Error::InvalidArgument(format!("docker archive: {p} is missing")))
    };
    let mut out = Vec::new();
    for e in entries {
        let config = find(&e.config)?;
        let config_desc = Descriptor {
            media_type: MEDIA_TYPE_DOCKER_CONFIG.into(),
            digest: config.digest.clone(),
            size: config.size,
            ..Descriptor::default()
        };
        let mut layers = Vec::new();
        for l in &e.layers {
            let b = find(l)?;
            layers.push(Descriptor {
                media_type: b.compression.docker_media_type().into(),
                digest: b.digest.clone(),
                size: b.size,
                ..Descriptor::default()
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_DOCKER_MANIFEST.into(),
            config: config_desc.clone(),
            layers,
            annotations: Default::default(),
        };
        let data = to_json(&manifest);
        let mut desc = Descriptor::of(MEDIA_TYPE_DOCKER_MANIFEST, &data);
        let d = desc.digest()?;
        content.write(
            &format!("import-manifest-{d}"),
            Some((&d, data.len() as u64)),
            &mut &data[..],
            &Labels::new(),
        )?;
        // The platform, from the config.
        if let Ok(cfg) = crate::walk::read_json::<ImageConfig>(content, &config_desc) {
            if !cfg.os.is_empty() {
                desc.platform = Some(cfg.platform());
            }
        }
        for tag in e.repo_tags.iter().flatten() {
            out.push(Imported {
                name: normalize_docker_name(tag),
                target: desc.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names() {
        assert_eq!(
            normalize_docker_name("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize_docker_name("a/b:1"), "docker.io/a/b:1");
        assert_eq!(normalize_docker_name("reg.io:5000/a:1"), "reg.io:5000/a:1");
        assert_eq!(normalize_docker_name("localhost/a"), "localhost/a:latest");
    }

    #[test]
    fn oci_names() {
        let mut d = Descriptor::default();
        d.annotations
            .insert(ANNOTATION_REF_NAME.into(), "1.0".into());
        let o = ImportOptions {
            base_name: Some("foo/bar".into()),
        };
        assert_eq!(oci_name(&d, &o).as_deref(), Some("foo/bar:1.0"));
        assert!(oci_name(&d, &ImportOptions::default())
            .unwrap()
            .starts_with("import-20"));
        d.annotations
            .insert(ANNOTATION_IMAGE_NAME.into(), "x.io/y:z".into());
        assert_eq!(oci_name(&d, &o).as_deref(), Some("x.io/y:z"));
    }
}
