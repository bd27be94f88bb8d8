//! `berth images ...`: import (OCI layout and docker-archive), ls, check,
//! unpack, mount/unmount, tag, usage, export (read back by the stock ctr
//! with identical digests) and rm.

use std::fs;

use berth_archive::Compression;
use berth_image::oci::chain_ids;
use berth_image::testimage;
use berth_tests::{berth, ctr, success, Daemon};

const NAME: &str = "docker.io/library/berth-cli:oci";

#[tokio::test]
async fn import_unpack_mount_export_rm() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let layers = testimage::layers();
    let built = testimage::build(&layers, Compression::Gzip);
    let oci = dir.path().join("oci.tar");
    let docker = dir.path().join("docker.tar");
    fs::write(&oci, testimage::oci_layout_tar(&built, NAME)).unwrap();
    fs::write(
        &docker,
        testimage::docker_archive_tar(&layers, "berth-cli:docker"),
    )
    .unwrap();
    let top = chain_ids(&built.diff_ids).last().unwrap().to_string();

    let out = success(
        &berth(&d, &["-n", "n", "images", "import", oci.to_str().unwrap()]),
        "berth images import (oci)",
    );
    assert!(out.contains(NAME) && out.contains(&top), "{out}");
    let out = success(
        &berth(
            &d,
            &[
                "-n",
                "n",
                "images",
                "import",
                "--snapshotter",
                "native",
                docker.to_str().unwrap(),
            ],
        ),
        "berth images import (docker)",
    );
    assert!(
        out.contains("docker.io/library/berth-cli:docker") && out.contains(&top),
        "{out}"
    );

    // The stock ctr sees both, complete, and the chain in both snapshotters.
    let ls = success(
        &ctr(&d, &["-n", "n", "images", "ls", "-q"]),
        "ctr images ls",
    );
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        ["docker.io/library/berth-cli:docker", NAME]
    );
    let check = success(
        &ctr(&d, &["-n", "n", "images", "check"]),
        "ctr images check",
    );
    assert_eq!(check.matches("complete").count(), 2, "{check}");
    let check = success(
        &berth(&d, &["-n", "n", "images", "check"]),
        "berth images check",
    );
    assert_eq!(check.matches("complete").count(), 2, "{check}");
    for sn in ["overlayfs", "native"] {
        let snaps = success(
            &ctr(&d, &["-n", "n", "snapshots", "--snapshotter", sn, "ls"]),
            "ctr snapshots ls",
        );
        assert!(snaps.contains(&top), "{sn}: {snaps}");
        assert_eq!(snaps.lines().count(), 4, "{sn}: {snaps}");
    }
    let json = success(
        &berth(&d, &["-n", "n", "--format", "json", "images", "ls"]),
        "berth images ls",
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    // Unpack again: nothing to apply.
    let out = success(
        &berth(&d, &["-n", "n", "images", "unpack", NAME]),
        "berth images unpack",
    );
    assert!(out.contains("applied 0 of 3"), "{out}");

    // Mount read-only and look.
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    success(
        &berth(
            &d,
            &["-n", "n", "images", "mount", NAME, mnt.to_str().unwrap()],
        ),
        "berth images mount",
    );
    let motd = fs::read(mnt.join("etc/motd"));
    let gone = mnt.join("data/gone").exists();
    success(
        &berth(&d, &["-n", "n", "images", "unmount", mnt.to_str().unwrap()]),
        "berth images unmount",
    );
    assert_eq!(motd.unwrap(), testimage::MOTD);
    assert!(!gone);

    // Tag, usage.
    success(
        &berth(&d, &["-n", "n", "images", "tag", NAME, "berth-cli:copy"]),
        "berth images tag",
    );
    let usage = success(
        &berth(&d, &["-n", "n", "images", "usage", "berth-cli:copy"]),
        "berth images usage",
    );
    assert!(usage.contains("berth-cli:copy"), "{usage}");

    // Export with berth, import with the stock ctr: the same manifest.
    let exported = dir.path().join("export.tar");
    success(
        &berth(
            &d,
            &[
                "-n",
                "n",
                "images",
                "export",
                exported.to_str().unwrap(),
                NAME,
            ],
        ),
        "berth images export",
    );
    success(
        &ctr(
            &d,
            &["-n", "m", "images", "import", exported.to_str().unwrap()],
        ),
        "ctr images import (berth export)",
    );
    let ls = success(&ctr(&d, &["-n", "m", "images", "ls"]), "ctr images ls");
    let row = ls.lines().find(|l| l.starts_with(NAME)).expect("imported");
    assert!(row.contains(&built.manifest.digest), "{row}");

    // Remove everything in n: snapshots and blobs go (m keeps its own).
    for name in [NAME, "docker.io/library/berth-cli:docker", "berth-cli:copy"] {
        success(
            &berth(&d, &["-n", "n", "images", "rm", "--sync", name]),
            "berth images rm",
        );
    }
    for sn in ["overlayfs", "native"] {
        let snaps = success(
            &ctr(&d, &["-n", "n", "snapshots", "--snapshotter", sn, "ls"]),
            "ctr snapshots ls",
        );
        assert_eq!(snaps.lines().count(), 1, "{sn}: {snaps}");
    }
    let left = success(&ctr(&d, &["-n", "n", "content", "ls", "-q"]), "content ls");
    assert!(left.trim().is_empty(), "{left}");
}
