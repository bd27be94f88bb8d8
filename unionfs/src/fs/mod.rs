//! The union itself: a node table over the branches and the FUSE operations.
//!
//! Every FUSE node is a merged path (parent node + name). A node caches its *layers*: the
//! branches, top first, where it exists (one for a non-directory; for a directory every branch
//! down to an opaque marker, a whiteout or a non-directory). Only this process changes the
//! branches, so the cache is kept exact by the mutating operations, which run one at a time
//! under `ns` (write); lookups and reads share it.
//!
//! Nodes are never forgotten: that is what keeps inode numbers stable per path for the life of
//! the mount. `st_ino` comes from the (dev, ino) of the backing file when first seen, so hard
//! links in one branch share it, and a copied-up file keeps the number of its lower original.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, INodeNo, Notifier, OpenAccMode, OpenFlags,
    RenameFlags, Request, TimeOrNow,
};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tracing::debug;

use crate::copyup;
use crate::nodes::{Backing, Node, Table};
use crate::options::{Branch, BranchMode};
use crate::sys;

mod ops;

/// Entry and attribute cache lifetime. Only this process changes the branches, and every
/// change goes through the kernel, which invalidates what it affects.
const TTL: Duration = Duration::from_secs(5);
/// Largest read/write request we ask the kernel for (without passthrough).
const MAX_IO: u32 = 1 << 20;

const WH_PREFIX: &[u8] = b".wh.";
/// AUFS opaque-directory marker: hides everything below in lower branches.
pub const OPAQUE: &str = ".wh..wh..opq";

/// The rw branch is always index 0 when it exists.
const RW: usize = 0;

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn is_whiteout_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

fn whiteout_of(name: &OsStr) -> OsString {
    let mut wh = OsString::from(".wh.");
    wh.push(name);
    wh
}

/// lstat that maps "absent" (ENOENT, ENOTDIR) to `None`.
fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn exists(path: &Path) -> io::Result<bool> {
    Ok(lstat(path)?.is_some())
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64);
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + nsec
    }
}

fn to_attr(meta: &Metadata, ino: u64, merged_dir: bool) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: meta.size(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: file_type(meta.mode()),
        perm: (meta.mode() & 0o7777) as u16,
        // A directory merged from several branches has no meaningful link count; 1 tells
        // tools like find not to use it to count subdirectories.
        nlink: if merged_dir { 1 } else { meta.nlink() as u32 },
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

fn time_spec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                TimeSpec::new(-(d.as_secs() as i64), 0)
            }
        },
    }
}

struct Handle {
    file: Arc<File>,
    /// Keeps the passthrough registration alive while the kernel file is open.
    _backing: Option<Arc<BackingId>>,
}

/// One entry of a merged directory listing.
struct DirEntry {
    name: OsString,
    ino: u64,
    kind: FileType,
}

/// The AUFS-semantics union over a set of branches.
pub struct UnionFs {
    branches: Vec<Branch>,
    writable: bool,
    /// Namespace lock: shared for lookups and reads, exclusive for every change.
    ns: RwLock<()>,
    table: Mutex<Table>,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    passthrough: AtomicBool,
    notifier: Arc<OnceLock<Notifier>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves the data consistent enough to keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The changes of one setattr request.
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

struct Created {
    attr: FileAttr,
    file: Option<File>,
}

impl UnionFs {
    /// Builds the union; `writable` is false for views (`ro` or no rw branch).
    pub fn new(branches: Vec<Branch>, writable: bool) -> io::Result<UnionFs> {
        if branches.is_empty() {
            return Err(err(libc::EINVAL));
        }
        let writable = writable && branches[0].mode == BranchMode::Rw;
        let fs = UnionFs {
            branches,
            writable,
            ns: RwLock::new(()),
            table: Mutex::new(Table::default()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
            notifier: Arc::new(OnceLock::new()),
        };
        // The root: every branch root down to the first opaque one.
        let mut layers = Vec::new();
        for (i, b) in fs.branches.iter().enumerate() {
            layers.push(i);
            if b.mode.honours_whiteouts() && exists(&b.path.join(OPAQUE))? {
                break;
            }
        }
        let meta = fs::symlink_metadata(&fs.branches[0].path)?;
        let mut t = lock(&fs.table);
        t.devino.insert((meta.dev(), meta.ino()), INodeNo::ROOT.0);
        t.nodes.insert(
            INodeNo::ROOT.0,
            Node {
                names: Vec::new(),
                is_dir: true,
                layers,
                backing: None,
                retired: false,
            },
        );
        t.next = INodeNo::ROOT.0;
        drop(t);
        Ok(fs)
    }

    fn path_in(&self, branch: usize, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.branches[branch].path.clone()
        } else {
            self.branches[branch].path.join(rel)
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(err(libc::EROFS))
        }
    }

    /// (relative path, layers, is_dir) of a node that still has a path.
    fn info(&self, id: u64) -> io::Result<(PathBuf, Vec<usize>, bool)> {
        let t = lock(&self.table);
        let rel = t.rel_path(id)?;
        let n = t.node(id)?;
        Ok((rel, n.layers.clone(), n.is_dir))
    }

    /// AUFS lookup of `name` under a directory with `parent_layers`: returns the layers of the
    /// child and the metadata of its topmost instance.
    fn resolve_child(
        &self,
        parent_layers: &[usize],
        parent_rel: &Path,
        name: &OsStr,
    ) -> io::Result<Option<(Vec<usize>, Metadata)>> {
        let rel = parent_rel.join(name);
        let wh = parent_rel.join(whiteout_of(name));
        let mut layers = Vec::new();
        let mut top = None;
        for &b in parent_layers {
            let honours = self.branches[b].mode.honours_whiteouts();
            if let Some(meta) = lstat(&self.path_in(b, &rel))? {
                if meta.is_dir() {
                    layers.push(b);
                    let opaque = honours && exists(&self.path_in(b, &rel).join(OPAQUE))?;
                    if top.is_none() {
                        top = Some(meta);
                    }
                    if opaque {
                        break;
                    }
                } else if top.is_none() {
                    return Ok(Some((vec![b], meta)));
                } else {
                    // A non-directory below a directory is hidden by it.
                    break;
                }
            }
            if honours && exists(&self.path_in(b, &wh))? {
                break;
            }
        }
        Ok(top.map(|m| (layers, m)))
    }

    /// Whether `name` exists in the branches below the rw one (so deleting or moving it away
    /// needs a whiteout).
    fn exists_below(
        &self,
        parent_layers: &[usize],
        parent_rel: &Path,
        name: &OsStr,
    ) -> io::Result<bool> {
        let lower: Vec<usize> = parent_layers.iter().copied().filter(|b| *b != RW).collect();
        Ok(self.resolve_child(&lower, parent_rel, name)?.is_some())
    }

    /// The merged listing of a directory, whiteouts applied and hidden.
    fn list(
        &self,
        layers: &[usize],
        rel: &Path,
    ) -> io::Result<Vec<(OsString, FileType, u64, u64)>> {
        let mut seen = HashSet::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        let mut out = Vec::new();
        for &b in layers {
            let dir = self.path_in(b, rel);
            let dev = fs::symlink_metadata(&dir)?.dev();
            let honours = self.branches[b].mode.honours_whiteouts();
            let mut whiteouts = Vec::new();
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name();
                if let Some(hidden_name) = name.as_bytes().strip_prefix(WH_PREFIX) {
                    if honours && !hidden_name.starts_with(WH_PREFIX) {
                        whiteouts.push(OsStr::from_bytes(hidden_name).to_os_string());
                    }
                    continue;
                }
                if hidden.contains(&name) || !seen.insert(name.clone()) {
                    continue;
                }
                let kind = file_type(mode_of(&entry.file_type()?));
                out.push((name, kind, dev, std::os::unix::fs::DirEntryExt::ino(&entry)));
            }
            hidden.extend(whiteouts);
        }
        Ok(out)
    }

    fn lookup_impl(&self, parent: u64, name: &OsStr) -> io::Result<FileAttr> {
        if is_whiteout_name(name) {
            return Err(err(libc::ENOENT));
        }
        let _g = self.ns.read().unwrap_or_else(|p| p.into_inner());
        let (prel, players, _) = self.info(parent)?;
        let (layers, meta) = self
            .resolve_child(&players, &prel, name)?
            .ok_or_else(|| err(libc::ENOENT))?;
        let merged = layers.len() > 1;
        let id = lock(&self.table).insert(parent, name, layers, &meta);
        Ok(to_attr(&meta, id, merged))
    }

    fn getattr_impl(&self, id: u64, fh: Option<FileHandle>) -> io::Result<FileAttr> {
        if let Some(fh) = fh {
            let file = lock(&self.handles).get(&fh.0).map(|h| h.file.clone());
            if let Some(file) = file {
                return Ok(to_attr(&file.metadata()?, id, false));
            }
        }
        let _g = self.ns.read().unwrap_or_else(|p| p.into_inner());
        let (rel, layers, _) = self.info(id)?;
        let meta = fs::symlink_metadata(self.path_in(layers[0], &rel))?;
        Ok(to_attr(&meta, id, layers.len() > 1))
    }

    /// Makes the directory node `id` exist in the rw branch (creating its parents, copying
    /// their attributes) and returns its rw path. Caller holds `ns` exclusively.
    fn ensure_dir_rw(&self, id: u64) -> io::Result<PathBuf> {
        let (rel, layers, is_dir) = self.info(id)?;
        if !is_dir {
            return Err(err(libc::ENOTDIR));
        }
        let rw = self.path_in(RW, &rel);
        if layers.first() == Some(&RW) {
            return Ok(rw);
        }
        if id != INodeNo::ROOT.0 {
            let (parent, _) = lock(&self.table).primary(id)?;
            self.ensure_dir_rw(parent)?;
        }
        let meta = copyup::copy_dir_shell(&self.path_in(layers[0], &rel), &rw)?;
        let mut t = lock(&self.table);
        t.devino.insert((meta.dev(), meta.ino()), id);
        t.node_mut(id)?.layers.insert(0, RW);
        Ok(rw)
    }

    /// Copy-up: makes node `id` live in the rw branch and returns its rw path.
    /// Caller holds `ns` exclusively.
    fn copy_up(&self, id: u64) -> io::Result<PathBuf> {
        self.check_writable()?;
        let (rel, layers, is_dir) = self.info(id)?;
        if is_dir {
            return self.ensure_dir_rw(id);
        }
        if layers[0] == RW {
            return Ok(self.path_in(RW, &rel));
        }
        let names = lock(&self.table).node(id)?.names.clone();
        let (parent, name) = names.first().cloned().ok_or_else(|| err(libc::ENOENT))?;
        let dir = self.ensure_dir_rw(parent)?;
        debug!(path = %rel.display(), "copy-up");
        let meta = copyup::copy_node(&self.path_in(layers[0], &rel), &dir, &name)?;
        let copied = dir.join(&name);
        // The other known names of a hard-linked file follow it, keeping the link in the union.
        for (p, n) in names.iter().skip(1) {
            let pdir = self.ensure_dir_rw(*p)?;
            fs::hard_link(&copied, pdir.join(n))?;
        }
        let lower_open = self.open_on_lower(id);
        let mut t = lock(&self.table);
        t.devino.insert((meta.dev(), meta.ino()), id);
        t.node_mut(id)?.layers = vec![RW];
        if lower_open {
            self.retire(&mut t, id, (meta.dev(), meta.ino()));
        }
        Ok(copied)
    }

    /// Copies the whole merged directory `id` into the rw branch, so it can move as one entry:
    /// every visible entry below it is copied up, and the rw copy becomes opaque since it now
    /// holds all of it. Caller holds `ns` exclusively.
    fn copy_up_tree(&self, id: u64) -> io::Result<()> {
        self.check_writable()?;
        self.ensure_dir_rw(id)?;
        let (rel, layers, _) = self.info(id)?;
        for (name, _, _, _) in self.list(&layers, &rel)? {
            let Some((clayers, cmeta)) = self.resolve_child(&layers, &rel, &name)? else {
                continue;
            };
            let cid = lock(&self.table).insert(id, &name, clayers, &cmeta);
            if cmeta.is_dir() {
                self.copy_up_tree(cid)?;
            } else {
                self.copy_up(cid)?;
            }
        }
        if layers.len() > 1 {
            let marker = self.path_in(RW, &rel).join(OPAQUE);
            if !exists(&marker)? {
                File::create(marker)?;
            }
        }
        lock(&self.table).node_mut(id)?.layers = vec![RW];
        Ok(())
    }

    /// The kernel binds one passthrough backing file to an inode while it is open, so a file
    /// copied up while open on its lower copy cannot be reopened on the new one under the same
    /// node id. Its names are handed to a fresh node (the kernel is told to look them up
    /// again); the old node keeps serving the files already open.
    fn retire(&self, t: &mut Table, id: u64, rw_devino: (u64, u64)) {
        let Some(node) = t.nodes.get_mut(&id) else {
            return;
        };
        node.retired = true;
        let names = node.names.clone();
        for key in &names {
            t.children.remove(key);
        }
        t.devino.remove(&rw_devino);
        let notifier = self.notifier.get().cloned();
        if let Some(notifier) = notifier {
            // Not from this request's thread: the kernel may need locks held by other
            // requests that wait for a worker.
            let spawned = std::thread::Builder::new()
                .name("inval".into())
                .spawn(move || {
                    for (parent, name) in names {
                        if let Err(e) = notifier.inval_entry(INodeNo(parent), &name) {
                            debug!(error = %e, "inval_entry");
                        }
                    }
                });
            if let Err(e) = spawned {
                debug!(error = %e, "spawning the invalidation thread");
            }
        }
    }

    /// Where the session's notifier goes once the session exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Creates `.wh.<name>` in the rw copy of `parent`.
    fn whiteout(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let dir = self.ensure_dir_rw(parent)?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o444)
            .open(dir.join(whiteout_of(name)))?;
        Ok(())
    }

    /// The common part of mknod/mkdir/symlink/create/link: makes `name` in the rw copy of
    /// `parent` with `make`, owns it by the caller, clears a whiteout for the name (a new
    /// directory over a deleted one becomes opaque) and registers the node.
    fn create_entry(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: Option<u32>,
        make: impl FnOnce(&Path) -> io::Result<Option<File>>,
        link_of: Option<u64>,
    ) -> io::Result<(u64, Created)> {
        self.check_writable()?;
        if is_whiteout_name(name) {
            return Err(err(libc::EPERM));
        }
        let (prel, players, _) = self.info(parent)?;
        if self.resolve_child(&players, &prel, name)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        let dir = self.ensure_dir_rw(parent)?;
        let dir_meta = fs::symlink_metadata(&dir)?;
        let target = dir.join(name);
        let wh = dir.join(whiteout_of(name));
        let had_whiteout = exists(&wh)?;
        let file = make(&target)?;
        let meta = fs::symlink_metadata(&target)?;
        if link_of.is_none() {
            // Files are created as root; give them to the caller (BSD group semantics under a
            // set-group-id directory, as the kernel would).
            let sgid_dir = dir_meta.mode() & libc::S_ISGID != 0;
            let gid = if sgid_dir { dir_meta.gid() } else { req.gid() };
            std::os::unix::fs::lchown(&target, Some(req.uid()), Some(gid))?;
            if let Some(mut mode) = mode {
                if meta.is_dir() && sgid_dir {
                    mode |= libc::S_ISGID;
                }
                // chown cleared set-id bits; put the requested mode back.
                fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))?;
            }
        }
        if had_whiteout {
            if meta.is_dir() {
                File::create(target.join(OPAQUE))?;
            }
            fs::remove_file(&wh)?;
        }
        let meta = fs::symlink_metadata(&target)?;
        let mut t = lock(&self.table);
        t.detach(parent, name);
        if let Some(src) = link_of {
            // A hard link: the same node (and st_ino) as its source.
            t.devino.insert((meta.dev(), meta.ino()), src);
        }
        let id = t.insert(parent, name, vec![RW], &meta);
        Ok((
            id,
            Created {
                attr: to_attr(&meta, id, false),
                file,
            },
        ))
    }

    fn remove_impl(&self, parent: u64, name: &OsStr, dir: bool) -> io::Result<()> {
        self.check_writable()?;
        let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
        let (prel, players, _) = self.info(parent)?;
        let (layers, meta) = self
            .resolve_child(&players, &prel, name)?
            .ok_or_else(|| err(libc::ENOENT))?;
        let rel = prel.join(name);
        if dir {
            if !meta.is_dir() {
                return Err(err(libc::ENOTDIR));
            }
            if !self.list(&layers, &rel)?.is_empty() {
                return Err(err(libc::ENOTEMPTY));
            }
            if layers[0] == RW {
                // Only whiteouts and markers are left in it.
                let rw = self.path_in(RW, &rel);
                for entry in fs::read_dir(&rw)? {
                    let entry = entry?;
                    if entry.file_type()?.is_dir() {
                        fs::remove_dir_all(entry.path())?;
                    } else {
                        fs::remove_file(entry.path())?;
                    }
                }
                fs::remove_dir(&rw)?;
            }
        } else {
            if meta.is_dir() {
                return Err(err(libc::EISDIR));
            }
            if layers[0] == RW {
                fs::remove_file(self.path_in(RW, &rel))?;
            }
        }
        if self.exists_below(&players, &prel, name)? {
            self.whiteout(parent, name)?;
        }
        lock(&self.table).detach(parent, name);
        Ok(())
    }

    fn rename_impl(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> io::Result<()> {
        self.check_writable()?;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(err(libc::EINVAL));
        }
        if is_whiteout_name(newname) {
            return Err(err(libc::EPERM));
        }
        let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
        let (prel, players, _) = self.info(parent)?;
        let (nprel, nplayers, _) = self.info(newparent)?;
        let (slayers, smeta) = self
            .resolve_child(&players, &prel, name)?
            .ok_or_else(|| err(libc::ENOENT))?;
        let sid = {
            let mut t = lock(&self.table);
            t.insert(parent, name, slayers.clone(), &smeta)
        };
        if parent == newparent && name == newname {
            return Ok(());
        }
        let target = self.resolve_child(&nplayers, &nprel, newname)?;
        if let Some((tlayers, tmeta)) = &target {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(err(libc::EEXIST));
            }
            let trel = nprel.join(newname);
            match (smeta.is_dir(), tmeta.is_dir()) {
                (true, false) => return Err(err(libc::ENOTDIR)),
                (false, true) => return Err(err(libc::EISDIR)),
                (true, true) => {
                    if !self.list(tlayers, &trel)?.is_empty() {
                        return Err(err(libc::ENOTEMPTY));
                    }
                    if tlayers[0] == RW {
                        let rw = self.path_in(RW, &trel);
                        fs::remove_dir_all(&rw)?;
                    }
                }
                (false, false) => {}
            }
        }
        if smeta.is_dir() && slayers != [RW] {
            // A directory with lower parts moves whole: its merged tree is copied up first
            // (as fuse-overlayfs does; aufs without dirren and overlayfs without redirect_dir
            // return EXDEV instead, which tools that rename directories do not all handle).
            self.copy_up_tree(sid)?;
        } else {
            self.copy_up(sid)?;
        }
        let src = self.ensure_dir_rw(parent)?.join(name);
        let ndir = self.ensure_dir_rw(newparent)?;
        let dst = ndir.join(newname);
        let wh = ndir.join(whiteout_of(newname));
        // Lower entries under the new name must stay hidden: a directory moved over them
        // becomes opaque (a file hides them by itself).
        let needs_opaque =
            smeta.is_dir() && (exists(&wh)? || self.exists_below(&nplayers, &nprel, newname)?);
        fs::rename(&src, &dst)?;
        if needs_opaque {
            File::create(dst.join(OPAQUE))?;
        }
        if exists(&wh)? {
            fs::remove_file(&wh)?;
        }
        if self.exists_below(&players, &prel, name)? {
            self.whiteout(parent, name)?;
        }
        let mut t = lock(&self.table);
        t.detach(newparent, newname);
        t.detach(parent, name);
        let node = t.node_mut(sid)?;
        node.names.insert(0, (newparent, newname.to_os_string()));
        node.layers = vec![RW];
        t.children.insert((newparent, newname.to_os_string()), sid);
        Ok(())
    }

    fn setattr_impl(&self, id: u64, a: SetAttr, fh: Option<FileHandle>) -> io::Result<FileAttr> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = a;
        let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
        let path = self.copy_up(id)?;
        let meta = fs::symlink_metadata(&path)?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid)?;
        }
        if let Some(mode) = mode {
            if !meta.file_type().is_symlink() {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
            }
        }
        if let Some(size) = size {
            let file = fh.and_then(|fh| lock(&self.handles).get(&fh.0).map(|h| h.file.clone()));
            match file {
                Some(f) if f.set_len(size).is_ok() => {}
                _ => OpenOptions::new().write(true).open(&path)?.set_len(size)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &time_spec(atime),
                &time_spec(mtime),
                UtimensatFlags::NoFollowSymlink,
            )?;
        }
        Ok(to_attr(&fs::symlink_metadata(&path)?, id, false))
    }

    /// Opens the backing file of node `id`: the rw copy (after copy-up) for writing, the
    /// topmost instance for reading. Returns the file, its branch and whether it is writable.
    ///
    /// Files in the rw branch are opened read-write even for readers where possible: one
    /// passthrough backing file serves every open of an inode, so it must allow both. The
    /// kernel applies each open's own mode and O_APPEND/O_DIRECT before reaching it.
    fn open_backing_file(&self, id: u64, flags: OpenFlags) -> io::Result<(File, usize, bool)> {
        let acc = flags.acc_mode();
        let write = acc != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let rw_open = |path: &Path| OpenOptions::new().read(true).write(true).open(path);
        if write {
            let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
            let path = self.copy_up(id)?;
            return Ok((rw_open(&path)?, RW, true));
        }
        let _g = self.ns.read().unwrap_or_else(|p| p.into_inner());
        let (rel, layers, _) = self.info(id)?;
        let path = self.path_in(layers[0], &rel);
        if layers[0] == RW && self.writable {
            // A running executable (ETXTBSY) or the like: fall back to read-only.
            if let Ok(f) = rw_open(&path) {
                return Ok((f, RW, true));
            }
        }
        Ok((File::open(&path)?, layers[0], false))
    }

    /// Whether the kernel may hold node `id` open on a lower-branch backing file. The kernel
    /// sends RELEASE asynchronously after close(2), so a just-closed reader gets a moment
    /// (another worker handles its release) before it counts as open.
    fn open_on_lower(&self, id: u64) -> bool {
        let check = || {
            let t = lock(&self.table);
            t.nodes.get(&id).is_some_and(|n| {
                n.backing
                    .as_ref()
                    .is_some_and(|b| b.branch != RW && b.id.strong_count() > 0)
            })
        };
        for _ in 0..50 {
            if !check() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        check()
    }

    /// Registers (or reuses) the node's passthrough backing file. `None`: serve I/O here.
    fn backing_for(
        &self,
        id: u64,
        branch: usize,
        writable: bool,
        file: &File,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut t = lock(&self.table);
        let node = t.node_mut(id).ok()?;
        if let Some(b) = &node.backing {
            let fits = b.branch == branch && (b.writable || !writable);
            // A retired node is the file as it was before copy-up: readers keep its backing.
            let old_inode = node.retired && !writable;
            if fits || old_inode {
                if let Some(existing) = b.id.upgrade() {
                    return Some(existing);
                }
            }
        }
        // A different backing file (e.g. after copy-up). If the kernel still has the old one
        // in use by an open file, it refuses this open with EBUSY by itself.
        match register(file) {
            Ok(bid) => {
                let bid = Arc::new(bid);
                node.backing = Some(Backing {
                    id: Arc::downgrade(&bid),
                    branch,
                    writable,
                });
                Some(bid)
            }
            Err(e) => {
                debug!(error = %e, "passthrough registration failed; serving I/O in userspace");
                None
            }
        }
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }
}

fn mode_of(ft: &std::fs::FileType) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        libc::S_IFDIR
    } else if ft.is_symlink() {
        libc::S_IFLNK
    } else if ft.is_char_device() {
        libc::S_IFCHR
    } else if ft.is_block_device() {
        libc::S_IFBLK
    } else if ft.is_fifo() {
        libc::S_IFIFO
    } else if ft.is_socket() {
        libc::S_IFSOCK
    } else {
        libc::S_IFREG
    }
}
