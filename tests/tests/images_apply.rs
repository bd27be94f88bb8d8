//! Layers applied by the Diff service: whiteouts and opaque directories of
//! an imported image are absent in the mounted image (overlayfs and
//! native, mounted by the stock ctr), the hostile corpus is refused with
//! InvalidArgument naming the bad entry and changes nothing outside the
//! target, and Diff.Diff writes a layer that applies back to the same tree.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_archive::corpus::{hostile_layers, LayerBuilder};
use berth_archive::Compression;
use berth_image::testimage;
use berth_proto::containerd::services::content::v1::InfoRequest;
use berth_proto::containerd::services::diff::v1::{
    diff_client::DiffClient, ApplyRequest, DiffRequest,
};
use berth_proto::containerd::services::snapshots::v1::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, ViewSnapshotRequest,
};
use berth_proto::containerd::types::{Descriptor, Mount};
use berth_tests::{ctr, digest_of, expect_code, success, write_blob, Ctx, Daemon, Svc};
use tonic::Code;

const NAME: &str = "docker.io/library/berth-test:apply";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn check_rootfs(root: &Path, what: &str) {
    for p in testimage::PRESENT {
        assert!(
            fs::symlink_metadata(root.join(p)).is_ok(),
            "{what}: {p} should be there"
        );
    }
    for p in testimage::ABSENT {
        assert!(
            fs::symlink_metadata(root.join(p)).is_err(),
            "{what}: {p} should be absent"
        );
    }
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), testimage::MOTD);
    let a = fs::metadata(root.join("usr/share/berth/a")).unwrap();
    let b = fs::metadata(root.join("usr/share/berth/b")).unwrap();
    assert_eq!(a.ino(), b.ino(), "{what}: hard link kept");
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777,
        "{what}: modes kept"
    );
    // The busybox in it runs.
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", "ls /opq; cat /etc/motd"])
        .output()
        .expect("chroot");
    assert!(out.status.success(), "{what}: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "new\nlayer3\n");
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_are_absent_in_the_mounted_image() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let layers = testimage::layers();
    let built = testimage::build(&layers, Compression::Gzip);
    let tar = dir.path().join("img.tar");
    fs::write(&tar, testimage::oci_layout_tar(&built, NAME)).unwrap();
    for sn in ["overlayfs", "native"] {
        let ns = format!("ns-{sn}");
        success(
            &ctr(
                &d,
                &[
                    "-n",
                    &ns,
                    "images",
                    "import",
                    "--snapshotter",
                    sn,
                    tar.to_str().unwrap(),
                ],
            ),
            "ctr images import",
        );
        // Mounted here from a view of the top chain ID (the stock `ctr images
        // mount` names its lease after the target path, which berthd's lease
        // id rule refuses).
        let top = berth_image::oci::chain_ids(&built.diff_ids)
            .last()
            .unwrap()
            .to_string();
        let mut sc = SnapshotsClient::with_interceptor(d.channel().await, Ctx::ns(&ns));
        let mounts = sc
            .view(ViewSnapshotRequest {
                snapshotter: sn.into(),
                key: format!("view-{sn}"),
                parent: top,
                labels: HashMap::new(),
            })
            .await
            .expect("view of the image's top chain id")
            .into_inner()
            .mounts;
        let mounts: Vec<berth_snapshotter::Mount> = mounts
            .into_iter()
            .map(|m| berth_snapshotter::Mount {
                kind: m.r#type,
                source: m.source,
                options: m.options,
            })
            .collect();
        let target = dir.path().join(format!("mnt-{sn}"));
        fs::create_dir(&target).unwrap();
        let guard = berth_snapshotter::MountGuard::mount(&mounts, &target).expect("mount");
        check_rootfs(&target, sn);
        guard.unmount().unwrap();
    }
}

async fn snapshots(d: &Daemon) -> SnapshotsClient<Svc> {
    SnapshotsClient::with_interceptor(d.channel().await, Ctx::ns("n"))
}

async fn differ(d: &Daemon) -> DiffClient<Svc> {
    DiffClient::with_interceptor(d.channel().await, Ctx::ns("n"))
}

async fn prepare(c: &mut SnapshotsClient<Svc>, sn: &str, key: &str, parent: &str) -> Vec<Mount> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: sn.into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("prepare {key}: {e}"))
    .into_inner()
    .mounts
}

async fn commit(c: &mut SnapshotsClient<Svc>, sn: &str, name: &str, key: &str) {
    c.commit(CommitSnapshotRequest {
        snapshotter: sn.into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
        parent: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("commit {key}: {e}"));
}

/// The directory a layer applied to `mounts` lands in.
fn target_dir(mounts: &[Mount]) -> PathBuf {
    let m = &mounts[0];
    match m.options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
        Some(upper) => PathBuf::from(upper),
        None => PathBuf::from(&m.source),
    }
}

/// Everything under `dir` except under `skip` and the metadata stores
/// (which a request may write): path -> type, mode, owner, size, mtime,
/// content digest of small files.
fn tree(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.starts_with(skip)
            || name.ends_with(".db")
            || name.ends_with(".redb")
            || name == "io.containerd.metadata.v1.kv"
            || name.ends_with(".log")
            || name == "berthd.sock"
        {
            continue;
        }
        let md = fs::symlink_metadata(&p).unwrap();
        let mut line = format!(
            "{:o} {}:{} {} {}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime()
        );
        if md.is_file() && md.size() < 1 << 20 {
            line.push(' ');
            line.push_str(&digest_of(&fs::read(&p).unwrap()));
        }
        if md.file_type().is_symlink() {
            line.push_str(&format!(" -> {:?}", fs::read_link(&p).unwrap()));
        }
        out.insert(p.clone(), line);
        if md.is_dir() {
            tree(&p, skip, out);
        }
    }
}

/// Host paths the corpus aims at (see `berth_archive::corpus`).
fn host_state() -> Vec<String> {
    let mut v: Vec<String> = [
        "/berth-escape",
        "/abs/berth-escape",
        "/etc/berth-escape",
        "/tmp/berth-escape-dir",
        "/tmp/berth-escape",
        "/dev/berth-null",
        "/berth-escape-fifo",
        "/berth-escape-gnu",
    ]
    .iter()
    .filter(|p| fs::symlink_metadata(p).is_ok())
    .map(|p| p.to_string())
    .collect();
    let passwd = fs::symlink_metadata("/etc/passwd").unwrap();
    v.push(format!(
        "passwd nlink={} mtime={} size={}",
        passwd.nlink(),
        passwd.mtime(),
        passwd.size()
    ));
    v
}

#[tokio::test]
async fn hostile_corpus_through_diff_apply_is_refused_and_contained() {
    let d = Daemon::start().await;
    let host_before = host_state();
    let mut content = d.content("n").await;
    let mut sc = snapshots(&d).await;
    let mut dc = differ(&d).await;
    // A committed base so overlay mounts have an upper and a lower.
    let base = LayerBuilder::new()
        .dir("etc/")
        .file("etc/base", b"base\n")
        .finish();
    let base_digest = write_blob(&mut content, "base", &base, &[]).await.unwrap();
    let layers = hostile_layers();
    assert!(layers.len() >= 20);
    let mut blobs = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let dg = write_blob(&mut content, &format!("hostile-{i}"), &l.bytes, &[])
            .await
            .unwrap();
        blobs.push(dg);
    }
    let desc = |digest: &str, size: usize| Descriptor {
        media_type: OCI_LAYER.into(),
        digest: digest.into(),
        size: size as i64,
        annotations: HashMap::new(),
    };
    for sn in ["overlayfs", "native"] {
        let mounts = prepare(&mut sc, sn, "base-key", "").await;
        dc.apply(ApplyRequest {
            diff: Some(desc(&base_digest, base.len())),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        })
        .await
        .expect("apply base");
        commit(&mut sc, sn, "base", "base-key").await;

        for (i, l) in layers.iter().enumerate() {
            let key = format!("hostile-{i}");
            let mounts = prepare(&mut sc, sn, &key, "base").await;
            let target = target_dir(&mounts);
            let mut before = BTreeMap::new();
            tree(&d.root(), &target, &mut before);
            tree(&d.state(), &target, &mut before);
            let status = expect_code(
                dc.apply(ApplyRequest {
                    diff: Some(desc(&blobs[i], l.bytes.len())),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                })
                .await,
                Code::InvalidArgument,
                &[],
            );
            assert!(
                status.message().contains(l.bad_entry),
                "{sn} {}: {:?} does not name {:?}",
                l.name,
                status.message(),
                l.bad_entry
            );
            let mut after = BTreeMap::new();
            tree(&d.root(), &target, &mut after);
            tree(&d.state(), &target, &mut after);
            assert_eq!(before, after, "{sn} {}: changed outside the target", l.name);
            assert_eq!(
                host_state(),
                host_before,
                "{sn} {}: changed the host",
                l.name
            );
            sc.remove(RemoveSnapshotRequest {
                snapshotter: sn.into(),
                key,
            })
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn apply_checks_media_type_and_uncompressed_label_and_diff_roundtrips() {
    let d = Daemon::start().await;
    let mut content = d.content("n").await;
    let mut sc = snapshots(&d).await;
    let mut dc = differ(&d).await;
    let layers = testimage::layers_with(b"not really busybox\n");
    let gz = testimage::compress(&layers[0], Compression::Gzip);
    let zst = testimage::compress(&layers[1], Compression::Zstd);
    let good_label = digest_of(&layers[0]);
    let l0 = write_blob(
        &mut content,
        "l0",
        &gz,
        &[("containerd.io/uncompressed", &good_label)],
    )
    .await
    .unwrap();
    let l1 = write_blob(
        &mut content,
        "l1",
        &zst,
        &[("containerd.io/uncompressed", &digest_of(b"wrong"))],
    )
    .await
    .unwrap();
    let desc = |media: &str, digest: &str, size: usize| Descriptor {
        media_type: media.into(),
        digest: digest.into(),
        size: size as i64,
        annotations: HashMap::new(),
    };
    let mounts = prepare(&mut sc, "native", "k0", "").await;
    expect_code(
        dc.apply(ApplyRequest {
            diff: Some(desc("application/x-nope", &l0, gz.len())),
            mounts: mounts.clone(),
            payloads: HashMap::new(),
            sync_fs: false,
        })
        .await,
        Code::Unimplemented,
        &["media type"],
    );
    expect_code(
        dc.apply(ApplyRequest {
            diff: Some(desc(OCI_LAYER, &digest_of(b"absent"), 6)),
            mounts: mounts.clone(),
            payloads: HashMap::new(),
            sync_fs: false,
        })
        .await,
        Code::NotFound,
        &[],
    );
    let applied = dc
        .apply(ApplyRequest {
            diff: Some(desc(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &l0,
                gz.len(),
            )),
            mounts: mounts.clone(),
            payloads: HashMap::new(),
            sync_fs: false,
        })
        .await
        .expect("apply l0")
        .into_inner()
        .applied
        .unwrap();
    assert_eq!(applied.digest, good_label);
    assert_eq!(applied.size as usize, layers[0].len());
    commit(&mut sc, "native", "c0", "k0").await;
    let mounts = prepare(&mut sc, "overlayfs", "o1", "").await;
    expect_code(
        dc.apply(ApplyRequest {
            diff: Some(desc(
                "application/vnd.oci.image.layer.v1.tar+zstd",
                &l1,
                zst.len(),
            )),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        })
        .await,
        Code::InvalidArgument,
        &["uncompressed digest"],
    );

    // Diff: the native c0 against a child with changes, then apply the
    // written layer onto c0 in another chain and compare.
    let child = prepare(&mut sc, "native", "k1", "c0").await;
    let root = PathBuf::from(&child[0].source);
    fs::write(root.join("etc/new"), b"new\n").unwrap();
    fs::remove_file(root.join("data/gone")).unwrap();
    let parent_view = prepare(&mut sc, "native", "k0b", "c0").await;
    let written = dc
        .diff(DiffRequest {
            left: parent_view.clone(),
            right: child,
            media_type: String::new(),
            r#ref: "my-diff".into(),
            labels: HashMap::from([("x".to_string(), "y".to_string())]),
            source_date_epoch: None,
        })
        .await
        .expect("diff")
        .into_inner()
        .diff
        .unwrap();
    assert_eq!(
        written.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let info = content
        .info(InfoRequest {
            digest: written.digest.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.labels.get("x").map(String::as_str), Some("y"));
    let uncompressed = info.labels["containerd.io/uncompressed"].clone();
    let applied = dc
        .apply(ApplyRequest {
            diff: Some(written),
            mounts: parent_view.clone(),
            payloads: HashMap::new(),
            sync_fs: false,
        })
        .await
        .expect("apply diff")
        .into_inner()
        .applied
        .unwrap();
    assert_eq!(applied.digest, uncompressed);
    let other = PathBuf::from(&parent_view[0].source);
    assert_eq!(fs::read(other.join("etc/new")).unwrap(), b"new\n");
    assert!(!other.join("data/gone").exists());
    assert!(other.join("data/keep").exists());
}

#[tokio::test]
async fn mounts_that_cannot_be_made_are_invalid_argument() {
    let d = Daemon::start().await;
    let mut content = d.content("n").await;
    let mut dc = differ(&d).await;
    let layer = &testimage::layers_with(b"x\n")[0];
    let digest = write_blob(&mut content, "l0", layer, &[]).await.unwrap();
    // Apply writes through a bind mount's source directly: a missing one is NotFound there,
    // where it is opened; Diff mounts it.
    let bad_mounts = [
        ("no-such-fs", "/tmp", vec![], Code::InvalidArgument),
        (
            "bind",
            "/nonexistent/berth-source",
            vec!["rbind".to_string()],
            Code::NotFound,
        ),
        (
            "tmpfs",
            "tmpfs",
            vec!["size=not-a-size".to_string()],
            Code::InvalidArgument,
        ),
    ];
    for (kind, source, options, apply_code) in bad_mounts {
        let mounts = vec![Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options,
        }];
        expect_code(
            dc.apply(ApplyRequest {
                diff: Some(Descriptor {
                    media_type: OCI_LAYER.into(),
                    digest: digest.clone(),
                    size: layer.len() as i64,
                    annotations: HashMap::new(),
                }),
                mounts: mounts.clone(),
                payloads: HashMap::new(),
                sync_fs: false,
            })
            .await,
            apply_code,
            &[source],
        );
        expect_code(
            dc.diff(DiffRequest {
                left: mounts.clone(),
                right: mounts,
                media_type: String::new(),
                r#ref: String::new(),
                labels: HashMap::new(),
                source_date_epoch: None,
            })
            .await,
            Code::InvalidArgument,
            &["mount", kind],
        );
    }
    d.assert_serving().await;
}
