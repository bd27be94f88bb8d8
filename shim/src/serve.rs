//! The long-lived shim server: a child subreaper on a single-threaded runtime serving
//! `containerd.task.v2.Task` on the socket `start` made (fd 3).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::args::Args;
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::service::TaskService;
use crate::ttrpc::Server;

/// The listener `start` passes.
const LISTENER_FD: i32 = 3;

/// Sends stderr to the bundle's `log` FIFO when the daemon reads it (containerd does).
fn open_log() {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
    else {
        return;
    };
    // Blocking writes from here on: the daemon drains the FIFO.
    use std::os::fd::AsRawFd;
    // SAFETY: plain fcntl/dup2 on descriptors we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        libc::dup2(f.as_raw_fd(), 2);
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Runs the server until `Shutdown`.
pub fn serve(args: &Args) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(Error::io(
            "become child subreaper",
            std::io::Error::last_os_error(),
        ));
    }
    open_log();
    // SAFETY: `start` hands the listening socket over as fd 3; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("listener on fd 3 (run `start`, not the server directly)", e))?;
    // SAFETY: FD_CLOEXEC on our own descriptor; children must not inherit the socket.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("build runtime", e))?;
    rt.block_on(run(args, listener))
}

async fn run(args: &Args, listener: std::os::unix::net::UnixListener) -> Result<()> {
    let reaper = Reaper::new();
    let reaping = reaper
        .clone()
        .run()
        .map_err(|e| Error::io("handle SIGCHLD", e))?;
    tokio::spawn(reaping);

    let events_address = std::env::var("TTRPC_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty());
    let (publisher, forwarder) = Publisher::new(&args.namespace, events_address);
    tokio::spawn(forwarder);

    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|e| Error::io("register listener", e))?;
    let socket_path: Option<PathBuf> = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from));
    let shutdown = Arc::new(Notify::new());
    let service = TaskService::new(
        &args.namespace,
        reaper.clone(),
        publisher.clone(),
        shutdown.clone(),
        socket_path.clone(),
    );
    let mut exits = reaper.subscribe();
    let handler = service.clone();
    tokio::spawn(async move {
        while let Some(exit) = exits.recv().await {
            handler.handle_exit(exit);
        }
    });

    let server = Server::new().register(service);
    tokio::select! {
        r = server.serve(listener) => r.map_err(|e| Error::io("accept", e))?,
        _ = shutdown.notified() => {}
    }
    if let Some(p) = socket_path {
        let _ = std::fs::remove_file(p);
    }
    // Let the Shutdown response go out, and the last events reach the daemon.
    tokio::time::sleep(Duration::from_millis(20)).await;
    publisher.flush(Duration::from_secs(10)).await;
    Ok(())
}
