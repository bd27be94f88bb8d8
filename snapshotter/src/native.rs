//! The native backend (containerd's `native`): every active snapshot is a
//! full copy of its parent in `<root>/snapshots/<id>`, handed out as a `rw`
//! bind mount; a view of a parent is a read-only bind of the parent itself
//! (no copy). Works on any filesystem.
//!
//! The copy preserves file types, modes, owners, times, extended attributes
//! and hard links (see [`crate::fsutil::copy_tree`]); it runs before the
//! write transaction, into a staging directory.

use std::path::{Path, PathBuf};

use crate::base::Base;
use crate::storage::{Snapshot, Transaction};
use crate::{fsutil, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

/// Snapshotter making full copies.
pub struct NativeSnapshotter {
    pub(crate) base: Base,
}

/// Name clients use for this backend.
pub const NAME: &str = "native";

impl NativeSnapshotter {
    /// Opens (or creates) a native snapshotter rooted at `root`.
    pub fn new(root: impl AsRef<Path>) -> Result<NativeSnapshotter> {
        Ok(NativeSnapshotter {
            base: Base::open(root.as_ref())?,
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.base.snapshot_dir(id)
    }

    fn mounts_for(&self, s: &Snapshot) -> Vec<Mount> {
        let ro = if s.kind == Kind::View { "ro" } else { "rw" };
        // A view of a committed parent is that parent, read-only (as
        // containerd's native snapshotter): no copy.
        let id = match (s.kind, s.parent_ids.first()) {
            (Kind::View, Some(parent)) => parent,
            _ => &s.id,
        };
        vec![Mount {
            kind: "bind".into(),
            source: self.dir(id).to_string_lossy().into_owned(),
            options: vec!["rbind".into(), ro.into()],
        }]
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        // Fail fast before copying anything (create_snapshot checks again).
        if self.base.ms.read(|tx| tx.record(key))?.is_some() {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        let staged = self.base.stage()?;
        // The parent is committed, so its directory does not change; if it
        // is missing or not committed, create_snapshot says so below.
        let parent_id = if parent.is_empty() {
            None
        } else {
            match self.base.ms.read(|tx| tx.get_info(parent)) {
                Ok((id, info, _)) if info.kind == Kind::Committed => Some(id),
                _ => None,
            }
        };
        match &parent_id {
            Some(id) if kind != Kind::View => fsutil::copy_tree(&self.dir(id), &staged.path)?,
            _ => std::fs::set_permissions(
                &staged.path,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .map_err(|e| Error::io("chmod", &staged.path, e))?,
        }
        let s = self
            .base
            .create(kind, key, parent, labels, staged, |_, s, _| {
                if s.parent_ids.first() != parent_id.as_ref() {
                    // Removed and re-created under the same name meanwhile.
                    return Err(Error::FailedPrecondition(format!(
                        "parent {parent} changed while preparing {key}; retry"
                    )));
                }
                Ok(())
            })?;
        Ok(self.mounts_for(&s))
    }
}

impl Snapshotter for NativeSnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.base.stat(key)
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.base.update(info, fieldpaths)
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        self.base.usage(key, |id| self.dir(id))
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let s = self.base.ms.read(|tx| tx.get_snapshot(key))?;
        Ok(self.mounts_for(&s))
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.base.commit(name, key, labels, |id| self.dir(id))
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.base.remove(key).map(drop)
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        self.base.walk(filters, f)
    }

    fn cleanup(&self) -> Result<()> {
        self.base.cleanup()
    }
}
