//! Tasks through the stock `ctr`, once with the stock `containerd-shim-runc-v2`
//! and once with Berth's `containerd-shim-berth-v2` (both over real runc):
//! run, exit codes, exec, ps, pause/resume, kill, delete, what the container
//! sees, survival of a daemon SIGKILL, and clean-up of a shim left without a task.
//!
//! Containers use `ctr run --rootfs DIR` (a busybox tree), so these tests need
//! no image service.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::{
    busybox_rootfs, ctr, failure, parent_pid, random_id, success, Daemon, NamespaceCgroups,
};

const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

const RUNC_V2: &str = "io.containerd.runc.v2";
const BERTH_V2: &str = "io.containerd.berth.v2";

struct Fixture {
    d: Daemon,
    ns: String,
    runtime: &'static str,
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    /// Last: after the daemon.
    _cgroups: NamespaceCgroups,
}

impl Fixture {
    async fn new(runtime: &'static str) -> Fixture {
        assert!(
            Path::new(SHIM).exists(),
            "stock shim missing: install containerd"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = busybox_rootfs(dir.path());
        let ns = format!("t{}", random_id());
        Fixture {
            d: Daemon::start().await,
            _cgroups: NamespaceCgroups(ns.clone()),
            ns,
            runtime,
            _dir: dir,
            rootfs,
        }
    }

    /// `ctr -n NS ARGS`; `run` gets `--runtime` for this fixture's runtime.
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-n", &self.ns];
        match args.split_first() {
            Some((&"run", rest)) => {
                all.extend_from_slice(&["run", "--runtime", self.runtime]);
                all.extend_from_slice(rest);
            }
            _ => all.extend_from_slice(args),
        }
        ctr(&self.d, &all)
    }

    fn ok(&self, args: &[&str]) -> String {
        success(&self.ctr(args), &format!("ctr {args:?}"))
    }

    fn rootfs(&self) -> &str {
        self.rootfs.to_str().expect("utf-8 path")
    }

    /// `ctr run -d --rootfs ... id sleep 300`.
    fn run_detached(&self, id: &str) {
        let root = self.rootfs().to_string();
        self.ok(&["run", "-d", "--rootfs", &root, id, "/bin/sleep", "300"]);
    }

    /// Polls `ctr tasks ls` until the task has `status`.
    async fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ls = self.ok(&["tasks", "ls"]);
            if ls
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
            {
                return;
            }
            assert!(Instant::now() < deadline, "task {id} never {status}:\n{ls}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills and removes every task and container (shims outlive berthd).
    fn cleanup(&self, id: &str) {
        let _ = self.ctr(&["tasks", "kill", "-s", "KILL", id]);
        let _ = self.ctr(&["tasks", "rm", "-f", id]);
        let _ = self.ctr(&["containers", "rm", id]);
    }
}

async fn run_rm_prints_and_propagates_exit_codes(runtime: &'static str) {
    let f = Fixture::new(runtime).await;
    let root = f.rootfs().to_string();
    let out = f.ok(&[
        "run",
        "--rm",
        "--rootfs",
        &root,
        "hello",
        "/bin/echo",
        "hello",
    ]);
    assert_eq!(out.trim(), "hello");

    let out = f.ctr(&[
        "run", "--rm", "--rootfs", &root, "exit7", "/bin/sh", "-c", "exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit code must propagate: {out:?}"
    );

    // --rm left nothing behind: no container, no task, no bundle.
    assert!(!f.ok(&["containers", "ls", "-q"]).contains("hello"));
    let bundles =
        f.d.state()
            .join("io.containerd.runtime.v2.task")
            .join(&f.ns);
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");
}

async fn container_sees_its_own_world(runtime: &'static str) {
    let f = Fixture::new(runtime).await;
    let root = f.rootfs().to_string();
    let out = f.ok(&[
        "run",
        "--rm",
        "--rootfs",
        &root,
        "world",
        "/bin/sh",
        "-c",
        "echo pid=$$; ls /proc | grep -c '^[0-9]'",
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pid=1"), "the command is PID 1: {out}");
    // sh, ls and grep: only the container's own processes are visible.
    let visible: u32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("process count in {out:?}"));
    assert!(visible <= 4, "{visible} processes visible in /proc");
}

async fn memory_limit_lands_in_the_cgroup(runtime: &'static str) {
    let f = Fixture::new(runtime).await;
    let root = f.rootfs().to_string();
    let id = format!("mem{}", random_id());
    f.ok(&[
        "run",
        "-d",
        "--memory-limit",
        "67108864",
        "--rootfs",
        &root,
        &id,
        "/bin/sleep",
        "300",
    ]);
    f.wait_status(&id, "RUNNING").await;
    // ctr's default cgroups path is /<namespace>/<id>.
    let limit = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .iter()
        .map(|base| Path::new(base).join(&f.ns).join(&id))
        .find_map(|dir| {
            std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(dir.join("memory.max")))
                .ok()
        });
    f.cleanup(&id);
    assert_eq!(limit.as_deref().map(str::trim), Some("67108864"));
}

async fn detached_task_lifecycle(runtime: &'static str) {
    let f = Fixture::new(runtime).await;
    let id = format!("life{}", random_id());
    f.run_detached(&id);
    f.wait_status(&id, "RUNNING").await;

    let out = f.ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/echo",
        "from-exec",
    ]);
    assert_eq!(out.trim(), "from-exec");
    let ps = f.ok(&["tasks", "ps", &id]);
    assert!(ps.lines().count() >= 2, "ps lists the init process:\n{ps}");

    f.ok(&["tasks", "pause", &id]);
    f.wait_status(&id, "PAUSED").await;
    f.ok(&["tasks", "resume", &id]);
    f.wait_status(&id, "RUNNING").await;

    // A running task cannot be deleted.
    let err = failure(&f.ctr(&["tasks", "rm", &id]), "rm of a running task");
    assert!(err.contains("running") || err.contains("stopped"), "{err}");

    f.ok(&["tasks", "kill", "-s", "KILL", &id]);
    f.wait_status(&id, "STOPPED").await;
    f.ok(&["tasks", "rm", &id]);
    f.ok(&["containers", "rm", &id]);
    assert!(!f.ok(&["tasks", "ls"]).contains(&id));
    assert!(!f.ok(&["containers", "ls", "-q"]).contains(&id));
}

async fn tasks_survive_daemon_sigkill(runtime: &'static str) {
    let mut f = Fixture::new(runtime).await;
    let id = format!("surv{}", random_id());
    f.run_detached(&id);
    f.wait_status(&id, "RUNNING").await;
    let short = format!("short{}", random_id());
    let root = f.rootfs().to_string();
    f.ok(&[
        "run",
        "-d",
        "--rootfs",
        &root,
        &short,
        "/bin/sh",
        "-c",
        "sleep 1; exit 3",
    ]);

    f.d.kill9();
    // The short task exits while the daemon is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.d.restart().await;

    f.wait_status(&id, "RUNNING").await;
    let out = f.ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        &id,
        "/bin/echo",
        "still-here",
    ]);
    assert_eq!(out.trim(), "still-here");

    // The exit that happened while berthd was down is still reported.
    f.wait_status(&short, "STOPPED").await;
    let rm = f.ctr(&["tasks", "rm", &short]);
    assert!(rm.status.success(), "{rm:?}");
    f.ok(&["containers", "rm", &short]);

    f.cleanup(&id);
}

/// Ten containers through a daemon stop (SIGTERM or SIGKILL): all still
/// listed and running after the restart, exec and kill work, an exit that
/// happened while the daemon was down is reported with its status, and
/// nothing leaks once they are removed.
async fn ten_containers_survive(runtime: &'static str, sigkill: bool) {
    let mut f = Fixture::new(runtime).await;
    let ids: Vec<String> = (0..9).map(|i| format!("ten{i}{}", random_id())).collect();
    for id in &ids {
        f.run_detached(id);
    }
    let short = format!("short{}", random_id());
    let root = f.rootfs().to_string();
    f.ok(&[
        "run",
        "-d",
        "--rootfs",
        &root,
        &short,
        "/bin/sh",
        "-c",
        "sleep 1; exit 3",
    ]);
    for id in &ids {
        f.wait_status(id, "RUNNING").await;
    }

    if sigkill {
        f.d.kill9();
    } else {
        let status = f.d.stop().await;
        assert!(status.success(), "berthd exit on SIGTERM: {status}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.d.restart().await;

    for id in &ids {
        f.wait_status(id, "RUNNING").await;
    }
    let out = f.ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "after",
        &ids[0],
        "/bin/echo",
        "ok",
    ]);
    assert_eq!(out.trim(), "ok");
    f.wait_status(&short, "STOPPED").await;
    let rm = f.ctr(&["tasks", "rm", &short]);
    let stderr = String::from_utf8_lossy(&rm.stderr);
    assert!(
        rm.status.success() && stderr.contains("exit code 3"),
        "exit while berthd was down: {rm:?}"
    );
    f.ok(&["containers", "rm", &short]);
    for id in &ids {
        f.ok(&["tasks", "kill", "-s", "KILL", id]);
        f.wait_status(id, "STOPPED").await;
        f.ok(&["tasks", "rm", id]);
        f.ok(&["containers", "rm", id]);
    }

    // No shim, mount or bundle left.
    let bundles =
        f.d.state()
            .join("io.containerd.runtime.v2.task")
            .join(&f.ns);
    assert_eq!(
        std::fs::read_dir(&bundles).map(|d| d.count()).unwrap_or(0),
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shims = std::process::Command::new("pgrep")
            .args(["-f", &format!("-namespace {} ", f.ns)])
            .output()
            .expect("pgrep");
        if shims.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shims left: {}",
            String::from_utf8_lossy(&shims.stdout)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let state = f.d.state().display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&state)),
        "mounts left under {state}"
    );
}

async fn ten_containers_survive_sigterm(runtime: &'static str) {
    ten_containers_survive(runtime, false).await;
}

async fn ten_containers_survive_sigkill(runtime: &'static str) {
    ten_containers_survive(runtime, true).await;
}

/// `ctr run --rm IMAGE id echo hello` with an image imported into berthd
/// (unpacked by ctr through the snapshots and diff services).
async fn run_image_prints_hello(runtime: &'static str) {
    let f = Fixture::new(runtime).await;
    let name = "docker.io/berth/busybox:latest";
    let tar = f._dir.path().join("busybox.tar");
    let built = berth_image::testimage::build(
        &berth_image::testimage::layers(),
        berth_archive::Compression::Gzip,
    );
    std::fs::write(&tar, berth_image::testimage::oci_layout_tar(&built, name)).expect("image tar");
    f.ok(&["images", "import", tar.to_str().expect("utf-8")]);
    let id = format!("img{}", random_id());
    let out = f.ok(&["run", "--rm", name, &id, "echo", "hello"]);
    assert_eq!(out.trim(), "hello");
    let out = f.ctr(&["run", "--rm", name, &id, "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(!f.ok(&["containers", "ls", "-q"]).contains(&id));
}

async fn dead_shim_is_cleaned_up(runtime: &'static str) {
    let f = Fixture::new(runtime).await;
    let id = format!("dead{}", random_id());
    f.run_detached(&id);
    f.wait_status(&id, "RUNNING").await;
    let bundle =
        f.d.state()
            .join("io.containerd.runtime.v2.task")
            .join(&f.ns)
            .join(&id);
    let task_pid: i32 = f
        .ok(&["tasks", "ls"])
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("task pid");
    // The shim is the container's parent (its child subreaper).
    let shim_pid = parent_pid(task_pid);
    let shim_cmd = std::fs::read_to_string(format!("/proc/{shim_pid}/cmdline")).unwrap_or_default();
    assert!(
        shim_cmd.contains("containerd-shim"),
        "parent of the task is {shim_cmd:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid),
        nix::sys::signal::SIGKILL,
    )
    .expect("kill shim");

    // berthd notices, runs the shim's delete (which kills the container),
    // forgets the task and removes the bundle.
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.ok(&["tasks", "ls"]).contains(&id) || bundle.exists() {
        assert!(Instant::now() < deadline, "dead shim's task still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alive = Path::new(&format!("/proc/{task_pid}/cmdline")).exists()
        && std::fs::read_to_string(format!("/proc/{task_pid}/cmdline"))
            .is_ok_and(|c| c.contains("sleep"));
    assert!(
        !alive,
        "container process {task_pid} outlived its shim's cleanup"
    );
    f.ok(&["containers", "rm", &id]);
}

/// A shim the daemon started but whose task it never created (the daemon died in between):
/// the next daemon finds it on start-up with no task, stops it and removes its bundle (as
/// containerd does), so the id can run again.
async fn shim_without_a_task_is_removed_on_restart(runtime: &'static str) {
    let mut f = Fixture::new(runtime).await;
    let id = format!("orphan{}", random_id());
    f.d.kill9();
    let bundle =
        f.d.state()
            .join("io.containerd.runtime.v2.task")
            .join(&f.ns)
            .join(&id);
    std::fs::create_dir_all(bundle.join("rootfs")).expect("bundle");
    std::fs::write(bundle.join("config.json"), "{}").expect("config.json");
    let binary = match runtime {
        RUNC_V2 => PathBuf::from(SHIM),
        _ => Daemon::binary("containerd-shim-berth-v2"),
    };
    let socket = f.d.socket();
    let out = std::process::Command::new(&binary)
        .args(["-namespace", &f.ns, "-id", &id, "-address"])
        .arg(&socket)
        .arg("-publish-binary")
        .arg(Daemon::binary("berthd"))
        .arg("start")
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", format!("{}.ttrpc", socket.display()))
        .env("GRPC_ADDRESS", &socket)
        .env("NAMESPACE", &f.ns)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("shim start");
    assert!(out.status.success(), "shim start: {out:?}");
    let shim_of_id = || {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .any(|c| c.split(|b| *b == 0).any(|arg| arg == id.as_bytes()))
    };
    assert!(shim_of_id(), "no shim serving {id}");

    f.d.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while shim_of_id() || bundle.exists() {
        assert!(
            Instant::now() < deadline,
            "shim without a task left (running: {}, bundle: {})",
            shim_of_id(),
            bundle.exists()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!f.ok(&["tasks", "ls"]).contains(&id));
    let root = f.rootfs().to_string();
    let out = f.ok(&["run", "--rm", "--rootfs", &root, &id, "/bin/echo", "again"]);
    assert_eq!(out.trim(), "again");
}

async fn bad_task_requests_fail_cleanly(runtime: &'static str) {
    let f = Fixture::new(runtime).await;
    let err = failure(
        &f.ctr(&["tasks", "start", "nosuch"]),
        "start of unknown task",
    );
    assert!(err.contains("not found"), "{err}");
    let err = failure(
        &f.ctr(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.nosuch.v9",
            "--rootfs",
            f.rootfs(),
            "badrt",
            "/bin/true",
        ]),
        "run with an unknown runtime",
    );
    assert!(err.contains("containerd-shim-nosuch-v9"), "{err}");
    let bundles =
        f.d.state()
            .join("io.containerd.runtime.v2.task")
            .join(&f.ns);
    assert!(
        std::fs::read_dir(&bundles).map(|d| d.count()).unwrap_or(0) == 0,
        "a failed create leaves no bundle"
    );
}

/// Each case once per shim.
macro_rules! per_runtime {
    ($($case:ident),* $(,)?) => {
        mod runc_shim {
            $(#[tokio::test] async fn $case() { super::$case(super::RUNC_V2).await })*
        }
        mod berth_shim {
            $(#[tokio::test] async fn $case() { super::$case(super::BERTH_V2).await })*
        }
    };
}

per_runtime!(
    run_image_prints_hello,
    ten_containers_survive_sigterm,
    ten_containers_survive_sigkill,
    dead_shim_is_cleaned_up,
    shim_without_a_task_is_removed_on_restart,
    run_rm_prints_and_propagates_exit_codes,
    container_sees_its_own_world,
    memory_limit_lands_in_the_cgroup,
    detached_task_lifecycle,
    tasks_survive_daemon_sigkill,
    bad_task_requests_fail_cleanly
);
