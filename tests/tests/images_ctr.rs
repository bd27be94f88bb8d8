//! Images through the stock `ctr`: import of OCI layout and docker-archive
//! tars made offline from the host's busybox (unpacked client-side by ctr
//! with Snapshots.Prepare + Diff.Apply + Snapshots.Commit under a lease),
//! list, check, snapshots, export and re-import with identical digests,
//! removal and GC that keeps what another image shares.

use berth_archive::Compression;
use berth_image::oci::chain_ids;
use berth_image::testimage;
use berth_tests::{ctr, success, Daemon};

const OCI_NAME: &str = "docker.io/library/berth-test:oci";
const DOCKER_TAG: &str = "berth-test:docker";
const DOCKER_NAME: &str = "docker.io/library/berth-test:docker";

struct Images {
    dir: tempfile::TempDir,
    built: testimage::Built,
    docker_chain: Vec<String>,
}

impl Images {
    fn new() -> Images {
        let dir = tempfile::tempdir().unwrap();
        let layers = testimage::layers();
        let built = testimage::build(&layers, Compression::Gzip);
        std::fs::write(
            dir.path().join("oci.tar"),
            testimage::oci_layout_tar(&built, OCI_NAME),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("docker.tar"),
            testimage::docker_archive_tar(&layers, DOCKER_TAG),
        )
        .unwrap();
        let docker_chain = chain_ids(&built.diff_ids)
            .iter()
            .map(|d| d.to_string())
            .collect();
        Images {
            dir,
            built,
            docker_chain,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn chain(&self) -> Vec<String> {
        chain_ids(&self.built.diff_ids)
            .iter()
            .map(|d| d.to_string())
            .collect()
    }
}

/// `ctr images ls` rows as (name, type, digest).
fn images_ls(d: &Daemon, ns: &str) -> Vec<(String, String, String)> {
    let out = success(&ctr(d, &["-n", ns, "images", "ls"]), "ctr images ls");
    out.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

fn snapshot_names(d: &Daemon, ns: &str, snapshotter: &str) -> Vec<String> {
    let out = success(
        &ctr(
            d,
            &["-n", ns, "snapshots", "--snapshotter", snapshotter, "ls"],
        ),
        "ctr snapshots ls",
    );
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

fn blob_exists(d: &Daemon, digest: &str) -> bool {
    d.blobs_dir()
        .join(digest.trim_start_matches("sha256:"))
        .exists()
}

#[tokio::test]
async fn import_ls_check_snapshots_export_reimport_rm() {
    let d = Daemon::start().await;
    let imgs = Images::new();

    let out = success(
        &ctr(&d, &["-n", "n", "images", "import", &imgs.path("oci.tar")]),
        "ctr images import (oci)",
    );
    assert!(out.contains(OCI_NAME), "{out}");
    let out = success(
        &ctr(
            &d,
            &["-n", "n", "images", "import", &imgs.path("docker.tar")],
        ),
        "ctr images import (docker-archive)",
    );
    assert!(out.contains(DOCKER_NAME), "{out}");

    let ls = images_ls(&d, "n");
    let names: Vec<&str> = ls.iter().map(|r| r.0.as_str()).collect();
    assert!(names.contains(&OCI_NAME), "{ls:?}");
    assert!(names.contains(&DOCKER_NAME), "{ls:?}");
    let oci_row = ls.iter().find(|r| r.0 == OCI_NAME).unwrap();
    assert_eq!(oci_row.2, imgs.built.manifest.digest, "{ls:?}");

    // ctr images check: every image complete.
    let check = success(
        &ctr(&d, &["-n", "n", "images", "check"]),
        "ctr images check",
    );
    for name in [OCI_NAME, DOCKER_NAME] {
        let line = check
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {check}"));
        assert!(line.contains("complete"), "{line}");
    }

    // The unpacked chain is in the default snapshotter (overlayfs); the
    // docker-archive image has the same diff IDs, so the same chain.
    let snaps = snapshot_names(&d, "n", "overlayfs");
    for c in imgs.chain().iter().chain(&imgs.docker_chain) {
        assert!(snaps.contains(c), "{c} in {snaps:?}");
    }
    assert_eq!(snaps.len(), 3, "no extraction leftovers: {snaps:?}");

    // Export and re-import elsewhere: identical digests.
    let export = imgs.path("export.tar");
    success(
        &ctr(&d, &["-n", "n", "images", "export", &export, OCI_NAME]),
        "ctr images export",
    );
    success(
        &ctr(&d, &["-n", "m", "images", "import", &export]),
        "ctr images import (exported)",
    );
    let again = images_ls(&d, "m");
    let row = again
        .iter()
        .find(|r| r.0 == OCI_NAME)
        .unwrap_or_else(|| panic!("{again:?}"));
    assert_eq!(row.2, imgs.built.manifest.digest);
    for (desc, _) in &imgs.built.blobs {
        assert!(blob_exists(&d, &desc.digest));
    }

    // Remove the OCI image in n: the docker image shares the layers'
    // snapshots (and namespace m still has every blob), so all stays.
    success(
        &ctr(&d, &["-n", "n", "images", "rm", "--sync", OCI_NAME]),
        "ctr images rm",
    );
    let snaps = snapshot_names(&d, "n", "overlayfs");
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    // Remove everything in m: the blobs m alone held go; n keeps its own.
    success(
        &ctr(&d, &["-n", "m", "images", "rm", "--sync", OCI_NAME]),
        "ctr images rm (m)",
    );
    assert!(snapshot_names(&d, "m", "overlayfs").is_empty());
    assert!(
        !blob_exists(&d, &imgs.built.manifest.digest),
        "the OCI manifest is no longer referenced"
    );
    // The docker image in n is still whole.
    let check = success(
        &ctr(&d, &["-n", "n", "images", "check"]),
        "ctr images check",
    );
    assert!(
        check.contains(DOCKER_NAME) && check.contains("complete"),
        "{check}"
    );
    success(
        &ctr(&d, &["-n", "n", "images", "rm", "--sync", DOCKER_NAME]),
        "ctr images rm (docker)",
    );
    assert!(snapshot_names(&d, "n", "overlayfs").is_empty());
    let left: Vec<_> = std::fs::read_dir(d.blobs_dir())
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "blobs left: {left:?}");
}
