//! Whiteouts in the three modes: native deletion, overlayfs conversion
//! (checked through a real overlay mount) and aufs-style kept files.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_archive::corpus::LayerBuilder;
use berth_archive::{write_overlay_upper_diff, write_tree, WhiteoutMode};
use common::{apply, mkdir, mount_overlay_ro, snapshot, xattr};

fn lower_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("a/")
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("a/gonedir/")
        .file("a/gonedir/f", b"f")
        .dir("d/")
        .file("d/old1", b"old1")
        .dir("d/sub/")
        .file("d/sub/old2", b"old2")
        .file("top", b"top")
        .finish()
}

fn upper_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("a/")
        .whiteout("a/gone")
        .whiteout("a/gonedir")
        .dir("d/")
        .opaque("d")
        .file("d/new", b"new")
        .whiteout("top")
        .finish()
}

/// What the merged image must look like.
fn check_merged(root: &Path) {
    assert_eq!(fs::read(root.join("a/keep")).unwrap(), b"keep");
    assert!(
        fs::symlink_metadata(root.join("a/gone")).is_err(),
        "a/gone visible"
    );
    assert!(
        fs::symlink_metadata(root.join("a/gonedir")).is_err(),
        "a/gonedir visible"
    );
    assert!(
        fs::symlink_metadata(root.join("d/old1")).is_err(),
        "d/old1 visible"
    );
    assert!(
        fs::symlink_metadata(root.join("d/sub")).is_err(),
        "d/sub visible"
    );
    assert!(
        fs::symlink_metadata(root.join("top")).is_err(),
        "top visible"
    );
    assert_eq!(fs::read(root.join("d/new")).unwrap(), b"new");
}

fn is_whiteout_device(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

#[test]
fn remove_mode_deletes() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = mkdir(tmp.path(), "native");
    apply(&lower_layer(), &root, WhiteoutMode::Remove);
    apply(&upper_layer(), &root, WhiteoutMode::Remove);
    check_merged(&root);
    // No whiteout files are left behind.
    assert!(!snapshot(&root, true)
        .keys()
        .any(|k| k.to_string_lossy().contains(".wh.")));
}

#[test]
fn opaque_keeps_what_the_same_layer_added_in_any_order() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = mkdir(tmp.path(), "native");
    apply(&lower_layer(), &root, WhiteoutMode::Remove);
    // The opaque marker comes after the new files of the directory.
    let layer = LayerBuilder::new()
        .dir("d/")
        .file("d/new", b"new")
        .dir("d/sub/")
        .file("d/sub/fresh", b"fresh")
        .opaque("d")
        .finish();
    apply(&layer, &root, WhiteoutMode::Remove);
    assert_eq!(fs::read(root.join("d/new")).unwrap(), b"new");
    assert_eq!(fs::read(root.join("d/sub/fresh")).unwrap(), b"fresh");
    assert!(!root.join("d/old1").exists());
    assert!(
        !root.join("d/sub/old2").exists(),
        "merged subdirectory keeps lower files"
    );
}

#[test]
fn overlay_mode_converts_and_mounts() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = mkdir(tmp.path(), "lower");
    let upper = mkdir(tmp.path(), "upper");
    apply(&lower_layer(), &lower, WhiteoutMode::Overlay);
    apply(&upper_layer(), &upper, WhiteoutMode::Overlay);

    assert!(is_whiteout_device(&upper.join("a/gone")));
    assert!(is_whiteout_device(&upper.join("a/gonedir")));
    assert!(is_whiteout_device(&upper.join("top")));
    assert_eq!(
        xattr(&upper.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!upper.join("d/.wh..wh..opq").exists());

    let merged = mkdir(tmp.path(), "merged");
    let Some(guard) = mount_overlay_ro(&[&upper, &lower], &merged) else {
        panic!("mount -t overlay failed (overlayfs is expected on this machine)");
    };
    check_merged(&merged);
    drop(guard);

    // The upper written back as a layer, applied natively over the lower,
    // gives the same result.
    let mut layer = Vec::new();
    let stats = write_overlay_upper_diff(&upper, &mut layer).unwrap();
    assert_eq!((stats.whiteouts, stats.opaques), (3, 1), "{stats:?}");
    let native = mkdir(tmp.path(), "native");
    apply(&lower_layer(), &native, WhiteoutMode::Remove);
    apply(&layer, &native, WhiteoutMode::Remove);
    check_merged(&native);
}

#[test]
fn keep_mode_keeps_whiteout_files() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let branch = mkdir(tmp.path(), "branch");
    apply(&upper_layer(), &branch, WhiteoutMode::Keep);
    for p in ["a/.wh.gone", "a/.wh.gonedir", "d/.wh..wh..opq", ".wh.top"] {
        assert!(
            fs::symlink_metadata(branch.join(p)).unwrap().is_file(),
            "{p}"
        );
    }
    // The branch packed as it is is the same layer again: applied natively
    // over the lower it hides the same files.
    let mut layer = Vec::new();
    write_tree(&branch, &mut layer).unwrap();
    let native = mkdir(tmp.path(), "native");
    apply(&lower_layer(), &native, WhiteoutMode::Remove);
    apply(&layer, &native, WhiteoutMode::Remove);
    check_merged(&native);
}

#[test]
fn overlay_upper_parents_copy_lower_attributes() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = mkdir(tmp.path(), "lower");
    let layer = LayerBuilder::new()
        .entry(
            berth_archive::writer::TarEntry::dir("p/")
                .mode(0o750)
                .owner(5, 6)
                .mtime(1_500_000_000)
                .xattr("user.x", b"lower"),
            b"",
        )
        .file("p/old", b"old")
        .finish();
    apply(&layer, &lower, WhiteoutMode::Overlay);
    // A layer without the parent's entry, as some tools write them.
    let upper_layer = LayerBuilder::new()
        .file("p/child", b"c")
        .whiteout("p/old")
        .finish();

    let upper = mkdir(tmp.path(), "upper");
    let opts = berth_archive::ApplyOptions {
        whiteouts: WhiteoutMode::Overlay,
        parents: vec![lower.clone()],
        ..Default::default()
    };
    berth_archive::apply_layer(&upper_layer[..], &upper, &opts).unwrap();
    let st = fs::symlink_metadata(upper.join("p")).unwrap();
    assert_eq!((st.mode() & 0o7777, st.uid(), st.gid()), (0o750, 5, 6));
    assert_eq!(
        xattr(&upper.join("p"), "user.x").as_deref(),
        Some(&b"lower"[..])
    );
    assert!(is_whiteout_device(&upper.join("p/old")));

    // Without parents the directory gets containerd's default, 0755 root.
    let plain = mkdir(tmp.path(), "plain");
    apply(&upper_layer, &plain, WhiteoutMode::Overlay);
    let st = fs::symlink_metadata(plain.join("p")).unwrap();
    assert_eq!((st.mode() & 0o7777, st.uid()), (0o755, 0));
}
