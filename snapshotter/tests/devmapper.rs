//! The conformance suite against the devmapper backend (loop driver: root,
//! loop devices, real mounts), plus its own properties: block sharing,
//! owned/shared usage, re-attach after reopen, crash leftovers, SIGKILL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_snapshotter::devmapper::{loopdev, Driver};
use berth_snapshotter::{
    DevmapperConfig, DevmapperSnapshotter, Kind, Mount, MountGuard, Snapshotter,
};

const MIB: u64 = 1 << 20;

fn config() -> DevmapperConfig {
    DevmapperConfig {
        driver: Driver::Loop,
        pool_size: 8 << 30,
        base_image_size: 512 * MIB,
        ..DevmapperConfig::default()
    }
}

fn devmapper(root: &Path) -> Box<dyn Snapshotter> {
    match DevmapperSnapshotter::new(root, &config()) {
        Ok(s) => Box::new(s),
        Err(e) => panic!("devmapper snapshotter in {}: {e}", root.display()),
    }
}

berth_snapshotter::snapshotter_suite_tests!(berth_snapshotter::devmapper::NAME, devmapper);

/// Loop devices backing any file below `root`.
fn attached_below(root: &Path) -> Vec<loopdev::Attached> {
    loopdev::list()
        .unwrap()
        .into_iter()
        .filter(|a| a.backing.starts_with(root))
        .collect()
}

/// [`attached_below`] once the devices released are gone: the kernel detaches an autoclear
/// device from a work item after its last close, so wait for that (up to 30 s: with the
/// suite's tests in parallel on a loaded 2-core machine, 5 s was once not enough).
fn detached_below(root: &Path) -> Vec<loopdev::Attached> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = attached_below(root);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temp dir whose mounts and loop devices are released even when the
/// test fails.
struct TestRoot {
    dir: tempfile::TempDir,
}

impl TestRoot {
    fn new() -> TestRoot {
        TestRoot {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn mp(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = berth_snapshotter::mount::unmount_recursive(self.dir.path());
        for a in attached_below(self.dir.path()) {
            let _ = loopdev::detach_index(a.index);
        }
    }
}

fn open(root: &Path, config: &DevmapperConfig) -> DevmapperSnapshotter {
    DevmapperSnapshotter::new(root, config).unwrap()
}

fn mount(m: &[Mount], target: &Path) -> MountGuard {
    MountGuard::mount(m, target).unwrap()
}

fn write_mib(dir: &Path, name: &str, mib: u64, seed: u8) {
    // Distinct content per MiB; an existing file is overwritten in place
    // (no truncation), so the filesystem rewrites the same blocks.
    let mut buf = vec![0u8; MIB as usize];
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(name))
        .unwrap();
    for i in 0..mib {
        for (j, b) in buf.iter_mut().enumerate() {
            *b = (j as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8)
                .wrapping_add(seed);
        }
        std::io::Write::write_all(&mut f, &buf).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn ten_containers_share_the_image_blocks() {
    let t = TestRoot::new();
    let cfg = DevmapperConfig {
        base_image_size: 1 << 30,
        ..config()
    };
    let sn = open(&t.root(), &cfg);
    let empty_pool = sn.pool_usage().unwrap();
    let start = Instant::now();
    let m = sn.prepare("layer-a", "", Default::default()).unwrap();
    let prepare_base = start.elapsed();
    let g = mount(&m, &t.mp("layer"));
    for i in 0..10 {
        write_mib(g.target(), &format!("f{i}"), 10, i as u8);
    }
    g.unmount().unwrap();
    let start = Instant::now();
    sn.commit("layer", "layer-a", Default::default()).unwrap();
    let commit = start.elapsed();
    let image = sn.usage("layer").unwrap().size as u64;
    assert!(image >= 100 * MIB, "image owns {image} bytes");
    let with_image = sn.pool_usage().unwrap() - empty_pool;

    let mut guards = Vec::new();
    let mut prepare_child = Duration::ZERO;
    for c in 0..10 {
        let start = Instant::now();
        let m = sn
            .prepare(&format!("c{c}"), "layer", Default::default())
            .unwrap();
        prepare_child += start.elapsed();
        let g = mount(&m, &t.mp(&format!("c{c}")));
        // Each container writes a little of its own.
        std::fs::write(g.target().join("hostname"), format!("c{c}\n")).unwrap();
        guards.push(g);
    }
    for g in &guards {
        nix::unistd::syncfs(std::fs::File::open(g.target()).unwrap()).unwrap();
    }
    let total = sn.pool_usage().unwrap() - empty_pool;
    println!(
        "devmapper: image owns {} MiB; pool holds {} MiB for the image, {} MiB for image + 10 \
         running containers ({:.2}x the image); prepare base {:?}, commit {:?}, prepare child \
         (mean of 10) {:?}",
        image / MIB,
        with_image / MIB,
        total / MIB,
        total as f64 / image as f64,
        prepare_base,
        commit,
        prepare_child / 10
    );
    assert!(total < 2 * image, "pool uses {total} bytes, image {image}");
    for c in 0..10 {
        let (owned, shared) = sn.block_usage(&format!("c{c}")).unwrap();
        assert!(shared >= 100 * MIB, "c{c} shares only {shared} bytes");
        assert!(owned < 16 * MIB, "c{c} owns {owned} bytes");
    }
    drop(guards);
    sn.close();
    assert!(detached_below(t.dir.path()).is_empty());
}

#[test]
fn owned_and_shared_usage() {
    let t = TestRoot::new();
    let sn = open(&t.root(), &config());
    let m = sn.prepare("base-a", "", Default::default()).unwrap();
    let g = mount(&m, &t.mp("base"));
    write_mib(g.target(), "data", 8, 1);
    g.unmount().unwrap();
    sn.commit("base", "base-a", Default::default()).unwrap();
    let base = sn.usage("base").unwrap();
    assert!(base.size as u64 >= 8 * MIB, "{base:?}");

    let m = sn.prepare("child", "base", Default::default()).unwrap();
    let (owned0, shared0) = sn.block_usage("child").unwrap();
    assert!(
        shared0 >= 8 * MIB,
        "a fresh clone shares its parent's blocks ({shared0})"
    );
    assert!(owned0 < MIB, "a fresh clone owns nothing much ({owned0})");
    assert_eq!(sn.shared_usage("child").unwrap(), Some(shared0 as i64));

    let g = mount(&m, &t.mp("child"));
    write_mib(g.target(), "more", 4, 2);
    g.unmount().unwrap();
    let live = sn.usage("child").unwrap();
    let (owned1, _) = sn.block_usage("child").unwrap();
    assert!(owned1 >= owned0 + 4 * MIB, "owned {owned0} -> {owned1}");
    assert_eq!(live.size as u64, owned1);
    assert_eq!(live.inodes, 1, "the child added one file: {live:?}");
    // Overwriting the parent's file in place un-shares those blocks (the
    // block-level copy-on-write).
    let g = mount(&sn.mounts("child").unwrap(), &t.mp("child"));
    write_mib(g.target(), "data", 8, 3);
    g.unmount().unwrap();
    let (owned2, shared2) = sn.block_usage("child").unwrap();
    assert!(owned2 >= owned1 + 8 * MIB, "owned {owned1} -> {owned2}");
    assert!(
        shared2 + 8 * MIB <= shared0 + MIB,
        "shared {shared0} -> {shared2}"
    );
    sn.remove("child").unwrap();
    // The parent keeps its blocks, now its own again (once xfs has run its
    // deferred inactivation of the deleted image: sync flushes it).
    let pool = std::fs::File::open(t.root().join("pool")).unwrap();
    let mut shared = u64::MAX;
    for _ in 0..50 {
        nix::unistd::syncfs(&pool).unwrap();
        shared = sn.block_usage("base").unwrap().1;
        if shared == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(pool);
    assert_eq!(
        shared, 0,
        "base still shares blocks after its child is gone"
    );
    sn.close();
    assert!(detached_below(t.dir.path()).is_empty());
}

#[test]
fn close_releases_and_reopen_reattaches() {
    let t = TestRoot::new();
    let root = t.root();
    let sn = open(&root, &config());
    let m = sn.prepare("a", "", Default::default()).unwrap();
    let g = mount(&m, &t.mp("a"));
    std::fs::write(g.target().join("f"), b"kept").unwrap();
    g.unmount().unwrap();
    sn.view("v", "", Default::default()).unwrap();
    assert_eq!(attached_below(&root).len(), 3, "pool, active, view");
    drop(sn);
    assert!(
        detached_below(&root).is_empty(),
        "close released every device"
    );
    assert!(berth_snapshotter::mount::mounts_below(&root)
        .unwrap()
        .is_empty());

    let sn = open(&root, &config());
    let m2 = sn.mounts("a").unwrap();
    assert_eq!(m, m2, "the mount names a stable device path");
    let g = mount(&m2, &t.mp("a"));
    assert_eq!(std::fs::read(g.target().join("f")).unwrap(), b"kept");
    g.unmount().unwrap();
    let g = mount(&sn.mounts("v").unwrap(), &t.mp("v"));
    let err = std::fs::write(g.target().join("x"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    g.unmount().unwrap();
    sn.close();
    assert!(detached_below(&root).is_empty());
}

#[test]
fn commit_of_a_mounted_snapshot_is_refused() {
    let t = TestRoot::new();
    let sn = open(&t.root(), &config());
    let m = sn.prepare("a", "", Default::default()).unwrap();
    let g = mount(&m, &t.mp("a"));
    let err = sn.commit("c", "a", Default::default()).unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::FailedPrecondition);
    g.unmount().unwrap();
    sn.commit("c", "a", Default::default()).unwrap();
    assert_eq!(sn.stat("c").unwrap().kind, Kind::Committed);
}

#[test]
fn crash_leftovers_are_cleaned() {
    let t = TestRoot::new();
    let root = t.root();
    let images = root.join("pool/images");
    let sn = open(&root, &config());
    sn.prepare("a", "", Default::default()).unwrap();
    sn.commit("c", "a", Default::default()).unwrap();
    sn.prepare("active", "c", Default::default()).unwrap();
    // What a crash leaves: a half-built staging image, an image of a
    // snapshot whose record never committed, and loop devices attached
    // (without autoclear, as losetup does) to those and to a committed
    // snapshot's image.
    std::fs::write(images.join("new-999-1.img"), b"partial").unwrap();
    std::fs::copy(images.join("1.img"), images.join("77.img")).unwrap();
    for f in ["new-999-1.img", "77.img", "1.img"] {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(images.join(f))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    drop(sn);
    // The stray devices keep the pool busy: it stays mounted.
    assert_eq!(attached_below(&images).len(), 3);

    let sn = open(&root, &config());
    sn.cleanup().unwrap();
    let left = detached_below(&images);
    assert!(left.is_empty(), "{left:?}");
    let mut names: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["1.img", "2.img"]);
    // The active snapshot still works.
    let g = mount(&sn.mounts("active").unwrap(), &t.mp("active"));
    std::fs::write(g.target().join("f"), b"x").unwrap();
    g.unmount().unwrap();
    sn.close();
    assert!(detached_below(&root).is_empty());
}

const CHILD_ENV: &str = "BERTH_DEVMAPPER_SIGKILL_ROOT";

/// Not a test by itself: the child process of `sigkill_leaves_nothing`
/// (does nothing unless that test starts it).
#[test]
fn sigkill_child_process() {
    let Some(root) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let sn = open(Path::new(&root), &config());
    let mut parent = String::new();
    let pid = std::process::id();
    for i in 0.. {
        let key = format!("k{pid}-{i}");
        sn.prepare(&key, &parent, Default::default()).unwrap();
        sn.view(&format!("v{pid}-{i}"), &parent, Default::default())
            .unwrap();
        let name = format!("c{pid}-{i}");
        sn.commit(&name, &key, Default::default()).unwrap();
        parent = name;
    }
}

#[test]
fn sigkill_leaves_nothing_startup_cannot_clean() {
    let t = TestRoot::new();
    let root = t.root();
    let exe = std::env::current_exe().unwrap();
    for round in 0..3 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &root)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill it mid-flight: after a few snapshots, at a varying moment.
        let images = root.join("pool/images");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0);
            if n >= 4 + round * 3 {
                break;
            }
            assert!(Instant::now() < deadline, "child made no progress");
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(7 * round as u64));
        child.kill().unwrap();
        child.wait().unwrap();

        // The killed process's devices went with it (autoclear); only the
        // pool's, held by its mount, is left.
        let left = detached_below(&images);
        assert!(left.is_empty(), "round {round}: {left:?}");

        let sn = open(&root, &config());
        sn.cleanup().unwrap();
        let mut records = Vec::new();
        sn.walk(&[], &mut |i| {
            records.push(i);
            Ok(())
        })
        .unwrap();
        // Every image belongs to a record, and every active one mounts.
        let n_images = std::fs::read_dir(&images).unwrap().count();
        assert_eq!(n_images, records.len(), "round {round}");
        for i in &records {
            if i.kind != Kind::Committed {
                let g = mount(&sn.mounts(&i.name).unwrap(), &t.mp("check"));
                g.unmount().unwrap();
            }
        }
        sn.close();
        assert!(detached_below(&root).is_empty(), "round {round}");
    }
}

#[test]
fn unsupported_configs_say_why() {
    let t = TestRoot::new();
    let cfg = DevmapperConfig {
        driver: Driver::DmThin,
        ..config()
    };
    if !Path::new("/dev/mapper/control").exists() {
        let err = DevmapperSnapshotter::new(&t.root(), &cfg).err().unwrap();
        assert_eq!(err.kind(), berth_errdefs::ErrorKind::NotImplemented);
        assert!(err.to_string().contains("/dev/mapper/control"), "{err}");
    }
    let json = r#"{"driver":"loop","pool_size":1,"bogus":1}"#;
    assert!(serde_json::from_str::<DevmapperConfig>(json).is_err());
    let c: DevmapperConfig =
        serde_json::from_str(r#"{"driver":"dm-thin","fs_type":"xfs","pool_fs":"btrfs"}"#).unwrap();
    assert_eq!(c.driver, Driver::DmThin);
    assert_eq!(c.base_image_size, 10 << 30);
}

/// xfs snapshots on a btrfs pool: a child and a view of the same parent
/// (clones with one filesystem UUID) mounted at once.
#[test]
fn xfs_snapshots_on_a_btrfs_pool() {
    let t = TestRoot::new();
    let cfg = DevmapperConfig {
        fs_type: berth_snapshotter::devmapper::FsType::Xfs,
        pool_fs: berth_snapshotter::devmapper::PoolFs::Btrfs,
        ..config()
    };
    let sn = open(&t.root(), &cfg);
    let m = sn.prepare("a", "", Default::default()).unwrap();
    assert_eq!(m[0].kind, "xfs");
    let g = mount(&m, &t.mp("a"));
    std::fs::write(g.target().join("f"), b"parent").unwrap();
    g.unmount().unwrap();
    let before = sn.usage("a").unwrap();
    sn.commit("c", "a", Default::default()).unwrap();
    assert_eq!(sn.usage("c").unwrap(), before);
    let child = mount(
        &sn.prepare("child", "c", Default::default()).unwrap(),
        &t.mp("child"),
    );
    let view = mount(&sn.view("v", "c", Default::default()).unwrap(), &t.mp("v"));
    std::fs::write(child.target().join("f"), b"child").unwrap();
    assert_eq!(std::fs::read(view.target().join("f")).unwrap(), b"parent");
    let err = std::fs::write(view.target().join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    drop(view);
    drop(child);
    let (_, shared) = sn.block_usage("child").unwrap();
    assert!(shared > 0, "a btrfs clone shares its parent's extents");
    sn.close();
    assert!(detached_below(t.dir.path()).is_empty());
}
