mod common;

use std::collections::BTreeSet;

use berth_content::{Digest, WriterOpts};
use berth_errdefs::ErrorKind;
use berth_metadata::{ContentWriterOpts, Labels};
use common::*;

fn opts(reference: &str) -> ContentWriterOpts {
    ContentWriterOpts {
        reference: reference.into(),
        ..Default::default()
    }
}

#[test]
fn visibility_is_per_namespace() {
    each_backend(|env| {
        let c = env.db.content();
        let d = write_blob(
            env,
            "ns1",
            "r",
            b"shared bytes",
            None,
            labels(&[("a", "1")]),
        );
        assert!(on_disk(env, &d));

        let info = c.info("ns1", &d).unwrap();
        assert_eq!(info.size, 12);
        assert_eq!(info.labels, labels(&[("a", "1")]));
        assert_eq!(info.created_at, info.updated_at);
        assert_eq!(read_all(env, "ns1", &d), b"shared bytes");

        // The blob exists in the store, but ns2 has no record of it.
        let e = c.info("ns2", &d).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains(&d.to_string()), "{e}");
        assert_eq!(c.reader("ns2", &d).unwrap_err().kind(), ErrorKind::NotFound);
        assert!(c.list("ns2", &[] as &[&str]).unwrap().is_empty());
        assert_eq!(c.list("ns1", &[] as &[&str]).unwrap().len(), 1);
    });
}

#[test]
fn shared_content_becomes_visible_on_commit() {
    each_backend(|env| {
        let c = env.db.content();
        let data = b"layer data";
        let d = write_blob(env, "ns1", "r", data, None, Labels::new());

        // ns2 opens a writer expecting the digest: nothing to write.
        let mut w = c
            .writer(
                "ns2",
                ContentWriterOpts {
                    reference: "pull-layer".into(),
                    total: Some(data.len() as u64),
                    expected: Some(d),
                    lease: None,
                },
            )
            .unwrap();
        let st = w.status();
        assert_eq!((st.offset, st.total, st.expected), (10, 10, Some(d)));
        assert_eq!(st.reference, "pull-layer");
        assert_eq!(w.digest(), d);
        // Not visible before commit.
        assert_eq!(c.info("ns2", &d).unwrap_err().kind(), ErrorKind::NotFound);
        let got = w.commit(0, Some(d), labels(&[("k", "v")])).unwrap();
        assert_eq!(got, d);
        let info = c.info("ns2", &d).unwrap();
        assert_eq!(info.size, 10);
        assert_eq!(info.labels, labels(&[("k", "v")]));
        assert_eq!(read_all(env, "ns2", &d), data);
        // The ingest is gone.
        assert!(c.list_statuses("ns2", &[] as &[&str]).unwrap().is_empty());

        // Already in ns2: opening with the expected digest says so.
        let e = c
            .writer(
                "ns2",
                ContentWriterOpts {
                    reference: "again".into(),
                    expected: Some(d),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);

        // ns3: shared writer, but the client writes the data anyway.
        let mut w = c
            .writer(
                "ns3",
                ContentWriterOpts {
                    reference: "r3".into(),
                    total: None,
                    expected: Some(d),
                    lease: None,
                },
            )
            .unwrap();
        w.truncate(0).unwrap();
        assert_eq!(w.status().offset, 0);
        w.write(data).unwrap();
        assert_eq!(w.commit(10, Some(d), Labels::new()).unwrap(), d);
        assert_eq!(read_all(env, "ns3", &d), data);

        // A shared writer with the wrong expected size is a normal ingest.
        let mut w = c
            .writer(
                "ns4",
                ContentWriterOpts {
                    reference: "r4".into(),
                    total: Some(3),
                    expected: Some(d),
                    lease: None,
                },
            )
            .unwrap();
        assert_eq!(w.status().offset, 0);
        w.write(b"abc").unwrap();
        let e = w.commit(3, Some(d), Labels::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    });
}

#[test]
fn commit_rules() {
    each_backend(|env| {
        let c = env.db.content();
        let data = b"0123456789";
        let d = Digest::of_bytes(data);
        let mut w = c.writer("n", opts("r1")).unwrap();
        w.write(data).unwrap();

        // Size mismatch keeps the ingest.
        let e = w.commit(11, None, Labels::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        // Digest mismatch keeps the ingest.
        let e = w
            .commit(10, Some(Digest::of_bytes(b"other")), Labels::new())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        // Bad labels keep the ingest.
        let big = "x".repeat(5000);
        let e = w.commit(10, Some(d), labels(&[("k", &big)])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(c.status("n", "r1").unwrap().offset, 10);

        assert_eq!(w.commit(10, Some(d), Labels::new()).unwrap(), d);
        // The writer is closed now.
        assert_eq!(
            w.write(b"more").unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(c.status("n", "r1").unwrap_err().kind(), ErrorKind::NotFound);

        // Same content again in the same namespace: AlreadyExists, ingest removed.
        let mut w = c.writer("n", opts("r2")).unwrap();
        w.write(data).unwrap();
        let e = w.commit(0, None, Labels::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert!(c.list_statuses("n", &[] as &[&str]).unwrap().is_empty());
        assert!(env.store.list_statuses().unwrap().is_empty());

        // Empty ref.
        assert_eq!(
            c.writer("n", opts("")).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            c.writer("bad ns", opts("r")).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    });
}

#[test]
fn refs_are_per_namespace_and_exclusive() {
    each_backend(|env| {
        let c = env.db.content();
        // The same ref in two namespaces: two ingests.
        let mut a = c.writer("ns1", opts("same-ref")).unwrap();
        let mut b = c.writer("ns2", opts("same-ref")).unwrap();
        a.write(b"from ns1").unwrap();
        b.write(b"from ns2!").unwrap();
        assert_eq!(c.status("ns1", "same-ref").unwrap().offset, 8);
        assert_eq!(c.status("ns2", "same-ref").unwrap().offset, 9);
        // The same ref twice in one namespace: busy.
        let e = c.writer("ns1", opts("same-ref")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        // ... and the failed open did not disturb the ingest.
        assert_eq!(c.status("ns1", "same-ref").unwrap().offset, 8);
        let da = a.commit(0, None, Labels::new()).unwrap();
        let db = b.commit(0, None, Labels::new()).unwrap();
        assert_eq!(read_all(env, "ns1", &da), b"from ns1");
        assert_eq!(read_all(env, "ns2", &db), b"from ns2!");
        assert_eq!(c.info("ns1", &db).unwrap_err().kind(), ErrorKind::NotFound);
    });
}

#[test]
fn resume_status_list_and_abort() {
    each_backend(|env| {
        let c = env.db.content();
        let mut w = c
            .writer(
                "n",
                ContentWriterOpts {
                    reference: "layer-1".into(),
                    total: Some(6),
                    ..Default::default()
                },
            )
            .unwrap();
        w.write(b"abc").unwrap();
        drop(w);
        let mut other = c.writer("n", opts("other")).unwrap();
        other.write(b"zz").unwrap();
        other.close().unwrap();

        let st = c.status("n", "layer-1").unwrap();
        assert_eq!(
            (st.reference.as_str(), st.offset, st.total),
            ("layer-1", 3, 6)
        );
        let refs: BTreeSet<String> = c
            .list_statuses("n", &[] as &[&str])
            .unwrap()
            .into_iter()
            .map(|s| s.reference)
            .collect();
        assert_eq!(refs, BTreeSet::from(["layer-1".into(), "other".into()]));
        let filtered = c.list_statuses("n", &["ref==other"]).unwrap();
        assert_eq!(filtered.len(), 1);
        assert_eq!(filtered[0].reference, "other");
        let filtered = c.list_statuses("n", &["ref~=^lay", "ref==nope"]).unwrap();
        assert_eq!(filtered.len(), 1);
        assert!(c.list_statuses("x", &[] as &[&str]).unwrap().is_empty());
        assert_eq!(
            c.list_statuses("n", &["ref=="]).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );

        // Resume where we left off.
        let mut w = c.writer("n", opts("layer-1")).unwrap();
        assert_eq!(w.status().offset, 3);
        w.write(b"def").unwrap();
        let d = w.commit(6, None, Labels::new()).unwrap();
        assert_eq!(read_all(env, "n", &d), b"abcdef");

        // Abort removes record and partial data.
        assert_eq!(env.store.list_statuses().unwrap().len(), 1);
        c.abort("n", "other").unwrap();
        assert_eq!(
            c.status("n", "other").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            c.abort("n", "other").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(env.store.list_statuses().unwrap().is_empty());

        // Abort while a writer holds the ref: Unavailable, record kept.
        let mut w = c.writer("n", opts("busy")).unwrap();
        w.write(b"1").unwrap();
        assert_eq!(
            c.abort("n", "busy").unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        drop(w);
        assert_eq!(c.status("n", "busy").unwrap().offset, 1);
        c.abort("n", "busy").unwrap();
    });
}

#[test]
fn update_list_filters_and_delete() {
    each_backend(|env| {
        let c = env.db.content();
        let d1 = write_blob(
            env,
            "n",
            "r1",
            b"one",
            None,
            labels(&[("a", "1"), ("b", "2")]),
        );
        let d2 = write_blob(env, "n", "r2", b"second", None, labels(&[("a", "x.y")]));

        let before = c.info("n", &d1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = c
            .update(
                "n",
                &d1,
                &labels(&[("a", "10"), ("c", "3")]),
                &["labels.a".into(), "labels.b".into(), "labels.c".into()],
            )
            .unwrap();
        assert_eq!(after.labels, labels(&[("a", "10"), ("c", "3")]));
        assert!(after.updated_at > before.updated_at);
        assert_eq!(after.created_at, before.created_at);
        assert_eq!(c.info("n", &d1).unwrap(), after);
        // No paths: replace.
        let after = c.update("n", &d1, &labels(&[("z", "1")]), &[]).unwrap();
        assert_eq!(after.labels, labels(&[("z", "1")]));
        // Bad path, bad label, unknown digest.
        assert_eq!(
            c.update("n", &d1, &Labels::new(), &["size".into()])
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            c.update("n", &d1, &labels(&[("k", &"v".repeat(4096))]), &[])
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            c.update("other", &d1, &Labels::new(), &[])
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );

        let digests = |f: &[&str]| -> Vec<Digest> {
            c.list("n", f)
                .unwrap()
                .into_iter()
                .map(|i| i.digest)
                .collect()
        };
        let mut both = vec![d1, d2];
        both.sort();
        assert_eq!(digests(&[]), both);
        assert_eq!(digests(&["labels.z==1"]), vec![d1]);
        assert_eq!(digests(&["labels.a==x.y"]), vec![d2]);
        assert_eq!(digests(&["size==6"]), vec![d2]);
        assert_eq!(digests(&[&format!("digest=={d1}")]), vec![d1]);
        assert_eq!(digests(&["labels.z", "size==6"]), both);
        assert_eq!(digests(&["labels.z,size==6"]), Vec::<Digest>::new());
        let e = c.list("n", &["labels.\"unterminated"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);

        // Delete removes the record only; the blob waits for GC.
        c.delete("n", &d2).unwrap();
        assert_eq!(c.info("n", &d2).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(c.delete("n", &d2).unwrap_err().kind(), ErrorKind::NotFound);
        assert!(on_disk(env, &d2));
        env.db.garbage_collect().unwrap();
        assert!(!on_disk(env, &d2));
    });
}

#[test]
fn raw_ingests_of_other_users_do_not_leak_in() {
    each_backend(|env| {
        // A blob-store ingest made without the metadata layer is invisible.
        let mut raw = env
            .store
            .writer(WriterOpts {
                reference: "raw".into(),
                ..Default::default()
            })
            .unwrap();
        raw.write(b"x").unwrap();
        drop(raw);
        let c = env.db.content();
        assert_eq!(
            c.status("n", "raw").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(c.list_statuses("n", &[] as &[&str]).unwrap().is_empty());
    });
}

#[test]
fn records_survive_reopen() {
    for backend in backends() {
        let env = env(backend);
        let d = write_blob(&env, "n", "r", b"persist", None, labels(&[("a", "1")]));
        let store = std::sync::Arc::clone(&env.store);
        let path = env.dir.path().join("metadata");
        if backend == berth_metadata::Backend::Redb {
            let e = berth_metadata::Db::open(
                berth_metadata::DbOptions {
                    path: path.clone(),
                    backend,
                },
                std::sync::Arc::clone(&store),
            )
            .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        }
        drop(env.db);
        let db =
            berth_metadata::Db::open(berth_metadata::DbOptions { path, backend }, store).unwrap();
        assert_eq!(
            db.content().info("n", &d).unwrap().labels,
            labels(&[("a", "1")])
        );
        assert_eq!(db.backend(), backend);
    }
}
