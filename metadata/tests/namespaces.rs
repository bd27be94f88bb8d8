mod common;

use berth_errdefs::ErrorKind;
use berth_metadata::{Labels, Resource};
use common::*;

#[test]
fn create_get_list_delete() {
    each_backend(|env| {
        let ns = env.db.namespaces();
        assert!(ns.list().unwrap().is_empty());
        let created = ns
            .create("default", labels(&[("a", "1"), ("empty", "")]))
            .unwrap();
        assert_eq!(created.labels, labels(&[("a", "1")]));
        ns.create("k8s.io", Labels::new()).unwrap();
        let e = ns.create("default", Labels::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("\"default\""), "{e}");

        let got = ns.get("default").unwrap();
        assert_eq!(got.labels, labels(&[("a", "1")]));
        assert_eq!(ns.get("nope").unwrap_err().kind(), ErrorKind::NotFound);

        let names: Vec<String> = ns.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, vec!["default", "k8s.io"]);

        ns.delete("k8s.io").unwrap();
        assert_eq!(ns.delete("k8s.io").unwrap_err().kind(), ErrorKind::NotFound);
        let names: Vec<String> = ns.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, vec!["default"]);
    });
}

#[test]
fn names_and_labels_are_validated() {
    each_backend(|env| {
        let ns = env.db.namespaces();
        for bad in ["", "-x", "a..b", "a/b", "with space", &"x".repeat(77)] {
            let e = ns.create(bad, Labels::new()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
        ns.create(&"x".repeat(76), Labels::new()).unwrap();
        let big = "v".repeat(4096);
        let e = ns.create("big", labels(&[("k", &big)])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("greater than maximum size"), "{e}");
        assert_eq!(ns.get("big").unwrap_err().kind(), ErrorKind::NotFound);
        // Exactly 4096 bytes is fine.
        ns.create("ok", labels(&[("k", &big[1..])])).unwrap();
        // Validation applies to updates too.
        let e = ns
            .update("ok", labels(&[("k2", &big)]), &["labels.k2".into()])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    });
}

#[test]
fn update_with_field_mask() {
    each_backend(|env| {
        let ns = env.db.namespaces();
        ns.create("n", labels(&[("a", "1"), ("b", "2")])).unwrap();
        // One label set, one removed (absent from the update).
        let n = ns
            .update(
                "n",
                labels(&[("a", "10"), ("c", "3")]),
                &["labels.a".into(), "labels.b".into()],
            )
            .unwrap();
        assert_eq!(n.labels, labels(&[("a", "10")]));
        // No paths: replace all.
        let n = ns.update("n", labels(&[("z", "26")]), &[]).unwrap();
        assert_eq!(n.labels, labels(&[("z", "26")]));
        // `labels`: replace all.
        let n = ns
            .update("n", labels(&[("y", "25")]), &["labels".into()])
            .unwrap();
        assert_eq!(n.labels, labels(&[("y", "25")]));
        assert_eq!(ns.get("n").unwrap().labels, labels(&[("y", "25")]));
        // Unknown field.
        let e = ns.update("n", Labels::new(), &["name".into()]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("cannot update \"name\""), "{e}");
        // Like containerd, updating a missing namespace creates it.
        ns.update("fresh", labels(&[("x", "1")]), &["labels.x".into()])
            .unwrap();
        assert_eq!(ns.get("fresh").unwrap().labels, labels(&[("x", "1")]));
    });
}

#[test]
fn created_on_first_write_like_containerd() {
    each_backend(|env| {
        let ns = env.db.namespaces();
        write_blob(env, "implicit", "r1", b"hello", None, Labels::new());
        env.db
            .leases()
            .create("viaLease", "l1", Labels::new())
            .unwrap();
        let names: Vec<String> = ns.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, vec!["implicit", "viaLease"]);
        assert!(ns.get("implicit").unwrap().labels.is_empty());
        assert_eq!(
            ns.create("implicit", Labels::new()).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
    });
}

#[test]
fn delete_refuses_non_empty_namespaces() {
    each_backend(|env| {
        let db = &env.db;
        let ns = db.namespaces();

        // Content.
        let d = write_blob(env, "c", "r", b"data", None, Labels::new());
        let e = ns.delete("c").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("content blobs"), "{e}");
        db.content().delete("c", &d).unwrap();
        ns.delete("c").unwrap();

        // Leases (and what a lease holds).
        db.leases().create("l", "lease1", Labels::new()).unwrap();
        db.leases()
            .add_resource(
                "l",
                "lease1",
                &Resource {
                    id: "key".into(),
                    kind: "snapshots/overlayfs".into(),
                },
            )
            .unwrap();
        let e = ns.delete("l").unwrap_err();
        assert!(e.to_string().contains("leases"), "{e}");
        db.leases().delete("l", "lease1").unwrap();
        ns.delete("l").unwrap();

        // Active ingests.
        let mut w = db
            .content()
            .writer(
                "i",
                berth_metadata::ContentWriterOpts {
                    reference: "ingest-1".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        let e = ns.delete("i").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("content ingests"), "{e}");
        db.content().abort("i", "ingest-1").unwrap();
        ns.delete("i").unwrap();

        // Several at once are all named.
        write_blob(env, "m", "r", b"x", None, Labels::new());
        db.leases().create("m", "lease", Labels::new()).unwrap();
        let e = ns.delete("m").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("content blobs") && msg.contains("leases"),
            "{msg}"
        );
    });
}
