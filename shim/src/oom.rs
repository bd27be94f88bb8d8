//! OOM notifications (`/tasks/oom`) for cgroup v1: an eventfd registered on the container's
//! `memory.oom_control` through `cgroup.event_control`. The eventfd also fires when the
//! cgroup is removed; the watch ends then.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use berth_proto::containerd::events::TaskOom;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::events::Publisher;

/// Starts publishing `/tasks/oom` for container `id` whose init is `pid`. `None` when the
/// host has no v1 memory controller for it.
pub fn watch(id: &str, pid: u32, publisher: Publisher) -> Result<Option<JoinHandle<()>>> {
    let dirs = crate::metrics::cgroup_dirs(pid)?;
    let Some(dir) = dirs.get("memory").cloned() else {
        return Ok(None);
    };
    let control = std::fs::File::open(dir.join("memory.oom_control"))
        .map_err(|e| Error::io(format!("open {}/memory.oom_control", dir.display()), e))?;
    // SAFETY: eventfd returns a new descriptor or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(Error::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: efd is a fresh descriptor we own.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
    std::fs::write(dir.join("cgroup.event_control"), line)
        .map_err(|e| Error::io(format!("register OOM event in {}", dir.display()), e))?;
    // SAFETY: the eventfd moves into the AsyncFd and stays open as long as it.
    let afd =
        unsafe { AsyncFd::register(efd) }.map_err(|e| Error::io("register eventfd", e.into()))?;
    let id = id.to_string();
    Ok(Some(tokio::spawn(run(afd, control, dir, id, publisher))))
}

async fn run(
    afd: AsyncFd<OwnedFd>,
    _control: std::fs::File,
    dir: PathBuf,
    id: String,
    publisher: Publisher,
) {
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        let mut buf = [0u8; 8];
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
            Ok(Ok(8)) => {}
            Ok(_) => return,
            Err(_would_block) => continue,
        }
        if !dir.exists() {
            return;
        }
        publisher.publish(
            "/tasks/oom",
            &TaskOom {
                container_id: id.clone(),
            },
        );
    }
}
