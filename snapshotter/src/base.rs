//! What the directory-per-snapshot backends share: the root layout
//! (`<root>/metadata.db`, `<root>/<dir>/<id>`, where `<dir>` is `snapshots`
//! or aufs's `diff`), staging of new snapshot directories, and the
//! operations that only touch metadata.
//!
//! Crash safety, as containerd: a new snapshot is built in
//! `<dir>/new-XXXXXX` and renamed to its id inside the write transaction
//! that records it; a removed snapshot's directory is deleted after its
//! record is gone. Ids are never reused, so any directory that no record
//! owns (and no in-flight staging claims) is garbage for `cleanup`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::fsutil;
use crate::storage::{MetaStore, Snapshot, Transaction, WriteTx};
use crate::{Error, Info, Kind, Labels, Result, Usage};

pub(crate) struct Base {
    root: PathBuf,
    /// Name of the directory under `root` holding one directory per snapshot.
    dir: &'static str,
    pub(crate) ms: MetaStore,
    /// Names of staging directories being built by this process.
    staging: Mutex<HashSet<OsString>>,
}

/// A staging directory; removed on drop unless renamed into place.
pub(crate) struct Staged<'a> {
    base: &'a Base,
    name: OsString,
    pub(crate) path: PathBuf,
    done: bool,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = fsutil::remove_all(&self.path) {
                tracing::warn!(error = %e, "remove staging directory");
            }
        }
        self.base.staging().remove(&self.name);
    }
}

impl Base {
    pub(crate) fn open(root: &Path) -> Result<Base> {
        Base::open_in(root, "snapshots")
    }

    /// Opens a root whose snapshot directories live in `<root>/<dir>`.
    pub(crate) fn open_in(root: &Path, dir: &'static str) -> Result<Base> {
        if !root.exists() {
            fs::create_dir_all(root).map_err(|e| Error::io("mkdir", root, e))?;
            fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| Error::io("chmod", root, e))?;
        }
        let snapshots = root.join(dir);
        if !snapshots.exists() {
            fsutil::mkdir_mode(&snapshots, 0o700)?;
        }
        let ms = MetaStore::open(&root.join("metadata.db"))?;
        Ok(Base {
            root: root.to_path_buf(),
            dir,
            ms,
            staging: Mutex::new(HashSet::new()),
        })
    }

    fn staging(&self) -> MutexGuard<'_, HashSet<OsString>> {
        // The set stays consistent even if a holder panicked.
        self.staging.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.root.join(self.dir)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.snapshots_dir().join(id)
    }

    /// Creates a staging directory `<dir>/new-XXXXXX` (mode 0700).
    pub(crate) fn stage(&self) -> Result<Staged<'_>> {
        let mut set = self.staging();
        let path = fsutil::mkdtemp_in(&self.snapshots_dir(), "new-")?;
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        set.insert(name.clone());
        Ok(Staged {
            base: self,
            name,
            path,
            done: false,
        })
    }

    /// Records snapshot `key` and moves `staged` to its id, in one write
    /// transaction. `finish` runs inside it, before the rename, with the new
    /// snapshot (to adjust the staged directory; keep it fast).
    pub(crate) fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: Labels,
        mut staged: Staged<'_>,
        finish: impl FnOnce(&mut WriteTx, &Snapshot, &Path) -> Result<()>,
    ) -> Result<Snapshot> {
        let mut renamed: Option<PathBuf> = None;
        let res = self.ms.write(|tx| {
            let s = tx.create_snapshot(kind, key, parent, labels)?;
            finish(tx, &s, &staged.path)?;
            let dst = self.snapshot_dir(&s.id);
            fs::rename(&staged.path, &dst).map_err(|e| Error::io("rename", &staged.path, e))?;
            renamed = Some(dst);
            Ok(s)
        });
        match res {
            Ok(s) => {
                staged.done = true;
                Ok(s)
            }
            Err(e) => {
                // The record was not committed: its id is never reused, so
                // the renamed directory is garbage.
                if let Some(dst) = renamed {
                    if let Err(e) = fsutil::remove_all(&dst) {
                        tracing::warn!(error = %e, "remove directory of failed snapshot");
                    }
                }
                Err(e)
            }
        }
    }

    pub(crate) fn stat(&self, key: &str) -> Result<Info> {
        self.ms.read(|tx| tx.get_info(key)).map(|(_, info, _)| info)
    }

    pub(crate) fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.ms.write(|tx| tx.update_info(info, fieldpaths))
    }

    /// Stored usage, or `live(dir)` for an active snapshot.
    pub(crate) fn usage(&self, key: &str, live: impl Fn(&str) -> PathBuf) -> Result<Usage> {
        let (id, info, usage) = self.ms.read(|tx| tx.get_info(key))?;
        if info.kind == Kind::Active {
            return fsutil::disk_usage(&live(&id));
        }
        Ok(usage)
    }

    /// Commits active `key` as `name`, measuring `measure(id)` outside the
    /// write transaction.
    pub(crate) fn commit(
        &self,
        name: &str,
        key: &str,
        labels: Labels,
        measure: impl Fn(&str) -> PathBuf,
    ) -> Result<()> {
        // Errors (missing key, not active) are reported by commit_active.
        let usage = match self.ms.read(|tx| tx.get_info(key)) {
            Ok((id, info, _)) if info.kind == Kind::Active => fsutil::disk_usage(&measure(&id))?,
            _ => Usage::default(),
        };
        self.ms
            .write(|tx| tx.commit_active(key, name, usage, labels))
            .map(drop)
    }

    /// Removes `key`'s record, then its directory.
    /// Returns the removed snapshot's id (for files a backend keeps beside
    /// the directory).
    pub(crate) fn remove(&self, key: &str) -> Result<String> {
        let (id, _) = self.ms.write(|tx| tx.remove(key))?;
        // The record is gone: a failure here leaves garbage for cleanup,
        // not an error for the caller.
        if let Err(e) = fsutil::remove_all(&self.snapshot_dir(&id)) {
            tracing::warn!(error = %e, id = %id, "remove snapshot directory");
        }
        Ok(id)
    }

    /// Collects matching infos in a read transaction, then calls `f`
    /// outside it (so `f` may call back into the snapshotter).
    pub(crate) fn walk(
        &self,
        filters: &[String],
        f: &mut dyn FnMut(Info) -> Result<()>,
    ) -> Result<()> {
        let filter = berth_filters::parse_all(filters)?;
        let infos = self.ms.read(|tx| tx.infos(&filter))?;
        for info in infos {
            f(info)?;
        }
        Ok(())
    }

    /// Removes directories under `<dir>/` that no record owns and no
    /// in-flight operation is staging.
    pub(crate) fn cleanup(&self) -> Result<()> {
        // Creations (which rename inside their write transactions) are held
        // off while the directory is scanned.
        let garbage = self.ms.exclusive(|tx| {
            let ids = tx.id_map()?;
            let names = fsutil::read_dir_names(&self.snapshots_dir())?;
            let staging = self.staging();
            Ok(names
                .into_iter()
                .filter(|n| !staging.contains(n))
                .filter(|n| !n.to_str().is_some_and(|s| ids.contains_key(s)))
                .collect::<Vec<_>>())
        })?;
        for name in garbage {
            let p = self.snapshots_dir().join(&name);
            if let Err(e) = fsutil::remove_all(&p) {
                tracing::warn!(error = %e, path = %p.display(), "cleanup");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{NativeSnapshotter, Snapshotter};

    #[test]
    fn cleanup_removes_only_orphans() {
        let d = tempfile::tempdir().unwrap();
        let sn = NativeSnapshotter::new(d.path()).unwrap();
        sn.prepare("a", "", Default::default()).unwrap();
        sn.commit("c", "a", Default::default()).unwrap();
        sn.view("v", "c", Default::default()).unwrap();
        let snaps = d.path().join("snapshots");
        std::fs::create_dir(snaps.join("new-abcdef")).unwrap();
        std::fs::create_dir_all(snaps.join("999/sub")).unwrap();
        std::fs::write(snaps.join("junk"), b"x").unwrap();
        // A staging directory in flight is left alone.
        let staged = sn.base.stage().unwrap();
        sn.cleanup().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let staged_name = staged
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut want = vec!["1".to_string(), "2".to_string(), staged_name];
        want.sort();
        assert_eq!(names, want);
        let path = staged.path.clone();
        drop(staged);
        assert!(!path.exists());
    }
}
