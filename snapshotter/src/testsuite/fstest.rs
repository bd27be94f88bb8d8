//! A small port of continuity's `fstest`: operations applied to a directory
//! and a tree comparison, used by the conformance suite.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One change to a tree. Paths are relative to the tree's root (a leading
/// `/` is ignored).
#[derive(Debug, Clone)]
pub enum Op {
    /// Create or truncate a file with the content, then set the mode.
    CreateFile(String, Vec<u8>, u32),
    /// Create a directory (and missing parents), then set the mode.
    CreateDir(String, u32),
    /// Remove a path and everything below; absent is fine.
    RemoveAll(String),
    /// Change owner, not following symlinks.
    Chown(String, u32, u32),
    /// rename(old, new).
    Rename(String, String),
    /// Hard link: new name for the file at old.
    Link(String, String),
    /// Symlink at the second path pointing to the first.
    Symlink(String, String),
}

pub fn create_file(p: &str, content: &[u8], mode: u32) -> Op {
    Op::CreateFile(p.to_string(), content.to_vec(), mode)
}

pub fn create_dir(p: &str, mode: u32) -> Op {
    Op::CreateDir(p.to_string(), mode)
}

pub fn remove_all(p: &str) -> Op {
    Op::RemoveAll(p.to_string())
}

pub fn chown(p: &str, uid: u32, gid: u32) -> Op {
    Op::Chown(p.to_string(), uid, gid)
}

pub fn rename(old: &str, new: &str) -> Op {
    Op::Rename(old.to_string(), new.to_string())
}

pub fn link(old: &str, new: &str) -> Op {
    Op::Link(old.to_string(), new.to_string())
}

pub fn symlink(target: &str, at: &str) -> Op {
    Op::Symlink(target.to_string(), at.to_string())
}

fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Applies `ops` to the tree at `root`, in order.
pub fn apply(root: &Path, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        apply_one(root, op).map_err(|e| format!("apply {op:?} in {}: {e}", root.display()))?;
    }
    Ok(())
}

fn apply_one(root: &Path, op: &Op) -> std::io::Result<()> {
    match op {
        Op::CreateFile(p, content, mode) => {
            let p = under(root, p);
            fs::write(&p, content)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
        }
        Op::CreateDir(p, mode) => {
            let p = under(root, p);
            fs::create_dir_all(&p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
        }
        Op::RemoveAll(p) => {
            let p = under(root, p);
            match fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        }
        Op::Chown(p, uid, gid) => std::os::unix::fs::lchown(under(root, p), Some(*uid), Some(*gid)),
        Op::Rename(a, b) => fs::rename(under(root, a), under(root, b)),
        Op::Link(a, b) => fs::hard_link(under(root, a), under(root, b)),
        Op::Symlink(target, at) => std::os::unix::fs::symlink(target, under(root, at)),
    }
}

/// What the comparison looks at for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    /// Permission bits (not for symlinks).
    mode: u32,
    uid: u32,
    gid: u32,
    /// Content of regular files, target of symlinks.
    data: Vec<u8>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mode {:o} owner {}:{} {} bytes",
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.data.len()
        )?;
        if !self.xattrs.is_empty() {
            write!(f, " xattrs {:?}", self.xattrs.keys().collect::<Vec<_>>())?;
        }
        Ok(())
    }
}

fn entry(p: &Path) -> Result<Entry, String> {
    let md = fs::symlink_metadata(p).map_err(|e| format!("stat {}: {e}", p.display()))?;
    let ft = md.file_type();
    let (kind, data) = if ft.is_dir() {
        ("dir", Vec::new())
    } else if ft.is_file() {
        (
            "file",
            fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?,
        )
    } else if ft.is_symlink() {
        let t = fs::read_link(p).map_err(|e| format!("readlink {}: {e}", p.display()))?;
        ("symlink", t.into_os_string().into_encoded_bytes())
    } else if ft.is_fifo() {
        ("fifo", Vec::new())
    } else if ft.is_socket() {
        ("socket", Vec::new())
    } else if ft.is_char_device() {
        ("char device", Vec::new())
    } else {
        ("block device", Vec::new())
    };
    let mut xattrs = BTreeMap::new();
    let names =
        crate::fsutil::list_xattrs(p).map_err(|e| format!("listxattr {}: {e}", p.display()))?;
    for name in names {
        let n = name.to_string_lossy().into_owned();
        // Security labels depend on the host, overlay's own are internal.
        if n.starts_with("security.") || n.starts_with("trusted.overlay.") {
            continue;
        }
        let v = crate::fsutil::get_xattr(p, &name)
            .map_err(|e| format!("getxattr {} {n}: {e}", p.display()))?;
        xattrs.insert(n, v);
    }
    Ok(Entry {
        kind,
        mode: if ft.is_symlink() {
            0
        } else {
            md.mode() & 0o7777
        },
        uid: md.uid(),
        gid: md.gid(),
        data,
        rdev: if ft.is_char_device() || ft.is_block_device() {
            md.rdev()
        } else {
            0
        },
        xattrs,
    })
}

fn collect(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) -> Result<(), String> {
    let dir = root.join(rel);
    let rd = fs::read_dir(&dir).map_err(|e| format!("read dir {}: {e}", dir.display()))?;
    for item in rd {
        let item = item.map_err(|e| format!("read dir {}: {e}", dir.display()))?;
        let r = rel.join(item.file_name());
        let e = entry(&root.join(&r))?;
        let is_dir = e.kind == "dir";
        out.insert(r.clone(), e);
        if is_dir {
            collect(root, &r, out)?;
        }
    }
    Ok(())
}

/// Compares the trees at `expected` and `actual` (not their roots): the same
/// paths with the same types, permission bits, owners, contents, symlink
/// targets, device numbers and extended attributes. Times, sizes on disk and
/// link counts are not compared.
pub fn check_directory_equal(expected: &Path, actual: &Path) -> Result<(), String> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    collect(expected, Path::new(""), &mut a)?;
    collect(actual, Path::new(""), &mut b)?;
    let mut diffs = Vec::new();
    for (p, ea) in &a {
        match b.get(p) {
            None => diffs.push(format!("missing /{}: {ea}", p.display())),
            Some(eb) if ea != eb => diffs.push(format!("/{}: want {ea}, got {eb}", p.display())),
            Some(_) => {}
        }
    }
    for (p, eb) in &b {
        if !a.contains_key(p) {
            diffs.push(format!("unexpected /{}: {eb}", p.display()));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    let n = diffs.len();
    diffs.truncate(10);
    Err(format!(
        "{} differs from {} in {n} paths: {}",
        actual.display(),
        expected.display(),
        diffs.join("; ")
    ))
}
