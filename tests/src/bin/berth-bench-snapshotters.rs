//! berth-bench-snapshotters: berthd's snapshotters (`overlayfs`, `native`, `aufs`,
//! `devmapper`) side by side on the same machine and disk, with stock containerd 1.6's
//! `overlayfs` as the reference.
//!
//! For every snapshotter, on top of a committed parent holding a few small files:
//! 1. Prepare / Commit / Remove latency over the Snapshots gRPC API (median, p90 of `--runs`,
//!    after one untimed warm-up round; the targets take turns, round by round);
//! 2. sequential write: a `--file-mib` file in a mounted active snapshot, 1 MiB writes, fsync
//!    (MiB/s, median of `--io-runs`);
//! 3. sequential read of a `--file-mib` file that lives in a committed lower layer, through
//!    the mount of a child active snapshot, 1 MiB reads: cold (sync + drop_caches first),
//!    then warm (the second read) (MiB/s, median of `--io-runs`, after one untimed round);
//! 4. first-write copy-up of a 64 MiB lower-layer file: open for writing (no truncate),
//!    write 1 byte at offset 0, fsync, close (median of `--copyup-runs`, a fresh child each).
//!
//! Then one table with every snapshotter's figures and their ratio to containerd overlayfs,
//! and the target: aufs's (FUSE) read throughput >= half of berthd overlayfs's.
//!
//! Both daemons run in their own temp root/state/socket under `--dir` (containerd with a
//! generated `version = 2` config, CRI off; the system service is never touched); berthd is
//! the one next to this executable. Every snapshot is created under a lease of its target
//! (so no GC takes it mid-run); 2-4 run one target after the other, under a second lease that
//! is deleted with a synchronous GC (`sync: true`) once the target's files are measured, so
//! their gigabytes are off the disk before the next target starts. Mounts go
//! through `berth_snapshotter::MountGuard` (bind, overlay, FUSE via `mount.fuse3`, block
//! devices). A snapshotter the daemon did not register, or registered with an init error, is
//! reported as unavailable and skipped. Cleanup, also on error and on SIGINT/SIGTERM: mounts
//! under the temp dir detached, loop devices backed by files in it released, daemons stopped,
//! temp dir removed. Needs root (mount, drop_caches).
//!
//! Run: `cargo run --release -p berth-tests --bin berth-bench-snapshotters -- [--file-mib 1024]
//! [--runs 20] [--copyup-runs 5] [--io-runs 5] [--dir /var/tmp] [--snapshotters overlayfs,native,aufs,devmapper]`
//! (build berth-aufs first: `cargo build --release -p berth-unionfs`).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_proto::containerd::services::introspection::v1::{
    introspection_client::IntrospectionClient, PluginsRequest,
};
use berth_proto::containerd::services::leases::v1::{
    leases_client::LeasesClient, CreateRequest as LeaseCreate, DeleteRequest as LeaseDelete,
};
use berth_proto::containerd::services::snapshots::v1::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest,
};
use berth_proto::containerd::types::Mount;
use berth_snapshotter::MountGuard;
use berth_tests::bench::{
    drop_caches, loadavg, main_on_runtime, median, percentile, snapshotter_mounts, table, Daemon,
    DaemonSpec, Kind,
};
use berth_tests::{connect, Ctx, Svc};
use clap::Parser;
use tokio::time::timeout;
use tonic::transport::Channel;

/// How long a daemon gets to exit after SIGTERM before SIGKILL (this bench's own, longer
/// than the others').
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one gRPC call may take (a native prepare copies a whole `--file-mib` parent).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
const NAMESPACE: &str = "berth-bench";
const MIB: usize = 1 << 20;
/// Size of the copy-up file, MiB.
const COPYUP_MIB: usize = 64;
/// Small files in the common parent layer.
const BASE_FILES: usize = 8;
const SNAPSHOTTER_PLUGIN: &str = "io.containerd.snapshotter.v1";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "berth-bench-snapshotters",
    about = "berthd's snapshotters (overlayfs, native, aufs, devmapper) vs containerd 1.6 overlayfs: \
             prepare/commit/remove latency, write/read throughput, copy-up"
)]
struct Args {
    /// Size of the write and read files, MiB.
    #[arg(long, default_value_t = 1024)]
    file_mib: usize,
    /// Timed Prepare/Commit/Remove rounds per snapshotter.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Copy-up rounds per snapshotter (each on a fresh child).
    #[arg(long, default_value_t = 5)]
    copyup_runs: usize,
    /// Rounds of the write and of the cold + warm read per snapshotter (median reported).
    #[arg(long, default_value_t = 5)]
    io_runs: usize,
    /// berthd snapshotters, comma separated.
    #[arg(
        long,
        default_value = "overlayfs,native,aufs,devmapper",
        value_delimiter = ','
    )]
    snapshotters: Vec<String>,
    /// Directory for both daemons' roots and the mount points (one disk for all).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// berthd binary (default: `berthd` next to this executable).
    #[arg(long)]
    berthd: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
}

impl Args {
    fn command(&self) -> String {
        let mut s = format!(
            "cargo run --release -p berth-tests --bin berth-bench-snapshotters -- --file-mib {} \
             --runs {} --copyup-runs {} --io-runs {} --snapshotters {} --dir {}",
            self.file_mib,
            self.runs,
            self.copyup_runs,
            self.io_runs,
            self.snapshotters.join(","),
            self.dir.display(),
        );
        if let Some(b) = &self.berthd {
            let _ = write!(s, " --berthd {}", b.display());
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------------

/// Why snapshotter `sn` cannot be used on the daemon at `socket`, if it cannot: not
/// registered, or registered with an init error (introspection's `init_err`).
async fn unavailable(socket: &Path, sn: &str) -> Result<Option<String>> {
    let ch = connect(socket).await?;
    let plugins = call(
        "Introspection.Plugins",
        IntrospectionClient::new(ch).plugins(PluginsRequest {
            filters: vec![format!("type=={SNAPSHOTTER_PLUGIN}")],
        }),
    )
    .await?
    .plugins;
    Ok(match plugins.iter().find(|p| p.id == sn) {
        None => Some(format!(
            "not registered (snapshotters: {})",
            plugins
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(p) => p.init_err.as_ref().map(|e| e.message.clone()),
    })
}

// ---------------------------------------------------------------------------------------------
// Clean-up of what the kernel keeps after a crash or an error: mounts and loop devices
// ---------------------------------------------------------------------------------------------

/// On drop: detaches every mount below `dir` and releases loop devices whose backing file
/// lives below it (a devmapper pool, or a mount of its images, left behind). Declared after
/// the temp dir and before the daemons, so it runs after they stopped and before the
/// directory is removed.
struct KernelGuard(PathBuf);

impl KernelGuard {
    fn clean(&self) {
        match berth_snapshotter::mount::unmount_recursive(&self.0) {
            Ok(()) => {}
            Err(e) => eprintln!("cleanup: unmount below {}: {e}", self.0.display()),
        }
        let Ok(entries) = std::fs::read_dir("/sys/block") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
                continue;
            };
            if Path::new(backing.trim()).starts_with(&self.0) {
                let dev = format!("/dev/{name}");
                let ok = Command::new("losetup")
                    .arg("-d")
                    .arg(&dev)
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                eprintln!(
                    "cleanup: {} loop device {dev} ({})",
                    if ok { "released" } else { "could not release" },
                    backing.trim()
                );
            }
        }
    }
}

impl Drop for KernelGuard {
    fn drop(&mut self) {
        self.clean();
    }
}

// ---------------------------------------------------------------------------------------------
// The client: one daemon + snapshotter, with its own lease and mount point
// ---------------------------------------------------------------------------------------------

async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => bail!("{what}: {:?}: {}", s.code(), s.message()),
        Err(_) => bail!("{what}: no answer within {CALL_TIMEOUT:?}"),
    }
}

struct Client {
    label: String,
    sn: String,
    ch: Channel,
    snap: SnapshotsClient<Svc>,
    /// The lease every snapshot of this client is created under (besides the I/O one).
    lease: String,
    mnt: PathBuf,
    /// Snapshots that exist (keys of actives, names of committed), oldest first.
    live: Vec<String>,
}

impl Client {
    /// Connects and creates the client's lease.
    async fn open(d: &Daemon, sn: &str, tag: usize, mnt: PathBuf) -> Result<Client> {
        let ch = connect(d.socket())
            .await
            .with_context(|| format!("connect {}", d.socket().display()))?;
        let lease = format!("berth-bench-{}-{tag}", std::process::id());
        let c = Client {
            label: format!("{} {sn}", d.kind().name()),
            sn: sn.to_string(),
            snap: SnapshotsClient::with_interceptor(ch.clone(), Ctx::ns(NAMESPACE).lease(&lease)),
            ch,
            lease: lease.clone(),
            mnt,
            live: Vec::new(),
        };
        c.create_lease(&lease).await?;
        Ok(c)
    }

    async fn create_lease(&self, id: &str) -> Result<()> {
        call(
            &format!("{} Leases.Create {id}", self.label),
            LeasesClient::with_interceptor(self.ch.clone(), Ctx::ns(NAMESPACE)).create(
                LeaseCreate {
                    id: id.to_string(),
                    labels: Default::default(),
                },
            ),
        )
        .await?;
        Ok(())
    }

    /// Deletes lease `id` and runs the GC now: what only it held is gone from disk after.
    async fn delete_lease(&self, id: &str) -> Result<()> {
        call(
            &format!("{} Leases.Delete {id}", self.label),
            LeasesClient::with_interceptor(self.ch.clone(), Ctx::ns(NAMESPACE)).delete(
                LeaseDelete {
                    id: id.to_string(),
                    sync: true,
                },
            ),
        )
        .await?;
        Ok(())
    }

    /// Creates snapshots under lease `id` from now on.
    fn use_lease(&mut self, id: &str) {
        self.snap =
            SnapshotsClient::with_interceptor(self.ch.clone(), Ctx::ns(NAMESPACE).lease(id));
    }

    async fn prepare(&mut self, key: &str, parent: &str) -> Result<(Duration, Vec<Mount>)> {
        let t = Instant::now();
        let r = call(
            &format!("{} Prepare {key}", self.label),
            self.snap.prepare(PrepareSnapshotRequest {
                snapshotter: self.sn.clone(),
                key: key.into(),
                parent: parent.into(),
                labels: Default::default(),
            }),
        )
        .await?;
        let d = t.elapsed();
        self.live.push(key.to_string());
        Ok((d, r.mounts))
    }

    async fn commit(&mut self, name: &str, key: &str) -> Result<Duration> {
        let t = Instant::now();
        call(
            &format!("{} Commit {key} -> {name}", self.label),
            self.snap.commit(CommitSnapshotRequest {
                snapshotter: self.sn.clone(),
                name: name.into(),
                key: key.into(),
                labels: Default::default(),
                parent: String::new(),
            }),
        )
        .await?;
        let d = t.elapsed();
        self.live.retain(|k| k != key);
        self.live.push(name.to_string());
        Ok(d)
    }

    async fn remove(&mut self, key: &str) -> Result<Duration> {
        let t = Instant::now();
        call(
            &format!("{} Remove {key}", self.label),
            self.snap.remove(RemoveSnapshotRequest {
                snapshotter: self.sn.clone(),
                key: key.into(),
            }),
        )
        .await?;
        let d = t.elapsed();
        self.live.retain(|k| k != key);
        Ok(d)
    }

    /// Mounts `mounts` on this client's mount point.
    fn mount(&self, mounts: &[Mount]) -> Result<MountGuard> {
        ensure!(!mounts.is_empty(), "{}: no mounts returned", self.label);
        MountGuard::mount(&snapshotter_mounts(mounts), &self.mnt).with_context(|| {
            format!(
                "{}: mount {} on {}",
                self.label,
                mounts
                    .iter()
                    .map(|m| format!("{} {} ({})", m.r#type, m.source, m.options.join(",")))
                    .collect::<Vec<_>>()
                    .join(" + "),
                self.mnt.display()
            )
        })
    }

    /// Prepare on `parent`, mount, `fill` the mount, unmount, commit as `name`.
    async fn layer(
        &mut self,
        name: &str,
        parent: &str,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let key = format!("{name}-active");
        let (_, mounts) = self.prepare(&key, parent).await?;
        let g = self.mount(&mounts)?;
        fill(g.target()).with_context(|| format!("{}: fill {name}", self.label))?;
        g.unmount()
            .with_context(|| format!("{}: unmount {name}", self.label))?;
        self.commit(name, &key).await?;
        Ok(())
    }

    /// Unmounts whatever a failed step left on the mount point, then removes the live
    /// snapshots beyond the first `keep`, newest first (children before parents). Goes on
    /// after errors; returns the first.
    async fn clean_up(&mut self, keep: usize) -> Result<()> {
        let mut first = berth_snapshotter::unmount_all(&self.mnt)
            .with_context(|| format!("{}: unmount {}", self.label, self.mnt.display()))
            .err();
        while self.live.len() > keep {
            let Some(k) = self.live.last().cloned() else {
                break;
            };
            if let Err(e) = self.remove(&k).await {
                first.get_or_insert(e);
                self.live.pop();
            }
        }
        first.map_or(Ok(()), Err)
    }
}

// ---------------------------------------------------------------------------------------------
// File I/O
// ---------------------------------------------------------------------------------------------

/// Writes `mib` MiB to `path` in 1 MiB writes, then fsyncs.
fn write_file(path: &Path, mib: usize, chunk: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    for _ in 0..mib {
        f.write_all(chunk)
            .with_context(|| format!("write {}", path.display()))?;
    }
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    Ok(())
}

/// Reads `path` to its end in 1 MiB reads; returns the bytes read.
fn read_file(path: &Path, buf: &mut [u8]) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut total = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One snapshotter
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Figures {
    /// Mount types of a child of a layer (what the read and copy-up go through).
    mount: String,
    /// ms
    prepare: Vec<f64>,
    commit: Vec<f64>,
    remove: Vec<f64>,
    /// MiB/s, one per I/O round
    write: Vec<f64>,
    read_cold: Vec<f64>,
    read_warm: Vec<f64>,
    /// ms
    copyup: Vec<f64>,
}

enum Status {
    Ok,
    Unavailable(String),
    Failed(String),
}

/// One daemon + snapshotter.
struct Target {
    name: String,
    client: Option<Client>,
    f: Figures,
    status: Status,
}

impl Target {
    fn ok(&self) -> bool {
        matches!(self.status, Status::Ok)
    }

    fn fail(&mut self, e: anyhow::Error) {
        println!("{}: FAILED: {e:#}", self.name);
        if self.ok() {
            self.status = Status::Failed(format!("{e:#}"));
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `v` as `a, b, c` (one figure per round).
fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib_s(mib: usize, d: Duration) -> f64 {
    mib as f64 / d.as_secs_f64().max(1e-9)
}

/// Checks that the daemon has the snapshotter, opens the client (and its lease) and commits
/// the common parent: a directory with a few small files.
async fn setup(d: &Daemon, sn: &str, tag: usize, mnt: PathBuf, chunk: &[u8]) -> Target {
    let mut t = Target {
        name: format!("{} {sn}", d.kind().name()),
        client: None,
        f: Figures::default(),
        status: Status::Ok,
    };
    match unavailable(d.socket(), sn).await {
        Ok(None) => {}
        Ok(Some(why)) => t.status = Status::Unavailable(why),
        Err(e) => t.status = Status::Unavailable(format!("introspection: {e:#}")),
    }
    if !t.ok() {
        return t;
    }
    let res = async {
        std::fs::create_dir_all(&mnt).with_context(|| format!("mkdir {}", mnt.display()))?;
        let c = t.client.insert(Client::open(d, sn, tag, mnt).await?);
        c.layer("base", "", |m| {
            std::fs::create_dir(m.join("etc"))?;
            for i in 0..BASE_FILES {
                std::fs::write(m.join("etc").join(format!("f{i}")), &chunk[..4096])?;
            }
            Ok(())
        })
        .await
    }
    .await;
    if let Err(e) = res {
        // The first prepare + mount is where a snapshotter that cannot work here fails.
        t.status = Status::Unavailable(format!("{e:#}"));
    }
    t
}

/// One Prepare / Commit / Remove round on top of the parent.
async fn latency_round(c: &mut Client, r: usize) -> Result<[Duration; 3]> {
    let key = format!("lat-{r}");
    let name = format!("lat-{r}-c");
    let (tp, _) = c.prepare(&key, "base").await?;
    let tc = c.commit(&name, &key).await?;
    let tr = c.remove(&name).await?;
    Ok([tp, tc, tr])
}

/// Measurements 2-4 under a lease of their own, deleted (with a synchronous GC) at the end,
/// so their gigabytes are off the disk before the next target starts.
async fn io(c: &mut Client, args: &Args, chunk: &[u8], f: &mut Figures) -> Result<()> {
    let lease = format!("{}-io", c.lease);
    c.create_lease(&lease).await?;
    c.use_lease(&lease);
    let keep = c.live.len();
    let res = io_phases(c, args, chunk, f).await;
    let cleaned = c.clean_up(keep).await;
    let base = c.lease.clone();
    c.use_lease(&base);
    let deleted = c.delete_lease(&lease).await;
    res.and(cleaned).and(deleted)
}

async fn io_phases(c: &mut Client, args: &Args, chunk: &[u8], f: &mut Figures) -> Result<()> {
    // 2. Sequential write into an active snapshot on the parent; each round's file is
    //    unlinked afterwards (untimed) so the rounds do not add up on disk.
    let (_, mounts) = c.prepare("write", "base").await?;
    let g = c.mount(&mounts)?;
    for r in 0..args.io_runs {
        let path = g.target().join(format!("big-{r}.bin"));
        // Clean caches first: no earlier dirty pages get written back during the timing.
        drop_caches()?;
        let t = Instant::now();
        write_file(&path, args.file_mib, chunk)?;
        f.write.push(mib_s(args.file_mib, t.elapsed()));
        std::fs::remove_file(&path).with_context(|| format!("unlink {}", path.display()))?;
    }
    g.unmount().context("unmount write")?;
    c.remove("write").await?;
    println!(
        "  {}: write {} MiB + fsync: {} MiB/s",
        c.label,
        args.file_mib,
        list(&f.write)
    );

    // 3. Sequential read of a lower-layer file through a child's mount.
    c.layer("lower", "base", |m| {
        write_file(&m.join("big.bin"), args.file_mib, chunk)
    })
    .await?;
    let (_, mounts) = c.prepare("read", "lower").await?;
    f.mount = mounts
        .iter()
        .map(|m| m.r#type.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let g = c.mount(&mounts)?;
    let path = g.target().join("big.bin");
    let want = (args.file_mib * MIB) as u64;
    let mut buf = vec![0u8; MIB];
    // Round 0 is untimed: the first cold read after the layer was written was the slowest
    // and most erratic one here, on every snapshotter and daemon alike.
    for r in 0..=args.io_runs {
        drop_caches()?;
        let t = Instant::now();
        let n = read_file(&path, &mut buf)?;
        let tcold = t.elapsed();
        ensure!(n == want, "cold read: {n} bytes, want {want}");
        let t = Instant::now();
        let n = read_file(&path, &mut buf)?;
        let twarm = t.elapsed();
        ensure!(n == want, "warm read: {n} bytes, want {want}");
        if r > 0 {
            f.read_cold.push(mib_s(args.file_mib, tcold));
            f.read_warm.push(mib_s(args.file_mib, twarm));
        }
    }
    g.unmount().context("unmount read")?;
    c.remove("read").await?;
    c.remove("lower").await?;
    println!(
        "  {}: read {} MiB from a lower layer through {}: cold {} MiB/s, warm {} MiB/s",
        c.label,
        args.file_mib,
        f.mount,
        list(&f.read_cold),
        list(&f.read_warm)
    );

    // 4. First-write copy-up of a 64 MiB lower-layer file, each round on a fresh child.
    c.layer("cu-lower", "base", |m| {
        write_file(&m.join("cu.bin"), COPYUP_MIB, chunk)
    })
    .await?;
    for r in 0..args.copyup_runs {
        let key = format!("cu-{r}");
        let (_, mounts) = c.prepare(&key, "cu-lower").await?;
        let g = c.mount(&mounts)?;
        let path = g.target().join("cu.bin");
        // Nothing dirty gets written back during the timing.
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        let t = Instant::now();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("open {} for writing", path.display()))?;
        file.write_all_at(b"x", 0)
            .with_context(|| format!("write {}", path.display()))?;
        file.sync_all()
            .with_context(|| format!("fsync {}", path.display()))?;
        drop(file);
        let tcu = t.elapsed();
        let len = std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        ensure!(
            len == (COPYUP_MIB * MIB) as u64,
            "after copy-up {} has {len} bytes",
            path.display()
        );
        g.unmount().context("unmount copy-up")?;
        c.remove(&key).await?;
        f.copyup.push(ms(tcu));
    }
    println!(
        "  {}: copy-up of a {COPYUP_MIB} MiB file: {} ms",
        c.label,
        f.copyup
            .iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

type Metric = (&'static str, fn(&Figures) -> Option<f64>);

fn opt(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

const METRICS: &[Metric] = &[
    ("prepare median (ms)", |f| opt(median(&f.prepare))),
    ("prepare p90 (ms)", |f| opt(percentile(&f.prepare, 0.9))),
    ("commit median (ms)", |f| opt(median(&f.commit))),
    ("commit p90 (ms)", |f| opt(percentile(&f.commit, 0.9))),
    ("remove median (ms)", |f| opt(median(&f.remove))),
    ("remove p90 (ms)", |f| opt(percentile(&f.remove, 0.9))),
    ("write + fsync (MiB/s)", |f| opt(median(&f.write))),
    ("read cold (MiB/s)", |f| opt(median(&f.read_cold))),
    ("read warm (MiB/s)", |f| opt(median(&f.read_warm))),
    ("copy-up 64 MiB (ms)", |f| opt(median(&f.copyup))),
];

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A target's figures, if it got to measure anything.
fn figures(t: &Target) -> Option<&Figures> {
    (!matches!(t.status, Status::Unavailable(_))).then_some(&t.f)
}

fn report(targets: &[Target]) {
    let Some((reference, rest)) = targets.split_first() else {
        return;
    };
    let mut header = vec!["metric".to_string(), reference.name.clone()];
    header.extend(rest.iter().map(|t| format!("{} (x ctd)", t.name)));
    let kind = |t: &Target| figures(t).map_or_else(|| "-".into(), |f| f.mount.clone());
    let mut rows = vec![std::iter::once("mount of a child".to_string())
        .chain(targets.iter().map(kind))
        .collect::<Vec<_>>()];
    for (name, get) in METRICS {
        let base = figures(reference).and_then(get);
        let mut row = vec![name.to_string(), base.map_or_else(|| "-".into(), fmt_value)];
        for t in rest {
            row.push(match figures(t).and_then(get) {
                None => "-".into(),
                Some(v) => match base {
                    Some(b) if b > 0.0 => format!("{} ({:.2}x)", fmt_value(v), v / b),
                    _ => fmt_value(v),
                },
            });
        }
        rows.push(row);
    }
    table(&header, &rows);
    println!(
        "(ms: lower is better; MiB/s: higher is better; x ctd = value / {}'s)",
        reference.name
    );
    for t in targets {
        match &t.status {
            Status::Ok => {}
            Status::Unavailable(why) => println!("{}: unavailable: {why}", t.name),
            Status::Failed(why) => {
                println!("{}: FAILED (figures up to the failure): {why}", t.name)
            }
        }
    }
}

/// The target: the aufs FUSE path reaches at least half of overlayfs's read throughput.
fn aufs_target(targets: &[Target]) -> String {
    let get = |name: &str| {
        targets
            .iter()
            .find(|t| t.name == name && t.ok())
            .and_then(|t| Some((opt(median(&t.f.read_cold))?, opt(median(&t.f.read_warm))?)))
    };
    let (Some((ac, aw)), Some((oc, ow))) = (get("berthd aufs"), get("berthd overlayfs")) else {
        return "n/a (berthd aufs and overlayfs not both measured)".into();
    };
    let (rc, rw) = (ac / oc, aw / ow);
    format!(
        "{} (cold {ac:.0}/{oc:.0} MiB/s = {rc:.2}, warm {aw:.0}/{ow:.0} MiB/s = {rw:.2})",
        if rc >= 0.5 && rw >= 0.5 {
            "PASS"
        } else {
            "FAIL"
        }
    )
}

/// The filesystem type of the mount holding `dir` (the longest matching mount point).
fn fs_type(dir: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for l in info.lines() {
        let mut parts = l.split(" - ");
        let (Some(pre), Some(post)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Some(mp), Some(ty)) = (pre.split(' ').nth(4), post.split(' ').next()) else {
            continue;
        };
        if dir.starts_with(mp) && best.as_ref().is_none_or(|(n, _)| mp.len() >= *n) {
            best = Some((mp.len(), ty.to_string()));
        }
    }
    best.map_or_else(|| "?".into(), |(_, t)| t)
}

async fn run(args: Args, exe_dir: PathBuf) -> Result<()> {
    ensure!(args.runs > 0, "--runs must be positive");
    ensure!(args.copyup_runs > 0, "--copyup-runs must be positive");
    ensure!(args.io_runs > 0, "--io-runs must be positive");
    ensure!(args.file_mib > 0, "--file-mib must be positive");
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "must run as root (mount, drop_caches)"
    );
    let berthd = args
        .berthd
        .clone()
        .unwrap_or_else(|| exe_dir.join("berthd"));
    ensure!(
        berthd.exists(),
        "{} not found: build it (`cargo build --release -p berth-services`) or pass --berthd",
        berthd.display()
    );
    ensure!(
        args.containerd.exists(),
        "{} not found (Debian package `containerd`)",
        args.containerd.display()
    );
    std::fs::create_dir_all(&args.dir)?;
    let base = tempfile::Builder::new()
        .prefix("bbsn-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("create temp dir in {}", args.dir.display()))?;
    // Dropped after the daemons, before the directory.
    let kernel = KernelGuard(base.path().to_path_buf());
    println!("berth-bench-snapshotters: {}", args.command());
    println!("  berthd:     {}", berthd.display());
    println!(
        "  berth-aufs: {}",
        if exe_dir.join("berth-aufs").exists() {
            exe_dir.join("berth-aufs").display().to_string()
        } else {
            format!(
                "not built in {} (cargo build --release -p berth-unionfs)",
                exe_dir.display()
            )
        }
    );
    println!(
        "  temp dir:   {} ({}; both daemons' roots, mount points)",
        base.path().display(),
        fs_type(base.path())
    );
    println!(
        "  cpus:       {}, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );

    let chunk: Vec<u8> = (0..MIB)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let (db_dir, dc_dir) = (base.path().join("berthd"), base.path().join("containerd"));
    let spec = |kind, bin, dir| DaemonSpec {
        stop_timeout: STOP_TIMEOUT,
        ..DaemonSpec::new(kind, bin, dir)
    };
    let dc = Daemon::start(&spec(Kind::Containerd, &args.containerd, &dc_dir)).await?;
    let db = Daemon::start(&spec(Kind::Berthd, &berthd, &db_dir)).await?;

    let started = Instant::now();
    // The reference first; every target has its own lease and mount point.
    let mut targets = Vec::new();
    for (i, (d, sn)) in std::iter::once((&dc, "overlayfs"))
        .chain(args.snapshotters.iter().map(|s| (&db, s.as_str())))
        .enumerate()
    {
        let mnt = base.path().join(format!("mnt-{i}"));
        let t = setup(d, sn, i, mnt, &chunk).await;
        if let Status::Unavailable(why) = &t.status {
            println!("{}: unavailable: {why}", t.name);
        }
        targets.push(t);
    }

    // 1. Prepare / Commit / Remove, the targets interleaved (a different one first in every
    //    round), so a change in the machine's load hits them all alike; round 0 is a warm-up.
    println!(
        "prepare / commit / remove: {} rounds (+1 warm-up), targets interleaved ...",
        args.runs
    );
    let n = targets.len();
    for r in 0..=args.runs {
        for k in 0..n {
            let t = &mut targets[(k + r) % n];
            if !t.ok() {
                continue;
            }
            let Some(c) = t.client.as_mut() else {
                continue;
            };
            match latency_round(c, r).await {
                Ok([tp, tc, tr]) if r > 0 => {
                    t.f.prepare.push(ms(tp));
                    t.f.commit.push(ms(tc));
                    t.f.remove.push(ms(tr));
                }
                Ok(_) => {}
                Err(e) => t.fail(e),
            }
        }
    }
    for t in targets.iter().filter(|t| t.ok()) {
        println!(
            "  {}: prepare {:.2} ms, commit {:.2} ms, remove {:.2} ms (median)",
            t.name,
            median(&t.f.prepare),
            median(&t.f.commit),
            median(&t.f.remove)
        );
    }

    // 2-4, one target after the other (each needs the disk to itself).
    for t in targets.iter_mut() {
        if !t.ok() {
            continue;
        }
        let Some(c) = t.client.as_mut() else {
            continue;
        };
        println!("{} ...", t.name);
        if let Err(e) = io(c, &args, &chunk, &mut t.f).await {
            t.fail(e);
        }
    }

    // Every target's snapshots and lease, whatever happened above.
    for t in targets.iter_mut() {
        let Some(c) = t.client.as_mut() else {
            continue;
        };
        let lease = c.lease.clone();
        let res = match c.clean_up(0).await {
            Ok(()) => c.delete_lease(&lease).await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            t.fail(e.context("clean-up"));
        }
    }

    println!();
    println!(
        "=== snapshotters: {} MiB files ({} I/O rounds, median), {} prepare/commit/remove rounds, \
         {} copy-ups; {:.0} s ===",
        args.file_mib,
        args.io_runs,
        args.runs,
        args.copyup_runs,
        started.elapsed().as_secs_f64()
    );
    report(&targets);
    println!();
    println!(
        "target (issue): aufs (FUSE) read throughput >= 1/2 of berthd overlayfs's: {}",
        aufs_target(&targets)
    );
    println!("load average at the end: {}", loadavg());
    println!("command: {}", args.command());

    drop(targets);
    drop(db);
    drop(dc);
    drop(kernel);
    base.close().context("remove the temp dir")?;
    Ok(())
}

/// Puts `dir` first on `PATH` (the FUSE mount helper finds `berth-aufs` by name there, as it
/// does under berthd), and /sbin, /usr/sbin last if missing (`mount.fuse3`, `losetup`).
fn set_path(dir: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).filter(|p| p != dir).collect();
    dirs.insert(0, dir.to_path_buf());
    for sbin in ["/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|p| p == Path::new(sbin)) {
            dirs.push(sbin.into());
        }
    }
    if let Ok(joined) = std::env::join_paths(dirs) {
        std::env::set_var("PATH", joined);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let exe_dir = match std::env::current_exe() {
        Ok(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        Err(e) => {
            eprintln!("berth-bench-snapshotters: current_exe: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread exists: the environment is process-wide and not thread-safe to change.
    set_path(&exe_dir);
    main_on_runtime("berth-bench-snapshotters", run(args, exe_dir), || {})
}
