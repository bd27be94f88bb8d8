//! The `loop` pool driver (the analogue of devicemapper's loop-lvm mode):
//! a sparse `<root>/pool.img` formatted with a reflink-capable filesystem
//! (xfs `reflink=1` or btrfs), mounted at `<root>/pool` through a loop
//! device; each snapshot a sparse image `<root>/pool/images/<name>.img`
//! with its own filesystem; children are `FICLONE`s of their parent (blocks
//! shared, nothing copied); images are attached through loop devices.
//!
//! The pool is created and mounted on first use, so a daemon that never
//! makes a devmapper snapshot never formats, attaches or mounts anything;
//! once `pool.img` exists, opening the driver mounts it (recovery needs it).
//!
//! Device lifetime: this driver holds every device it attached or adopted
//! (see [`loopdev`]); dropping the hold detaches it, or, while it is
//! mounted, lets the kernel detach it at unmount. The pool's own device is
//! held by its mount only.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::fs as dfs;
use super::loopdev::{self, LoopDevice};
use super::{DevmapperConfig, PoolDriver};
use crate::{fsutil, Error, Mount, Result};

pub(crate) struct LoopPool {
    pool_img: PathBuf,
    pool_dir: PathBuf,
    images: PathBuf,
    fs_type: String,
    base_size: u64,
    pool_fs: &'static str,
    pool_size: u64,
    /// Whether the pool is mounted and checked (see [`LoopPool::pool`]).
    ready: Mutex<bool>,
    /// Devices this process holds, by image name.
    held: Mutex<HashMap<String, LoopDevice>>,
}

impl LoopPool {
    /// Checks the host, then mounts the pool if it exists already.
    pub(crate) fn open(root: &Path, config: &DevmapperConfig) -> Result<LoopPool> {
        loopdev::check_support()?;
        let pool_fs = config.pool_fs.as_str();
        let mkfs_pool = format!("mkfs.{pool_fs}");
        if !dfs::have(&mkfs_pool) {
            return Err(Error::Unsupported(format!(
                "devmapper (loop): {mkfs_pool} not found; install {} or set pool_fs",
                if pool_fs == "xfs" {
                    "xfsprogs"
                } else {
                    "btrfs-progs"
                }
            )));
        }
        let tools: &[&str] = match config.fs_type.as_str() {
            "ext4" => &["mkfs.ext4", "debugfs"],
            _ => &["mkfs.xfs"],
        };
        if let Some(t) = tools.iter().find(|t| !dfs::have(t)) {
            return Err(Error::Unsupported(format!(
                "devmapper (loop): {t} not found (needed for {} snapshots)",
                config.fs_type.as_str()
            )));
        }
        let pool = LoopPool {
            pool_img: root.join("pool.img"),
            pool_dir: root.join("pool"),
            images: root.join("pool").join("images"),
            fs_type: config.fs_type.as_str().to_string(),
            base_size: config.base_image_size,
            pool_fs: config.pool_fs.as_str(),
            pool_size: config.pool_size,
            ready: Mutex::new(false),
            held: Mutex::new(HashMap::new()),
        };
        if pool.exists() {
            pool.pool()?;
        }
        Ok(pool)
    }

    /// Whether the pool has been created (by this or an earlier instance).
    fn exists(&self) -> bool {
        self.pool_img.exists()
    }

    /// Mounts (creating it first if needed) and checks the pool, once.
    fn pool(&self) -> Result<()> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if *ready {
            return Ok(());
        }
        self.mount_pool(self.pool_fs, self.pool_size)?;
        let checked = (|| {
            if !self.images.exists() {
                fsutil::mkdir_mode(&self.images, 0o700)?;
            }
            self.check_reflink()
        })();
        if let Err(e) = checked {
            // Leave nothing mounted behind a pool that cannot work.
            if let Err(e) = nix::mount::umount(&self.pool_dir) {
                tracing::warn!(error = %e, "devmapper: unmount unusable pool");
            }
            return Err(e);
        }
        *ready = true;
        Ok(())
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, LoopDevice>> {
        // The map stays consistent even if a holder panicked.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_mounted(&self) -> Result<bool> {
        Ok(crate::mount::mounts_below(&self.pool_dir)?
            .iter()
            .any(|p| p == &self.pool_dir))
    }

    fn mount_pool(&self, pool_fs: &str, size: u64) -> Result<()> {
        if !self.pool_dir.exists() {
            fsutil::mkdir_mode(&self.pool_dir, 0o700)?;
        }
        // Still mounted: a previous instance was killed, or shut down while
        // containers used its images.
        if self.is_mounted()? {
            return Ok(());
        }
        if !self.pool_img.exists() {
            // Formatted under a temporary name: a crash leaves no pool file
            // without a filesystem.
            let tmp = self.pool_img.with_extension("img.new");
            let f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
            f.set_len(size)
                .map_err(|e| Error::io("truncate", &tmp, e))?;
            drop(f);
            dfs::mkfs_pool(pool_fs, &tmp)?;
            std::fs::rename(&tmp, &self.pool_img).map_err(|e| Error::io("rename", &tmp, e))?;
        }
        // A device left attached (held by a lazily detached mount) must be
        // reused: the same filesystem must not be mounted from two devices.
        let existing = loopdev::find_backing(&self.pool_img)?;
        let (source, _hold) = match existing.first() {
            Some(a) => (PathBuf::from(format!("/dev/loop{}", a.index)), None),
            None => {
                let d = loopdev::attach(&self.pool_img, false)?;
                (d.path(), Some(d))
            }
        };
        let m = Mount {
            kind: pool_fs.to_string(),
            source: source.to_string_lossy().into_owned(),
            options: Vec::new(),
        };
        // Once mounted, the mount holds the device; `_hold` goes here.
        m.mount(&self.pool_dir)
    }

    /// Proves the pool filesystem can clone (FICLONE) files.
    fn check_reflink(&self) -> Result<()> {
        let a = self.images.join(".reflink-check-a");
        let b = self.images.join(".reflink-check-b");
        let res = (|| -> io::Result<()> {
            let rw = || {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .clone()
            };
            let fa = rw().open(&a)?;
            std::io::Write::write_all(&mut &fa, &[1u8; 4096])?;
            let fb = rw().open(&b)?;
            dfs::clone_file(&fa, &fb)
        })();
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        res.map_err(|e| {
            Error::Unsupported(format!(
                "devmapper (loop): the pool filesystem in {} cannot clone files ({e})",
                self.pool_dir.display()
            ))
        })
    }

    fn image(&self, name: &str) -> PathBuf {
        self.images.join(format!("{name}.img"))
    }

    fn new_file(&self, name: &str) -> Result<File> {
        let p = self.image(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| Error::io("create", &p, e))
    }
}

impl PoolDriver for LoopPool {
    fn create(&self, name: &str, parent: Option<&str>) -> Result<()> {
        self.pool()?;
        let res = (|| match parent {
            None => {
                let f = self.new_file(name)?;
                let p = self.image(name);
                f.set_len(self.base_size)
                    .map_err(|e| Error::io("truncate", &p, e))?;
                drop(f);
                dfs::mkfs(&self.fs_type, &p)
            }
            Some(parent) => {
                let src_path = self.image(parent);
                let src = File::open(&src_path).map_err(|e| Error::io("open", &src_path, e))?;
                let dst = self.new_file(name)?;
                dfs::clone_file(&src, &dst).map_err(|e| Error::io("clone", &src_path, e))
            }
        })();
        if res.is_err() {
            let _ = fsutil::remove_all(&self.image(name));
        }
        res
    }

    fn publish(&self, staged: &str, id: &str) -> Result<()> {
        self.pool()?;
        let (from, to) = (self.image(staged), self.image(id));
        std::fs::rename(&from, &to).map_err(|e| Error::io("rename", &from, e))
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.deactivate(name)?;
        if !self.exists() {
            return Ok(());
        }
        self.pool()?;
        fsutil::remove_all(&self.image(name))?;
        // Junk without the suffix (never created by this driver).
        fsutil::remove_all(&self.images.join(name))
    }

    fn names(&self) -> Result<Vec<String>> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        self.pool()?;
        Ok(fsutil::read_dir_names(&self.images)?
            .into_iter()
            .filter_map(fsutil::os_to_string)
            .filter(|n| !n.starts_with(".reflink-check-"))
            .map(|n| match n.strip_suffix(".img") {
                Some(s) => s.to_string(),
                None => n,
            })
            .collect())
    }

    fn activate(&self, name: &str, read_only: bool) -> Result<PathBuf> {
        self.pool()?;
        let mut held = self.held();
        let image = self.image(name);
        if let Some(d) = held.get(name) {
            return Ok(d.path());
        }
        // Adopt a device a previous instance left attached (a container
        // may have it mounted).
        let dev = match loopdev::find_backing(&image)?
            .into_iter()
            .find(|a| a.read_only == read_only)
        {
            Some(a) => loopdev::open(a.index, read_only)?,
            None => loopdev::attach(&image, read_only)?,
        };
        let path = dev.path();
        held.insert(name.to_string(), dev);
        Ok(path)
    }

    fn device(&self, name: &str) -> Option<PathBuf> {
        self.held().get(name).map(|d| d.path())
    }

    fn deactivate(&self, name: &str) -> Result<()> {
        let dev = self.held().remove(name);
        match dev {
            Some(d) => d.detach(),
            None => Ok(()),
        }
    }

    fn sweep(&self, keep: &dyn Fn(&str) -> bool) -> Result<()> {
        // No pool image and no (still mounted) images directory: no device can back an
        // image, so the scan of every loop device in sysfs is skipped.
        if !self.exists() && !self.images.exists() {
            return Ok(());
        }
        let held = self.held();
        for a in loopdev::list()? {
            let Ok(rel) = a.backing.strip_prefix(&self.images) else {
                continue;
            };
            let Some(name) = rel.to_str().and_then(|n| n.strip_suffix(".img")) else {
                continue;
            };
            if a.deleted || (!held.contains_key(name) && !keep(name)) {
                tracing::info!(device = a.index, image = %a.backing.display(), "devmapper: detach stale loop device");
                if let Err(e) = loopdev::detach_index(a.index) {
                    tracing::warn!(error = %e, "devmapper: detach stale loop device");
                }
            }
        }
        Ok(())
    }

    fn usage(&self, name: &str) -> Result<(u64, u64)> {
        self.pool()?;
        let p = self.image(name);
        let f = File::open(&p).map_err(|e| Error::io("open", &p, e))?;
        dfs::extent_usage(&f).map_err(|e| Error::io("fiemap", &p, e))
    }

    fn fs_source(&self, name: &str) -> Result<PathBuf> {
        self.pool()?;
        Ok(self.image(name))
    }

    fn pool_usage(&self) -> Result<u64> {
        self.pool()?;
        let st = nix::sys::statvfs::statvfs(&self.pool_dir).map_err(|e| {
            Error::io(
                "statfs",
                &self.pool_dir,
                io::Error::from_raw_os_error(e as i32),
            )
        })?;
        Ok((st.blocks() - st.blocks_free()) * st.fragment_size())
    }

    fn close(&self) {
        let devices: Vec<(String, LoopDevice)> = self.held().drain().collect();
        for (name, d) in devices {
            if let Err(e) = d.detach() {
                tracing::warn!(error = %e, image = %name, "devmapper: detach on close");
            }
        }
        // Busy (a container still uses an image): stay mounted; the next
        // start reuses the mount.
        match nix::mount::umount(&self.pool_dir) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                tracing::warn!(error = %e, pool = %self.pool_dir.display(), "devmapper: pool stays mounted")
            }
        }
    }
}
