//! Copy-up: bringing a lower-branch entry into the rw branch with its data and metadata
//! (owner, mode, xattrs, times), atomically through a hidden temporary name.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::sys;

/// Temporary copy-up names start with `.wh.`, so they are never visible in the union.
const TMP_PREFIX: &str = ".wh..wh.copyup.";

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Copies owner, xattrs, mode and times of `src` (described by `meta`) onto `dst`.
/// Order matters: chown clears set-id bits and file capabilities, so it goes first.
pub fn copy_metadata(src: &Path, meta: &Metadata, dst: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    copy_xattrs(src, dst)?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    set_times(dst, meta)
}

/// Sets atime and mtime of `dst` (not following symlinks) from `meta`.
pub fn set_times(dst: &Path, meta: &Metadata) -> io::Result<()> {
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Copies every extended attribute; a filesystem without xattr support has none to copy.
pub fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let names = match sys::llistxattr(src) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let value = match sys::lgetxattr(src, name) {
            Ok(v) => v,
            // Removed meanwhile (e.g. by the kernel): nothing to copy.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        sys::lsetxattr(dst, name, &value, 0)?;
    }
    Ok(())
}

/// Copies the non-directory `src` to `dir/name` (which must not exist), going through a
/// temporary name in `dir` and a rename, so a crash never leaves a half-copied file visible.
pub fn copy_node(src: &Path, dir: &Path, name: &OsStr) -> io::Result<Metadata> {
    let meta = fs::symlink_metadata(src)?;
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}.{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let ft = meta.file_type();
        if ft.is_file() {
            let mut from = File::open(src)?;
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // std uses copy_file_range here: reflinks or in-kernel copies where possible.
            io::copy(&mut from, &mut to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(src)?, &tmp)?;
        } else if ft.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        } else {
            let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            nix::sys::stat::mknod(&tmp, kind, Mode::from_bits_truncate(0o600), meta.rdev())?;
        }
        copy_metadata(src, &meta, &tmp)?;
        fs::rename(&tmp, dir.join(name))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::symlink_metadata(dir.join(name))
}

/// Creates the directory `dst` as a copy of directory `src`'s attributes (not its entries).
pub fn copy_dir_shell(src: &Path, dst: &Path) -> io::Result<Metadata> {
    let meta = fs::symlink_metadata(src)?;
    match fs::create_dir(dst) {
        Ok(()) => {}
        // Left by an interrupted earlier copy-up: take it over.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dst.is_dir() => {}
        Err(e) => return Err(e),
    }
    copy_metadata(src, &meta, dst)?;
    fs::symlink_metadata(dst)
}
