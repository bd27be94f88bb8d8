//! The aufs backend (clients send `aufs`): AUFS's model, as Docker's aufs
//! driver lays it out.
//!
//! Layout: `<root>/diff/<id>` is a branch holding exactly that snapshot's
//! changes, deletions as AUFS/OCI whiteout files (`.wh.<name>`, opaque
//! directories as `.wh..wh..opq`); `<root>/layers/<id>` lists the parent
//! chain (parent ids, nearest first, one a line); `<root>/metadata.db` the
//! records.
//!
//! Mounts:
//! - no parent: a bind of the branch (nothing below it to hide or copy up);
//! - otherwise a union of the branches, top first: the snapshot's own branch
//!   read-write (active), then its parents read-only with whiteouts. Where
//!   the kernel has aufs that is a real `aufs` mount; elsewhere it is a
//!   `fuse3.berth-aufs` mount, which `mount(8)` and containerd's mount code
//!   run through the FUSE mount helper (`mount.fuse3`, which starts the
//!   `berth-aufs` binary found on `PATH`). Unmounting stops the helper.
//!
//! Since a layer's whiteouts are stored as they are, applying an OCI layer
//! keeps them (no conversion) and the diff of an active snapshot is its
//! branch packed as it is (see the image crate's apply/diff fast paths,
//! which recognise these mounts with [`branches`]).

use std::path::{Path, PathBuf};

use crate::base::Base;
use crate::storage::{Snapshot, Transaction};
use crate::{fsutil, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

/// Name clients use for this backend.
pub const NAME: &str = "aufs";

/// Mount type of the userspace union (`fuse3.<helper>`).
pub const FUSE_TYPE: &str = "fuse3.berth-aufs";

/// The userspace union's binary, started by `mount.fuse3`.
pub const FUSE_HELPER: &str = "berth-aufs";

/// How the union is mounted on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Union {
    /// The kernel's aufs.
    Kernel,
    /// `berth-aufs` over FUSE.
    Fuse,
}

/// Snapshotter keeping each layer as an AUFS branch.
pub struct AufsSnapshotter {
    base: Base,
    union: Union,
}

impl AufsSnapshotter {
    /// Opens (or creates) an aufs snapshotter rooted at `root`, mounting
    /// with kernel aufs when the kernel has it, else through FUSE. Fails
    /// with Unsupported (saying what is missing) when neither can work.
    pub fn new(root: impl AsRef<Path>) -> Result<AufsSnapshotter> {
        let union = detect_union()?;
        AufsSnapshotter::with_union(root, union)
    }

    /// Opens with an explicit union implementation.
    pub fn with_union(root: impl AsRef<Path>, union: Union) -> Result<AufsSnapshotter> {
        let base = Base::open_in(root.as_ref(), "diff")?;
        let layers = base.root().join("layers");
        if !layers.exists() {
            fsutil::mkdir_mode(&layers, 0o700)?;
        }
        Ok(AufsSnapshotter { base, union })
    }

    /// How this instance mounts unions.
    pub fn union(&self) -> Union {
        self.union
    }

    fn branch(&self, id: &str) -> PathBuf {
        self.base.snapshot_dir(id)
    }

    fn layers_file(&self, id: &str) -> PathBuf {
        self.base.root().join("layers").join(id)
    }

    fn mounts_for(&self, s: &Snapshot) -> Vec<Mount> {
        let path = |id: &str| self.branch(id).to_string_lossy().into_owned();
        if s.parent_ids.is_empty() {
            let ro = if s.kind == Kind::View { "ro" } else { "rw" };
            return vec![Mount {
                kind: "bind".into(),
                source: path(&s.id),
                options: vec![ro.into(), "rbind".into()],
            }];
        }
        let mut branches = Vec::with_capacity(s.parent_ids.len() + 1);
        if s.kind == Kind::Active {
            branches.push(format!("{}=rw", path(&s.id)));
        }
        branches.extend(s.parent_ids.iter().map(|p| format!("{}=ro+wh", path(p))));
        let br = branches.join(":");
        let ro = if s.kind == Kind::View { "ro" } else { "rw" };
        match self.union {
            // Docker's aufs driver: `br:`, direct I/O; the xino file is
            // aufs's default one.
            Union::Kernel => vec![Mount {
                kind: "aufs".into(),
                source: "none".into(),
                options: vec![format!("br:{br}"), "dio".into(), ro.into()],
            }],
            Union::Fuse => vec![Mount {
                kind: FUSE_TYPE.into(),
                source: FUSE_HELPER.into(),
                options: vec![format!("br={br}"), ro.into()],
            }],
        }
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let staged = self.base.stage()?;
        std::fs::set_permissions(
            &staged.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| Error::io("chmod", &staged.path, e))?;
        let s = self
            .base
            .create(kind, key, parent, labels, staged, |_, s, staged| {
                // The branch's root takes the owner and mode of the merged
                // root so far, so a copy-up never changes it.
                if let Some(p) = s.parent_ids.first() {
                    fsutil::copy_owner_and_mode(&self.branch(p), staged)?;
                }
                let chain: String = s.parent_ids.iter().map(|p| format!("{p}\n")).collect();
                let file = self.layers_file(&s.id);
                std::fs::write(&file, chain).map_err(|e| Error::io("write", &file, e))
            })?;
        Ok(self.mounts_for(&s))
    }

    /// Removes `layers/` files whose snapshot has no record.
    fn cleanup_layer_files(&self) -> Result<()> {
        let dir = self.base.root().join("layers");
        // In a write transaction: creations write their file inside theirs.
        let garbage = self.base.ms.write(|tx| {
            let ids = tx.id_map()?;
            Ok(fsutil::read_dir_names(&dir)?
                .into_iter()
                .filter(|n| !n.to_str().is_some_and(|s| ids.contains_key(s)))
                .collect::<Vec<_>>())
        })?;
        for name in garbage {
            let p = dir.join(&name);
            if let Err(e) = fsutil::remove_all(&p) {
                tracing::warn!(error = %e, path = %p.display(), "cleanup");
            }
        }
        Ok(())
    }
}

impl Snapshotter for AufsSnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.base.stat(key)
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.base.update(info, fieldpaths)
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        self.base.usage(key, |id| self.branch(id))
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
        self.base.commit(name, key, labels, |id| self.branch(id))
    }

    fn remove(&self, key: &str) -> Result<()> {
        let id = self.base.remove(key)?;
        let file = self.layers_file(&id);
        if let Err(e) = std::fs::remove_file(&file) {
            tracing::warn!(error = %e, path = %file.display(), "remove layers file");
        }
        Ok(())
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        self.base.walk(filters, f)
    }

    fn cleanup(&self) -> Result<()> {
        self.base.cleanup()?;
        self.cleanup_layer_files()
    }
}

/// The branches of an aufs mount (kernel `aufs` or [`FUSE_TYPE`]), top
/// first, each with whether it is the writable one; `None` for other mounts
/// or a malformed branch list.
pub fn branches(m: &Mount) -> Option<Vec<(PathBuf, bool)>> {
    let list = match m.kind.as_str() {
        "aufs" => m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("br:").or_else(|| o.strip_prefix("br="))),
        FUSE_TYPE => m.options.iter().find_map(|o| o.strip_prefix("br=")),
        _ => None,
    }?;
    list.split(':')
        .map(|b| {
            let (dir, mode) = b.rsplit_once('=').unwrap_or((b, "ro"));
            (!dir.is_empty()).then(|| (PathBuf::from(dir), mode == "rw"))
        })
        .collect()
}

/// Kernel aufs if `/proc/filesystems` lists it, else FUSE if the host has
/// FUSE, the mount helper and `berth-aufs`.
fn detect_union() -> Result<Union> {
    let fss = std::fs::read_to_string("/proc/filesystems")
        .map_err(|e| Error::io("read", "/proc/filesystems", e))?;
    let has = |fs: &str| fss.lines().any(|l| l.split_whitespace().last() == Some(fs));
    if has("aufs") {
        return Ok(Union::Kernel);
    }
    let missing = |what: &str| {
        Error::Unsupported(format!(
            "aufs: the kernel has no aufs and the FUSE fallback cannot work: {what}"
        ))
    };
    if !has("fuse") {
        return Err(missing("no fuse filesystem in /proc/filesystems"));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(missing("/dev/fuse is missing"));
    }
    for bin in ["mount.fuse3", FUSE_HELPER] {
        if find_on_path(bin).is_none() {
            return Err(missing(&format!(
                "{bin} not found on PATH (install fuse3 and berth-aufs)"
            )));
        }
    }
    Ok(Union::Fuse)
}

/// `bin` in a `PATH` directory, or in `/sbin` / `/usr/sbin` (where
/// `mount(8)` looks for helpers).
fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin".into(), "/usr/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: &str, options: &[&str]) -> Mount {
        Mount {
            kind: kind.into(),
            source: "x".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn branch_lists() {
        assert_eq!(
            branches(&m(FUSE_TYPE, &["br=/d/3=rw:/d/2=ro+wh:/d/1", "rw"])),
            Some(vec![
                ("/d/3".into(), true),
                ("/d/2".into(), false),
                ("/d/1".into(), false)
            ])
        );
        assert_eq!(
            branches(&m("aufs", &["br:/d/2=ro+wh", "dio"])),
            Some(vec![("/d/2".into(), false)])
        );
        assert_eq!(branches(&m("overlay", &["br=/d/2=rw"])), None);
        assert_eq!(branches(&m(FUSE_TYPE, &["br==rw"])), None);
        assert_eq!(branches(&m(FUSE_TYPE, &["rw"])), None);
    }

    #[test]
    fn layout_and_mounts() {
        let d = tempfile::tempdir().unwrap();
        let sn = AufsSnapshotter::with_union(d.path(), Union::Fuse).unwrap();
        let base = sn.prepare("a", "", Labels::new()).unwrap();
        assert_eq!(base[0].kind, "bind");
        sn.commit("c1", "a", Labels::new()).unwrap();
        let ms = sn.prepare("b", "c1", Labels::new()).unwrap();
        let br = branches(&ms[0]).unwrap();
        assert_eq!(br.len(), 2);
        assert!(br[0].1 && !br[1].1);
        assert!(br[0].0.starts_with(d.path().join("diff")));
        let top = br[0].0.file_name().unwrap().to_str().unwrap().to_string();
        let parent = br[1].0.file_name().unwrap().to_str().unwrap().to_string();
        let chain = std::fs::read_to_string(d.path().join("layers").join(&top)).unwrap();
        assert_eq!(chain, format!("{parent}\n"));
        let view = sn.view("v", "c1", Labels::new()).unwrap();
        assert!(view[0].options.contains(&"ro".to_string()));
        assert_eq!(branches(&view[0]).unwrap(), vec![(br[1].0.clone(), false)]);

        // A layers file without a record is garbage; a record's is not.
        std::fs::write(d.path().join("layers/999"), "1\n").unwrap();
        sn.cleanup().unwrap();
        assert!(!d.path().join("layers/999").exists());
        assert!(d.path().join("layers").join(&top).exists());
        sn.remove("b").unwrap();
        assert!(!d.path().join("layers").join(&top).exists());
        assert!(!d.path().join("diff").join(&top).exists());
    }
}
