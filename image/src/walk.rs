//! Walking an image: index -> manifests (by platform) -> config + layers,
//! the GC labels that link them, and completeness checks.

use berth_content::Digest;

use crate::error::{Error, Result};
use crate::oci::{
    from_json, is_config, is_index, is_manifest, Descriptor, ImageConfig, Index, Manifest,
    Platform, LABEL_GC_REF_CONTENT,
};
use crate::store::{ContentStore, Labels};

/// Largest index, manifest or config read into memory.
pub const MAX_JSON: u64 = 16 << 20;

/// Which manifests of an index to take.
#[derive(Debug, Clone)]
pub enum Platforms {
    /// Only manifests matching this platform (or without a platform).
    One(Platform),
    /// Every manifest.
    All,
}

impl Platforms {
    /// The host's platform.
    pub fn host() -> Platforms {
        Platforms::One(Platform::host())
    }

    fn matches(&self, d: &Descriptor) -> bool {
        match self {
            Platforms::All => true,
            Platforms::One(p) => p.matches(d.platform.as_ref()),
        }
    }
}

/// The children of a descriptor, read from the store: an index's manifests
/// (filtered by `platforms`), a manifest's config and layers; none for
/// other media types.
pub fn children(
    store: &dyn ContentStore,
    desc: &Descriptor,
    platforms: &Platforms,
) -> Result<Vec<Descriptor>> {
    if is_index(&desc.media_type) {
        let index: Index = read_json(store, desc)?;
        Ok(index
            .manifests
            .into_iter()
            .filter(|m| platforms.matches(m))
            .collect())
    } else if is_manifest(&desc.media_type) {
        let m: Manifest = read_json(store, desc)?;
        let mut out = vec![m.config];
        out.extend(m.layers);
        Ok(out)
    } else {
        Ok(Vec::new())
    }
}

/// Reads a JSON blob.
pub fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn ContentStore,
    desc: &Descriptor,
) -> Result<T> {
    let d = desc.digest()?;
    let data = store.read_small(&d, MAX_JSON)?;
    from_json(&format!("{} {}", desc.media_type, desc.digest), &data)
}

/// The GC labels containerd puts on a blob linking it to its children:
/// `containerd.io/gc.ref.content.m.<i>` on an index,
/// `containerd.io/gc.ref.content.config` and `.l.<i>` on a manifest.
pub fn gc_labels(desc: &Descriptor, children: &[Descriptor]) -> Labels {
    let mut labels = Labels::new();
    if is_index(&desc.media_type) {
        for (i, c) in children.iter().enumerate() {
            labels.insert(format!("{LABEL_GC_REF_CONTENT}.m.{i}"), c.digest.clone());
        }
    } else if is_manifest(&desc.media_type) {
        for (i, c) in children.iter().enumerate() {
            if i == 0 && is_config(&c.media_type) {
                labels.insert(format!("{LABEL_GC_REF_CONTENT}.config"), c.digest.clone());
            } else {
                let n = if is_config(&children[0].media_type) {
                    i - 1
                } else {
                    i
                };
                labels.insert(format!("{LABEL_GC_REF_CONTENT}.l.{n}"), c.digest.clone());
            }
        }
    }
    labels
}

/// Sets the GC labels on every index and manifest reachable from `target`
/// that the store has (all platforms: an index references all it lists).
pub fn label_tree(store: &dyn ContentStore, target: &Descriptor) -> Result<()> {
    let mut stack = vec![target.clone()];
    while let Some(d) = stack.pop() {
        if !(is_index(&d.media_type) || is_manifest(&d.media_type)) {
            continue;
        }
        if store.info(&d.digest()?)?.is_none() {
            continue;
        }
        let kids = children(store, &d, &Platforms::All)?;
        let labels = gc_labels(&d, &kids);
        if !labels.is_empty() {
            store.set_labels(&d.digest()?, &labels)?;
        }
        stack.extend(
            kids.into_iter()
                .filter(|k| is_index(&k.media_type) || is_manifest(&k.media_type)),
        );
    }
    Ok(())
}

/// The manifest of `target` for `platform` (the first match in an index,
/// recursively), with its descriptor and config.
pub fn resolve(
    store: &dyn ContentStore,
    target: &Descriptor,
    platform: &Platform,
) -> Result<(Descriptor, Manifest, ImageConfig)> {
    let platforms = Platforms::One(platform.clone());
    let mut stack = vec![target.clone()];
    while let Some(d) = stack.pop() {
        if is_manifest(&d.media_type) {
            let m: Manifest = read_json(store, &d)?;
            let config: ImageConfig = read_json(store, &m.config)?;
            if d.platform.is_none()
                && !config.os.is_empty()
                && !platform.matches(Some(&config.platform()))
            {
                continue;
            }
            if config.rootfs.diff_ids.len() != m.layers.len() {
                return Err(Error::InvalidArgument(format!(
                    "manifest {}: {} layers but the config lists {} diff IDs",
                    d.digest,
                    m.layers.len(),
                    config.rootfs.diff_ids.len()
                )));
            }
            return Ok((d, m, config));
        }
        if is_index(&d.media_type) {
            let mut kids = children(store, &d, &platforms)?;
            kids.reverse();
            stack.extend(kids);
        }
    }
    Err(Error::NotFound(format!(
        "no manifest for platform {platform} in {}",
        target.digest
    )))
}

/// What `check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completeness {
    /// Blobs the store has, and their total size.
    pub present: usize,
    pub present_size: u64,
    /// Blobs it lacks.
    pub missing: Vec<Digest>,
    pub total_size: u64,
}

impl Completeness {
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Checks which blobs of the image for `platforms` the store has.
pub fn check(
    store: &dyn ContentStore,
    target: &Descriptor,
    platforms: &Platforms,
) -> Result<Completeness> {
    let mut c = Completeness::default();
    let mut stack = vec![target.clone()];
    while let Some(d) = stack.pop() {
        let digest = d.digest()?;
        c.total_size += d.size.max(0) as u64;
        if store.info(&digest)?.is_none() {
            c.missing.push(digest);
            continue;
        }
        c.present += 1;
        c.present_size += d.size.max(0) as u64;
        stack.extend(children(store, &d, platforms)?);
    }
    Ok(c)
}
