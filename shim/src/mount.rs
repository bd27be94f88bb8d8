//! Mounting a task's rootfs (containerd `Mount`s: bind, overlay, FUSE, ...) into the bundle,
//! with the snapshotter crate's mount code (options, a long overlay `lowerdir=` made relative
//! as containerd does); FUSE helpers run through the shim's reaper.

use std::path::Path;

use berth_proto::containerd::types::Mount;
use nix::mount::{umount2, MntFlags};

use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// Mounts `m` on `target`. A FUSE type's mount helper (which starts the userspace
/// filesystem, e.g. `berth-aufs`) runs through the reaper, the only one allowed to wait for
/// the shim's children.
pub async fn mount_one(m: &Mount, target: &Path, reaper: &Reaper) -> Result<()> {
    let what = || format!("mount {} ({}) on {}", m.source, m.r#type, target.display());
    let mount = berth_snapshotter::Mount {
        kind: m.r#type.clone(),
        source: m.source.clone(),
        options: m.options.clone(),
    };
    let Some(mut cmd) = mount.fuse_command(target) else {
        return mount.mount(target).map_err(|e| {
            // Keep the errno's kind (a missing source is NotFound).
            let kind = match &e {
                berth_snapshotter::Error::Io { source, .. } => source.kind(),
                _ => std::io::ErrorKind::InvalidInput,
            };
            Error::io(
                format!("{} with options {:?}", what(), m.options),
                std::io::Error::new(kind, e.to_string()),
            )
        });
    };
    let helper = cmd.get_program().to_string_lossy().into_owned();
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
