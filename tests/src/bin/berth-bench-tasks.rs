//! berth-bench-tasks: containers and tasks, berthd side by side with stock containerd 1.6 on
//! the same machine, with bare `runc run` as the floor.
//!
//! 1. Wall time of `ctr -a SOCK run --rm --rootfs R idN /bin/true` (median of `--runs`):
//!    Berth's own CLI (`berth`, same arguments) on berthd + containerd-shim-berth-v2, and
//!    with the stock ctr: berthd + containerd-shim-berth-v2, berthd + the stock containerd-shim-runc-v2,
//!    containerd + containerd-shim-runc-v2, containerd + containerd-shim-berth-v2 (info), and
//!    `runc run --bundle B idN` on a bundle from `runc spec` (root R, args /bin/true, terminal
//!    false, root writable as ctr's spec) as the floor. One untimed warm-up round first; the
//!    order of the variants rotates every round so drift hits all of them alike.
//! 2. `--containers` (20) containers started in a row (`ctr run -d ... /bin/sleep 300`), total
//!    time; after `--idle-ms` the VmRSS / PSS / threads of the shims (the parent of each task's
//!    init) and the daemon's VmRSS with all of them running, then half of them removed and the
//!    daemon's VmRSS again with the other half (10) running; then everything is killed and
//!    removed.
//!
//! Targets (issue 5): run --rm <= 0.5x containerd and <= 1.3x bare runc (judged for each
//! product's own CLI, berth vs ctr, and for the stock ctr on both daemons); shim RSS <= 0.2x
//! containerd-shim-runc-v2.
//!
//! Both daemons run in their own temp root/state/socket under `--dir` (containerd with a
//! generated `version = 2` config, CRI off; the system service is never touched). Containers
//! use a busybox rootfs (`/bin/busybox` copied, applets symlinked), so no image is needed.
//! Cleanup, also on error and on SIGINT/SIGTERM: daemons stopped, leftover shims (processes
//! whose command line names one of our sockets) SIGKILLed, leftover containers removed with
//! `runc delete --force` in the namespaces' runc roots, mounts under the temp dir detached,
//! the namespaces' cgroups removed, temp dirs deleted. Daemons get `PR_SET_PDEATHSIG`.
//!
//! Run: `cargo run --release -p berth-tests --bin berth-bench-tasks -- [--runs 20]`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use berth_snapshotter::mount;
use berth_tests::bench::{
    self, berthd_path, loadavg, main_on_runtime, median, percentile, proc_status, table, verdict,
    DaemonSpec, Kind,
};
use clap::Parser;
use nix::mount::{umount2, MntFlags};
use tokio::time::timeout;

/// How long one ctr / runc invocation may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one cleanup command may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Runtimes.
const RUNC_V2: &str = "io.containerd.runc.v2";
const BERTH_V2: &str = "io.containerd.berth.v2";
/// Ids of the runtime-floor containers (`runc_steps`) in the bench's own runc root.
const RUNC_STEPS_TAG: &str = "rsteps";
/// Where the shims keep runc's state: the stock shim under containerd's default, ours under
/// Berth's (`/run/berth/runc/<ns>`), whichever daemon drives them.
const STOCK_RUNC_ROOT: &str = "/run/containerd/runc";
const BERTH_RUNC_ROOT: &str = "/run/berth/runc";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "berth-bench-tasks",
    about = "berthd vs stock containerd 1.6 (+ bare runc): run --rm latency, 20 containers, shim and daemon RSS"
)]
struct Args {
    /// Timed `run --rm` rounds per variant (median reported).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Containers started in a row per variant.
    #[arg(long, default_value_t = 20)]
    containers: usize,
    /// Idle time before reading RSS, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
    /// Directory for the daemons' roots, the rootfs and the runc bundle.
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// berthd binary (default: `berthd` next to this executable; the berth shim is looked up
    /// next to it).
    #[arg(long)]
    berthd: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
    #[arg(long, default_value = "/usr/bin/ctr")]
    ctr: PathBuf,
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// Static busybox for the rootfs (Debian `busybox-static`).
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Skip the info variant containerd + containerd-shim-berth-v2.
    #[arg(long)]
    no_cross: bool,
}

impl Args {
    fn command(&self) -> String {
        let mut s = format!(
            "cargo run --release -p berth-tests --bin berth-bench-tasks -- --runs {} \
             --containers {} --idle-ms {} --dir {}",
            self.runs,
            self.containers,
            self.idle_ms,
            self.dir.display()
        );
        if let Some(b) = &self.berthd {
            let _ = write!(s, " --berthd {}", b.display());
        }
        if self.no_cross {
            s.push_str(" --no-cross");
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------------

/// A daemon of `berth_tests::bench` and the namespace the bench uses on it.
struct Daemon {
    inner: bench::Daemon,
    ns: String,
}

impl Daemon {
    /// Starts the daemon in `dir` with `PATH` = `path_env` (so it finds the shims).
    async fn start(
        kind: Kind,
        bin: &Path,
        dir: &Path,
        path_env: &str,
        ns: String,
    ) -> Result<Daemon> {
        let spec = DaemonSpec {
            path_env: Some(path_env),
            ..DaemonSpec::new(kind, bin, dir)
        };
        Ok(Daemon {
            inner: bench::Daemon::start(&spec).await?,
            ns,
        })
    }

    fn pid(&self) -> u32 {
        self.inner.pid()
    }

    fn socket(&self) -> &Path {
        self.inner.socket()
    }

    /// `ctr -a SOCK -n NS ARGS`.
    fn ctr(&self, ctr: &Path, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(ctr);
        c.arg("-a")
            .arg(self.socket())
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_ADDRESS");
        c
    }
}

// ---------------------------------------------------------------------------------------------
// Processes, /proc, cleanup
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` (stdin null, output captured) with a deadline; returns wall time and output.
async fn exec(cmd: &mut tokio::process::Command, limit: Duration) -> Result<(Duration, Output)> {
    let what = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
    let out = timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{what} did not finish within {limit:?}"))?
        .with_context(|| format!("wait {what}"))?;
    Ok((start.elapsed(), out))
}

/// Like [`exec`], failing unless the command exits 0.
async fn exec_ok(cmd: &mut tokio::process::Command, limit: Duration) -> Result<(Duration, Output)> {
    let what = format!("{:?}", cmd.as_std());
    let (t, out) = exec(cmd, limit).await?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok((t, out))
}

/// Synchronous command with a deadline, for cleanup paths (also run from `Drop`).
fn run_sync(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A `/proc/<pid>/status` field (kB for Vm*, a count for Threads, a pid for PPid).
/// Proportional set size in kB (`/proc/<pid>/smaps_rollup`).
fn proc_pss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn proc_cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The file name of a process's executable.
fn proc_exe_name(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".into())
}

/// Resident anonymous and file-backed memory (kB) of a process.
fn proc_rss_split(pid: u32) -> (u64, u64) {
    (
        proc_status(pid, "RssAnon").unwrap_or(0),
        proc_status(pid, "RssFile").unwrap_or(0),
    )
}

/// Pids of processes whose command line contains `needle`, except `exclude`.
fn pids_with_cmdline(needle: &str, exclude: &[u32]) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != me && !exclude.contains(p))
        .filter(|p| proc_cmdline(*p).contains(needle))
        .collect()
}

/// Everything that may outlive the daemons: shims, containers, mounts, cgroups. Its `Drop`
/// removes what is left, best effort and bounded in time.
struct Leftovers {
    base: PathBuf,
    runc: PathBuf,
    /// Strings found in our shims' command lines (the daemons' sockets).
    sockets: Vec<String>,
    /// Pids never to kill here (the daemons; they are stopped by their own `Drop`).
    daemons: Vec<u32>,
    /// runc roots holding our containers.
    runc_roots: Vec<PathBuf>,
    /// cgroup paths (relative to a controller mount) to remove, parents last.
    cgroups: Vec<String>,
    /// Shim sockets our containers may have left (a SIGKILLed shim cannot remove its own).
    shim_sockets: Vec<PathBuf>,
}

/// Where a shim v2 for container `id` in `ns` of the daemon at `address` listens: containerd's
/// rule (`sha256(<address>/<ns>/<id>)` under `/run/containerd/s`), which Berth's shim follows
/// under `/run/berth/s`.
fn shim_socket_candidates(address: &Path, ns: &str, id: &str) -> [PathBuf; 2] {
    use sha2::Digest as _;
    let key = address.join(ns).join(id);
    let h = hex::encode(sha2::Sha256::digest(key.as_os_str().as_encoded_bytes()));
    [
        Path::new("/run/containerd/s").join(&h),
        Path::new("/run/berth/s").join(&h),
    ]
}

impl Leftovers {
    fn shims(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .sockets
            .iter()
            .flat_map(|s| pids_with_cmdline(s, &self.daemons))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn clean(&mut self) -> Vec<String> {
        let mut report = Vec::new();
        let shims = self.shims();
        if !shims.is_empty() {
            report.push(format!("{} shim process(es) SIGKILLed", shims.len()));
        }
        for pid in shims {
            // SAFETY: kill(2) on a process whose command line names our own socket.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        for root in &self.runc_roots {
            if !root.exists() {
                continue;
            }
            let ids = run_sync(
                Command::new(&self.runc)
                    .arg("--root")
                    .arg(root)
                    .args(["list", "-q"]),
                CLEANUP_TIMEOUT,
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
            for id in ids.split_whitespace() {
                report.push(format!("container {id} deleted from {}", root.display()));
                let _ = run_sync(
                    Command::new(&self.runc)
                        .arg("--root")
                        .arg(root)
                        .args(["delete", "--force", id]),
                    CLEANUP_TIMEOUT,
                );
            }
            let _ = std::fs::remove_dir(root);
        }
        let stale: Vec<&PathBuf> = self
            .shim_sockets
            .iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .collect();
        if !stale.is_empty() {
            report.push(format!("{} stale shim socket(s) removed", stale.len()));
        }
        for p in stale {
            let _ = std::fs::remove_file(p);
        }
        for m in mount::mounts_below(&self.base).unwrap_or_default() {
            report.push(format!("unmounted {}", m.display()));
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
        for cg in &self.cgroups {
            for root in berth_tests::cgroup_roots() {
                let _ = std::fs::remove_dir(root.join(cg.trim_start_matches('/')));
            }
        }
        report
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for line in self.clean() {
            eprintln!("cleanup: {line}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A busybox root filesystem in `dir/rootfs`.
fn busybox_rootfs(dir: &Path, busybox: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))
        .with_context(|| format!("copy {} (install busybox-static)", busybox.display()))?;
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    for applet in ["sh", "true", "sleep", "echo", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(root)
}

/// A runc bundle from `runc spec`: root `rootfs` (writable), args /bin/true, no terminal.
async fn runc_bundle(
    runc: &Path,
    dir: &Path,
    rootfs: &Path,
    cgroup_parent: &str,
) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    exec_ok(
        tokio::process::Command::new(runc)
            .arg("spec")
            .current_dir(&bundle),
        CMD_TIMEOUT,
    )
    .await?;
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
    spec["root"]["readonly"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["process"]["terminal"] = false.into();
    // Placeholder; every run sets its own path through a copy of the bundle config below.
    spec["linux"]["cgroupsPath"] = format!("{cgroup_parent}/runc").into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// The command-line client a variant runs containers with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// The stock `ctr`.
    Ctr,
    /// Berth's own `berth` (next to berthd), whose `run` takes ctr's arguments.
    Berth,
}

/// A way of running containers.
#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    tag: &'static str,
    client: Client,
    /// Index into the daemons (0 berthd, 1 containerd); `None` is bare runc.
    daemon: Option<usize>,
    runtime: &'static str,
    info_only: bool,
}

const VARIANTS: &[Variant] = &[
    Variant {
        label: "berth CLI: berthd + berth shim",
        tag: "bc",
        client: Client::Berth,
        daemon: Some(0),
        runtime: BERTH_V2,
        info_only: false,
    },
    Variant {
        label: "berthd + berth shim",
        tag: "bb",
        client: Client::Ctr,
        daemon: Some(0),
        runtime: BERTH_V2,
        info_only: false,
    },
    Variant {
        label: "berthd + runc shim",
        tag: "br",
        client: Client::Ctr,
        daemon: Some(0),
        runtime: RUNC_V2,
        info_only: false,
    },
    Variant {
        label: "containerd + runc shim",
        tag: "cr",
        client: Client::Ctr,
        daemon: Some(1),
        runtime: RUNC_V2,
        info_only: false,
    },
    Variant {
        label: "containerd + berth shim",
        tag: "cb",
        client: Client::Ctr,
        daemon: Some(1),
        runtime: BERTH_V2,
        info_only: true,
    },
    Variant {
        label: "bare runc run",
        tag: "rc",
        client: Client::Ctr,
        daemon: None,
        runtime: "-",
        info_only: false,
    },
];

struct Ctx<'a> {
    args: &'a Args,
    /// Berth's CLI.
    berth: PathBuf,
    daemons: [&'a Daemon; 2],
    rootfs: String,
    bundle: PathBuf,
    runc_root: PathBuf,
    cgroup_runc: String,
}

impl Ctx<'_> {
    /// One `run --rm /bin/true` (or bare `runc run`); wall time.
    async fn run_rm(&self, v: &Variant, id: &str) -> Result<Duration> {
        let (t, _) = match v.daemon {
            Some(i) => {
                let client = match v.client {
                    Client::Ctr => &self.args.ctr,
                    Client::Berth => &self.berth,
                };
                exec_ok(
                    &mut self.daemons[i].ctr(
                        client,
                        &[
                            "run",
                            "--rm",
                            "--runtime",
                            v.runtime,
                            "--rootfs",
                            &self.rootfs,
                            id,
                            "/bin/true",
                        ],
                    ),
                    CMD_TIMEOUT,
                )
                .await?
            }
            None => {
                let b = self.bundle_for(id)?;
                let r = exec_ok(
                    tokio::process::Command::new(&self.args.runc)
                        .arg("--root")
                        .arg(&self.runc_root)
                        .args(["run", "--bundle"])
                        .arg(&b)
                        .arg(id),
                    CMD_TIMEOUT,
                )
                .await;
                let _ = std::fs::remove_dir_all(&b);
                r?
            }
        };
        Ok(t)
    }

    /// A bundle for bare runc: the shared config.json with the cgroup path of `id` (it
    /// differs per id, as ctr's /<ns>/<id>).
    fn bundle_for(&self, id: &str) -> Result<PathBuf> {
        let b = self.bundle.join(id);
        std::fs::create_dir_all(&b)?;
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.bundle.join("config.json"))?)?;
        spec["linux"]["cgroupsPath"] = format!("{}/{id}", self.cgroup_runc).into();
        std::fs::write(b.join("config.json"), serde_json::to_vec(&spec)?)?;
        Ok(b)
    }

    fn runc(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.args.runc);
        c.arg("--root").arg(&self.runc_root).args(args);
        c
    }

    /// `runc create`, `runc start` and `runc delete` of one container as separate commands,
    /// as every shim that drives the runc CLI runs them for a run --rm: the sum of their wall
    /// times (the wait for the exit in between is not counted). The runtime's share of any
    /// such shim's run --rm.
    async fn runc_steps(&self, id: &str) -> Result<Duration> {
        let b = self.bundle_for(id)?;
        let r = async {
            // Not `exec`: the container's init inherits create's stdio, so pipes would
            // stay open until it exits.
            let mut create = self.runc(&["create", "--bundle"]);
            create
                .arg(&b)
                .arg(id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            let t0 = Instant::now();
            let status = timeout(CMD_TIMEOUT, create.status())
                .await
                .map_err(|_| anyhow!("runc create {id} did not finish within {CMD_TIMEOUT:?}"))??;
            let t_create = t0.elapsed();
            ensure!(status.success(), "runc create {id} failed ({status})");
            let (t_start, _) = exec_ok(&mut self.runc(&["start", id]), CMD_TIMEOUT).await?;
            let deadline = Instant::now() + CMD_TIMEOUT;
            loop {
                let (_, out) = exec_ok(&mut self.runc(&["state", id]), CMD_TIMEOUT).await?;
                let state: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                if state["status"] == "stopped" {
                    break;
                }
                ensure!(Instant::now() < deadline, "runc: {id} did not stop");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let (t_delete, _) = exec_ok(&mut self.runc(&["delete", id]), CMD_TIMEOUT).await?;
            Ok(t_create + t_start + t_delete)
        }
        .await;
        let _ = std::fs::remove_dir_all(&b);
        r
    }
}

#[derive(Default)]
struct StartResult {
    total: Duration,
    each: Vec<f64>,
    shim_rss_first: u64,
    shim_rss_all: Vec<f64>,
    shim_pss_first: Option<u64>,
    shim_threads: u64,
    shim_comm: String,
    shim_anon_file: (u64, u64),
    daemon_rss_before: u64,
    daemon_rss_all: u64,
    daemon_rss_half: u64,
    daemon_threads_all: u64,
    left_shims: usize,
}

/// `ctr tasks ls` as id -> pid.
async fn task_pids(ctx: &Ctx<'_>, d: &Daemon) -> Result<BTreeMap<String, u32>> {
    let (_, out) = exec_ok(&mut d.ctr(&ctx.args.ctr, &["tasks", "ls"]), CMD_TIMEOUT).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect())
}

async fn remove_containers(ctx: &Ctx<'_>, d: &Daemon, ids: &[String]) -> Result<()> {
    for id in ids {
        let _ = exec(
            &mut d.ctr(&ctx.args.ctr, &["tasks", "kill", "-s", "SIGKILL", id]),
            CMD_TIMEOUT,
        )
        .await;
        exec_ok(
            &mut d.ctr(&ctx.args.ctr, &["tasks", "rm", "-f", id]),
            CMD_TIMEOUT,
        )
        .await?;
        exec_ok(
            &mut d.ctr(&ctx.args.ctr, &["containers", "rm", id]),
            CMD_TIMEOUT,
        )
        .await?;
    }
    Ok(())
}

async fn start_many(ctx: &Ctx<'_>, v: &Variant) -> Result<StartResult> {
    let d = ctx.daemons[v.daemon.expect("daemon variant")];
    let n = ctx.args.containers;
    let idle = Duration::from_millis(ctx.args.idle_ms);
    let ids: Vec<String> = (0..n).map(|i| format!("d{}-{i}", v.tag)).collect();
    let mut r = StartResult {
        daemon_rss_before: proc_status(d.pid(), "VmRSS")?,
        ..StartResult::default()
    };
    let t0 = Instant::now();
    let mut started = Vec::new();
    let res: Result<()> = async {
        for id in &ids {
            let (t, _) = exec_ok(
                &mut d.ctr(
                    &ctx.args.ctr,
                    &[
                        "run",
                        "-d",
                        "--runtime",
                        v.runtime,
                        "--rootfs",
                        &ctx.rootfs,
                        id,
                        "/bin/sleep",
                        "300",
                    ],
                ),
                CMD_TIMEOUT,
            )
            .await?;
            started.push(id.clone());
            r.each.push(t.as_secs_f64() * 1e3);
        }
        r.total = t0.elapsed();
        tokio::time::sleep(idle).await;
        let pids = task_pids(ctx, d).await?;
        for (k, id) in ids.iter().enumerate() {
            let pid = *pids
                .get(id)
                .ok_or_else(|| anyhow!("task {id} not listed by ctr tasks ls"))?;
            let shim = proc_status(pid, "PPid")? as u32;
            let rss = proc_status(shim, "VmRSS")?;
            if k == 0 {
                r.shim_rss_first = rss;
                r.shim_pss_first = proc_pss(shim);
                r.shim_threads = proc_status(shim, "Threads")?;
                r.shim_comm = proc_exe_name(shim);
                r.shim_anon_file = proc_rss_split(shim);
                ensure!(
                    proc_cmdline(shim).contains("containerd-shim"),
                    "parent {shim} of task {id} ({pid}) is not a shim: {}",
                    proc_cmdline(shim)
                );
            }
            r.shim_rss_all.push(rss as f64);
        }
        r.daemon_rss_all = proc_status(d.pid(), "VmRSS")?;
        r.daemon_threads_all = proc_status(d.pid(), "Threads")?;
        // Remove half, measure the daemon with the other half running.
        let half = n / 2;
        remove_containers(ctx, d, &ids[half..]).await?;
        started.truncate(half);
        tokio::time::sleep(idle).await;
        r.daemon_rss_half = proc_status(d.pid(), "VmRSS")?;
        Ok(())
    }
    .await;
    let rm = remove_containers(ctx, d, &started).await;
    res?;
    rm?;
    // Shims exit after their task is deleted; count what is left of this daemon's.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = pids_with_cmdline(&d.socket().to_string_lossy(), &[d.pid()]).len();
        r.left_shims = left;
        if left == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn tool_version(bin: &Path, arg: &str) -> String {
    run_sync(Command::new(bin).arg(arg), Duration::from_secs(10))
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

fn mib(kb: f64) -> String {
    format!("{:.1}", kb / 1024.0)
}

async fn run(args: Args) -> Result<()> {
    ensure!(args.runs > 0, "--runs must be positive");
    ensure!(args.containers >= 2, "--containers must be at least 2");
    let berthd = berthd_path(
        args.berthd.as_deref(),
        "run `cargo build --release --workspace`",
    )?;
    let shim_dir = berthd
        .parent()
        .ok_or_else(|| anyhow!("berthd has no directory"))?
        .to_path_buf();
    ensure!(
        shim_dir.join("containerd-shim-berth-v2").exists(),
        "containerd-shim-berth-v2 not found next to {}",
        berthd.display()
    );
    for (p, what) in [
        (&args.containerd, "containerd (Debian package `containerd`)"),
        (&args.ctr, "ctr (Debian package `containerd`)"),
        (&args.busybox, "busybox (Debian package `busybox-static`)"),
    ] {
        ensure!(p.exists(), "{} not found: {what}", p.display());
    }
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "must run as root");

    // containerd finds containerd-shim-berth-v2 and runc on PATH.
    let path_env = format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        shim_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    std::fs::create_dir_all(&args.dir)?;
    let base = tempfile::Builder::new()
        .prefix("bbt-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("create temp dir in {}", args.dir.display()))?;
    let pid = std::process::id();
    let ns_b = format!("bbt-b-{pid}");
    let ns_c = format!("bbt-c-{pid}");
    let cgroup_runc = format!("/bbt-runc-{pid}");
    let runc_root = base.path().join("runc-root");
    // Declared after `base` and before the daemons: dropped after the daemons stop, before
    // the directory goes.
    let mut leftovers = Leftovers {
        base: base.path().to_path_buf(),
        runc: args.runc.clone(),
        sockets: Vec::new(),
        daemons: Vec::new(),
        runc_roots: [STOCK_RUNC_ROOT, BERTH_RUNC_ROOT]
            .iter()
            .flat_map(|r| [Path::new(r).join(&ns_b), Path::new(r).join(&ns_c)])
            .chain([runc_root.clone()])
            .collect(),
        cgroups: vec![
            ns_b.clone(),
            ns_c.clone(),
            cgroup_runc.trim_start_matches('/').to_string(),
        ],
        shim_sockets: Vec::new(),
    };

    let rootfs = busybox_rootfs(base.path(), &args.busybox)?;
    let bundle = runc_bundle(&args.runc, base.path(), &rootfs, &cgroup_runc).await?;

    println!("berth-bench-tasks: {}", args.command());
    println!("  berthd:     {}", berthd.display());
    println!(
        "  containerd: {}",
        tool_version(&args.containerd, "--version")
    );
    println!("  runc:       {}", tool_version(&args.runc, "--version"));
    println!("  temp dir:   {}", base.path().display());
    println!(
        "  cpus:       {}, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );

    let db = Daemon::start(
        Kind::Berthd,
        &berthd,
        &base.path().join("berthd"),
        &path_env,
        ns_b,
    )
    .await?;
    leftovers
        .sockets
        .push(db.socket().to_string_lossy().into_owned());
    leftovers.daemons.push(db.pid());
    let dc = Daemon::start(
        Kind::Containerd,
        &args.containerd,
        &base.path().join("containerd"),
        &path_env,
        ns_c,
    )
    .await?;
    leftovers
        .sockets
        .push(dc.socket().to_string_lossy().into_owned());
    leftovers.daemons.push(dc.pid());
    // Every container id this run may use, on either daemon.
    for d in [&db, &dc] {
        for v in VARIANTS {
            let ids = (0..=args.runs)
                .map(|r| format!("rm{}-{r}", v.tag))
                .chain((0..args.containers).map(|i| format!("d{}-{i}", v.tag)));
            for id in ids {
                leftovers
                    .shim_sockets
                    .extend(shim_socket_candidates(d.socket(), &d.ns, &id));
            }
        }
    }
    let idle_rss = [
        proc_status(db.pid(), "VmRSS")?,
        proc_status(dc.pid(), "VmRSS")?,
    ];

    let berth = shim_dir.join("berth");
    ensure!(berth.exists(), "berth (the CLI) not found next to berthd");
    let ctx = Ctx {
        args: &args,
        berth,
        daemons: [&db, &dc],
        rootfs: rootfs.to_string_lossy().into_owned(),
        bundle,
        runc_root,
        cgroup_runc,
    };
    let variants: Vec<Variant> = VARIANTS
        .iter()
        .copied()
        .filter(|v| !(args.no_cross && v.info_only))
        .collect();

    // 1. run --rm /bin/true.
    println!(
        "run --rm /bin/true: 1 warm-up + {} timed rounds, variant order rotating ...",
        args.runs
    );
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..=args.runs {
        let mut line = format!(
            "  round {round:>2}{}:",
            if round == 0 { " (warm-up)" } else { "" }
        );
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let v = &variants[i];
            let id = format!("rm{}-{round}", v.tag);
            let t = ctx
                .run_rm(v, &id)
                .await
                .with_context(|| format!("{}: run --rm {id}", v.label))?;
            let ms = t.as_secs_f64() * 1e3;
            let _ = write!(line, " {}={ms:.1}", v.tag);
            if round > 0 {
                times[i].push(ms);
            }
        }
        println!("{line}");
    }

    // The client's own share: `ctr version` (Go start-up, connect, one unary call).
    let mut floor = [Vec::new(), Vec::new()];
    for _ in 0..args.runs {
        for (i, d) in [&db, &dc].into_iter().enumerate() {
            let (t, _) = exec_ok(&mut d.ctr(&args.ctr, &["version"]), CMD_TIMEOUT).await?;
            floor[i].push(t.as_secs_f64() * 1e3);
        }
    }
    // The runtime's share: runc's create, start and delete commands.
    let mut runc_floor = Vec::new();
    for r in 0..args.runs {
        let t = ctx.runc_steps(&format!("{RUNC_STEPS_TAG}-{r}")).await?;
        runc_floor.push(t.as_secs_f64() * 1e3);
    }

    // 2. Many containers.
    let mut starts: Vec<(Variant, StartResult)> = Vec::new();
    for v in variants
        .iter()
        .filter(|v| v.daemon.is_some() && v.client == Client::Ctr)
    {
        println!("{}: {} containers in a row ...", v.label, args.containers);
        let r = start_many(&ctx, v)
            .await
            .with_context(|| format!("{}: {} containers", v.label, args.containers))?;
        println!(
            "  total {:.2} s; shim {} VmRSS {} MiB, {} threads; daemon VmRSS {} MiB",
            r.total.as_secs_f64(),
            r.shim_comm,
            mib(r.shim_rss_first as f64),
            r.shim_threads,
            mib(r.daemon_rss_all as f64)
        );
        starts.push((*v, r));
    }

    // Report.
    let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
    let find = |tag: &str| variants.iter().position(|v| v.tag == tag);
    let (i_cli, ib, ic, ir) = (
        find("bc").expect("bc"),
        find("bb").expect("bb"),
        find("cr").expect("cr"),
        find("rc").expect("rc"),
    );
    println!();
    println!(
        "=== run --rm /bin/true: wall time of the command, ms (median of {}) ===",
        args.runs
    );
    let rows: Vec<Vec<String>> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            vec![
                format!("{}{}", v.label, if v.info_only { " (info)" } else { "" }),
                format!("{:.1}", med[i]),
                format!("{:.1}", percentile(&times[i], 0.0)),
                format!("{:.1}", percentile(&times[i], 0.9)),
                format!("{:.2}", med[i] / med[ic]),
                format!("{:.2}", med[i] / med[ir]),
            ]
        })
        .collect();
    table(
        &[
            "variant",
            "median",
            "min",
            "p90",
            "/containerd",
            "/bare runc",
        ],
        &rows,
    );

    println!(
        "  client floor, `ctr -a SOCK version` (median of {}): berthd {:.1} ms, containerd {:.1} ms",
        args.runs,
        median(&floor[0]),
        median(&floor[1])
    );
    let runtime_floor = median(&runc_floor);
    let both = median(&floor[0]) + runtime_floor;
    println!(
        "  runtime floor, `runc create` + `runc start` + `runc delete` (median of {}): {runtime_floor:.1} ms \
         = {:.2}x bare runc run; client + runtime floor {both:.1} ms = {:.2}x containerd + runc shim",
        args.runs,
        runtime_floor / med[ir],
        both / med[ic]
    );

    println!();
    println!(
        "=== {} containers in a row (ctr run -d ... /bin/sleep 300), then idle {} ms ===",
        args.containers, args.idle_ms
    );
    let rows: Vec<Vec<String>> = starts
        .iter()
        .map(|(v, r)| {
            vec![
                format!("{}{}", v.label, if v.info_only { " (info)" } else { "" }),
                format!("{:.2}", r.total.as_secs_f64()),
                format!("{:.1}", median(&r.each)),
                r.shim_comm.clone(),
                mib(r.shim_rss_first as f64),
                format!(
                    "{}/{}",
                    mib(r.shim_anon_file.0 as f64),
                    mib(r.shim_anon_file.1 as f64)
                ),
                mib(median(&r.shim_rss_all)),
                r.shim_pss_first.map_or("?".into(), |p| mib(p as f64)),
                r.shim_threads.to_string(),
                mib(r.daemon_rss_before as f64),
                mib(r.daemon_rss_half as f64),
                mib(r.daemon_rss_all as f64),
                r.daemon_threads_all.to_string(),
                r.left_shims.to_string(),
            ]
        })
        .collect();
    let half = args.containers / 2;
    let h_half = format!("d.RSS@{half}");
    let h_all = format!("d.RSS@{}", args.containers);
    table(
        &[
            "variant",
            "total s",
            "ms/ctr",
            "shim binary",
            "shim RSS",
            "anon/file",
            "shim RSS med",
            "shim PSS",
            "shim thr",
            "d.RSS@0",
            &h_half,
            &h_all,
            "d.thr",
            "shims left",
        ],
        &rows,
    );
    println!(
        "  (MiB; shim = parent of the task's init; RSS/PSS/threads of the first container's \
         shim, anon/file = RssAnon/RssFile of it, 'med' = median VmRSS over all {}; d.RSS@k = daemon VmRSS with k containers running; \
         daemon idle RSS at start: berthd {} MiB, containerd {} MiB)",
        args.containers,
        mib(idle_rss[0] as f64),
        mib(idle_rss[1] as f64)
    );

    // Targets.
    let get = |tag: &str| starts.iter().find(|(v, _)| v.tag == tag).map(|(_, r)| r);
    let (sb, sc) = (get("bb").expect("bb"), get("cr").expect("cr"));
    println!();
    println!("=== targets (issue 5) ===");
    let r1 = med[ib] / med[ic];
    let r2 = med[ib] / med[ir];
    let r3 = sb.shim_rss_first as f64 / sc.shim_rss_first as f64;
    let (r1_cli, r2_cli) = (med[i_cli] / med[ic], med[i_cli] / med[ir]);
    let rows = vec![
        vec![
            "run --rm, each one's CLI: berth+berthd / ctr+containerd".into(),
            format!("{:.1} / {:.1} ms", med[i_cli], med[ic]),
            format!("{r1_cli:.2}"),
            "<= 0.50".into(),
            verdict(r1_cli, 0.5, false).into(),
        ],
        vec![
            "run --rm, each one's CLI: berth+berthd / bare runc run".into(),
            format!("{:.1} / {:.1} ms", med[i_cli], med[ir]),
            format!("{r2_cli:.2}"),
            "<= 1.30".into(),
            verdict(r2_cli, 1.3, false).into(),
        ],
        vec![
            "run --rm, stock ctr: berthd+berth shim / containerd+runc shim".into(),
            format!("{:.1} / {:.1} ms", med[ib], med[ic]),
            format!("{r1:.2}"),
            "<= 0.50".into(),
            verdict(r1, 0.5, false).into(),
        ],
        vec![
            "run --rm, stock ctr: berthd+berth shim / bare runc run".into(),
            format!("{:.1} / {:.1} ms", med[ib], med[ir]),
            format!("{r2:.2}"),
            "<= 1.30".into(),
            verdict(r2, 1.3, false).into(),
        ],
        vec![
            "idle shim VmRSS: berth shim / containerd-shim-runc-v2".into(),
            format!(
                "{} / {} MiB",
                mib(sb.shim_rss_first as f64),
                mib(sc.shim_rss_first as f64)
            ),
            format!("{r3:.3}"),
            "<= 0.20".into(),
            verdict(r3, 0.2, false).into(),
        ],
        vec![
            format!("daemon VmRSS with {half} containers: berthd / containerd"),
            format!(
                "{} / {} MiB",
                mib(sb.daemon_rss_half as f64),
                mib(sc.daemon_rss_half as f64)
            ),
            format!(
                "{:.3}",
                sb.daemon_rss_half as f64 / sc.daemon_rss_half as f64
            ),
            "(info)".into(),
            "-".into(),
        ],
        vec![
            format!(
                "{} in a row: berthd+berth shim / containerd",
                args.containers
            ),
            format!(
                "{:.2} / {:.2} s",
                sb.total.as_secs_f64(),
                sc.total.as_secs_f64()
            ),
            format!("{:.2}", sb.total.as_secs_f64() / sc.total.as_secs_f64()),
            "(info)".into(),
            "-".into(),
        ],
    ];
    table(
        &["metric", "berth / reference", "ratio", "target", "result"],
        &rows,
    );
    println!();
    println!(
        "run --rm: `{} (or berth) -a SOCK -n NS run --rm --runtime RT --rootfs {} idN /bin/true`; \
         bare runc: `{} --root {} run --bundle B/idN idN` (config.json from `runc spec`: root \
         {} writable, args /bin/true, terminal false, cgroupsPath {}/idN)",
        args.ctr.display(),
        ctx.rootfs,
        args.runc.display(),
        ctx.runc_root.display(),
        ctx.rootfs,
        ctx.cgroup_runc
    );
    println!("load average at the end: {}", loadavg());
    println!("command: {}", args.command());
    drop(ctx);
    drop(dc);
    drop(db);
    let report = leftovers.clean();
    if !report.is_empty() {
        println!("cleanup after the run found leftovers:");
        for l in report {
            println!("  {l}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    main_on_runtime("berth-bench-tasks", run(args), || {})
}
