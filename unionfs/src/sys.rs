//! Thin wrappers over the few syscalls std and nix lack (xattrs on paths without following
//! symlinks). Every `unsafe` block of the crate lives here.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Runs a size-query-then-fill xattr call, retrying if the value grew in between.
fn sized(mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let len = call(std::ptr::null_mut(), 0);
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        if buf.is_empty() {
            return Ok(buf);
        }
        let got = call(buf.as_mut_ptr().cast(), buf.len());
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// `llistxattr`: the NUL-separated names.
pub fn llistxattr(path: &Path) -> io::Result<Vec<u8>> {
    let p = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: `p` is a valid C string; the buffer pointer/length pair comes from `sized`,
    // which passes either (null, 0) or a live Vec's pointer and length.
    sized(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) })
}

/// `lgetxattr`: one value.
pub fn lgetxattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let p = cstr(path.as_os_str().as_bytes())?;
    let n = cstr(name.as_bytes())?;
    // SAFETY: as in `llistxattr`; both strings outlive the call.
    sized(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf, len) })
}

/// `lsetxattr` with the caller's XATTR_CREATE/XATTR_REPLACE flags.
pub fn lsetxattr(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let p = cstr(path.as_os_str().as_bytes())?;
    let n = cstr(name.as_bytes())?;
    // SAFETY: valid C strings and a slice pointer with its own length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `lremovexattr`.
pub fn lremovexattr(path: &Path, name: &OsStr) -> io::Result<()> {
    let p = cstr(path.as_os_str().as_bytes())?;
    let n = cstr(name.as_bytes())?;
    // SAFETY: valid C strings.
    let rc = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fork(2)`. Returns the child's pid in the parent and `None` in the child.
///
/// The caller must still be single-threaded: the child of a multi-threaded process may only
/// call async-signal-safe functions, and the FUSE worker threads are started after this.
pub fn fork_single_threaded() -> io::Result<Option<nix::unistd::Pid>> {
    // SAFETY: called from `main` before any thread is spawned (see the doc comment), so the
    // child is a full copy of a single-threaded process and may do anything.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
        nix::unistd::ForkResult::Child => Ok(None),
    }
}
