//! berth-bench: berthd side by side with stock containerd 1.6 on the same machine and disk.
//!
//! Three measurements, each reported as a ratio against containerd (and `dd` for ingest):
//!
//! 1. Ingest throughput of one random blob (1 GiB by default) through the gRPC
//!    `Content.Write` API (STAT with ref/total/expected, WRITE in 1 MiB chunks, COMMIT; the
//!    same client code for both daemons), against `dd bs=1M conv=fsync` to the same disk as
//!    the baseline. The page cache is dropped before every run when the host allows it,
//!    otherwise the source file is made hot before every run; the report says which.
//!    Then each run waits `--settle-ms` so that none overlaps the host reclaiming the memory
//!    a drop freed (virtual machines with free page reporting).
//! 2. Start-to-ready time: from spawn to the first successful grpc health `Check` (berthd)
//!    or `Version` call (containerd), polling every ~2 ms, fresh empty root each run.
//! 3. Idle RSS: `VmRSS` of the daemon process after ready and ~2 s idle.
//!
//! containerd is started by the bench itself (own temp root, state, socket and a generated
//! `version = 2` config with the CRI and the plugins that cannot load here disabled); the
//! system service is never touched. Daemons are killed and temp directories removed on
//! exit, on error and on SIGINT/SIGTERM; children also get `PR_SET_PDEATHSIG`.
//!
//! Run: `cargo run --release -p berth-tests --bin berth-bench -- [--size-mib 1024] [--runs 3]`

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context, Result};
use berth_proto::containerd::services::content::v1::{
    content_client::ContentClient, WriteAction, WriteContentRequest, WriteContentResponse,
};
use berth_tests::bench::{
    self, berthd_path, drop_caches, loadavg, main_on_runtime, median, proc_status, verdict,
    DaemonSpec, Kind, CONTAINERD_DISABLED,
};
use berth_tests::connect_with;
use bytes::Bytes;
use clap::Parser;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::Streaming;

/// Size of one WRITE message (and of dd's blocks).
const CHUNK: usize = 1 << 20;
/// Largest gRPC message either side sends (containerd's default).
const MAX_MESSAGE: usize = 16 << 20;
/// Namespace the blobs are written in.
const NAMESPACE: &str = "berth-bench";
/// Interval between readiness probes: the measured start-up is rounded up to the next probe,
/// an error that must stay small next to berthd's few milliseconds (a probe before the socket
/// exists is one failing connect).
const POLL_INTERVAL: Duration = Duration::from_micros(500);
/// How long one request/response step of a write session may take (COMMIT fsyncs it all).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "berth-bench",
    about = "berthd vs stock containerd 1.6: ingest throughput, start-up time, idle RSS"
)]
struct Args {
    /// Size of the random blob to ingest, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Ingest runs and idle-RSS runs per daemon (median reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Start-up runs per daemon (median reported).
    #[arg(long, default_value_t = 10)]
    startup_runs: usize,
    /// Idle time before reading VmRSS, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
    /// Directory for the blob, the daemons' roots and dd's target (one disk for all).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// berthd binary (default: `berthd` next to this executable).
    #[arg(long)]
    berthd: Option<PathBuf>,
    /// containerd binary.
    #[arg(long, default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
    /// WRITE messages in flight before waiting for a response. 1 is lockstep, as
    /// containerd's own client (`content.Copy` over the remote writer) does.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Also disable containerd's runtime, task, monitor and diff plugins, leaving roughly
    /// the services berthd has.
    #[arg(long)]
    containerd_minimal: bool,
    /// Do not drop the page cache; make the source file hot before every ingest run instead.
    #[arg(long)]
    hot: bool,
    /// Pause after preparing the page cache and before every ingest run, in milliseconds.
    /// Dropping caches is the bench's own doing and frees gigabytes at once; a virtual
    /// machine with free page reporting hands them to its host a couple of seconds later,
    /// and a run that overlaps that finds some of its new page-cache pages cheap and others
    /// many times dearer, at random. After the pause every run meets memory as a machine
    /// that has been up a while has it: free memory already reclaimed by the host.
    #[arg(long, default_value_t = 5000)]
    settle_ms: u64,
    /// Skip the ingest measurement.
    #[arg(long)]
    skip_ingest: bool,
}

impl Args {
    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let mut s = format!(
            "cargo run --release -p berth-tests --bin berth-bench -- --size-mib {} --runs {} \
             --startup-runs {} --idle-ms {} --window {} --settle-ms {} --dir {}",
            self.size_mib,
            self.runs,
            self.startup_runs,
            self.idle_ms,
            self.window,
            self.settle_ms,
            self.dir.display()
        );
        if let Some(b) = &self.berthd {
            let _ = write!(s, " --berthd {}", b.display());
        }
        if self.containerd != Path::new("/usr/bin/containerd") {
            let _ = write!(s, " --containerd {}", self.containerd.display());
        }
        for (on, flag) in [
            (self.containerd_minimal, "--containerd-minimal"),
            (self.hot, "--hot"),
            (self.skip_ingest, "--skip-ingest"),
        ] {
            if on {
                let _ = write!(s, " {flag}");
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------------

/// Additionally disabled with `--containerd-minimal`: what berthd does not serve yet.
const CONTAINERD_MINIMAL_DISABLED: &[&str] = &[
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.internal.v1.restart",
    "io.containerd.differ.v1.walking",
    "io.containerd.service.v1.diff-service",
    "io.containerd.grpc.v1.diff",
];

/// Everything the daemons need to be started.
struct Env {
    base: PathBuf,
    berthd: PathBuf,
    containerd: PathBuf,
    containerd_minimal: bool,
}

impl Env {
    fn disabled_plugins(&self) -> Vec<&'static str> {
        let mut v = CONTAINERD_DISABLED.to_vec();
        if self.containerd_minimal {
            v.extend_from_slice(CONTAINERD_MINIMAL_DISABLED);
        }
        v
    }
}

/// One daemon in its own fresh directory, removed on drop after the daemon stopped.
struct Daemon {
    // Declared first, so dropped (stopped) before the directory goes.
    inner: bench::Daemon,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Creates a fresh directory and spawns the daemon; does not wait for readiness.
    fn spawn(env: &Env, kind: Kind) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", kind.name()))
            .tempdir_in(&env.base)
            .context("create daemon directory")?;
        let bin = match kind {
            Kind::Berthd => &env.berthd,
            Kind::Containerd => &env.containerd,
        };
        let disabled = env.disabled_plugins();
        let grpc_extra = [
            format!("max_recv_message_size = {MAX_MESSAGE}"),
            format!("max_send_message_size = {MAX_MESSAGE}"),
        ];
        let spec = DaemonSpec {
            disabled_plugins: &disabled,
            grpc_extra: &grpc_extra,
            ..DaemonSpec::new(kind, bin, dir.path())
        };
        Ok(Daemon {
            inner: bench::Daemon::spawn(&spec)?,
            _dir: dir,
        })
    }

    /// Polls every [`POLL_INTERVAL`] until the daemon answers; returns the time since spawn.
    async fn wait_ready(&mut self) -> Result<Duration> {
        self.inner.wait_ready(POLL_INTERVAL).await
    }

    fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM) or count (Threads).
    fn proc_status(&self, field: &str) -> Result<u64> {
        proc_status(self.pid(), field)
    }
}

// ---------------------------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------------------------

/// The blob to ingest.
struct Blob {
    path: PathBuf,
    size: u64,
    digest: String,
}

/// Writes `size` bytes of xoshiro256** output to `path`, fsyncs, returns the sha256 digest.
fn generate_blob(path: &Path, size: u64, cancel: &AtomicBool) -> Result<Blob> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        ^ u64::from(std::process::id()) << 32;
    let mut s = [0u64; 4];
    let mut z = seed;
    for v in &mut s {
        // splitmix64 to seed the state.
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *v = x ^ (x >> 31);
    }
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        ensure!(!cancel.load(Ordering::Relaxed), "cancelled");
        for word in buf.chunks_exact_mut(8) {
            let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
            let t = s[1] << 17;
            s[2] ^= s[0];
            s[3] ^= s[1];
            s[1] ^= s[2];
            s[0] ^= s[3];
            s[2] ^= t;
            s[3] = s[3].rotate_left(45);
            word.copy_from_slice(&r.to_le_bytes());
        }
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&buf[..n])
            .with_context(|| format!("write {}", path.display()))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    Ok(Blob {
        path: path.to_path_buf(),
        size,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
    })
}

/// Reads the blob in CHUNK pieces on a plain thread, a few chunks ahead of the sender, into a
/// few buffers it reuses as the encoder is done with them (as containerd's client copies
/// through one pooled 1 MiB buffer: a fresh buffer per chunk costs page faults on every
/// chunk, CPU this 2-core bench would take from the daemon it measures).
fn spawn_reader(path: PathBuf) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let (back, returned) = std::sync::mpsc::channel();
        loop {
            let mut buf = returned.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            let mut n = 0;
            while n < CHUNK {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            if n == 0 {
                return;
            }
            let chunk = Bytes::from_owner(Pooled {
                buf,
                len: n,
                back: back.clone(),
            });
            if tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
    });
    rx
}

/// A read buffer that goes back to the reader once the chunk in it is dropped.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    back: std::sync::mpsc::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A reader that has finished no longer wants it.
        let _ = self.back.send(std::mem::take(&mut self.buf));
    }
}

async fn next_response(
    resp: &mut Streaming<WriteContentResponse>,
    what: &str,
) -> Result<WriteContentResponse> {
    timeout(STEP_TIMEOUT, resp.message())
        .await
        .map_err(|_| anyhow!("{what}: no response within {STEP_TIMEOUT:?}"))?
        .with_context(|| format!("{what}: gRPC error"))?
        .ok_or_else(|| anyhow!("{what}: server closed the stream"))
}

/// What one ingest measured.
struct Ingested {
    /// First request to COMMIT response.
    elapsed: Duration,
    /// COMMIT sent to COMMIT response (mostly the fsync of the blob).
    commit_time: Duration,
    /// A protocol difference from containerd, if any.
    warning: Option<String>,
}

/// STAT (ref, total, expected) / WRITE 1 MiB chunks / COMMIT (total, expected) over one
/// Content.Write stream, as containerd's remote writer does. Returns the time from the
/// first request to the COMMIT response.
async fn ingest(socket: &Path, blob: &Blob, reference: &str, window: usize) -> Result<Ingested> {
    let ch = timeout(Duration::from_secs(10), connect_with(socket, None))
        .await
        .map_err(|_| anyhow!("connect timed out"))?
        .context("connect")?;
    let mut client = ContentClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let size = i64::try_from(blob.size)?;
    let window = window.max(1);

    let started = Instant::now();
    let mut chunks = spawn_reader(blob.path.clone());
    let (tx, rx) = mpsc::channel::<WriteContentRequest>(window + 2);
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.to_string(),
        total: size,
        expected: blob.digest.clone(),
        ..Default::default()
    })
    .await
    .map_err(|_| anyhow!("request stream closed"))?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "containerd-namespace",
        MetadataValue::from_static(NAMESPACE),
    );
    let mut resp = timeout(STEP_TIMEOUT, client.write(req))
        .await
        .map_err(|_| anyhow!("Write call: no response headers within {STEP_TIMEOUT:?}"))?
        .context("Write call")?
        .into_inner();
    let stat = next_response(&mut resp, "STAT").await?;
    ensure!(
        stat.offset == 0,
        "STAT: fresh ingest at offset {}",
        stat.offset
    );

    let mut offset: i64 = 0;
    let mut acked: i64 = 0;
    let mut in_flight: Vec<i64> = Vec::with_capacity(window);
    let mut check = |r: WriteContentResponse, want: i64| -> Result<()> {
        ensure!(
            r.offset == want,
            "WRITE: server at offset {}, expected {want}",
            r.offset
        );
        acked = want;
        Ok(())
    };
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.context("read blob")?;
        let len = chunk.len() as i64;
        tx.send(WriteContentRequest {
            action: WriteAction::Write as i32,
            offset,
            data: chunk,
            ..Default::default()
        })
        .await
        .map_err(|_| anyhow!("request stream closed at offset {offset}"))?;
        offset += len;
        in_flight.push(offset);
        if in_flight.len() >= window {
            let want = in_flight.remove(0);
            check(next_response(&mut resp, "WRITE").await?, want)?;
        }
    }
    for want in std::mem::take(&mut in_flight) {
        check(next_response(&mut resp, "WRITE").await?, want)?;
    }
    ensure!(
        acked == size,
        "wrote {acked} bytes, blob has {size} (source changed?)"
    );
    tx.send(WriteContentRequest {
        action: WriteAction::Commit as i32,
        total: size,
        offset,
        expected: blob.digest.clone(),
        ..Default::default()
    })
    .await
    .map_err(|_| anyhow!("request stream closed before COMMIT"))?;
    let commit_started = Instant::now();
    let commit = next_response(&mut resp, "COMMIT").await?;
    let elapsed = started.elapsed();
    let commit_time = commit_started.elapsed();
    drop(tx);
    // containerd answers COMMIT with the committed digest; a different one is reported (the
    // daemon verified the expected digest, or COMMIT would have failed), not fatal.
    let warning = (commit.digest != blob.digest).then(|| {
        format!(
            "COMMIT response carries digest {:?}, containerd sends the committed {}",
            commit.digest, blob.digest
        )
    });
    Ok(Ingested {
        elapsed,
        commit_time,
        warning,
    })
}

/// `dd if=SRC of=DST bs=1M conv=fsync`, bounded.
async fn run_dd(src: &Path, dst: &Path, limit: Duration) -> Result<Duration> {
    let mut cmd = Command::new("dd");
    cmd.arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .args(["bs=1M", "conv=fsync", "status=none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().context("spawn dd")?;
    let mut guard = ChildGuard(Some(child));
    loop {
        let c = guard.0.as_mut().expect("dd child");
        if let Some(status) = c.try_wait().context("wait for dd")? {
            let elapsed = started.elapsed();
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            guard.0 = None;
            ensure!(status.success(), "dd failed ({status}): {err}");
            return Ok(elapsed);
        }
        ensure!(started.elapsed() < limit, "dd took longer than {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Kills and reaps a child on drop.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads the whole file so it sits in the page cache.
fn make_hot(path: &Path) -> Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Dd,
    Daemon(Kind),
}

#[derive(Default)]
struct IngestResults {
    dd: Vec<f64>,
    berthd: Vec<f64>,
    containerd: Vec<f64>,
    /// VmHWM (KiB) of the daemon after the COMMIT: peak memory during ingest.
    berthd_hwm: Vec<f64>,
    containerd_hwm: Vec<f64>,
    /// CPU seconds (user + system) of the daemon and of this client per ingest,
    /// [berthd, containerd].
    daemon_cpu: [Vec<f64>; 2],
    client_cpu: [Vec<f64>; 2],
    /// Protocol differences from containerd noticed on the way.
    warnings: Vec<String>,
}

async fn bench_ingest(env: &Env, args: &Args, blob: &Blob, cold: bool) -> Result<IngestResults> {
    let mib = blob.size as f64 / f64::from(1 << 20);
    // Generous but bounded: 20 s plus 5 MiB/s.
    let limit = Duration::from_secs(20) + Duration::from_secs_f64(mib / 5.0);
    let order = [
        Sink::Dd,
        Sink::Daemon(Kind::Berthd),
        Sink::Daemon(Kind::Containerd),
    ];
    let mut out = IngestResults::default();
    for run in 0..args.runs {
        for i in 0..order.len() {
            // Rotate the order each run so no sink always follows the same neighbour.
            let sink = order[(i + run) % order.len()];
            let prepare = || async {
                if cold {
                    drop_caches()?;
                } else {
                    make_hot(&blob.path)?;
                }
                tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
                anyhow::Ok(())
            };
            match sink {
                Sink::Dd => {
                    let dst = env.base.join(format!("dd-{run}.out"));
                    prepare().await?;
                    let r = run_dd(&blob.path, &dst, limit).await;
                    let _ = std::fs::remove_file(&dst);
                    let t = r?;
                    let v = mib / t.as_secs_f64();
                    println!(
                        "  ingest run {}: dd          {v:8.1} MiB/s ({t:.2?})",
                        run + 1
                    );
                    out.dd.push(v);
                }
                Sink::Daemon(kind) => {
                    prepare().await?;
                    let mut d = Daemon::spawn(env, kind)?;
                    d.wait_ready().await?;
                    let reference = format!("berth-bench-{}-{run}", kind.name());
                    let (daemon0, client0) = (proc_cpu_secs(d.pid())?, self_cpu_secs());
                    let Ingested {
                        elapsed: t,
                        commit_time,
                        warning,
                    } = timeout(
                        limit,
                        ingest(d.inner.socket(), blob, &reference, args.window),
                    )
                    .await
                    .map_err(|_| anyhow!("{} ingest took longer than {limit:?}", kind.name()))?
                    .with_context(|| {
                        format!("ingest into {}; log:\n{}", kind.name(), d.inner.log_tail())
                    })?;
                    if let Some(w) = warning {
                        let w = format!("{}: {w}", kind.name());
                        if !out.warnings.contains(&w) {
                            out.warnings.push(w);
                        }
                    }
                    let daemon_cpu = proc_cpu_secs(d.pid())? - daemon0;
                    let client_cpu = self_cpu_secs() - client0;
                    let hwm = d.proc_status("VmHWM")? as f64;
                    let v = mib / t.as_secs_f64();
                    println!(
                        "  ingest run {}: {:<11} {v:8.1} MiB/s ({t:.2?}, COMMIT {commit_time:.2?}, \
                         peak RSS {:.1} MiB, CPU daemon {daemon_cpu:.2} s, client {client_cpu:.2} s, \
                         pid {})",
                        run + 1,
                        kind.name(),
                        hwm / 1024.0,
                        d.pid()
                    );
                    let k = usize::from(kind == Kind::Containerd);
                    out.daemon_cpu[k].push(daemon_cpu);
                    out.client_cpu[k].push(client_cpu);
                    match kind {
                        Kind::Berthd => {
                            out.berthd.push(v);
                            out.berthd_hwm.push(hwm);
                        }
                        Kind::Containerd => {
                            out.containerd.push(v);
                            out.containerd_hwm.push(hwm);
                        }
                    }
                    // Stops the daemon, then removes its directory.
                    drop(d);
                    // SAFETY: sync(2) has no preconditions.
                    unsafe { libc::sync() };
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Start-up and idle RSS
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct StartupResults {
    berthd: Vec<f64>,
    containerd: Vec<f64>,
}

async fn bench_startup(env: &Env, runs: usize) -> Result<StartupResults> {
    // One untimed start each so both binaries and their libraries are in the page cache.
    for kind in [Kind::Berthd, Kind::Containerd] {
        let mut d = Daemon::spawn(env, kind)?;
        d.wait_ready().await?;
    }
    let mut out = StartupResults::default();
    for run in 0..runs {
        let kinds = if run % 2 == 0 {
            [Kind::Berthd, Kind::Containerd]
        } else {
            [Kind::Containerd, Kind::Berthd]
        };
        for kind in kinds {
            let mut d = Daemon::spawn(env, kind)?;
            let t = d.wait_ready().await?;
            let ms = t.as_secs_f64() * 1e3;
            match kind {
                Kind::Berthd => out.berthd.push(ms),
                Kind::Containerd => out.containerd.push(ms),
            }
            println!(
                "  start-up run {}: {:<11} {ms:8.2} ms",
                run + 1,
                kind.name()
            );
        }
    }
    Ok(out)
}

#[derive(Default)]
struct RssResults {
    berthd: Vec<f64>,
    containerd: Vec<f64>,
    /// RssAnon (KiB): private memory, without the mapped binary and libraries.
    berthd_anon: Vec<f64>,
    containerd_anon: Vec<f64>,
    berthd_threads: u64,
    containerd_threads: u64,
}

async fn bench_rss(env: &Env, runs: usize, idle: Duration) -> Result<RssResults> {
    let mut out = RssResults::default();
    for run in 0..runs {
        // Both idle at the same time: half the wall-clock time, same conditions.
        let mut b = Daemon::spawn(env, Kind::Berthd)?;
        let mut c = Daemon::spawn(env, Kind::Containerd)?;
        b.wait_ready().await?;
        c.wait_ready().await?;
        tokio::time::sleep(idle).await;
        let (rb, rc) = (b.proc_status("VmRSS")?, c.proc_status("VmRSS")?);
        out.berthd_anon.push(b.proc_status("RssAnon")? as f64);
        out.containerd_anon.push(c.proc_status("RssAnon")? as f64);
        out.berthd_threads = b.proc_status("Threads")?;
        out.containerd_threads = c.proc_status("Threads")?;
        println!(
            "  idle RSS run {}: berthd {:.1} MiB ({} threads), containerd {:.1} MiB ({} threads)",
            run + 1,
            rb as f64 / 1024.0,
            out.berthd_threads,
            rc as f64 / 1024.0,
            out.containerd_threads
        );
        out.berthd.push(rb as f64);
        out.containerd.push(rc as f64);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn fmt_list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where `dir` lives: "<source> (<fstype>)" from /proc/self/mountinfo.
fn filesystem_of(dir: &Path) -> String {
    let Ok(md) = std::fs::metadata(dir) else {
        return "?".into();
    };
    let dev = md.dev();
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(2) == Some(&want.as_str()) {
            if let Some(sep) = f.iter().position(|x| *x == "-") {
                let fstype = f.get(sep + 1).unwrap_or(&"?");
                let source = f.get(sep + 2).unwrap_or(&"?");
                return format!("{source} ({fstype}, dev {want})");
            }
        }
    }
    format!("dev {want}")
}

/// User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat.
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .ok_or_else(|| anyhow!("bad utime/stime in {path}"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// User + system CPU seconds of this process so far.
fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Path, size, build time of a binary and the HEAD of the workspace it was built from.
fn binary_info(bin: &Path) -> String {
    let mut s = bin.display().to_string();
    if let Ok(md) = std::fs::metadata(bin) {
        let age = md
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or_else(
                || "?".into(),
                |a| format!("{:.0} min", a.as_secs_f64() / 60.0),
            );
        let _ = write!(s, " ({:.1} MB, built {age} ago", md.len() as f64 / 1e6);
        // The workspace HEAD says something only for a binary built in this workspace.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let in_workspace = std::fs::canonicalize(bin).is_ok_and(|b| b.starts_with(&workspace));
        let head = Command::new("git")
            .args([
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "log",
                "-1",
                "--format=%h %s",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if in_workspace && !head.is_empty() {
            let head: String = head.chars().take(60).collect();
            let _ = write!(s, "; workspace HEAD {head}");
        }
        s.push(')');
    }
    s
}

fn tool_version(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

async fn run(args: Args, cancel: Arc<AtomicBool>) -> Result<()> {
    ensure!(args.size_mib > 0, "--size-mib must be positive");
    ensure!(args.runs > 0, "--runs must be positive");
    ensure!(args.startup_runs > 0, "--startup-runs must be positive");
    let berthd = berthd_path(
        args.berthd.as_deref(),
        "run `cargo build --release -p berth-services`",
    )?;
    ensure!(
        args.containerd.exists(),
        "{} not found (Debian package `containerd`)",
        args.containerd.display()
    );
    std::fs::create_dir_all(&args.dir)?;
    let base = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("create temp dir in {}", args.dir.display()))?;
    let env = Env {
        base: base.path().to_path_buf(),
        berthd: berthd.clone(),
        containerd: args.containerd.clone(),
        containerd_minimal: args.containerd_minimal,
    };
    let fs = filesystem_of(base.path());
    let containerd_version = tool_version(&args.containerd, "--version");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("berth-bench: {}", args.command());
    println!("  berthd:     {}", binary_info(&berthd));
    println!("  containerd: {containerd_version}");
    println!(
        "  temp dir:   {} on {fs} (blob, both daemons' roots, dd target)",
        base.path().display()
    );
    println!("  cpus:       {cpus}, load average {}", loadavg());

    // 1. Ingest.
    let mut cache_mode = String::from("-");
    let ingest_results = if args.skip_ingest {
        None
    } else {
        let size = args.size_mib << 20;
        println!("generating {} MiB of random data ...", args.size_mib);
        let path = base.path().join("blob.bin");
        let c = cancel.clone();
        let blob = tokio::task::spawn_blocking(move || generate_blob(&path, size, &c)).await??;
        println!("  {} {}", blob.path.display(), blob.digest);
        let cold = !args.hot && drop_caches().is_ok();
        cache_mode = if cold {
            "cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before every run".into()
        } else if args.hot {
            "hot: source read into the page cache before every run (--hot)".into()
        } else {
            "hot: cannot drop caches here, source read into the page cache before every run".into()
        };
        if args.settle_ms > 0 {
            let _ = write!(cache_mode, ", then {} ms to settle", args.settle_ms);
        }
        println!("ingest ({cache_mode}) ...");
        Some(bench_ingest(&env, &args, &blob, cold).await?)
    };

    // 2. Start-up, once the ingests' dirty pages are on disk (their write-back would compete
    // with the daemons for the CPUs and the disk).
    println!("start-up ...");
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let startup = bench_startup(&env, args.startup_runs).await?;

    // 3. Idle RSS.
    println!("idle RSS ...");
    let rss = bench_rss(&env, args.runs, Duration::from_millis(args.idle_ms)).await?;

    // Report.
    let mut rows: Vec<[String; 7]> = Vec::new();
    let header = [
        "metric",
        "berthd",
        "containerd",
        "dd",
        "ratio",
        "target",
        "result",
    ]
    .map(String::from);
    if let Some(r) = &ingest_results {
        let (b, c, d) = (median(&r.berthd), median(&r.containerd), median(&r.dd));
        rows.push([
            "ingest MiB/s".into(),
            format!("{b:.1}"),
            format!("{c:.1}"),
            format!("{d:.1}"),
            format!("berth/dd {:.2}", b / d),
            ">= 0.90".into(),
            verdict(b / d, 0.9, true).into(),
        ]);
        rows.push([
            "ingest MiB/s".into(),
            format!("{b:.1}"),
            format!("{c:.1}"),
            format!("{d:.1}"),
            format!("berth/ctd {:.2}", b / c),
            ">= 1.00".into(),
            verdict(b / c, 1.0, true).into(),
        ]);
    }
    let (sb, sc) = (median(&startup.berthd), median(&startup.containerd));
    rows.push([
        "start-to-ready ms".into(),
        format!("{sb:.2}"),
        format!("{sc:.2}"),
        "-".into(),
        format!("berth/ctd {:.3}", sb / sc),
        "<= 0.20".into(),
        verdict(sb / sc, 0.2, false).into(),
    ]);
    let (rb, rc) = (
        median(&rss.berthd) / 1024.0,
        median(&rss.containerd) / 1024.0,
    );
    rows.push([
        "idle RSS MiB".into(),
        format!("{rb:.1}"),
        format!("{rc:.1}"),
        "-".into(),
        format!("berth/ctd {:.3}", rb / rc),
        "<= 0.25".into(),
        verdict(rb / rc, 0.25, false).into(),
    ]);
    let (ab, ac) = (
        median(&rss.berthd_anon) / 1024.0,
        median(&rss.containerd_anon) / 1024.0,
    );
    rows.push([
        "idle RssAnon MiB".into(),
        format!("{ab:.1}"),
        format!("{ac:.1}"),
        "-".into(),
        format!("berth/ctd {:.3}", ab / ac),
        "(info)".into(),
        "-".into(),
    ]);
    if let Some(r) = &ingest_results {
        let (hb, hc) = (
            median(&r.berthd_hwm) / 1024.0,
            median(&r.containerd_hwm) / 1024.0,
        );
        rows.push([
            "peak RSS in ingest MiB".into(),
            format!("{hb:.1}"),
            format!("{hc:.1}"),
            "-".into(),
            format!("berth/ctd {:.3}", hb / hc),
            "(info)".into(),
            "-".into(),
        ]);
    }
    if let Some(r) = &ingest_results {
        let (db, dc) = (median(&r.daemon_cpu[0]), median(&r.daemon_cpu[1]));
        rows.push([
            "daemon CPU s / ingest".into(),
            format!("{db:.2}"),
            format!("{dc:.2}"),
            "-".into(),
            format!("berth/ctd {:.3}", db / dc),
            "(info)".into(),
            "-".into(),
        ]);
        rows.push([
            "client CPU s / ingest".into(),
            format!("{:.2}", median(&r.client_cpu[0])),
            format!("{:.2}", median(&r.client_cpu[1])),
            "-".into(),
            "-".into(),
            "(info)".into(),
            "-".into(),
        ]);
    }
    rows.push([
        "threads when idle".into(),
        rss.berthd_threads.to_string(),
        rss.containerd_threads.to_string(),
        "-".into(),
        "-".into(),
        "(info)".into(),
        "-".into(),
    ]);

    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String; 7]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 0 || i == 4 || i == 5 {
                let _ = write!(s, "{cell:<w$}  ");
            } else {
                let _ = write!(s, "{cell:>w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    println!();
    println!("=== berth-bench results (medians) ===");
    println!("{}", line(&header));
    println!(
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    );
    for row in &rows {
        println!("{}", line(row));
    }
    println!();
    if let Some(r) = &ingest_results {
        println!(
            "ingest: {} MiB random blob, Content.Write STAT/WRITE(1 MiB)/COMMIT, window {} \
             ({}), namespace {NAMESPACE}, median of {} runs; page cache {cache_mode}",
            args.size_mib,
            args.window,
            if args.window == 1 {
                "lockstep like containerd's client"
            } else {
                "pipelined"
            },
            args.runs
        );
        println!("  dd         MiB/s: {}", fmt_list(&r.dd, 1));
        println!("  berthd     MiB/s: {}", fmt_list(&r.berthd, 1));
        println!("  containerd MiB/s: {}", fmt_list(&r.containerd, 1));
        for w in &r.warnings {
            println!("  compatibility warning: {w}");
        }
    }
    println!(
        "start-up: spawn -> first OK health Check (berthd) / Version (containerd), polled every \
         {POLL_INTERVAL:?}, fresh empty root, binaries hot, median of {}",
        args.startup_runs
    );
    println!("  berthd     ms: {}", fmt_list(&startup.berthd, 2));
    println!("  containerd ms: {}", fmt_list(&startup.containerd, 2));
    println!(
        "idle RSS: VmRSS (RssAnon + mapped files) of the daemon process after ready + {} ms \
         idle, median of {}",
        args.idle_ms, args.runs
    );
    println!(
        "  berthd     MiB: {}",
        fmt_list(
            &rss.berthd.iter().map(|k| k / 1024.0).collect::<Vec<_>>(),
            1
        )
    );
    println!(
        "  containerd MiB: {}",
        fmt_list(
            &rss.containerd
                .iter()
                .map(|k| k / 1024.0)
                .collect::<Vec<_>>(),
            1
        )
    );
    println!(
        "containerd: {containerd_version}; disabled plugins: {}",
        env.disabled_plugins().join(", ")
    );
    println!(
        "load average at the end: {} (other work on the machine skews every figure)",
        loadavg()
    );
    println!("command: {}", args.command());
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cancel = Arc::new(AtomicBool::new(false));
    // Stops the blob generator threads, which outlive a dropped future.
    main_on_runtime("berth-bench", run(args, cancel.clone()), || {
        cancel.store(true, Ordering::Relaxed)
    })
}
