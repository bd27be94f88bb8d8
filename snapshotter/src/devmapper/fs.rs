//! Filesystem helpers of the devmapper backend: mkfs of snapshot and pool
//! filesystems, block clones (`FICLONE`), owned/shared extents (`FIEMAP`),
//! and used-inode counts read from a filesystem's superblock.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use crate::{Error, Result};

/// Runs `prog args...`; a failure carries its stderr.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog).args(args).output().map_err(|e| {
        Error::io(
            "run",
            prog,
            io::Error::new(e.kind(), format!("{prog}: {e} (is it installed?)")),
        )
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(Error::io(
            "run",
            prog,
            io::Error::other(format!(
                "{prog} {}: {}: {stderr}",
                args.join(" "),
                out.status
            )),
        ));
    }
    Ok(stderr)
}

/// Is `prog` on PATH (or an absolute path that exists)?
pub(crate) fn have(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Makes a snapshot filesystem of `fs_type` (`ext4`, `xfs`) on `target`
/// (an image file or a block device), empty: root 0755, no `lost+found`
/// (a snapshot's tree must equal what was put in it).
pub(crate) fn mkfs(fs_type: &str, target: &Path) -> Result<()> {
    let t = target.to_string_lossy();
    match fs_type {
        "ext4" => {
            // The image is fresh and sparse (or a fresh thin device): it
            // reads as zeroes, so mkfs need not write inode tables or the
            // journal, and marks them zeroed so the kernel does not either
            // (e2fsprogs 1.47+; older ones zero them, costing blocks).
            let fast = run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-E",
                    "nodiscard,assume_storage_prezeroed=1",
                    &t,
                ],
            );
            if fast.is_err() {
                run(
                    "mkfs.ext4",
                    &[
                        "-q",
                        "-F",
                        "-m",
                        "0",
                        "-E",
                        "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                        &t,
                    ],
                )?;
            }
            let stderr = run("debugfs", &["-w", "-R", "rmdir lost+found", &t])?;
            // debugfs exits 0 on command errors; it prints only its banner
            // when all went well.
            if let Some(line) = stderr.lines().find(|l| !l.starts_with("debugfs ")) {
                return Err(Error::io(
                    "remove lost+found",
                    target,
                    io::Error::other(line.to_string()),
                ));
            }
            Ok(())
        }
        "xfs" => run("mkfs.xfs", &["-q", "-f", &t]).map(drop),
        other => Err(Error::InvalidArgument(format!(
            "devmapper: unsupported filesystem {other:?} (ext4 or xfs)"
        ))),
    }
}

/// Makes the pool filesystem (`xfs` with reflink, or `btrfs`) on `target`.
pub(crate) fn mkfs_pool(pool_fs: &str, target: &Path) -> Result<()> {
    let t = target.to_string_lossy();
    match pool_fs {
        "xfs" => run("mkfs.xfs", &["-q", "-f", "-m", "reflink=1", &t]).map(drop),
        "btrfs" => run("mkfs.btrfs", &["-q", "-f", &t]).map(drop),
        other => Err(Error::InvalidArgument(format!(
            "devmapper: unsupported pool filesystem {other:?} (xfs or btrfs)"
        ))),
    }
}

/// Makes `dst` a block-sharing clone of `src` (no data copied).
pub(crate) fn clone_file(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: both descriptors are open; FICLONE takes the source fd as an
    // integer argument.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// <linux/fiemap.h>
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
const EXTENTS_PER_CALL: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// Bytes of `file` in extents it owns alone, and in extents shared with
/// other files (clones), per FIEMAP (dirty data is flushed first).
pub(crate) fn extent_usage(file: &File) -> io::Result<(u64, u64)> {
    let (mut owned, mut shared) = (0u64, 0u64);
    let mut start = 0u64;
    let mut flags = FIEMAP_FLAG_SYNC;
    loop {
        let mut fm = Box::new(Fiemap {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: flags,
            fm_mapped_extents: 0,
            fm_extent_count: EXTENTS_PER_CALL as u32,
            fm_reserved: 0,
            fm_extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        });
        // SAFETY: `fm` is a struct fiemap followed by room for
        // fm_extent_count extents, as FS_IOC_FIEMAP expects; it outlives
        // the call.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP as _,
                &mut *fm as *mut Fiemap,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        flags = 0;
        let n = (fm.fm_mapped_extents as usize).min(EXTENTS_PER_CALL);
        if n == 0 {
            break;
        }
        let mut last = false;
        for e in &fm.fm_extents[..n] {
            if e.fe_flags & FIEMAP_EXTENT_SHARED != 0 {
                shared += e.fe_length;
            } else {
                owned += e.fe_length;
            }
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
        }
        let end = fm.fm_extents[n - 1].fe_logical + fm.fm_extents[n - 1].fe_length;
        if last || end <= start {
            break;
        }
        start = end;
    }
    Ok((owned, shared))
}

/// Used inodes of the ext4 or xfs filesystem in `image` (a file or block
/// device), from its superblock. Exact once the filesystem is unmounted;
/// while mounted, use statfs on a mount point instead.
pub(crate) fn superblock_used_inodes(image: &Path) -> Result<i64> {
    let mut f = File::open(image).map_err(|e| Error::io("open", image, e))?;
    let mut buf = [0u8; 2048];
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| Error::io("read superblock", image, e))?;
    parse_used_inodes(&buf).ok_or_else(|| {
        Error::io(
            "read superblock",
            image,
            io::Error::other("neither an ext4 nor an xfs filesystem"),
        )
    })
}

fn parse_used_inodes(buf: &[u8; 2048]) -> Option<i64> {
    let le32 = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let be64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[o..o + 8]);
        u64::from_be_bytes(b)
    };
    // ext2/3/4: superblock at 1024, magic 0xEF53 at +56.
    if buf[1024 + 56..1024 + 58] == [0x53, 0xEF] {
        let count = le32(1024) as i64;
        let free = le32(1024 + 16) as i64;
        return Some(count - free);
    }
    // xfs: "XFSB" at 0, sb_icount at 128, sb_ifree at 136 (big endian).
    if &buf[..4] == b"XFSB" {
        return Some(be64(128) as i64 - be64(136) as i64);
    }
    None
}

/// Used inodes of the filesystem mounted at `mountpoint`.
pub(crate) fn statfs_used_inodes(mountpoint: &Path) -> Result<i64> {
    let st = nix::sys::statvfs::statvfs(mountpoint)
        .map_err(|e| Error::io("statfs", mountpoint, io::Error::from_raw_os_error(e as i32)))?;
    Ok(st.files() as i64 - st.files_free() as i64)
}

/// Where the block device `rdev` is mounted in this mount namespace, from
/// `/proc/self/mountinfo` (field 3 is `major:minor`).
pub(crate) fn mountpoint_of(rdev: u64) -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    info.lines()
        .find(|l| l.split(' ').nth(2) == Some(want.as_str()))
        .and_then(|l| l.split(' ').nth(4))
        .map(|p| std::path::PathBuf::from(unescape(p)))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_parsing() {
        let mut b = [0u8; 2048];
        assert_eq!(parse_used_inodes(&b), None);
        b[1024..1028].copy_from_slice(&100u32.to_le_bytes());
        b[1040..1044].copy_from_slice(&89u32.to_le_bytes());
        b[1080] = 0x53;
        b[1081] = 0xEF;
        assert_eq!(parse_used_inodes(&b), Some(11));
        let mut x = [0u8; 2048];
        x[..4].copy_from_slice(b"XFSB");
        x[128..136].copy_from_slice(&64u64.to_be_bytes());
        x[136..144].copy_from_slice(&61u64.to_be_bytes());
        assert_eq!(parse_used_inodes(&x), Some(3));
    }

    #[test]
    fn fiemap_struct_sizes() {
        assert_eq!(std::mem::size_of::<FiemapExtent>(), 56);
        assert_eq!(std::mem::offset_of!(Fiemap, fm_extents), 32);
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
