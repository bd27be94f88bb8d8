//! Mounting a task's rootfs (containerd `Mount`s: bind, overlay, ...) into the bundle.

use std::path::Path;

use berth_proto::containerd::types::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// Splits mount options into flags and the filesystem's data string.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, f) = match o.as_str() {
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "bind" => (true, MsFlags::MS_BIND),
            "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nodev" => (true, MsFlags::MS_NODEV),
            "dev" => (false, MsFlags::MS_NODEV),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (true, MsFlags::MS_DIRSYNC),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "atime" => (false, MsFlags::MS_NOATIME),
            "nodiratime" => (true, MsFlags::MS_NODIRATIME),
            "diratime" => (false, MsFlags::MS_NODIRATIME),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "norelatime" => (false, MsFlags::MS_RELATIME),
            "strictatime" => (true, MsFlags::MS_STRICTATIME),
            "remount" => (true, MsFlags::MS_REMOUNT),
            "defaults" => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        if set {
            flags |= f;
        } else {
            flags &= !f;
        }
    }
    (flags, data.join(","))
}

/// The FUSE mount helper binary and the type prefix it serves, as
/// containerd's `allowedHelperBinaries`.
const FUSE_HELPERS: [(&str, &str); 2] = [("mount.fuse", "fuse."), ("mount.fuse3", "fuse3.")];

/// Mounts `m` through the FUSE mount helper (`mount.fuse3 SOURCE TARGET -o OPT... -t TYPE`,
/// containerd's arguments), which starts the userspace filesystem (e.g. `berth-aufs`). The
/// helper runs through the reaper, the only one allowed to wait for the shim's children.
async fn mount_with_helper(
    m: &Mount,
    helper: &str,
    prefix: &str,
    target: &Path,
    reaper: &Reaper,
) -> Result<()> {
    let mut cmd = std::process::Command::new(helper);
    cmd.arg(&m.source).arg(target);
    for o in &m.options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("-t").arg(&m.r#type[prefix.len()..]);
    let what = || format!("mount {} ({}) on {}", m.source, m.r#type, target.display());
    let out = reaper
        .output(&mut cmd, None)
        .await
        .map_err(|e| Error::io(format!("{}: run {helper}", what()), e))?;
    if out.status != 0 {
        return Err(Error::io(
            what(),
            std::io::Error::other(format!(
                "{helper} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ));
    }
    Ok(())
}

/// Mounts `m` on `target` (FUSE types through their helper).
pub async fn mount_one(m: &Mount, target: &Path, reaper: &Reaper) -> Result<()> {
    for (helper, prefix) in FUSE_HELPERS {
        if m.r#type.starts_with(prefix) {
            return mount_with_helper(m, helper, prefix, target, reaper).await;
        }
    }
    mount_syscall(m, target)
}

/// Mounts `m` on `target` with mount(2).
fn mount_syscall(m: &Mount, target: &Path) -> Result<()> {
    let (flags, data) = parse_options(&m.options);
    let fstype = if m.r#type.is_empty() || m.r#type == "bind" {
        None
    } else {
        Some(m.r#type.as_str())
    };
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    // A bind mount takes MS_RDONLY only on a remount.
    let bind = flags.contains(MsFlags::MS_BIND);
    let first = if bind {
        flags & !MsFlags::MS_RDONLY
    } else {
        flags
    };
    mount(Some(m.source.as_str()), target, fstype, first, data_opt).map_err(|e| {
        Error::io(
            format!(
                "mount {} ({}) on {} with options {:?}",
                m.source,
                m.r#type,
                target.display(),
                m.options
            ),
            e.into(),
        )
    })?;
    if bind && flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| Error::io(format!("remount {} read-only", target.display()), e.into()))?;
    }
    Ok(())
}

/// Mounts `mounts` in order on `target` (created if missing); undoes them on failure.
pub async fn mount_all(mounts: &[Mount], target: &Path, reaper: &Reaper) -> Result<()> {
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target, reaper).await {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts everything mounted on `target` (stacked mounts included). A path that is not a
/// mount point, or does not exist, is fine.
pub fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..64 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(nix::Error::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH)
                    .map_err(|e| Error::io(format!("unmount {}", target.display()), e.into()))?;
            }
            Err(e) => {
                return Err(Error::io(format!("unmount {}", target.display()), e.into()));
            }
        }
    }
    Err(Error::internal(format!(
        "unmount {}: still mounted after 64 unmounts",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&[
            "rbind".into(),
            "ro".into(),
            "lowerdir=/a:/b".into(),
            "index=off".into(),
        ]);
        assert!(f.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(d, "lowerdir=/a:/b,index=off");
        let (f, _) = parse_options(&["ro".into(), "rw".into()]);
        assert!(!f.contains(MsFlags::MS_RDONLY));
    }
}
