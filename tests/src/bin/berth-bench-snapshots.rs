//! berth-bench-snapshots: the Snapshots gRPC API of berthd side by side with stock
//! containerd 1.6 on the same machine and disk, for the `overlayfs` and `native` snapshotters.
//!
//! 1. A 16-layer chain, `--runs` times: for every layer Prepare (parent = the previous
//!    committed layer), mount the returned mounts on a temp dir (mount(2), as the client
//!    would), write a 1 MiB file, unmount, Commit; then Remove leaf-first. Per-operation
//!    latencies (median, p90 over all layers and runs) and the chain total (median of runs).
//! 2. A 128-layer chain (one small file per layer, build time reported), then `--runs` times:
//!    View at depth 128, mount, read the flattened tree, unmount; and Prepare at depth 128,
//!    mount, write, unmount. Overlay `lowerdir` lists longer than a page are mounted as
//!    containerd's client does: relative to their common parent, from a thread with its own
//!    cwd (`unshare(CLONE_FS)` + `chdir`).
//!
//! The same client code drives both daemons (namespace header `containerd-namespace`, every
//! request under one lease, `containerd-lease`, so neither daemon's GC takes the snapshots);
//! the daemon order alternates between runs. Target (issue 3): every operation <= containerd.
//!
//! Both daemons run in their own temp root/state/socket under `--dir` (containerd with a
//! generated `version = 2` config, CRI off; the system service is never touched). Cleanup,
//! also on error and on SIGINT/SIGTERM: mounts under the temp dir detached, daemons stopped,
//! temp dirs deleted. Daemons get `PR_SET_PDEATHSIG`.
//!
//! Run: `cargo run --release -p berth-tests --bin berth-bench-snapshots -- [--runs 5]`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_proto::containerd::services::leases::v1::{
    leases_client::LeasesClient, CreateRequest as LeaseCreate, DeleteRequest as LeaseDelete,
};
use berth_proto::containerd::services::snapshots::v1::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, ViewSnapshotRequest,
};
use berth_proto::containerd::types::Mount;
use berth_tests::bench::{
    berthd_path, detach_mounts_below, loadavg, main_on_runtime, median, percentile, proc_status,
    snapshotter_mounts, table, Daemon, DaemonSpec, Kind, MountsCleanup,
};
use berth_tests::{connect, Ctx, Svc};
use clap::Parser;
use tokio::time::timeout;

/// How long one gRPC call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const NAMESPACE: &str = "berth-bench";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "berth-bench-snapshots",
    about = "berthd vs stock containerd 1.6: Snapshots API prepare/commit chains and deep overlay mounts"
)]
struct Args {
    /// Runs of the 16-layer chain and of the depth-128 view/prepare per daemon and snapshotter.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Layers in the prepare + write + commit chain.
    #[arg(long, default_value_t = 16)]
    layers: usize,
    /// Depth of the deep chain.
    #[arg(long, default_value_t = 128)]
    depth: usize,
    /// Bytes written into each layer of the chain, in KiB.
    #[arg(long, default_value_t = 1024)]
    write_kib: usize,
    /// Snapshotters, comma separated (containerd's names).
    #[arg(long, default_value = "overlayfs,native", value_delimiter = ',')]
    snapshotters: Vec<String>,
    /// Directory for both daemons' roots and the mount points (one disk for all).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Where each daemon's root lives: `loop` = its own fresh ext4 filesystem (a sparse
    /// `--loop-mib` image in `--dir`, loop-mounted), so both start from identical empty
    /// filesystems and neither inherits the other's (or other users') recently freed inodes;
    /// `dir` = plain directories in `--dir`.
    #[arg(long, value_enum, default_value_t = FsMode::Loop)]
    fs: FsMode,
    /// Size of each loop filesystem, in MiB (sparse).
    #[arg(long, default_value_t = 4096)]
    loop_mib: u64,
    /// berthd binary (default: `berthd` next to this executable).
    #[arg(long)]
    berthd: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum FsMode {
    Loop,
    Dir,
}

impl Args {
    fn command(&self) -> String {
        let mut s = format!(
            "cargo run --release -p berth-tests --bin berth-bench-snapshots -- --runs {} \
             --layers {} --depth {} --write-kib {} --snapshotters {} --dir {} --fs {}",
            self.runs,
            self.layers,
            self.depth,
            self.write_kib,
            self.snapshotters.join(","),
            self.dir.display(),
            match self.fs {
                FsMode::Loop => "loop",
                FsMode::Dir => "dir",
            }
        );
        if self.fs == FsMode::Loop {
            let _ = write!(s, " --loop-mib {}", self.loop_mib);
        }
        if let Some(b) = &self.berthd {
            let _ = write!(s, " --berthd {}", b.display());
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Mounts (the client side, berth_snapshotter's mount code, as ctr would) and the loop fs
// ---------------------------------------------------------------------------------------------

/// Mounts the daemon's answer on `target`.
fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    ensure!(!mounts.is_empty(), "no mounts returned");
    Ok(berth_snapshotter::mount_all(
        &snapshotter_mounts(mounts),
        target,
    )?)
}

fn unmount(target: &Path) -> Result<()> {
    Ok(berth_snapshotter::unmount(target)?)
}

/// Creates a sparse `mib` MiB image, makes a fresh ext4 in it (inode tables and journal
/// initialised now, so no lazy-init I/O runs during the bench) and loop-mounts it on `dir`.
fn loop_fs(img: &Path, dir: &Path, mib: u64) -> Result<String> {
    File::create(img)
        .and_then(|f| f.set_len(mib << 20))
        .with_context(|| format!("create {}", img.display()))?;
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {cmd:?}"))?;
        ensure!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(img))?;
    run(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(img)
        .arg(dir))?;
    Ok(format!(
        "each on its own fresh ext4 ({mib} MiB sparse image in {}, loop-mounted)",
        img.parent().map_or("?".into(), |p| p.display().to_string())
    ))
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

struct Client {
    label: &'static str,
    snap: SnapshotsClient<Svc>,
    /// Mount point for this daemon's snapshots.
    mnt: PathBuf,
}

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

impl Client {
    async fn prepare(
        &mut self,
        sn: &str,
        key: &str,
        parent: &str,
    ) -> Result<(Duration, Vec<Mount>)> {
        let t = Instant::now();
        let r = call(
            &format!("{} Prepare {key}", self.label),
            self.snap.prepare(PrepareSnapshotRequest {
                snapshotter: sn.into(),
                key: key.into(),
                parent: parent.into(),
                labels: Default::default(),
            }),
        )
        .await?;
        Ok((t.elapsed(), r.mounts))
    }

    async fn view(&mut self, sn: &str, key: &str, parent: &str) -> Result<(Duration, Vec<Mount>)> {
        let t = Instant::now();
        let r = call(
            &format!("{} View {key}", self.label),
            self.snap.view(ViewSnapshotRequest {
                snapshotter: sn.into(),
                key: key.into(),
                parent: parent.into(),
                labels: Default::default(),
            }),
        )
        .await?;
        Ok((t.elapsed(), r.mounts))
    }

    async fn commit(&mut self, sn: &str, name: &str, key: &str) -> Result<Duration> {
        let t = Instant::now();
        call(
            &format!("{} Commit {key} -> {name}", self.label),
            self.snap.commit(CommitSnapshotRequest {
                snapshotter: sn.into(),
                name: name.into(),
                key: key.into(),
                labels: Default::default(),
                parent: String::new(),
            }),
        )
        .await?;
        Ok(t.elapsed())
    }

    async fn remove(&mut self, sn: &str, key: &str) -> Result<Duration> {
        let t = Instant::now();
        call(
            &format!("{} Remove {key}", self.label),
            self.snap.remove(RemoveSnapshotRequest {
                snapshotter: sn.into(),
                key: key.into(),
            }),
        )
        .await?;
        Ok(t.elapsed())
    }
}

/// Named latency samples, in ms.
#[derive(Default)]
struct Samples(BTreeMap<&'static str, Vec<f64>>);

impl Samples {
    fn add(&mut self, op: &'static str, d: Duration) {
        self.0.entry(op).or_default().push(d.as_secs_f64() * 1e3);
    }
    fn get(&self, op: &str) -> &[f64] {
        self.0.get(op).map_or(&[], Vec::as_slice)
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed(), v))
}

/// One chain: `layers` x (prepare, mount, write, unmount, commit), then remove leaf-first.
async fn chain(
    c: &mut Client,
    sn: &str,
    tag: &str,
    layers: usize,
    data: &[u8],
    s: &mut Samples,
) -> Result<()> {
    let mut parent = String::new();
    let mut names = Vec::new();
    let mut total = Duration::ZERO;
    let res: Result<()> = async {
        for i in 0..layers {
            let key = format!("{tag}-active-{i}");
            let name = format!("{tag}-layer-{i}");
            let (tp, mounts) = c.prepare(sn, &key, &parent).await?;
            names.push(key.clone());
            let mnt = c.mnt.clone();
            let (tm, ()) = timed(|| mount_all(&mounts, &mnt))?;
            let file = mnt.join(format!("layer-{i}.bin"));
            let w =
                timed(|| std::fs::write(&file, data).with_context(|| format!("write {file:?}")));
            let tu = timed(|| unmount(&mnt));
            let (tw, ()) = w?;
            let (tu, ()) = tu?;
            let tc = c.commit(sn, &name, &key).await?;
            names.pop();
            names.push(name.clone());
            s.add("prepare", tp);
            s.add("mount", tm);
            s.add("write", tw);
            s.add("unmount", tu);
            s.add("commit", tc);
            if i == layers - 1 {
                s.add("prepare (last layer)", tp);
                s.add("commit (last layer)", tc);
            }
            total += tp + tm + tw + tu + tc;
            parent = name;
        }
        s.add("chain total", total);
        Ok(())
    }
    .await;
    if res.is_err() {
        // A failed step may have left the mount point mounted.
        let _ = unmount(&c.mnt);
    }
    let mut rm_total = Duration::ZERO;
    let mut rm_err = None;
    for k in names.iter().rev() {
        match c.remove(sn, k).await {
            Ok(t) => {
                s.add("remove", t);
                rm_total += t;
            }
            Err(e) => {
                rm_err.get_or_insert(e);
            }
        }
    }
    res?;
    if let Some(e) = rm_err {
        return Err(e);
    }
    s.add("remove chain total", rm_total);
    Ok(())
}

/// Builds a `depth` chain (small file per layer), then `runs` x view / prepare at the top.
async fn deep(c: &mut Client, sn: &str, depth: usize, runs: usize, s: &mut Samples) -> Result<()> {
    let mut parent = String::new();
    let mut created: Vec<String> = Vec::new();
    let res: Result<()> = async {
        let t0 = Instant::now();
        for i in 0..depth {
            let key = format!("deep-active-{i}");
            let name = format!("deep-{i}");
            let (_, mounts) = c.prepare(sn, &key, &parent).await?;
            created.push(key.clone());
            let mnt = c.mnt.clone();
            mount_all(&mounts, &mnt)?;
            let w = std::fs::write(mnt.join(format!("f{i}")), i.to_string());
            unmount(&mnt)?;
            w?;
            c.commit(sn, &name, &key).await?;
            created.pop();
            created.push(name.clone());
            parent = name;
        }
        s.add("build chain", t0.elapsed());
        for r in 0..runs {
            // View at depth + mount + read the flattened tree + unmount.
            let key = format!("deep-view-{r}");
            let (tv, mounts) = c.view(sn, &key, &parent).await?;
            created.push(key.clone());
            let mnt = c.mnt.clone();
            let (tm, ()) = timed(|| mount_all(&mounts, &mnt))?;
            let seen = std::fs::read_dir(&mnt).map(|d| d.count());
            let (tu, ()) = timed(|| unmount(&mnt))?;
            let seen = seen?;
            ensure!(
                seen == depth,
                "{} {sn}: view at depth {depth} shows {seen} files",
                c.label
            );
            s.add("view", tv);
            s.add("mount view", tm);
            s.add("unmount view", tu);
            s.add("view+mount", tv + tm);
            // Prepare at depth + mount + write + unmount.
            let key = format!("deep-prep-{r}");
            let (tp, mounts) = c.prepare(sn, &key, &parent).await?;
            created.push(key.clone());
            let (tm, ()) = timed(|| mount_all(&mounts, &mnt))?;
            let w = std::fs::write(mnt.join("top"), b"top");
            let (tu, ()) = timed(|| unmount(&mnt))?;
            w?;
            s.add("prepare", tp);
            s.add("mount active", tm);
            s.add("unmount active", tu);
            s.add("prepare+mount", tp + tm);
        }
        Ok(())
    }
    .await;
    if res.is_err() {
        let _ = unmount(&c.mnt);
    }
    // Views and actives first (they are leaves), then the chain leaf-first.
    let (leaves, chain): (Vec<String>, Vec<String>) = created
        .into_iter()
        .partition(|k| k.starts_with("deep-view") || k.starts_with("deep-prep"));
    let t0 = Instant::now();
    let mut rm_err = None;
    for k in leaves.iter().chain(chain.iter().rev()) {
        if let Err(e) = c.remove(sn, k).await {
            rm_err.get_or_insert(e);
        }
    }
    res?;
    if let Some(e) = rm_err {
        return Err(e);
    }
    s.add("remove all", t0.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// Rows comparing `ops` between berthd and containerd; returns how many missed the target.
fn compare(ops: &[(&str, bool)], b: &Samples, c: &Samples, rows: &mut Vec<Vec<String>>) -> usize {
    let mut fails = 0;
    for &(op, targeted) in ops {
        let (vb, vc) = (b.get(op), c.get(op));
        if vb.is_empty() && vc.is_empty() {
            continue;
        }
        let (mb, mc) = (median(vb), median(vc));
        let ratio = mb / mc;
        let result = if !targeted {
            "(info)"
        } else if ratio <= 1.0 {
            "PASS"
        } else {
            fails += 1;
            "FAIL"
        };
        rows.push(vec![
            op.to_string(),
            format!("{mb:.3}"),
            format!("{:.3}", percentile(vb, 0.9)),
            format!("{mc:.3}"),
            format!("{:.3}", percentile(vc, 0.9)),
            format!("{ratio:.2}"),
            result.to_string(),
            vb.len().to_string(),
        ]);
    }
    fails
}

async fn run(args: Args) -> Result<()> {
    ensure!(args.runs > 0, "--runs must be positive");
    ensure!(
        args.layers > 0 && args.depth > 1,
        "--layers/--depth too small"
    );
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "must run as root (mount)");
    let berthd = berthd_path(
        args.berthd.as_deref(),
        "run `cargo build --release --workspace`",
    )?;
    ensure!(
        args.containerd.exists(),
        "{} not found (Debian package `containerd`)",
        args.containerd.display()
    );
    std::fs::create_dir_all(&args.dir)?;
    let base = tempfile::Builder::new()
        .prefix("bbs-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("create temp dir in {}", args.dir.display()))?;
    // Dropped after the daemons, before the directory.
    let guard = MountsCleanup(base.path().to_path_buf());
    println!("berth-bench-snapshots: {}", args.command());
    println!("  berthd:   {}", berthd.display());
    println!(
        "  temp dir: {} (both daemons' roots, mount points)",
        base.path().display()
    );
    println!(
        "  cpus:     {}, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );

    let mut fs_desc = String::from("plain directories under the temp dir");
    for name in ["berthd", "containerd"] {
        let dir = base.path().join(name);
        std::fs::create_dir_all(&dir)?;
        if args.fs == FsMode::Loop {
            fs_desc = loop_fs(
                &base.path().join(format!("{name}.img")),
                &dir,
                args.loop_mib,
            )
            .with_context(|| format!("loop filesystem for {name} (or pass --fs dir)"))?;
        }
    }
    println!("  daemon roots: {fs_desc}");
    let (db_dir, dc_dir) = (base.path().join("berthd"), base.path().join("containerd"));
    let db = Daemon::start(&DaemonSpec::new(Kind::Berthd, &berthd, &db_dir)).await?;
    let dc = Daemon::start(&DaemonSpec::new(
        Kind::Containerd,
        &args.containerd,
        &dc_dir,
    ))
    .await?;
    let lease = format!("berth-bench-{}", std::process::id());
    let mut clients = Vec::new();
    for d in [&db, &dc] {
        let ch = connect(d.socket())
            .await
            .with_context(|| format!("connect {}", d.socket().display()))?;
        call(
            &format!("{} Leases.Create", d.kind().name()),
            LeasesClient::with_interceptor(ch.clone(), Ctx::ns(NAMESPACE)).create(LeaseCreate {
                id: lease.clone(),
                labels: Default::default(),
            }),
        )
        .await?;
        let mnt = base.path().join(format!("mnt-{}", d.kind().name()));
        std::fs::create_dir_all(&mnt)?;
        clients.push(Client {
            label: d.kind().name(),
            snap: SnapshotsClient::with_interceptor(ch, Ctx::ns(NAMESPACE).lease(&lease))
                .max_decoding_message_size(64 << 20),
            mnt,
        });
    }

    // Deterministic non-zero data.
    let data: Vec<u8> = (0..args.write_kib * 1024)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();

    // results[snapshotter][daemon]
    let mut chains: Vec<[Samples; 2]> = Vec::new();
    let mut deeps: Vec<[Samples; 2]> = Vec::new();
    for sn in &args.snapshotters {
        let mut cs = [Samples::default(), Samples::default()];
        println!(
            "{sn}: {} x chain of {} layers (prepare, mount, write {} KiB, unmount, commit) ...",
            args.runs, args.layers, args.write_kib
        );
        // One untimed warm-up chain each, then alternate the order.
        for (i, c) in clients.iter_mut().enumerate() {
            let mut scratch = Samples::default();
            chain(c, sn, "warm", args.layers, &data, &mut scratch)
                .await
                .with_context(|| format!("{} {sn}: warm-up chain", ["berthd", "containerd"][i]))?;
        }
        for r in 0..args.runs {
            for k in 0..2 {
                let i = (k + r) % 2;
                chain(
                    &mut clients[i],
                    sn,
                    &format!("r{r}"),
                    args.layers,
                    &data,
                    &mut cs[i],
                )
                .await
                .with_context(|| format!("{} {sn}: chain run {r}", clients[i].label))?;
            }
            println!(
                "  run {}: chain total berthd {:.1} ms, containerd {:.1} ms",
                r + 1,
                cs[0].get("chain total").last().copied().unwrap_or(f64::NAN),
                cs[1].get("chain total").last().copied().unwrap_or(f64::NAN)
            );
        }
        chains.push(cs);

        let mut ds = [Samples::default(), Samples::default()];
        println!(
            "{sn}: chain of {} layers, then {} x view/prepare at depth {} ...",
            args.depth, args.runs, args.depth
        );
        for (i, c) in clients.iter_mut().enumerate() {
            deep(c, sn, args.depth, args.runs, &mut ds[i])
                .await
                .with_context(|| format!("{} {sn}: depth {}", c.label, args.depth))?;
            println!(
                "  {}: build {:.0} ms, view+mount {:.2} ms, prepare+mount {:.2} ms",
                c.label,
                median(ds[i].get("build chain")),
                median(ds[i].get("view+mount")),
                median(ds[i].get("prepare+mount"))
            );
        }
        deeps.push(ds);
    }

    // Report.
    let header = [
        "operation (ms)",
        "berthd med",
        "p90",
        "containerd med",
        "p90",
        "berth/ctd",
        "result",
        "n",
    ];
    let mut fails = 0;
    for (si, sn) in args.snapshotters.iter().enumerate() {
        println!();
        println!(
            "=== {sn}: {}-layer chain, each layer prepare + mount + write {} KiB + unmount + commit; {} runs ===",
            args.layers, args.write_kib, args.runs
        );
        let mut rows = Vec::new();
        fails += compare(
            &[
                ("prepare", true),
                ("prepare (last layer)", true),
                ("mount", false),
                ("write", false),
                ("unmount", false),
                ("commit", true),
                ("commit (last layer)", true),
                ("chain total", true),
                ("remove", false),
                ("remove chain total", false),
            ],
            &chains[si][0],
            &chains[si][1],
            &mut rows,
        );
        table(&header, &rows);
        println!();
        println!(
            "=== {sn}: depth {}: view / prepare on top of a {}-layer chain; {} runs ===",
            args.depth, args.depth, args.runs
        );
        let mut rows = Vec::new();
        fails += compare(
            &[
                ("view", true),
                ("mount view", false),
                ("view+mount", true),
                ("unmount view", false),
                ("prepare", true),
                ("mount active", false),
                ("prepare+mount", true),
                ("unmount active", false),
                ("build chain", true),
                ("remove all", false),
            ],
            &deeps[si][0],
            &deeps[si][1],
            &mut rows,
        );
        table(&header, &rows);
    }
    println!();
    println!(
        "target (issue 3): every targeted operation <= containerd: {} ({fails} over)",
        if fails == 0 { "PASS" } else { "FAIL" }
    );
    println!(
        "mount/write/unmount are the bench's own client code (same for both; the mount column \
         shows what the returned mount list costs). Daemon VmRSS at the end: berthd {:.1} MiB, \
         containerd {:.1} MiB",
        proc_status(db.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0,
        proc_status(dc.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0
    );
    println!("load average at the end: {}", loadavg());
    println!("command: {}", args.command());

    for (c, d) in clients.iter().zip([&db, &dc]) {
        let ch = connect(d.socket()).await?;
        let _ = call(
            &format!("{} Leases.Delete", c.label),
            LeasesClient::with_interceptor(ch, Ctx::ns(NAMESPACE)).delete(LeaseDelete {
                id: lease.clone(),
                sync: false,
            }),
        )
        .await;
    }
    drop(clients);
    drop(dc);
    drop(db);
    // The daemons' loop filesystems (if any); the guard's drop then finds nothing.
    detach_mounts_below(&guard.0);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    main_on_runtime("berth-bench-snapshots", run(args), || {})
}
