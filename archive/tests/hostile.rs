//! The hostile corpus: every bad layer fails with InvalidArgument naming the
//! bad entry, in every whiteout mode, and nothing outside the root changes
//! (also with containerd-style in-root resolution, where some of them are
//! allowed but stay inside the root).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_archive::corpus::{hostile_layers, LayerBuilder};
use berth_archive::{apply_layer, ApplyOptions, Resolve, WhiteoutMode};
use berth_errdefs::ErrorKind;
use common::snapshot;

struct Sandbox {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
}

/// `sandbox/{canary, l1/canary2, l1/l2/outside, l1/l2/root/}`: `../../..`
/// from the root is the sandbox.
fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sandbox");
    let root = dir.join("l1/l2/root");
    fs::create_dir_all(&root).unwrap();
    fs::write(dir.join("canary"), b"canary").unwrap();
    fs::write(dir.join("l1/canary2"), b"canary2").unwrap();
    fs::write(dir.join("l1/l2/outside"), b"outside").unwrap();
    Sandbox {
        _tmp: tmp,
        dir,
        root,
    }
}

/// Everything in the sandbox but the root and what is under it.
fn outside(sb: &Sandbox) -> BTreeMap<PathBuf, String> {
    let root_rel = Path::new("l1/l2/root");
    snapshot(&sb.dir, true)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(root_rel))
        .collect()
}

/// Host paths the corpus aims at.
const HOST_TARGETS: &[&str] = &[
    "/berth-escape",
    "/abs",
    "/etc/berth-escape",
    "/tmp/berth-escape-dir",
    "/dev/berth-null",
    "/berth-escape-fifo",
    "/berth-escape-gnu",
];

fn host_state() -> Vec<String> {
    let mut v: Vec<String> = HOST_TARGETS
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok() && **p != "/abs")
        .map(|p| p.to_string())
        .collect();
    if Path::new("/abs/berth-escape").exists() {
        v.push("/abs/berth-escape".into());
    }
    let passwd = fs::symlink_metadata("/etc/passwd").unwrap();
    v.push(format!(
        "passwd nlink={} mtime={}",
        passwd.nlink(),
        passwd.mtime()
    ));
    v
}

const MODES: [WhiteoutMode; 3] = [
    WhiteoutMode::Remove,
    WhiteoutMode::Overlay,
    WhiteoutMode::Keep,
];

#[test]
fn corpus_is_rejected_and_contained() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let host_before = host_state();
    let layers = hostile_layers();
    assert!(layers.len() >= 20);
    for layer in &layers {
        for mode in MODES {
            let sb = sandbox();
            let before = outside(&sb);
            let opts = ApplyOptions {
                whiteouts: mode,
                resolve: Resolve::Beneath,
                ..Default::default()
            };
            let res = apply_layer(&layer.bytes[..], &sb.root, &opts);
            let err = match res {
                Ok(stats) => panic!("{} ({mode:?}): applied: {stats:?}", layer.name),
                Err(e) => e,
            };
            assert_eq!(
                err.kind(),
                ErrorKind::InvalidArgument,
                "{} ({mode:?}): {err}",
                layer.name
            );
            let msg = err.to_string();
            assert!(
                msg.contains(layer.bad_entry),
                "{} ({mode:?}): error does not name {:?}: {msg}",
                layer.name,
                layer.bad_entry
            );
            assert_eq!(
                outside(&sb),
                before,
                "{} ({mode:?}) changed the sandbox",
                layer.name
            );
            assert_eq!(
                host_state(),
                host_before,
                "{} ({mode:?}) changed the host",
                layer.name
            );
        }
    }
}

#[test]
fn corpus_in_root_resolution_stays_inside() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let host_before = host_state();
    for layer in &hostile_layers() {
        for mode in MODES {
            let sb = sandbox();
            let before = outside(&sb);
            let opts = ApplyOptions {
                whiteouts: mode,
                resolve: Resolve::InRoot,
                ..Default::default()
            };
            if let Err(e) = apply_layer(&layer.bytes[..], &sb.root, &opts) {
                assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}: {e}", layer.name);
            }
            assert_eq!(
                outside(&sb),
                before,
                "{} ({mode:?}) changed the sandbox",
                layer.name
            );
            assert_eq!(
                host_state(),
                host_before,
                "{} ({mode:?}) changed the host",
                layer.name
            );
        }
    }
    // In-root resolution of `evil -> /` then `evil/etc/berth-escape` lands inside.
    let sb = sandbox();
    let layer = LayerBuilder::new()
        .symlink("evil", "/")
        .file("evil/etc/berth-escape", b"in")
        .finish();
    let opts = ApplyOptions {
        whiteouts: WhiteoutMode::Remove,
        resolve: Resolve::InRoot,
        ..Default::default()
    };
    apply_layer(&layer[..], &sb.root, &opts).unwrap();
    assert_eq!(fs::read(sb.root.join("etc/berth-escape")).unwrap(), b"in");
}

#[test]
fn tricky_but_legal_layers_stay_inside() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let host_before = host_state();
    let sb = sandbox();
    let before = outside(&sb);
    let layer = LayerBuilder::new()
        // A file replaces a symlink that points outside: nothing is followed.
        .symlink("x", "/etc/passwd")
        .file("x", b"not passwd")
        // A directory replaces a symlink to /tmp.
        .symlink("d", "/tmp")
        .dir("d/")
        .file("d/berth-escape-dir", b"inside")
        // A relative symlink inside the root may be written through.
        .dir("usr/")
        .dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .file("lib/libc.so", b"elf")
        // A hard link to a symlink links the symlink itself.
        .symlink("evil", "../../../canary")
        .hardlink("evil-link", "evil")
        .finish();
    apply_layer(&layer[..], &sb.root, &ApplyOptions::default()).unwrap();
    assert_eq!(fs::read(sb.root.join("x")).unwrap(), b"not passwd");
    assert!(fs::symlink_metadata(sb.root.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(sb.root.join("usr/lib/libc.so")).unwrap(), b"elf");
    let link = fs::symlink_metadata(sb.root.join("evil-link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(link.nlink(), 2);
    assert_eq!(outside(&sb), before);
    assert_eq!(host_state(), host_before);
}

#[test]
fn errors_name_entries_and_kinds() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sb = sandbox();
    // A missing root is NotFound, not InvalidArgument.
    let err = apply_layer(
        &LayerBuilder::new().finish()[..],
        &sb.dir.join("nope"),
        &ApplyOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Garbage is a corrupt archive.
    let err = apply_layer(&[1u8; 1024][..], &sb.root, &ApplyOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    // A PAX header too large to be real.
    let mut big = berth_archive::writer::TarEntry::file("f", 0);
    big.pax.push(("comment".into(), vec![b'x'; 9 << 20]));
    let layer = LayerBuilder::new().entry(big, b"").finish();
    let err = apply_layer(&layer[..], &sb.root, &ApplyOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}
