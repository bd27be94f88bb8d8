//! The aufs and devmapper snapshotters through the stock `ctr`: the
//! multi-layer test image imported into each (unpacked client-side by ctr
//! through Diff.Apply), containers run from it with the stock runc shim and
//! with Berth's shim (each mounting the snapshot its own way: the FUSE mount
//! helper for aufs, a block device for devmapper). The top layer's file is
//! seen, whiteouts and opaque directories hold inside the container, and a
//! file one container writes is not seen by another from the same image.

use berth_archive::Compression;
use berth_image::testimage;
use berth_tests::{ctr, random_id, success, Daemon, NamespaceCgroups};

const IMAGE: &str = "docker.io/library/berth-test:snapshotters";

const RUNC_V2: &str = "io.containerd.runc.v2";
const BERTH_V2: &str = "io.containerd.berth.v2";

struct Fixture {
    d: Daemon,
    ns: String,
    snapshotter: &'static str,
    runtime: &'static str,
    _dir: tempfile::TempDir,
    /// Last: after the daemon.
    _cgroups: NamespaceCgroups,
}

impl Fixture {
    async fn new(snapshotter: &'static str, runtime: &'static str) -> Fixture {
        berth_tests::helpers_on_path();
        let d = Daemon::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let built = testimage::build(&testimage::layers(), Compression::Gzip);
        let tar = dir.path().join("img.tar");
        std::fs::write(&tar, testimage::oci_layout_tar(&built, IMAGE)).expect("write image");
        let ns = format!("t{}", random_id());
        let f = Fixture {
            d,
            _cgroups: NamespaceCgroups(ns.clone()),
            ns,
            snapshotter,
            runtime,
            _dir: dir,
        };
        let tar = tar.to_str().expect("utf-8 path").to_string();
        f.ok(&["images", "import", "--snapshotter", snapshotter, &tar]);
        f
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-n", &self.ns];
        match args.split_first() {
            Some((&"run", rest)) => {
                all.extend_from_slice(&[
                    "run",
                    "--runtime",
                    self.runtime,
                    "--snapshotter",
                    self.snapshotter,
                ]);
                all.extend_from_slice(rest);
            }
            _ => all.extend_from_slice(args),
        }
        ctr(&self.d, &all)
    }

    fn ok(&self, args: &[&str]) -> String {
        success(&self.ctr(args), &format!("ctr {args:?}"))
    }

    fn cleanup(&self, ids: &[&str]) {
        for id in ids {
            let _ = self.ctr(&["tasks", "kill", "-s", "KILL", id]);
            let _ = self.ctr(&["tasks", "rm", "-f", id]);
            let _ = self.ctr(&["containers", "rm", id]);
        }
    }
}

async fn image_layers_hold_in_containers(snapshotter: &'static str, runtime: &'static str) {
    let f = Fixture::new(snapshotter, runtime).await;
    let motd = f.ok(&["run", "--rm", IMAGE, "motd", "cat", "/etc/motd"]);
    assert_eq!(motd.as_bytes(), testimage::MOTD, "top layer's /etc/motd");

    // Whiteouts and opaque directories of the layers hold, and no whiteout
    // file shows through.
    let listing = f.ok(&[
        "run",
        "--rm",
        IMAGE,
        "listing",
        "sh",
        "-c",
        "ls -a /opq /data /; cat /usr/share/berth/a",
    ]);
    for absent in ["old", "sub", "gone", "gone-top", ".wh."] {
        assert!(
            !listing.split_whitespace().any(|w| w.starts_with(absent)),
            "{absent} must not be visible in the container:\n{listing}"
        );
    }
    for present in ["new", "keep", "bin", "etc"] {
        assert!(
            listing.split_whitespace().any(|w| w == present),
            "{present} must be visible:\n{listing}"
        );
    }
    for p in testimage::ABSENT {
        let out = f.ctr(&[
            "run",
            "--rm",
            IMAGE,
            &format!("absent-{}", random_id()),
            "test",
            "-e",
            &format!("/{p}"),
        ]);
        assert_eq!(out.status.code(), Some(1), "/{p} must be absent: {out:?}");
    }

    // Writes stay in their container: one writes and deletes, the next from
    // the same image sees the image as it was.
    f.ok(&[
        "run",
        IMAGE,
        "writer",
        "sh",
        "-c",
        "echo mine > /written && rm /data/keep && echo changed > /etc/motd && cat /written",
    ]);
    let other = f.ok(&[
        "run",
        "--rm",
        IMAGE,
        "reader",
        "sh",
        "-c",
        "test ! -e /written && test -e /data/keep && cat /etc/motd",
    ]);
    assert_eq!(other.as_bytes(), testimage::MOTD);
    let out = f.ctr(&["run", "--rm", IMAGE, "fails", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "exit code propagates: {out:?}");
    f.cleanup(&["writer"]);
    // Nothing left mounted from the finished containers.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&f.d.state().display().to_string()),
        "rootfs mounts left behind:\n{mounts}"
    );
}

macro_rules! cases {
    ($($name:ident: $sn:expr, $rt:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                image_layers_hold_in_containers($sn, $rt).await;
            }
        )*
    };
}

cases! {
    aufs_stock_shim: "aufs", RUNC_V2;
    aufs_berth_shim: "aufs", BERTH_V2;
    devmapper_stock_shim: "devmapper", RUNC_V2;
    devmapper_berth_shim: "devmapper", BERTH_V2;
}

/// Bytes in use on the filesystem holding `path`.
fn used_bytes(path: &std::path::Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    (st.blocks() - st.blocks_free()) * st.fragment_size()
}

/// Ten running containers from one 100 MiB image share its blocks: the pool
/// holds well under twice the image's blocks (block clones, no copies).
#[tokio::test]
async fn devmapper_containers_share_the_image_blocks() {
    berth_tests::helpers_on_path();
    let ns = format!("t{}", random_id());
    // Before the daemon: dropped after it.
    let _cgroups = NamespaceCgroups(ns.clone());
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut layers = testimage::layers();
    let big = berth_tests::random_bytes(100 << 20);
    layers.push(
        berth_archive::corpus::LayerBuilder::new()
            .file("big", &big)
            .finish(),
    );
    let built = testimage::build(&layers, Compression::Uncompressed);
    let tar = dir.path().join("img.tar");
    std::fs::write(&tar, testimage::oci_layout_tar(&built, IMAGE)).expect("write image");
    drop(big);
    let pool = d.root().join("io.containerd.snapshotter.v1.devmapper/pool");
    let run = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        success(&ctr(&d, &all), &format!("ctr {args:?}"))
    };
    // The pool is made on first use: make it, then measure from there.
    run(&[
        "snapshots",
        "--snapshotter",
        "devmapper",
        "prepare",
        "probe",
    ]);
    let empty = used_bytes(&pool);
    run(&[
        "images",
        "import",
        "--snapshotter",
        "devmapper",
        tar.to_str().expect("utf-8"),
    ]);
    let with_image = used_bytes(&pool);
    let image = with_image - empty;
    assert!(image >= 100 << 20, "the image's blocks: {image} bytes");
    let ids: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    for id in &ids {
        run(&[
            "run",
            "-d",
            "--snapshotter",
            "devmapper",
            IMAGE,
            id,
            "sleep",
            "300",
        ]);
    }
    // Each container reads the big file: shared blocks stay shared.
    for id in &ids {
        let sum = run(&[
            "tasks",
            "exec",
            "--exec-id",
            "sum",
            id,
            "sh",
            "-c",
            "wc -c < /big",
        ]);
        assert_eq!(sum.trim(), (100u64 << 20).to_string());
    }
    let with_containers = used_bytes(&pool);
    let total = with_containers - empty;
    let ratio = total as f64 / image as f64;
    println!(
        "devmapper pool: image {:.1} MiB, image + 10 running containers {:.1} MiB ({ratio:.2}x the image)",
        image as f64 / (1 << 20) as f64,
        total as f64 / (1 << 20) as f64
    );
    assert!(
        ratio < 1.5,
        "10 containers use {ratio:.2}x the image's blocks"
    );
    for id in &ids {
        let _ = ctr(&d, &["-n", &ns, "tasks", "kill", "-s", "KILL", id]);
        let _ = ctr(&d, &["-n", &ns, "tasks", "rm", "-f", id]);
        let _ = ctr(&d, &["-n", &ns, "containers", "rm", id]);
    }
}
