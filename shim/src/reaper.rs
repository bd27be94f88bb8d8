//! The one reaper of the shim's children.
//!
//! The shim is a child subreaper, so container processes (grandchildren through runc) become
//! its children too. Exactly one loop calls `waitpid(-1, WNOHANG)`, on every SIGCHLD. Each
//! status goes to the waiter registered for that pid ([`Reaper::spawn`] registers the pid
//! while holding the lock the loop needs to dispatch, so no exit is missed between fork and
//! registration), or, for processes the shim did not spawn itself (container processes), to
//! the subscribers. Nothing else may wait for children: a second `waitpid` would steal
//! statuses.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// A process that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The exit code, or 128 + the signal that killed it.
    pub status: i32,
    pub at: SystemTime,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    subscribers: Vec<mpsc::UnboundedSender<Exit>>,
}

/// Dispatches exit statuses of all children.
#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

/// A command spawned through the reaper.
pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<Exit>,
    pub child: std::process::Child,
}

/// The result of [`Reaper::output`].
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Reaper {
    pub fn new() -> Arc<Reaper> {
        Arc::new(Reaper::default())
    }

    /// Receives the exits of children that were not spawned through [`Reaper::spawn`].
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Exit> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.lock().unwrap().subscribers.push(tx);
        rx
    }

    /// Spawns `cmd` and registers its pid before its exit can be dispatched. The returned
    /// `Child` must never be waited on.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        let mut inner = self.inner.lock().unwrap();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        let (tx, rx) = oneshot::channel();
        inner.waiting.insert(pid, tx);
        Ok(Spawned {
            pid,
            exit: rx,
            child,
        })
    }

    /// Runs `cmd` to its end, feeding `stdin` and collecting stdout and stderr.
    pub async fn output(&self, cmd: &mut Command, stdin: Option<&[u8]>) -> io::Result<Output> {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut spawned = self.spawn(cmd)?;
        let child_stdin = spawned.child.stdin.take().map(OwnedFd::from);
        let child_stdout = spawned.child.stdout.take().map(OwnedFd::from);
        let child_stderr = spawned.child.stderr.take().map(OwnedFd::from);
        let feed = async {
            if let (Some(fd), Some(data)) = (child_stdin, stdin) {
                let mut w = tokio::net::unix::pipe::Sender::from_owned_fd(fd)?;
                // A child that exits without reading is not an error of ours.
                let _ = w.write_all(data).await;
            }
            Ok::<_, io::Error>(())
        };
        let (fed, stdout, stderr) =
            tokio::join!(feed, read_all(child_stdout), read_all(child_stderr));
        fed?;
        let exit = spawned
            .exit
            .await
            .map_err(|_| io::Error::other("reaper dropped the exit status"))?;
        Ok(Output {
            status: exit.status,
            stdout: stdout?,
            stderr: stderr?,
        })
    }

    /// Reaps every child that has exited and dispatches the statuses.
    pub fn reap(&self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let exit = Exit {
                pid: status.0,
                status: status.1,
                at: SystemTime::now(),
            };
            let mut inner = self.inner.lock().unwrap();
            if let Some(w) = inner.waiting.remove(&exit.pid) {
                let _ = w.send(exit);
            } else {
                inner.subscribers.retain(|s| s.send(exit).is_ok());
            }
        }
    }

    /// Reaps on every SIGCHLD, forever. The signal handler is installed before this returns
    /// its future, so call it before spawning anything.
    pub fn run(self: Arc<Self>) -> io::Result<impl std::future::Future<Output = ()>> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        Ok(async move {
            self.reap();
            while sigchld.recv().await.is_some() {
                self.reap();
            }
        })
    }
}

async fn read_all(fd: Option<OwnedFd>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(fd) = fd {
        let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
        r.read_to_end(&mut out).await?;
    }
    Ok(out)
}
