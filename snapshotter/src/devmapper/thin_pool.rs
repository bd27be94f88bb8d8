//! The `dm-thin` pool driver: a device-mapper thin pool driven through the
//! `dmsetup` CLI, as containerd's devmapper snapshotter does. The pool is
//! `/dev/mapper/<pool_name>`, created from `data_device` and `meta_device`
//! when absent; every device is a thin volume (`create_thin`, or
//! `create_snap` of its parent's thin id), activated as a `thin` target
//! named `<pool_name>-snap-<name>`.
//!
//! Device names map to thin ids in `<root>/thin/<name>` (one decimal id
//! per file; `<root>/thin/.next_id` is the counter). A crash between a
//! `create_thin` message and writing its file leaks that thin volume in
//! the pool (containerd has the same window).
//!
//! Not exercised on the development machines (no device-mapper there):
//! only the table and message strings are unit-tested.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::fs as dfs;
use super::{DevmapperConfig, PoolDriver};
use crate::{fsutil, Error, Result};

const SECTOR: u64 = 512;

pub(crate) struct ThinPool {
    pool: String,
    dir: PathBuf,
    fs_type: String,
    sectors: u64,
    block_bytes: u64,
    /// Serialises thin-id allocation.
    ids: Mutex<()>,
}

/// `dmsetup create <pool> --table <this>`.
pub(crate) fn pool_table(data_sectors: u64, meta: &str, data: &str, block_sectors: u64) -> String {
    // Low water mark 32768 blocks, and no zeroing of new blocks (every
    // device gets a fresh filesystem anyway), as containerd's pool setup.
    format!("0 {data_sectors} thin-pool {meta} {data} {block_sectors} 32768 1 skip_block_zeroing")
}

/// `dmsetup create <name> --table <this>`.
pub(crate) fn thin_table(sectors: u64, pool: &str, thin_id: u64) -> String {
    format!("0 {sectors} thin /dev/mapper/{pool} {thin_id}")
}

pub(crate) fn msg_create_thin(thin_id: u64) -> String {
    format!("create_thin {thin_id}")
}

pub(crate) fn msg_create_snap(thin_id: u64, origin: u64) -> String {
    format!("create_snap {thin_id} {origin}")
}

pub(crate) fn msg_delete(thin_id: u64) -> String {
    format!("delete {thin_id}")
}

/// Mapped bytes from `dmsetup status` of a thin device
/// (`<start> <len> thin <mapped sectors> <highest mapped>`).
pub(crate) fn parse_thin_status(status: &str) -> Option<u64> {
    let f: Vec<&str> = status.split_whitespace().collect();
    if f.get(2) != Some(&"thin") {
        return None;
    }
    f.get(3)?.parse::<u64>().ok().map(|s| s * SECTOR)
}

fn dmsetup(args: &[&str]) -> Result<()> {
    dfs::run("dmsetup", args).map(drop)
}

fn dmsetup_out(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("dmsetup")
        .args(args)
        .output()
        .map_err(|e| Error::io("run", "dmsetup", e))?;
    if !out.status.success() {
        return Err(Error::io(
            "run",
            "dmsetup",
            std::io::Error::other(format!(
                "dmsetup {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ThinPool {
    pub(crate) fn open(root: &Path, config: &DevmapperConfig) -> Result<ThinPool> {
        if !Path::new("/dev/mapper/control").exists() {
            return Err(Error::Unsupported(
                "devmapper (dm-thin): /dev/mapper/control is missing (no device-mapper in \
                 this kernel; `modprobe dm_thin_pool`), use driver = \"loop\""
                    .into(),
            ));
        }
        if !dfs::have("dmsetup") {
            return Err(Error::Unsupported(
                "devmapper (dm-thin): dmsetup not found (install dmsetup)".into(),
            ));
        }
        let pool = config.pool_name.clone();
        if !Path::new("/dev/mapper").join(&pool).exists() {
            if config.data_device.is_empty() || config.meta_device.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "devmapper (dm-thin): pool /dev/mapper/{pool} does not exist and \
                     data_device/meta_device are not set"
                )));
            }
            let out = std::process::Command::new("blockdev")
                .args(["--getsz", &config.data_device])
                .output()
                .map_err(|e| Error::io("run", "blockdev", e))?;
            let sectors: u64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| {
                    Error::InvalidArgument(format!(
                        "devmapper (dm-thin): size of {}: {}",
                        config.data_device,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                })?;
            let table = pool_table(
                sectors,
                &config.meta_device,
                &config.data_device,
                config.data_block_size / SECTOR,
            );
            dmsetup(&["create", &pool, "--table", &table])?;
        }
        let dir = root.join("thin");
        if !dir.exists() {
            fsutil::mkdir_mode(&dir, 0o700)?;
        }
        Ok(ThinPool {
            pool,
            dir,
            fs_type: config.fs_type.as_str().to_string(),
            sectors: config.base_image_size / SECTOR,
            block_bytes: config.data_block_size,
            ids: Mutex::new(()),
        })
    }

    fn dm_name(&self, name: &str) -> String {
        format!("{}-snap-{name}", self.pool)
    }

    fn dev_path(&self, name: &str) -> PathBuf {
        Path::new("/dev/mapper").join(self.dm_name(name))
    }

    fn thin_id(&self, name: &str) -> Result<u64> {
        let p = self.dir.join(name);
        let s = std::fs::read_to_string(&p).map_err(|e| Error::io("read", &p, e))?;
        s.trim()
            .parse()
            .map_err(|_| Error::Storage(format!("{}: bad thin id {s:?}", p.display())))
    }

    fn next_thin_id(&self) -> Result<u64> {
        let _g = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let p = self.dir.join(".next_id");
        let id = std::fs::read_to_string(&p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1u64);
        write_durable(&p, &(id + 1).to_string())?;
        Ok(id)
    }

    fn message(&self, msg: &str) -> Result<()> {
        dmsetup(&["message", &self.pool, "0", msg]).map(drop)
    }
}

fn write_durable(p: &Path, s: &str) -> Result<()> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, s).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, p).map_err(|e| Error::io("rename", &tmp, e))
}

impl PoolDriver for ThinPool {
    fn create(&self, name: &str, parent: Option<&str>) -> Result<()> {
        let tid = self.next_thin_id()?;
        match parent {
            // The parent is committed, hence not active: no suspend needed.
            Some(p) => self.message(&msg_create_snap(tid, self.thin_id(p)?))?,
            None => self.message(&msg_create_thin(tid))?,
        }
        write_durable(&self.dir.join(name), &tid.to_string())?;
        if parent.is_none() {
            let res = self
                .activate(name, false)
                .and_then(|dev| dfs::mkfs(&self.fs_type, &dev));
            let off = self.deactivate(name);
            if let Err(e) = res.and(off) {
                let _ = self.delete(name);
                return Err(e);
            }
        }
        Ok(())
    }

    fn publish(&self, staged: &str, id: &str) -> Result<()> {
        let (from, to) = (self.dir.join(staged), self.dir.join(id));
        std::fs::rename(&from, &to).map_err(|e| Error::io("rename", &from, e))
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.deactivate(name)?;
        if let Ok(tid) = self.thin_id(name) {
            self.message(&msg_delete(tid))?;
        }
        fsutil::remove_all(&self.dir.join(name))
    }

    fn names(&self) -> Result<Vec<String>> {
        Ok(fsutil::read_dir_names(&self.dir)?
            .into_iter()
            .filter_map(fsutil::os_to_string)
            .filter(|n| !n.starts_with('.'))
            .collect())
    }

    fn activate(&self, name: &str, read_only: bool) -> Result<PathBuf> {
        let dev = self.dev_path(name);
        if !dev.exists() {
            let table = thin_table(self.sectors, &self.pool, self.thin_id(name)?);
            let dm = self.dm_name(name);
            let mut args = vec!["create", dm.as_str(), "--table", table.as_str()];
            if read_only {
                args.push("--readonly");
            }
            dmsetup(&args)?;
        }
        Ok(dev)
    }

    fn device(&self, name: &str) -> Option<PathBuf> {
        let dev = self.dev_path(name);
        dev.exists().then_some(dev)
    }

    fn deactivate(&self, name: &str) -> Result<()> {
        if self.dev_path(name).exists() {
            // --deferred: removed once no longer open (a mounted container).
            dmsetup(&["remove", "--deferred", &self.dm_name(name)])?;
        }
        Ok(())
    }

    fn sweep(&self, keep: &dyn Fn(&str) -> bool) -> Result<()> {
        let prefix = format!("{}-snap-", self.pool);
        let list = dmsetup_out(&["ls", "--target", "thin"])?;
        for line in list.lines() {
            let Some(dm) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(name) = dm.strip_prefix(&prefix) {
                if !keep(name) {
                    dmsetup(&["remove", "--deferred", dm])?;
                }
            }
        }
        Ok(())
    }

    fn usage(&self, name: &str) -> Result<(u64, u64)> {
        // dm-thin reports mapped blocks, not which are shared.
        let status = dmsetup_out(&["status", &self.dm_name(name)])?;
        let mapped = parse_thin_status(&status).ok_or_else(|| {
            Error::Storage(format!("dmsetup status {}: {status:?}", self.dm_name(name)))
        })?;
        Ok((mapped, 0))
    }

    fn fs_source(&self, name: &str) -> Result<PathBuf> {
        // Reading the superblock needs the device; committed parents are
        // activated read-only for it.
        self.activate(name, true)
    }

    fn pool_usage(&self) -> Result<u64> {
        // thin-pool status: <start> <len> thin-pool <transaction id>
        // <used meta>/<total meta> <used data>/<total data> ...
        let status = dmsetup_out(&["status", &self.pool])?;
        let used = status
            .split_whitespace()
            .nth(5)
            .and_then(|f| f.split('/').next())
            .and_then(|u| u.parse::<u64>().ok())
            .ok_or_else(|| Error::Storage(format!("dmsetup status {}: {status:?}", self.pool)))?;
        Ok(used * self.block_bytes)
    }

    fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_messages() {
        assert_eq!(
            pool_table(2097152, "/dev/sdb1", "/dev/sdb2", 128),
            "0 2097152 thin-pool /dev/sdb1 /dev/sdb2 128 32768 1 skip_block_zeroing"
        );
        assert_eq!(
            thin_table(20971520, "berth-thinpool", 7),
            "0 20971520 thin /dev/mapper/berth-thinpool 7"
        );
        assert_eq!(msg_create_thin(3), "create_thin 3");
        assert_eq!(msg_create_snap(4, 3), "create_snap 4 3");
        assert_eq!(msg_delete(4), "delete 4");
        assert_eq!(
            parse_thin_status("0 20971520 thin 2048 20971519\n"),
            Some(2048 * 512)
        );
        assert_eq!(parse_thin_status("0 1 linear"), None);
    }

    #[test]
    fn open_says_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let config = DevmapperConfig {
            pool_name: "berth-test-no-such-pool".into(),
            ..DevmapperConfig::default()
        };
        let Err(err) = ThinPool::open(d.path(), &config) else {
            panic!("a pool without devices must not open");
        };
        if Path::new("/dev/mapper/control").exists() {
            assert!(err.to_string().contains("data_device"), "{err}");
        } else {
            assert_eq!(err.kind(), berth_errdefs::ErrorKind::NotImplemented);
            assert!(err.to_string().contains("/dev/mapper/control"), "{err}");
        }
    }
}
