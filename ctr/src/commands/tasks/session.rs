//! Driving a running process from the terminal: forward signals, resize the pty, close stdin
//! on EOF, wait for the exit.

use std::io;
use std::time::Duration;

use anyhow::Context as _;
use berth_proto::containerd::services::tasks::v1::{
    CloseIoRequest, KillRequest, ResizePtyRequest, WaitRequest, WaitResponse,
};
use tokio::signal::unix::{signal, SignalKind};

use super::stdio::{self, Copies};
use crate::client::Conn;
use crate::error::CallExt;

/// A process of a task: the init process (empty exec id) or an exec.
#[derive(Debug, Clone)]
pub struct Target {
    pub container_id: String,
    pub exec_id: String,
}

impl Target {
    pub fn init(container_id: &str) -> Target {
        Target {
            container_id: container_id.to_string(),
            exec_id: String::new(),
        }
    }

    /// `c1` or `c1/exec1`, for messages.
    pub fn name(&self) -> String {
        if self.exec_id.is_empty() {
            self.container_id.clone()
        } else {
            format!("{}/{}", self.container_id, self.exec_id)
        }
    }
}

/// Starts `Tasks.Wait` for `target` in the background (before `Start`, so no exit is missed).
pub fn wait_in_background(
    conn: &Conn,
    target: &Target,
) -> tokio::task::JoinHandle<anyhow::Result<WaitResponse>> {
    let mut tasks = conn.tasks();
    let req = WaitRequest {
        container_id: target.container_id.clone(),
        exec_id: target.exec_id.clone(),
    };
    let what = format!("tasks wait {}", target.name());
    tokio::spawn(async move { Ok(tasks.wait(req).await.ctx(what)?.into_inner()) })
}

/// Signals a foreground `berth` passes on to its process (ctr forwards all it can catch).
const FORWARDED: &[libc::c_int] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Sends the pty of `target` our terminal's size.
pub async fn resize(conn: &Conn, target: &Target) {
    if let Some((width, height)) = stdio::terminal_size() {
        let _ = conn
            .tasks()
            .resize_pty(ResizePtyRequest {
                container_id: target.container_id.clone(),
                exec_id: target.exec_id.clone(),
                width,
                height,
            })
            .await;
    }
}

/// Runs the foreground part of a started process until `wait` reports its exit: forwards
/// signals, follows our terminal's size (with `terminal`), tells the task when our stdin hit
/// EOF, then waits (briefly) for the output copies to drain. Returns the exit status.
pub async fn interact(
    conn: &Conn,
    target: &Target,
    terminal: bool,
    mut copies: Copies,
    mut wait: tokio::task::JoinHandle<anyhow::Result<WaitResponse>>,
) -> anyhow::Result<u32> {
    let (sig_tx, mut sig_rx) = tokio::sync::mpsc::unbounded_channel::<libc::c_int>();
    let mut listeners = Vec::new();
    let mut kinds: Vec<libc::c_int> = FORWARDED.to_vec();
    if terminal {
        kinds.push(libc::SIGWINCH);
        resize(conn, target).await;
    }
    for &n in &kinds {
        let Ok(mut s) = signal(SignalKind::from_raw(n)) else {
            continue;
        };
        let tx = sig_tx.clone();
        listeners.push(tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(n).is_err() {
                    break;
                }
            }
        }));
    }
    drop(sig_tx);
    let mut stdin_closed = copies.stdin_closed.take();
    let status = loop {
        tokio::select! {
            r = &mut wait => {
                break r.context("waiting for the task")??;
            }
            Some(n) = sig_rx.recv() => {
                if n == libc::SIGWINCH {
                    resize(conn, target).await;
                    continue;
                }
                let r = conn.tasks().kill(KillRequest {
                    container_id: target.container_id.clone(),
                    exec_id: target.exec_id.clone(),
                    signal: n as u32,
                    all: false,
                }).await;
                if let Err(s) = r {
                    if s.code() != tonic::Code::NotFound {
                        crate::error::print(&anyhow::Error::from(
                            crate::error::CallError::new(
                                format!("forwarding signal {n} to {}", target.name()), &s)));
                    }
                }
            }
            Ok(()) = async { stdin_closed.as_mut().unwrap().await }, if stdin_closed.is_some() => {
                stdin_closed = None;
                let _ = conn.tasks().close_io(CloseIoRequest {
                    container_id: target.container_id.clone(),
                    exec_id: target.exec_id.clone(),
                    stdin: true,
                }).await;
            }
        }
    };
    for l in listeners {
        l.abort();
    }
    copies.wait(Duration::from_secs(5)).await;
    Ok(status.exit_status)
}

/// Ends `berth` with a process's exit status (as a shell would see it).
pub fn exit_with(status: u32) -> anyhow::Result<()> {
    if status == 0 {
        return Ok(());
    }
    use std::io::Write as _;
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    std::process::exit(status.min(255) as i32)
}
