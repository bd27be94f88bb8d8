//! Mounting `/dev/fuse` ourselves (we run as root, as mount helpers do) and serving it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use fuser::{Config, Session, SessionACL};
use nix::mount::MsFlags;

use crate::fs::UnionFs;
use crate::options::Options;

/// Mount failures, each naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("open /dev/fuse: {0} (is the fuse module loaded?)")]
    OpenDevice(io::Error),
    #[error("mount {target}: {error}")]
    Mount { target: String, error: io::Error },
    #[error("branches: {0}")]
    Branches(io::Error),
    #[error("FUSE handshake: {0}")]
    Handshake(io::Error),
}

/// The `mount(2)` data for a FUSE mount served through `fd`.
pub fn mount_data(fd: i32) -> String {
    format!(
        "fd={fd},rootmode=40000,user_id={},group_id={},allow_other,default_permissions",
        nix::unistd::getuid(),
        nix::unistd::getgid()
    )
}

/// Opens `/dev/fuse` and mounts it on the mountpoint as `fuse.berth-aufs`.
pub fn mount(opts: &Options) -> Result<File, MountError> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(MountError::OpenDevice)?;
    let mut flags = MsFlags::empty();
    for (set, flag) in [
        (opts.read_only, MsFlags::MS_RDONLY),
        (opts.nosuid, MsFlags::MS_NOSUID),
        (opts.nodev, MsFlags::MS_NODEV),
        (opts.noexec, MsFlags::MS_NOEXEC),
    ] {
        if set {
            flags |= flag;
        }
    }
    nix::mount::mount(
        Some(opts.source.as_os_str()),
        &opts.mountpoint,
        Some("fuse.berth-aufs"),
        flags,
        Some(mount_data(dev.as_raw_fd()).as_str()),
    )
    .map_err(|e| MountError::Mount {
        target: opts.mountpoint.display().to_string(),
        error: e.into(),
    })?;
    Ok(dev)
}

/// A mounted union whose FUSE handshake is done: requests are queued until `run`.
pub struct Mounted {
    session: Session<UnionFs>,
    threads: usize,
}

/// Mounts the union and completes the FUSE handshake. On a handshake failure the mount is
/// detached again so no dead mount is left behind.
pub fn mount_union(opts: &Options) -> Result<Mounted, MountError> {
    let fs = UnionFs::new(opts.branches.clone(), opts.writable()).map_err(MountError::Branches)?;
    let dev = mount(opts)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let mut config = Config::default();
    config.n_threads = Some(threads);
    config.clone_fd = true;
    let notifier = fs.notifier_slot();
    match Session::from_fd(fs, OwnedFd::from(dev), SessionACL::All, config) {
        Ok(session) => {
            let _ = notifier.set(session.notifier());
            Ok(Mounted { session, threads })
        }
        Err(e) => {
            let _ = nix::mount::umount2(&opts.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            Err(MountError::Handshake(e))
        }
    }
}

impl Mounted {
    /// Serves requests until the filesystem is unmounted (the kernel then ends the session).
    pub fn run(self) -> io::Result<()> {
        tracing::info!(threads = self.threads, "serving");
        self.session.run()
    }
}

/// Forks while the process is still single-threaded; see [`crate::sys`].
pub fn fork_single_threaded() -> io::Result<Option<nix::unistd::Pid>> {
    crate::sys::fork_single_threaded()
}
