//! Applying an OCI layer tar onto a directory.
//!
//! Every name from the archive is cleaned lexically (absolute names and names
//! that climb above the root are rejected) and every parent directory is
//! resolved with `openat2` relative to an `O_PATH` fd of the root
//! ([`Resolve`]), so nothing the archive or the tree already under the root
//! contains can make a write, a link or a removal land outside the root. The
//! last component is never followed: it is created with `O_EXCL|O_NOFOLLOW`,
//! `mknodat`, `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`, and changed
//! with `AT_SYMLINK_NOFOLLOW` calls.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use tar::EntryType;

use crate::error::{Error, Result};
use crate::path::RelPath;
use crate::sys::{self, Resolve};

/// What to do with OCI whiteouts (`.wh.<name>` and `.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Native: really delete the hidden files; an opaque directory loses the
    /// children it had before this layer.
    #[default]
    Remove,
    /// Overlayfs upper directory: `.wh.x` becomes a 0/0 character device `x`,
    /// `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on the directory.
    Overlay,
    /// Aufs-style branch: whiteout files are kept as the files they are.
    Keep,
}

/// Options of [`apply_layer`].
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub whiteouts: WhiteoutMode,
    /// How parents that go through existing symlinks are resolved.
    pub resolve: Resolve,
    /// Lower directories, topmost first (overlay `lowerdir`s): a parent
    /// directory missing under the root but present in one of them is
    /// created with that directory's mode, owner, times and xattrs (not
    /// `trusted.*`), as containerd's `WithParents` does, instead of 0755 root.
    pub parents: Vec<PathBuf>,
}

impl ApplyOptions {
    pub fn new(whiteouts: WhiteoutMode) -> ApplyOptions {
        ApplyOptions {
            whiteouts,
            ..ApplyOptions::default()
        }
    }
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries read from the archive (not counting PAX/GNU extension headers).
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Character and block devices and fifos.
    pub nodes: u64,
    /// `.wh.<name>` entries handled as whiteouts.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries handled as opaque markers.
    pub opaques: u64,
    /// Bytes of regular-file content written.
    pub content_bytes: u64,
    /// Entries ignored: the root itself, global PAX headers, `.wh..wh.*`
    /// metadata other than the opaque marker.
    pub skipped: u64,
    /// xattrs from the archive not set (`trusted.*`, or unsupported here).
    pub ignored_xattrs: u64,
}

/// Extension headers (PAX records, GNU long names) larger than this make the
/// archive invalid, so a hostile header cannot make us buffer gigabytes.
const HEADER_BUDGET: u64 = 8 << 20;
const COPY_BUFFER: usize = 256 << 10;

/// Applies the layer tar read from `reader` onto the directory `root`.
///
/// Hostile input fails with an InvalidArgument error naming the entry; no
/// entry can create, change or remove anything outside `root`. The reader is
/// read to its end (past the end-of-archive marker), so digests computed by
/// wrapping readers cover the whole stream. On error the root is left
/// partially applied: callers discard it.
pub fn apply_layer(reader: impl Read, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats> {
    let root_fd = sys::open_dir_path(root).map_err(|e| Error::io("open layer root", root, e))?;
    let budget = Rc::new(Cell::new(u64::MAX));
    let input = Budget {
        inner: BufReader::with_capacity(COPY_BUFFER, reader),
        left: budget.clone(),
    };
    let mut archive = tar::Archive::new(input);
    let mut applier = Applier {
        root: root_fd,
        opts,
        stats: ApplyStats::default(),
        unpacked: HashSet::new(),
        dirs: Vec::new(),
        buf: vec![0; COPY_BUFFER],
    };
    {
        let mut entries = archive.entries().map_err(|e| Error::Corrupt {
            context: "at its start".into(),
            source: e,
        })?;
        let mut last: Option<String> = None;
        loop {
            budget.set(HEADER_BUDGET);
            let next = entries.next();
            budget.set(u64::MAX);
            let mut entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    return Err(Error::Corrupt {
                        context: match &last {
                            Some(name) => format!("after entry {name:?}"),
                            None => "at its first entry".into(),
                        },
                        source: e,
                    })
                }
            };
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            applier.entry(&mut entry, &name)?;
            last = Some(name);
        }
    }
    applier.finish();
    let stats = applier.stats;
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| Error::Corrupt {
        context: "after the end-of-archive marker".into(),
        source: e,
    })?;
    Ok(stats)
}

/// A reader that fails once more than `left` bytes are asked for; the limit is
/// lowered only while the tar reader parses headers.
struct Budget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("extension headers larger than {HEADER_BUDGET} bytes"),
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if left != u64::MAX {
            self.left.set(left - n as u64);
        }
        Ok(n)
    }
}

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct DirTimes {
    rel: RelPath,
    atime: TimeSpec,
    mtime: TimeSpec,
}

struct Applier<'o> {
    root: OwnedFd,
    opts: &'o ApplyOptions,
    stats: ApplyStats,
    /// Paths created by this layer: an opaque marker keeps them.
    unpacked: HashSet<PathBuf>,
    dirs: Vec<DirTimes>,
    buf: Vec<u8>,
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<()> {
        self.stats.entries += 1;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::XGlobalHeader => {
                self.stats.skipped += 1;
                let size = entry.size();
                return drain(entry, name, size);
            }
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Char
            | EntryType::Block
            | EntryType::Fifo => {}
            EntryType::GNUSparse => {
                return Err(Error::invalid(name, "GNU sparse files are not supported"))
            }
            other => {
                return Err(Error::invalid(
                    name,
                    format!(
                        "unsupported entry type '{}'",
                        other.as_byte().escape_ascii()
                    ),
                ))
            }
        }
        let declared = entry.size();
        let raw = entry.path_bytes().into_owned();
        let rel = RelPath::clean(&raw).map_err(|r| Error::invalid(name, r))?;
        let Some((parent, base)) = rel.split() else {
            // The root itself: its metadata belongs to the snapshot, not the layer.
            self.stats.skipped += 1;
            return drain(entry, name, declared);
        };
        let meta = read_meta(entry, name)?;

        let base_bytes = base.as_bytes();
        if let Some(target) = base_bytes.strip_prefix(b".wh.") {
            let is_meta = target.starts_with(b".wh.");
            if !is_meta && (target.is_empty() || target == b"." || target == b"..") {
                return Err(Error::invalid(
                    name,
                    "whiteout does not name a file in its directory",
                ));
            }
            if self.opts.whiteouts != WhiteoutMode::Keep {
                drain(entry, name, declared)?;
                return self.whiteout(name, parent, base_bytes, &meta);
            }
        }

        match kind {
            EntryType::Directory => self.directory(name, &rel, &meta)?,
            EntryType::Regular | EntryType::Continuous => {
                self.file(entry, name, parent, base, &meta)?
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| Error::invalid(name, "symlink without a target"))?;
                self.symlink(name, parent, base, &target, &meta)?
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| Error::invalid(name, "hard link without a target"))?;
                self.hardlink(name, &rel, &target)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let dev = if kind == EntryType::Fifo {
                    0
                } else {
                    let major = header.device_major().ok().flatten();
                    let minor = header.device_minor().ok().flatten();
                    match (major, minor) {
                        (Some(major), Some(minor)) => libc::makedev(major, minor),
                        _ => return Err(Error::invalid(name, "invalid device numbers")),
                    }
                };
                self.node(name, parent, base, kind, dev, &meta)?
            }
            _ => unreachable!("filtered above"),
        }
        let remaining = if matches!(kind, EntryType::Regular | EntryType::Continuous) {
            0
        } else {
            declared
        };
        drain(entry, name, remaining)?;
        self.unpacked.insert(rel.as_path().to_path_buf());
        Ok(())
    }

    /// Resolves `parent` (relative to the root) to an `O_PATH` fd.
    fn resolve(&self, parent: &Path) -> io::Result<OwnedFd> {
        sys::resolve_dir(self.root.as_fd(), parent, self.opts.resolve)
    }

    /// Resolves the parent directory of an entry, creating missing
    /// directories (0755, root-owned) like containerd's `mkparent`.
    fn parent_dir(&self, name: &str, parent: &Path) -> Result<OwnedFd> {
        match self.resolve(parent) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(resolve_error(name, parent, e)),
        }
        let mut cur = self
            .resolve(Path::new(""))
            .map_err(|e| resolve_error(name, parent, e))?;
        let mut prefix = PathBuf::new();
        for comp in parent.iter() {
            prefix.push(comp);
            match self.resolve(&prefix) {
                Ok(fd) => cur = fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let created = match nix::sys::stat::mkdirat(
                        cur.as_fd(),
                        comp,
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) => true,
                        Err(Errno::EEXIST) => false,
                        Err(e) => {
                            return Err(Error::entry_io(
                                name,
                                format!("create parent directory {prefix:?}"),
                                e.into(),
                            ))
                        }
                    };
                    if created {
                        // mkdirat applied the umask: set the mode exactly.
                        let _ = nix::sys::stat::fchmodat(
                            cur.as_fd(),
                            comp,
                            Mode::from_bits_truncate(0o755),
                            FchmodatFlags::FollowSymlink,
                        );
                        self.copy_parent_info(cur.as_fd(), comp, &prefix)
                            .map_err(|e| {
                                Error::entry_io(
                                    name,
                                    format!("copy attributes of parent {prefix:?} from a lower"),
                                    e,
                                )
                            })?;
                    }
                    cur = self
                        .resolve(&prefix)
                        .map_err(|e| resolve_error(name, &prefix, e))?;
                }
                Err(e) => return Err(resolve_error(name, &prefix, e)),
            }
        }
        Ok(cur)
    }

    /// Gives the directory `name` in `dir` (just created as `rel`) the
    /// attributes of the first lower directory that has `rel` as a directory.
    fn copy_parent_info(&self, dir: BorrowedFd<'_>, name: &OsStr, rel: &Path) -> io::Result<()> {
        for lower in &self.opts.parents {
            let lower_fd = sys::open_dir_path(lower)?;
            let found = match sys::resolve_dir(lower_fd.as_fd(), rel, self.opts.resolve) {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT)) => continue,
                // Not a directory there: it was replaced, keep the defaults.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let st = nix::sys::stat::fstat(found.as_fd())?;
            let created = sys::open_child_dir(dir, name)?;
            nix::unistd::fchown(
                created.as_fd(),
                Some(Uid::from_raw(st.st_uid)),
                Some(Gid::from_raw(st.st_gid)),
            )?;
            nix::sys::stat::fchmod(
                created.as_fd(),
                Mode::from_bits_truncate(st.st_mode & 0o7777),
            )?;
            let src = sys::proc_path(found.as_fd(), OsStr::new(""));
            for key in sys::llistxattr(&src)? {
                if key.starts_with("trusted.") {
                    continue;
                }
                if let Some(value) = sys::lgetxattr(&src, &key)? {
                    sys::fsetxattr(created.as_fd(), &key, &value)?;
                }
            }
            let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
            let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
            nix::sys::stat::futimens(created.as_fd(), &atime, &mtime)?;
            return Ok(());
        }
        Ok(())
    }

    /// Removes what is at `base` unless both it and the new entry are
    /// directories. Returns whether an existing directory is kept.
    fn replace_existing(
        &self,
        name: &str,
        dir: BorrowedFd<'_>,
        base: &OsStr,
        new_is_dir: bool,
    ) -> Result<bool> {
        match sys::lstat_at(dir, base) {
            Ok(None) => Ok(false),
            Ok(Some(st)) if new_is_dir && sys::is_dir(&st) => Ok(true),
            Ok(Some(_)) => sys::remove_all_at(dir, base)
                .map(|()| false)
                .map_err(|e| Error::entry_io(name, "remove existing file", e)),
            Err(e) => Err(Error::entry_io(name, "stat existing file", e)),
        }
    }

    fn directory(&mut self, name: &str, rel: &RelPath, meta: &Meta) -> Result<()> {
        let (parent, base) = rel.split().ok_or_else(|| Error::invalid(name, "root"))?;
        let pfd = self.parent_dir(name, parent)?;
        let kept = self.replace_existing(name, pfd.as_fd(), base, true)?;
        if !kept {
            nix::sys::stat::mkdirat(pfd.as_fd(), base, Mode::from_bits_truncate(0o700))
                .map_err(|e| Error::entry_io(name, "create directory", e.into()))?;
        }
        let dfd = sys::open_child_dir(pfd.as_fd(), base)
            .map_err(|e| Error::entry_io(name, "open directory", e))?;
        nix::unistd::fchown(
            dfd.as_fd(),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| Error::entry_io(name, "chown", e.into()))?;
        self.set_xattrs(name, meta, |k, v| sys::fsetxattr(dfd.as_fd(), k, v), true)?;
        nix::sys::stat::fchmod(dfd.as_fd(), Mode::from_bits_truncate(meta.mode))
            .map_err(|e| Error::entry_io(name, "chmod", e.into()))?;
        self.dirs.push(DirTimes {
            rel: rel.clone(),
            atime: meta.atime,
            mtime: meta.mtime,
        });
        self.stats.dirs += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        parent: &Path,
        base: &OsStr,
        meta: &Meta,
    ) -> Result<()> {
        let declared = entry.size();
        let pfd = self.parent_dir(name, parent)?;
        self.replace_existing(name, pfd.as_fd(), base, false)?;
        let fd = nix::fcntl::openat(
            pfd.as_fd(),
            base,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::entry_io(name, "create file", e.into()))?;
        let mut file = File::from(fd);
        let mut written: u64 = 0;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(name, e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| Error::entry_io(name, "write file", e))?;
            written += n as u64;
        }
        if written != declared {
            return Err(truncated(name, declared, written));
        }
        self.stats.content_bytes += written;
        nix::unistd::fchown(
            file.as_fd(),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| Error::entry_io(name, "chown", e.into()))?;
        self.set_xattrs(name, meta, |k, v| sys::fsetxattr(file.as_fd(), k, v), true)?;
        nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(meta.mode))
            .map_err(|e| Error::entry_io(name, "chmod", e.into()))?;
        nix::sys::stat::futimens(file.as_fd(), &meta.atime, &meta.mtime)
            .map_err(|e| Error::entry_io(name, "set times", e.into()))?;
        self.stats.files += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        name: &str,
        parent: &Path,
        base: &OsStr,
        target: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        if target.contains(&0) {
            return Err(Error::invalid(name, "symlink target contains a NUL byte"));
        }
        let pfd = self.parent_dir(name, parent)?;
        self.replace_existing(name, pfd.as_fd(), base, false)?;
        nix::unistd::symlinkat(OsStr::from_bytes(target), pfd.as_fd(), base)
            .map_err(|e| Error::entry_io(name, "create symlink", e.into()))?;
        self.lchown_at(name, pfd.as_fd(), base, meta)?;
        let path = sys::proc_path(pfd.as_fd(), base);
        self.set_xattrs(name, meta, |k, v| sys::lsetxattr(&path, k, v), false)?;
        self.times_at(name, pfd.as_fd(), base, meta)?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink(&mut self, name: &str, rel: &RelPath, target: &[u8]) -> Result<()> {
        let shown = String::from_utf8_lossy(target);
        let trel = RelPath::clean(target)
            .map_err(|r| Error::invalid(name, format!("hard link target {shown:?}: {r}")))?;
        let Some((tparent, tbase)) = trel.split() else {
            return Err(Error::invalid(name, "hard link to the layer root"));
        };
        if &trel == rel {
            return Ok(());
        }
        let tfd = self.resolve(tparent).map_err(|e| {
            let mut err = resolve_error(name, tparent, e);
            if let Error::InvalidEntry { reason, .. } = &mut err {
                *reason = format!("hard link target {shown:?}: {reason}");
            }
            err
        })?;
        match sys::lstat_at(tfd.as_fd(), tbase) {
            Ok(None) => {
                return Err(Error::invalid(
                    name,
                    format!("hard link target {shown:?} does not exist in the layer root"),
                ))
            }
            Ok(Some(st)) if sys::is_dir(&st) => {
                return Err(Error::invalid(
                    name,
                    format!("hard link target {shown:?} is a directory"),
                ))
            }
            Ok(Some(_)) => {}
            Err(e) => {
                return Err(Error::entry_io(
                    name,
                    format!("stat hard link target {shown:?}"),
                    e,
                ))
            }
        }
        let (parent, base) = rel.split().ok_or_else(|| Error::invalid(name, "root"))?;
        let pfd = self.parent_dir(name, parent)?;
        self.replace_existing(name, pfd.as_fd(), base, false)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        nix::unistd::linkat(tfd.as_fd(), tbase, pfd.as_fd(), base, AtFlags::empty())
            .map_err(|e| Error::entry_io(name, format!("hard link to {shown:?}"), e.into()))?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn node(
        &mut self,
        name: &str,
        parent: &Path,
        base: &OsStr,
        kind: EntryType,
        dev: libc::dev_t,
        meta: &Meta,
    ) -> Result<()> {
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let pfd = self.parent_dir(name, parent)?;
        self.replace_existing(name, pfd.as_fd(), base, false)?;
        nix::sys::stat::mknodat(
            pfd.as_fd(),
            base,
            sflag,
            Mode::from_bits_truncate(0o600),
            dev,
        )
        .map_err(|e| Error::entry_io(name, "create device node", e.into()))?;
        self.lchown_at(name, pfd.as_fd(), base, meta)?;
        let path = sys::proc_path(pfd.as_fd(), base);
        self.set_xattrs(name, meta, |k, v| sys::lsetxattr(&path, k, v), false)?;
        // The node was just created by us: it is not a symlink.
        nix::sys::stat::fchmodat(
            pfd.as_fd(),
            base,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| Error::entry_io(name, "chmod", e.into()))?;
        self.times_at(name, pfd.as_fd(), base, meta)?;
        self.stats.nodes += 1;
        Ok(())
    }

    fn whiteout(&mut self, name: &str, parent: &Path, base: &[u8], meta: &Meta) -> Result<()> {
        if base == b".wh..wh..opq" {
            self.stats.opaques += 1;
            return match self.opts.whiteouts {
                WhiteoutMode::Remove => match self.resolve(parent) {
                    Ok(dir) => self
                        .clear_opaque(dir, parent)
                        .map_err(|e| Error::entry_io(name, "clear opaque directory", e)),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                    Err(e) => Err(resolve_error(name, parent, e)),
                },
                WhiteoutMode::Overlay => {
                    let dir = self.parent_dir(name, parent)?;
                    sys::lsetxattr(
                        &sys::proc_path(dir.as_fd(), OsStr::new("")),
                        "trusted.overlay.opaque",
                        b"y",
                    )
                    .map_err(|e| Error::entry_io(name, "set trusted.overlay.opaque", e))
                }
                WhiteoutMode::Keep => Ok(()),
            };
        }
        let target = &base[4..];
        if target.starts_with(b".wh.") {
            // Other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not ours to apply.
            self.stats.skipped += 1;
            return Ok(());
        }
        let target = OsStr::from_bytes(target);
        self.stats.whiteouts += 1;
        match self.opts.whiteouts {
            WhiteoutMode::Remove => match self.resolve(parent) {
                Ok(dir) => sys::remove_all_at(dir.as_fd(), target)
                    .map_err(|e| Error::entry_io(name, "remove whited-out file", e)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                Err(e) => Err(resolve_error(name, parent, e)),
            },
            WhiteoutMode::Overlay => {
                let dir = self.parent_dir(name, parent)?;
                sys::remove_all_at(dir.as_fd(), target)
                    .map_err(|e| Error::entry_io(name, "remove whited-out file", e))?;
                nix::sys::stat::mknodat(dir.as_fd(), target, SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| Error::entry_io(name, "create whiteout device", e.into()))?;
                self.lchown_at(name, dir.as_fd(), target, meta)
            }
            WhiteoutMode::Keep => Ok(()),
        }
    }

    /// Removes everything under the directory `rel` that this layer did not
    /// create (recursively through directories the layer merged into).
    fn clear_opaque(&self, dir: OwnedFd, rel: &Path) -> io::Result<()> {
        let listing = sys::open_child_dir(dir.as_fd(), OsStr::new("."))?;
        for child in sys::list_dir(listing)? {
            let child_rel = rel.join(&child);
            if !self.unpacked.contains(&child_rel) {
                sys::remove_all_at(dir.as_fd(), &child)?;
            } else if let Some(st) = sys::lstat_at(dir.as_fd(), &child)? {
                if sys::is_dir(&st) {
                    let sub = sys::open_child_dir(dir.as_fd(), &child)?;
                    self.clear_opaque(sub, &child_rel)?;
                }
            }
        }
        Ok(())
    }

    fn lchown_at(&self, name: &str, dir: BorrowedFd<'_>, base: &OsStr, meta: &Meta) -> Result<()> {
        nix::unistd::fchownat(
            dir,
            base,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::entry_io(name, "chown", e.into()))
    }

    fn times_at(&self, name: &str, dir: BorrowedFd<'_>, base: &OsStr, meta: &Meta) -> Result<()> {
        nix::sys::stat::utimensat(
            dir,
            base,
            &meta.atime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| Error::entry_io(name, "set times", e.into()))
    }

    /// Sets the archive's xattrs with `set`. `trusted.*` is never taken from
    /// an archive (it steers overlayfs); what the file system does not
    /// support is skipped, as containerd does.
    fn set_xattrs(
        &mut self,
        name: &str,
        meta: &Meta,
        set: impl Fn(&str, &[u8]) -> io::Result<()>,
        reg_or_dir: bool,
    ) -> Result<()> {
        for (key, value) in &meta.xattrs {
            if key.starts_with("trusted.") {
                tracing::debug!(entry = name, key, "ignoring trusted xattr from layer");
                self.stats.ignored_xattrs += 1;
                continue;
            }
            match set(key, value) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                    tracing::warn!(entry = name, key, "xattr not supported here, ignored");
                    self.stats.ignored_xattrs += 1;
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM)
                        && !reg_or_dir
                        && key.starts_with("user.") =>
                {
                    self.stats.ignored_xattrs += 1;
                }
                Err(e) => return Err(Error::entry_io(name, format!("set xattr {key}"), e)),
            }
        }
        Ok(())
    }

    /// Sets directory times last, since creating entries inside a directory
    /// changes its mtime.
    fn finish(&mut self) {
        for d in std::mem::take(&mut self.dirs) {
            let Some((parent, base)) = d.rel.split() else {
                continue;
            };
            // A directory removed or replaced by a later entry is skipped.
            if let Ok(pfd) = self.resolve(parent) {
                let _ = nix::sys::stat::utimensat(
                    pfd.as_fd(),
                    base,
                    &d.atime,
                    &d.mtime,
                    UtimensatFlags::NoFollowSymlink,
                );
            }
        }
    }
}

/// Reads what is left of an entry's data (`remaining` bytes are expected),
/// failing when the archive ends before that.
fn drain<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str, remaining: u64) -> Result<()> {
    let n = io::copy(entry, &mut io::sink()).map_err(|e| read_error(name, e))?;
    if n != remaining {
        let declared = entry.size();
        return Err(truncated(name, declared, declared - remaining + n));
    }
    Ok(())
}

fn truncated(name: &str, declared: u64, got: u64) -> Error {
    Error::invalid(
        name,
        format!(
            "archive truncated: the entry declares {declared} bytes of data but only {got} follow"
        ),
    )
}

fn read_error(name: &str, e: io::Error) -> Error {
    Error::invalid(name, format!("reading the entry's data: {e}"))
}

/// Turns a failed `openat2` of a parent into an error that says why.
fn resolve_error(name: &str, parent: &Path, e: io::Error) -> Error {
    let shown = parent.display();
    let reason = match e.raw_os_error() {
        Some(libc::EXDEV) => format!(
            "parent directory \"{shown}\" resolves outside the layer root (through a symlink or '..')"
        ),
        Some(libc::ELOOP) => format!("too many levels of symbolic links resolving \"{shown}\""),
        Some(libc::ENOTDIR) => format!("parent \"{shown}\" is not a directory"),
        Some(libc::ENOENT) => format!("parent directory \"{shown}\" does not exist"),
        Some(libc::ENAMETOOLONG) => format!("path \"{shown}\" is too long"),
        _ if e.kind() == io::ErrorKind::Unsupported => return Error::Unsupported(e.to_string()),
        _ => return Error::entry_io(name, format!("resolve parent \"{shown}\""), e),
    };
    Error::invalid(name, reason)
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta> {
    let header = entry.header();
    let bad =
        |what: &str, e: io::Error| Error::invalid(name, format!("invalid {what} in header: {e}"));
    let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let uid = header.uid().map_err(|e| bad("uid", e))?;
    let gid = header.gid().map_err(|e| bad("gid", e))?;
    let uid =
        u32::try_from(uid).map_err(|_| Error::invalid(name, format!("uid {uid} out of range")))?;
    let gid =
        u32::try_from(gid).map_err(|_| Error::invalid(name, format!("gid {gid} out of range")))?;
    let header_mtime = header.mtime().map_err(|e| bad("mtime", e))?;
    let mut mtime = (i64::try_from(header_mtime).unwrap_or(i64::MAX), 0u32);
    let mut atime = None;
    let mut xattrs = Vec::new();
    if let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| Error::invalid(name, format!("invalid PAX records: {e}")))?
    {
        for ext in exts {
            let ext = ext.map_err(|e| Error::invalid(name, format!("invalid PAX record: {e}")))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((attr.to_string(), ext.value_bytes().to_vec()));
            } else if key == "mtime" {
                mtime = parse_pax_time(ext.value_bytes())
                    .ok_or_else(|| Error::invalid(name, "invalid PAX mtime"))?;
            } else if key == "atime" {
                atime = Some(
                    parse_pax_time(ext.value_bytes())
                        .ok_or_else(|| Error::invalid(name, "invalid PAX atime"))?,
                );
            }
        }
    }
    // containerd sets atime to the later of atime and mtime.
    let atime = match atime {
        Some(a) if a > mtime => a,
        _ => mtime,
    };
    Ok(Meta {
        mode,
        uid,
        gid,
        atime: TimeSpec::new(atime.0, atime.1.into()),
        mtime: TimeSpec::new(mtime.0, mtime.1.into()),
        xattrs,
    })
}

/// Parses a PAX time (`1700000000.123456789`, possibly negative).
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        Some((secs, nanos))
    } else if nanos == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pax_time;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.000000001999"), Some((1, 1)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }
}
