//! Apply and diff round trips: modes, owners, times, xattrs, hard links,
//! symlinks, devices, fifos, long names; a diff of two trees re-applied over
//! the lower tree gives the upper tree.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_archive::corpus::LayerBuilder;
use berth_archive::writer::TarEntry;
use berth_archive::{write_diff, write_tree, WhiteoutMode};
use common::{apply, mkdir, snapshot, xattr};

/// A v2 file capability granting CAP_NET_BIND_SERVICE (effective).
const CAP_NET_BIND: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn long_dir() -> String {
    format!("deep/{}/", "d".repeat(120))
}

fn rich_layer() -> Vec<u8> {
    rich_layer_with(true)
}

/// `implicit`: include a file whose parents the layer does not list (they
/// get the current time, so trees applied at different times differ there).
fn rich_layer_with(implicit: bool) -> Vec<u8> {
    let t = 1_600_000_000;
    let big = pseudo_random(3 << 20);
    let mut with_atime = TarEntry::file("etc/atime", 2).mtime(t + 5);
    with_atime
        .pax
        .push(("atime".into(), format!("{}", t + 50).into_bytes()));
    let b = LayerBuilder::new()
        .entry(TarEntry::dir("etc/").mtime(t), b"")
        .entry(TarEntry::file("etc/passwd", 5).mtime(t + 1), b"root\n")
        .entry(with_atime, b"at")
        .entry(TarEntry::dir("tmp/").mode(0o1777).mtime(t), b"")
        .entry(TarEntry::dir("usr/").mtime(t), b"")
        .entry(
            TarEntry::dir("usr/bin/")
                .mtime(t)
                .xattr("user.dirnote", b"dir"),
            b"",
        )
        .entry(
            TarEntry::file("usr/bin/su", 4).mode(0o4755).mtime(t + 2),
            b"su!\n",
        )
        .entry(
            TarEntry::file("usr/bin/ping", 5)
                .mode(0o755)
                .owner(1000, 1001)
                .mtime(t + 3)
                .xattr("security.capability", CAP_NET_BIND)
                .xattr("user.note", b"v1"),
            b"ping\n",
        )
        .entry(TarEntry::hardlink("usr/bin/su-link", "usr/bin/su"), b"")
        .entry(
            TarEntry::file("usr/bin/big", big.len() as u64).mtime(t),
            &big,
        )
        .entry(TarEntry::dir("home/").mtime(t), b"")
        .entry(
            TarEntry::dir("home/u/")
                .owner(1000, 1000)
                .mode(0o700)
                .mtime(t),
            b"",
        )
        .entry(
            TarEntry::file("home/u/secret", 3)
                .owner(1000, 1000)
                .mode(0o600)
                .mtime(t),
            b"pw\n",
        )
        .entry(TarEntry::hardlink("home/u/hl", "usr/bin/su"), b"")
        .entry(
            TarEntry::symlink("bin", "usr/bin").mtime(t).owner(7, 8),
            b"",
        )
        .entry(TarEntry::symlink("abs", "/etc/passwd").mtime(t), b"")
        .entry(TarEntry::symlink("longlink", "x".repeat(150)).mtime(t), b"")
        .entry(TarEntry::dir("dev/").mtime(t), b"")
        .entry(
            TarEntry::char_device("dev/null", 1, 3).mode(0o666).mtime(t),
            b"",
        )
        .entry(
            TarEntry::block_device("dev/loop9", 7, 9)
                .mode(0o660)
                .owner(0, 6)
                .mtime(t),
            b"",
        )
        .entry(TarEntry::fifo("dev/fifo").mode(0o600).mtime(t), b"")
        .entry(TarEntry::dir("deep/").mtime(t), b"")
        .entry(TarEntry::dir(long_dir()).mtime(t), b"")
        .entry(
            TarEntry::file(format!("{}file", long_dir()), 4).mtime(t),
            b"deep",
        )
        .entry(
            TarEntry::file(format!("{}file", long_dir()), 4).mtime(t),
            b"deep",
        );
    if implicit {
        // A parent that the layer does not list.
        b.entry(TarEntry::file("implicit/parent/file", 1).mtime(t), b"i")
            .finish()
    } else {
        b.finish()
    }
}

#[test]
fn apply_preserves_metadata() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = mkdir(tmp.path(), "root");
    apply(&rich_layer(), &root, WhiteoutMode::Remove);
    let t = 1_600_000_000;

    let su = fs::symlink_metadata(root.join("usr/bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!(su.nlink(), 3);
    assert_eq!(su.mtime(), t + 2);
    let hl = fs::symlink_metadata(root.join("home/u/hl")).unwrap();
    assert_eq!(hl.ino(), su.ino());

    let ping = root.join("usr/bin/ping");
    let st = fs::symlink_metadata(&ping).unwrap();
    assert_eq!(
        (st.uid(), st.gid(), st.mode() & 0o7777),
        (1000, 1001, 0o755)
    );
    assert_eq!(
        xattr(&ping, "security.capability").as_deref(),
        Some(&CAP_NET_BIND[..])
    );
    assert_eq!(xattr(&ping, "user.note").as_deref(), Some(&b"v1"[..]));
    assert_eq!(
        xattr(&root.join("usr/bin"), "user.dirnote").as_deref(),
        Some(&b"dir"[..])
    );

    let tmpdir = fs::symlink_metadata(root.join("tmp")).unwrap();
    assert_eq!(tmpdir.mode() & 0o7777, 0o1777);
    assert_eq!(tmpdir.mtime(), t);
    assert_eq!(fs::symlink_metadata(root.join("etc")).unwrap().mtime(), t);
    let at = fs::symlink_metadata(root.join("etc/atime")).unwrap();
    assert_eq!((at.mtime(), at.atime()), (t + 5, t + 50));

    let bin = fs::symlink_metadata(root.join("bin")).unwrap();
    assert!(bin.file_type().is_symlink());
    assert_eq!((bin.uid(), bin.gid(), bin.mtime()), (7, 8, t));
    assert_eq!(
        fs::read_link(root.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(root.join("longlink"))
            .unwrap()
            .as_os_str()
            .len(),
        150
    );

    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lp = fs::symlink_metadata(root.join("dev/loop9")).unwrap();
    assert!(lp.file_type().is_block_device());
    assert_eq!(
        (libc::major(lp.rdev()), libc::minor(lp.rdev()), lp.gid()),
        (7, 9, 6)
    );
    assert!(fs::symlink_metadata(root.join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());

    assert_eq!(
        fs::read(root.join(format!("{}file", long_dir()))).unwrap(),
        b"deep"
    );
    assert_eq!(
        fs::read(root.join("usr/bin/big")).unwrap(),
        pseudo_random(3 << 20)
    );
    assert_eq!(fs::read(root.join("implicit/parent/file")).unwrap(), b"i");
    assert_eq!(
        fs::symlink_metadata(root.join("implicit")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn tree_and_diff_round_trip() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = mkdir(tmp.path(), "a");
    apply(&rich_layer(), &a, WhiteoutMode::Remove);
    let want = snapshot(&a, false);

    let mut tree = Vec::new();
    let stats = write_tree(&a, &mut tree).unwrap();
    assert!(stats.hardlinks >= 2, "{stats:?}");
    let b = mkdir(tmp.path(), "b");
    apply(&tree, &b, WhiteoutMode::Remove);
    assert_eq!(snapshot(&b, false), want);

    let empty = mkdir(tmp.path(), "empty");
    let mut diff = Vec::new();
    let stats = write_diff(&empty, &a, &mut diff).unwrap();
    assert_eq!(stats.whiteouts, 0);
    let c = mkdir(tmp.path(), "c");
    apply(&diff, &c, WhiteoutMode::Remove);
    assert_eq!(snapshot(&c, false), want);

    // Deterministic: the same trees give the same bytes.
    let mut again = Vec::new();
    write_diff(&empty, &a, &mut again).unwrap();
    assert_eq!(diff, again);

    // Identical trees give an empty layer.
    let mut none = Vec::new();
    let stats = write_diff(&a, &b, &mut none).unwrap();
    assert_eq!(stats.entries, 0, "{:?}", String::from_utf8_lossy(&none));
}

fn change_layer() -> Vec<u8> {
    let t = 1_600_000_000;
    LayerBuilder::new()
        // Same size and mtime, other content: only a content compare sees it.
        .entry(TarEntry::dir("etc/").mode(0o750).mtime(t + 9), b"")
        .entry(TarEntry::file("etc/passwd", 5).mtime(t + 1), b"user\n")
        .entry(TarEntry::file("etc/hostname", 5).mtime(t + 2), b"host\n")
        .entry(TarEntry::hardlink("etc/hostname-link", "etc/hostname"), b"")
        .whiteout("home/u/secret")
        .whiteout("deep")
        .entry(TarEntry::symlink("bin", "usr/sbin").mtime(t), b"")
        .entry(
            TarEntry::file("usr/bin/ping", 5)
                .mode(0o755)
                .owner(1000, 1001)
                .mtime(t + 3)
                .xattr("security.capability", CAP_NET_BIND)
                .xattr("user.note", b"v2"),
            b"ping\n",
        )
        // A symlink replaced by a directory, a directory by a file.
        .entry(TarEntry::dir("abs/").mtime(t), b"")
        .entry(TarEntry::file("abs/inner", 1).mtime(t), b"x")
        .entry(TarEntry::file("tmp", 3).mtime(t), b"tmp")
        // An opaque directory with new content.
        .entry(TarEntry::dir("usr/").mtime(t), b"")
        .opaque("usr")
        // A directory entry merged into an existing directory keeps the xattrs
        // it had (as with containerd), so the diff cannot remove one: keep it.
        .entry(
            TarEntry::dir("usr/bin/")
                .mtime(t)
                .xattr("user.dirnote", b"dir"),
            b"",
        )
        .entry(
            TarEntry::file("usr/bin/su", 6).mode(0o4711).mtime(t + 7),
            b"newsu\n",
        )
        .entry(TarEntry::fifo("dev/fifo").mode(0o640).mtime(t), b"")
        .finish()
}

#[test]
fn diff_of_changes_reapplies_to_the_upper_tree() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = mkdir(tmp.path(), "lower");
    apply(&rich_layer_with(false), &lower, WhiteoutMode::Remove);
    let upper = mkdir(tmp.path(), "upper");
    apply(&rich_layer_with(false), &upper, WhiteoutMode::Remove);
    apply(&change_layer(), &upper, WhiteoutMode::Remove);
    assert!(!upper.join("home/u/secret").exists());
    assert!(
        !upper.join("usr/bin/ping").exists(),
        "opaque usr/ hides ping"
    );
    assert_eq!(fs::read(upper.join("etc/passwd")).unwrap(), b"user\n");

    let mut diff = Vec::new();
    let stats = write_diff(&lower, &upper, &mut diff).unwrap();
    assert!(stats.whiteouts >= 3, "{stats:?}");

    let again = mkdir(tmp.path(), "again");
    apply(&rich_layer_with(false), &again, WhiteoutMode::Remove);
    apply(&diff, &again, WhiteoutMode::Remove);
    let (got, want) = (snapshot(&again, false), snapshot(&upper, false));
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "entry {}", k.display());
    }
    assert_eq!(got, want);
}
