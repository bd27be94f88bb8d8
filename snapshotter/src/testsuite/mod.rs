//! The snapshotter conformance suite: containerd's
//! `snapshots/testsuite` ported, written once for every backend and every
//! layer (a backend directly, the metadata layer, the gRPC service through
//! an adapter implementing [`Snapshotter`]).
//!
//! Each case gets a fresh temporary directory with `root/` (given to the
//! factory) and `work/` (mount points, flat copies). Cases mount through
//! [`MountGuard`]s, so mounts are undone on every exit path; whatever is
//! still mounted below the case directory at the end is unmounted before
//! it is removed. Needs root (real mounts).
//!
//! Entry points: [`snapshotter_suite`] (all cases, one report),
//! [`run_case`] / [`run_named`] (one case), and the
//! [`snapshotter_suite_tests!`](crate::snapshotter_suite_tests) macro that
//! expands to one `#[test]` per case.

pub mod fstest;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use berth_errdefs::ErrorKind;

use self::fstest::{
    apply, check_directory_equal, chown, create_dir, create_file, link, remove_all, rename, Op,
};
use crate::mount::{unmount_recursive, MountGuard};
use crate::{Error, Info, Kind, Labels, Mount, Snapshotter};

/// Makes a snapshotter rooted at the given (existing, empty) directory.
/// Called again with the same root to test reopening; the previous
/// instance has been dropped by then.
pub type Factory<'a> = &'a dyn Fn(&Path) -> Box<dyn Snapshotter>;

/// A case's outcome: `Err` carries what went wrong.
pub type CaseResult = std::result::Result<(), String>;

/// What a case gets.
pub struct Ctx<'a> {
    /// The snapshotter under test.
    pub sn: Box<dyn Snapshotter>,
    /// Backend name (`overlayfs`, `native`, ...): a few cases differ.
    pub backend: &'a str,
    /// The snapshotter's root.
    pub root: PathBuf,
    /// Scratch space for mount points and flat trees.
    pub work: PathBuf,
    factory: Factory<'a>,
}

impl Ctx<'_> {
    /// Drops the snapshotter and opens a new one on the same root.
    pub fn reopen(&mut self) {
        // Drop first: a backend may hold an exclusive lock on its root.
        self.sn = Box::new(Dropped);
        self.sn = (self.factory)(&self.root);
    }

    fn path(&self, name: &str) -> String {
        self.work.join(name).to_string_lossy().into_owned()
    }
}

/// One conformance case.
pub struct Case {
    pub name: &'static str,
    pub run: fn(&mut Ctx<'_>) -> CaseResult,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, in containerd's order plus Berth's additions.
        pub const CASES: &[Case] = &[$(Case { name: stringify!($name), run: $name }),*];
    };
}

cases!(
    basic,
    stat_active,
    stat_committed,
    transitivity,
    prepare_view_failing,
    update,
    remove,
    walk,
    layer_file_update,
    remove_directory_in_lower_layer,
    chown_in_upper_layer,
    directory_permission_on_commit,
    remove_intermediate_snapshot,
    deleted_files_in_child_snapshot,
    move_file_from_lower_layer,
    view_readonly,
    stat_in_walk,
    close_reopen,
    root_permission,
    rename_files,
    layers_128_mount,
    parent_must_be_committed,
    commit_errors,
    removed_key_not_found,
    usage,
    cleanup_keeps_snapshots,
    concurrent_operations,
);

/// Expands to one `#[test]` per conformance case, each calling
/// [`run_named`](crate::testsuite::run_named) with `$backend` (a `&str`)
/// and `$factory` (an expression usable as
/// [`Factory`](crate::testsuite::Factory) when borrowed).
#[macro_export]
macro_rules! snapshotter_suite_tests {
    ($backend:expr, $factory:expr) => {
        $crate::snapshotter_suite_tests!(@each $backend, $factory;
            basic, stat_active, stat_committed, transitivity, prepare_view_failing,
            update, remove, walk, layer_file_update, remove_directory_in_lower_layer,
            chown_in_upper_layer, directory_permission_on_commit,
            remove_intermediate_snapshot, deleted_files_in_child_snapshot,
            move_file_from_lower_layer, view_readonly, stat_in_walk, close_reopen,
            root_permission, rename_files, layers_128_mount, parent_must_be_committed,
            commit_errors, removed_key_not_found, usage, cleanup_keeps_snapshots,
            concurrent_operations);
    };
    (@each $backend:expr, $factory:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::testsuite::run_named($backend, &$factory, stringify!($case));
            }
        )*
    };
}

/// Runs one case in a fresh temporary directory.
pub fn run_case(backend: &str, factory: Factory<'_>, case: &Case) -> CaseResult {
    let tmp = crate::fsutil::mkdtemp_in(
        &std::env::temp_dir(),
        &format!("snapshot-suite-{backend}-{}-", case.name),
    )
    .map_err(|e| format!("temp dir: {e}"))?;
    let root = tmp.join("root");
    let work = tmp.join("work");
    let res = (|| {
        fs::create_dir(&root).ctx("mkdir root")?;
        fs::create_dir(&work).ctx("mkdir work")?;
        let mut ctx = Ctx {
            sn: factory(&root),
            backend,
            root: root.clone(),
            work,
            factory,
        };
        (case.run)(&mut ctx)
    })();
    // Whatever a failing case left mounted goes before the tree does.
    let unmounted = unmount_recursive(&tmp);
    let removed = crate::fsutil::remove_all(&tmp);
    res.map_err(|e| format!("{backend}/{}: {e}", case.name))?;
    unmounted.ctx("unmount leftovers")?;
    removed.ctx("remove case directory")
}

/// Runs the case called `name`; panics with the failure (for `#[test]`s).
pub fn run_named(backend: &str, factory: Factory<'_>, name: &str) {
    let Some(case) = CASES.iter().find(|c| c.name == name) else {
        panic!("no conformance case {name}");
    };
    if let Err(e) = run_case(backend, factory, case) {
        panic!("{e}");
    }
}

/// Runs every case; panics listing the failures.
pub fn snapshotter_suite(backend: &str, factory: Factory<'_>) {
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|c| run_case(backend, factory, c).err())
        .collect();
    if !failures.is_empty() {
        panic!(
            "{} of {} conformance cases failed:\n{}",
            failures.len(),
            CASES.len(),
            failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------- helpers

/// Adds context to any displayable error.
trait Check<T> {
    fn ctx(self, what: impl Display) -> std::result::Result<T, String>;
}

impl<T, E: Display> Check<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl Display) -> std::result::Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Expects an error of `kind` from `r`.
fn expect_kind<T: std::fmt::Debug>(
    r: crate::Result<T>,
    kind: ErrorKind,
    what: &str,
) -> std::result::Result<Error, String> {
    match r {
        Ok(v) => Err(format!("{what}: expected {kind}, got success {v:?}")),
        Err(e) if e.kind() == kind => Ok(e),
        Err(e) => Err(format!("{what}: expected {kind}, got {} ({e})", e.kind())),
    }
}

/// Labels as containerd's suite sets them (a GC root).
fn opt() -> Labels {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    labels(&[("containerd.io/gc.root", &now.to_string())])
}

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mkdir(p: &Path) -> CaseResult {
    fs::create_dir_all(p).ctx(format!("mkdir {}", p.display()))
}

fn mount(mounts: &[Mount], target: &Path) -> std::result::Result<MountGuard, String> {
    ensure!(!mounts.is_empty(), "expected mounts to have entries");
    MountGuard::mount(mounts, target).ctx(format!("mount {mounts:?} on {}", target.display()))
}

fn unmount(g: MountGuard) -> CaseResult {
    let t = g.target().display().to_string();
    g.unmount().ctx(format!("unmount {t}"))
}

/// Prepares `work/<name>` on `parent` and mounts it there (the key is the
/// mount point's path, as in containerd's suite).
fn prepare_mount(
    ctx: &Ctx<'_>,
    name: &str,
    parent: &str,
) -> std::result::Result<(String, MountGuard), String> {
    let key = ctx.path(name);
    mkdir(Path::new(&key))?;
    let mounts = ctx
        .sn
        .prepare(&key, parent, opt())
        .ctx(format!("prepare {key}"))?;
    let g = mount(&mounts, Path::new(&key))?;
    Ok((key, g))
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

fn temp_in(work: &Path, prefix: &str) -> std::result::Result<PathBuf, String> {
    crate::fsutil::mkdtemp_in(work, prefix).ctx("temp dir")
}

/// Prepares a snapshot on `parent`, applies `ops` through its mounts and
/// commits it; returns the committed name.
fn create_snapshot(
    sn: &dyn Snapshotter,
    work: &Path,
    parent: &str,
    ops: &[Op],
) -> std::result::Result<String, String> {
    let n = unique("layer");
    let prepare = format!("{n}-prepare");
    let m = sn.prepare(&prepare, parent, opt()).ctx("prepare")?;
    let td = temp_in(work, "prepare")?;
    let g = mount(&m, &td)?;
    apply(&td, ops)?;
    unmount(g)?;
    fs::remove_dir(&td).ctx("remove mount point")?;
    sn.commit(&n, &prepare, opt()).ctx("commit")?;
    Ok(n)
}

/// Mounts a view of `name` and compares it with the tree at `check`.
fn check_snapshot(sn: &dyn Snapshotter, work: &Path, name: &str, check: &Path) -> CaseResult {
    let view = format!("{name}-view");
    let m = sn.view(&view, name, opt()).ctx("view")?;
    let td = temp_in(work, "check")?;
    let g = mount(&m, &td)?;
    let res = check_directory_equal(check, &td);
    unmount(g)?;
    fs::remove_dir(&td).ctx("remove mount point")?;
    sn.remove(&view).ctx("remove view")?;
    res
}

/// Builds a chain with one snapshot per applier, checking each through a
/// view against the same changes applied to one flat directory.
fn check_snapshots(ctx: &Ctx<'_>, layers: &[Vec<Op>]) -> std::result::Result<Vec<String>, String> {
    let flat = temp_in(&ctx.work, "flat")?;
    let mut parent = String::new();
    let mut names = Vec::new();
    for (i, ops) in layers.iter().enumerate() {
        let s = create_snapshot(ctx.sn.as_ref(), &ctx.work, &parent, ops)
            .ctx(format!("snapshot {}", i + 1))?;
        apply(&flat, ops)?;
        check_snapshot(ctx.sn.as_ref(), &ctx.work, &s, &flat)
            .ctx(format!("check of snapshot {}", i + 1))?;
        names.push(s.clone());
        parent = s;
    }
    Ok(names)
}

fn walk_all(sn: &dyn Snapshotter, filters: &[&str]) -> std::result::Result<Vec<Info>, String> {
    let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    sn.walk(&filters, &mut |i| {
        out.push(i);
        Ok(())
    })
    .ctx(format!("walk {filters:?}"))?;
    Ok(out)
}

/// A snapshotter that is gone: every call fails. Stands in while reopening.
struct Dropped;

impl Snapshotter for Dropped {
    fn stat(&self, _: &str) -> crate::Result<Info> {
        Err(gone())
    }
    fn update(&self, _: Info, _: &[String]) -> crate::Result<Info> {
        Err(gone())
    }
    fn usage(&self, _: &str) -> crate::Result<crate::Usage> {
        Err(gone())
    }
    fn mounts(&self, _: &str) -> crate::Result<Vec<Mount>> {
        Err(gone())
    }
    fn prepare(&self, _: &str, _: &str, _: Labels) -> crate::Result<Vec<Mount>> {
        Err(gone())
    }
    fn view(&self, _: &str, _: &str, _: Labels) -> crate::Result<Vec<Mount>> {
        Err(gone())
    }
    fn commit(&self, _: &str, _: &str, _: Labels) -> crate::Result<()> {
        Err(gone())
    }
    fn remove(&self, _: &str) -> crate::Result<()> {
        Err(gone())
    }
    fn walk(
        &self,
        _: &[String],
        _: &mut dyn FnMut(Info) -> crate::Result<()>,
    ) -> crate::Result<()> {
        Err(gone())
    }
    fn cleanup(&self) -> crate::Result<()> {
        Err(gone())
    }
}

fn gone() -> Error {
    Error::FailedPrecondition("snapshotter closed".into())
}

// ---------------------------------------------------------------- cases

/// Prepare, mount, write, commit; a child sees the parent's files; Walk
/// equals Stat; a view shows both layers; a parent with children cannot be
/// removed.
fn basic(ctx: &mut Ctx<'_>) -> CaseResult {
    let initial = vec![
        create_file("/foo", b"foo\n", 0o777),
        create_dir("/a", 0o755),
        create_dir("/a/b", 0o755),
        create_dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        create_file("/bar", b"bar\n", 0o777),
        create_file("/foo", b"bar\n", 0o777),
        remove_all("/a/b"),
    ];

    let (preparing, g) = prepare_mount(ctx, "preparing", "")?;
    apply(Path::new(&preparing), &initial)?;
    unmount(g)?;

    let committed = ctx.path("committed");
    ctx.sn.commit(&committed, &preparing, opt()).ctx("commit")?;
    let si = ctx.sn.stat(&committed).ctx("stat committed")?;
    ensure!(
        si.parent.is_empty(),
        "committed parent {:?}, want none",
        si.parent
    );
    ensure!(
        si.kind == Kind::Committed,
        "kind {:?}, want committed",
        si.kind
    );
    ensure!(
        ctx.sn.stat(&preparing).is_err(),
        "{preparing} should no longer be available after commit"
    );

    let (next, g) = prepare_mount(ctx, "nextlayer", &committed)?;
    let flat = temp_in(&ctx.work, "flat")?;
    apply(&flat, &initial)?;
    check_directory_equal(&flat, Path::new(&next)).ctx("child of committed")?;
    apply(Path::new(&next), &diff)?;
    unmount(g)?;

    let ni = ctx.sn.stat(&next).ctx("stat next")?;
    ensure!(
        ni.parent == committed,
        "parent {:?}, want {committed:?}",
        ni.parent
    );
    ensure!(ni.kind == Kind::Active, "kind {:?}, want active", ni.kind);

    let next_committed = ctx.path("committed-next");
    ctx.sn
        .commit(&next_committed, &next, opt())
        .ctx("commit next")?;
    let si2 = ctx.sn.stat(&next_committed).ctx("stat committed-next")?;
    ensure!(
        si2.parent == committed,
        "parent {:?}, want {committed:?}",
        si2.parent
    );
    ensure!(
        si2.kind == Kind::Committed,
        "kind {:?}, want committed",
        si2.kind
    );
    ensure!(
        ctx.sn.stat(&next).is_err(),
        "{next} should no longer be available after commit"
    );

    let walked: BTreeMap<String, Info> = walk_all(ctx.sn.as_ref(), &[])?
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    for want in [&si, &si2] {
        match walked.get(&want.name) {
            None => return Err(format!("walk misses {}", want.name)),
            Some(got) => ensure!(got == want, "walk gave {got:?}, stat {want:?}"),
        }
    }

    let nextnext = ctx.path("nextnextlayer");
    mkdir(Path::new(&nextnext))?;
    let m = ctx.sn.view(&nextnext, &next_committed, opt()).ctx("view")?;
    let g = mount(&m, Path::new(&nextnext))?;
    apply(&flat, &diff)?;
    let res = check_directory_equal(&flat, Path::new(&nextnext));
    unmount(g)?;
    res.ctx("view of both layers")?;
    ctx.sn.remove(&nextnext).ctx("remove view")?;

    let e = expect_kind(
        ctx.sn.remove(&committed),
        ErrorKind::FailedPrecondition,
        "remove of a parent with children",
    )?;
    ensure!(
        e.to_string().contains("remove"),
        "error {e:?} should mention \"remove\""
    );
    ctx.sn
        .remove(&next_committed)
        .ctx("remove committed-next")?;
    ctx.sn.remove(&committed).ctx("remove committed")
}

fn stat_active(ctx: &mut Ctx<'_>) -> CaseResult {
    let (preparing, g) = prepare_mount(ctx, "preparing", "")?;
    fs::write(Path::new(&preparing).join("foo"), b"foo\n").ctx("write")?;
    unmount(g)?;
    let si = ctx.sn.stat(&preparing).ctx("stat")?;
    ensure!(si.name == preparing, "name {:?}", si.name);
    ensure!(si.kind == Kind::Active, "kind {:?}", si.kind);
    ensure!(si.parent.is_empty(), "parent {:?}", si.parent);
    Ok(())
}

fn stat_committed(ctx: &mut Ctx<'_>) -> CaseResult {
    let (preparing, g) = prepare_mount(ctx, "preparing", "")?;
    fs::write(Path::new(&preparing).join("foo"), b"foo\n").ctx("write")?;
    unmount(g)?;
    let committed = ctx.path("committed");
    ctx.sn.commit(&committed, &preparing, opt()).ctx("commit")?;
    let si = ctx.sn.stat(&committed).ctx("stat")?;
    ensure!(si.name == committed, "name {:?}", si.name);
    ensure!(si.kind == Kind::Committed, "kind {:?}", si.kind);
    ensure!(si.parent.is_empty(), "parent {:?}", si.parent);
    Ok(())
}

/// A <- B: B's parent is A, A's parent is none.
fn transitivity(ctx: &mut Ctx<'_>) -> CaseResult {
    let (preparing, g) = prepare_mount(ctx, "preparing", "")?;
    fs::write(Path::new(&preparing).join("foo"), b"foo\n").ctx("write")?;
    unmount(g)?;
    let snap_a = ctx.path("snapA");
    ctx.sn.commit(&snap_a, &preparing, opt()).ctx("commit A")?;

    let (next, g) = prepare_mount(ctx, "next", &snap_a)?;
    fs::write(Path::new(&next).join("foo"), b"foo bar\n").ctx("write")?;
    unmount(g)?;
    let snap_b = ctx.path("snapB");
    ctx.sn.commit(&snap_b, &next, opt()).ctx("commit B")?;

    let si_a = ctx.sn.stat(&snap_a).ctx("stat A")?;
    let si_b = ctx.sn.stat(&snap_b).ctx("stat B")?;
    let si_pb = ctx.sn.stat(&si_b.parent).ctx("stat parent of B")?;
    ensure!(si_a.parent.is_empty(), "A's parent {:?}", si_a.parent);
    ensure!(si_b.parent == snap_a, "B's parent {:?}", si_b.parent);
    ensure!(
        si_pb.parent.is_empty(),
        "B's parent's parent {:?}",
        si_pb.parent
    );
    Ok(())
}

/// Every prepare/view combination on an existing key is AlreadyExists.
fn prepare_view_failing(ctx: &mut Ctx<'_>) -> CaseResult {
    let (preparing, g) = prepare_mount(ctx, "preparing", "")?;
    unmount(g)?;
    let snap_a = ctx.path("snapA");
    ctx.sn.commit(&snap_a, &preparing, opt()).ctx("commit")?;

    type Op2 = fn(&dyn Snapshotter, &str, &str) -> crate::Result<Vec<Mount>>;
    let prep: Op2 = |sn, k, p| sn.prepare(k, p, opt());
    let view: Op2 = |sn, k, p| sn.view(k, p, opt());
    for (first, second, what) in [
        (prep, view, "prepare then view"),
        (prep, prep, "prepare then prepare"),
        (view, view, "view then view"),
        (view, prep, "view then prepare"),
    ] {
        let key = ctx.path(&what.replace(' ', "-"));
        first(ctx.sn.as_ref(), &key, &snap_a).ctx(what)?;
        expect_kind(
            second(ctx.sn.as_ref(), &key, &snap_a),
            ErrorKind::AlreadyExists,
            what,
        )?;
        expect_kind(
            second(ctx.sn.as_ref(), &key, ""),
            ErrorKind::AlreadyExists,
            what,
        )?;
    }
    // A key may not take a committed name either.
    expect_kind(
        ctx.sn.prepare(&snap_a, "", opt()),
        ErrorKind::AlreadyExists,
        "prepare on a committed name",
    )?;
    Ok(())
}

/// c1 committed, c2 committed on c1, a1 active on c2, a2 active, v1 view on
/// c2, v2 view.
fn base_test_snapshots(sn: &dyn Snapshotter) -> CaseResult {
    sn.prepare("c1-a", "", opt()).ctx("prepare c1-a")?;
    sn.commit("c1", "c1-a", opt()).ctx("commit c1")?;
    sn.prepare("c2-a", "c1", opt()).ctx("prepare c2-a")?;
    sn.commit("c2", "c2-a", opt()).ctx("commit c2")?;
    sn.prepare("a1", "c2", opt()).ctx("prepare a1")?;
    sn.prepare("a2", "", opt()).ctx("prepare a2")?;
    sn.view("v1", "c2", opt()).ctx("view v1")?;
    sn.view("v2", "", opt()).ctx("view v2")?;
    Ok(())
}

fn update(ctx: &mut Ctx<'_>) -> CaseResult {
    let sn = ctx.sn.as_ref();
    let t1 = SystemTime::now();
    base_test_snapshots(sn)?;
    let t2 = SystemTime::now();
    let cases = [
        ("c1", Kind::Committed, ""),
        ("c2", Kind::Committed, "c1"),
        ("a1", Kind::Active, "c2"),
        ("a2", Kind::Active, ""),
        ("v1", Kind::View, "c2"),
        ("v2", Kind::View, ""),
    ];
    let check = |st: &Info, name: &str, kind: Kind, parent: &str| -> CaseResult {
        ensure!(
            st.kind == kind,
            "({name}) kind {:?}, want {kind:?}",
            st.kind
        );
        ensure!(
            st.parent == parent,
            "({name}) parent {:?}, want {parent:?}",
            st.parent
        );
        ensure!(st.name == name, "({name}) name {:?}", st.name);
        Ok(())
    };
    for (name, kind, parent) in cases {
        let mut st = sn.stat(name).ctx(format!("stat {name}"))?;
        ensure!(
            st.created >= t1 && st.created <= t2,
            "({name}) created {:?} not within [{t1:?}, {t2:?}]",
            st.created
        );
        ensure!(
            st.created == st.updated,
            "({name}) updated {:?} != created",
            st.updated
        );
        check(&st, name, kind, parent)?;

        let created = st.created;
        let root = opt();
        let root_time = root["containerd.io/gc.root"].clone();
        let mut expected = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3")]);
        expected.insert("containerd.io/gc.root".into(), root_time.clone());
        st.parent = "doesnotexist".into();
        st.labels = expected.clone();
        let u1 = SystemTime::now();
        let st2 = sn.update(st, &[]).ctx(format!("update {name}"))?;
        let u2 = SystemTime::now();
        ensure!(
            st2.created == created,
            "({name}) created changed to {:?}",
            st2.created
        );
        ensure!(
            st2.updated >= u1 && st2.updated <= u2,
            "({name}) updated {:?} not within [{u1:?}, {u2:?}]",
            st2.updated
        );
        check(&st2, name, kind, parent)?;
        ensure!(
            st2.labels == expected,
            "({name}) labels {:?}, want {expected:?}",
            st2.labels
        );
        let stat2 = sn.stat(name).ctx("stat after update")?;
        ensure!(
            stat2 == st2,
            "({name}) stat {stat2:?} != update result {st2:?}"
        );

        let mut st = st2;
        st.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let st3 = sn
            .update(st, &["labels.l1".into(), "labels.l2".into()])
            .ctx(format!("update {name} labels.l1 labels.l2"))?;
        let mut expected = labels(&[("l1", "updated"), ("l3", "v3")]);
        expected.insert("containerd.io/gc.root".into(), root_time.clone());
        ensure!(
            st3.labels == expected,
            "({name}) labels {:?}, want {expected:?}",
            st3.labels
        );

        let mut st = st3;
        let mut expected = labels(&[("l4", "v4")]);
        expected.insert("containerd.io/gc.root".into(), root_time);
        st.labels = expected.clone();
        let mut st4 = sn
            .update(st, &["labels".into()])
            .ctx(format!("update {name} labels"))?;
        ensure!(
            st4.labels == expected,
            "({name}) labels {:?}, want {expected:?}",
            st4.labels
        );

        st4.parent = "doesnotexist".into();
        expect_kind(
            sn.update(st4, &["parent".into()]),
            ErrorKind::InvalidArgument,
            "update of parent",
        )?;
    }
    let missing = Info {
        kind: Kind::Active,
        name: "missing".into(),
        parent: String::new(),
        labels: Labels::new(),
        created: t1,
        updated: t1,
    };
    expect_kind(
        sn.update(missing, &[]),
        ErrorKind::NotFound,
        "update of a missing key",
    )?;
    Ok(())
}

/// Remove, and reuse of a key after remove.
fn remove(ctx: &mut Ctx<'_>) -> CaseResult {
    let sn = ctx.sn.as_ref();
    sn.prepare("committed-a", "", opt()).ctx("prepare")?;
    sn.commit("committed-1", "committed-a", opt())
        .ctx("commit")?;
    sn.prepare("reuse-1", "committed-1", opt())
        .ctx("prepare reuse-1")?;
    sn.remove("reuse-1").ctx("remove reuse-1")?;
    sn.view("reuse-1", "committed-1", opt())
        .ctx("view reuse-1")?;
    sn.remove("reuse-1").ctx("remove reuse-1 view")?;
    sn.prepare("reuse-1", "", opt())
        .ctx("prepare reuse-1 again")?;
    sn.remove("committed-1").ctx("remove committed-1")?;
    sn.commit("committed-1", "reuse-1", opt())
        .ctx("commit to a reused name")?;
    Ok(())
}

fn walk(ctx: &mut Ctx<'_>) -> CaseResult {
    let sn = ctx.sn.as_ref();
    let gc = || labels(&[("containerd.io/gc.root", "check-walk")]);
    let with_l = |l: &str| labels(&[("l", l), ("containerd.io/gc.root", "check-walk")]);
    sn.prepare("a-np", "", gc()).ctx("a-np")?;
    sn.prepare("p-tmp", "", gc()).ctx("p-tmp")?;
    sn.commit("p", "p-tmp", gc()).ctx("p")?;
    sn.prepare("a", "p", gc()).ctx("a")?;
    sn.view("v", "p", gc()).ctx("v")?;
    sn.prepare("p-wl-tmp", "", gc()).ctx("p-wl-tmp")?;
    sn.commit("p-wl", "p-wl-tmp", with_l("1")).ctx("p-wl")?;
    sn.prepare("a-wl", "p-wl", with_l("2")).ctx("a-wl")?;
    sn.view("v-wl", "p-wl", with_l("3")).ctx("v-wl")?;
    sn.prepare("a-np-wl", "", with_l("2")).ctx("a-np-wl")?;

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            &["labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["a-np", "a", "a-wl", "a-np-wl"],
            &["kind==active,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["v", "v-wl"],
            &["kind==view,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["p", "p-wl"],
            &["kind==committed,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
        (&["a-wl"], &["name==a-wl,labels.l"]),
        (&["a", "v"], &["parent==p"]),
        (
            &["a", "v", "a-wl", "v-wl"],
            &["parent!=\"\",labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
        (&["a-wl", "a-np-wl"], &["labels.l==2"]),
    ];
    for (i, (matches, filters)) in cases.iter().enumerate() {
        let mut got: Vec<String> = walk_all(sn, filters)?.into_iter().map(|i| i.name).collect();
        got.sort();
        let mut want: Vec<String> = matches.iter().map(|s| s.to_string()).collect();
        want.sort();
        ensure!(
            got == want,
            "[{i}] walk {filters:?}: got {got:?}, want {want:?}"
        );
    }
    expect_kind(
        sn.walk(&["name==foo,".into()], &mut |_| Ok(())),
        ErrorKind::InvalidArgument,
        "walk with a malformed filter",
    )?;
    // An error from the callback ends the walk and is returned.
    let mut calls = 0;
    let r = sn.walk(&[], &mut |_| {
        calls += 1;
        Err(Error::Unsupported("stop".into()))
    });
    ensure!(
        r.is_err() && calls == 1,
        "walk should stop at the first callback error ({calls} calls)"
    );
    Ok(())
}

/// docker/docker#21555: a file updated in an upper layer.
fn layer_file_update(ctx: &mut Ctx<'_>) -> CaseResult {
    let l1 = vec![
        create_dir("/etc", 0o700),
        create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o644),
    ];
    let l2 = vec![
        create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
        create_dir("/root", 0o700),
        create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    // containerd repeats across second boundaries to catch mtime-based
    // change detection; repeating back to back still covers reuse.
    for _ in 0..3 {
        check_snapshots(ctx, &[l1.clone(), l2.clone()])?;
    }
    Ok(())
}

/// docker/docker#25244: a directory removed in a lower layer and recreated.
fn remove_directory_in_lower_layer(ctx: &mut Ctx<'_>) -> CaseResult {
    let l1 = vec![
        create_dir("/lib", 0o700),
        create_file("/lib/hidden", b"", 0o644),
    ];
    let l2 = vec![
        remove_all("/lib"),
        create_dir("/lib", 0o700),
        create_file("/lib/not-hidden", b"", 0o644),
    ];
    let l3 = vec![create_file("/lib/newfile", b"", 0o644)];
    check_snapshots(ctx, &[l1, l2, l3]).map(drop)
}

/// docker/docker#20240, #24913, #28391: chown in an upper layer.
fn chown_in_upper_layer(ctx: &mut Ctx<'_>) -> CaseResult {
    let l1 = vec![
        create_dir("/opt", 0o700),
        create_dir("/opt/a", 0o700),
        create_dir("/opt/a/b", 0o700),
        create_file("/opt/a/b/file.txt", b"hello", 0o644),
    ];
    let l2 = vec![
        chown("/opt", 1, 1),
        chown("/opt/a", 1, 1),
        chown("/opt/a/b", 1, 1),
        chown("/opt/a/b/file.txt", 1, 1),
    ];
    check_snapshots(ctx, &[l1, l2]).map(drop)
}

/// docker/docker#27298.
fn directory_permission_on_commit(ctx: &mut Ctx<'_>) -> CaseResult {
    let l1 = vec![
        create_dir("/dir1", 0o700),
        create_dir("/dir2", 0o700),
        create_dir("/dir3", 0o700),
        create_dir("/dir4", 0o700),
        create_file("/dir4/f1", b"...", 0o644),
        create_dir("/dir5", 0o700),
        create_file("/dir5/f1", b"...", 0o644),
        chown("/dir1", 1, 1),
        chown("/dir2", 1, 1),
        chown("/dir3", 1, 1),
        chown("/dir5", 1, 1),
        chown("/dir5/f1", 1, 1),
    ];
    let l2 = vec![
        chown("/dir2", 0, 0),
        remove_all("/dir3"),
        chown("/dir4", 1, 1),
        chown("/dir4/f1", 1, 1),
    ];
    let l3 = vec![
        create_dir("/dir3", 0o700),
        chown("/dir3", 1, 1),
        remove_all("/dir5"),
        create_dir("/dir5", 0o700),
        chown("/dir5", 1, 1),
    ];
    check_snapshots(ctx, &[l1, l2, l3]).map(drop)
}

/// Base <- intermediate <- top: the intermediate cannot go first.
fn remove_intermediate_snapshot(ctx: &mut Ctx<'_>) -> CaseResult {
    let (base, g) = prepare_mount(ctx, "base", "")?;
    unmount(g)?;
    let committed_base = ctx.path("committed-base");
    ctx.sn
        .commit(&committed_base, &base, opt())
        .ctx("commit base")?;
    let intermediate = ctx.path("intermediate");
    ctx.sn
        .prepare(&intermediate, &committed_base, opt())
        .ctx("prepare intermediate")?;
    let committed_inter = ctx.path("committed-inter");
    ctx.sn
        .commit(&committed_inter, &intermediate, opt())
        .ctx("commit intermediate")?;
    let top = ctx.path("toplayer");
    ctx.sn
        .prepare(&top, &committed_inter, opt())
        .ctx("prepare top")?;
    expect_kind(
        ctx.sn.remove(&committed_inter),
        ErrorKind::FailedPrecondition,
        "remove of the intermediate layer",
    )?;
    ctx.sn.remove(&top).ctx("remove top")?;
    ctx.sn.remove(&committed_inter).ctx("remove intermediate")?;
    ctx.sn.remove(&committed_base).ctx("remove base")
}

fn deleted_files_in_child_snapshot(ctx: &mut Ctx<'_>) -> CaseResult {
    let l1 = vec![
        create_file("/foo", b"foo\n", 0o777),
        create_file("/foobar", b"foobar\n", 0o777),
    ];
    let l2 = vec![remove_all("/foobar")];
    check_snapshots(ctx, &[l1, l2, vec![]]).map(drop)
}

/// Files moved (hard link + remove) from a lower layer.
fn move_file_from_lower_layer(ctx: &mut Ctx<'_>) -> CaseResult {
    let l1 = vec![
        create_dir("/dir1", 0o700),
        create_file("/dir1/f1", b"Hello", 0o644),
        create_dir("dir2", 0o700),
        create_file("dir2/f2", b"...", 0o644),
    ];
    let l2 = vec![
        create_dir("/dir3", 0o700),
        create_file("/dir3/f1", b"Hello", 0o644),
        remove_all("/dir1"),
        link("dir2/f2", "dir3/f2"),
        remove_all("dir2/f2"),
    ];
    check_snapshots(ctx, &[l1, l2]).map(drop)
}

/// A mounted view is read-only (EROFS).
fn view_readonly(ctx: &mut Ctx<'_>) -> CaseResult {
    let preparing = ctx.path("preparing");
    ctx.sn.prepare(&preparing, "", opt()).ctx("prepare")?;
    let committed = ctx.path("committed");
    ctx.sn.commit(&committed, &preparing, opt()).ctx("commit")?;
    // A view of a one-layer chain, of a two-layer chain, and of no parent.
    let second = create_snapshot(
        ctx.sn.as_ref(),
        &ctx.work,
        &committed,
        &[create_file("/f", b"x", 0o644)],
    )?;
    for (i, parent) in [committed.as_str(), second.as_str(), ""]
        .into_iter()
        .enumerate()
    {
        let view = ctx.path(&format!("view-{i}"));
        let m = ctx.sn.view(&view, parent, opt()).ctx("view")?;
        let mp = ctx.work.join(format!("view-mount-{i}"));
        mkdir(&mp)?;
        let g = mount(&m, &mp)?;
        let res = fs::write(mp.join("testfile"), b"testcontent");
        unmount(g)?;
        match res {
            Ok(()) => return Err(format!("write to view {i} ({m:?}) should fail with EROFS")),
            Err(e) => ensure!(
                e.raw_os_error() == Some(libc::EROFS),
                "write to view {i}: want EROFS, got {e}"
            ),
        }
        ctx.sn.remove(&view).ctx("remove view")?;
    }
    ctx.sn.remove(&second).ctx("remove second")?;
    ctx.sn.remove(&committed).ctx("remove committed")
}

/// Stat from inside the Walk callback (no deadlock, same info).
fn stat_in_walk(ctx: &mut Ctx<'_>) -> CaseResult {
    let sn = ctx.sn.as_ref();
    let p = "stats-in-walk-";
    sn.prepare(&format!("{p}c1-a"), "", opt()).ctx("prepare")?;
    sn.commit(&format!("{p}c1"), &format!("{p}c1-a"), opt())
        .ctx("commit")?;
    sn.prepare(&format!("{p}c2-a"), &format!("{p}c1"), opt())
        .ctx("prepare")?;
    sn.commit(&format!("{p}c2"), &format!("{p}c2-a"), opt())
        .ctx("commit")?;
    sn.prepare(&format!("{p}a1"), &format!("{p}c2"), opt())
        .ctx("prepare")?;
    sn.view(&format!("{p}v1"), &format!("{p}c2"), opt())
        .ctx("view")?;
    let mut seen = 0;
    sn.walk(&[], &mut |si| {
        if !si.name.starts_with(p) {
            return Ok(());
        }
        seen += 1;
        let si2 = sn.stat(&si.name)?;
        if si2 != si {
            return Err(Error::InvalidArgument(format!(
                "walk {si:?} != stat {si2:?}"
            )));
        }
        // Writes from the callback must not deadlock either.
        sn.update(si2, &["labels.walked".into()])?;
        Ok(())
    })
    .ctx("walk")?;
    ensure!(seen == 4, "walk saw {seen} snapshots, want 4");
    Ok(())
}

/// Records, labels, usage and mounts survive closing and reopening.
fn close_reopen(ctx: &mut Ctx<'_>) -> CaseResult {
    let c1 = create_snapshot(
        ctx.sn.as_ref(),
        &ctx.work,
        "",
        &[create_file("/a", b"a\n", 0o644)],
    )?;
    let c2 = create_snapshot(
        ctx.sn.as_ref(),
        &ctx.work,
        &c1,
        &[create_file("/b", b"b\n", 0o644)],
    )?;
    let key = ctx.path("active");
    ctx.sn
        .prepare(&key, &c2, labels(&[("x", "y")]))
        .ctx("prepare")?;
    let gone = create_snapshot(ctx.sn.as_ref(), &ctx.work, "", &[])?;
    ctx.sn.remove(&gone).ctx("remove")?;

    let before = {
        let mut v = walk_all(ctx.sn.as_ref(), &[])?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    let mounts = ctx.sn.mounts(&key).ctx("mounts")?;
    let usage = ctx.sn.usage(&c1).ctx("usage")?;
    ctx.reopen();
    ctx.reopen();
    let after = {
        let mut v = walk_all(ctx.sn.as_ref(), &[])?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    ensure!(
        before == after,
        "after reopen: {after:?}, before: {before:?}"
    );
    let m2 = ctx.sn.mounts(&key).ctx("mounts after reopen")?;
    ensure!(
        mounts == m2,
        "mounts after reopen {m2:?}, before {mounts:?}"
    );
    let u2 = ctx.sn.usage(&c1).ctx("usage after reopen")?;
    ensure!(usage == u2, "usage after reopen {u2:?}, before {usage:?}");
    expect_kind(
        ctx.sn.stat(&gone),
        ErrorKind::NotFound,
        "stat of removed after reopen",
    )?;

    let flat = temp_in(&ctx.work, "flat")?;
    apply(
        &flat,
        &[
            create_file("/a", b"a\n", 0o644),
            create_file("/b", b"b\n", 0o644),
        ],
    )?;
    check_snapshot(ctx.sn.as_ref(), &ctx.work, &c2, &flat)?;
    // New snapshots after reopen do not collide with old ones.
    let c3 = create_snapshot(
        ctx.sn.as_ref(),
        &ctx.work,
        &c2,
        &[create_file("/c", b"c\n", 0o644)],
    )?;
    apply(&flat, &[create_file("/c", b"c\n", 0o644)])?;
    check_snapshot(ctx.sn.as_ref(), &ctx.work, &c3, &flat)
}

/// The root of a new empty snapshot is 0755; a child's root keeps the
/// owner and mode its parent's root had.
fn root_permission(ctx: &mut Ctx<'_>) -> CaseResult {
    let (preparing, g) = prepare_mount(ctx, "preparing", "")?;
    let md = fs::metadata(&preparing).ctx("stat")?;
    ensure!(
        md.mode() & 0o777 == 0o755,
        "root mode {:o}, want 755",
        md.mode() & 0o777
    );
    fs::set_permissions(&preparing, fs::Permissions::from_mode(0o750)).ctx("chmod root")?;
    std::os::unix::fs::lchown(&preparing, Some(1), Some(2)).ctx("chown root")?;
    unmount(g)?;
    let committed = ctx.path("committed");
    ctx.sn.commit(&committed, &preparing, opt()).ctx("commit")?;
    let (child, g) = prepare_mount(ctx, "child", &committed)?;
    let md = fs::metadata(&child).ctx("stat child")?;
    let res = (md.mode() & 0o7777, md.uid(), md.gid());
    unmount(g)?;
    ensure!(
        res == (0o750, 1, 2),
        "child root (mode, uid, gid) {res:?}, want (0o750, 1, 2)"
    );
    Ok(())
}

/// docker/docker#25409: renames in an upper layer. overlayfs without
/// redirect_dir cannot rename lower directories, so that part is skipped
/// there (as containerd does).
fn rename_files(ctx: &mut Ctx<'_>) -> CaseResult {
    let l1 = vec![
        create_dir("/dir1", 0o700),
        create_dir("/somefiles", 0o700),
        create_file("/somefiles/f1", b"was here first!", 0o644),
        create_file("/somefiles/f2", b"nothing interesting", 0o644),
    ];
    let mut l2 = Vec::new();
    if !matches!(ctx.backend, "overlayfs" | "fuse-overlayfs" | "erofs") {
        l2.push(rename("/dir1", "/dir2"));
    }
    l2.extend([
        create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
        rename("/somefiles/f1-overwrite", "/somefiles/f1"),
        rename("/somefiles/f2", "/somefiles/f3"),
    ]);
    check_snapshots(ctx, &[l1, l2]).map(drop)
}

/// 128 layers: each prepared layer equals the flat tree before and after
/// its change, and a view of the top equals the flat tree (the overlay
/// option string is longer than a page).
fn layers_128_mount(ctx: &mut Ctx<'_>) -> CaseResult {
    let mut appliers = vec![vec![
        create_file("/bottom", b"way at the bottom\n", 0o777),
        create_file("/overwriteme", b"FIRST!\n", 0o777),
        create_dir("/addhere", 0o755),
        create_dir("/onlyme", 0o755),
        create_file("/onlyme/bottom", b"bye!\n", 0o777),
    ]];
    for i in 1..=127 {
        appliers.push(vec![
            create_file("/overwriteme", format!("{i} WAS HERE!\n").as_bytes(), 0o777),
            create_file(&format!("/addhere/file-{i}"), b"same\n", 0o755),
            remove_all("/onlyme"),
            create_dir("/onlyme", 0o755),
            create_file(&format!("/onlyme/file-{i}"), b"only me!\n", 0o777),
        ]);
    }
    let flat = ctx.work.join("flat");
    mkdir(&flat)?;
    let mut parent = String::new();
    for (i, ops) in appliers.iter().enumerate() {
        let (preparing, g) = prepare_mount(ctx, &format!("prepare-layer-{i}"), &parent)
            .ctx(format!("[layer {i}]"))?;
        let p = Path::new(&preparing);
        check_directory_equal(&flat, p).ctx(format!("[layer {i}] before apply"))?;
        apply(&flat, ops)?;
        apply(p, ops)?;
        check_directory_equal(&flat, p).ctx(format!("[layer {i}] after apply"))?;
        unmount(g)?;
        parent = ctx.path(&format!("committed-{i}"));
        ctx.sn
            .commit(&parent, &preparing, opt())
            .ctx(format!("[layer {i}] commit"))?;
    }
    let view = ctx.path("fullview");
    mkdir(Path::new(&view))?;
    let m = ctx.sn.view(&view, &parent, opt()).ctx("view")?;
    let g = mount(&m, Path::new(&view))?;
    let res = check_directory_equal(&flat, Path::new(&view));
    unmount(g)?;
    res.ctx("full view")
}

/// Parents must exist (NotFound) and be committed (InvalidArgument): no
/// view or prepare on an active or a view.
fn parent_must_be_committed(ctx: &mut Ctx<'_>) -> CaseResult {
    let sn = ctx.sn.as_ref();
    sn.prepare("active", "", opt()).ctx("prepare")?;
    sn.view("view", "", opt()).ctx("view")?;
    for parent in ["active", "view"] {
        expect_kind(
            sn.view("v2", parent, opt()),
            ErrorKind::InvalidArgument,
            &format!("view of {parent}"),
        )?;
        expect_kind(
            sn.prepare("a2", parent, opt()),
            ErrorKind::InvalidArgument,
            &format!("prepare on {parent}"),
        )?;
    }
    expect_kind(
        sn.prepare("a3", "missing", opt()),
        ErrorKind::NotFound,
        "prepare on a missing parent",
    )?;
    expect_kind(
        sn.view("v3", "missing", opt()),
        ErrorKind::NotFound,
        "view of a missing parent",
    )?;
    for k in ["v2", "a2", "a3", "v3"] {
        expect_kind(
            sn.stat(k),
            ErrorKind::NotFound,
            &format!("stat {k} after a failed create"),
        )?;
    }
    Ok(())
}

/// Commit: of a view FailedPrecondition, of a missing key NotFound, onto
/// an existing name AlreadyExists; a failed commit changes nothing.
fn commit_errors(ctx: &mut Ctx<'_>) -> CaseResult {
    let sn = ctx.sn.as_ref();
    sn.view("view", "", opt()).ctx("view")?;
    expect_kind(
        sn.commit("c", "view", opt()),
        ErrorKind::FailedPrecondition,
        "commit of a view",
    )?;
    let v = sn.stat("view").ctx("stat view after failed commit")?;
    ensure!(v.kind == Kind::View, "view became {:?}", v.kind);
    expect_kind(
        sn.stat("c"),
        ErrorKind::NotFound,
        "stat of a failed commit's name",
    )?;
    expect_kind(
        sn.commit("c", "missing", opt()),
        ErrorKind::NotFound,
        "commit of a missing key",
    )?;
    sn.prepare("a", "", opt()).ctx("prepare")?;
    sn.commit("c", "a", opt()).ctx("commit")?;
    expect_kind(
        sn.commit("c", "c", opt()),
        ErrorKind::FailedPrecondition,
        "commit of a committed snapshot",
    )
    .or_else(|_| {
        expect_kind(
            sn.commit("c", "c", opt()),
            ErrorKind::AlreadyExists,
            "commit of a committed snapshot",
        )
    })?;
    sn.prepare("b", "", opt()).ctx("prepare b")?;
    expect_kind(
        sn.commit("c", "b", opt()),
        ErrorKind::AlreadyExists,
        "commit onto an existing name",
    )?;
    ensure!(
        sn.stat("b").ctx("stat b")?.kind == Kind::Active,
        "b should still be active"
    );
    // Commit labels replace the active's labels.
    sn.prepare("d-a", "", labels(&[("old", "1")]))
        .ctx("prepare d-a")?;
    sn.commit("d", "d-a", labels(&[("new", "2")]))
        .ctx("commit d")?;
    let d = sn.stat("d").ctx("stat d")?;
    ensure!(
        d.labels == labels(&[("new", "2")]),
        "labels after commit {:?}",
        d.labels
    );
    ensure!(
        d.created == d.updated,
        "a commit's created and updated should be equal"
    );
    Ok(())
}

/// A removed key is gone for every operation.
fn removed_key_not_found(ctx: &mut Ctx<'_>) -> CaseResult {
    let sn = ctx.sn.as_ref();
    sn.prepare("a", "", opt()).ctx("prepare")?;
    sn.commit("c", "a", opt()).ctx("commit")?;
    sn.prepare("b", "c", opt()).ctx("prepare b")?;
    sn.remove("b").ctx("remove b")?;
    sn.remove("c").ctx("remove c")?;
    for k in ["a", "b", "c"] {
        expect_kind(sn.stat(k), ErrorKind::NotFound, &format!("stat {k}"))?;
        expect_kind(sn.mounts(k), ErrorKind::NotFound, &format!("mounts {k}"))?;
        expect_kind(sn.usage(k), ErrorKind::NotFound, &format!("usage {k}"))?;
        expect_kind(sn.remove(k), ErrorKind::NotFound, &format!("remove {k}"))?;
        expect_kind(
            sn.commit("x", k, opt()),
            ErrorKind::NotFound,
            &format!("commit {k}"),
        )?;
    }
    ensure!(
        walk_all(sn, &[])?.is_empty(),
        "walk after removing everything is not empty"
    );
    Ok(())
}

/// Usage of an active snapshot is live; a commit stores it.
fn usage(ctx: &mut Ctx<'_>) -> CaseResult {
    let (key, g) = prepare_mount(ctx, "preparing", "")?;
    let empty = ctx.sn.usage(&key).ctx("usage of empty")?;
    let data = vec![7u8; 1 << 20];
    fs::create_dir(Path::new(&key).join("d")).ctx("mkdir")?;
    fs::write(Path::new(&key).join("d/big"), &data).ctx("write")?;
    fs::hard_link(Path::new(&key).join("d/big"), Path::new(&key).join("link")).ctx("link")?;
    unmount(g)?;
    let live = ctx.sn.usage(&key).ctx("usage of active")?;
    ensure!(
        live.size >= empty.size + (1 << 20) && live.size < empty.size + (3 << 20),
        "active usage {live:?} after writing 1 MiB (empty {empty:?}); a hard link counts once"
    );
    ensure!(
        live.inodes == empty.inodes + 2,
        "active inodes {live:?}, empty {empty:?}"
    );
    let committed = ctx.path("committed");
    ctx.sn.commit(&committed, &key, opt()).ctx("commit")?;
    let stored = ctx.sn.usage(&committed).ctx("usage of committed")?;
    ensure!(
        stored == live,
        "committed usage {stored:?}, active had {live:?}"
    );
    Ok(())
}

/// Cleanup removes nothing that a snapshot owns.
fn cleanup_keeps_snapshots(ctx: &mut Ctx<'_>) -> CaseResult {
    let c1 = create_snapshot(
        ctx.sn.as_ref(),
        &ctx.work,
        "",
        &[create_file("/a", b"a\n", 0o644)],
    )?;
    let c2 = create_snapshot(
        ctx.sn.as_ref(),
        &ctx.work,
        &c1,
        &[create_file("/b", b"b\n", 0o644)],
    )?;
    let removed = create_snapshot(
        ctx.sn.as_ref(),
        &ctx.work,
        &c2,
        &[create_file("/x", b"x\n", 0o644)],
    )?;
    ctx.sn.remove(&removed).ctx("remove")?;
    let key = ctx.path("active");
    let m = ctx.sn.prepare(&key, &c2, opt()).ctx("prepare")?;
    ctx.sn.cleanup().ctx("cleanup")?;
    ctx.sn.cleanup().ctx("second cleanup")?;
    let flat = temp_in(&ctx.work, "flat")?;
    apply(
        &flat,
        &[
            create_file("/a", b"a\n", 0o644),
            create_file("/b", b"b\n", 0o644),
        ],
    )?;
    check_snapshot(ctx.sn.as_ref(), &ctx.work, &c2, &flat)?;
    let mp = ctx.work.join("mp");
    mkdir(&mp)?;
    let g = mount(&m, &mp)?;
    let res = apply(&mp, &[create_file("/c", b"c\n", 0o644)]);
    unmount(g)?;
    res.ctx("write to the active snapshot after cleanup")
}

/// Prepare/commit/view/remove from several threads at once, with cleanups
/// running alongside: every operation succeeds and every snapshot keeps its
/// content.
fn concurrent_operations(ctx: &mut Ctx<'_>) -> CaseResult {
    let sn: &dyn Snapshotter = ctx.sn.as_ref();
    let work: &Path = &ctx.work;
    let base = create_snapshot(sn, work, "", &[create_file("/base", b"base\n", 0o644)])?;
    let base = base.as_str();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || -> CaseResult {
                    for i in 0..8 {
                        let file = format!("/t{t}-{i}");
                        let name =
                            create_snapshot(sn, work, base, &[create_file(&file, b"x", 0o600)])
                                .ctx(format!("thread {t} round {i}"))?;
                        let flat = temp_in(work, "flat")?;
                        apply(
                            &flat,
                            &[
                                create_file("/base", b"base\n", 0o644),
                                create_file(&file, b"x", 0o600),
                            ],
                        )?;
                        check_snapshot(sn, work, &name, &flat)
                            .ctx(format!("thread {t} round {i}"))?;
                        sn.remove(&name).ctx("remove")?;
                    }
                    Ok(())
                })
            })
            .collect();
        let cleaner = s.spawn(|| -> CaseResult {
            for _ in 0..16 {
                sn.cleanup().ctx("cleanup")?;
            }
            Ok(())
        });
        for w in workers {
            w.join().map_err(|_| "worker panicked".to_string())??;
        }
        cleaner.join().map_err(|_| "cleaner panicked".to_string())?
    })?;
    let left: Vec<String> = walk_all(ctx.sn.as_ref(), &[])?
        .into_iter()
        .map(|i| i.name)
        .collect();
    ensure!(
        left == vec![base.to_string()],
        "left after the run: {left:?}"
    );
    Ok(())
}
