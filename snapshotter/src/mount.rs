//! Applying [`Mount`] lists to a target and undoing them (containerd's
//! `mount.All` / `mount.UnmountAll`, Linux only).
//!
//! Options are split as containerd does: known words (`ro`, `rw`, `bind`,
//! `rbind`, `nosuid`, ...) become mount(2) flags, propagation words
//! (`private`, `rshared`, ...) a second call, everything else the data string
//! (`lowerdir=...`). A read-only bind is a bind followed by a read-only
//! remount, since the kernel ignores `MS_RDONLY` on the first bind.
//!
//! Overlay data longer than a page cannot be passed to mount(2). Then the
//! lowerdirs are rewritten relative to their common parent directory and
//! the mount runs on a short-lived thread that first unshares its
//! filesystem attributes (`unshare(CLONE_FS)`) and changes into that
//! directory, as containerd does: the working directory of the process and
//! of every other thread stays untouched, and no fork of a multi-threaded
//! process is needed.
//!
//! FUSE types (`fuse.<helper>`, `fuse3.<helper>`) go through the FUSE mount
//! helper (`mount.fuse` / `mount.fuse3`) with containerd's arguments
//! (`SOURCE TARGET -o OPT... -t <helper>`), which starts the userspace
//! filesystem; unmounting is the ordinary umount(2).

use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::{Error, Mount, Result};

/// Margin below the page size at which overlay data gets compacted
/// (containerd uses the same 512 bytes).
const PAGE_MARGIN: usize = 512;

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(4096)
}

fn nix_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

const PROPAGATION: MsFlags = MsFlags::MS_SHARED
    .union(MsFlags::MS_PRIVATE)
    .union(MsFlags::MS_SLAVE)
    .union(MsFlags::MS_UNBINDABLE);

/// Parsed options of one mount.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    flags: MsFlags,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> Options {
    let mut out = Options {
        flags: MsFlags::empty(),
        data: Vec::new(),
    };
    for o in options {
        let (clear, flag) = match o.as_str() {
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "atime" => (true, MsFlags::MS_NOATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "defaults" => (false, MsFlags::empty()),
            "dev" => (true, MsFlags::MS_NODEV),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "nodev" => (false, MsFlags::MS_NODEV),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "suid" => (true, MsFlags::MS_NOSUID),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "private" => (false, MsFlags::MS_PRIVATE),
            "rprivate" => (false, MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => (false, MsFlags::MS_SHARED),
            "rshared" => (false, MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => (false, MsFlags::MS_SLAVE),
            "rslave" => (false, MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => (false, MsFlags::MS_UNBINDABLE),
            "runbindable" => (false, MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            _ => {
                out.data.push(o.clone());
                continue;
            }
        };
        if clear {
            out.flags.remove(flag);
        } else {
            out.flags.insert(flag);
        }
    }
    out
}

/// Splits `lowerdir=a:b:c` (colons escaped as `\:` belong to a path).
fn split_lowerdirs(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in value.chars() {
        match c {
            ':' if !escaped => out.push(String::new()),
            _ => {
                escaped = c == '\\' && !escaped;
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// The deepest directory that is a proper ancestor of every path in `dirs`.
fn common_parent(dirs: &[String]) -> Option<PathBuf> {
    let mut common: Option<Vec<Component<'_>>> = None;
    for d in dirs {
        let p = Path::new(d);
        if !p.is_absolute() {
            return None;
        }
        let parent: Vec<Component<'_>> = p.parent()?.components().collect();
        common = Some(match common {
            None => parent,
            Some(c) => c
                .iter()
                .zip(parent.iter())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    let common: PathBuf = common?.into_iter().collect();
    (common.components().count() > 1).then_some(common)
}

/// Rewrites the `lowerdir=` data entry relative to the lowerdirs' common
/// parent; returns that directory and the new data, or None if there is
/// nothing to shorten.
fn compact_lowerdirs(data: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let idx = data.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs = split_lowerdirs(&data[idx]["lowerdir=".len()..]);
    let common = common_parent(&dirs)?;
    let rel: Vec<String> = dirs
        .iter()
        .map(|d| {
            Path::new(d)
                .strip_prefix(&common)
                .ok()
                .map(|r| r.to_string_lossy().into_owned())
        })
        .collect::<Option<_>>()?;
    let mut out = data.to_vec();
    out[idx] = format!("lowerdir={}", rel.join(":"));
    Some((common, out))
}

/// The FUSE mount helper binary and the type prefix it serves, as
/// containerd's `allowedHelperBinaries`.
const FUSE_HELPERS: [(&str, &str); 2] = [("mount.fuse", "fuse."), ("mount.fuse3", "fuse3.")];

/// Runs the FUSE mount helper command `cmd` for `m`.
fn mount_with_helper(m: &Mount, mut cmd: std::process::Command, target: &Path) -> Result<()> {
    let helper = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io("run mount helper", &helper, e))?;
    if !out.status.success() {
        return Err(Error::io(
            "mount",
            target,
            std::io::Error::other(format!(
                "{helper} {} ({}): {}: {}",
                m.source,
                m.options.join(","),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ));
    }
    Ok(())
}

impl Mount {
    /// For a FUSE type, the mount helper's command line that mounts this on `target`
    /// (containerd's arguments: `HELPER SOURCE TARGET -o OPT... -t TYPE`); the caller runs
    /// it. None for a kernel filesystem.
    pub fn fuse_command(&self, target: &Path) -> Option<std::process::Command> {
        let (helper, fstype) = FUSE_HELPERS
            .iter()
            .find_map(|(helper, prefix)| Some((*helper, self.kind.strip_prefix(prefix)?)))?;
        let mut cmd = std::process::Command::new(helper);
        cmd.arg(&self.source).arg(target);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.arg("-t").arg(fstype);
        Some(cmd)
    }

    /// Mounts this one mount on `target`.
    pub fn mount(&self, target: &Path) -> Result<()> {
        if let Some(cmd) = self.fuse_command(target) {
            return mount_with_helper(self, cmd, target);
        }
        let opts = parse_options(&self.options);
        let mut flags = opts.flags;
        if self.kind == "bind" {
            flags.insert(MsFlags::MS_BIND);
        }
        let oflags = flags.difference(PROPAGATION);
        let mut data = opts.data;
        let mut chdir = None;
        let limit = page_size();
        if self.kind == "overlay"
            && data.iter().map(String::len).sum::<usize>() >= limit - PAGE_MARGIN
        {
            if let Some((dir, compacted)) = compact_lowerdirs(&data) {
                chdir = Some(dir);
                data = compacted;
            }
        }
        let data = data.join(",");
        if data.len() >= limit {
            return Err(Error::InvalidArgument(format!(
                "mount options of {} are too long ({} bytes, the kernel takes less than {limit})",
                self.kind,
                data.len()
            )));
        }
        let target = std::path::absolute(target).map_err(|e| Error::io("resolve", target, e))?;
        if !oflags.contains(MsFlags::MS_REMOUNT) || !data.is_empty() {
            let fstype = if flags.contains(MsFlags::MS_BIND) {
                "none"
            } else {
                self.kind.as_str()
            };
            mount_at(
                chdir.as_deref(),
                &self.source,
                &target,
                fstype,
                oflags,
                &data,
            )
            .map_err(|e| {
                let what = format!("{} {} ({data}): {e}", self.kind, self.source);
                // The mount as described cannot be made (a missing source or target, an
                // unknown type, bad options): the describer's error, as mounts come from
                // clients (Diff, Tasks.Create's rootfs).
                match e.raw_os_error() {
                    Some(
                        libc::ENOENT | libc::ENODEV | libc::ENOTDIR | libc::ENOTBLK | libc::EINVAL,
                    ) => Error::InvalidArgument(format!("mount {}: {what}", target.display())),
                    _ => Error::io("mount", &target, std::io::Error::new(e.kind(), what)),
                }
            })?;
        }
        if flags.intersects(PROPAGATION) {
            let pflags = flags & (PROPAGATION | MsFlags::MS_REC | MsFlags::MS_SILENT);
            nix::mount::mount(None::<&str>, &target, None::<&str>, pflags, None::<&str>)
                .map_err(|e| Error::io("set propagation", &target, nix_io(e)))?;
        }
        if oflags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
            // The first bind ignores MS_RDONLY; make it read-only now.
            let rflags = (oflags | MsFlags::MS_REMOUNT).difference(MsFlags::MS_REC);
            if let Err(e) =
                nix::mount::mount(None::<&str>, &target, None::<&str>, rflags, None::<&str>)
            {
                let _ = unmount(&target);
                return Err(Error::io("remount read-only", &target, nix_io(e)));
            }
        }
        Ok(())
    }
}

/// mount(2), from directory `chdir` if given (see the module docs).
fn mount_at(
    chdir: Option<&Path>,
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> std::io::Result<()> {
    let data_opt = (!data.is_empty()).then_some(data);
    let Some(dir) = chdir else {
        return nix::mount::mount(Some(source), target, Some(fstype), flags, data_opt)
            .map_err(nix_io);
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread gets its own cwd: the process's and other threads'
            // stay untouched, and the thread ends right after the mount.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(nix_io)?;
            nix::unistd::chdir(dir).map_err(nix_io)?;
            nix::mount::mount(Some(source), target, Some(fstype), flags, data_opt).map_err(nix_io)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("mount thread panicked")))
    })
}

/// Mounts every mount of `mounts` on `target`, in order. On failure, what
/// was mounted is unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = m.mount(target) {
            for _ in 0..i {
                if let Err(u) = unmount(target) {
                    tracing::warn!(error = %u, target = %target.display(), "undo mount");
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts the top mount at `target`. EBUSY is retried a few times with a
/// short backoff (a process may be leaving the mount), then the mount is
/// detached (`MNT_DETACH`) so it goes away once no longer used.
pub fn unmount(target: &Path) -> Result<()> {
    const RETRIES: u32 = 10;
    for attempt in 0..RETRIES {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if attempt + 1 < RETRIES => {
                // Backoff between retries, not synchronisation: nothing
                // here waits for a known event.
                std::thread::sleep(std::time::Duration::from_millis(10 << attempt.min(4)));
            }
            Err(Errno::EBUSY) => break,
            Err(e) => return Err(Error::io("unmount", target, nix_io(e))),
        }
    }
    nix::mount::umount2(target, MntFlags::MNT_DETACH)
        .map_err(|e| Error::io("unmount (detach)", target, nix_io(e)))
}

/// Unmounts every mount stacked at `target` until it is no mount point
/// (EINVAL); a missing target is fine.
pub fn unmount_all(target: &Path) -> Result<()> {
    loop {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => unmount(target)?,
            Err(e) => return Err(Error::io("unmount", target, nix_io(e))),
        }
    }
}

/// Mount points at or below `dir`, deepest first, from
/// `/proc/self/mountinfo`.
pub fn mounts_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything mounted at or below `dir` (deepest first).
pub fn unmount_recursive(dir: &Path) -> Result<()> {
    for m in mounts_below(dir)? {
        unmount_all(&m)?;
    }
    Ok(())
}

/// Unmounts `target` when dropped (errors are logged): keeps tests and
/// callers from leaking mounts on early returns.
pub struct MountGuard {
    target: Option<PathBuf>,
}

impl MountGuard {
    /// Mounts `mounts` on `target` and returns the guard that undoes it.
    pub fn mount(mounts: &[Mount], target: &Path) -> Result<MountGuard> {
        mount_all(mounts, target)?;
        Ok(MountGuard {
            target: Some(target.to_path_buf()),
        })
    }

    /// The mount point.
    pub fn target(&self) -> &Path {
        self.target.as_deref().unwrap_or(Path::new(""))
    }

    /// Unmounts now, reporting errors.
    pub fn unmount(mut self) -> Result<()> {
        match self.target.take() {
            Some(t) => unmount_all(&t),
            None => Ok(()),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(t) = self.target.take() {
            if let Err(e) = unmount_all(&t) {
                tracing::warn!(error = %e, target = %t.display(), "unmount on drop");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(&[
            "ro".into(),
            "rbind".into(),
            "lowerdir=/a".into(),
            "rw".into(),
        ]);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["lowerdir=/a".to_string()]);
    }

    #[test]
    fn compaction() {
        let data = vec![
            "index=off".to_string(),
            "lowerdir=/r/snapshots/12/fs:/r/snapshots/3/fs".to_string(),
        ];
        let (dir, out) = compact_lowerdirs(&data).unwrap();
        assert_eq!(dir, Path::new("/r/snapshots"));
        assert_eq!(out[1], "lowerdir=12/fs:3/fs");
        assert!(compact_lowerdirs(&["lowerdir=/a/fs:/b/fs".to_string()]).is_none());
        assert_eq!(
            split_lowerdirs(r"/a\:b:/c"),
            vec![r"/a\:b".to_string(), "/c".to_string()]
        );
    }

    #[test]
    fn overlay_lowerdirs_longer_than_a_page() {
        let d = tempfile::tempdir().unwrap();
        let layers = d.path().join("a-rather-long-directory-name-for-the-layers");
        let mut lowers = Vec::new();
        for i in 0..200 {
            let l = layers.join(format!("{i}")).join("fs");
            std::fs::create_dir_all(&l).unwrap();
            std::fs::write(l.join(format!("f{i}")), b"x").unwrap();
            lowers.push(l.display().to_string());
        }
        lowers.reverse();
        let data = format!("lowerdir={}", lowers.join(":"));
        assert!(data.len() > page_size());
        let target = d.path().join("merged");
        std::fs::create_dir(&target).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let m = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![data],
        };
        let g = MountGuard::mount(std::slice::from_ref(&m), &target).unwrap();
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        assert!(target.join("f0").exists() && target.join("f199").exists());
        assert_eq!(mounts_below(d.path()).unwrap(), vec![target.clone()]);
        g.unmount().unwrap();
        assert!(!target.join("f0").exists());
    }

    #[test]
    fn bind_ro_and_unmount() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let m = Mount {
            kind: "bind".into(),
            source: src.display().to_string(),
            options: vec!["ro".into(), "rbind".into()],
        };
        let g = MountGuard::mount(std::slice::from_ref(&m), &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("f")).unwrap(), b"x");
        let err = std::fs::write(dst.join("g"), b"y").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        g.unmount().unwrap();
        assert!(!dst.join("f").exists());
        unmount_all(&dst).unwrap();
        unmount_all(&d.path().join("missing")).unwrap();
    }

    fn mount_err(kind: &str, source: &str, options: &[&str], target: &Path) -> Error {
        let m = Mount {
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        m.mount(target).unwrap_err()
    }

    #[test]
    fn mounts_described_wrong_are_the_callers_error() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path();
        let err = mount_err("bind", "/nonexistent/berth", &["rbind", "ro"], target);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let err = mount_err("no-such-fs", "none", &[], target);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let err = mount_err("tmpfs", "tmpfs", &["size=not-a-size"], target);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("size=not-a-size"), "{err}");
    }
}
