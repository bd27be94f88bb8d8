//! The overlay backend (containerd's `overlayfs`): kernel overlayfs.
//!
//! Layout: `<root>/snapshots/<id>/fs` (the snapshot's own layer: the upper
//! directory while active, a lower directory once committed) and
//! `<root>/snapshots/<id>/work` (overlay's workdir, active snapshots only).
//!
//! Mounts, as containerd:
//! - no parent: a bind of `fs` (`rw`, or `ro` for a view);
//! - a view with one parent: a read-only bind of the parent's `fs`;
//! - a view with more parents: overlay with `lowerdir=` only (read-only);
//! - an active snapshot with parents: overlay `workdir,upperdir,lowerdir`.
//!
//! `index=off` is added when the kernel has that parameter, so the same
//! lower directories can be used by several mounts at once.

use std::path::{Path, PathBuf};

use crate::base::Base;
use crate::mount::MountGuard;
use crate::storage::{Snapshot, Transaction};
use crate::{fsutil, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

/// Snapshotter on kernel overlayfs.
pub struct OverlaySnapshotter {
    base: Base,
    /// Extra overlay options (`index=off`).
    options: Vec<String>,
}

/// Name clients use for this backend.
pub const NAME: &str = "overlayfs";

impl OverlaySnapshotter {
    /// Opens (or creates) an overlay snapshotter rooted at `root`. Fails with
    /// Unsupported if the kernel has no overlayfs or it cannot be mounted
    /// with its upper directory on the filesystem of `root`.
    pub fn new(root: impl AsRef<Path>) -> Result<OverlaySnapshotter> {
        let root = root.as_ref();
        check_kernel()?;
        let base = Base::open(root)?;
        let mut options = Vec::new();
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            options.push("index=off".to_string());
        }
        // Leftovers of a check interrupted by a crash (the metadata lock
        // taken by Base::open keeps other instances out of this root).
        for name in fsutil::read_dir_names(root)? {
            if name.to_string_lossy().starts_with(CHECK_PREFIX) {
                let p = root.join(&name);
                crate::mount::unmount_recursive(&p)?;
                fsutil::remove_all(&p)?;
            }
        }
        check_mount(root, &options)?;
        Ok(OverlaySnapshotter { base, options })
    }

    fn upper(&self, id: &str) -> PathBuf {
        self.base.snapshot_dir(id).join("fs")
    }

    fn work(&self, id: &str) -> PathBuf {
        self.base.snapshot_dir(id).join("work")
    }

    fn mounts_for(&self, s: &Snapshot) -> Vec<Mount> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let ro = if s.kind == Kind::View { "ro" } else { "rw" };
        if s.parent_ids.is_empty() {
            return vec![Mount {
                kind: "bind".into(),
                source: path(self.upper(&s.id)),
                options: vec![ro.into(), "rbind".into()],
            }];
        }
        let mut options = Vec::new();
        if s.kind == Kind::Active {
            options.push(format!("workdir={}", path(self.work(&s.id))));
            options.push(format!("upperdir={}", path(self.upper(&s.id))));
        } else if s.parent_ids.len() == 1 {
            return vec![Mount {
                kind: "bind".into(),
                source: path(self.upper(&s.parent_ids[0])),
                options: vec!["ro".into(), "rbind".into()],
            }];
        }
        let lowers: Vec<String> = s.parent_ids.iter().map(|id| path(self.upper(id))).collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        options.extend(self.options.iter().cloned());
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }]
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let staged = self.base.stage()?;
        fsutil::mkdir_mode(&staged.path.join("fs"), 0o755)?;
        if kind == Kind::Active {
            fsutil::mkdir_mode(&staged.path.join("work"), 0o711)?;
        }
        let s = self
            .base
            .create(kind, key, parent, labels, staged, |_, s, staged| {
                // The new layer's root takes the owner and mode of the
                // parent's root (the merged view's root so far).
                match s.parent_ids.first() {
                    Some(p) => fsutil::copy_owner_and_mode(&self.upper(p), &staged.join("fs")),
                    None => Ok(()),
                }
            })?;
        Ok(self.mounts_for(&s))
    }
}

impl Snapshotter for OverlaySnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.base.stat(key)
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.base.update(info, fieldpaths)
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        self.base.usage(key, |id| self.upper(id))
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
        self.base.commit(name, key, labels, |id| self.upper(id))
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

const CHECK_PREFIX: &str = "overlay-check-";

/// Is overlayfs known to the kernel?
fn check_kernel() -> Result<()> {
    let fss = std::fs::read_to_string("/proc/filesystems")
        .map_err(|e| Error::io("read", "/proc/filesystems", e))?;
    if fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Ok(());
    }
    Err(Error::Unsupported(
        "overlayfs: the kernel has no overlay filesystem (not in /proc/filesystems; \
         try `modprobe overlay`)"
            .into(),
    ))
}

/// Mounts a two-lower overlay in a scratch directory under `root` (as
/// containerd's `overlayutils.Supported`): proves the filesystem of `root`
/// can hold upper and work directories and that we may mount.
fn check_mount(root: &Path, extra: &[String]) -> Result<()> {
    let td = fsutil::mkdtemp_in(root, CHECK_PREFIX)?;
    let res = (|| {
        for d in ["lower1", "lower2", "upper", "work", "merged"] {
            fsutil::mkdir_mode(&td.join(d), 0o755)?;
        }
        let p = |d: &str| td.join(d).to_string_lossy().into_owned();
        let mut options = vec![
            format!("lowerdir={}:{}", p("lower2"), p("lower1")),
            format!("upperdir={}", p("upper")),
            format!("workdir={}", p("work")),
        ];
        options.extend(extra.iter().cloned());
        let m = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        };
        MountGuard::mount(std::slice::from_ref(&m), &td.join("merged"))?.unmount()
    })();
    let removed = fsutil::remove_all(&td);
    res.map_err(|e| {
        Error::Unsupported(format!(
            "overlayfs: cannot mount an overlay with its upper directory in {}: {e}",
            root.display()
        ))
    })?;
    removed
}
