mod common;

use berth_content::{Digest, WriterOpts};
use berth_errdefs::ErrorKind;
use berth_metadata::{ContentWriterOpts, Labels, Removed, ResourceKind};
use common::*;

const PAST: &str = "2000-01-01T00:00:00Z";
const FUTURE: &str = "2999-01-01T00:00:00Z";

fn removed(ns: &str, kind: ResourceKind, key: &str) -> Removed {
    Removed {
        namespace: ns.into(),
        kind,
        key: key.into(),
    }
}

#[test]
fn lease_protects_content_until_deleted() {
    each_backend(|env| {
        env.db.leases().create("n", "l", Labels::new()).unwrap();
        let d = write_blob(env, "n", "r", b"leased", Some("l"), Labels::new());
        let stats = env.db.garbage_collect().unwrap();
        assert!(stats.removed.is_empty(), "{:?}", stats.removed);
        assert!(stats.blobs_removed.is_empty());
        assert!(on_disk(env, &d));
        env.db.content().info("n", &d).unwrap();

        env.db.leases().delete("n", "l").unwrap();
        let stats = env.db.garbage_collect().unwrap();
        assert_eq!(
            stats.removed,
            vec![removed("n", ResourceKind::Content, &d.to_string())]
        );
        assert_eq!(
            stats.removed_content().collect::<Vec<_>>(),
            vec![("n", &*d.to_string())]
        );
        assert_eq!(stats.blobs_removed, vec![d]);
        assert!(!on_disk(env, &d));
        assert_eq!(
            env.db.content().info("n", &d).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    });
}

#[test]
fn unreferenced_content_is_collected_and_gc_root_keeps() {
    each_backend(|env| {
        let loose = write_blob(env, "n", "r1", b"loose", None, Labels::new());
        let rooted = write_blob(
            env,
            "n",
            "r2",
            b"rooted",
            None,
            labels(&[("containerd.io/gc.root", "2024-01-01")]),
        );
        let stats = env.db.garbage_collect().unwrap();
        assert_eq!(stats.records_removed(), 1);
        assert_eq!(stats.blobs_removed, vec![loose]);
        assert!(on_disk(env, &rooted));
        assert!(!on_disk(env, &loose));
        // Stable: a second run removes nothing.
        let stats = env.db.garbage_collect().unwrap();
        assert!(stats.removed.is_empty() && stats.blobs_removed.is_empty());
    });
}

#[test]
fn gc_ref_content_labels_chain() {
    each_backend(|env| {
        let d = write_blob(env, "n", "d", b"leaf", None, Labels::new());
        let c = write_blob(
            env,
            "n",
            "c",
            b"config",
            None,
            labels(&[("containerd.io/gc.ref.content", &d.to_string())]),
        );
        let b = write_blob(
            env,
            "n",
            "b",
            b"manifest",
            None,
            labels(&[("containerd.io/gc.ref.content/config", &c.to_string())]),
        );
        let not_ref = write_blob(env, "n", "x", b"not referenced", None, Labels::new());
        let also_not = write_blob(env, "n", "y", b"bad label", None, Labels::new());
        let _a = write_blob(
            env,
            "n",
            "a",
            b"index",
            None,
            labels(&[
                ("containerd.io/gc.root", "x"),
                ("containerd.io/gc.ref.content.m.0", &b.to_string()),
                // Not an edge: no `.` or `/` after the prefix.
                ("containerd.io/gc.ref.contentx", &also_not.to_string()),
                // A snapshot edge to nothing is harmless.
                ("containerd.io/gc.ref.snapshot.overlayfs", "sha256:chain"),
            ]),
        );
        let stats = env.db.garbage_collect().unwrap();
        let mut gone = vec![not_ref, also_not];
        gone.sort();
        let mut got = stats.blobs_removed.clone();
        got.sort();
        assert_eq!(got, gone);
        for kept in [b, c, d] {
            assert!(on_disk(env, &kept));
            env.db.content().info("n", &kept).unwrap();
        }
    });
}

#[test]
fn expired_leases_are_collected() {
    each_backend(|env| {
        let l = env.db.leases();
        l.create("n", "old", labels(&[("containerd.io/gc.expire", PAST)]))
            .unwrap();
        l.create("n", "new", labels(&[("containerd.io/gc.expire", FUTURE)]))
            .unwrap();
        l.create("n", "bad", labels(&[("containerd.io/gc.expire", "soon")]))
            .unwrap();
        let old = write_blob(env, "n", "r1", b"old lease", Some("old"), Labels::new());
        let new = write_blob(env, "n", "r2", b"new lease", Some("new"), Labels::new());
        let stats = env.db.garbage_collect().unwrap();
        let mut want = vec![
            removed("n", ResourceKind::Content, &old.to_string()),
            removed("n", ResourceKind::Lease, "old"),
        ];
        want.sort();
        assert_eq!(stats.removed, want);
        assert_eq!(stats.blobs_removed, vec![old]);
        assert!(on_disk(env, &new));
        // An unparsable expiry is ignored (the lease is kept), as containerd.
        let ids: Vec<String> = l
            .list("n", &[] as &[&str])
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ids, vec!["bad", "new"]);
    });
}

#[test]
fn orphan_blobs_and_ingests_are_removed_from_disk() {
    each_backend(|env| {
        // A blob in the store that no namespace references.
        let mut w = env
            .store
            .writer(WriterOpts {
                reference: "raw".into(),
                ..Default::default()
            })
            .unwrap();
        w.write(b"orphan").unwrap();
        let orphan = w.commit(0, None).unwrap();
        // A blob-store ingest no namespace knows.
        let mut w = env
            .store
            .writer(WriterOpts {
                reference: "raw-ingest".into(),
                ..Default::default()
            })
            .unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        // A live ingest of the metadata layer (unleased: 24h expiry) stays.
        let mut live = env
            .db
            .content()
            .writer(
                "n",
                ContentWriterOpts {
                    reference: "live".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        live.write(b"in progress").unwrap();
        drop(live);

        let stats = env.db.garbage_collect().unwrap();
        assert_eq!(stats.blobs_removed, vec![orphan]);
        assert_eq!(stats.ingests_aborted, vec!["raw-ingest".to_string()]);
        assert!(!on_disk(env, &orphan));
        assert_eq!(env.db.content().status("n", "live").unwrap().offset, 11);
        assert_eq!(env.store.list_statuses().unwrap().len(), 1);
    });
}

#[test]
fn leased_ingest_goes_with_its_lease() {
    each_backend(|env| {
        env.db.leases().create("n", "l", Labels::new()).unwrap();
        let mut w = env
            .db
            .content()
            .writer(
                "n",
                ContentWriterOpts {
                    reference: "pull".into(),
                    lease: Some("l".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        w.write(b"half").unwrap();
        drop(w);
        let stats = env.db.garbage_collect().unwrap();
        assert!(stats.removed.is_empty());
        assert_eq!(env.db.content().status("n", "pull").unwrap().offset, 4);

        env.db.leases().delete("n", "l").unwrap();
        let stats = env.db.garbage_collect().unwrap();
        assert_eq!(
            stats.removed,
            vec![removed("n", ResourceKind::Ingest, "pull")]
        );
        assert_eq!(stats.ingests_aborted.len(), 1);
        assert!(env.store.list_statuses().unwrap().is_empty());
        assert_eq!(
            env.db.content().status("n", "pull").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    });
}

#[test]
fn shared_blob_kept_while_another_namespace_references_it() {
    each_backend(|env| {
        let data = b"shared layer";
        let d = Digest::of_bytes(data);
        env.db.leases().create("ns1", "l1", Labels::new()).unwrap();
        env.db.leases().create("ns2", "l2", Labels::new()).unwrap();
        write_blob(env, "ns1", "r", data, Some("l1"), Labels::new());
        // ns2 takes the shared blob without writing it.
        let mut w = env
            .db
            .content()
            .writer(
                "ns2",
                ContentWriterOpts {
                    reference: "r".into(),
                    expected: Some(d),
                    lease: Some("l2".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        w.commit(0, Some(d), Labels::new()).unwrap();

        env.db.leases().delete("ns1", "l1").unwrap();
        let stats = env.db.garbage_collect().unwrap();
        assert_eq!(
            stats.removed,
            vec![removed("ns1", ResourceKind::Content, &d.to_string())]
        );
        assert!(stats.blobs_removed.is_empty());
        assert!(on_disk(env, &d));
        assert_eq!(read_all(env, "ns2", &d), data);

        env.db.leases().delete("ns2", "l2").unwrap();
        let stats = env.db.garbage_collect().unwrap();
        assert_eq!(stats.blobs_removed, vec![d]);
        assert!(!on_disk(env, &d));
    });
}

#[test]
fn shared_ingest_keeps_the_blob_it_expects() {
    each_backend(|env| {
        let data = b"expected elsewhere";
        let d = write_blob(env, "ns1", "r", data, None, Labels::new());
        // ns2 opens a shared ingest but has not committed yet.
        let w = env
            .db
            .content()
            .writer(
                "ns2",
                ContentWriterOpts {
                    reference: "r".into(),
                    expected: Some(d),
                    ..Default::default()
                },
            )
            .unwrap();
        drop(w);
        // ns1's record is garbage, but the blob stays for ns2's ingest.
        let stats = env.db.garbage_collect().unwrap();
        assert_eq!(
            stats.removed,
            vec![removed("ns1", ResourceKind::Content, &d.to_string())]
        );
        assert!(on_disk(env, &d));
        // ... and ns2 can still complete it.
        let mut w = env
            .db
            .content()
            .writer(
                "ns2",
                ContentWriterOpts {
                    reference: "r".into(),
                    expected: Some(d),
                    ..Default::default()
                },
            )
            .unwrap();
        w.commit(0, Some(d), labels(&[("containerd.io/gc.root", "1")]))
            .unwrap();
        assert_eq!(read_all(env, "ns2", &d), data);
    });
}

#[test]
fn gc_is_safe_against_concurrent_writers() {
    each_backend(|env| {
        env.db.leases().create("n", "l", Labels::new()).unwrap();
        let db = std::sync::Arc::clone(&env.db);
        let writer = std::thread::spawn(move || {
            let mut out = Vec::new();
            for i in 0..30 {
                let data = format!("blob {i}");
                let mut w = db
                    .content()
                    .writer(
                        "n",
                        ContentWriterOpts {
                            reference: format!("r{i}"),
                            lease: Some("l".into()),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                w.write(data.as_bytes()).unwrap();
                out.push(w.commit(0, None, Labels::new()).unwrap());
            }
            out
        });
        for _ in 0..10 {
            env.db.garbage_collect().unwrap();
        }
        let written = writer.join().unwrap();
        env.db.garbage_collect().unwrap();
        for d in written {
            assert!(on_disk(env, &d), "leased blob {d} collected");
            env.db.content().info("n", &d).unwrap();
        }
    });
}
