//! Writing layers: the changes between two trees ([`write_diff`], a double
//! walk like containerd's `archive.WriteDiff` over continuity's
//! `fs.Changes`), an overlayfs upper directory ([`write_overlay_upper_diff`])
//! and a plain directory as it is ([`write_tree`]).
//!
//! Output is an OCI layer tar (ustar + PAX), entries in lexical order per
//! directory (parents before children), deletions as `.wh.<name>`, hard
//! links kept within the layer, times truncated to seconds, xattrs as PAX
//! `SCHILY.xattr.*` records (except `trusted.*` and `security.selinux`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;
use crate::writer::{TarEntry, TarWriter};

/// What a diff writer wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries written, whiteouts and opaque markers included.
    pub entries: u64,
    pub whiteouts: u64,
    pub opaques: u64,
    pub hardlinks: u64,
    /// Bytes of regular-file content written.
    pub content_bytes: u64,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of aufs's metadata names in a branch, the opaque marker aside.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const OUT_BUFFER: usize = 256 << 10;

/// Writes to `out` a layer tar of the changes that turn the tree `lower`
/// into the tree `upper` (two full trees, e.g. two native snapshots or two
/// mounts). Returns what was written; the tar is complete (end marker
/// included) but `out` is not compressed or closed.
pub fn write_diff(lower: &Path, upper: &Path, out: impl Write) -> Result<DiffStats> {
    let mut w = LayerWriter::new(out);
    w.diff_dir(upper, Some(lower), b"")?;
    w.finish()
}

/// Writes an overlayfs upper directory as a layer: 0/0 character devices
/// become `.wh.<name>`, directories with `trusted.overlay.opaque=y` get a
/// `.wh..wh..opq` entry, everything else goes in as it is. Uppers that use
/// `redirect_dir` or `metacopy` cannot be written this way (NotImplemented):
/// use [`write_diff`] over the mounts instead.
pub fn write_overlay_upper_diff(upper: &Path, out: impl Write) -> Result<DiffStats> {
    let mut w = LayerWriter::new(out);
    w.walk(upper, b"", true)?;
    w.finish()
}

/// Writes a directory as a layer as it is (an aufs-style branch, whose
/// whiteout files are ordinary files); aufs's metadata entries
/// (`.wh..wh.plnk`, `.wh..wh.aufs`, ...) are left out.
pub fn write_tree(dir: &Path, out: impl Write) -> Result<DiffStats> {
    let mut w = LayerWriter::new(out);
    w.walk(dir, b"", false)?;
    w.finish()
}

/// A directory on the current walk whose entry may not be written yet.
struct Frame {
    abs: PathBuf,
    name: Vec<u8>,
    emitted: bool,
}

type Inode = (u64, u64);

struct LayerWriter<W: Write> {
    tw: TarWriter<BufWriter<W>>,
    /// Inode -> name of the entry in this layer that carries its content.
    links: HashMap<Inode, Vec<u8>>,
    /// Inode -> unchanged names that must become links if the inode is written.
    refs: HashMap<Inode, Vec<Vec<u8>>>,
    stack: Vec<Frame>,
    stats: DiffStats,
}

impl<W: Write> LayerWriter<W> {
    fn new(out: W) -> LayerWriter<W> {
        LayerWriter {
            tw: TarWriter::new(BufWriter::with_capacity(OUT_BUFFER, out)),
            links: HashMap::new(),
            refs: HashMap::new(),
            stack: Vec::new(),
            stats: DiffStats::default(),
        }
    }

    fn finish(self) -> Result<DiffStats> {
        let out = self
            .tw
            .finish()
            .map_err(|e| Error::io("write layer", "<output>", e))?;
        out.into_inner()
            .map_err(|e| Error::io("write layer", "<output>", e.into_error()))?;
        Ok(self.stats)
    }

    /// The double walk of one directory present in `upper` (and in `lower`
    /// when `lower` is Some).
    fn diff_dir(&mut self, upper: &Path, lower: Option<&Path>, rel: &[u8]) -> Result<()> {
        let unames = sorted_names(upper)?;
        let lnames = match lower {
            Some(l) => sorted_names(l)?,
            None => Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        while i < unames.len() || j < lnames.len() {
            let order = match (unames.get(i), lnames.get(j)) {
                (Some(u), Some(l)) => u.as_bytes().cmp(l.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Greater => {
                    // Only in lower: deleted.
                    let name = &lnames[j];
                    j += 1;
                    self.whiteout(rel, name.as_bytes())?;
                }
                std::cmp::Ordering::Less => {
                    // Only in upper: added, with everything below it.
                    let name = &unames[i];
                    i += 1;
                    let uabs = upper.join(name);
                    let child = join(rel, name.as_bytes());
                    let ust = lstat(&uabs)?;
                    self.emit(&uabs, &child, &ust, false)?;
                    if ust.is_dir() {
                        self.descend(&uabs, None, child, true)?;
                    }
                }
                std::cmp::Ordering::Equal => {
                    let name = &unames[i];
                    i += 1;
                    j += 1;
                    let (uabs, labs) = (upper.join(name), lower.unwrap_or(upper).join(name));
                    let child = join(rel, name.as_bytes());
                    let ust = lstat(&uabs)?;
                    let lst = lstat(&labs)?;
                    let same = same_file(&labs, &uabs, &lst, &ust)?;
                    if ust.is_dir() {
                        if !same {
                            self.emit(&uabs, &child, &ust, false)?;
                        }
                        let lower_dir = if lst.is_dir() {
                            Some(labs.as_path())
                        } else {
                            None
                        };
                        self.descend(&uabs, lower_dir, child, !same)?;
                    } else {
                        self.emit(&uabs, &child, &ust, same)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn descend(
        &mut self,
        uabs: &Path,
        lower: Option<&Path>,
        name: Vec<u8>,
        emitted: bool,
    ) -> Result<()> {
        self.stack.push(Frame {
            abs: uabs.to_path_buf(),
            name: name.clone(),
            emitted,
        });
        let r = self.diff_dir(uabs, lower, &name);
        self.stack.pop();
        r
    }

    /// Walks a tree writing everything (`overlay`: converting overlay
    /// whiteouts and opaque directories).
    fn walk(&mut self, dir: &Path, rel: &[u8], overlay: bool) -> Result<()> {
        for name in sorted_names(dir)? {
            let bytes = name.as_bytes();
            if !overlay && bytes.starts_with(AUFS_META_PREFIX) && bytes != OPAQUE_MARKER {
                // aufs's own bookkeeping (.wh..wh.plnk, .wh..wh.aufs, ...).
                continue;
            }
            let abs = dir.join(&name);
            let child = join(rel, name.as_bytes());
            let st = lstat(&abs)?;
            if overlay {
                if st.file_type().is_char_device() && st.rdev() == 0 {
                    self.whiteout(rel, name.as_bytes())?;
                    continue;
                }
                for key in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
                    if xattr(&abs, key)?.is_some() {
                        return Err(Error::Unsupported(format!(
                            "{} has {key}: overlay uppers with redirect_dir or metacopy must be diffed over the mounts",
                            abs.display()
                        )));
                    }
                }
            }
            self.emit(&abs, &child, &st, false)?;
            if st.is_dir() {
                if overlay && xattr(&abs, "trusted.overlay.opaque")?.as_deref() == Some(b"y") {
                    let marker = join(&child, OPAQUE_MARKER);
                    self.write(&TarEntry::file(marker, 0).mode(0), None)?;
                    self.stats.opaques += 1;
                }
                self.walk(&abs, &child, overlay)?;
            }
        }
        Ok(())
    }

    /// Writes the entries of the directories on the stack not written yet.
    fn emit_parents(&mut self) -> Result<()> {
        for k in 0..self.stack.len() {
            if self.stack[k].emitted {
                continue;
            }
            let abs = self.stack[k].abs.clone();
            let name = self.stack[k].name.clone();
            let st = lstat(&abs)?;
            let entry = header_for(&abs, &name, &st)?;
            if let Some(entry) = entry {
                self.write(&entry, None)?;
            }
            self.stack[k].emitted = true;
        }
        Ok(())
    }

    fn whiteout(&mut self, rel: &[u8], name: &[u8]) -> Result<()> {
        self.emit_parents()?;
        let wh = join(rel, &[WHITEOUT_PREFIX, name].concat());
        self.write(&TarEntry::file(wh, 0).mode(0), None)?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// Writes the entry for `abs` (named `name` in the layer), keeping hard
    /// links. `unchanged` entries are only written when they share an inode
    /// with content already in the layer.
    fn emit(&mut self, abs: &Path, name: &[u8], st: &Metadata, unchanged: bool) -> Result<()> {
        let mut extra_links = Vec::new();
        if st.is_file() && st.nlink() > 1 {
            let inode = (st.dev(), st.ino());
            if let Some(source) = self.links.get(&inode).cloned() {
                let mut entry = TarEntry::hardlink(name, source)
                    .mode(st.mode() & 0o7777)
                    .owner(st.uid().into(), st.gid().into())
                    .mtime(st.mtime());
                entry.size = 0;
                if !unchanged {
                    self.emit_parents()?;
                }
                self.write(&entry, None)?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
            if unchanged {
                self.refs.entry(inode).or_default().push(name.to_vec());
                return Ok(());
            }
            self.links.insert(inode, name.to_vec());
            extra_links = self.refs.remove(&inode).unwrap_or_default();
        } else if unchanged {
            return Ok(());
        }
        let Some(entry) = header_for(abs, name, st)? else {
            return Ok(()); // sockets
        };
        self.emit_parents()?;
        self.write(&entry, Some(abs))?;
        for extra in extra_links {
            let mut link = entry.clone();
            link.kind = crate::writer::EntryKind::HardLink;
            link.name = extra;
            link.link = name.to_vec();
            link.size = 0;
            link.xattrs.clear();
            self.write(&link, None)?;
            self.stats.hardlinks += 1;
        }
        Ok(())
    }

    /// Writes one entry; regular-file content is streamed from `source`.
    fn write(&mut self, entry: &TarEntry, source: Option<&Path>) -> Result<()> {
        let out_err = |e| Error::io("write layer", "<output>", e);
        match source {
            Some(path) if entry.size > 0 => {
                let file = File::options()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| Error::io("open", path, e))?;
                self.tw.append_header(entry).map_err(out_err)?;
                let mut taken = file.take(entry.size);
                let n = io::copy(&mut taken, self.tw.get_mut())
                    .map_err(|e| Error::io("copy", path, e))?;
                if n != entry.size {
                    return Err(Error::io(
                        "copy",
                        path,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file shrank while writing the layer",
                        ),
                    ));
                }
                self.tw.pad(n).map_err(out_err)?;
                self.stats.content_bytes += n;
            }
            _ => self.tw.append(entry, io::empty()).map_err(out_err)?,
        }
        self.stats.entries += 1;
        Ok(())
    }
}

/// The tar header for a file on disk; `None` for sockets.
fn header_for(abs: &Path, name: &[u8], st: &Metadata) -> Result<Option<TarEntry>> {
    let ft = st.file_type();
    let entry = if ft.is_dir() {
        let mut n = name.to_vec();
        n.push(b'/');
        TarEntry::dir(n)
    } else if ft.is_file() {
        TarEntry::file(name, st.len())
    } else if ft.is_symlink() {
        let target = std::fs::read_link(abs).map_err(|e| Error::io("readlink", abs, e))?;
        TarEntry::symlink(name, target.as_os_str().as_bytes())
    } else if ft.is_char_device() {
        TarEntry::char_device(name, libc::major(st.rdev()), libc::minor(st.rdev()))
    } else if ft.is_block_device() {
        TarEntry::block_device(name, libc::major(st.rdev()), libc::minor(st.rdev()))
    } else if ft.is_fifo() {
        TarEntry::fifo(name)
    } else {
        return Ok(None);
    };
    let mut entry = entry
        .mode(st.mode() & 0o7777)
        .owner(st.uid().into(), st.gid().into())
        .mtime(st.mtime());
    entry.xattrs = xattrs(abs)?;
    Ok(Some(entry))
}

/// The xattrs a layer carries: all but `trusted.*` (overlayfs' own) and
/// `security.selinux` (host labels), sorted by name.
fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = sys::llistxattr(path).map_err(|e| Error::io("list xattrs", path, e))?;
    names.retain(|n| !n.starts_with("trusted.") && n != "security.selinux");
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if let Some(v) = xattr(path, &n)? {
            out.push((n, v));
        }
    }
    Ok(out)
}

fn xattr(path: &Path, key: &str) -> Result<Option<Vec<u8>>> {
    sys::lgetxattr(path, key).map_err(|e| Error::io("get xattr", path, e))
}

/// containerd's (continuity's) `sameFile`: same inode; else same type,
/// mode, owner, device, xattrs and, for non-directories, size, mtime and,
/// when both mtimes lack nanoseconds, the content itself.
fn same_file(lower: &Path, upper: &Path, lst: &Metadata, ust: &Metadata) -> Result<bool> {
    if lst.dev() == ust.dev() && lst.ino() == ust.ino() {
        return Ok(true);
    }
    if lst.mode() != ust.mode()
        || lst.uid() != ust.uid()
        || lst.gid() != ust.gid()
        || lst.rdev() != ust.rdev()
    {
        return Ok(false);
    }
    if xattrs(lower)? != xattrs(upper)? {
        return Ok(false);
    }
    if ust.is_dir() {
        return Ok(true);
    }
    if lst.len() != ust.len() || lst.mtime() != ust.mtime() {
        return Ok(false);
    }
    if ust.file_type().is_symlink() {
        let a = std::fs::read_link(lower).map_err(|e| Error::io("readlink", lower, e))?;
        let b = std::fs::read_link(upper).map_err(|e| Error::io("readlink", upper, e))?;
        return Ok(a == b);
    }
    if lst.mtime_nsec() != ust.mtime_nsec() {
        return Ok(false);
    }
    if lst.mtime_nsec() == 0 && ust.is_file() && ust.len() > 0 {
        return same_content(lower, upper);
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| {
        File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .map_err(|e| Error::io("open", p, e))
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let mut ba = vec![0u8; 64 << 10];
    let mut bb = vec![0u8; 64 << 10];
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| Error::io("read", a, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| Error::io("read", b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn lstat(p: &Path) -> Result<Metadata> {
    std::fs::symlink_metadata(p).map_err(|e| Error::io("lstat", p, e))
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))? {
        names.push(ent.map_err(|e| Error::io("read dir", dir, e))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        name.to_vec()
    } else {
        [rel, b"/", name].concat()
    }
}
