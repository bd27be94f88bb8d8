//! The devmapper backend (containerd's `devmapper`): every snapshot is a
//! thin-provisioned block device with its own filesystem (ext4 by default,
//! xfs optional); a child is a block-level copy-on-write clone of its
//! parent; commit freezes it (its device goes away); remove frees only the
//! blocks the snapshot owns.
//!
//! Two pool drivers behind the private `PoolDriver` trait:
//! - `loop_pool` (`loop`): image files on a reflink-capable pool
//!   filesystem, clones by `FICLONE`, attached through loop devices. Works
//!   wherever loop devices do.
//! - `thin_pool` (`dm-thin`): a device-mapper thin pool driven with
//!   `dmsetup`, as containerd's devmapper; needs `/dev/mapper/control`.
//!
//! Layout: `<root>/metadata.db` (the backend's records, [`crate::storage`]),
//! `<root>/devices/<id>` (a symlink to the snapshot's current block device:
//! the stable name handed out in mounts, like `/dev/mapper/<name>`, which
//! survives the device being re-attached under another number), and the
//! driver's files (`pool.img`, `pool/images/`, or `thin/`).
//!
//! Only active snapshots and views have a device. A new snapshot's device
//! is built under a staging name and renamed to its id inside the write
//! transaction that records it; ids are never reused, so every device name
//! that no record owns and no in-flight creation claims is garbage
//! (removed at start-up and by `cleanup`). Devices are released on commit,
//! remove, cleanup and [`DevmapperSnapshotter::close`] (also on drop), and
//! re-attached lazily by `mounts`.

mod fs;
mod loop_pool;
pub mod loopdev;
mod thin_pool;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::storage::{MetaStore, Transaction};
use crate::{fsutil, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

/// Name clients use for this backend.
pub const NAME: &str = "devmapper";

const GIB: u64 = 1 << 30;

/// Which pool driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Driver {
    /// `dm-thin` where `/dev/mapper/control` exists, else `loop`.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "loop")]
    Loop,
    #[serde(rename = "dm-thin")]
    DmThin,
}

/// Filesystem of each snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    #[default]
    Ext4,
    Xfs,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

/// Filesystem of the loop driver's pool file (must support reflinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolFs {
    #[default]
    Xfs,
    Btrfs,
}

impl PoolFs {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolFs::Xfs => "xfs",
            PoolFs::Btrfs => "btrfs",
        }
    }
}

/// Configuration of the devmapper backend (daemon config, snake_case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevmapperConfig {
    /// `auto` (default), `loop` or `dm-thin`.
    pub driver: Driver,
    /// Size of the loop driver's sparse pool file, bytes (100 GiB).
    pub pool_size: u64,
    /// Size of every snapshot's device, bytes (10 GiB, as containerd).
    pub base_image_size: u64,
    /// `ext4` (default) or `xfs`.
    pub fs_type: FsType,
    /// Loop driver: `xfs` (default, `reflink=1`) or `btrfs`.
    pub pool_fs: PoolFs,
    /// dm-thin: name of the thin pool under `/dev/mapper`.
    pub pool_name: String,
    /// dm-thin: data and metadata devices to create the pool from when
    /// `/dev/mapper/<pool_name>` does not exist yet.
    pub data_device: String,
    pub meta_device: String,
    /// dm-thin: pool block size, bytes (64 KiB; a multiple of 64 KiB).
    pub data_block_size: u64,
}

impl Default for DevmapperConfig {
    fn default() -> Self {
        DevmapperConfig {
            driver: Driver::Auto,
            pool_size: 100 * GIB,
            base_image_size: 10 * GIB,
            fs_type: FsType::Ext4,
            pool_fs: PoolFs::Xfs,
            pool_name: "berth-thinpool".into(),
            data_device: String::new(),
            meta_device: String::new(),
            data_block_size: 64 << 10,
        }
    }
}

/// What the backend needs from a pool. Device names are snapshot ids once
/// published, staging names (`new-...`) while being built, or junk found
/// on disk.
pub(crate) trait PoolDriver: Send + Sync {
    /// Builds device `name`: a fresh filesystem, or a copy-on-write clone of
    /// device `parent`. Leaves nothing behind on failure.
    fn create(&self, name: &str, parent: Option<&str>) -> Result<()>;
    /// Renames staged device `staged` to `id` (inside the recording
    /// transaction: keep it fast).
    fn publish(&self, staged: &str, id: &str) -> Result<()>;
    /// Deactivates and deletes device `name`; absent is fine.
    fn delete(&self, name: &str) -> Result<()>;
    /// Names of every device the pool holds.
    fn names(&self) -> Result<Vec<String>>;
    /// Makes `name` available as a block device (idempotent); its path.
    fn activate(&self, name: &str, read_only: bool) -> Result<PathBuf>;
    /// The block device of `name` if this instance activated it.
    fn device(&self, name: &str) -> Option<PathBuf>;
    /// Releases `name`'s block device (deferred by the kernel while
    /// mounted).
    fn deactivate(&self, name: &str) -> Result<()>;
    /// Releases devices left active (by an earlier instance) for names that
    /// this instance does not hold and `keep` rejects.
    fn sweep(&self, keep: &dyn Fn(&str) -> bool) -> Result<()>;
    /// Bytes owned by `name` alone and bytes shared with other devices.
    fn usage(&self, name: &str) -> Result<(u64, u64)>;
    /// A path to read `name`'s filesystem superblock from.
    fn fs_source(&self, name: &str) -> Result<PathBuf>;
    /// Bytes used in the whole pool.
    fn pool_usage(&self) -> Result<u64>;
    /// Releases every device and the pool (daemon shutdown).
    fn close(&self);
}

/// Snapshotter on thin block devices (see the module docs).
pub struct DevmapperSnapshotter {
    root: PathBuf,
    ms: MetaStore,
    driver: Box<dyn PoolDriver>,
    fs_type: FsType,
    /// Staging names being built by this process.
    staging: Mutex<HashSet<String>>,
    /// Serialises device activation and symlink updates.
    devices: Mutex<()>,
    closed: AtomicBool,
}

static STAGE_SEQ: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DevmapperSnapshotter {
    /// Opens (or creates) a devmapper snapshotter rooted at `root`. Fails
    /// with Unsupported, saying what is missing, when the host cannot run
    /// the configured driver. Releases devices a previous instance left
    /// behind and deletes devices no snapshot owns.
    pub fn new(root: &Path, config: &DevmapperConfig) -> Result<DevmapperSnapshotter> {
        if !root.exists() {
            std::fs::create_dir_all(root).map_err(|e| Error::io("mkdir", root, e))?;
            std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| Error::io("chmod", root, e))?;
        }
        // The metadata lock keeps other instances out of this root before
        // anything is mounted or detached.
        let ms = MetaStore::open(&root.join("metadata.db"))?;
        let has_dm = Path::new("/dev/mapper/control").exists();
        let driver: Box<dyn PoolDriver> = match config.driver {
            Driver::DmThin => Box::new(thin_pool::ThinPool::open(root, config)?),
            Driver::Auto if has_dm => Box::new(thin_pool::ThinPool::open(root, config)?),
            Driver::Auto | Driver::Loop => Box::new(loop_pool::LoopPool::open(root, config)?),
        };
        let devices = root.join("devices");
        // Symlinks of an earlier run may name device numbers reused since.
        fsutil::remove_all(&devices)?;
        fsutil::mkdir_mode(&devices, 0o700)?;
        let sn = DevmapperSnapshotter {
            root: root.to_path_buf(),
            ms,
            driver,
            fs_type: config.fs_type,
            staging: Mutex::new(HashSet::new()),
            devices: Mutex::new(()),
            closed: AtomicBool::new(false),
        };
        if let Err(e) = sn.cleanup() {
            sn.close();
            return Err(e);
        }
        Ok(sn)
    }

    /// Releases every device and unmounts the pool (daemon shutdown).
    /// Devices still mounted (running containers) go when unmounted.
    /// Idempotent; also run on drop.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _g = lock(&self.devices);
        self.driver.close();
        if let Err(e) = fsutil::remove_all(&self.devices_dir()) {
            tracing::warn!(error = %e, "devmapper: remove device links");
        }
    }

    fn devices_dir(&self) -> PathBuf {
        self.root.join("devices")
    }

    fn link(&self, id: &str) -> PathBuf {
        self.devices_dir().join(id)
    }

    /// Activates `id` and points its link at the device.
    fn activate(&self, id: &str, read_only: bool) -> Result<PathBuf> {
        let _g = lock(&self.devices);
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::FailedPrecondition(
                "devmapper snapshotter closed".into(),
            ));
        }
        let dev = self.driver.activate(id, read_only)?;
        let link = self.link(id);
        if std::fs::read_link(&link).ok().as_deref() != Some(dev.as_path()) {
            let tmp = self.devices_dir().join(format!(".{id}.new"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&dev, &tmp).map_err(|e| Error::io("symlink", &tmp, e))?;
            std::fs::rename(&tmp, &link).map_err(|e| Error::io("rename", &tmp, e))?;
        }
        Ok(link)
    }

    fn deactivate(&self, id: &str) -> Result<()> {
        let _g = lock(&self.devices);
        if let Err(e) = std::fs::remove_file(self.link(id)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::io("remove", self.link(id), e));
            }
        }
        self.driver.deactivate(id)
    }

    fn mounts_for(&self, kind: Kind, source: &Path) -> Vec<Mount> {
        let mut options = Vec::new();
        if kind == Kind::View {
            options.push("ro".to_string());
        }
        if self.fs_type == FsType::Xfs {
            // Clones share their parent's filesystem UUID.
            options.push("nouuid".to_string());
        }
        vec![Mount {
            kind: self.fs_type.as_str().to_string(),
            source: source.to_string_lossy().into_owned(),
            options,
        }]
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        // Fail fast before building a device (create_snapshot checks again).
        if self.ms.read(|tx| tx.record(key))?.is_some() {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        // A committed parent's device does not change; if it is missing or
        // not committed, create_snapshot says so below.
        let parent_id = if parent.is_empty() {
            None
        } else {
            match self.ms.read(|tx| tx.get_info(parent)) {
                Ok((id, info, _)) if info.kind == Kind::Committed => Some(id),
                _ => None,
            }
        };
        let staged = format!(
            "new-{}-{}",
            std::process::id(),
            STAGE_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        lock(&self.staging).insert(staged.clone());
        let res = self.create_staged(kind, key, parent, labels, &staged, parent_id.as_deref());
        lock(&self.staging).remove(&staged);
        let id = res?;
        match self.activate(&id, kind == Kind::View) {
            Ok(link) => Ok(self.mounts_for(kind, &link)),
            Err(e) => {
                // A snapshot without a device is no use to the caller.
                if let Err(r) = self.remove(key) {
                    tracing::warn!(error = %r, key, "devmapper: undo failed prepare");
                }
                Err(e)
            }
        }
    }

    fn create_staged(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: Labels,
        staged: &str,
        parent_id: Option<&str>,
    ) -> Result<String> {
        if parent.is_empty() || parent_id.is_some() {
            self.driver.create(staged, parent_id)?;
        }
        let mut published: Option<String> = None;
        let res = self.ms.write(|tx| {
            let s = tx.create_snapshot(kind, key, parent, labels)?;
            if s.parent_ids.first().map(String::as_str) != parent_id {
                // Removed and re-created under the same name meanwhile.
                return Err(Error::FailedPrecondition(format!(
                    "parent {parent} changed while preparing {key}; retry"
                )));
            }
            self.driver.publish(staged, &s.id)?;
            published = Some(s.id.clone());
            Ok(s.id)
        });
        if res.is_err() {
            // Not recorded: the id is never reused, its device is garbage.
            let name = published.as_deref().unwrap_or(staged);
            if let Err(e) = self.driver.delete(name) {
                tracing::warn!(error = %e, name, "devmapper: delete device of failed create");
            }
        }
        res
    }

    /// Used inodes of `id`'s filesystem: statfs where this process sees it
    /// mounted (exact), else its superblock (exact once unmounted).
    fn used_inodes(&self, id: &str) -> Result<i64> {
        if let Some(dev) = self.driver.device(id) {
            let rdev = std::fs::metadata(&dev)
                .map(|m| std::os::unix::fs::MetadataExt::rdev(&m))
                .ok();
            if let Some(mp) = rdev.and_then(fs::mountpoint_of) {
                if let Ok(n) = fs::statfs_used_inodes(&mp) {
                    return Ok(n);
                }
            }
        }
        fs::superblock_used_inodes(&self.driver.fs_source(id)?)
    }

    /// Live usage of active `id` on `parent_id`: blocks it owns and inodes
    /// it added.
    fn live_usage(&self, id: &str, parent_id: Option<&str>) -> Result<Usage> {
        let (owned, _) = self.driver.usage(id)?;
        let mut inodes = self.used_inodes(id)?;
        if let Some(p) = parent_id {
            inodes = (inodes - fs::superblock_used_inodes(&self.driver.fs_source(p)?)?).max(0);
        }
        Ok(Usage {
            size: owned as i64,
            inodes,
        })
    }

    fn parent_id_of(&self, key: &str) -> Result<(String, Kind, Option<String>)> {
        self.ms.read(|tx| {
            let r = tx
                .record(key)?
                .ok_or_else(|| Error::NotFound(key.to_string()))?;
            let parent = if r.parent.is_empty() {
                None
            } else {
                tx.record(&r.parent)?.map(|p| p.id.to_string())
            };
            Ok((r.id.to_string(), r.kind, parent))
        })
    }

    /// Bytes `key`'s device owns alone and bytes it shares with others
    /// (its parent chain, siblings), live.
    pub fn block_usage(&self, key: &str) -> Result<(u64, u64)> {
        let (id, _, _) = self.parent_id_of(key)?;
        self.driver.usage(&id)
    }

    /// Bytes used in the whole pool (shared blocks counted once).
    pub fn pool_usage(&self) -> Result<u64> {
        self.driver.pool_usage()
    }
}

impl Drop for DevmapperSnapshotter {
    fn drop(&mut self) {
        self.close();
    }
}

impl Snapshotter for DevmapperSnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.ms.read(|tx| tx.get_info(key)).map(|(_, info, _)| info)
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.ms.write(|tx| tx.update_info(info, fieldpaths))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let (id, info, usage) = self.ms.read(|tx| tx.get_info(key))?;
        if info.kind != Kind::Active {
            return Ok(usage);
        }
        let (_, _, parent_id) = self.parent_id_of(key)?;
        self.live_usage(&id, parent_id.as_deref())
    }

    fn shared_usage(&self, key: &str) -> Result<Option<i64>> {
        self.block_usage(key).map(|(_, shared)| Some(shared as i64))
    }

    fn close(&self) {
        DevmapperSnapshotter::close(self)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let s = self.ms.read(|tx| tx.get_snapshot(key))?;
        let link = self.activate(&s.id, s.kind == Kind::View)?;
        Ok(self.mounts_for(s.kind, &link))
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        // Errors (missing key, not active) are reported by commit_active.
        let mut usage = Usage::default();
        let mut id = None;
        if let Ok((i, Kind::Active, parent_id)) = self.parent_id_of(key) {
            if let Some(dev) = self.driver.device(&i) {
                if loopdev::in_use(&dev) {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot commit {key}: its device {} is still mounted",
                        dev.display()
                    )));
                }
            }
            usage = self.live_usage(&i, parent_id.as_deref())?;
            id = Some(i);
        }
        self.ms
            .write(|tx| tx.commit_active(key, name, usage, labels))?;
        // Committed: immutable, no device until a child or view clones it.
        if let Some(id) = id {
            if let Err(e) = self.deactivate(&id) {
                tracing::warn!(error = %e, id, "devmapper: release device of committed snapshot");
            }
        }
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let (id, _) = self.ms.write(|tx| tx.remove(key))?;
        // The record is gone: a failure here leaves garbage for cleanup,
        // not an error for the caller.
        if let Err(e) = self.deactivate(&id) {
            tracing::warn!(error = %e, id, "devmapper: release device");
        }
        if let Err(e) = self.driver.delete(&id) {
            tracing::warn!(error = %e, id, "devmapper: delete device");
        }
        Ok(())
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        let filter = berth_filters::parse_all(filters)?;
        let infos = self.ms.read(|tx| tx.infos(&filter))?;
        for info in infos {
            f(info)?;
        }
        Ok(())
    }

    fn cleanup(&self) -> Result<()> {
        // Creations (which publish inside their write transactions) are held
        // off while the pool is scanned.
        let (garbage, live) = self.ms.exclusive(|tx| {
            let records = tx.records()?;
            let ids: HashSet<String> = records.iter().map(|(_, r)| r.id.to_string()).collect();
            let live: HashSet<String> = records
                .iter()
                .filter(|(_, r)| r.kind != Kind::Committed)
                .map(|(_, r)| r.id.to_string())
                .collect();
            let staging = lock(&self.staging);
            let garbage: Vec<String> = self
                .driver
                .names()?
                .into_iter()
                .filter(|n| !staging.contains(n) && !ids.contains(n))
                .collect();
            Ok((garbage, live))
        })?;
        for name in &garbage {
            tracing::info!(name, "devmapper: delete device no snapshot owns");
            if let Err(e) = self.driver.delete(name) {
                tracing::warn!(error = %e, name, "devmapper: cleanup");
            }
        }
        let _g = lock(&self.devices);
        // Devices of committed snapshots and of garbage left attached by an
        // earlier instance; staged ones belong to in-flight creations.
        let staging = lock(&self.staging).clone();
        self.driver
            .sweep(&|name| live.contains(name) || staging.contains(name))
    }
}
