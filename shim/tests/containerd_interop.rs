//! The stock containerd daemon (Debian's 1.6) runs containers through
//! `containerd-shim-berth-v2` (runtime `io.containerd.berth.v2`), driven by the stock `ctr`.
//! containerd runs in its own temp root, state and sockets. Needs root, runc, containerd.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const NS: &str = "berth-interop";
const IMAGE: &str = "docker.io/library/berthbox:latest";
const RUNTIME: &str = "io.containerd.berth.v2";
const IDS: &[&str] = &["t1", "t2", "t3", "t4", "t5"];
const LIMIT: Duration = Duration::from_secs(60);

struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let socket = dir.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            opt = dir.join("opt").display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        // containerd finds `containerd-shim-berth-v2` on PATH.
        let shim_dir = shim_binary().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            child: None,
        };
        c.spawn(&config_path, &path);
        c
    }

    fn spawn(&mut self, config_path: &Path, path: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(config_path)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let c = &*self;
        let ready = wait_until(Duration::from_secs(30), || {
            c.socket.exists()
                && Command::new(CTR)
                    .arg("-a")
                    .arg(&c.socket)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        assert!(ready, "containerd did not come up:\n{}", c.log());
    }

    /// SIGKILLs the daemon (its shims live on) and starts it again on the same state.
    fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        let path = format!(
            "{}:{}",
            shim_binary().parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let config = self.dir.join("config.toml");
        self.spawn(&config, &path);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        run_with_deadline(
            Command::new(CTR)
                .arg("-a")
                .arg(&self.socket)
                .args(["-n", NS])
                .args(args),
            LIMIT,
        )
    }

    /// Runs ctr and requires success; returns stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({:?})\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the containerd this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let exited = wait_until(Duration::from_secs(10), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for id in IDS {
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
        // Shims (their -address names our socket) and anything else started for this dir.
        for pid in pids_with_cmdline(&self.dir.display().to_string()) {
            // SAFETY: processes started for this test's temp dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for id in IDS {
            let address = berth_shim::socket_address(&self.socket.display().to_string(), NS, id);
            let _ = std::fs::remove_file(berth_ttrpc::socket_path(&address));
        }
        unmount_under(&self.dir);
    }
}

fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let out = c.ctr_ok(&["tasks", "ls"]);
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id))
        .and_then(|f| f.get(2).map(|s| s.to_string()))
}

#[test]
fn stock_containerd_runs_tasks_through_berth_shim() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    if !Path::new(CONTAINERD).exists() || !Path::new(CTR).exists() {
        eprintln!("skipped: {CONTAINERD} or {CTR} missing (Debian containerd)");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("berth-interop-")
        .tempdir()
        .unwrap();
    let mut c = Containerd::start(tmp.path());
    // Shim events reach the daemon through its ttrpc Forward.
    let mut events = Command::new(CTR)
        .arg("-a")
        .arg(&c.socket)
        .arg("events")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(tmp.path().join("events.txt")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let image = tmp.path().join("berthbox.tar");
    std::fs::write(
        &image,
        busybox_image_tar("docker.io/library/berthbox", "latest"),
    )
    .unwrap();
    c.ctr_ok(&[
        "images",
        "import",
        "--base-name",
        "docker.io/library/berthbox",
        &image.display().to_string(),
    ]);
    assert!(c.ctr_ok(&["images", "ls", "-q"]).contains(IMAGE));

    // run --rm prints the container's output.
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t1",
        "echo",
        "hello",
    ]);
    assert_eq!(out, "hello\n");

    // The exit code propagates.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t2",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Detached, exec, kill, rm.
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t3",
        "sleep",
        "1000",
    ]);
    assert_eq!(task_status(&c, "t3").as_deref(), Some("RUNNING"));
    let out = c.ctr_ok(&["tasks", "exec", "--exec-id", "e1", "t3", "echo", "hi"]);
    assert_eq!(out, "hi\n");
    let out = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "t3",
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    let ps = c.ctr_ok(&["tasks", "ps", "t3"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    c.ctr_ok(&["tasks", "pause", "t3"]);
    assert_eq!(task_status(&c, "t3").as_deref(), Some("PAUSED"));
    c.ctr_ok(&["tasks", "resume", "t3"]);
    assert_eq!(task_status(&c, "t3").as_deref(), Some("RUNNING"));
    c.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "t3"]);
    assert!(
        wait_until(Duration::from_secs(30), || task_status(&c, "t3").as_deref()
            == Some("STOPPED")),
        "t3 did not stop"
    );
    c.ctr_ok(&["tasks", "rm", "t3"]);
    c.ctr_ok(&["containers", "rm", "t3"]);
    assert!(task_status(&c, "t3").is_none());

    let _ = events.kill();
    let _ = events.wait();
    let seen = std::fs::read_to_string(tmp.path().join("events.txt")).unwrap();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(seen.contains(topic), "no {topic} event in:\n{seen}");
    }

    // The daemon dies; its shims do not. After a restart it finds the running task again,
    // and the task that exited meanwhile is reported stopped with its status.
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t4",
        "sleep",
        "1000",
    ]);
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t5",
        "sh",
        "-c",
        "read x; exit 9",
    ]);
    c.kill_and_restart();
    let runc_root = format!("/run/berth/runc/{NS}");
    let killed = Command::new("runc")
        .args(["--root", &runc_root, "kill", "t5", "KILL"])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(task_status(&c, "t4").as_deref(), Some("RUNNING"));
    assert!(
        wait_until(Duration::from_secs(30), || task_status(&c, "t5").as_deref()
            == Some("STOPPED")),
        "t5 not reported stopped"
    );
    let out = c.ctr_ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "after",
        "t4",
        "echo",
        "still here",
    ]);
    assert_eq!(out, "still here\n");
    let out = c.ctr(&["tasks", "rm", "t5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "t4"]);
    assert!(
        wait_until(Duration::from_secs(30), || task_status(&c, "t4").as_deref()
            == Some("STOPPED")),
        "t4 did not stop"
    );
    c.ctr_ok(&["tasks", "rm", "t4"]);
    c.ctr_ok(&["containers", "rm", "t4", "t5"]);

    // No shim is left for these containers, nor a mount in containerd's state.
    assert!(
        wait_until(Duration::from_secs(10), || {
            pids_with_cmdline("containerd-shim-berth-v2")
                .into_iter()
                .any(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| {
                            String::from_utf8_lossy(&c).contains(&*tmp.path().to_string_lossy())
                        })
                        .unwrap_or(false)
                })
                .eq(&false)
        }),
        "a shim is still running"
    );
    assert!(mounts_under(&tmp.path().join("state")).is_empty());
}
