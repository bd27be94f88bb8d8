//! Snapshotters: containerd's layered-filesystem abstraction.
//!
//! A snapshot is *active* (writable, from `prepare`), a *view* (read-only,
//! from `view`) or *committed* (immutable, from `commit`, usable as a
//! parent). Each backend keeps its own small metadata (ids, kind, parent,
//! labels, usage) transactionally under its root and hands out [`Mount`]
//! lists that a client applies to get the filesystem.
//!
//! Map:
//! - [`overlay::OverlaySnapshotter`] (`overlayfs`) and
//!   [`native::NativeSnapshotter`] (`native`): the backends, each
//!   `new(root)`; they share the root layout in `base` (private).
//! - [`devmapper::DevmapperSnapshotter`] (`devmapper`): thin block devices
//!   with their own filesystem, children as block-level clones (loop
//!   driver: reflinked image files; dm-thin driver: `dmsetup`),
//!   `new(root, &DevmapperConfig)`.
//! - [`aufs::AufsSnapshotter`] (`aufs`): AUFS branches with whiteout files,
//!   mounted by kernel aufs or the `berth-aufs` FUSE union.
//! - [`storage`]: a backend's transactional metadata (redb `metadata.db`).
//! - [`mount`]: apply and undo [`Mount`] lists (long overlay lowerdirs too).
//! - [`fsutil`]: disk usage, faithful tree copy, xattrs.
//! - [`testsuite`]: the conformance suite every backend and every layer
//!   above (metadata, gRPC) runs: [`testsuite::snapshotter_suite`],
//!   [`testsuite::run_named`], [`snapshotter_suite_tests!`].
//!
//! Architecture invariants: no gRPC, no namespaces, no knowledge of the
//! daemon's metadata store; keys here are whatever the caller (the metadata
//! layer) chooses. Everything is synchronous and blocking.

pub mod aufs;
mod base;
pub mod devmapper;
mod error;
pub mod fsutil;
pub mod mount;
pub mod native;
pub mod overlay;
pub mod storage;
pub mod testsuite;

pub use aufs::AufsSnapshotter;
pub use devmapper::{DevmapperConfig, DevmapperSnapshotter};
pub use error::{Error, Result};
pub use mount::{mount_all, unmount, unmount_all, MountGuard};
pub use native::NativeSnapshotter;
pub use overlay::OverlaySnapshotter;

use std::collections::BTreeMap;
use std::time::SystemTime;

/// Labels of a snapshot.
pub type Labels = BTreeMap<String, String>;

/// What a snapshot is, as containerd's `snapshots.Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// containerd's spelling, used by filters (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A snapshot's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub kind: Kind,
    /// The key (active, view) or name (committed).
    pub name: String,
    /// Name of the committed parent; empty for none.
    pub parent: String,
    pub labels: Labels,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Disk usage of one snapshot's own layer (not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes.
    pub size: i64,
    pub inodes: i64,
}

/// One mount, as containerd's `mount.Mount`: mount(2) type, source, options.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// A snapshotter backend. Semantics (and error kinds) are containerd's
/// `snapshots.Snapshotter`:
/// - `prepare`/`view` of an existing key: AlreadyExists; parent missing:
///   NotFound; parent not committed: InvalidArgument.
/// - `commit` of a key that is not active: FailedPrecondition (or NotFound);
///   the active key is gone afterwards, `name` is committed.
/// - `remove` of a snapshot with children: FailedPrecondition.
/// - `update` changes labels only: no paths = replace all labels;
///   `labels.<k>` = set/remove one; any other path: InvalidArgument.
/// - `walk` calls `f` for every snapshot matching any of `filters`
///   (containerd filter syntax over `kind`, `name`, `parent`, `labels.<k>`);
///   `f` may call back into the snapshotter (e.g. `stat`) without deadlock.
pub trait Snapshotter: Send + Sync {
    fn stat(&self, key: &str) -> Result<Info>;
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;
    fn usage(&self, key: &str) -> Result<Usage>;
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;
    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;
    fn remove(&self, key: &str) -> Result<()>;
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()>;
    /// Removes on-disk leftovers no snapshot owns (crash remnants).
    fn cleanup(&self) -> Result<()>;
    /// Bytes of `key` shared with other snapshots (block-sharing backends
    /// such as devmapper: its parent chain and siblings), not counted in
    /// [`usage`](Snapshotter::usage); `None` where sharing is not tracked.
    fn shared_usage(&self, key: &str) -> Result<Option<i64>> {
        let _ = key;
        Ok(None)
    }
    /// Releases what the backend holds beyond its files (devices, mounts)
    /// at daemon shutdown; a no-op for most backends.
    fn close(&self) {}
    /// Why the backend cannot work on this host, found by a self-check that
    /// opening left running (waits for it); `None` when it works.
    fn init_error(&self) -> Option<String> {
        None
    }
}
