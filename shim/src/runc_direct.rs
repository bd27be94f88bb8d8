//! Two runc commands the shim carries out itself, because each is a few syscalls that cost a
//! whole Go process start (6-9 ms here) when run as `runc start` / `runc delete`:
//!
//! - **start**: a created container's init blocks opening `<root>/<id>/exec.fifo` for writing;
//!   `runc start` opens it for reading, reads the byte init writes, sees end-of-file when
//!   init execs the process, and removes the FIFO (runc reports "created" while it exists).
//! - **delete of a stopped container**: remove its cgroups and its state directory.
//!
//! Both follow runc 1.x's state layout and answer `None` whenever anything differs from the
//! plain case (no FIFO, unknown `state.json`, hooks, systemd cgroups, Intel RDT, a shared pid
//! namespace, a cgroup that will not go): the caller then runs the runc command, which handles
//! everything. Used for runc only: crun's FIFO works the other way round.

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{Error, Result};

const EXEC_FIFO: &str = "exec.fifo";
const STATE_FILE: &str = "state.json";
/// How often `start` checks that init is still there to write (runc: 100 ms).
const LIVENESS_TICK: Duration = Duration::from_millis(100);

/// `runc start ID`, or `None` when the container has no exec FIFO (then runc itself reports
/// why it cannot be started).
pub async fn start(root: &Path, id: &str) -> Option<Result<()>> {
    let dir = root.join(id);
    let fifo = dir.join(EXEC_FIFO);
    // Non-blocking: opening never waits, and a dead init cannot hang the shim.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&fifo)
        .ok()?;
    if !file.metadata().ok()?.file_type().is_fifo() {
        return None;
    }
    Some(read_exec_fifo(file, &dir, &fifo).await)
}

async fn read_exec_fifo(file: std::fs::File, dir: &Path, fifo: &Path) -> Result<()> {
    let io = |e| Error::io(format!("read {}", fifo.display()), e);
    // SAFETY: the file moves into the AsyncFd and stays open, unchanged, as long as it.
    let fd = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }
        .map_err(|e| io(e.into()))?;
    let mut received = 0usize;
    let mut buf = [0u8; 64];
    loop {
        // Readiness comes with init's byte, then with the hang-up of its exec (a FIFO whose
        // writer never came reports neither).
        let mut guard = match tokio::time::timeout(LIVENESS_TICK, fd.readable()).await {
            Ok(guard) => guard.map_err(io)?,
            Err(_) => {
                if init_stopped(dir) == Some(true) {
                    // It may have written, exec'd and finished within the tick.
                    return match fd.get_ref().read(&mut buf) {
                        Ok(n) if n > 0 => remove_fifo(fifo),
                        _ => Err(Error::precondition("container process is already dead")),
                    };
                }
                continue;
            }
        };
        match guard.try_io(|f| f.get_ref().read(&mut buf)) {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => received += n,
            Ok(Err(e)) => return Err(io(e)),
            Err(_would_block) => {}
        }
    }
    if received == 0 {
        return Err(Error::precondition(
            "cannot start an already running container",
        ));
    }
    remove_fifo(fifo)
}

fn remove_fifo(fifo: &Path) -> Result<()> {
    match std::fs::remove_file(fifo) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", fifo.display()), e))
        }
        _ => Ok(()),
    }
}

/// The parts of runc's `state.json` the delete needs.
#[derive(Deserialize)]
struct State {
    init_process_pid: i32,
    init_process_start: u64,
    #[serde(default)]
    rootless: bool,
    #[serde(default)]
    cgroup_paths: HashMap<String, String>,
    #[serde(default)]
    intel_rdt_path: String,
    config: Config,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    namespaces: Vec<Namespace>,
    #[serde(rename = "Hooks", default)]
    hooks: Option<HashMap<String, Option<Vec<serde_json::Value>>>>,
    cgroups: Option<Cgroups>,
}

#[derive(Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct Cgroups {
    #[serde(rename = "Systemd", default)]
    systemd: bool,
}

fn read_state(dir: &Path) -> Option<State> {
    serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).ok()?).ok()
}

/// Whether the container's init is gone (runc's test: no process with its pid and start
/// time, or a zombie). `None` when the state cannot be read.
fn init_stopped(dir: &Path) -> Option<bool> {
    let s = read_state(dir)?;
    Some(process_stopped(s.init_process_pid, s.init_process_start))
}

fn process_stopped(pid: i32, start_time: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // Fields after the command (which may hold spaces): state is the 3rd, starttime the 22nd.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("");
    let started = fields.get(19).and_then(|f| f.parse::<u64>().ok());
    state == "Z" || state == "X" || started != Some(start_time)
}

/// `runc delete ID` of a stopped container, or `None` when runc must do it. Blocking.
pub fn delete_stopped(root: &Path, id: &str) -> Option<Result<()>> {
    let dir = root.join(id);
    let state = read_state(&dir)?;
    let own_pid_ns = state
        .config
        .namespaces
        .iter()
        .any(|n| n.kind == "NEWPID" && n.path.is_empty());
    let poststop = state.config.hooks.as_ref().is_some_and(|h| {
        h.get("poststop")
            .is_some_and(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
    });
    let plain = own_pid_ns
        && !poststop
        && !state.rootless
        && state.intel_rdt_path.is_empty()
        && !state.config.cgroups.as_ref().is_some_and(|c| c.systemd);
    if !plain || !process_stopped(state.init_process_pid, state.init_process_start) {
        return None;
    }
    // Several controllers may share a directory.
    let cgroups: BTreeSet<PathBuf> = state.cgroup_paths.values().map(PathBuf::from).collect();
    for cgroup in &cgroups {
        if !remove_cgroup(cgroup) {
            return None;
        }
    }
    Some(match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", dir.display()), e))
        }
        _ => Ok(()),
    })
}

/// Removes an empty cgroup; its last processes may still be on their way out (busy), so a
/// few tries with backoff, as runc's own removal.
fn remove_cgroup(path: &Path) -> bool {
    let mut delay = Duration::from_millis(2);
    for _ in 0..6 {
        match std::fs::remove_dir(path) {
            Ok(()) => return true,
            Err(e) if e.kind() == ErrorKind::NotFound => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            // Child cgroups the container made, or anything else: runc's job.
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o622) }, 0);
    }

    #[test]
    fn own_process_is_running_and_wrong_start_time_is_stopped() {
        let pid = std::process::id() as i32;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        let start: u64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
        assert!(!process_stopped(pid, start));
        assert!(process_stopped(pid, start + 1));
        assert!(process_stopped(i32::MAX, start));
    }

    #[test]
    fn delete_declines_what_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        // No state at all, then a state with a poststop hook: runc must run.
        assert!(delete_stopped(dir.path(), "c").is_none());
        std::fs::create_dir(dir.path().join("c")).unwrap();
        let state = serde_json::json!({
            "init_process_pid": i32::MAX, "init_process_start": 1,
            "cgroup_paths": {}, "config": {
                "namespaces": [{"type": "NEWPID", "path": ""}],
                "Hooks": {"poststop": [{"path": "/bin/true"}]}, "cgroups": {"Systemd": false}}
        });
        std::fs::write(dir.path().join("c/state.json"), state.to_string()).unwrap();
        assert!(delete_stopped(dir.path(), "c").is_none());
        assert!(dir.path().join("c").exists());
    }

    #[test]
    fn delete_removes_the_state_of_a_plain_stopped_container() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c")).unwrap();
        let gone_cgroup = dir.path().join("no-such-cgroup");
        let state = serde_json::json!({
            "init_process_pid": i32::MAX, "init_process_start": 1,
            "cgroup_paths": {"pids": gone_cgroup}, "config": {
                "namespaces": [{"type": "NEWPID", "path": ""}],
                "Hooks": {"poststop": null, "prestart": null}, "cgroups": {"Systemd": false}}
        });
        std::fs::write(dir.path().join("c/state.json"), state.to_string()).unwrap();
        assert!(matches!(delete_stopped(dir.path(), "c"), Some(Ok(()))));
        assert!(!dir.path().join("c").exists());
    }

    #[tokio::test]
    async fn start_without_fifo_leaves_it_to_runc() {
        let dir = tempfile::tempdir().unwrap();
        assert!(start(dir.path(), "c").await.is_none());
    }

    #[tokio::test]
    async fn start_reads_the_byte_and_removes_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c");
        std::fs::create_dir(&c).unwrap();
        let fifo = c.join(EXEC_FIFO);
        mkfifo(&fifo);
        // Stands in for runc's init: blocks opening for writing, writes, closes (its exec).
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
                f.write_all(b"0").unwrap();
            })
        };
        let result = start(dir.path(), "c").await;
        writer.join().unwrap();
        assert!(matches!(result, Some(Ok(()))), "start failed");
        assert!(!fifo.exists());
    }

    #[tokio::test]
    async fn start_with_a_dead_init_fails_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c");
        std::fs::create_dir(&c).unwrap();
        mkfifo(&c.join(EXEC_FIFO));
        let state = serde_json::json!({
            "init_process_pid": i32::MAX, "init_process_start": 1, "config": {}
        });
        std::fs::write(c.join(STATE_FILE), state.to_string()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), start(dir.path(), "c"))
            .await
            .expect("start gave up on the dead init");
        let err = result.expect("a FIFO is there").unwrap_err();
        assert!(err.to_string().contains("already dead"), "{err}");
    }
}
