//! The stores image operations work on, as traits: the CLI implements them
//! over gRPC, the daemon and tests over the metadata store. All blocking.

use std::collections::BTreeMap;
use std::io::Read;

use berth_content::Digest;
use berth_snapshotter::Mount;

use crate::error::Result;
use crate::oci::Descriptor;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// What a content store knows about a blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobInfo {
    pub size: u64,
    pub labels: Labels,
}

/// A (namespaced, leased) content store.
pub trait ContentStore {
    /// The blob's info; `None` if the store does not have it.
    fn info(&self, digest: &Digest) -> Result<Option<BlobInfo>>;
    /// A reader of the whole blob.
    fn reader(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>>;
    /// Writes a blob from `data` under ingest `reference`; `expected` (if
    /// known) is verified. A blob already present is not an error. Returns
    /// the digest and size written.
    fn write(
        &self,
        reference: &str,
        expected: Option<(&Digest, u64)>,
        data: &mut dyn Read,
        labels: &Labels,
    ) -> Result<(Digest, u64)>;
    /// Sets (or, with an empty value, removes) each of `labels` on a blob,
    /// leaving its other labels.
    fn set_labels(&self, digest: &Digest, labels: &Labels) -> Result<()>;

    /// The whole blob, if it is at most `limit` bytes (manifests, configs).
    fn read_small(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let info = self
            .info(digest)?
            .ok_or_else(|| crate::Error::NotFound(format!("content {digest}")))?;
        if info.size > limit {
            return Err(crate::Error::InvalidArgument(format!(
                "content {digest}: {} bytes, more than {limit} expected",
                info.size
            )));
        }
        let mut buf = Vec::with_capacity(info.size as usize);
        self.reader(digest)?
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| crate::Error::io("read content", digest.to_string(), e))?;
        Ok(buf)
    }
}

/// One snapshotter of a (namespaced, leased) snapshot store.
pub trait SnapshotStore {
    /// The snapshotter's name (for `containerd.io/gc.ref.snapshot.<name>`).
    fn name(&self) -> &str;
    /// Whether a snapshot `key` exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// A new active snapshot on `parent` ("" for none).
    fn prepare(&self, key: &str, parent: &str, labels: &Labels) -> Result<Vec<Mount>>;
    /// Commits active `key` as `name`.
    fn commit(&self, name: &str, key: &str, labels: &Labels) -> Result<()>;
    /// Removes a snapshot.
    fn remove(&self, key: &str) -> Result<()>;
}

/// Applies a layer blob onto mounts (the Diff service, or
/// [`crate::mounts::apply_to_mounts`] locally) and returns the
/// uncompressed digest it applied.
pub trait LayerApplier {
    fn apply(&self, layer: &Descriptor, mounts: &[Mount]) -> Result<Digest>;
}

/// Image records.
pub trait ImageStore {
    /// The image's target; `None` if there is no such image.
    fn get(&self, name: &str) -> Result<Option<Descriptor>>;
    /// Creates the image, or points an existing one at `target`.
    fn put(&self, name: &str, target: &Descriptor) -> Result<()>;
}
