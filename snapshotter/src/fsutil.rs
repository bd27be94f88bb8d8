//! Filesystem helpers shared by the backends: disk usage, a faithful tree
//! copy (native backend), extended attributes, staging directories.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::{Error, Result, Usage};

fn errno_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Disk usage of the tree at `path`, like containerd's `fs.DiskUsage` (and
/// `du`): the sum of allocated blocks and the number of distinct inodes
/// (hard links counted once), the root included. Does not cross into other
/// filesystems' mounts below `path`.
pub fn disk_usage(path: &Path) -> Result<Usage> {
    let root = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![(path.to_path_buf(), root)];
    while let Some((p, md)) = stack.pop() {
        if seen.insert(md.ino()) {
            usage.inodes += 1;
            usage.size += (md.blocks() * 512) as i64;
        }
        if md.is_dir() && md.dev() == dev {
            for entry in fs::read_dir(&p).map_err(|e| Error::io("read dir", &p, e))? {
                let entry = entry.map_err(|e| Error::io("read dir", &p, e))?;
                let child = entry.path();
                let cmd = fs::symlink_metadata(&child).map_err(|e| Error::io("stat", &child, e))?;
                stack.push((child, cmd));
            }
        }
    }
    Ok(usage)
}

/// Names of the extended attributes of `path` (not following symlinks).
pub fn list_xattrs(path: &Path) -> io::Result<Vec<OsString>> {
    let c = cpath(path)?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: `c` is a valid NUL-terminated path; the buffer pointer and
        // length describe `buf`'s allocation (a null pointer with length 0
        // asks for the size).
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => {
                    buf.clear();
                    continue;
                }
                Some(libc::ENOTSUP) => return Ok(Vec::new()),
                _ => return Err(e),
            }
        }
        let n = n as usize;
        if buf.is_empty() && n > 0 {
            buf.resize(n, 0);
            continue;
        }
        buf.truncate(n);
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsStr::from_bytes(s).to_os_string())
            .collect());
    }
}

/// The value of extended attribute `name` of `path` (not following symlinks).
pub fn get_xattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let c = cpath(path)?;
    let cname = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: valid C strings; pointer and length describe `buf`.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                buf.clear();
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if buf.is_empty() && n > 0 {
            buf.resize(n, 0);
            continue;
        }
        buf.truncate(n);
        return Ok(buf);
    }
}

/// Sets extended attribute `name` of `path` (not following symlinks).
pub fn set_xattr(path: &Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let cname = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: valid C strings; pointer and length describe `value`.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a fresh directory `<dir>/<prefix>XXXXXX` (mode 0700).
pub fn mkdtemp_in(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let template = dir.join(format!("{prefix}XXXXXX"));
    nix::unistd::mkdtemp(&template).map_err(|e| Error::io("mkdtemp", &template, errno_io(e)))
}

/// Creates directory `path` with exactly `mode` (regardless of the umask).
pub fn mkdir_mode(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io("mkdir", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

/// Copies the owner and permission bits of `from` onto directory `to`.
pub fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<()> {
    let md = fs::metadata(from).map_err(|e| Error::io("stat", from, e))?;
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))
        .map_err(|e| Error::io("chown", to, e))?;
    fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(|e| Error::io("chmod", to, e))
}

/// Removes `path` and everything below it; absent is fine.
pub fn remove_all(path: &Path) -> Result<()> {
    let res = match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Copies the tree at `src` into the existing directory `dst`, preserving
/// file types (regular, directory, symlink, fifo, socket, char/block
/// devices), permission bits (setuid/setgid/sticky included), owners,
/// access/modification times, extended attributes and hard links within
/// the tree. `dst` itself takes `src`'s owner, mode, xattrs and times.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links = HashMap::new();
    copy_dir_contents(src, dst, &mut links)?;
    let md = fs::symlink_metadata(src).map_err(|e| Error::io("stat", src, e))?;
    copy_metadata(src, dst, &md)
}

fn copy_dir_contents(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    for entry in fs::read_dir(src).map_err(|e| Error::io("read dir", src, e))? {
        let entry = entry.map_err(|e| Error::io("read dir", src, e))?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let md = fs::symlink_metadata(&s).map_err(|e| Error::io("stat", &s, e))?;
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                fs::hard_link(first, &d).map_err(|e| Error::io("link", &d, e))?;
                continue;
            }
            links.insert((md.dev(), md.ino()), d.clone());
        }
        if ft.is_dir() {
            fs::create_dir(&d).map_err(|e| Error::io("mkdir", &d, e))?;
            copy_dir_contents(&s, &d, links)?;
        } else if ft.is_file() {
            fs::copy(&s, &d).map_err(|e| Error::io("copy", &s, e))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&s).map_err(|e| Error::io("readlink", &s, e))?;
            std::os::unix::fs::symlink(&target, &d).map_err(|e| Error::io("symlink", &d, e))?;
        } else {
            let kind = if ft.is_fifo() {
                SFlag::S_IFIFO
            } else if ft.is_socket() {
                SFlag::S_IFSOCK
            } else if ft.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            let perm = Mode::from_bits_truncate((md.mode() & 0o7777) as libc::mode_t);
            nix::sys::stat::mknod(&d, kind, perm, md.rdev() as libc::dev_t)
                .map_err(|e| Error::io("mknod", &d, errno_io(e)))?;
        }
        copy_metadata(&s, &d, &md)?;
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid bits), xattrs, then times (last,
/// since the other changes touch ctime/mtime of directories).
fn copy_metadata(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))
        .map_err(|e| Error::io("chown", dst, e))?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", dst, e))?;
    }
    for name in list_xattrs(src).map_err(|e| Error::io("listxattr", src, e))? {
        let value = match get_xattr(src, &name) {
            Ok(v) => v,
            // Removed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(Error::io("getxattr", src, e)),
        };
        set_xattr(dst, &name, &value).map_err(|e| {
            Error::io(
                "setxattr",
                dst,
                io::Error::new(e.kind(), format!("{}: {e}", name.to_string_lossy())),
            )
        })?;
    }
    let atime = TimeSpec::new(md.atime(), md.atime_nsec());
    let mtime = TimeSpec::new(md.mtime(), md.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| Error::io("utimensat", dst, errno_io(e)))
}

/// Lists the names in `dir`.
pub fn read_dir_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))? {
        let entry = entry.map_err(|e| Error::io("read dir", dir, e))?;
        out.push(entry.file_name());
    }
    Ok(out)
}

/// Turns an `OsString` into a `String` if it is UTF-8.
pub fn os_to_string(s: OsString) -> Option<String> {
    String::from_utf8(s.into_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_preserves_everything() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("f"), b"hello").unwrap();
        std::os::unix::fs::lchown(src.join("f"), Some(12), Some(34)).unwrap();
        fs::set_permissions(src.join("f"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::hard_link(src.join("f"), src.join("g")).unwrap();
        fs::create_dir(src.join("sub")).unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o1700)).unwrap();
        std::os::unix::fs::symlink("../f", src.join("sub/l")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        nix::sys::stat::mknod(
            &src.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        let xattr_ok = set_xattr(&src.join("f"), OsStr::new("user.k"), b"v").is_ok()
            | set_xattr(&src.join("f"), OsStr::new("trusted.k"), b"v").is_ok();
        let when = TimeSpec::new(1_000_000, 123);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &src.join("sub"),
            &when,
            &when,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();

        copy_tree(&src, &dst).unwrap();

        let f = fs::symlink_metadata(dst.join("f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4751);
        assert_eq!((f.uid(), f.gid()), (12, 34));
        assert_eq!(fs::read(dst.join("f")).unwrap(), b"hello");
        let g = fs::symlink_metadata(dst.join("g")).unwrap();
        assert_eq!(f.ino(), g.ino());
        let sub = fs::symlink_metadata(dst.join("sub")).unwrap();
        assert_eq!(sub.mode() & 0o7777, 0o1700);
        assert_eq!((sub.mtime(), sub.mtime_nsec()), (1_000_000, 123));
        assert_eq!(fs::read_link(dst.join("sub/l")).unwrap(), Path::new("../f"));
        assert!(fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let null = fs::symlink_metadata(dst.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        if xattr_ok {
            let names = list_xattrs(&dst.join("f")).unwrap();
            assert!(!names.is_empty());
        }
        let u = disk_usage(&dst).unwrap();
        // dst, f(=g), sub, l, fifo, null
        assert_eq!(u.inodes, 6);
    }
}
