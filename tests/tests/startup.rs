//! Start-up on a fresh root: the stores are created by their first write, not at start (so
//! start-up waits for no fsync), what is written then survives kill -9, and a second daemon
//! on the same root is refused even before any store file exists.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, ListNamespacesRequest, Namespace,
};
use berth_tests::{ctr, success, Daemon};

/// Every `metadata.db` / `meta.redb` under `root`.
fn store_files(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .is_some_and(|n| n == "metadata.db" || n == "meta.redb")
            {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn fresh_root_creates_stores_on_first_write() {
    let mut d = Daemon::start().await;
    // Reads on the fresh stores work and create nothing.
    success(&ctr(&d, &["namespaces", "ls"]), "ctr namespaces ls");
    success(&ctr(&d, &["snapshots", "ls"]), "ctr snapshots ls");
    success(&ctr(&d, &["plugins", "ls"]), "ctr plugins ls");
    // Let the start-up garbage collection run: finding nothing, it writes nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store_files(&d.root()), Vec::<String>::new());

    let mut ns = d.namespaces().await;
    ns.create(CreateNamespaceRequest {
        namespace: Some(Namespace {
            name: "first-write".into(),
            labels: [("k".to_string(), "v".to_string())].into(),
        }),
    })
    .await
    .expect("create namespace");
    assert_eq!(
        store_files(&d.root()),
        vec!["io.containerd.metadata.v1.kv/meta.redb".to_string()]
    );
    // The first prepare creates the overlay backend's store.
    success(
        &ctr(&d, &["-n", "first-write", "snapshots", "prepare", "s1"]),
        "ctr snapshots prepare",
    );
    assert!(
        store_files(&d.root())
            .contains(&"io.containerd.snapshotter.v1.overlayfs/metadata.db".to_string()),
        "{:?}",
        store_files(&d.root())
    );

    d.kill9();
    d.restart().await;
    let names: Vec<String> = d
        .namespaces()
        .await
        .list(ListNamespacesRequest::default())
        .await
        .expect("list namespaces")
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert!(names.contains(&"first-write".to_string()), "{names:?}");
    let snaps = success(
        &ctr(&d, &["-n", "first-write", "snapshots", "ls"]),
        "ctr snapshots ls",
    );
    assert!(snaps.contains("s1"), "{snaps}");
}

#[tokio::test]
async fn second_daemon_on_the_same_root_is_refused() {
    let d = Daemon::start().await;
    let other = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(Daemon::binary("berthd"))
        .arg("--root")
        .arg(d.root())
        .arg("--state")
        .arg(other.path().join("state"))
        .arg("--address")
        .arg(other.path().join("other.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn second berthd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second berthd on the same root kept running");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = child.wait_with_output().expect("stderr");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "second berthd exited 0: {stderr}");
    assert!(
        stderr.contains("open in another process"),
        "unclear error: {stderr}"
    );
    assert!(!other.path().join("other.sock").exists());
    // The first one is unaffected.
    d.assert_serving().await;
    success(&ctr(&d, &["namespaces", "ls"]), "ctr namespaces ls");
}
