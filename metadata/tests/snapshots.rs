//! Namespaced snapshots over a recording in-memory backend: namespace
//! isolation, containerd's error kinds, walk filters, leases, GC (leaf-first
//! backend removal, roots and label edges), undo of backend failures and
//! recovery of crashes between the two transactions of a create or commit.
//!
//! The backend here is a test double of the `Snapshotter` trait (it records
//! calls and can fail or "crash" on demand); the real backends run the
//! shared conformance suite through this layer in `snapshots_suite.rs`.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use berth_errdefs::ErrorKind;
use berth_metadata::{Backend, Db, DbOptions, Labels, Removed, Resource, ResourceKind};
use berth_snapshotter::{Info, Kind, Mount, Snapshotter, Usage};
use common::*;

const SN: &str = "fake";

// ---------------------------------------------------------------------------
// The recording backend
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Snap {
    kind: Kind,
    parent: String,
    labels: Labels,
}

/// What the next call of an operation does instead of its usual work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trap {
    /// Fail without doing anything.
    Fail,
    /// Panic before doing anything (a crash before the backend call).
    PanicBefore,
    /// Do the work, then panic (a crash after the backend call).
    PanicAfter,
}

#[derive(Default)]
struct State {
    snaps: BTreeMap<String, Snap>,
    log: Vec<String>,
    traps: BTreeMap<&'static str, Trap>,
}

#[derive(Default)]
struct Fake {
    state: Mutex<State>,
}

type SResult<T> = berth_snapshotter::Result<T>;
use berth_snapshotter::Error as SError;

impl Fake {
    fn trap(&self, op: &'static str, t: Trap) {
        self.state.lock().unwrap().traps.insert(op, t);
    }

    fn keys(&self) -> Vec<String> {
        self.state.lock().unwrap().snaps.keys().cloned().collect()
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    fn get(&self, key: &str) -> Option<Snap> {
        self.state.lock().unwrap().snaps.get(key).cloned()
    }

    /// Runs `work` unless a trap for `op` says otherwise.
    fn op<T>(
        &self,
        op: &'static str,
        arg: &str,
        work: impl FnOnce(&mut State) -> SResult<T>,
    ) -> SResult<T> {
        let mut st = self.state.lock().unwrap();
        let trap = st.traps.remove(op);
        st.log.push(format!("{op} {arg}"));
        match trap {
            Some(Trap::Fail) => Err(SError::Storage(format!("injected failure of {op}"))),
            Some(Trap::PanicBefore) => {
                drop(st);
                panic!("injected crash before {op}")
            }
            Some(Trap::PanicAfter) => {
                let _ = work(&mut st);
                drop(st);
                panic!("injected crash after {op}")
            }
            None => work(&mut st),
        }
    }

    fn create(
        &self,
        op: &'static str,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> SResult<Vec<Mount>> {
        self.op(op, key, |st| {
            if st.snaps.contains_key(key) {
                return Err(SError::AlreadyExists(key.into()));
            }
            if !parent.is_empty() {
                match st.snaps.get(parent) {
                    None => return Err(SError::NotFound(parent.into())),
                    Some(p) if p.kind != Kind::Committed => {
                        return Err(SError::InvalidArgument("parent not committed".into()))
                    }
                    _ => {}
                }
            }
            st.snaps.insert(
                key.to_string(),
                Snap {
                    kind,
                    parent: parent.to_string(),
                    labels,
                },
            );
            Ok(vec![mount_of(key)])
        })
    }
}

fn mount_of(bkey: &str) -> Mount {
    Mount {
        kind: "bind".into(),
        source: format!("/fake/{bkey}"),
        options: vec!["rbind".into(), "rw".into()],
    }
}

impl Snapshotter for Fake {
    fn stat(&self, key: &str) -> SResult<Info> {
        let st = self.state.lock().unwrap();
        let s = st
            .snaps
            .get(key)
            .ok_or_else(|| SError::NotFound(key.into()))?;
        Ok(Info {
            kind: s.kind,
            name: key.to_string(),
            parent: s.parent.clone(),
            labels: s.labels.clone(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        })
    }

    fn update(&self, info: Info, _: &[String]) -> SResult<Info> {
        self.stat(&info.name)
    }

    fn usage(&self, key: &str) -> SResult<Usage> {
        self.stat(key)?;
        Ok(Usage {
            size: 42,
            inodes: 3,
        })
    }

    fn mounts(&self, key: &str) -> SResult<Vec<Mount>> {
        self.stat(key)?;
        Ok(vec![mount_of(key)])
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> SResult<Vec<Mount>> {
        self.create("prepare", Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> SResult<Vec<Mount>> {
        self.create("view", Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> SResult<()> {
        self.op("commit", key, |st| {
            if st.snaps.contains_key(name) {
                return Err(SError::AlreadyExists(name.into()));
            }
            let s = st
                .snaps
                .get(key)
                .ok_or_else(|| SError::NotFound(key.into()))?;
            if s.kind != Kind::Active {
                return Err(SError::FailedPrecondition("not active".into()));
            }
            let parent = s.parent.clone();
            st.snaps.remove(key);
            st.snaps.insert(
                name.to_string(),
                Snap {
                    kind: Kind::Committed,
                    parent,
                    labels,
                },
            );
            Ok(())
        })
    }

    fn remove(&self, key: &str) -> SResult<()> {
        self.op("remove", key, |st| {
            if !st.snaps.contains_key(key) {
                return Err(SError::NotFound(key.into()));
            }
            if st.snaps.values().any(|s| s.parent == key) {
                return Err(SError::FailedPrecondition("has children".into()));
            }
            st.snaps.remove(key);
            Ok(())
        })
    }

    fn walk(&self, _filters: &[String], f: &mut dyn FnMut(Info) -> SResult<()>) -> SResult<()> {
        for k in self.keys() {
            f(self.stat(&k)?)?;
        }
        Ok(())
    }

    fn cleanup(&self) -> SResult<()> {
        self.state.lock().unwrap().log.push("cleanup".into());
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

struct SEnv {
    env: Env,
    fake: Arc<Fake>,
}

impl SEnv {
    fn new(backend: Backend) -> SEnv {
        let env = env(backend);
        let fake = Arc::new(Fake::default());
        env.db.register_snapshotter(SN, fake.clone()).unwrap();
        SEnv { env, fake }
    }

    fn db(&self) -> &Db {
        &self.env.db
    }

    fn s(&self) -> berth_metadata::Snapshots<'_> {
        self.env.db.snapshots(SN).unwrap()
    }

    /// Drops the database (as a crash or restart would) and opens it again
    /// with the same backend registered.
    fn reopen(&mut self) {
        let opts = DbOptions {
            path: self.env.dir.path().join("metadata"),
            backend: self.env.backend,
        };
        let placeholder = Db::open(
            DbOptions {
                path: self.env.dir.path().join("placeholder"),
                backend: self.env.backend,
            },
            self.env.store.clone(),
        )
        .unwrap();
        let old = std::mem::replace(&mut self.env.db, placeholder);
        assert_eq!(Arc::strong_count(&old), 1, "db still referenced");
        drop(old);
        let db = Db::open(opts, self.env.store.clone()).unwrap();
        db.register_snapshotter(SN, self.fake.clone()).unwrap();
        self.env.db = db;
    }
}

fn each(f: impl Fn(&mut SEnv)) {
    for b in backends() {
        eprintln!("backend: {}", b.as_str());
        f(&mut SEnv::new(b));
    }
}

fn kind(r: Result<impl std::fmt::Debug, berth_metadata::Error>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

fn none() -> Labels {
    Labels::new()
}

/// prepare + commit: a committed snapshot `name` on `parent`.
fn committed(s: &berth_metadata::Snapshots<'_>, ns: &str, name: &str, parent: &str, l: Labels) {
    let key = format!("{name}-active");
    s.prepare(ns, &key, parent, none(), None).unwrap();
    s.commit(ns, name, &key, l, None).unwrap();
}

fn names(infos: &[Info]) -> Vec<&str> {
    infos.iter().map(|i| i.name.as_str()).collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn namespaces_see_only_their_own_keys_and_backend_keys_are_internal() {
    each(|e| {
        let s = e.s();
        let m1 = s.prepare("ns1", "k", "", none(), None).unwrap();
        let m2 = s.prepare("ns2", "k", "", none(), None).unwrap();
        assert_ne!(m1, m2, "two namespaces must not share a backend snapshot");
        let keys = e.fake.keys();
        assert_eq!(keys.len(), 2);
        assert!(
            keys.iter()
                .any(|k| k.starts_with("ns1/") && k.ends_with("/k")),
            "{keys:?}"
        );
        assert!(
            keys.iter()
                .any(|k| k.starts_with("ns2/") && k.ends_with("/k")),
            "{keys:?}"
        );

        assert_eq!(kind(s.stat("ns3", "k")), ErrorKind::NotFound);
        assert_eq!(names(&s.list("ns1", &[] as &[&str]).unwrap()), vec!["k"]);
        assert!(s.list("ns3", &[] as &[&str]).unwrap().is_empty());

        // A parent from another namespace does not exist here.
        committed(&s, "ns1", "base", "", none());
        assert_eq!(
            kind(s.prepare("ns2", "c", "base", none(), None)),
            ErrorKind::NotFound
        );

        // Removing in one namespace leaves the other alone.
        s.remove("ns1", "k", None).unwrap();
        assert_eq!(kind(s.stat("ns1", "k")), ErrorKind::NotFound);
        let info = s.stat("ns2", "k").unwrap();
        assert_eq!(info.kind, Kind::Active);
        assert_eq!(s.mounts("ns2", "k").unwrap(), m2);
    });
}

#[test]
fn error_kinds_are_containerds() {
    each(|e| {
        let s = e.s();
        let ns = "n";
        committed(&s, ns, "base", "", none());
        s.prepare(ns, "active", "base", none(), None).unwrap();
        s.view(ns, "view", "base", none(), None).unwrap();

        // Existing keys, for every prepare/view combination and commit names.
        for existing in ["base", "active", "view"] {
            assert_eq!(
                kind(s.prepare(ns, existing, "", none(), None)),
                ErrorKind::AlreadyExists
            );
            assert_eq!(
                kind(s.view(ns, existing, "base", none(), None)),
                ErrorKind::AlreadyExists
            );
        }
        s.prepare(ns, "a2", "", none(), None).unwrap();
        assert_eq!(
            kind(s.commit(ns, "base", "a2", none(), None)),
            ErrorKind::AlreadyExists
        );

        // Parents.
        assert_eq!(
            kind(s.prepare(ns, "x", "missing", none(), None)),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(s.view(ns, "x", "missing", none(), None)),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(s.prepare(ns, "x", "active", none(), None)),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(s.view(ns, "x", "view", none(), None)),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(s.stat(ns, "x")),
            ErrorKind::NotFound,
            "failed creates leave nothing"
        );

        // Commit.
        assert_eq!(
            kind(s.commit(ns, "c", "missing", none(), None)),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(s.commit(ns, "c", "view", none(), None)),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            kind(s.commit(ns, "c", "base", none(), None)),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(kind(s.stat(ns, "c")), ErrorKind::NotFound);

        // Remove.
        let err = s.remove(ns, "base", None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("remove"), "{err}");
        assert_eq!(kind(s.remove(ns, "missing", None)), ErrorKind::NotFound);

        // Update.
        let mut info = s.stat(ns, "active").unwrap();
        info.parent = String::new();
        assert_eq!(
            kind(s.update(ns, info.clone(), &["parent".to_string()])),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(s.update(ns, info.clone(), &["kind".to_string()])),
            ErrorKind::InvalidArgument
        );
        info.name = "missing".into();
        assert_eq!(kind(s.update(ns, info, &[])), ErrorKind::NotFound);

        // Arguments.
        assert_eq!(
            kind(s.prepare(ns, "", "", none(), None)),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(s.prepare("bad ns", "k", "", none(), None)),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(s.prepare(ns, "k", "", none(), Some("no-such-lease"))),
            ErrorKind::NotFound
        );
        assert_eq!(kind(s.stat(ns, "k")), ErrorKind::NotFound);
        assert_eq!(
            kind(e.db().snapshots("nope").map(|_| ())),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(e.db().snapshots("").map(|_| ())),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(e.db().register_snapshotter(SN, e.fake.clone())),
            ErrorKind::AlreadyExists
        );
        assert_eq!(e.db().snapshotters(), vec![SN.to_string()]);
    });
}

#[test]
fn prepare_view_commit_chain_and_labels() {
    each(|e| {
        let s = e.s();
        let ns = "n";
        let t0 = SystemTime::now();
        let l = labels(&[("a", "1"), ("containerd.io/snapshot/x", "inherited")]);
        let m = s.prepare(ns, "k1", "", l.clone(), None).unwrap();
        assert_eq!(m.len(), 1);
        let info = s.stat(ns, "k1").unwrap();
        assert_eq!(
            (info.kind, info.name.as_str(), info.parent.as_str()),
            (Kind::Active, "k1", "")
        );
        assert_eq!(info.labels, l);
        assert!(info.created >= t0 && info.created == info.updated);
        // Only the inherited label reaches the backend.
        let bkey = e.fake.keys().pop().unwrap();
        assert_eq!(
            e.fake.get(&bkey).unwrap().labels,
            labels(&[("containerd.io/snapshot/x", "inherited")])
        );
        assert_eq!(
            s.usage(ns, "k1").unwrap(),
            Usage {
                size: 42,
                inodes: 3
            }
        );

        s.commit(ns, "c1", "k1", labels(&[("b", "2")]), None)
            .unwrap();
        assert_eq!(kind(s.stat(ns, "k1")), ErrorKind::NotFound);
        let c1 = s.stat(ns, "c1").unwrap();
        assert_eq!(c1.kind, Kind::Committed);
        assert_eq!(c1.labels, labels(&[("b", "2")]));
        // The key can be used again once committed away.
        s.prepare(ns, "k1", "c1", none(), None).unwrap();
        s.commit(ns, "c2", "k1", none(), None).unwrap();
        s.view(ns, "v", "c2", none(), None).unwrap();
        assert_eq!(s.stat(ns, "c2").unwrap().parent, "c1");
        assert_eq!(s.stat(ns, "v").unwrap().parent, "c2");
        assert_eq!(s.stat(ns, "v").unwrap().kind, Kind::View);

        // Update: no paths replace all labels and keep the parent.
        let mut info = s.stat(ns, "c2").unwrap();
        info.labels = labels(&[("x", "1"), ("y", "2")]);
        info.parent = "ignored".into();
        let before = s.stat(ns, "c2").unwrap();
        let up = s.update(ns, info, &[]).unwrap();
        assert_eq!(up.labels, labels(&[("x", "1"), ("y", "2")]));
        assert_eq!(up.parent, "c1");
        assert_eq!(up.created, before.created);
        assert!(up.updated > before.updated);
        // labels.<k> paths set one and remove one.
        let mut info = up.clone();
        info.labels = labels(&[("z", "3")]);
        let up = s
            .update(ns, info, &["labels.z".to_string(), "labels.x".to_string()])
            .unwrap();
        assert_eq!(up.labels, labels(&[("y", "2"), ("z", "3")]));
        assert_eq!(s.stat(ns, "c2").unwrap(), up);

        // Remove a child, then the chain from the top.
        s.remove(ns, "v", None).unwrap();
        s.remove(ns, "c2", None).unwrap();
        s.remove(ns, "c1", None).unwrap();
        assert!(s.list(ns, &[] as &[&str]).unwrap().is_empty());
    });
}

#[test]
fn walk_filters_and_stat_inside_walk() {
    each(|e| {
        let s = e.s();
        let ns = "n";
        committed(
            &s,
            ns,
            "p",
            "",
            labels(&[("l", "1"), ("containerd.io/gc.root", "x")]),
        );
        s.prepare(ns, "a", "p", labels(&[("l", "2")]), None)
            .unwrap();
        s.view(ns, "v", "p", none(), None).unwrap();
        s.prepare(ns, "b", "", none(), None).unwrap();

        let cases: &[(&str, &[&str])] = &[
            (r#"labels."containerd.io/gc.root"==x"#, &["p"]),
            ("kind==active", &["a", "b"]),
            ("kind==view", &["v"]),
            ("kind==committed", &["p"]),
            ("name==p", &["p"]),
            ("parent==p", &["a", "v"]),
            (r#"parent!="""#, &["a", "v"]),
            ("labels.l", &["a", "p"]),
            ("labels.l==2", &["a"]),
            ("kind==active,parent==p", &["a"]),
        ];
        for (filter, want) in cases {
            let got = s.list(ns, &[*filter]).unwrap();
            assert_eq!(names(&got), *want, "filter {filter}");
        }
        // Several filters: any matches.
        let got = s.list(ns, &["name==a", "name==b"]).unwrap();
        assert_eq!(names(&got), vec!["a", "b"]);
        assert_eq!(kind(s.list(ns, &["kind=="])), ErrorKind::InvalidArgument);

        // Walk info equals Stat, and Stat (or a write) from the callback works.
        let mut seen = Vec::new();
        s.walk(ns, &[] as &[&str], &mut |info| {
            let st = s.stat(ns, &info.name)?;
            assert_eq!(st, info);
            if info.name == "b" {
                s.update(ns, info.clone(), &[])?;
            }
            seen.push(info.name);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec!["a", "b", "p", "v"]);
    });
}

#[test]
fn leases_own_snapshots() {
    each(|e| {
        let s = e.s();
        let ns = "n";
        let db = e.db();
        db.leases().create(ns, "l", none()).unwrap();
        s.prepare(ns, "k", "", none(), Some("l")).unwrap();
        let res = |db: &Db| db.leases().list_resources(ns, "l").unwrap();
        let snap = |id: &str| Resource {
            id: id.into(),
            kind: format!("snapshots/{SN}"),
        };
        assert_eq!(res(db), vec![snap("k")]);
        s.commit(ns, "c", "k", none(), Some("l")).unwrap();
        assert_eq!(res(db), vec![snap("c")]);
        s.view(ns, "v", "c", none(), Some("l")).unwrap();
        assert_eq!(res(db), vec![snap("c"), snap("v")]);

        // Held: GC keeps everything.
        let stats = db.garbage_collect().unwrap();
        assert!(stats.removed.is_empty(), "{:?}", stats.removed);
        assert!(stats.snapshots_removed.is_empty());

        s.remove(ns, "v", Some("l")).unwrap();
        assert_eq!(res(db), vec![snap("c")]);

        // The lease goes: so do its snapshots, records and backend.
        db.leases().delete(ns, "l").unwrap();
        let stats = db.garbage_collect().unwrap();
        let removed: Vec<_> = stats.removed_snapshots().collect();
        assert_eq!(removed, vec![(ns, SN, "c")]);
        assert_eq!(
            stats.snapshots_removed.len(),
            2,
            "c, and the removed view v"
        );
        assert!(e.fake.keys().is_empty(), "{:?}", e.fake.keys());
    });
}

#[test]
fn gc_removes_unreferenced_chain_leaf_first_and_keeps_roots() {
    each(|e| {
        let s = e.s();
        let ns = "n";
        // An unreferenced chain c1 <- c2 <- c3 <- active a.
        committed(&s, ns, "c1", "", none());
        committed(&s, ns, "c2", "c1", none());
        committed(&s, ns, "c3", "c2", none());
        s.prepare(ns, "a", "c3", none(), None).unwrap();
        // A rooted chain r1 <- r2 (r2 labelled): r1 lives through r2's parent edge.
        committed(&s, ns, "r1", "", none());
        committed(
            &s,
            ns,
            "r2",
            "r1",
            labels(&[("containerd.io/gc.root", "now")]),
        );
        let bkey = |name: &str| {
            e.fake
                .keys()
                .into_iter()
                .find(|k| k.starts_with(&format!("{ns}/")) && k.ends_with(&format!("/{name}")))
                .unwrap()
        };
        let (b1, b2, b3, ba) = (bkey("c1"), bkey("c2"), bkey("c3"), bkey("a"));
        e.fake.clear_log();

        let stats = e.db().garbage_collect().unwrap();
        let mut removed: Vec<_> = stats.removed_snapshots().map(|(_, _, k)| k).collect();
        removed.sort();
        assert_eq!(removed, vec!["a", "c1", "c2", "c3"]);
        let order: Vec<_> = stats
            .snapshots_removed
            .iter()
            .map(|r| r.key.clone())
            .collect();
        assert_eq!(order, vec![ba.clone(), b3.clone(), b2.clone(), b1.clone()]);
        assert!(stats.snapshots_removed.iter().all(|r| r.snapshotter == SN));
        assert_eq!(
            e.fake.log(),
            vec![
                format!("remove {ba}"),
                format!("remove {b3}"),
                format!("remove {b2}"),
                format!("remove {b1}"),
                "cleanup".to_string()
            ]
        );
        assert_eq!(
            names(&s.list(ns, &[] as &[&str]).unwrap()),
            vec!["r1", "r2"]
        );
        assert_eq!(e.fake.keys().len(), 2);

        // Dropping the root label lets the rest go; r1 can then be removed.
        let mut info = s.stat(ns, "r2").unwrap();
        info.labels.clear();
        s.update(ns, info, &[]).unwrap();
        let stats = e.db().garbage_collect().unwrap();
        assert_eq!(stats.removed_snapshots().count(), 2);
        assert!(e.fake.keys().is_empty());
        // Stable.
        let stats = e.db().garbage_collect().unwrap();
        assert!(stats.removed.is_empty() && stats.snapshots_removed.is_empty());
    });
}

#[test]
fn gc_follows_label_edges() {
    each(|e| {
        let s = e.s();
        let ns = "n";
        // content --gc.ref.snapshot.fake--> s1 --gc.ref.snapshot.fake/x--> s2
        // s1 --gc.ref.content--> blob
        committed(&s, ns, "s2", "", none());
        let blob = write_blob(&e.env, ns, "r", b"layer", None, none());
        committed(
            &s,
            ns,
            "s1",
            "",
            labels(&[
                ("containerd.io/gc.ref.snapshot.fake/x", "s2"),
                ("containerd.io/gc.ref.content.l0", &blob.to_string()),
            ]),
        );
        let _root = write_blob(
            &e.env,
            ns,
            "r2",
            b"root",
            None,
            labels(&[
                ("containerd.io/gc.root", "1"),
                ("containerd.io/gc.ref.snapshot.fake", "s1"),
            ]),
        );
        committed(&s, ns, "loose", "", none());
        let stats = e.db().garbage_collect().unwrap();
        assert_eq!(
            stats.removed,
            vec![Removed {
                namespace: ns.into(),
                kind: ResourceKind::Snapshot,
                key: format!("{SN}/loose"),
            }]
        );
        assert!(stats.blobs_removed.is_empty());
        assert_eq!(
            names(&s.list(ns, &[] as &[&str]).unwrap()),
            vec!["s1", "s2"]
        );
    });
}

#[test]
fn removed_keys_can_be_recreated_before_gc() {
    each(|e| {
        let s = e.s();
        let ns = "n";
        s.prepare(ns, "k", "", labels(&[("containerd.io/gc.root", "1")]), None)
            .unwrap();
        let old = e.fake.keys();
        s.remove(ns, "k", None).unwrap();
        assert_eq!(e.fake.keys(), old, "remove leaves the backend to GC");
        s.prepare(ns, "k", "", labels(&[("containerd.io/gc.root", "1")]), None)
            .unwrap();
        let both = e.fake.keys();
        assert_eq!(both.len(), 2);
        let stats = e.db().garbage_collect().unwrap();
        assert!(stats.removed.is_empty());
        assert_eq!(stats.snapshots_removed.len(), 1);
        assert_eq!(stats.snapshots_removed[0].key, old[0]);
        s.mounts(ns, "k").unwrap();
    });
}

#[test]
fn backend_failures_are_undone() {
    each(|e| {
        let s = e.s();
        let ns = "n";
        let db = e.db();
        db.leases().create(ns, "l", none()).unwrap();
        committed(&s, ns, "p", "", labels(&[("containerd.io/gc.root", "1")]));

        e.fake.trap("prepare", Trap::Fail);
        let err = s.prepare(ns, "k", "p", none(), Some("l")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(kind(s.stat(ns, "k")), ErrorKind::NotFound);
        assert!(db.leases().list_resources(ns, "l").unwrap().is_empty());
        // The parent has no child left behind.
        s.prepare(ns, "k", "p", none(), None).unwrap();
        s.remove(ns, "k", None).unwrap();

        e.fake.trap("view", Trap::Fail);
        assert_eq!(
            kind(s.view(ns, "v", "p", none(), None)),
            ErrorKind::Internal
        );
        assert_eq!(kind(s.stat(ns, "v")), ErrorKind::NotFound);

        s.prepare(ns, "a", "p", none(), None).unwrap();
        e.fake.trap("commit", Trap::Fail);
        assert_eq!(
            kind(s.commit(ns, "c", "a", none(), Some("l"))),
            ErrorKind::Internal
        );
        assert_eq!(kind(s.stat(ns, "c")), ErrorKind::NotFound);
        assert_eq!(s.stat(ns, "a").unwrap().kind, Kind::Active);
        assert!(db.leases().list_resources(ns, "l").unwrap().is_empty());
        // And the commit works afterwards.
        s.commit(ns, "c", "a", none(), None).unwrap();
        s.remove(ns, "c", None).unwrap();
        s.remove(ns, "p", None).unwrap();
    });
}

#[test]
fn crashes_between_transactions_are_recovered() {
    for b in backends() {
        eprintln!("backend: {}", b.as_str());
        let mut e = SEnv::new(b);
        let ns = "n";
        let root = labels(&[("containerd.io/gc.root", "1")]);
        committed(&e.s(), ns, "p", "", root.clone());
        e.s().prepare(ns, "a1", "p", none(), None).unwrap();
        e.s().prepare(ns, "a2", "p", none(), None).unwrap();
        let backend_before = e.fake.keys();

        // Crash after the backend made a snapshot whose record is pending.
        e.fake.trap("prepare", Trap::PanicAfter);
        let r = catch_unwind(AssertUnwindSafe(|| {
            e.s().prepare(ns, "new", "p", root.clone(), None)
        }));
        assert!(r.is_err());
        // Crash after the backend committed a1 -> c1.
        e.fake.trap("commit", Trap::PanicAfter);
        let r = catch_unwind(AssertUnwindSafe(|| {
            e.s().commit(ns, "c1", "a1", root.clone(), None)
        }));
        assert!(r.is_err());
        // Crash before the backend committed a2 -> c2.
        e.fake.trap("commit", Trap::PanicBefore);
        let r = catch_unwind(AssertUnwindSafe(|| {
            e.s().commit(ns, "c2", "a2", root.clone(), None)
        }));
        assert!(r.is_err());

        // Pending records are invisible meanwhile, and block their keys.
        assert_eq!(kind(e.s().stat(ns, "new")), ErrorKind::NotFound);
        assert_eq!(
            kind(e.s().prepare(ns, "new", "", none(), None)),
            ErrorKind::AlreadyExists
        );
        assert_eq!(kind(e.s().stat(ns, "c1")), ErrorKind::NotFound);
        // GC keeps pending work.
        let stats = e.db().garbage_collect().unwrap();
        assert!(stats.removed.is_empty(), "{:?}", stats.removed);
        assert!(stats.snapshots_removed.is_empty());

        e.reopen();
        let s = e.s();
        // The create is undone, backend included.
        assert_eq!(kind(s.stat(ns, "new")), ErrorKind::NotFound);
        // The finished backend commit is completed.
        assert_eq!(s.stat(ns, "c1").unwrap().kind, Kind::Committed);
        assert_eq!(s.stat(ns, "c1").unwrap().labels, root);
        assert_eq!(kind(s.stat(ns, "a1")), ErrorKind::NotFound);
        // The unstarted one is rolled back.
        assert_eq!(kind(s.stat(ns, "c2")), ErrorKind::NotFound);
        assert_eq!(s.stat(ns, "a2").unwrap().kind, Kind::Active);
        assert_eq!(
            names(&s.list(ns, &[] as &[&str]).unwrap()),
            vec!["a2", "c1", "p"]
        );
        // Every record points at a backend snapshot and vice versa.
        let mut backend_after = e.fake.keys();
        backend_after.sort();
        assert_eq!(
            backend_after.len(),
            3,
            "{backend_after:?} (before: {backend_before:?})"
        );
        for info in s.list(ns, &[] as &[&str]).unwrap() {
            let m = s.mounts(ns, &info.name);
            assert!(m.is_ok(), "{}: {m:?}", info.name);
        }
        // The parent's children are right: p cannot go, c1 can.
        assert_eq!(kind(s.remove(ns, "p", None)), ErrorKind::FailedPrecondition);
        s.remove(ns, "c1", None).unwrap();
        s.remove(ns, "a2", None).unwrap();
        s.remove(ns, "p", None).unwrap();
        e.db().garbage_collect().unwrap();
        assert!(e.fake.keys().is_empty(), "{:?}", e.fake.keys());
    }
}

#[test]
fn namespace_with_snapshots_cannot_be_deleted() {
    each(|e| {
        let s = e.s();
        s.prepare("n", "k", "", none(), None).unwrap();
        let err = e.db().namespaces().delete("n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("snapshots on \"fake\""), "{err}");
        s.remove("n", "k", None).unwrap();
        e.db().namespaces().delete("n").unwrap();
    });
}
