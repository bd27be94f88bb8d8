//! Drives `containerd-shim-berth-v2` over ttrpc as a daemon would: `start`, then the task API,
//! with a fake daemon receiving the shim's events. Needs root and runc.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::containerd::events as ev;
use berth_proto::containerd::runc::v1::Options as RuncOptions;
use berth_proto::containerd::services::events::ttrpc::v1::ForwardRequest;
use berth_proto::containerd::task::v2 as api;
use berth_proto::containerd::types::Mount;
use berth_proto::containerd::v1::types::Status;
use berth_ttrpc::{self as ttrpc, BoxFuture, RequestContext, Server, Service, TaskClient};
use prost::{Message, Name};
use tokio::io::AsyncReadExt;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The fake daemon's `containerd.services.events.ttrpc.v1.Events`.
#[derive(Default)]
struct Events {
    got: Mutex<Vec<(String, prost_types::Any)>>,
}

impl Service for Events {
    fn name(&self) -> &str {
        "containerd.services.events.ttrpc.v1.Events"
    }

    fn call(
        self: Arc<Self>,
        method: &str,
        _ctx: RequestContext,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, ttrpc::Status>> {
        let method = method.to_string();
        Box::pin(async move {
            if method != "Forward" {
                return Err(ttrpc::status(ttrpc::Code::Unimplemented, method));
            }
            let req: ForwardRequest = ttrpc::decode(&payload)?;
            let env = req.envelope.unwrap_or_default();
            assert_eq!(env.namespace, NS);
            self.got
                .lock()
                .unwrap()
                .push((env.topic, env.event.unwrap_or_default()));
            Ok(ttrpc::encode(&()))
        })
    }
}

impl Events {
    fn topics(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn decode<E: Message + Name + Default>(&self, topic: &str) -> Vec<E> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, a)| {
                assert_eq!(a.type_url, E::full_name());
                E::decode(a.value.as_slice()).unwrap()
            })
            .collect()
    }
}

const NS: &str = "berth-shim-test";

/// Kills what the test started and unmounts what it mounted, whatever happened.
struct Guard {
    dir: PathBuf,
    shim_pid: Option<i32>,
    containers: Vec<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = Command::new("runc")
                .args([
                    "--root",
                    &format!("/run/berth/runc/{NS}"),
                    "delete",
                    "--force",
                    id,
                ])
                .output();
        }
        if let Some(pid) = self.shim_pid {
            // SAFETY: signalling the shim this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for pid in pids_with_cmdline(&self.dir.display().to_string()) {
            // SAFETY: processes started for this test's temp dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        unmount_under(&self.dir);
    }
}

fn mkfifo(path: &Path) {
    nix_mkfifo(path);
}

fn nix_mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

/// Opens a FIFO for reading and collects everything written to it until all writers close.
fn collect_fifo(path: &Path) -> tokio::task::JoinHandle<String> {
    let mut rx = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .unwrap();
    tokio::spawn(async move {
        let mut s = String::new();
        let _ = rx.read_to_string(&mut s).await;
        s
    })
}

/// A bundle with `config.json` for `args`; the rootfs is prepared aside and bind-mounted by
/// the shim (as the daemon's snapshot mounts would be).
fn bundle(dir: &Path, id: &str, args: &[&str]) -> (PathBuf, Vec<Mount>) {
    let bundle = dir.join(id);
    std::fs::create_dir_all(&bundle).unwrap();
    let src = dir.join(format!("{id}-rootfs"));
    busybox_rootfs(&src);
    let cfg = oci_config(
        args,
        false,
        &format!("/berth-shim-test-{}-{id}", std::process::id()),
    );
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let mounts = vec![Mount {
        r#type: "bind".into(),
        source: src.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    }];
    (bundle, mounts)
}

/// Runs `start` for `id` in `bundle` (its working directory, as containerd starts shims);
/// returns the shim's address.
fn start_shim(dir: &Path, bundle: &Path, id: &str, events_sock: &Path) -> String {
    start_shim_in(dir, bundle, id, events_sock, false)
}

/// Runs `start` for `id`; with `by_flag`, the bundle is `-bundle` and the working directory
/// another (as berthd starts Berth's shim). Returns the shim's address.
fn start_shim_in(dir: &Path, bundle: &Path, id: &str, events_sock: &Path, by_flag: bool) -> String {
    let daemon_address = dir.join("daemon.sock").display().to_string();
    let mut cmd = Command::new(shim_binary());
    cmd.args(["-namespace", NS, "-address", &daemon_address])
        .args(["-publish-binary", "/bin/true", "-id", id])
        .env("TTRPC_ADDRESS", events_sock);
    if by_flag {
        cmd.arg("-bundle").arg(bundle).current_dir("/");
    } else {
        cmd.current_dir(bundle);
    }
    let out = run_with_deadline(cmd.arg("start"), WAIT);
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Shuts the shim down (no tasks left) and waits until it has exited and removed its socket.
async fn shutdown_and_wait(task: &TaskClient, address: &str, guard: &mut Guard) {
    let _ = task
        .shutdown(&api::ShutdownRequest {
            id: String::new(),
            now: false,
        })
        .await;
    let sock = ttrpc::socket_path(address);
    assert!(
        wait_until(WAIT, || !Path::new(&sock).exists()),
        "shim socket {sock} still there"
    );
    if let Some(pid) = guard.shim_pid.take() {
        assert!(
            wait_until(WAIT, || !is_running(pid)),
            "shim {pid} still running"
        );
    }
}

/// Whether `pid` is alive (not gone, not a zombie).
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Serves a fake daemon's events endpoint at `<dir>/events.sock`.
fn fake_daemon(dir: &Path) -> (Arc<Events>, PathBuf) {
    let events = Arc::new(Events::default());
    let events_sock = dir.join("events.sock");
    let listener = tokio::net::UnixListener::bind(&events_sock).unwrap();
    let server = Server::new().register(events.clone());
    tokio::spawn(async move { server.serve(listener).await });
    (events, events_sock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_stdin_and_close_io() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut guard = Guard {
        dir: dir.clone(),
        shim_pid: None,
        containers: vec!["p1".into(), "s1".into()],
    };
    let (_events, events_sock) = fake_daemon(&dir);

    // p1: a terminal; the size set by ResizePty shows inside, stdin reaches the process.
    let (b1, rootfs1) = bundle(
        &dir,
        "p1",
        &["sh", "-c", "read line; echo got:$line; stty size"],
    );
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b1.join("config.json")).unwrap()).unwrap();
    cfg["process"]["terminal"] = true.into();
    std::fs::write(b1.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let address = start_shim(&dir, &b1, "p1", &events_sock);
    let task = TaskClient::connect(&address).await.unwrap();
    guard.shim_pid = Some(
        task.connect_shim(&api::ConnectRequest { id: "p1".into() })
            .await
            .unwrap()
            .shim_pid as i32,
    );
    let (stdin, stdout) = (dir.join("p1.stdin"), dir.join("p1.stdout"));
    mkfifo(&stdin);
    mkfifo(&stdout);
    let out = collect_fifo(&stdout);
    task.create(&api::CreateTaskRequest {
        id: "p1".into(),
        bundle: b1.display().to_string(),
        rootfs: rootfs1,
        terminal: true,
        stdin: stdin.display().to_string(),
        stdout: stdout.display().to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut input = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(&stdin)
        .unwrap();
    task.start(&api::StartRequest {
        id: "p1".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    task.resize_pty(&api::ResizePtyRequest {
        id: "p1".into(),
        exec_id: String::new(),
        width: 101,
        height: 42,
    })
    .await
    .unwrap();
    // An exec with its own terminal.
    let exec_out = dir.join("t.stdout");
    mkfifo(&exec_out);
    let eout = collect_fifo(&exec_out);
    task.exec(&api::ExecProcessRequest {
        id: "p1".into(),
        exec_id: "t".into(),
        terminal: true,
        stdout: exec_out.display().to_string(),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: oci_process(&["tty"], true),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    task.start(&api::StartRequest {
        id: "p1".into(),
        exec_id: "t".into(),
    })
    .await
    .unwrap();
    let ew = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "p1".into(),
            exec_id: "t".into(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ew.exit_status, 0);
    task.delete(&api::DeleteRequest {
        id: "p1".into(),
        exec_id: "t".into(),
    })
    .await
    .unwrap();
    let tty = tokio::time::timeout(WAIT, eout).await.unwrap().unwrap();
    assert!(tty.starts_with("/dev/pts/"), "{tty:?}");

    use tokio::io::AsyncWriteExt;
    input.write_all(b"abc\n").await.unwrap();
    let w = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "p1".into(),
            exec_id: String::new(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(w.exit_status, 0);
    task.delete(&api::DeleteRequest {
        id: "p1".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    let text = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(text.contains("got:abc"), "{text:?}");
    assert!(text.contains("42 101"), "{text:?}");

    // s1 (same shim): `cat` gets EOF from CloseIO although the client keeps stdin open, and
    // what was written before is passed on first.
    let (b2, rootfs2) = bundle(&dir, "s1", &["cat"]);
    let (stdin, stdout) = (dir.join("s1.stdin"), dir.join("s1.stdout"));
    mkfifo(&stdin);
    mkfifo(&stdout);
    let out = collect_fifo(&stdout);
    task.create(&api::CreateTaskRequest {
        id: "s1".into(),
        bundle: b2.display().to_string(),
        rootfs: rootfs2,
        stdin: stdin.display().to_string(),
        stdout: stdout.display().to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut input = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(&stdin)
        .unwrap();
    task.start(&api::StartRequest {
        id: "s1".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    input.write_all(b"line one\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.close_io(&api::CloseIoRequest {
        id: "s1".into(),
        exec_id: String::new(),
        stdin: true,
    })
    .await
    .unwrap();
    let w = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "s1".into(),
            exec_id: String::new(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(w.exit_status, 0);
    task.delete(&api::DeleteRequest {
        id: "s1".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, out).await.unwrap().unwrap(),
        "line one\n"
    );
    drop(input);
    shutdown_and_wait(&task, &address, &mut guard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lifecycle_over_ttrpc() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut guard = Guard {
        dir: dir.clone(),
        shim_pid: None,
        containers: vec!["c1".into(), "c2".into()],
    };

    // The fake daemon's ttrpc events endpoint.
    let (events, events_sock) = fake_daemon(&dir);

    let (b1, rootfs1) = bundle(&dir, "c1", &["sh", "-c", "echo hello; exec sleep 1000"]);

    // start: prints the address, writes it in the bundle, leaves the server running.
    let daemon_address = dir.join("daemon.sock").display().to_string();
    let out = run_with_deadline(
        Command::new(shim_binary())
            .args(["-namespace", NS, "-address", &daemon_address])
            .args(["-publish-binary", "/bin/true", "-id", "c1", "start"])
            .current_dir(&b1)
            .env("TTRPC_ADDRESS", &events_sock),
        WAIT,
    );
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let address = String::from_utf8(out.stdout).unwrap();
    assert!(address.starts_with("unix:///run/berth/s/"), "{address}");
    assert_eq!(
        std::fs::read_to_string(b1.join("address")).unwrap(),
        address
    );
    let shim_pid: i32 = std::fs::read_to_string(b1.join("shim.pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        address,
        berth_shim::socket_address(&daemon_address, NS, "c1")
    );

    // A second start finds the live shim and reuses it.
    let again = run_with_deadline(
        Command::new(shim_binary())
            .args([
                "-namespace",
                NS,
                "-address",
                &daemon_address,
                "-id",
                "c1",
                "start",
            ])
            .current_dir(&b1),
        WAIT,
    );
    assert_eq!(String::from_utf8(again.stdout).unwrap(), address);

    let task = TaskClient::connect(&address).await.unwrap();
    let connected = task
        .connect_shim(&api::ConnectRequest { id: "c1".into() })
        .await;
    let connected = connected.unwrap();
    guard.shim_pid = Some(connected.shim_pid as i32);
    assert_eq!(connected.shim_pid as i32, shim_pid);
    assert_eq!(connected.task_pid, 0);

    // Create with stdout and stderr FIFOs, runc options naming runc explicitly.
    let stdout = dir.join("c1.stdout");
    let stderr = dir.join("c1.stderr");
    mkfifo(&stdout);
    mkfifo(&stderr);
    let out1 = collect_fifo(&stdout);
    let _err1 = collect_fifo(&stderr);
    let opts = RuncOptions {
        binary_name: "runc".into(),
        ..Default::default()
    };
    let created = task
        .create(&api::CreateTaskRequest {
            id: "c1".into(),
            bundle: b1.display().to_string(),
            rootfs: rootfs1.clone(),
            stdout: stdout.display().to_string(),
            stderr: stderr.display().to_string(),
            options: Some(prost_types::Any {
                type_url: RuncOptions::full_name(),
                value: opts.encode_to_vec(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created.pid > 0);
    assert!(
        !mounts_under(&b1.join("rootfs")).is_empty(),
        "rootfs mounted"
    );
    let st = task
        .state(&api::StateRequest {
            id: "c1".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(st.status, Status::Created as i32);
    assert_eq!(st.pid, created.pid);

    // A duplicate create is refused.
    let dup = task
        .create(&api::CreateTaskRequest {
            id: "c1".into(),
            bundle: b1.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), ttrpc::Code::AlreadyExists, "{dup}");

    let started = task
        .start(&api::StartRequest {
            id: "c1".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(started.pid, created.pid);
    let st = task
        .state(&api::StateRequest {
            id: "c1".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(st.status, Status::Running as i32);

    // Pids lists the init.
    let pids = task
        .pids(&api::PidsRequest { id: "c1".into() })
        .await
        .unwrap();
    assert!(
        pids.processes.iter().any(|p| p.pid == created.pid),
        "{:?}",
        pids.processes
    );

    // Pause and resume.
    task.pause(&api::PauseRequest { id: "c1".into() })
        .await
        .unwrap();
    let st = task
        .state(&api::StateRequest {
            id: "c1".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(st.status, Status::Paused as i32);
    task.resume(&api::ResumeRequest { id: "c1".into() })
        .await
        .unwrap();

    // Exec a process that prints and exits 5.
    let exec_out = dir.join("e1.stdout");
    mkfifo(&exec_out);
    let eout = collect_fifo(&exec_out);
    task.exec(&api::ExecProcessRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        stdout: exec_out.display().to_string(),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: oci_process(&["sh", "-c", "echo hi from exec; exit 5"], false),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let es = task
        .start(&api::StartRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
        })
        .await
        .unwrap();
    assert!(es.pid > 0);
    let ew = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ew.exit_status, 5);
    let ed = task
        .delete(&api::DeleteRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
        })
        .await
        .unwrap();
    assert_eq!((ed.pid, ed.exit_status), (es.pid, 5));
    assert_eq!(eout.await.unwrap(), "hi from exec\n");

    // Deleting a running task is refused.
    let busy = task
        .delete(&api::DeleteRequest {
            id: "c1".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), ttrpc::Code::FailedPrecondition, "{busy}");

    // Kill the init; Wait reports 128 + SIGKILL.
    let waiter = {
        let task = task.clone();
        tokio::spawn(async move {
            task.wait(&api::WaitRequest {
                id: "c1".into(),
                exec_id: String::new(),
            })
            .await
        })
    };
    task.kill(&api::KillRequest {
        id: "c1".into(),
        exec_id: String::new(),
        signal: libc::SIGKILL as u32,
        all: false,
    })
    .await
    .unwrap();
    let w = tokio::time::timeout(WAIT, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(w.exit_status, 137);
    let gone = task
        .kill(&api::KillRequest {
            id: "c1".into(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), ttrpc::Code::NotFound, "{gone}");
    let st = task
        .state(&api::StateRequest {
            id: "c1".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!((st.status, st.exit_status), (Status::Stopped as i32, 137));

    // The exit is recorded in the bundle.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b1.join("exit-status.json")).unwrap()).unwrap();
    assert_eq!(rec["exit_status"], 137);

    let d = task
        .delete(&api::DeleteRequest {
            id: "c1".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!((d.pid, d.exit_status), (created.pid, 137));
    assert!(
        mounts_under(&b1.join("rootfs")).is_empty(),
        "rootfs unmounted"
    );
    assert_eq!(out1.await.unwrap(), "hello\n");

    // A second container in the same shim: the exit code propagates.
    let (b2, rootfs2) = bundle(&dir, "c2", &["sh", "-c", "exit 3"]);
    // Its config names c1's group: `start` hands out c1's shim.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b2.join("config.json")).unwrap()).unwrap();
    cfg["annotations"] = serde_json::json!({"io.containerd.runc.v2.group": "c1"});
    std::fs::write(b2.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    // Started as berthd starts it: the bundle as a flag, not the working directory.
    assert_eq!(start_shim_in(&dir, &b2, "c2", &events_sock, true), address);
    assert_eq!(
        std::fs::read_to_string(b2.join("address")).unwrap(),
        address
    );
    let c2 = task
        .create(&api::CreateTaskRequest {
            id: "c2".into(),
            bundle: b2.display().to_string(),
            rootfs: rootfs2,
            ..Default::default()
        })
        .await
        .unwrap();
    task.start(&api::StartRequest {
        id: "c2".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    let w2 = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "c2".into(),
            exec_id: String::new(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(w2.exit_status, 3);
    let d2 = task
        .delete(&api::DeleteRequest {
            id: "c2".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!((d2.pid, d2.exit_status), (c2.pid, 3));

    // Shutdown with no tasks left: the shim exits and removes its socket.
    shutdown_and_wait(&task, &address, &mut guard).await;

    // Events came in order.
    let topics = events.topics();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete",
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
        ],
    );
    let exits: Vec<ev::TaskExit> = events.decode("/tasks/exit");
    assert_eq!(
        exits
            .iter()
            .map(|e| (e.container_id.as_str(), e.id.as_str(), e.exit_status))
            .collect::<Vec<_>>(),
        [("c1", "e1", 5), ("c1", "c1", 137), ("c2", "c2", 3)]
    );
    let creates: Vec<ev::TaskCreate> = events.decode("/tasks/create");
    assert_eq!(creates[0].pid, created.pid);
    assert_eq!(creates[0].rootfs, rootfs1);
    let deletes: Vec<ev::TaskDelete> = events.decode("/tasks/delete");
    assert_eq!((deletes[0].pid, deletes[0].exit_status), (created.pid, 137));
    let started: Vec<ev::TaskExecStarted> = events.decode("/tasks/exec-started");
    assert_eq!(
        (started[0].exec_id.as_str(), started[0].pid),
        ("e1", es.pid)
    );
}

#[test]
fn delete_action_reports_a_dead_shims_task() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("dead");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(bundle.join("init.pid"), "4242").unwrap();
    std::fs::write(
        bundle.join("exit-status.json"),
        r#"{"pid":4242,"exit_status":7,"exited_at_ns":1700000000000000000}"#,
    )
    .unwrap();
    let out = run_with_deadline(
        Command::new(shim_binary())
            .args([
                "-namespace",
                NS,
                "-address",
                "/nonexistent.sock",
                "-id",
                "dead",
            ])
            .args(["-bundle", &bundle.display().to_string(), "delete"])
            .current_dir(&bundle),
        WAIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = api::DeleteResponse::decode(out.stdout.as_slice()).unwrap();
    assert_eq!((resp.pid, resp.exit_status), (4242, 7));
    assert_eq!(resp.exited_at.unwrap().seconds, 1_700_000_000);

    // Without a record: killed.
    std::fs::remove_file(bundle.join("exit-status.json")).unwrap();
    let out = run_with_deadline(
        Command::new(shim_binary())
            .args([
                "-namespace",
                NS,
                "-address",
                "/nonexistent.sock",
                "-id",
                "dead",
                "delete",
            ])
            .current_dir(&bundle),
        WAIT,
    );
    let resp = api::DeleteResponse::decode(out.stdout.as_slice()).unwrap();
    assert_eq!(resp.exit_status, 137);
}

fn crun_options() -> Option<prost_types::Any> {
    Some(prost_types::Any {
        type_url: RuncOptions::full_name(),
        value: RuncOptions {
            binary_name: "crun".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    })
}

/// crun, selected by runc options `binary_name`; on hybrid cgroup hosts the shim hides the
/// unified hierarchy from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_runs_tasks() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    if which("crun").is_none() {
        eprintln!("skipped: crun is not installed (Debian crun)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut guard = Guard {
        dir: dir.clone(),
        shim_pid: None,
        containers: Vec::new(),
    };
    let (events, events_sock) = fake_daemon(&dir);
    let (b1, rootfs1) = bundle(&dir, "r1", &["sh", "-c", "echo from crun; exit 6"]);
    let address = start_shim(&dir, &b1, "r1", &events_sock);
    let task = TaskClient::connect(&address).await.unwrap();
    guard.shim_pid = Some(
        task.connect_shim(&api::ConnectRequest { id: "r1".into() })
            .await
            .unwrap()
            .shim_pid as i32,
    );
    let stdout = dir.join("r1.stdout");
    mkfifo(&stdout);
    let out = collect_fifo(&stdout);
    task.create(&api::CreateTaskRequest {
        id: "r1".into(),
        bundle: b1.display().to_string(),
        rootfs: rootfs1,
        stdout: stdout.display().to_string(),
        options: crun_options(),
        ..Default::default()
    })
    .await
    .unwrap();
    task.start(&api::StartRequest {
        id: "r1".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    let w = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "r1".into(),
            exec_id: String::new(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(w.exit_status, 6);
    task.delete(&api::DeleteRequest {
        id: "r1".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(out.await.unwrap(), "from crun\n");

    // A long-running one: exec, pids, kill.
    let (b2, rootfs2) = bundle(&dir, "r2", &["sleep", "1000"]);
    task.create(&api::CreateTaskRequest {
        id: "r2".into(),
        bundle: b2.display().to_string(),
        rootfs: rootfs2,
        options: crun_options(),
        ..Default::default()
    })
    .await
    .unwrap();
    task.start(&api::StartRequest {
        id: "r2".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    task.exec(&api::ExecProcessRequest {
        id: "r2".into(),
        exec_id: "x".into(),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: oci_process(&["sh", "-c", "exit 2"], false),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    task.start(&api::StartRequest {
        id: "r2".into(),
        exec_id: "x".into(),
    })
    .await
    .unwrap();
    let w = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "r2".into(),
            exec_id: "x".into(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(w.exit_status, 2);
    let pids = task
        .pids(&api::PidsRequest { id: "r2".into() })
        .await
        .unwrap();
    assert_eq!(pids.processes.len(), 1, "{:?}", pids.processes);
    task.kill(&api::KillRequest {
        id: "r2".into(),
        exec_id: String::new(),
        signal: libc::SIGKILL as u32,
        all: false,
    })
    .await
    .unwrap();
    let w = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "r2".into(),
            exec_id: String::new(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(w.exit_status, 137);
    task.delete(&api::DeleteRequest {
        id: "r2".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    assert!(mounts_under(&dir).is_empty());
    shutdown_and_wait(&task, &address, &mut guard).await;
    assert!(events.topics().contains(&"/tasks/delete".to_string()));
}

/// A container that outgrows its memory limit is OOM-killed: `/tasks/oom`, exit 137.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_reported() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    if !Path::new("/sys/fs/cgroup/memory/memory.oom_control").exists() {
        eprintln!("skipped: no cgroup v1 memory controller");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut guard = Guard {
        dir: dir.clone(),
        shim_pid: None,
        containers: vec!["m1".into()],
    };
    let (events, events_sock) = fake_daemon(&dir);
    let (b1, rootfs1) = bundle(
        &dir,
        "m1",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/urandom); echo ${#x}",
        ],
    );
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b1.join("config.json")).unwrap()).unwrap();
    let limit = 16 << 20;
    cfg["linux"]["resources"]["memory"] = serde_json::json!({"limit": limit, "swap": limit});
    std::fs::write(b1.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let address = start_shim(&dir, &b1, "m1", &events_sock);
    let task = TaskClient::connect(&address).await.unwrap();
    guard.shim_pid = Some(
        task.connect_shim(&api::ConnectRequest { id: "m1".into() })
            .await
            .unwrap()
            .shim_pid as i32,
    );
    task.create(&api::CreateTaskRequest {
        id: "m1".into(),
        bundle: b1.display().to_string(),
        rootfs: rootfs1,
        ..Default::default()
    })
    .await
    .unwrap();
    task.start(&api::StartRequest {
        id: "m1".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    let w = tokio::time::timeout(
        WAIT,
        task.wait(&api::WaitRequest {
            id: "m1".into(),
            exec_id: String::new(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(w.exit_status, 137);
    assert!(
        wait_until(Duration::from_secs(5), || events
            .topics()
            .contains(&"/tasks/oom".to_string())),
        "no /tasks/oom in {:?}",
        events.topics()
    );
    let ooms: Vec<ev::TaskOom> = events.decode("/tasks/oom");
    assert_eq!(ooms[0].container_id, "m1");
    task.delete(&api::DeleteRequest {
        id: "m1".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    shutdown_and_wait(&task, &address, &mut guard).await;
}
