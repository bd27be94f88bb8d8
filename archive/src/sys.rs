//! Small safe wrappers over the `*at` syscalls and xattrs the layer code
//! needs. Every path handed to the kernel here is either a single name
//! relative to a directory fd or a path resolved with `openat2`.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode};

/// How the parent directories of a layer entry are resolved when a path goes
/// through a symlink that already exists under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolve {
    /// `RESOLVE_BENEATH`: symlinks are followed only while they stay below the
    /// root; an absolute symlink or one that climbs above the root makes the
    /// entry fail with InvalidArgument. The strict default.
    #[default]
    Beneath,
    /// `RESOLVE_IN_ROOT`: symlinks are followed as if the root were `/`
    /// (an absolute or `..` symlink resolves inside the root), as containerd
    /// does. Never escapes, but writes through such symlinks succeed.
    InRoot,
}

/// Opens `path` as an `O_PATH` directory fd: the anchor of every resolution.
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Resolves the directory `rel` (relative, already cleaned, may be empty)
/// under `root` with `openat2`, never leaving the root, never following magic
/// links. Returns an `O_PATH` fd.
pub(crate) fn resolve_dir(
    root: BorrowedFd<'_>,
    rel: &Path,
    resolve: Resolve,
) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let flags = match resolve {
        Resolve::Beneath => ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        Resolve::InRoot => ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(flags);
    // openat2 may ask to retry when a rename raced with the resolution.
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(root, rel, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            Err(Errno::ENOSYS) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "openat2 is not available (Linux 5.6 or later is needed)",
                ))
            }
            other => return Ok(other?),
        }
    }
}

/// Opens a child directory for reading (listing, fchown, fchmod), refusing
/// to follow a symlink in its place.
pub(crate) fn open_child_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`, `None` when it does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The path `/proc/self/fd/<dir>/<name>`: reaches `name` inside the directory
/// the fd refers to without resolving any path from the archive again. Used
/// for the few calls that have no `*at` form (lsetxattr, remove_dir_all).
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if name.is_empty() {
        p.push(".");
    } else {
        p.push(name);
    }
    p
}

/// Removes `name` in `dir` whatever it is (a whole tree for a directory);
/// a missing name is not an error. Symlinks are removed, never followed.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        // std's remove_dir_all works with openat/unlinkat and O_NOFOLLOW, so
        // it cannot be redirected by symlinks inside the tree.
        match std::fs::remove_dir_all(proc_path(dir, name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    } else {
        match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Lists the names in a directory opened for reading (without `.`/`..`).
pub(crate) fn list_dir(dir: OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    let mut d = nix::dir::Dir::from_fd(dir)?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(name).to_os_string());
    }
    Ok(names)
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

/// `lsetxattr(path, key, value)`: sets an xattr without following a final
/// symlink.
pub(crate) fn lsetxattr(path: &Path, key: &str, value: &[u8]) -> io::Result<()> {
    let p = cstring(path.as_os_str().as_bytes())?;
    let k = cstring(key.as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the
    // call; value points to value.len() readable bytes.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop).map_err(Into::into)
}

/// `fsetxattr(fd, key, value)`.
pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, key: &str, value: &[u8]) -> io::Result<()> {
    let k = cstring(key.as_bytes())?;
    // SAFETY: fd is a live descriptor, k a valid C string, value points to
    // value.len() readable bytes.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop).map_err(Into::into)
}

/// `llistxattr(path)`: the xattr names of a file, not following a final
/// symlink. A file system without xattrs gives an empty list.
pub(crate) fn llistxattr(path: &Path) -> io::Result<Vec<String>> {
    let p = cstring(path.as_os_str().as_bytes())?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: with size 0 the kernel only returns the needed size;
        // otherwise buf has buf.len() writable bytes.
        let rc = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(rc) {
            Ok(n) => {
                let n = n as usize;
                if buf.is_empty() && n > 0 {
                    buf.resize(n, 0);
                    continue;
                }
                buf.truncate(n);
                break;
            }
            Err(Errno::ERANGE) => buf.clear(),
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// `lgetxattr(path, key)`, `None` when the attribute is absent.
pub(crate) fn lgetxattr(path: &Path, key: &str) -> io::Result<Option<Vec<u8>>> {
    let p = cstring(path.as_os_str().as_bytes())?;
    let k = cstring(key.as_bytes())?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: as for llistxattr: size 0 queries, else buf is writable.
        let rc =
            unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(rc) {
            Ok(n) => {
                let n = n as usize;
                if buf.is_empty() && n > 0 {
                    buf.resize(n, 0);
                    continue;
                }
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::ERANGE) => buf.clear(),
            Err(Errno::ENODATA) | Err(Errno::ENOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}
