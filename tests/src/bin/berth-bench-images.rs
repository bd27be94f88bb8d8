//! berth-bench-images: image import + unpack and export, berthd side by side with stock
//! containerd 1.6 on the same machine and disk, both driven by the stock `ctr`.
//!
//! One OCI image layout tar is generated once (N gzip layers of ~M MiB of mixed files: many
//! small files of a few KiB, some medium ones of 100 KiB-1 MiB, a few large ones; content half
//! repeated text, half pseudo-random bytes). Then, per run and per daemon (each in a fresh
//! temp root/state/socket), the bench times
//!
//! - `ctr -a SOCK images import --snapshotter overlayfs IMAGE.tar` (content streamed in,
//!   then unpacked into overlayfs snapshots: end-to-end import + unpack), and
//! - `ctr -a SOCK images export OUT.tar NAME`.
//!
//! The page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every
//! timed step when the host allows it; the report says whether it did.
//!
//! Daemons are killed, mounts under the temp dirs detached and temp dirs removed on exit,
//! on error and on SIGINT/SIGTERM; every `ctr` call has a timeout.
//!
//! Run: `cargo run --release -p berth-tests --bin berth-bench-images -- [--layers 5]
//! [--layer-mib 100] [--runs 1]`

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use berth_archive::corpus::LayerBuilder;
use berth_archive::writer::TarEntry;
use berth_archive::Compression;
use berth_image::testimage::{build, oci_layout_tar};
use berth_tests::bench::{
    self, berthd_path, detach_mounts_below, drop_caches, exit_code, median, DaemonSpec, Kind,
};
use clap::Parser;

/// Namespace the images are imported in.
const NAMESPACE: &str = "berth-bench";
/// Name of the generated image.
const IMAGE: &str = "docker.io/library/berth-bench-images:latest";
/// mtime of every generated entry.
const MTIME: i64 = 1_700_000_000;

/// Set by SIGINT/SIGTERM; every wait loop checks it.
static CANCEL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    CANCEL.store(true, Ordering::SeqCst);
}

fn check_cancel() -> Result<()> {
    if CANCEL.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "berth-bench-images",
    about = "berthd vs stock containerd 1.6: ctr images import (+unpack, overlayfs) and export"
)]
struct Args {
    /// Layers in the generated image.
    #[arg(long, default_value_t = 5)]
    layers: usize,
    /// Uncompressed size of each layer's files, in MiB.
    #[arg(long, default_value_t = 100)]
    layer_mib: u64,
    /// Runs per daemon (median reported).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Directory for the image and the daemons' roots (one disk for all).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// berthd binary (default: `berthd` next to this executable).
    #[arg(long)]
    berthd: Option<PathBuf>,
    /// containerd binary.
    #[arg(long, default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
    /// ctr binary.
    #[arg(long, default_value = "/usr/bin/ctr")]
    ctr: PathBuf,
    /// Timeout of one ctr command, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// berthd log level (debug shows per-phase timings, if berthd logs them).
    #[arg(long, default_value = "warn")]
    berthd_log_level: String,
    /// Keep the berthd log: copy it to this path after each run.
    #[arg(long)]
    keep_berthd_log: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Image generation
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic, fast, good enough for incompressible filler.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const TEXT: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit; berth bench images \
layer content line, repeated so that gzip finds something to compress. 0123456789\n";

/// `len` bytes: the first half repeated text, the second half pseudo-random.
fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let text_len = len / 2;
    while v.len() < text_len {
        let n = (text_len - v.len()).min(TEXT.len());
        v.extend_from_slice(&TEXT[..n]);
    }
    let start = v.len();
    v.resize(len, 0);
    rng.fill(&mut v[start..]);
    v
}

/// Counts of the files of one layer, by class.
#[derive(Default, Debug, Clone, Copy)]
struct LayerStats {
    small: usize,
    medium: usize,
    large: usize,
    dirs: usize,
    bytes: u64,
}

/// One uncompressed layer tar of ~`mib` MiB: ~40% small files (1-8 KiB, 100 per directory),
/// ~30% medium (100 KiB-1 MiB), ~30% in 3 large files.
fn make_layer(index: usize, mib: u64) -> (Vec<u8>, LayerStats) {
    let total = mib << 20;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x1234_5678_9abc));
    let mut b = LayerBuilder::new();
    let mut st = LayerStats::default();
    let top = format!("layer{index}");
    let dir = |b: LayerBuilder, name: &str| {
        b.entry(
            TarEntry::dir(format!("{name}/")).mode(0o755).mtime(MTIME),
            b"",
        )
    };
    let file = |b: LayerBuilder, name: &str, data: &[u8]| {
        b.entry(
            TarEntry::file(name, data.len() as u64)
                .mode(0o644)
                .mtime(MTIME),
            data,
        )
    };
    b = dir(b, &top);
    st.dirs += 1;
    // Small files.
    let small_budget = total * 4 / 10;
    let mut written = 0u64;
    let mut d = 0usize;
    while written < small_budget {
        let dname = format!("{top}/small/d{d:04}");
        if d == 0 {
            b = dir(b, &format!("{top}/small"));
            st.dirs += 1;
        }
        b = dir(b, &dname);
        st.dirs += 1;
        for f in 0..100 {
            if written >= small_budget {
                break;
            }
            let len = rng.range(1024, 8 * 1024) as usize;
            let data = content(&mut rng, len);
            b = file(b, &format!("{dname}/f{f:03}.txt"), &data);
            written += len as u64;
            st.small += 1;
        }
        d += 1;
    }
    st.bytes += written;
    // Medium files.
    b = dir(b, &format!("{top}/medium"));
    st.dirs += 1;
    let medium_budget = total * 3 / 10;
    let mut written = 0u64;
    while written < medium_budget {
        let len = rng
            .range(100 << 10, 1 << 20)
            .min(medium_budget - written + 1) as usize;
        let data = content(&mut rng, len);
        b = file(b, &format!("{top}/medium/m{:04}.bin", st.medium), &data);
        written += len as u64;
        st.medium += 1;
    }
    st.bytes += written;
    // Large files.
    b = dir(b, &format!("{top}/large"));
    st.dirs += 1;
    let large_budget = total.saturating_sub(st.bytes);
    for i in 0..3u64 {
        let len = (large_budget / 3) as usize;
        let data = content(&mut rng, len);
        b = file(b, &format!("{top}/large/big{i}.bin"), &data);
        st.bytes += len as u64;
        st.large += 1;
    }
    (b.finish(), st)
}

/// Writes the OCI layout tar to `path`; returns its size and per-layer stats.
fn generate_image(path: &Path, layers: usize, mib: u64) -> Result<(u64, Vec<LayerStats>)> {
    let handles: Vec<_> = (0..layers)
        .map(|i| thread::spawn(move || make_layer(i, mib)))
        .collect();
    let mut raw = Vec::new();
    let mut stats = Vec::new();
    for h in handles {
        let (l, s) = h.join().map_err(|_| anyhow!("layer generator panicked"))?;
        raw.push(l);
        stats.push(s);
    }
    check_cancel()?;
    // Compress the layers in parallel (one image per layer), then assemble with all of them.
    let compressed: Vec<_> = raw
        .iter()
        .map(|l| {
            let l = l.clone();
            thread::spawn(move || build(&[l], Compression::Gzip))
        })
        .collect();
    let mut pre = Vec::new();
    for h in compressed {
        pre.push(h.join().map_err(|_| anyhow!("compressor panicked"))?);
    }
    check_cancel()?;
    // build() over all layers would compress them again, serially: reuse the compressed blobs.
    let built = build_from_parts(&pre);
    drop(raw);
    let tar = oci_layout_tar(&built, IMAGE);
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(&tar)?;
    f.sync_all()?;
    Ok((tar.len() as u64, stats))
}

/// The full image's `Built` (config, manifest as `build` makes them) from one-layer builds,
/// reusing their compressed layer blobs.
fn build_from_parts(parts: &[berth_image::testimage::Built]) -> berth_image::testimage::Built {
    use berth_image::oci::{to_json, Descriptor, Manifest, MEDIA_TYPE_OCI_MANIFEST};
    let diff_ids: Vec<_> = parts.iter().map(|p| p.diff_ids[0]).collect();
    let platform = berth_image::oci::Platform::host();
    let config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        },
    });
    let config = to_json(&config);
    let config_desc = Descriptor::of(berth_image::oci::MEDIA_TYPE_OCI_CONFIG, &config);
    let mut blobs = vec![(config_desc.clone(), config)];
    let mut layer_descs = Vec::new();
    for p in parts {
        let (d, data) = p
            .blobs
            .iter()
            .find(|(d, _)| d.digest == p.layers[0].digest)
            .expect("layer blob")
            .clone();
        layer_descs.push(d.clone());
        blobs.push((d, data));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
        config: config_desc.clone(),
        layers: layer_descs.clone(),
        annotations: Default::default(),
    };
    let manifest = to_json(&manifest);
    let mut manifest_desc = Descriptor::of(MEDIA_TYPE_OCI_MANIFEST, &manifest);
    blobs.push((manifest_desc.clone(), manifest));
    manifest_desc.platform = Some(platform);
    berth_image::testimage::Built {
        blobs,
        manifest: manifest_desc,
        config: config_desc,
        layers: layer_descs,
        diff_ids,
    }
}

// ---------------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------------

/// One daemon in its own fresh directory. Stopped, mounts below it detached and the
/// directory removed on drop.
struct Daemon {
    inner: bench::Daemon,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn spawn(args: &Args, berthd: &Path, kind: Kind) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bench-images-{}-", kind.name()))
            .tempdir_in(&args.dir)
            .context("create daemon directory")?;
        let bin = match kind {
            Kind::Berthd => berthd,
            Kind::Containerd => &args.containerd,
        };
        let spec = DaemonSpec {
            log_level: &args.berthd_log_level,
            ..DaemonSpec::new(kind, bin, dir.path())
        };
        Ok(Daemon {
            inner: bench::Daemon::spawn(&spec)?,
            dir,
        })
    }

    fn pid(&self) -> u32 {
        self.inner.pid()
    }

    fn socket(&self) -> &Path {
        self.inner.socket()
    }

    /// Polls `ctr version` (what this bench measures with) until the daemon answers.
    fn wait_ready(&mut self, args: &Args) -> Result<()> {
        loop {
            check_cancel()?;
            self.inner.check_alive()?;
            if self.socket().exists()
                && ctr(args, self.socket(), &["version"], Duration::from_secs(5)).is_ok()
            {
                return Ok(());
            }
            self.inner.check_ready_timeout()?;
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.inner.stop();
        detach_mounts_below(self.dir.path());
    }
}

/// Runs `ctr -a SOCK -n NAMESPACE ARGS` with a timeout; returns its stdout.
fn ctr(args: &Args, socket: &Path, cmd_args: &[&str], limit: Duration) -> Result<String> {
    let out_dir = tempfile::tempdir_in(&args.dir)?;
    let out = out_dir.path().join("out");
    let err = out_dir.path().join("err");
    let mut child = Command::new(&args.ctr)
        .arg("-a")
        .arg(socket)
        .arg("-n")
        .arg(NAMESPACE)
        .args(cmd_args)
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .spawn()
        .context("spawn ctr")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit || CANCEL.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ctr {} timed out or interrupted", cmd_args.join(" "));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    if !status.success() {
        bail!(
            "ctr {} failed ({status}): {}",
            cmd_args.join(" "),
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }
    Ok(stdout)
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the comm: state is [0]; utime [11], stime [12] (clock ticks).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

#[derive(Debug, Default, Clone)]
struct RunResult {
    import_secs: f64,
    import_cpu: f64,
    export_secs: f64,
    export_bytes: u64,
    snapshots: usize,
}

fn bench_one(
    args: &Args,
    berthd: &Path,
    kind: Kind,
    image: &Path,
    cold: bool,
) -> Result<RunResult> {
    let mut d = Daemon::spawn(args, berthd, kind)?;
    d.wait_ready(args)?;
    let limit = Duration::from_secs(args.timeout_secs);
    if cold {
        let _ = drop_caches();
    }
    let cpu0 = proc_cpu_secs(d.pid());
    let t = Instant::now();
    let image_s = image.to_string_lossy().to_string();
    ctr(
        args,
        d.socket(),
        &["images", "import", "--snapshotter", "overlayfs", &image_s],
        limit,
    )
    .with_context(|| format!("{} import; log:\n{}", kind.name(), d.inner.log_tail()))?;
    let import_secs = t.elapsed().as_secs_f64();
    let import_cpu = proc_cpu_secs(d.pid()) - cpu0;
    let snaps = ctr(
        args,
        d.socket(),
        &["snapshots", "--snapshotter", "overlayfs", "ls"],
        Duration::from_secs(30),
    )?;
    let snapshots = snaps
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    let out = d.dir.path().join("export.tar");
    let out_s = out.to_string_lossy().to_string();
    if cold {
        let _ = drop_caches();
    }
    let t = Instant::now();
    ctr(
        args,
        d.socket(),
        &["images", "export", &out_s, IMAGE],
        limit,
    )
    .with_context(|| format!("{} export; log:\n{}", kind.name(), d.inner.log_tail()))?;
    let export_secs = t.elapsed().as_secs_f64();
    let export_bytes = std::fs::metadata(&out)?.len();
    if kind == Kind::Berthd {
        if let Some(keep) = &args.keep_berthd_log {
            let _ = std::fs::copy(d.inner.log(), keep);
        }
    }
    drop(d);
    Ok(RunResult {
        import_secs,
        import_cpu,
        export_secs,
        export_bytes,
        snapshots,
    })
}

const MIB: f64 = (1u64 << 20) as f64;

fn run(args: &Args) -> Result<()> {
    let berthd = berthd_path(
        args.berthd.as_deref(),
        "run `cargo build --release -p berth-services`",
    )?;
    std::fs::create_dir_all(&args.dir)?;
    let work = tempfile::Builder::new()
        .prefix("bench-images-")
        .tempdir_in(&args.dir)?;
    let image = work.path().join("image.tar");
    println!(
        "generating {} gzip layers of ~{} MiB each in {} ...",
        args.layers,
        args.layer_mib,
        work.path().display()
    );
    let t = Instant::now();
    let (tar_size, stats) = generate_image(&image, args.layers, args.layer_mib)?;
    let s = stats[0];
    println!(
        "image: {:.1} MiB tar ({:.1} MiB uncompressed), per layer ~{} small (1-8 KiB), {} medium \
         (100 KiB-1 MiB), {} large files, {} dirs; generated in {:.1}s",
        tar_size as f64 / MIB,
        stats.iter().map(|s| s.bytes).sum::<u64>() as f64 / MIB,
        s.small,
        s.medium,
        s.large,
        s.dirs,
        t.elapsed().as_secs_f64()
    );
    let cold = drop_caches().is_ok();
    println!(
        "page cache: {}",
        if cold {
            "dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every import and export"
        } else {
            "NOT dropped (no permission): runs are warm"
        }
    );
    let mut res: Vec<(Kind, Vec<RunResult>)> =
        vec![(Kind::Berthd, Vec::new()), (Kind::Containerd, Vec::new())];
    for r in 0..args.runs {
        for (kind, v) in res.iter_mut() {
            check_cancel()?;
            let x = bench_one(args, &berthd, *kind, &image, cold)?;
            println!(
                "run {} {:<10} import+unpack {:7.2}s ({:7.1} MiB/s, daemon CPU {:.1}s, {} snapshots) \
                 export {:6.2}s ({:7.1} MiB/s)",
                r + 1,
                kind.name(),
                x.import_secs,
                tar_size as f64 / MIB / x.import_secs,
                x.import_cpu,
                x.snapshots,
                x.export_secs,
                x.export_bytes as f64 / MIB / x.export_secs
            );
            v.push(x);
        }
    }
    let summary = |v: &[RunResult]| {
        let imp = median(&v.iter().map(|x| x.import_secs).collect::<Vec<_>>());
        let exp = median(&v.iter().map(|x| x.export_secs).collect::<Vec<_>>());
        let eb = v.last().map_or(0, |x| x.export_bytes);
        (imp, tar_size as f64 / MIB / imp, exp, eb as f64 / MIB / exp)
    };
    let b = summary(&res[0].1);
    let c = summary(&res[1].1);
    println!();
    println!("median of {} run(s):", args.runs);
    println!(
        "{:<12} {:>14} {:>14} {:>11} {:>14}",
        "daemon", "import+unpack", "MiB/s", "export", "MiB/s"
    );
    for (name, x) in [("berthd", b), ("containerd", c)] {
        println!(
            "{:<12} {:>13.2}s {:>14.1} {:>10.2}s {:>14.1}",
            name, x.0, x.1, x.2, x.3
        );
    }
    let ri = b.1 / c.1;
    let re = b.3 / c.3;
    println!(
        "ratio berth/containerd throughput: import+unpack {ri:.2}x (target >= 1.5x: {}), export {re:.2}x",
        if ri >= 1.5 { "PASS" } else { "FAIL" }
    );
    println!(
        "command: cargo run --release -p berth-tests --bin berth-bench-images -- --layers {} \
         --layer-mib {} --runs {} --dir {}",
        args.layers,
        args.layer_mib,
        args.runs,
        args.dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    exit_code("berth-bench-images", run(&args))
}
