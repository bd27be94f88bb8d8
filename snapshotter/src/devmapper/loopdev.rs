//! Loop devices through their ioctls (what `losetup` does), without the
//! CLI: attach a file (`LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE`, or
//! `LOOP_SET_FD` + `LOOP_SET_STATUS64` on kernels before 5.8), detach, and
//! find which devices back a file (`/sys/block/loopN/loop/backing_file`).
//!
//! Every device is attached with `LO_FLAGS_AUTOCLEAR`: the kernel detaches
//! it when its last opener goes. A [`LoopDevice`] holds the device open, so
//! a device lives exactly as long as its holder or the filesystem mounted
//! on it: a process killed with SIGKILL leaks no loop device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const LOOP_CONTROL: &str = "/dev/loop-control";

// <linux/loop.h>
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// ioctl(2) with an argument that is a plain integer or a pointer to a
/// `repr(C)` value owned by the caller.
fn ioctl(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: `fd` is an open descriptor; every caller passes either an
    // integer argument or a pointer to a live value of the type the
    // request expects (checked at each call site).
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An attached loop device, held open (see the module docs).
#[derive(Debug)]
pub struct LoopDevice {
    file: File,
    index: u32,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> PathBuf {
        dev_path(self.index)
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Detaches now if nothing else holds the device; else (mounted) the
    /// kernel detaches it when the last user goes (autoclear).
    pub fn detach(self) -> Result<()> {
        match ioctl(self.file.as_raw_fd(), LOOP_CLR_FD, 0) {
            // ENXIO: already detached.
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
            Err(e) => Err(Error::io("detach loop device", self.path(), e)),
        }
    }
}

fn dev_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{index}"))
}

/// Can this host attach loop devices at all?
pub fn check_support() -> Result<()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map(drop)
        .map_err(|e| {
            Error::Unsupported(format!(
                "loop devices: cannot open {LOOP_CONTROL} ({e}); load the loop module \
                 (`modprobe loop`) or run with access to /dev"
            ))
        })
}

/// Attaches `file` to a free loop device (read-only if asked), with
/// autoclear, and returns the held device.
pub fn attach(file: &Path, read_only: bool) -> Result<LoopDevice> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(file)
        .map_err(|e| Error::io("open", file, e))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(|e| Error::io("open", LOOP_CONTROL, e))?;
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    // Another process may take the free device between GET_FREE and
    // CONFIGURE (EBUSY): ask again.
    for _ in 0..64 {
        let index = ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE, 0)
            .map_err(|e| Error::io("find a free loop device", LOOP_CONTROL, e))?;
        let index = u32::try_from(index).map_err(|_| {
            Error::io(
                "find a free loop device",
                LOOP_CONTROL,
                io::Error::other("bad index"),
            )
        })?;
        let path = dev_path(index);
        let dev = match OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            // Just removed by someone (loop_control remove), or still being
            // torn down after an autoclear detach (ENXIO): try another.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENXIO) =>
            {
                continue
            }
            Err(e) => return Err(Error::io("open", &path, e)),
        };
        match configure(&dev, &backing, file, flags) {
            Ok(()) => return Ok(LoopDevice { file: dev, index }),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => {
                return Err(Error::io(
                    "attach loop device",
                    &path,
                    io::Error::new(e.kind(), format!("backing {}: {e}", file.display())),
                ))
            }
        }
    }
    Err(Error::io(
        "attach loop device",
        file,
        io::Error::other("every free loop device was taken by others; gave up"),
    ))
}

fn configure(dev: &File, backing: &File, name: &Path, flags: u32) -> io::Result<()> {
    // SAFETY: LoopInfo64 is plain integers and byte arrays; all zeroes is
    // a valid value.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    info.lo_flags = flags;
    let bytes = name.as_os_str().as_bytes();
    let n = bytes.len().min(LO_NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&bytes[..n]);
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // LOOP_CONFIGURE takes a pointer to a struct loop_config.
    match ioctl(
        dev.as_raw_fd(),
        LOOP_CONFIGURE,
        &config as *const LoopConfig as libc::c_ulong,
    ) {
        Ok(_) => return Ok(()),
        // Kernels before 5.8 do not know LOOP_CONFIGURE.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) => {}
        Err(e) => return Err(e),
    }
    ioctl(
        dev.as_raw_fd(),
        LOOP_SET_FD,
        backing.as_raw_fd() as libc::c_ulong,
    )?;
    // LOOP_SET_STATUS64 takes a pointer to a struct loop_info64.
    if let Err(e) = ioctl(
        dev.as_raw_fd(),
        LOOP_SET_STATUS64,
        &info as *const LoopInfo64 as libc::c_ulong,
    ) {
        let _ = ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0);
        return Err(e);
    }
    Ok(())
}

/// Opens an existing, attached `/dev/loopN` to hold it (adoption after a
/// restart).
pub fn open(index: u32, read_only: bool) -> Result<LoopDevice> {
    let path = dev_path(index);
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    Ok(LoopDevice { file, index })
}

/// Detaches `/dev/loopN` (deferred by the kernel while it is in use).
pub fn detach_index(index: u32) -> Result<()> {
    open(index, true)?.detach()
}

/// Is the device claimed by a filesystem (mounted anywhere) or another
/// exclusive user? An `O_EXCL` open of a block device fails with EBUSY then.
pub fn in_use(path: &Path) -> bool {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(libc::EBUSY),
    }
}

/// An attached loop device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub index: u32,
    /// The backing file's path (`(deleted)` stripped; see `deleted`).
    pub backing: PathBuf,
    pub deleted: bool,
    pub read_only: bool,
}

/// Every attached loop device.
pub fn list() -> Result<Vec<Attached>> {
    let mut out = Vec::new();
    let dir = Path::new("/sys/block");
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let base = entry.path().join("loop");
        // Absent for devices that are not attached.
        let Ok(raw) = std::fs::read_to_string(base.join("backing_file")) else {
            continue;
        };
        let raw = raw.trim_end_matches('\n');
        let (path, deleted) = match raw.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (raw, false),
        };
        let read_only = std::fs::read_to_string(entry.path().join("ro"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        out.push(Attached {
            index,
            backing: PathBuf::from(path),
            deleted,
            read_only,
        });
    }
    out.sort_by_key(|a| a.index);
    Ok(out)
}

/// Attached devices whose backing file is `file` (by path).
pub fn find_backing(file: &Path) -> Result<Vec<Attached>> {
    Ok(list()?
        .into_iter()
        .filter(|a| !a.deleted && a.backing == file)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn attach_find_detach() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("img");
        File::create(&f).unwrap().set_len(1 << 20).unwrap();
        let dev = attach(&f, true).unwrap();
        let found = find_backing(&f).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].index, dev.index());
        assert!(found[0].read_only);
        assert!(!in_use(&dev.path()));
        let idx = dev.index();
        dev.detach().unwrap();
        assert!(find_backing(&f).unwrap().is_empty());
        assert!(!list()
            .unwrap()
            .iter()
            .any(|a| a.index == idx && a.backing == f));
        // Autoclear: dropping the holder detaches too.
        let dev = attach(&f, false).unwrap();
        assert!(!find_backing(&f).unwrap()[0].read_only);
        drop(dev);
        assert!(find_backing(&f).unwrap().is_empty());
    }
}
