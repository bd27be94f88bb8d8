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
//!
//! Opening checks that overlayfs works with its upper directories under the
//! root (`check_mount`) on a background thread: the daemon starts serving
//! without waiting, and the calls that hand out overlay mounts (prepare,
//! view, mounts) and [`Snapshotter::init_error`] wait for the verdict.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::base::Base;
use crate::mount::MountGuard;
use crate::storage::{Snapshot, Transaction};
use crate::{fsutil, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

/// Snapshotter on kernel overlayfs.
pub struct OverlaySnapshotter {
    base: Base,
    /// Extra overlay options (`index=off`).
    options: Vec<String>,
    check: Check,
}

/// The mount check running in the background, then its verdict.
struct Check {
    running: Mutex<Option<JoinHandle<Result<()>>>>,
    verdict: OnceLock<std::result::Result<(), String>>,
}

impl Check {
    fn start(root: &Path, options: &[String]) -> Result<Check> {
        let (root, options) = (root.to_path_buf(), options.to_vec());
        let running = std::thread::Builder::new()
            .name("overlay-check".into())
            .spawn(move || check_mount(&root, &options))
            .map_err(|e| Error::io("spawn the overlay check", "overlay-check", e))?;
        Ok(Check {
            running: Mutex::new(Some(running)),
            verdict: OnceLock::new(),
        })
    }

    /// Waits for the check (once) and returns its verdict.
    fn verdict(&self) -> &std::result::Result<(), String> {
        if let Some(v) = self.verdict.get() {
            return v;
        }
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = running {
            let v = match h.join() {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("overlayfs: the mount check panicked".to_string()),
            };
            let _ = self.verdict.set(v);
        }
        // Another caller took the thread: wait for it to set the verdict.
        self.verdict.wait()
    }

    /// Ok once the check passed; the check's error (Unsupported) if it failed.
    fn passed(&self) -> Result<()> {
        self.verdict().clone().map_err(Error::Unsupported)
    }
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
        let check = Check::start(root, &options)?;
        Ok(OverlaySnapshotter {
            base,
            options,
            check,
        })
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
        self.check.passed()?;
        let s = self.base.ms.read(|tx| tx.get_snapshot(key))?;
        Ok(self.mounts_for(&s))
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.check.passed()?;
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.check.passed()?;
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

    fn init_error(&self) -> Option<String> {
        self.check.verdict().clone().err()
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

/// Sets up a two-lower overlay in a scratch directory under `root` (as
/// containerd's `overlayutils.Supported`): proves the filesystem of `root`
/// can hold upper and work directories and that we may mount. Where the
/// kernel has the new mount API the overlay superblock is created (which
/// runs overlayfs's checks) but never attached, so no unmount has to wait
/// for the mount namespace to settle; otherwise, or if that fails, a real
/// mount decides.
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
        // A superblock proves it; where that fails (or the API is missing) a real mount
        // decides, as it always did (overlayfs parses some options only on that path).
        match superblock::create("overlay", &options) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!(error = %e, "overlay check: superblock; trying a mount"),
        }
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

/// Filesystem superblocks through the new mount API (`fsopen`, `fsconfig`; Linux 5.2).
mod superblock {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    // Kernel ABI values (include/uapi/linux/mount.h).
    const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

    fn cstring(s: &str) -> io::Result<CString> {
        CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// One fsconfig(2) call on `fs`.
    fn fsconfig(
        fs: RawFd,
        cmd: libc::c_uint,
        key: Option<&CString>,
        value: Option<&CString>,
    ) -> io::Result<()> {
        let ptr = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: fsconfig reads the NUL-terminated key and value (or takes null), which
        // outlive the call; `fs` is an open filesystem context.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs,
                cmd,
                ptr(key),
                ptr(value),
                0 as libc::c_int,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Creates (and drops) a superblock of filesystem `kind` with mount `options`
    /// (`key=value` or flag words): the filesystem's own checks run, nothing is mounted.
    /// ENOSYS where the kernel lacks the API.
    pub fn create(kind: &str, options: &[String]) -> io::Result<()> {
        let kind = cstring(kind)?;
        // SAFETY: fsopen reads the NUL-terminated name; it returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, kind.as_ptr(), FSOPEN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: `raw` is the descriptor fsopen just returned; nothing else owns it.
        let fs = unsafe { OwnedFd::from_raw_fd(raw) };
        for option in options {
            match option.split_once('=') {
                Some((key, value)) => fsconfig(
                    std::os::fd::AsRawFd::as_raw_fd(&fs),
                    FSCONFIG_SET_STRING,
                    Some(&cstring(key)?),
                    Some(&cstring(value)?),
                )?,
                None => fsconfig(
                    std::os::fd::AsRawFd::as_raw_fd(&fs),
                    FSCONFIG_SET_FLAG,
                    Some(&cstring(option)?),
                    None,
                )?,
            }
        }
        fsconfig(
            std::os::fd::AsRawFd::as_raw_fd(&fs),
            FSCONFIG_CMD_CREATE,
            None,
            None,
        )
    }
}
