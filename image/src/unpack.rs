//! Unpacking an image into a snapshotter by chain ID, as containerd's
//! unpacker: for each layer, Stat the chain ID; if absent, Prepare
//! `extract-<unique> <chainID>` on the parent chain ID, apply the layer,
//! check the diff ID, Commit as the chain ID. Then the config blob is
//! labelled `containerd.io/gc.ref.snapshot.<snapshotter>=<top chainID>` so
//! the image keeps its snapshots alive.

use berth_content::Digest;

use crate::error::{Error, Result};
use crate::oci::{chain_ids, Descriptor, Platform, LABEL_GC_REF_SNAPSHOT, LABEL_UNCOMPRESSED};
use crate::store::{ContentStore, Labels, LayerApplier, SnapshotStore};
use crate::walk::resolve;

/// What an unpack did.
#[derive(Debug, Clone, Default)]
pub struct Unpacked {
    /// The manifest unpacked.
    pub manifest: Descriptor,
    /// Chain IDs, bottom first; the last is the image's rootfs.
    pub chain: Vec<Digest>,
    /// How many layers were applied (the others existed already).
    pub applied: usize,
}

/// Label on snapshots being extracted (containerd's).
const LABEL_SNAPSHOT_UNCOMPRESSED: &str = "containerd.io/snapshot.ref";

/// Unpacks the image `target` for `platform`. `progress` is called after
/// each layer with (layer index, layer count).
pub fn unpack(
    content: &dyn ContentStore,
    snapshots: &dyn SnapshotStore,
    applier: &dyn LayerApplier,
    target: &Descriptor,
    platform: &Platform,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Unpacked> {
    let (manifest_desc, manifest, config) = resolve(content, target, platform)?;
    let diff_ids = config.diff_ids()?;
    let chain = chain_ids(&diff_ids);
    let mut applied = 0;
    for (i, layer) in manifest.layers.iter().enumerate() {
        let chain_id = chain[i].to_string();
        if snapshots.exists(&chain_id)? {
            progress(i + 1, chain.len());
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].to_string()
        };
        let key = format!("extract-{} {chain_id}", uuid::Uuid::new_v4().simple());
        let mut labels = Labels::new();
        labels.insert(LABEL_SNAPSHOT_UNCOMPRESSED.into(), chain_id.clone());
        let mounts = snapshots.prepare(&key, &parent, &labels)?;
        let done = applier.apply(layer, &mounts).and_then(|diff| {
            if diff != diff_ids[i] {
                return Err(Error::InvalidArgument(format!(
                    "layer {}: wrong diff ID {diff}, the config says {}",
                    layer.digest, diff_ids[i]
                )));
            }
            snapshots.commit(&chain_id, &key, &labels)
        });
        match done {
            Ok(()) => {}
            Err(e) if e.kind() == berth_errdefs::ErrorKind::AlreadyExists => {
                // Unpacked meanwhile by someone else.
                let _ = snapshots.remove(&key);
            }
            Err(e) => {
                if let Err(r) = snapshots.remove(&key) {
                    tracing::warn!(key, error = %r, "remove failed extraction snapshot");
                }
                return Err(e);
            }
        }
        // Record the uncompressed digest on the layer blob if missing.
        let ld = layer.digest()?;
        if let Some(info) = content.info(&ld)? {
            if !info.labels.contains_key(LABEL_UNCOMPRESSED) {
                let mut l = Labels::new();
                l.insert(LABEL_UNCOMPRESSED.into(), diff_ids[i].to_string());
                content.set_labels(&ld, &l)?;
            }
        }
        applied += 1;
        progress(i + 1, chain.len());
    }
    if let Some(top) = chain.last() {
        let mut l = Labels::new();
        l.insert(
            format!("{LABEL_GC_REF_SNAPSHOT}.{}", snapshots.name()),
            top.to_string(),
        );
        content.set_labels(&manifest.config.digest()?, &l)?;
    }
    Ok(Unpacked {
        manifest: manifest_desc,
        chain,
        applied,
    })
}
