//! What the `berth-bench*` binaries share: berthd or the stock containerd 1.6 started in a
//! directory of their own (generated config, own socket, never the system service), /proc
//! readers, and the statistics and table of the reports.

use std::fmt::Write as _;
use std::fs::File;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use berth_proto::containerd::services::version::v1::version_client::VersionClient;
use berth_proto::containerd::types::Mount;
use berth_proto::grpc::health::v1::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use nix::mount::{umount2, MntFlags};
use tokio::time::timeout;

use crate::connect_with;

/// Runs `bench` on a fresh multi-threaded runtime until it ends, SIGINT or SIGTERM; then
/// `before_shutdown`, then the runtime is shut down. Errors are printed as `name: error`.
///
/// The future runs on this (main) thread, so daemons spawned from it keep their parent thread
/// and their PR_SET_PDEATHSIG fires only when the bench itself dies. On a signal the future is
/// dropped, and with it the daemons, guards and temp dirs it holds.
pub fn main_on_runtime<F>(name: &str, bench: F, before_shutdown: impl FnOnce()) -> ExitCode
where
    F: Future<Output = Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = bench => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow!("terminated")),
        }
    });
    before_shutdown();
    rt.shutdown_timeout(Duration::from_secs(5));
    exit_code(name, result)
}

/// SUCCESS, or the error printed as `name: error` and FAILURE.
pub fn exit_code(name: &str, result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `given`, or `berthd` next to this executable; if it does not exist, an error that says
/// how to get it (`build`) or to pass `--berthd`.
pub fn berthd_path(given: Option<&Path>, build: &str) -> Result<PathBuf> {
    let berthd = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("executable has no directory"))?
            .join("berthd"),
    };
    if !berthd.exists() {
        bail!("{} not found: {build} or pass --berthd", berthd.display());
    }
    Ok(berthd)
}

/// How long a daemon gets from spawn to ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Berthd,
    Containerd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Berthd => "berthd",
            Kind::Containerd => "containerd",
        }
    }
}

/// containerd plugins that fail or skip on this kind of host, or reach outside the temp root.
pub const CONTAINERD_DISABLED: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    // No device-mapper, aufs, btrfs root or zfs here: these only log errors or skip.
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    // Creates /opt/containerd outside the temp root.
    "io.containerd.internal.v1.opt",
];

/// How to start one daemon; [`DaemonSpec::new`] has the defaults most benches use.
pub struct DaemonSpec<'a> {
    pub kind: Kind,
    pub bin: &'a Path,
    /// Holds root, state, socket, config and log; created if missing.
    pub dir: &'a Path,
    /// berthd's `--log-level`.
    pub log_level: &'a str,
    /// containerd's `disabled_plugins`.
    pub disabled_plugins: &'a [&'a str],
    /// Extra `key = value` lines for containerd's `[grpc]` section.
    pub grpc_extra: &'a [String],
    /// `PATH` for the daemon (and the shims it starts), if not inherited.
    pub path_env: Option<&'a str>,
    /// How long the daemon gets to exit after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

impl<'a> DaemonSpec<'a> {
    pub fn new(kind: Kind, bin: &'a Path, dir: &'a Path) -> Self {
        DaemonSpec {
            kind,
            bin,
            dir,
            log_level: "warn",
            disabled_plugins: CONTAINERD_DISABLED,
            grpc_extra: &[],
            path_env: None,
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// One running daemon. Stopped (SIGTERM, then SIGKILL) on drop; its directory is left to the
/// caller. The child gets `PR_SET_PDEATHSIG`, so it dies with the bench.
pub struct Daemon {
    kind: Kind,
    child: Option<Child>,
    spawned_at: Instant,
    socket: PathBuf,
    log: PathBuf,
    stop_timeout: Duration,
}

impl Daemon {
    /// Writes the config and spawns the daemon; does not wait for readiness.
    pub fn spawn(spec: &DaemonSpec) -> Result<Daemon> {
        let dir = spec.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let root = dir.join("root");
        let state = dir.join("state");
        let socket = dir.join("d.sock");
        let config = dir.join("config.toml");
        let log = dir.join("log");
        let mut cmd = Command::new(spec.bin);
        match spec.kind {
            Kind::Berthd => {
                // An explicit (empty) config so /etc/berth/config.toml cannot interfere.
                std::fs::write(&config, "").context("write berthd config")?;
                cmd.arg("--config")
                    .arg(&config)
                    .arg("--root")
                    .arg(&root)
                    .arg("--state")
                    .arg(&state)
                    .arg("--address")
                    .arg(&socket)
                    .arg("--log-level")
                    .arg(spec.log_level);
            }
            Kind::Containerd => {
                let disabled = spec
                    .disabled_plugins
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let grpc_extra: String =
                    spec.grpc_extra.iter().map(|l| format!("  {l}\n")).collect();
                let text = format!(
                    "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = [{disabled}]\n\n\
                     [grpc]\n  address = {sock:?}\n{grpc_extra}\n[ttrpc]\n  address = {ttrpc:?}\n\n\
                     [debug]\n  level = \"warn\"\n",
                    root = root.display().to_string(),
                    state = state.display().to_string(),
                    sock = socket.display().to_string(),
                    ttrpc = format!("{}.ttrpc", socket.display()),
                );
                std::fs::write(&config, text).context("write containerd config")?;
                cmd.arg("--config").arg(&config);
            }
        }
        let logf = File::create(&log).context("create daemon log")?;
        if let Some(path) = spec.path_env {
            cmd.env("PATH", path);
        }
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().context("dup log fd")?)
            .stderr(logf);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", spec.bin.display()))?;
        Ok(Daemon {
            kind: spec.kind,
            child: Some(child),
            spawned_at,
            socket,
            log,
            stop_timeout: spec.stop_timeout,
        })
    }

    /// Spawns the daemon and polls every 5 ms until it answers.
    pub async fn start(spec: &DaemonSpec<'_>) -> Result<Daemon> {
        let mut d = Daemon::spawn(spec)?;
        d.wait_ready(Duration::from_millis(5)).await?;
        Ok(d)
    }

    /// Polls every `poll` until [`probe`] succeeds; returns the time since spawn.
    pub async fn wait_ready(&mut self, poll: Duration) -> Result<Duration> {
        loop {
            self.check_alive()?;
            if probe(self.kind, &self.socket).await {
                return Ok(self.spawned_at.elapsed());
            }
            self.check_ready_timeout()?;
            tokio::time::sleep(poll).await;
        }
    }

    /// An error with the log's tail if the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.exit_status() {
            bail!(
                "{} exited during start-up ({status}); log {}:\n{}",
                self.kind.name(),
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// An error with the log's tail once [`READY_TIMEOUT`] has passed since spawn.
    pub fn check_ready_timeout(&self) -> Result<()> {
        if self.spawned_at.elapsed() > READY_TIMEOUT {
            bail!(
                "{} not ready on {} within {READY_TIMEOUT:?}; log:\n{}",
                self.kind.name(),
                self.socket.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's stdout and stderr.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last 30 lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after the spec's stop timeout.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + self.stop_timeout;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One readiness probe over a fresh connection: health Check for berthd (SERVING only),
/// Version for containerd.
async fn probe(kind: Kind, socket: &Path) -> bool {
    let call = async {
        let ch = connect_with(socket, None).await.ok()?;
        match kind {
            Kind::Berthd => {
                let r = HealthClient::new(ch)
                    .check(HealthCheckRequest::default())
                    .await
                    .ok()?;
                (r.into_inner().status == ServingStatus::Serving as i32).then_some(())
            }
            Kind::Containerd => VersionClient::new(ch).version(()).await.ok().map(|_| ()),
        }
    };
    matches!(timeout(Duration::from_secs(1), call).await, Ok(Some(())))
}

// ---------------------------------------------------------------------------------------------
// Mounts and the page cache
// ---------------------------------------------------------------------------------------------

/// A mount list from the gRPC API in berth_snapshotter's type, for its client-side mount code.
pub fn snapshotter_mounts(mounts: &[Mount]) -> Vec<berth_snapshotter::Mount> {
    mounts
        .iter()
        .map(|m| berth_snapshotter::Mount {
            kind: m.r#type.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect()
}

/// Unmounts every mount at or below `dir`, deepest first: a plain unmount first (so a loop
/// device with autoclear is released right away), detached if that fails. Returns how many.
pub fn detach_mounts_below(dir: &Path) -> usize {
    let ms = berth_snapshotter::mount::mounts_below(dir).unwrap_or_default();
    for m in &ms {
        if umount2(m, MntFlags::empty()).is_err() {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
    }
    ms.len()
}

/// Detaches every mount below its directory on drop (before the temp dir is removed).
pub struct MountsCleanup(pub PathBuf);

impl Drop for MountsCleanup {
    fn drop(&mut self) {
        let n = detach_mounts_below(&self.0);
        if n > 0 {
            eprintln!("cleanup: detached {n} mount(s) under {}", self.0.display());
        }
    }
}

/// Flushes dirty pages, then drops clean ones (needs root).
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("write /proc/sys/vm/drop_caches")
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM, RssAnon) or count (Threads, PPid).
pub fn proc_status(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .ok_or_else(|| anyhow!("no {field} in {path}"))?;
    line[field.len() + 1..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("bad {field} line in {path}: {line:?}"))
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report table
// ---------------------------------------------------------------------------------------------

/// The middle value (the mean of the middle two for an even count); NaN if empty.
pub fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    let m = s.len() / 2;
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[m],
        _ => (s[m - 1] + s[m]) / 2.0,
    }
}

/// Nearest-rank percentile, `p` in 0..=1; NaN if empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// "PASS" if `ratio >= goal` (`at_least`) or `ratio <= goal`, else "FAIL".
pub fn verdict(ratio: f64, goal: f64, at_least: bool) -> &'static str {
    let ok = if at_least {
        ratio >= goal
    } else {
        ratio <= goal
    };
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Prints rows as an aligned table under a dashed rule; the first column left-aligned, the
/// rest right-aligned.
pub fn table<H: AsRef<str>>(header: &[H], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.as_ref().len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                let _ = write!(s, "{c:<width$}  ", width = w[i]);
            } else {
                let _ = write!(s, "{c:>width$}  ", width = w[i]);
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(AsRef::as_ref).collect());
    println!(
        "{}",
        "-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1))
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
