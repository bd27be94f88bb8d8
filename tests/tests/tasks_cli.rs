//! Berth's own CLI running containers on berthd through `containerd-shim-berth-v2` (its
//! default runtime) over real runc: `berth run --rm` on a root filesystem directory (output,
//! exit codes, nothing left behind: container, runc state, cgroups), `--rootfs` misuse, and a
//! detached task's life (which shim, a second run with its id refused, container and namespace
//! labels, tasks ls, metrics (also through the stock ctr), exec, ps, kill, delete, containers rm),
//! and `berth run IMAGE` on an imported image (its layers, no container, snapshot or lease left,
//! a duplicate id and an unknown image refused before anything is created).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_archive::Compression;
use berth_image::testimage;

use berth_tests::{
    berth, busybox_rootfs, cgroup_roots, ctr, failure, parent_pid, random_id, success, Daemon,
    NamespaceCgroups,
};

const IMAGE: &str = "docker.io/library/berth-test:cli";

struct Fixture {
    d: Daemon,
    ns: String,
    dir: tempfile::TempDir,
    rootfs: String,
    /// Last: after the daemon.
    _cgroups: NamespaceCgroups,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = busybox_rootfs(dir.path());
        let ns = format!("t{}", random_id());
        Fixture {
            d: Daemon::start().await,
            _cgroups: NamespaceCgroups(ns.clone()),
            ns,
            rootfs: rootfs.to_str().expect("utf-8 path").to_string(),
            dir,
        }
    }

    fn berth(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-n", &self.ns];
        all.extend_from_slice(args);
        berth(&self.d, &all)
    }

    fn ok(&self, args: &[&str]) -> String {
        success(&self.berth(args), &format!("berth {args:?}"))
    }

    /// `berth run --rootfs <busybox> OPTS ID CMD...` (the default runtime: Berth's shim).
    fn run(&self, opts: &[&str], id: &str, cmd: &[&str]) -> std::process::Output {
        let root = self.rootfs.clone();
        let mut args = vec!["run"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--rootfs", &root, id]);
        args.extend_from_slice(cmd);
        self.berth(&args)
    }

    /// The task of `id` in `berth --format json tasks ls`, if it has one.
    fn task(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.ok(&["--format", "json", "tasks", "ls"]);
        let tasks: Vec<serde_json::Value> =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("tasks ls JSON: {e}: {out}"));
        tasks.into_iter().find(|t| t["container_id"] == id)
    }

    fn status(&self, id: &str) -> Option<String> {
        self.task(id)
            .and_then(|t| t["status"].as_str().map(str::to_string))
    }

    async fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status(id);
            if status.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never {want} (last: {status:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts that nothing of container `id` is left on the host: no container record, no
    /// runc state, no cgroup in any hierarchy.
    fn assert_gone(&self, id: &str) {
        let ls = self.ok(&["containers", "ls", "-q"]);
        assert!(!ls.lines().any(|l| l.trim() == id), "container left: {ls}");
        let state = Path::new("/run/berth/runc").join(&self.ns).join(id);
        assert!(!state.exists(), "runc state left: {}", state.display());
        for h in cgroup_roots() {
            let cgroup = h.join(&self.ns).join(id);
            assert!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
        }
    }
}

#[tokio::test]
async fn run_rm_prints_propagates_the_exit_code_and_leaves_nothing() {
    let f = Fixture::new().await;
    let id = format!("c{}", random_id());
    let out = f.run(
        &["--rm"],
        &id,
        &["/bin/sh", "-c", "echo hi from $(hostname)"],
    );
    assert_eq!(
        success(&out, "berth run --rm").trim(),
        format!("hi from {id}")
    );
    f.assert_gone(&id);

    // The same id again, at once: everything of the first run is gone.
    let out = f.run(&["--rm"], &id, &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    f.assert_gone(&id);

    // runc left the namespace's own cgroup (as under containerd); the fixture removes it.
    let ns_cgroup = Path::new("/sys/fs/cgroup/memory").join(&f.ns);
    let had = ns_cgroup.exists();
    drop(f);
    assert!(!ns_cgroup.exists(), "{} left", ns_cgroup.display());
    assert!(had || !Path::new("/sys/fs/cgroup/memory").exists());
}

#[tokio::test]
async fn run_rootfs_needs_a_directory_and_a_command() {
    let f = Fixture::new().await;
    let root = f.rootfs.clone();
    let err = failure(
        &f.berth(&["run", "--rootfs", &root, "nocmd"]),
        "run --rootfs without a command",
    );
    assert!(err.contains("give the command"), "{err}");
    let missing = f.dir.path().join("missing");
    let err = failure(
        &f.berth(&[
            "run",
            "--rootfs",
            missing.to_str().expect("utf-8"),
            "nodir",
            "/bin/true",
        ]),
        "run --rootfs on a missing directory",
    );
    assert!(err.contains("missing"), "{err}");
    let ls = f.ok(&["containers", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "containers created: {ls}");
}

#[tokio::test]
async fn detached_task_exec_ps_kill_delete() {
    let f = Fixture::new().await;
    let id = format!("d{}", random_id());
    success(
        &f.run(&["-d", "--memory", "64m"], &id, &["/bin/sleep", "300"]),
        "berth run -d",
    );
    f.wait_status(&id, "running").await;

    // `berth run` picks Berth's own shim unless told otherwise.
    let pid = f
        .task(&id)
        .and_then(|t| t["pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .expect("task pid");
    let shim = std::fs::read_link(format!("/proc/{}/exe", parent_pid(pid)))
        .expect("parent exe")
        .display()
        .to_string();
    assert!(
        shim.ends_with("containerd-shim-berth-v2"),
        "init's parent is {shim}, not Berth's shim"
    );

    // The same id again: refused, and the running task is untouched.
    let again = failure(&f.run(&[], &id, &["/bin/true"]), "berth run, same id");
    assert!(
        again.contains("AlreadyExists") && again.contains("already exists"),
        "{again}"
    );
    assert_eq!(f.status(&id).as_deref(), Some("running"));

    // Labels: `k=v` sets, `k=` removes, others stay (container and namespace alike).
    for (object, name) in [("containers", id.as_str()), ("namespaces", f.ns.as_str())] {
        let labels = |args: &[&str]| {
            let mut all = vec!["--format", "json", object, "label", name];
            all.extend_from_slice(args);
            let out: serde_json::Value =
                serde_json::from_str(&f.ok(&all)).expect("label output is JSON");
            out["labels"].clone()
        };
        let set = labels(&["a=1", "b=2"]);
        assert_eq!((&set["a"], &set["b"]), (&"1".into(), &"2".into()), "{set}");
        let after = labels(&["a=", "c=3"]);
        assert!(after.get("a").is_none(), "a not removed: {after}");
        assert_eq!(
            (&after["b"], &after["c"]),
            (&"2".into(), &"3".into()),
            "{after}"
        );
    }

    // Metrics: the cgroup's figures, through our CLI and the stock ctr alike.
    let metrics = f.ok(&["tasks", "metrics", &id]);
    assert!(
        metrics.contains("memory.limit_in_bytes") && metrics.contains("67108864"),
        "memory limit missing:\n{metrics}"
    );
    assert!(metrics.contains("pids.current"), "{metrics}");
    let stock = success(
        &ctr(&f.d, &["-n", &f.ns, "tasks", "metrics", &id]),
        "ctr tasks metrics",
    );
    assert!(stock.contains("67108864"), "ctr tasks metrics:\n{stock}");

    let out = f.berth(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/sh",
        "-c",
        "echo inside; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inside");
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let ps = f.ok(&["tasks", "ps", &id]);
    assert!(ps.lines().count() >= 2, "no process listed:\n{ps}");

    f.ok(&["tasks", "kill", "-s", "KILL", &id]);
    f.wait_status(&id, "stopped").await;
    let deleted = f.ok(&["tasks", "delete", &id]);
    assert!(
        deleted.contains("137"),
        "exit status of a SIGKILL: {deleted}"
    );
    f.ok(&["containers", "rm", &id]);
    f.assert_gone(&id);
}

/// `berth run IMAGE`: the image's layers as the rootfs (a snapshot on the image's chain ID,
/// taken under a lease until the container holds it), its config for the process; `--rm`
/// leaves no container, snapshot or lease. A duplicate id and an unknown image fail before
/// anything is created.
#[tokio::test]
async fn run_image_and_leave_nothing() {
    let f = Fixture::new().await;
    let built = testimage::build(&testimage::layers(), Compression::Gzip);
    let tar = f.dir.path().join("image.tar");
    std::fs::write(&tar, testimage::oci_layout_tar(&built, IMAGE)).expect("write image");
    f.ok(&["images", "import", tar.to_str().expect("utf-8 path")]);
    let leftovers = || {
        (
            f.ok(&["containers", "ls", "-q"]),
            f.ok(&["snapshots", "ls"]),
            f.ok(&["leases", "ls", "-q"]),
        )
    };
    let before = leftovers();

    let id = format!("i{}", random_id());
    let out = f.berth(&["run", "--rm", IMAGE, &id, "cat", "/etc/motd"]);
    assert_eq!(
        success(&out, "berth run --rm IMAGE").as_bytes(),
        testimage::MOTD,
        "the top layer's /etc/motd"
    );
    assert_eq!(leftovers(), before, "berth run --rm left something");
    f.assert_gone(&id);

    // A running container's id: refused before a snapshot is prepared.
    f.ok(&["run", "-d", IMAGE, &id, "sleep", "300"]);
    let during = leftovers();
    let again = failure(
        &f.berth(&["run", "--rm", IMAGE, &id, "true"]),
        "berth run, same id",
    );
    assert!(again.contains("AlreadyExists"), "{again}");
    let missing = failure(
        &f.berth(&["run", "--rm", "docker.io/library/absent:1", "other", "true"]),
        "berth run, unknown image",
    );
    assert!(missing.contains("NotFound"), "{missing}");
    assert_eq!(leftovers(), during, "a failed run left something");

    f.ok(&["tasks", "kill", "-s", "KILL", &id]);
    f.wait_status(&id, "stopped").await;
    f.ok(&["tasks", "delete", &id]);
    f.ok(&["containers", "rm", &id]);
    assert_eq!(leftovers(), before, "containers rm left something");
}
