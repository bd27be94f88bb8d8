mod common;

use berth_errdefs::ErrorKind;
use berth_metadata::{ContentWriterOpts, Labels, Resource};
use common::*;

fn res(kind: &str, id: &str) -> Resource {
    Resource {
        id: id.into(),
        kind: kind.into(),
    }
}

#[test]
fn create_list_delete() {
    each_backend(|env| {
        let l = env.db.leases();
        let a = l.create("n", "a", labels(&[("team", "x")])).unwrap();
        assert_eq!(a.id, "a");
        let b = l.create("n", "", Labels::new()).unwrap();
        assert!(!b.id.is_empty());
        assert_eq!(
            l.create("n", "a", Labels::new()).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        // Same id in another namespace is another lease.
        l.create("m", "a", Labels::new()).unwrap();

        let ids = |f: &[&str]| -> Vec<String> {
            l.list("n", f).unwrap().into_iter().map(|l| l.id).collect()
        };
        let mut all = vec!["a".to_string(), b.id.clone()];
        all.sort();
        assert_eq!(ids(&[]), all);
        assert_eq!(ids(&["labels.team==x"]), vec!["a"]);
        assert_eq!(ids(&["id==a"]), vec!["a"]);
        assert_eq!(ids(&[&format!("id=={}", b.id), "id==a"]), all);
        assert_eq!(ids(&["labels.team!=x"]), vec![b.id.clone()]);
        let listed = l.list("n", &["id==a"]).unwrap();
        assert_eq!(listed[0].labels, labels(&[("team", "x")]));
        assert_eq!(listed[0].created_at, a.created_at);
        assert_eq!(
            l.list("n", &["id=="]).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );

        l.delete("n", "a").unwrap();
        assert_eq!(l.delete("n", "a").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(ids(&[]), vec![b.id.clone()]);
        assert_eq!(l.list("m", &[] as &[&str]).unwrap().len(), 1);
        let big = "v".repeat(4096);
        assert_eq!(
            l.create("n", "big", labels(&[("k", &big)]))
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
    });
}

#[test]
fn resources() {
    each_backend(|env| {
        let l = env.db.leases();
        l.create("n", "l", Labels::new()).unwrap();
        let d = berth_content::Digest::of_bytes(b"x");
        let rs = [
            res("content", &d.to_string()),
            res("ingests", "ref-1"),
            res("images", "docker.io/library/busybox:latest"),
            res("containers", "c1"),
            res("snapshots/overlayfs", "sha256:abc/key with/slashes"),
        ];
        for r in &rs {
            l.add_resource("n", "l", r).unwrap();
            l.add_resource("n", "l", r).unwrap(); // idempotent
        }
        let mut want = rs.to_vec();
        want.sort();
        assert_eq!(l.list_resources("n", "l").unwrap(), want);

        l.delete_resource("n", "l", &rs[1]).unwrap();
        l.delete_resource("n", "l", &rs[1]).unwrap(); // absent is fine
        want.retain(|r| r != &rs[1]);
        assert_eq!(l.list_resources("n", "l").unwrap(), want);

        // Errors.
        let cases = [
            (res("content", "not-a-digest"), ErrorKind::InvalidArgument),
            (res("snapshots", "k"), ErrorKind::InvalidArgument),
            (res("snapshots/a/b", "k"), ErrorKind::InvalidArgument),
            (res("ingests/x", "k"), ErrorKind::InvalidArgument),
            (res("ingests", ""), ErrorKind::InvalidArgument),
            (res("tasks", "t"), ErrorKind::NotImplemented),
        ];
        for (r, kind) in cases {
            assert_eq!(
                l.add_resource("n", "l", &r).unwrap_err().kind(),
                kind,
                "{r:?}"
            );
        }
        assert_eq!(
            l.add_resource("n", "missing", &rs[0]).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            l.list_resources("n", "missing").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // Deleting the lease drops its resource list.
        l.delete("n", "l").unwrap();
        l.create("n", "l", Labels::new()).unwrap();
        assert!(l.list_resources("n", "l").unwrap().is_empty());
    });
}

#[test]
fn content_written_under_a_lease_belongs_to_it() {
    each_backend(|env| {
        let l = env.db.leases();
        l.create("n", "pull", Labels::new()).unwrap();
        let mut w = env
            .db
            .content()
            .writer(
                "n",
                ContentWriterOpts {
                    reference: "layer".into(),
                    lease: Some("pull".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            l.list_resources("n", "pull").unwrap(),
            vec![res("ingests", "layer")]
        );
        w.write(b"bytes").unwrap();
        let d = w.commit(0, None, Labels::new()).unwrap();
        assert_eq!(
            l.list_resources("n", "pull").unwrap(),
            vec![res("content", &d.to_string())]
        );

        // A writer for content already in the namespace still leases it.
        l.create("n", "second", Labels::new()).unwrap();
        let e = env
            .db
            .content()
            .writer(
                "n",
                ContentWriterOpts {
                    reference: "again".into(),
                    expected: Some(d),
                    lease: Some("second".into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(
            l.list_resources("n", "second").unwrap(),
            vec![res("content", &d.to_string())]
        );

        // A lease that does not exist.
        let e = env
            .db
            .content()
            .writer(
                "n",
                ContentWriterOpts {
                    reference: "x".into(),
                    lease: Some("nope".into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("lease \"nope\""), "{e}");
        // ... left no ingest behind.
        assert_eq!(
            env.db.content().status("n", "x").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    });
}
