//! Snapshots through the stock `ctr` (Debian's containerd 1.6), as root with real mounts:
//! the same `ctr snapshots` session against berthd and against a stock containerd, outputs
//! compared; `ctr snapshots mounts` output executed to mount snapshots; and restarts (clean,
//! and SIGKILL during a burst of prepare/commit/remove) leaving records and directories in step.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_proto::containerd::services::snapshots::v1::{
    snapshots_client::SnapshotsClient, CleanupRequest, CommitSnapshotRequest, Info, Kind,
    ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    UsageRequest, ViewSnapshotRequest,
};
use berth_proto::containerd::types::Mount;
use berth_tests::{failure, run, success, Ctx, Daemon, Svc, CTR};
use tonic::Status;

const SNAPSHOTTERS: [&str; 2] = ["native", "overlayfs"];
const NS: &str = "snaptest";

// ---------------------------------------------------------------------------------------------
// A stock containerd to compare with
// ---------------------------------------------------------------------------------------------

const CONTAINERD: &str = "/usr/bin/containerd";

/// containerd plugins that fail on this kind of host or reach outside the temp root.
const CONTAINERD_DISABLED: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
];

/// Stock containerd in its own temp directory; killed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Containerd {
        assert!(
            Path::new(CONTAINERD).exists(),
            "stock containerd not found at {CONTAINERD}: install Debian's `containerd` package"
        );
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let p = |n: &str| dir.path().join(n).display().to_string();
        let disabled: Vec<String> = CONTAINERD_DISABLED
            .iter()
            .map(|d| format!("{d:?}"))
            .collect();
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [{}]\n\n[grpc]\n  \
             address = {:?}\n\n[ttrpc]\n  address = {:?}\n\n[debug]\n  level = \"warn\"\n",
            p("root"),
            p("state"),
            disabled.join(", "),
            p("c.sock"),
            p("c.sock.ttrpc"),
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("write config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.socket().exists()
                && run(
                    Command::new(CTR)
                        .arg("--address")
                        .arg(c.socket())
                        .arg("version"),
                    None,
                )
                .status
                .success()
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start; log:\n{}",
                std::fs::read_to_string(c.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Anything a failed test left mounted below the directory goes first.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path())
            .output();
    }
}

/// `ctr --address <socket> -n snaptest snapshots --snapshotter <sn> <args>`
fn ctr_snap(socket: &Path, sn: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(CTR);
    cmd.arg("--address")
        .arg(socket)
        .arg("--connect-timeout")
        .arg("10s")
        .arg("-n")
        .arg(NS)
        .arg("snapshots")
        .arg("--snapshotter")
        .arg(sn)
        .args(args)
        .env_remove("CONTAINERD_NAMESPACE")
        .env_remove("CONTAINERD_SNAPSHOTTER");
    run(&mut cmd, None)
}

/// What a command did, normalized so that the two daemons can be compared: the daemon's root
/// becomes `<root>`, snapshot ids `<id>`, RFC 3339 timestamps `<time>`; `label` output (a Go
/// map, unordered) is sorted; error text is reduced to containerd's error class.
fn normalize(out: &Output, root: &Path, args: &[&str]) -> String {
    let root = root.display().to_string();
    let ts = regex_lite_timestamps;
    let mut stdout = String::from_utf8_lossy(&out.stdout).replace(&root, "<root>");
    stdout = ts(&stdout);
    stdout = ids(&stdout);
    if args.first() == Some(&"mounts") {
        stdout = stdout
            .lines()
            .map(sort_mount_options)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }
    if args.first() == Some(&"label") {
        let mut parts: Vec<&str> = stdout.trim().split(',').collect();
        parts.sort();
        stdout = parts.join(",") + "\n";
    }
    if out.status.success() {
        format!("ok\n{stdout}")
    } else {
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let class = [
            "not found",
            "already exists",
            "failed precondition",
            "invalid argument",
        ]
        .into_iter()
        .find(|c| err.contains(c))
        .unwrap_or("other error");
        format!("failed: {class}\n{stdout}")
    }
}

/// `mount ... -o a,b` with the options sorted: their order means nothing to mount(8), and
/// containerd 1.6's native snapshotter says `rbind,rw` where berthd's says `rw,rbind`.
fn sort_mount_options(line: &str) -> String {
    match line.split_once(" -o ") {
        Some((head, opts)) => {
            let mut o: Vec<&str> = opts.split(',').collect();
            o.sort();
            format!("{head} -o {}", o.join(","))
        }
        None => line.to_string(),
    }
}

/// Replaces RFC 3339 timestamps (`2024-01-02T03:04:05[.nnn]Z`) with `<time>`.
fn regex_lite_timestamps(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    let is_d = |j: usize| b.get(j).is_some_and(u8::is_ascii_digit);
    while i < b.len() {
        let stamp = (0..4).all(|k| is_d(i + k))
            && b.get(i + 4) == Some(&b'-')
            && b.get(i + 10) == Some(&b'T')
            && b.get(i + 13) == Some(&b':');
        if stamp {
            let mut j = i + 19;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                j += 1;
            }
            if b.get(j) == Some(&b'Z') {
                j += 1;
            }
            out.push_str("<time>");
            i = j;
        } else {
            let ch = s[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Replaces `snapshots/<digits>` with `snapshots/<id>`.
fn ids(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("snapshots/") {
        let (head, tail) = rest.split_at(pos + "snapshots/".len());
        out.push_str(head);
        let n = tail.bytes().take_while(u8::is_ascii_digit).count();
        if n > 0 {
            out.push_str("<id>");
        }
        rest = &tail[n..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Mount helpers
// ---------------------------------------------------------------------------------------------

/// A mount made by running a printed `mount ...` command; unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    /// Runs the `mount` lines `ctr snapshots mounts` printed for `target`.
    fn exec(printed: &str, target: &Path) -> Mounted {
        std::fs::create_dir_all(target).expect("mkdir target");
        let lines: Vec<&str> = printed.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "no mount command printed");
        for line in &lines {
            assert!(line.starts_with("mount -t "), "not a mount command: {line}");
            success(
                &run(Command::new("sh").arg("-c").arg(line), None),
                &format!("sh -c {line:?}"),
            );
        }
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = run(Command::new("umount").arg(&self.0), None);
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "umount {}: {}",
                self.0.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stock ctr: the same session against berthd and containerd
// ---------------------------------------------------------------------------------------------

/// One `ctr snapshots` session; returns the normalized transcript.
fn session(socket: &Path, root: &Path, sn: &str) -> Vec<String> {
    let script: &[&[&str]] = &[
        &["prepare", "base"],
        &["ls"],
        &["commit", "c1", "base"],
        &["prepare", "work", "c1"],
        &["view", "ro", "c1"],
        &["ls"],
        &["info", "work"],
        &["info", "c1"],
        &["label", "work", "color=blue"],
        &["label", "work", "color=", "size=xl"],
        &["info", "work"],
        &["tree"],
        &["mounts", "/tmp/target", "base-missing"],
        &["mounts", "/tmp/target", "ro"],
        &["prepare", "base"],
        &["prepare", "x", "missing"],
        &["prepare", "x", "work"],
        // Not `commit c2 ro`: containerd 1.6's native snapshotter fails it with an lstat
        // error (Unknown); berthd says FailedPrecondition (checked below).
        &["rm", "c1"],
        &["usage", "ro"],
        &["rm", "ro", "work"],
        &["rm", "c1"],
        &["rm", "c1"],
        &["ls"],
    ];
    let mut transcript = Vec::new();
    for args in script {
        let out = ctr_snap(socket, sn, args);
        transcript.push(format!(
            "$ ctr snapshots {}\n{}",
            args.join(" "),
            normalize(&out, root, args)
        ));
    }
    transcript
}

#[tokio::test]
async fn ctr_session_matches_stock_containerd() {
    let d = Daemon::start().await;
    let c = Containerd::start();
    for sn in SNAPSHOTTERS {
        let ours = session(&d.socket(), &d.root(), sn);
        let theirs = session(&c.socket(), &c.root(), sn);
        for (o, t) in ours.iter().zip(&theirs) {
            assert_eq!(
                o,
                t,
                "{sn}: berthd (left) and containerd (right) differ;\nberthd:\n{}\ncontainerd:\n{}",
                ours.join("\n"),
                theirs.join("\n")
            );
        }
        assert_eq!(ours.len(), theirs.len());
    }
}

#[tokio::test]
async fn ctr_snapshot_commands_show_what_they_should() {
    let d = Daemon::start().await;
    for sn in SNAPSHOTTERS {
        let ok = |args: &[&str]| success(&ctr_snap(&d.socket(), sn, args), &args.join(" "));
        ok(&["prepare", "base"]);
        ok(&["commit", "c1", "base"]);
        ok(&["prepare", "work", "c1"]);
        ok(&["view", "ro", "c1"]);

        let ls = ok(&["ls"]);
        let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], vec!["KEY", "PARENT", "KIND"], "{ls}");
        assert_eq!(
            &rows[1..],
            &[
                vec!["c1", "Committed"],
                vec!["ro", "c1", "View"],
                vec!["work", "c1", "Active"]
            ],
            "{ls}"
        );

        let info: serde_json::Value = serde_json::from_str(&ok(&["info", "work"])).unwrap();
        assert_eq!(info["Kind"], "Active");
        assert_eq!(info["Name"], "work");
        assert_eq!(info["Parent"], "c1");
        assert!(
            info["Labels"]["containerd.io/gc.root"].is_string(),
            "ctr marks what it prepares as a GC root: {info}"
        );

        let labels = ok(&["label", "work", "color=blue"]);
        let mut got: Vec<&str> = labels.trim().split(',').collect();
        got.sort();
        assert_eq!(got.len(), 2, "{labels}");
        assert_eq!(got[0], "color=blue");
        assert!(got[1].starts_with("containerd.io/gc.root="), "{labels}");

        let tree = ok(&["tree"]);
        assert_eq!(tree, " c1\n  \\_ ro\n  \\_ work\n", "{sn}");

        let usage = ok(&["usage"]);
        let keys: Vec<&str> = usage
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(keys, vec!["c1", "ro", "work"], "{usage}");

        let mounts = ok(&["mounts", "/tmp/somewhere", "work"]);
        assert!(
            mounts.starts_with("mount -t ") && mounts.contains(" /tmp/somewhere -o "),
            "{mounts}"
        );

        let err = failure(&ctr_snap(&d.socket(), sn, &["rm", "c1"]), "rm c1");
        assert!(err.contains("failed precondition"), "{err}");
        let err = failure(
            &ctr_snap(&d.socket(), sn, &["commit", "c2", "ro"]),
            "commit view",
        );
        assert!(err.contains("failed precondition"), "{err}");
        ok(&["rm", "ro", "work", "c1"]);
        assert_eq!(ok(&["ls"]).lines().count(), 1);
    }
}

#[tokio::test]
async fn ctr_printed_mount_commands_mount_the_snapshots() {
    let d = Daemon::start().await;
    let work = tempfile::Builder::new()
        .prefix("snapmnt-")
        .tempdir_in("/tmp")
        .unwrap();
    for sn in SNAPSHOTTERS {
        let ok = |args: &[&str]| success(&ctr_snap(&d.socket(), sn, args), &args.join(" "));
        let target = work.path().join(sn);
        let t = target.to_str().unwrap();

        // Layer 1: a file.
        ok(&["prepare", "l1"]);
        {
            let _m = Mounted::exec(&ok(&["mounts", t, "l1"]), &target);
            std::fs::write(target.join("a.txt"), "layer one").unwrap();
            std::fs::create_dir(target.join("dir")).unwrap();
            std::fs::write(target.join("dir/gone"), "x").unwrap();
        }
        ok(&["commit", "c1", "l1"]);

        // Layer 2 sees layer 1; changes a file, deletes one.
        ok(&["prepare", "l2", "c1"]);
        {
            let _m = Mounted::exec(&ok(&["mounts", t, "l2"]), &target);
            assert_eq!(
                std::fs::read_to_string(target.join("a.txt")).unwrap(),
                "layer one"
            );
            std::fs::write(target.join("b.txt"), "layer two").unwrap();
            std::fs::remove_file(target.join("dir/gone")).unwrap();
        }
        ok(&["commit", "c2", "l2"]);

        // A view of layer 2 (prepare also prints the commands with --target).
        let printed = ok(&["view", "--target", t, "v", "c2"]);
        {
            let _m = Mounted::exec(&printed, &target);
            assert_eq!(
                std::fs::read_to_string(target.join("a.txt")).unwrap(),
                "layer one"
            );
            assert_eq!(
                std::fs::read_to_string(target.join("b.txt")).unwrap(),
                "layer two"
            );
            assert!(!target.join("dir/gone").exists());
            let err = std::fs::write(target.join("c.txt"), "no").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{sn}: {err}");
        }
        ok(&["rm", "v", "c2", "c1"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------------------------

async fn client(d: &Daemon) -> SnapshotsClient<Svc> {
    SnapshotsClient::with_interceptor(d.channel().await, Ctx::ns(NS))
}

async fn list(c: &mut SnapshotsClient<Svc>, sn: &str) -> Vec<Info> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: sn.into(),
            filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        out.extend(r.info);
    }
    out
}

/// Directories in the backend's `snapshots/`.
fn backend_dirs(d: &Daemon, sn: &str) -> BTreeSet<String> {
    let dir = d
        .root()
        .join(format!("io.containerd.snapshotter.v1.{sn}"))
        .join("snapshots");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Paths a mount list names (bind sources, overlay upper/work/lower dirs).
fn mount_paths(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        if m.source.starts_with('/') {
            out.push(PathBuf::from(&m.source));
        }
        for o in &m.options {
            if let Some((k, v)) = o.split_once('=') {
                if matches!(k, "upperdir" | "workdir" | "lowerdir") {
                    out.extend(v.split(':').map(PathBuf::from));
                }
            }
        }
    }
    out
}

/// After a GC: every record's backend data exists (usage works, mount paths exist, a view
/// of every committed snapshot mounts), and the backend has no directory no record owns.
async fn assert_consistent(d: &Daemon, sn: &str) {
    let mut c = client(d).await;
    c.cleanup(CleanupRequest {
        snapshotter: sn.into(),
    })
    .await
    .unwrap();
    let infos = list(&mut c, sn).await;
    for info in &infos {
        c.usage(UsageRequest {
            snapshotter: sn.into(),
            key: info.name.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("{sn}: usage of {}: {s}", info.name));
        let mounts = if info.kind == Kind::Committed as i32 {
            let key = format!("check-{}", info.name);
            let m = c
                .view(ViewSnapshotRequest {
                    snapshotter: sn.into(),
                    key: key.clone(),
                    parent: info.name.clone(),
                    labels: HashMap::new(),
                })
                .await
                .unwrap_or_else(|s| panic!("{sn}: view of {}: {s}", info.name))
                .into_inner()
                .mounts;
            c.remove(RemoveSnapshotRequest {
                snapshotter: sn.into(),
                key,
            })
            .await
            .unwrap();
            m
        } else {
            c.mounts(MountsRequest {
                snapshotter: sn.into(),
                key: info.name.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("{sn}: mounts of {}: {s}", info.name))
            .into_inner()
            .mounts
        };
        for p in mount_paths(&mounts) {
            assert!(
                p.exists(),
                "{sn}: {} ({}) names missing {}",
                info.name,
                info.kind,
                p.display()
            );
        }
    }
    // The views just made are gone with the next collection.
    c.cleanup(CleanupRequest {
        snapshotter: sn.into(),
    })
    .await
    .unwrap();
    let dirs = backend_dirs(d, sn);
    assert_eq!(
        dirs.len(),
        infos.len(),
        "{sn}: {} backend directories {dirs:?} for {} records {:?}",
        dirs.len(),
        infos.len(),
        infos.iter().map(|i| &i.name).collect::<Vec<_>>()
    );
}

fn gc_root() -> HashMap<String, String> {
    HashMap::from([(
        "containerd.io/gc.root".to_string(),
        "2024-01-01T00:00:00Z".to_string(),
    )])
}

#[tokio::test]
async fn snapshots_and_labels_survive_a_restart() {
    let mut d = Daemon::start().await;
    for sn in SNAPSHOTTERS {
        let ok = |args: &[&str]| success(&ctr_snap(&d.socket(), sn, args), &args.join(" "));
        ok(&["prepare", "base"]);
        ok(&["commit", "c1", "base"]);
        ok(&["prepare", "work", "c1"]);
        ok(&["view", "ro", "c1"]);
        ok(&["label", "work", "color=blue"]);
    }
    let before: Vec<(String, String, String)> = SNAPSHOTTERS
        .iter()
        .map(|sn| {
            (
                ctr_output(&d, sn, &["ls"]),
                ctr_output(&d, sn, &["info", "work"]),
                ctr_output(&d, sn, &["mounts", "/tmp/t", "work"]),
            )
        })
        .collect();
    d.restart().await;
    for (sn, want) in SNAPSHOTTERS.iter().zip(before) {
        let after = (
            ctr_output(&d, sn, &["ls"]),
            ctr_output(&d, sn, &["info", "work"]),
            ctr_output(&d, sn, &["mounts", "/tmp/t", "work"]),
        );
        assert_eq!(after, want, "{sn}");
        assert!(after.1.contains("\"color\": \"blue\""), "{}", after.1);
    }
    // (A collection covers every snapshotter: compare all first.)
    for sn in SNAPSHOTTERS {
        assert_consistent(&d, sn).await;
        // c1 and work; the view had no gc.root label (ctr view sets none), so GC took it.
        let left: Vec<String> = list(&mut client(&d).await, sn)
            .await
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(left, vec!["c1", "work"], "{sn}");
    }
}

fn ctr_output(d: &Daemon, sn: &str, args: &[&str]) -> String {
    success(&ctr_snap(&d.socket(), sn, args), &args.join(" "))
}

/// One round of the burst: prepare, commit, view, remove, in a chain.
async fn burst(mut c: SnapshotsClient<Svc>, sn: String, tag: String) -> Result<(), Status> {
    let mut parent = String::new();
    for i in 0.. {
        let key = format!("{tag}-a{i}");
        let name = format!("{tag}-c{i}");
        let l = if i % 3 == 0 {
            gc_root()
        } else {
            HashMap::new()
        };
        c.prepare(PrepareSnapshotRequest {
            snapshotter: sn.clone(),
            key: key.clone(),
            parent: parent.clone(),
            labels: gc_root(),
        })
        .await?;
        c.commit(CommitSnapshotRequest {
            snapshotter: sn.clone(),
            name: name.clone(),
            key,
            labels: l,
            parent: String::new(),
        })
        .await?;
        let v = format!("{tag}-v{i}");
        c.view(ViewSnapshotRequest {
            snapshotter: sn.clone(),
            key: v.clone(),
            parent: name.clone(),
            labels: gc_root(),
        })
        .await?;
        if i % 2 == 0 {
            c.remove(RemoveSnapshotRequest {
                snapshotter: sn.clone(),
                key: v,
            })
            .await?;
        }
        parent = name;
    }
    Ok(())
}

#[tokio::test]
async fn sigkill_during_a_burst_leaves_records_and_directories_in_step() {
    let mut d = Daemon::start().await;
    for (round, delay_ms) in [150u64, 400, 900].into_iter().enumerate() {
        let mut tasks = Vec::new();
        for sn in SNAPSHOTTERS {
            for w in 0..2 {
                let c = client(&d).await;
                tasks.push(tokio::spawn(burst(
                    c,
                    sn.to_string(),
                    format!("r{round}w{w}"),
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        d.kill9();
        for t in tasks {
            // Every burst ends with a transport error when the daemon dies.
            let r = t.await.unwrap();
            assert!(r.is_err());
        }
        d.restart().await;
        for sn in SNAPSHOTTERS {
            let n = list(&mut client(&d).await, sn).await.len();
            eprintln!("round {round}: {sn}: {n} snapshots after the kill");
            assert_consistent(&d, sn).await;
        }
    }
    let log = d.log();
    let recovered = log.lines().filter(|l| l.contains("recovery:")).count();
    eprintln!("{recovered} interrupted operations recovered at restarts");
    // And the survivors still work: commit on top of every chain's last committed layer.
    let mut c = client(&d).await;
    for sn in SNAPSHOTTERS {
        let infos = list(&mut c, sn).await;
        assert!(!infos.is_empty(), "{sn}: the bursts left nothing");
        let committed = infos
            .iter()
            .find(|i| i.kind == Kind::Committed as i32)
            .expect("a committed snapshot");
        c.prepare(PrepareSnapshotRequest {
            snapshotter: sn.into(),
            key: "after".into(),
            parent: committed.name.clone(),
            labels: gc_root(),
        })
        .await
        .unwrap();
    }
}
