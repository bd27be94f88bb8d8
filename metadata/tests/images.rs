//! Image records: CRUD, filters, field masks, GC roots and edges.

mod common;

use berth_content::Digest;
use berth_errdefs::ErrorKind;
use berth_metadata::{Descriptor, Image, Labels, ResourceKind};
use common::*;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn desc(media_type: &str, d: &Digest, size: usize) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: d.to_string(),
        size: size as i64,
        annotations: Labels::new(),
    }
}

fn fake_target() -> Descriptor {
    desc(MANIFEST, &Digest::of_bytes(b"m"), 1)
}

#[test]
fn create_get_list_delete() {
    each_backend(|env| {
        let images = env.db.images();
        let mut img = Image::new("docker.io/library/a:1", fake_target());
        img.labels = labels(&[("x", "1"), ("empty", "")]);
        let created = images.create("n", img.clone(), None).unwrap();
        assert_eq!(created.labels, labels(&[("x", "1")]));
        assert_eq!(created.created_at, created.updated_at);
        let e = images.create("n", img.clone(), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(images.get("n", &img.name).unwrap(), created);
        assert_eq!(
            images.get("other", &img.name).unwrap_err().kind(),
            ErrorKind::NotFound
        );

        let mut b = Image::new("b", desc(INDEX, &Digest::of_bytes(b"i"), 2));
        b.labels = labels(&[("x", "2")]);
        b.target.annotations = labels(&[("org.opencontainers.image.ref.name", "1")]);
        images.create("n", b, None).unwrap();

        let names = |f: &[&str]| -> Vec<String> {
            images
                .list("n", f)
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect()
        };
        assert_eq!(names(&[]), ["b", "docker.io/library/a:1"]);
        assert_eq!(names(&["name==b"]), ["b"]);
        assert_eq!(names(&[&format!("target.mediatype=={INDEX}")]), ["b"]);
        assert_eq!(
            names(&[&format!("target.digest=={}", Digest::of_bytes(b"m"))]),
            ["docker.io/library/a:1"]
        );
        assert_eq!(names(&["labels.x==1", "labels.x==2"]).len(), 2);
        assert_eq!(names(&["labels.x==2"]), ["b"]);
        assert_eq!(
            names(&[r#"annotations."org.opencontainers.image.ref.name"==1"#]),
            ["b"]
        );
        assert_eq!(names(&["name~=^docker"]), ["docker.io/library/a:1"]);
        assert_eq!(
            images.list("n", &["name=="]).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );

        // Delete with a target guard.
        let e = images
            .delete("n", "b", Some(&Digest::of_bytes(b"x").to_string()), None)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        images
            .delete("n", "b", Some(&Digest::of_bytes(b"i").to_string()), None)
            .unwrap();
        assert_eq!(
            images.delete("n", "b", None, None).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(names(&[]), ["docker.io/library/a:1"]);
    });
}

#[test]
fn validation() {
    each_backend(|env| {
        let images = env.db.images();
        let bad = [
            Image::new("", fake_target()),
            Image::new(
                "a",
                Descriptor {
                    digest: "sha256:nothex".into(),
                    ..fake_target()
                },
            ),
            Image::new(
                "a",
                Descriptor {
                    size: 0,
                    ..fake_target()
                },
            ),
            Image::new(
                "a",
                Descriptor {
                    media_type: String::new(),
                    ..fake_target()
                },
            ),
        ];
        for img in bad {
            let e = images.create("n", img.clone(), None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{img:?}: {e}");
        }
        let mut big = Image::new("a", fake_target());
        big.labels = labels(&[("k", &"v".repeat(5000))]);
        assert_eq!(
            images.create("n", big, None).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            images
                .create("bad/ns", Image::new("a", fake_target()), None)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
    });
}

#[test]
fn update_field_masks() {
    each_backend(|env| {
        let images = env.db.images();
        let mut img = Image::new("a", fake_target());
        img.labels = labels(&[("keep", "1"), ("drop", "1")]);
        img.target.annotations = labels(&[("an", "1")]);
        let created = images.create("n", img, None).unwrap();

        // One label set, one removed, one annotation set.
        let mut u = Image::new("a", Descriptor::default());
        u.labels = labels(&[("new", "2")]);
        u.target.annotations = labels(&[("an2", "2")]);
        let paths: Vec<String> = ["labels.new", "labels.drop", "annotations.an2"]
            .map(String::from)
            .to_vec();
        let got = images.update("n", u, &paths).unwrap();
        assert_eq!(got.labels, labels(&[("keep", "1"), ("new", "2")]));
        assert_eq!(got.target.annotations, labels(&[("an", "1"), ("an2", "2")]));
        assert_eq!(got.target.digest, created.target.digest);
        assert_eq!(got.created_at, created.created_at);
        assert!(got.updated_at >= created.updated_at);

        // Target as a unit.
        let t = desc(INDEX, &Digest::of_bytes(b"t"), 9);
        let got = images
            .update("n", Image::new("a", t.clone()), &["target".to_string()])
            .unwrap();
        assert_eq!(got.target, t);
        assert_eq!(got.labels, labels(&[("keep", "1"), ("new", "2")]));

        // No mask: labels and target replaced.
        let mut all = Image::new("a", fake_target());
        all.labels = labels(&[("only", "1")]);
        let got = images.update("n", all, &[]).unwrap();
        assert_eq!(got.labels, labels(&[("only", "1")]));
        assert_eq!(got.target, fake_target());
        assert_eq!(got.created_at, created.created_at);

        // Errors.
        let e = images
            .update("n", Image::new("a", fake_target()), &["name".to_string()])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let e = images
            .update(
                "n",
                Image::new("a", Descriptor::default()),
                &["target".to_string()],
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let e = images
            .update("n", Image::new("zz", fake_target()), &[])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            images.get("n", "a").unwrap().labels,
            labels(&[("only", "1")])
        );
    });
}

#[test]
fn namespace_with_images_cannot_be_deleted() {
    each_backend(|env| {
        env.db
            .images()
            .create("n", Image::new("a", fake_target()), None)
            .unwrap();
        let e = env.db.namespaces().delete("n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("images"), "{e}");
        env.db.images().delete("n", "a", None, None).unwrap();
        env.db.namespaces().delete("n").unwrap();
    });
}

/// An index -> manifest -> (config, layer) chain linked by containerd's GC
/// labels, as an import writes it. Returns (index, manifest, config, layer).
fn image_chain(env: &common::Env, ns: &str, tag: &str) -> [Digest; 4] {
    let layer = write_blob(
        env,
        ns,
        &format!("{tag}-l"),
        tag.as_bytes(),
        None,
        Labels::new(),
    );
    let shared = Digest::of_bytes(b"shared layer");
    if env.db.content().info(ns, &shared).is_err() {
        write_blob(env, ns, "shared-l", b"shared layer", None, Labels::new());
    }
    let config = write_blob(
        env,
        ns,
        &format!("{tag}-c"),
        format!("config {tag}").as_bytes(),
        None,
        Labels::new(),
    );
    let manifest = write_blob(
        env,
        ns,
        &format!("{tag}-m"),
        format!("manifest {tag}").as_bytes(),
        None,
        labels(&[
            ("containerd.io/gc.ref.content.config", &config.to_string()),
            ("containerd.io/gc.ref.content.l.0", &shared.to_string()),
            ("containerd.io/gc.ref.content.l.1", &layer.to_string()),
        ]),
    );
    let index = write_blob(
        env,
        ns,
        &format!("{tag}-i"),
        format!("index {tag}").as_bytes(),
        None,
        labels(&[("containerd.io/gc.ref.content.m.0", &manifest.to_string())]),
    );
    [index, manifest, config, layer]
}

#[test]
fn images_are_gc_roots_and_sharing_is_kept() {
    each_backend(|env| {
        let [ia, ma, ca, la] = image_chain(env, "n", "a");
        let [ib, mb, cb, lb] = image_chain(env, "n", "b");
        let shared = Digest::of_bytes(b"shared layer");
        let stray = write_blob(env, "n", "stray", b"stray", None, Labels::new());
        env.db
            .images()
            .create("n", Image::new("a", desc(INDEX, &ia, 7)), None)
            .unwrap();
        env.db
            .images()
            .create("n", Image::new("b", desc(INDEX, &ib, 7)), None)
            .unwrap();

        let stats = env.db.garbage_collect().unwrap();
        assert_eq!(stats.blobs_removed, vec![stray]);
        for d in [ia, ma, ca, la, ib, mb, cb, lb, shared] {
            assert!(on_disk(env, &d), "{d} kept");
        }

        env.db.images().delete("n", "a", None, None).unwrap();
        let stats = env.db.garbage_collect().unwrap();
        let mut removed = stats.blobs_removed.clone();
        removed.sort();
        let mut want = vec![ia, ma, ca, la];
        want.sort();
        assert_eq!(removed, want);
        for d in [ib, mb, cb, lb, shared] {
            assert!(on_disk(env, &d), "{d} kept");
            env.db.content().info("n", &d).unwrap();
        }
    });
}

#[test]
fn expired_images_are_collected_unless_leased() {
    each_backend(|env| {
        let target = write_blob(env, "n", "t", b"target", None, Labels::new());
        let mut img = Image::new("old", desc(MANIFEST, &target, 6));
        img.labels = labels(&[("containerd.io/gc.expire", "2000-01-01T00:00:00Z")]);
        env.db.leases().create("n", "l", Labels::new()).unwrap();
        env.db.images().create("n", img.clone(), Some("l")).unwrap();
        let stats = env.db.garbage_collect().unwrap();
        assert!(stats.removed.is_empty(), "{:?}", stats.removed);

        env.db.leases().delete("n", "l").unwrap();
        let stats = env.db.garbage_collect().unwrap();
        let kinds: Vec<_> = stats
            .removed
            .iter()
            .map(|r| (r.kind, r.key.clone()))
            .collect();
        assert!(
            kinds.contains(&(ResourceKind::Image, "old".to_string())),
            "{kinds:?}"
        );
        assert_eq!(stats.blobs_removed, vec![target]);
        assert_eq!(
            env.db.images().get("n", "old").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    });
}

#[test]
fn image_labels_are_edges() {
    each_backend(|env| {
        let target = write_blob(env, "n", "t", b"target", None, Labels::new());
        let extra = write_blob(env, "n", "e", b"extra", None, Labels::new());
        let mut img = Image::new("a", desc(MANIFEST, &target, 6));
        img.labels = labels(&[("containerd.io/gc.ref.content.x", &extra.to_string())]);
        env.db.images().create("n", img, None).unwrap();
        let stats = env.db.garbage_collect().unwrap();
        assert!(stats.blobs_removed.is_empty());
        assert!(on_disk(env, &extra));
    });
}
