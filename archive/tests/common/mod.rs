//! Helpers shared by the integration tests: tree snapshots and small
//! constructors.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_archive::{apply_layer, ApplyOptions, WhiteoutMode};
use berth_content::Digest;

/// Describes every entry under `root` (not `root` itself): type, mode,
/// owner, size, mtime seconds, device, link target, content digest, xattrs
/// (but `trusted.*` only when `trusted` is set) and hard-link groups.
pub fn snapshot(root: &Path, trusted: bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    walk(root, root, trusted, &mut out, &mut inodes);
    for names in inodes.values() {
        if names.len() > 1 {
            let mut sorted = names.clone();
            sorted.sort();
            for n in &sorted {
                let line = out.get_mut(n).expect("walked");
                line.push_str(&format!(" links={sorted:?}"));
            }
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    trusted: bool,
    out: &mut BTreeMap<PathBuf, String>,
    inodes: &mut HashMap<(u64, u64), Vec<PathBuf>>,
) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = path.strip_prefix(root).expect("prefix").to_path_buf();
        let st = fs::symlink_metadata(&path).expect("lstat");
        let ft = st.file_type();
        let mut line = format!(
            "mode={:o} uid={} gid={} mtime={}",
            st.mode(),
            st.uid(),
            st.gid(),
            st.mtime()
        );
        if ft.is_file() {
            let data = fs::read(&path).expect("read");
            line.push_str(&format!(
                " size={} sha={}",
                data.len(),
                Digest::of_bytes(&data)
            ));
            if st.nlink() > 1 {
                inodes
                    .entry((st.dev(), st.ino()))
                    .or_default()
                    .push(rel.clone());
            }
        } else if ft.is_symlink() {
            line.push_str(&format!(
                " -> {:?}",
                fs::read_link(&path).expect("readlink")
            ));
        } else if ft.is_char_device() || ft.is_block_device() {
            line.push_str(&format!(
                " rdev={}:{}",
                libc::major(st.rdev()),
                libc::minor(st.rdev())
            ));
        }
        for (k, v) in xattrs(&path) {
            if k.starts_with("trusted.") && !trusted {
                continue;
            }
            line.push_str(&format!(" xattr[{k}]={v:?}"));
        }
        out.insert(rel, line);
        if ft.is_dir() {
            walk(root, &path, trusted, out, inodes);
        }
    }
}

/// All xattrs of a path (not following symlinks), sorted.
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: c is a valid C string; buf has buf.len() writable bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return out;
    }
    let names: Vec<Vec<u8>> = buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect();
    for name in names {
        let k = CString::new(name.clone()).expect("name");
        let mut val = vec![0u8; 64 << 10];
        // SAFETY: as above.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), k.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if m >= 0 {
            val.truncate(m as usize);
            out.push((String::from_utf8_lossy(&name).into_owned(), val));
        }
    }
    out.sort();
    out
}

pub fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    xattrs(path)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Applies a layer with `mode` into `root`, panicking on error.
pub fn apply(bytes: &[u8], root: &Path, mode: WhiteoutMode) {
    if let Err(e) = apply_layer(bytes, root, &ApplyOptions::new(mode)) {
        panic!("apply into {}: {e}", root.display());
    }
}

/// A fresh directory `name` under `base`.
pub fn mkdir(base: &Path, name: &str) -> PathBuf {
    let p = base.join(name);
    fs::create_dir_all(&p).expect("mkdir");
    p
}

/// Unmounts the path when dropped.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts an overlay with the given lower dirs (upper first), read-only.
pub fn mount_overlay_ro(lowers: &[&Path], target: &Path) -> Option<MountGuard> {
    let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lowerdir.join(":")))
        .arg(target)
        .status()
        .ok()?;
    status.success().then(|| MountGuard(target.to_path_buf()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
