//! Applying a layer onto a snapshot's mounts and diffing two mount lists
//! (containerd's `diff/apply` and `diff/walking`, Linux).
//!
//! Apply picks the target as containerd does: a single overlay mount with an
//! `upperdir` is applied to that upper directory directly, with whiteouts
//! converted for overlayfs (0/0 character devices, `trusted.overlay.opaque`);
//! a single writable bind mount is applied to its source directory (what a
//! temporary bind mount would expose); anything else is mounted on a
//! temporary directory under `scratch` and applied there with whiteouts
//! carried out as deletions. An aufs union (kernel `aufs` or Berth's FUSE
//! union) is applied to its writable branch directly, keeping the whiteout
//! files as they are; and the diff of an aufs mount over the mounts of its
//! own lower branches is its top branch packed as it is.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use berth_archive::{
    apply_layer, ApplyOptions, ApplyStats, CompressWriter, Compression, DecompressReader,
    DigestReader, DigestWriter, WhiteoutMode,
};
use berth_content::Digest;
use berth_snapshotter::{Mount, MountGuard};

use crate::error::{Error, Result};

/// What applying a layer did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Digest of the blob as read (the compressed layer).
    pub compressed: Digest,
    /// Size of the blob as read.
    pub compressed_size: u64,
    /// Digest of the uncompressed tar (the diff ID).
    pub uncompressed: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// The compression found by magic bytes.
    pub compression: Compression,
    pub stats: ApplyStats,
}

/// Where a layer goes for a mount list.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// Apply to this directory directly, with this whiteout mode.
    Dir(PathBuf, WhiteoutMode),
    /// Mount on a temporary directory first.
    TempMount,
}

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn has_option(m: &Mount, word: &str) -> bool {
    m.options.iter().any(|o| o == word)
}

fn target_of(mounts: &[Mount]) -> Target {
    if let [m] = mounts {
        if let Some(branches) = berth_snapshotter::aufs::branches(m) {
            return match branches.first() {
                Some((rw, true)) if !has_option(m, "ro") => {
                    Target::Dir(rw.clone(), WhiteoutMode::Keep)
                }
                _ => Target::TempMount,
            };
        }
    }
    match mounts {
        [m] if m.kind == "overlay" => match option(m, "upperdir") {
            Some(upper) => Target::Dir(PathBuf::from(upper), WhiteoutMode::Overlay),
            None => Target::TempMount,
        },
        [m] if (m.kind == "bind" || has_option(m, "bind") || has_option(m, "rbind"))
            && !has_option(m, "ro") =>
        {
            Target::Dir(PathBuf::from(&m.source), WhiteoutMode::Remove)
        }
        _ => Target::TempMount,
    }
}

/// A temporary mount point under `scratch`, removed with the guard.
struct TempMount {
    guard: Option<MountGuard>,
    dir: PathBuf,
}

impl TempMount {
    fn new(mounts: &[Mount], scratch: &Path, readonly: bool) -> Result<TempMount> {
        std::fs::create_dir_all(scratch).map_err(|e| Error::io("create", scratch, e))?;
        let dir = scratch.join(format!("mount-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let mounts: Vec<Mount> = if readonly {
            mounts.iter().map(readonly_mount).collect()
        } else {
            mounts.to_vec()
        };
        match MountGuard::mount(&mounts, &dir) {
            Ok(g) => Ok(TempMount {
                guard: Some(g),
                dir,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(Error::mount(format!("mount {mounts:?}"), e))
            }
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn close(mut self) -> Result<()> {
        let r = match self.guard.take() {
            Some(g) => g.unmount().map_err(|e| Error::mount("unmount", e)),
            None => Ok(()),
        };
        r?;
        std::fs::remove_dir(&self.dir).map_err(|e| Error::io("remove", &self.dir, e))
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            drop(g);
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// The mount read-only: `ro` instead of `rw`; an overlay loses its upper
/// and work directories (its upper becomes the top lower), as containerd's
/// `mount.WithReadonlyTempMount` does.
fn readonly_mount(m: &Mount) -> Mount {
    let mut options: Vec<String> = Vec::new();
    if m.kind == "overlay" {
        let upper = option(m, "upperdir").map(str::to_string);
        for o in &m.options {
            if o.starts_with("upperdir=") || o.starts_with("workdir=") || o == "rw" {
                continue;
            }
            if let (Some(lower), Some(up)) = (o.strip_prefix("lowerdir="), &upper) {
                options.push(format!("lowerdir={up}:{lower}"));
            } else {
                options.push(o.clone());
            }
        }
    } else {
        options.extend(m.options.iter().filter(|o| *o != "rw").cloned());
    }
    if !options.iter().any(|o| o == "ro") {
        options.push("ro".into());
    }
    Mount {
        kind: m.kind.clone(),
        source: m.source.clone(),
        options,
    }
}

/// Applies the layer read from `blob` (any compression, detected by magic)
/// onto `mounts`. The whole blob is read so both digests cover all of it;
/// the caller compares them with what it expects. Hostile entries fail with
/// InvalidArgument naming the entry, and nothing outside the target changes.
/// `scratch` holds temporary mount points.
pub fn apply_to_mounts(blob: impl Read, mounts: &[Mount], scratch: &Path) -> Result<Applied> {
    if mounts.is_empty() {
        return Err(Error::InvalidArgument(
            "no mounts to apply the layer to".into(),
        ));
    }
    match target_of(mounts) {
        Target::Dir(dir, mode) => apply_to_dir(blob, &dir, mode),
        Target::TempMount => {
            let tm = TempMount::new(mounts, scratch, false)?;
            let applied = apply_to_dir(blob, tm.path(), WhiteoutMode::Remove);
            let closed = tm.close();
            let applied = applied?;
            closed?;
            Ok(applied)
        }
    }
}

/// Applies the layer read from `blob` onto the directory `root`.
pub fn apply_to_dir(blob: impl Read, root: &Path, mode: WhiteoutMode) -> Result<Applied> {
    let mut compressed = DigestReader::new(blob);
    let (uncompressed, uncompressed_size, compression, stats) = {
        let dec = DecompressReader::new(&mut compressed)
            .map_err(|e| Error::InvalidArgument(format!("layer: cannot read its start: {e}")))?;
        let compression = dec.compression();
        let mut tar = DigestReader::new(dec);
        let stats = apply_layer(&mut tar, root, &ApplyOptions::new(mode))
            .map_err(|e| Error::archive("apply layer", e))?;
        tar.finish()
            .map_err(|e| Error::InvalidArgument(format!("layer: reading its end: {e}")))?;
        (tar.digest(), tar.count(), compression, stats)
    };
    io::copy(&mut compressed, &mut io::sink())
        .map_err(|e| Error::InvalidArgument(format!("layer: reading its end: {e}")))?;
    Ok(Applied {
        compressed: compressed.digest(),
        compressed_size: compressed.count(),
        uncompressed,
        uncompressed_size,
        compression,
        stats,
    })
}

/// What writing a diff produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// Digest and size of the bytes written to `out` (compressed).
    pub digest: Digest,
    pub size: u64,
    /// Digest and size of the uncompressed tar.
    pub uncompressed: Digest,
    pub uncompressed_size: u64,
}

/// Writes the changes from `lower` to `upper` (mount lists, both mounted
/// read-only on temporary directories under `scratch`; an empty `lower` is
/// an empty tree) as a layer tar compressed with `compression` to `out`.
pub fn diff_mounts(
    lower: &[Mount],
    upper: &[Mount],
    scratch: &Path,
    compression: Compression,
    out: impl Write,
) -> Result<Written> {
    if let Some(branch) = aufs_top_branch(lower, upper) {
        return write_branch(&branch, compression, out);
    }
    let lower_tm = if lower.is_empty() {
        None
    } else {
        Some(TempMount::new(lower, scratch, true)?)
    };
    let empty;
    let lower_dir = match &lower_tm {
        Some(tm) => tm.path().to_path_buf(),
        None => {
            std::fs::create_dir_all(scratch).map_err(|e| Error::io("create", scratch, e))?;
            empty = tempdir_in(scratch)?;
            empty.0.clone()
        }
    };
    let upper_tm = TempMount::new(upper, scratch, true)?;
    let written = write_diff_dirs(&lower_dir, upper_tm.path(), compression, out);
    upper_tm.close()?;
    if let Some(tm) = lower_tm {
        tm.close()?;
    }
    written
}

/// The top branch of `upper` when `upper` is an aufs union whose other
/// branches are exactly what `lower` shows (an aufs union, a bind of one
/// branch, or nothing): that branch is then the whole diff.
fn aufs_top_branch(lower: &[Mount], upper: &[Mount]) -> Option<PathBuf> {
    let [up] = upper else { return None };
    let mut branches = berth_snapshotter::aufs::branches(up)?.into_iter();
    let (top, _) = branches.next()?;
    let rest: Vec<PathBuf> = branches.map(|(dir, _)| dir).collect();
    let below: Vec<PathBuf> = match lower {
        [] => Vec::new(),
        [m] => match berth_snapshotter::aufs::branches(m) {
            Some(b) => b.into_iter().map(|(dir, _)| dir).collect(),
            None if m.kind == "bind" => vec![PathBuf::from(&m.source)],
            None => return None,
        },
        _ => return None,
    };
    (rest == below).then_some(top)
}

/// Writes an aufs branch (its whiteout files included) as a layer.
fn write_branch(branch: &Path, compression: Compression, out: impl Write) -> Result<Written> {
    write_layer_with(branch, compression, out, |dir, w| {
        berth_archive::write_tree(dir, w).map(drop)
    })
}

/// Writes the changes from directory `lower` to directory `upper`.
pub fn write_diff_dirs(
    lower: &Path,
    upper: &Path,
    compression: Compression,
    out: impl Write,
) -> Result<Written> {
    write_layer_with(upper, compression, out, |upper, w| {
        berth_archive::write_diff(lower, upper, w).map(drop)
    })
}

/// Runs `write` (a tar writer over `dir`) into `out` through `compression`,
/// digesting both sides.
fn write_layer_with(
    dir: &Path,
    compression: Compression,
    out: impl Write,
    write: impl FnOnce(&Path, &mut dyn Write) -> berth_archive::Result<()>,
) -> Result<Written> {
    let mut outer = DigestWriter::new(out);
    let (uncompressed, uncompressed_size) = {
        let cw = CompressWriter::new(&mut outer, compression)
            .map_err(|e| Error::io("start compression", dir, e))?;
        let mut inner = DigestWriter::new(cw);
        write(dir, &mut inner).map_err(|e| Error::archive("write diff", e))?;
        let (d, n) = (inner.digest(), inner.count());
        inner
            .into_inner()
            .finish()
            .map_err(|e| Error::io("finish compression", dir, e))?;
        (d, n)
    };
    outer.flush().map_err(|e| Error::io("flush", dir, e))?;
    Ok(Written {
        digest: outer.digest(),
        size: outer.count(),
        uncompressed,
        uncompressed_size,
    })
}

/// An empty directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn tempdir_in(scratch: &Path) -> Result<TempDir> {
    let dir = scratch.join(format!("empty-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).map_err(|e| Error::io("create", &dir, e))?;
    Ok(TempDir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn aufs_fast_paths() {
        let fuse = berth_snapshotter::aufs::FUSE_TYPE;
        let active = m(
            fuse,
            "berth-aufs",
            &["br=/d/3=rw:/d/2=ro+wh:/d/1=ro+wh", "rw"],
        );
        assert_eq!(
            target_of(std::slice::from_ref(&active)),
            Target::Dir("/d/3".into(), WhiteoutMode::Keep)
        );
        let view = m(fuse, "berth-aufs", &["br=/d/2=ro+wh:/d/1=ro+wh", "ro"]);
        assert_eq!(target_of(std::slice::from_ref(&view)), Target::TempMount);
        // The diff over the parent's own view is the top branch.
        assert_eq!(
            aufs_top_branch(std::slice::from_ref(&view), std::slice::from_ref(&active)),
            Some("/d/3".into())
        );
        let one = m(fuse, "berth-aufs", &["br=/d/3=rw:/d/2=ro+wh", "rw"]);
        let bind = m("bind", "/d/2", &["ro", "rbind"]);
        assert_eq!(
            aufs_top_branch(std::slice::from_ref(&bind), std::slice::from_ref(&one)),
            Some("/d/3".into())
        );
        // Anything else is diffed over the mounts.
        assert_eq!(aufs_top_branch(&[], std::slice::from_ref(&one)), None);
        let other = m("bind", "/elsewhere", &["ro", "rbind"]);
        assert_eq!(
            aufs_top_branch(std::slice::from_ref(&other), std::slice::from_ref(&one)),
            None
        );
        assert_eq!(
            aufs_top_branch(std::slice::from_ref(&bind), std::slice::from_ref(&bind)),
            None
        );
    }

    #[test]
    fn targets() {
        assert_eq!(
            target_of(&[m("bind", "/s/fs", &["rw", "rbind"])]),
            Target::Dir("/s/fs".into(), WhiteoutMode::Remove)
        );
        assert_eq!(
            target_of(&[m("bind", "/s/fs", &["ro", "rbind"])]),
            Target::TempMount
        );
        assert_eq!(
            target_of(&[m(
                "overlay",
                "overlay",
                &["workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]
            )]),
            Target::Dir("/u".into(), WhiteoutMode::Overlay)
        );
        assert_eq!(
            target_of(&[m("overlay", "overlay", &["lowerdir=/l1:/l2"])]),
            Target::TempMount
        );
    }

    #[test]
    fn readonly_overlay() {
        let ro = readonly_mount(&m(
            "overlay",
            "overlay",
            &["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"],
        ));
        assert_eq!(ro.options, ["index=off", "lowerdir=/u:/l1:/l2", "ro"]);
        let ro = readonly_mount(&m("bind", "/s", &["rw", "rbind"]));
        assert_eq!(ro.options, ["rbind", "ro"]);
    }
}
