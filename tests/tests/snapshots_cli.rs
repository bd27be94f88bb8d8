//! Our `berth snapshots` CLI against berthd: tables, `--format json`, tree drawing, labels,
//! mount commands that mount, errors, and the namespace's default snapshotter.

use std::process::Command;

use berth_tests::{berth, failure, run, success, Daemon};
use serde_json::Value;

fn b(d: &Daemon, args: &[&str]) -> String {
    success(&berth(d, args), &format!("berth {}", args.join(" ")))
}

#[tokio::test]
async fn berth_snapshots_commands() {
    let d = Daemon::start().await;
    for sn in ["native", "overlayfs"] {
        let s = |rest: &[&str]| {
            let mut args = vec!["-n", "cli", "snapshots", "--snapshotter", sn];
            args.extend_from_slice(rest);
            b(&d, &args)
        };
        assert_eq!(s(&["prepare", "base"]), "base\n");
        assert_eq!(s(&["commit", "c1", "base"]), "c1\n");
        assert_eq!(s(&["prepare", "--label", "team=x", "work", "c1"]), "work\n");
        assert_eq!(s(&["view", "ro", "c1"]), "ro\n");

        let table = s(&["ls"]);
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0][..3], ["KEY", "PARENT", "KIND"], "{table}");
        let keys: Vec<&str> = rows[1..].iter().map(|r| r[0]).collect();
        assert_eq!(keys, ["c1", "ro", "work"], "{table}");
        assert_eq!(rows[3][1..3], ["c1", "active"], "{table}");
        assert_eq!(s(&["ls", "-q", "kind==active"]), "work\n");

        let json: Value = serde_json::from_str(&s(&["--format", "json", "ls"])).unwrap();
        let work = json
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == "work")
            .unwrap();
        assert_eq!(work["parent"], "c1");
        assert_eq!(work["kind"], "active");
        assert_eq!(work["labels"]["team"], "x");
        assert!(work["labels"]["containerd.io/gc.root"].is_string());

        assert_eq!(
            s(&["tree"]),
            "c1 (committed)\n├── ro (view)\n└── work (active)\n"
        );
        let tree: Value = serde_json::from_str(&s(&["--format", "json", "tree"])).unwrap();
        assert_eq!(tree[0]["key"], "c1");
        assert_eq!(tree[0]["children"].as_array().unwrap().len(), 2);

        let info: Value = serde_json::from_str(&s(&["--format", "json", "info", "work"])).unwrap();
        assert_eq!(info["key"], "work");
        assert!(s(&["info", "work"]).contains("team=x"));

        let labels = s(&["label", "work", "team=", "size=xl"]);
        assert!(
            labels.contains("size=xl") && !labels.contains("team"),
            "{labels}"
        );

        let usage = s(&["usage", "-b"]);
        assert_eq!(usage.lines().count(), 4, "{usage}");

        // The printed mount commands mount it.
        let target = tempfile::Builder::new()
            .prefix("berth-mnt-")
            .tempdir_in("/tmp")
            .unwrap();
        let t = target.path().to_str().unwrap();
        let printed = s(&["mounts", t, "work"]);
        for line in printed.lines() {
            success(&run(Command::new("sh").arg("-c").arg(line), None), line);
        }
        std::fs::write(target.path().join("f"), "x").unwrap();
        success(&run(Command::new("umount").arg(t), None), "umount");
        let mounts: Value =
            serde_json::from_str(&s(&["--format", "json", "mounts", t, "work"])).unwrap();
        assert!(mounts[0]["type"].is_string(), "{mounts}");

        let err = failure(
            &berth(
                &d,
                &["-n", "cli", "snapshots", "--snapshotter", sn, "rm", "c1"],
            ),
            "rm c1",
        );
        assert!(err.contains("FailedPrecondition"), "{err}");
        assert_eq!(s(&["rm", "ro", "work", "c1"]), "ro\nwork\nc1\n");
        assert_eq!(s(&["ls", "-q"]), "");
    }
}

#[tokio::test]
async fn berth_uses_the_namespace_default_snapshotter() {
    let d = Daemon::start().await;
    b(
        &d,
        &[
            "namespaces",
            "create",
            "nat",
            "containerd.io/defaults/snapshotter=native",
        ],
    );
    b(&d, &["-n", "nat", "snapshots", "prepare", "k"]);
    assert_eq!(
        b(
            &d,
            &[
                "-n",
                "nat",
                "snapshots",
                "--snapshotter",
                "native",
                "ls",
                "-q"
            ]
        ),
        "k\n"
    );
    assert_eq!(
        b(
            &d,
            &[
                "-n",
                "nat",
                "snapshots",
                "--snapshotter",
                "overlayfs",
                "ls",
                "-q"
            ]
        ),
        ""
    );
    // Elsewhere: overlayfs.
    b(&d, &["-n", "other", "snapshots", "prepare", "k"]);
    assert_eq!(
        b(
            &d,
            &[
                "-n",
                "other",
                "snapshots",
                "--snapshotter",
                "overlayfs",
                "ls",
                "-q"
            ]
        ),
        "k\n"
    );
}
