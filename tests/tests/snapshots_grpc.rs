//! The Snapshots service through gRPC against a live berthd: namespace isolation, containerd's
//! error codes, List filters and batches, lease ownership, snapshot GC (leaf-first, roots
//! kept), events, the namespace's default snapshotter, and introspection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use berth_proto::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use berth_proto::containerd::services::events::v1::SubscribeRequest;
use berth_proto::containerd::services::introspection::v1::PluginsRequest;
use berth_proto::containerd::services::leases::v1::{
    CreateRequest as LeaseCreate, DeleteRequest as LeaseDelete, ListResourcesRequest,
};
use berth_proto::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, Namespace,
};
use berth_proto::containerd::services::snapshots::v1::{
    snapshots_client::SnapshotsClient, CleanupRequest, CommitSnapshotRequest, Info, Kind,
    ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use berth_proto::containerd::types::Mount;
use berth_tests::{expect_code, Ctx, Daemon, Opts, Svc};
use prost::Message;
use tonic::{Code, Status};

const NATIVE: &str = "native";
const OVERLAY: &str = "overlayfs";
const GC_ROOT: &str = "containerd.io/gc.root";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn client(d: &Daemon, ctx: impl Into<Ctx>) -> SnapshotsClient<Svc> {
    SnapshotsClient::with_interceptor(d.channel().await, ctx.into())
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn root_label() -> HashMap<String, String> {
    labels(&[(GC_ROOT, "2024-01-01T00:00:00Z")])
}

async fn prepare(
    c: &mut SnapshotsClient<Svc>,
    sn: &str,
    key: &str,
    parent: &str,
    l: HashMap<String, String>,
) -> Result<Vec<Mount>, Status> {
    Ok(c.prepare(PrepareSnapshotRequest {
        snapshotter: sn.into(),
        key: key.into(),
        parent: parent.into(),
        labels: l,
    })
    .await?
    .into_inner()
    .mounts)
}

async fn view(
    c: &mut SnapshotsClient<Svc>,
    sn: &str,
    key: &str,
    parent: &str,
    l: HashMap<String, String>,
) -> Result<Vec<Mount>, Status> {
    Ok(c.view(ViewSnapshotRequest {
        snapshotter: sn.into(),
        key: key.into(),
        parent: parent.into(),
        labels: l,
    })
    .await?
    .into_inner()
    .mounts)
}

async fn commit(
    c: &mut SnapshotsClient<Svc>,
    sn: &str,
    name: &str,
    key: &str,
    l: HashMap<String, String>,
) -> Result<(), Status> {
    c.commit(CommitSnapshotRequest {
        snapshotter: sn.into(),
        name: name.into(),
        key: key.into(),
        labels: l,
        parent: String::new(),
    })
    .await
    .map(|_| ())
}

/// prepare + commit: committed `name` on `parent`.
async fn committed(
    c: &mut SnapshotsClient<Svc>,
    sn: &str,
    name: &str,
    parent: &str,
    l: HashMap<String, String>,
) {
    let key = format!("{name}-active");
    prepare(c, sn, &key, parent, HashMap::new())
        .await
        .unwrap_or_else(|s| panic!("prepare {key}: {s}"));
    commit(c, sn, name, &key, l)
        .await
        .unwrap_or_else(|s| panic!("commit {name}: {s}"));
}

async fn stat(c: &mut SnapshotsClient<Svc>, sn: &str, key: &str) -> Result<Info, Status> {
    Ok(c.stat(StatSnapshotRequest {
        snapshotter: sn.into(),
        key: key.into(),
    })
    .await?
    .into_inner()
    .info
    .expect("Stat returns an info"))
}

async fn remove(c: &mut SnapshotsClient<Svc>, sn: &str, key: &str) -> Result<(), Status> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: sn.into(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

/// All List batches, and how many there were.
async fn list_batches(
    c: &mut SnapshotsClient<Svc>,
    sn: &str,
    filters: &[&str],
) -> Result<(Vec<Info>, usize), Status> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: sn.into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    let mut batches = 0;
    while let Some(resp) = stream.message().await? {
        batches += 1;
        out.extend(resp.info);
    }
    Ok((out, batches))
}

async fn list(c: &mut SnapshotsClient<Svc>, sn: &str, filters: &[&str]) -> Vec<String> {
    let (infos, _) = list_batches(c, sn, filters)
        .await
        .unwrap_or_else(|s| panic!("list {filters:?}: {s}"));
    let mut names: Vec<String> = infos.into_iter().map(|i| i.name).collect();
    names.sort();
    names
}

async fn cleanup(c: &mut SnapshotsClient<Svc>, sn: &str) {
    c.cleanup(CleanupRequest {
        snapshotter: sn.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("cleanup {sn}: {s}"));
}

/// The native backend's snapshot directories.
fn native_dirs(d: &Daemon) -> Vec<PathBuf> {
    let dir = d
        .root()
        .join("io.containerd.snapshotter.v1.native")
        .join("snapshots");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn namespaces_are_isolated() {
    let d = Daemon::start().await;
    let mut a = client(&d, "ns-a").await;
    let mut b = client(&d, "ns-b").await;
    let mut c = client(&d, "ns-c").await;

    let ma = prepare(&mut a, NATIVE, "k", "", root_label())
        .await
        .unwrap();
    let mb = prepare(&mut b, NATIVE, "k", "", root_label())
        .await
        .unwrap();
    assert_ne!(ma, mb, "namespaces must not share a backend snapshot");
    assert_eq!(native_dirs(&d).len(), 2);

    expect_code(stat(&mut c, NATIVE, "k").await, Code::NotFound, &["k"]);
    assert_eq!(list(&mut a, NATIVE, &[]).await, strs(&["k"]));
    assert!(list(&mut c, NATIVE, &[]).await.is_empty());

    // A committed parent of one namespace does not exist in another.
    committed(&mut a, NATIVE, "base", "", root_label()).await;
    expect_code(
        prepare(&mut b, NATIVE, "child", "base", HashMap::new()).await,
        Code::NotFound,
        &["base"],
    );

    remove(&mut a, NATIVE, "k").await.unwrap();
    expect_code(stat(&mut a, NATIVE, "k").await, Code::NotFound, &[]);
    let info = stat(&mut b, NATIVE, "k").await.unwrap();
    assert_eq!(info.kind, Kind::Active as i32);
    let mounts = b
        .mounts(MountsRequest {
            snapshotter: NATIVE.into(),
            key: "k".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(mounts, mb);

    // Snapshots per snapshotter: the same key on overlayfs is another snapshot.
    expect_code(stat(&mut b, OVERLAY, "k").await, Code::NotFound, &[]);

    // A namespace with snapshots cannot be deleted.
    let mut nsc = d.namespaces().await;
    expect_code(
        nsc.delete(DeleteNamespaceRequest {
            name: "ns-b".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["snapshots"],
    );
}

#[tokio::test]
async fn errors_have_containerds_codes() {
    let d = Daemon::start().await;
    let mut c = client(&d, "n").await;
    let sn = NATIVE;
    committed(&mut c, sn, "base", "", root_label()).await;
    prepare(&mut c, sn, "active", "base", root_label())
        .await
        .unwrap();
    view(&mut c, sn, "view", "base", root_label())
        .await
        .unwrap();

    for existing in ["base", "active", "view"] {
        expect_code(
            prepare(&mut c, sn, existing, "", HashMap::new()).await,
            Code::AlreadyExists,
            &[existing],
        );
        expect_code(
            view(&mut c, sn, existing, "base", HashMap::new()).await,
            Code::AlreadyExists,
            &[existing],
        );
    }
    prepare(&mut c, sn, "a2", "", root_label()).await.unwrap();
    expect_code(
        commit(&mut c, sn, "base", "a2", HashMap::new()).await,
        Code::AlreadyExists,
        &["base"],
    );

    expect_code(
        prepare(&mut c, sn, "x", "missing", HashMap::new()).await,
        Code::NotFound,
        &["missing"],
    );
    expect_code(
        prepare(&mut c, sn, "x", "active", HashMap::new()).await,
        Code::InvalidArgument,
        &["active"],
    );
    expect_code(
        view(&mut c, sn, "x", "view", HashMap::new()).await,
        Code::InvalidArgument,
        &[],
    );
    expect_code(stat(&mut c, sn, "x").await, Code::NotFound, &[]);

    expect_code(
        commit(&mut c, sn, "c", "missing", HashMap::new()).await,
        Code::NotFound,
        &["missing"],
    );
    expect_code(
        commit(&mut c, sn, "c", "view", HashMap::new()).await,
        Code::FailedPrecondition,
        &["view"],
    );
    expect_code(
        commit(&mut c, sn, "c", "base", HashMap::new()).await,
        Code::FailedPrecondition,
        &[],
    );

    expect_code(
        remove(&mut c, sn, "base").await,
        Code::FailedPrecondition,
        &["remove"],
    );
    expect_code(remove(&mut c, sn, "missing").await, Code::NotFound, &[]);

    let info = stat(&mut c, sn, "active").await.unwrap();
    for path in ["parent", "kind", "name"] {
        expect_code(
            c.update(UpdateSnapshotRequest {
                snapshotter: sn.into(),
                info: Some(info.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![path.into()],
                }),
            })
            .await,
            Code::InvalidArgument,
            &[path],
        );
    }

    // Unknown snapshotter, as containerd: InvalidArgument.
    expect_code(
        prepare(&mut c, "zfs", "k", "", HashMap::new()).await,
        Code::InvalidArgument,
        &["zfs"],
    );
    // No namespace.
    let mut anon = client(&d, Ctx::none()).await;
    expect_code(
        stat(&mut anon, sn, "base").await,
        Code::FailedPrecondition,
        &["namespace"],
    );
    // A lease that does not exist.
    let mut leased = client(&d, Ctx::ns("n").lease("no-such-lease")).await;
    expect_code(
        prepare(&mut leased, sn, "l", "", HashMap::new()).await,
        Code::NotFound,
        &["lease"],
    );
    expect_code(stat(&mut c, sn, "l").await, Code::NotFound, &[]);
    // Bad filter.
    expect_code(
        list_batches(&mut c, sn, &["kind=="]).await,
        Code::InvalidArgument,
        &[],
    );
}

#[tokio::test]
async fn stat_update_usage_and_list_filters() {
    let d = Daemon::start().await;
    let mut c = client(&d, "n").await;
    let sn = NATIVE;
    let mut pl = root_label();
    pl.insert("l".into(), "1".into());
    committed(&mut c, sn, "p", "", pl).await;
    let mut al = root_label();
    al.insert("l".into(), "2".into());
    prepare(&mut c, sn, "a", "p", al).await.unwrap();
    view(&mut c, sn, "v", "p", root_label()).await.unwrap();
    prepare(&mut c, sn, "b", "", root_label()).await.unwrap();

    let cases: &[(&str, &[&str])] = &[
        (r#"labels."containerd.io/gc.root""#, &["a", "b", "p", "v"]),
        ("kind==active", &["a", "b"]),
        ("kind==view", &["v"]),
        ("kind==committed", &["p"]),
        ("name==p", &["p"]),
        ("parent==p", &["a", "v"]),
        (r#"parent!="""#, &["a", "v"]),
        ("labels.l", &["a", "p"]),
        ("labels.l==2", &["a"]),
    ];
    for (filter, want) in cases {
        assert_eq!(list(&mut c, sn, &[filter]).await, strs(want), "{filter}");
    }
    assert_eq!(
        list(&mut c, sn, &["name==a", "name==b"]).await,
        strs(&["a", "b"])
    );

    // List info equals Stat, timestamps and labels included.
    let (infos, _) = list_batches(&mut c, sn, &[]).await.unwrap();
    for info in infos {
        assert_eq!(stat(&mut c, sn, &info.name).await.unwrap(), info);
    }

    // Update: no paths replace the labels (the parent stays); labels.<k> sets and removes.
    let before = stat(&mut c, sn, "a").await.unwrap();
    let mut info = before.clone();
    info.labels = labels(&[("x", "1"), ("y", "2")]);
    info.parent = "ignored".into();
    let up = c
        .update(UpdateSnapshotRequest {
            snapshotter: sn.into(),
            info: Some(info),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(up.labels, labels(&[("x", "1"), ("y", "2")]));
    assert_eq!(up.parent, "p");
    assert_eq!(up.created_at, before.created_at);
    assert_ne!(up.updated_at, before.updated_at);
    let mut info = up.clone();
    info.labels = labels(&[("z", "3")]);
    let up = c
        .update(UpdateSnapshotRequest {
            snapshotter: sn.into(),
            info: Some(info),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.z".into(), "labels.x".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(up.labels, labels(&[("y", "2"), ("z", "3")]));
    assert_eq!(stat(&mut c, sn, "a").await.unwrap(), up);

    let u = c
        .usage(UsageRequest {
            snapshotter: sn.into(),
            key: "p".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(u.size >= 0 && u.inodes >= 1, "{u:?}");
}

#[tokio::test]
async fn list_streams_in_batches() {
    let d = Daemon::start().await;
    let mut c = client(&d, "n").await;
    for i in 0..250 {
        prepare(&mut c, NATIVE, &format!("k{i:03}"), "", root_label())
            .await
            .unwrap();
    }
    let (infos, batches) = list_batches(&mut c, NATIVE, &[]).await.unwrap();
    assert_eq!(infos.len(), 250);
    assert!(batches >= 3, "250 infos came in {batches} message(s)");
    // The stock ctr gets them all too.
    let out = berth_tests::success(
        &berth_tests::ctr(&d, &["-n", "n", "snapshots", "--snapshotter", NATIVE, "ls"]),
        "ctr snapshots ls",
    );
    assert_eq!(out.lines().count(), 251, "{out}");
}

#[tokio::test]
async fn snapshots_under_a_lease_belong_to_it() {
    let d = Daemon::start().await;
    let mut leases = d.leases("n").await;
    leases
        .create(LeaseCreate {
            id: "l1".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap();
    let mut c = client(&d, Ctx::ns("n").lease("l1")).await;
    prepare(&mut c, NATIVE, "k", "", HashMap::new())
        .await
        .unwrap();
    commit(&mut c, NATIVE, "c", "k", HashMap::new())
        .await
        .unwrap();
    view(&mut c, NATIVE, "v", "c", HashMap::new())
        .await
        .unwrap();
    let resources = |r: Vec<berth_proto::containerd::services::leases::v1::Resource>| {
        let mut v: Vec<(String, String)> = r.into_iter().map(|r| (r.r#type, r.id)).collect();
        v.sort();
        v
    };
    let held = leases
        .list_resources(ListResourcesRequest { id: "l1".into() })
        .await
        .unwrap()
        .into_inner()
        .resources;
    assert_eq!(
        resources(held),
        vec![
            ("snapshots/native".to_string(), "c".to_string()),
            ("snapshots/native".to_string(), "v".to_string())
        ]
    );

    // Held: a collection keeps them.
    let mut plain = client(&d, "n").await;
    cleanup(&mut plain, NATIVE).await;
    assert_eq!(list(&mut plain, NATIVE, &[]).await, strs(&["c", "v"]));
    assert_eq!(native_dirs(&d).len(), 2);

    // The lease goes (sync): so do its snapshots, records and directories.
    leases
        .delete(LeaseDelete {
            id: "l1".into(),
            sync: true,
        })
        .await
        .unwrap();
    assert!(list(&mut plain, NATIVE, &[]).await.is_empty());
    assert!(native_dirs(&d).is_empty(), "{:?}", native_dirs(&d));
}

#[tokio::test]
async fn gc_removes_unreferenced_chains_leaf_first_and_keeps_roots() {
    let d = Daemon::start_with(Opts {
        log_level: "info,berth_metadata=debug".into(),
        ..Opts::default()
    })
    .await;
    let mut c = client(&d, "n").await;
    let sn = NATIVE;
    // Rooted: r2 (labelled) keeps its parent r1; a view of r2 is labelled too.
    committed(&mut c, sn, "r1", "", HashMap::new()).await;
    committed(&mut c, sn, "r2", "r1", root_label()).await;
    view(&mut c, sn, "rv", "r2", root_label()).await.unwrap();
    // Referenced by a label of a rooted snapshot.
    committed(&mut c, sn, "ref", "", HashMap::new()).await;
    let mut info = stat(&mut c, sn, "rv").await.unwrap();
    info.labels.insert(
        "containerd.io/gc.ref.snapshot.native/x".into(),
        "ref".into(),
    );
    c.update(UpdateSnapshotRequest {
        snapshotter: sn.into(),
        info: Some(info),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["labels.containerd.io/gc.ref.snapshot.native/x".into()],
        }),
    })
    .await
    .unwrap();
    // Unreferenced: a chain c1 <- c2 <- c3 <- active w.
    committed(&mut c, sn, "c1", "", HashMap::new()).await;
    committed(&mut c, sn, "c2", "c1", HashMap::new()).await;
    committed(&mut c, sn, "c3", "c2", HashMap::new()).await;
    prepare(&mut c, sn, "w", "c3", HashMap::new())
        .await
        .unwrap();
    assert_eq!(native_dirs(&d).len(), 8);

    cleanup(&mut c, sn).await;
    assert_eq!(
        list(&mut c, sn, &[]).await,
        strs(&["r1", "r2", "ref", "rv"])
    );
    assert_eq!(native_dirs(&d).len(), 4, "{:?}", native_dirs(&d));

    // The backend removals, in order, from berthd's debug log: children first.
    let log = d.log();
    let removed: Vec<String> = log
        .lines()
        .filter(|l| l.contains("gc removed snapshot"))
        .filter_map(|l| {
            let key = l.split("key=").nth(1)?.split_whitespace().next()?;
            Some(key.trim_matches('"').rsplit('/').next()?.to_string())
        })
        .collect();
    assert_eq!(removed, strs(&["w", "c3", "c2", "c1"]), "log:\n{log}");

    // Without the label, the rest goes too (view first, then r2, then r1).
    let mut info = stat(&mut c, sn, "rv").await.unwrap();
    info.labels.clear();
    c.update(UpdateSnapshotRequest {
        snapshotter: sn.into(),
        info: Some(info),
        update_mask: None,
    })
    .await
    .unwrap();
    let mut info = stat(&mut c, sn, "r2").await.unwrap();
    info.labels.clear();
    c.update(UpdateSnapshotRequest {
        snapshotter: sn.into(),
        info: Some(info),
        update_mask: None,
    })
    .await
    .unwrap();
    cleanup(&mut c, sn).await;
    assert!(list(&mut c, sn, &[]).await.is_empty());
    assert!(native_dirs(&d).is_empty(), "{:?}", native_dirs(&d));
}

#[tokio::test]
async fn remove_schedules_gc_of_the_backend_snapshot() {
    // berthd's own GC delay (the harness default postpones background collections).
    let d = Daemon::start_with(Opts {
        gc_delay_ms: None,
        ..Opts::default()
    })
    .await;
    let mut c = client(&d, "n").await;
    prepare(&mut c, NATIVE, "k", "", root_label())
        .await
        .unwrap();
    assert_eq!(native_dirs(&d).len(), 1);
    remove(&mut c, NATIVE, "k").await.unwrap();
    // The background collection (100 ms after the removal by default) takes the directory.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !native_dirs(&d).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "backend snapshot still there: {:?}; log:\n{}",
            native_dirs(&d),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn events_follow_successful_changes() {
    let d = Daemon::start().await;
    let mut events = d
        .events(Ctx::none())
        .await
        .subscribe(SubscribeRequest {
            filters: vec![r#"topic~="^/snapshot/""#.into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut c = client(&d, "n").await;
    prepare(&mut c, NATIVE, "k", "", HashMap::new())
        .await
        .unwrap();
    commit(&mut c, NATIVE, "c", "k", root_label())
        .await
        .unwrap();
    view(&mut c, NATIVE, "v", "c", root_label()).await.unwrap();
    // Failures publish nothing.
    let _ = prepare(&mut c, NATIVE, "v", "", HashMap::new()).await;
    let _ = remove(&mut c, NATIVE, "c").await;
    remove(&mut c, NATIVE, "v").await.unwrap();

    let mut got = Vec::new();
    while got.len() < 3 {
        let env = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("event within 10s")
            .unwrap()
            .expect("stream open");
        assert_eq!(env.namespace, "n");
        let any = env.event.expect("event payload");
        let text = match env.topic.as_str() {
            "/snapshot/prepare" => {
                assert_eq!(any.type_url, "containerd.events.SnapshotPrepare");
                let e = SnapshotPrepare::decode(&*any.value).unwrap();
                format!("prepare {} {} {}", e.key, e.parent, e.snapshotter)
            }
            "/snapshot/commit" => {
                assert_eq!(any.type_url, "containerd.events.SnapshotCommit");
                let e = SnapshotCommit::decode(&*any.value).unwrap();
                format!("commit {} {} {}", e.key, e.name, e.snapshotter)
            }
            "/snapshot/remove" => {
                assert_eq!(any.type_url, "containerd.events.SnapshotRemove");
                let e = SnapshotRemove::decode(&*any.value).unwrap();
                format!("remove {} {}", e.key, e.snapshotter)
            }
            other => panic!("unexpected topic {other}"),
        };
        got.push(text);
    }
    assert_eq!(
        got,
        strs(&["prepare k  native", "commit k c native", "remove v native"])
    );
    // Nothing else arrives (no event for views or failures).
    let extra = tokio::time::timeout(Duration::from_millis(300), events.message()).await;
    assert!(extra.is_err(), "unexpected event: {extra:?}");
}

#[tokio::test]
async fn empty_snapshotter_means_the_namespace_default() {
    let d = Daemon::start().await;
    let mut nsc = d.namespaces().await;
    nsc.create(CreateNamespaceRequest {
        namespace: Some(Namespace {
            name: "nat".into(),
            labels: labels(&[("containerd.io/defaults/snapshotter", "native")]),
        }),
    })
    .await
    .unwrap();
    let mut c = client(&d, "nat").await;
    prepare(&mut c, "", "k", "", root_label()).await.unwrap();
    stat(&mut c, NATIVE, "k").await.unwrap();
    expect_code(stat(&mut c, OVERLAY, "k").await, Code::NotFound, &[]);
    assert_eq!(list(&mut c, "", &[]).await, strs(&["k"]));

    // Without the label: overlayfs, as containerd's default.
    let mut c = client(&d, "plain").await;
    prepare(&mut c, "", "k", "", root_label()).await.unwrap();
    stat(&mut c, OVERLAY, "k").await.unwrap();
    expect_code(stat(&mut c, NATIVE, "k").await, Code::NotFound, &[]);
}

#[tokio::test]
async fn introspection_lists_the_snapshotters() {
    let d = Daemon::start().await;
    let plugins = d
        .introspection()
        .await
        .plugins(PluginsRequest {
            filters: vec!["type==io.containerd.snapshotter.v1".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    let mut ids: Vec<&str> = plugins.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["aufs", "devmapper", "native", "overlayfs"]);
    for p in &plugins {
        // All work on the CI hosts (overlayfs, FUSE and fuse3 are there).
        assert!(p.init_err.is_none(), "{}: {:?}", p.id, p.init_err);
        assert!(
            p.exports
                .get("root")
                .is_some_and(|r| r.ends_with(&format!("io.containerd.snapshotter.v1.{}", p.id))),
            "{p:?}"
        );
    }
    let grpc = d
        .introspection()
        .await
        .plugins(PluginsRequest {
            filters: vec!["type==io.containerd.grpc.v1,id==snapshots".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert_eq!(grpc.len(), 1);
}

#[tokio::test]
async fn a_backend_that_cannot_start_is_reported_and_the_daemon_serves_the_rest() {
    let mut d = Daemon::start().await;
    d.stop().await;
    // Make overlayfs's root unusable: a file where its directory should be.
    let root = d.root().join("io.containerd.snapshotter.v1.overlayfs");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, "not a directory").unwrap();
    d.restart().await;

    let plugins = d
        .introspection()
        .await
        .plugins(PluginsRequest {
            filters: vec!["type==io.containerd.snapshotter.v1".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    let overlay = plugins
        .iter()
        .find(|p| p.id == OVERLAY)
        .expect("overlayfs listed");
    let err = overlay
        .init_err
        .as_ref()
        .expect("overlayfs has an init error");
    assert!(!err.message.is_empty());
    let native = plugins
        .iter()
        .find(|p| p.id == NATIVE)
        .expect("native listed");
    assert!(native.init_err.is_none(), "{:?}", native.init_err);

    let mut c = client(&d, "n").await;
    expect_code(
        prepare(&mut c, OVERLAY, "k", "", root_label()).await,
        Code::InvalidArgument,
        &["overlayfs"],
    );
    prepare(&mut c, NATIVE, "k", "", root_label())
        .await
        .unwrap();
    // The stock ctr shows it as failed.
    let out = berth_tests::success(&berth_tests::ctr(&d, &["plugins", "ls"]), "ctr plugins ls");
    let row = out
        .lines()
        .find(|l| l.contains("io.containerd.snapshotter.v1") && l.contains(OVERLAY))
        .unwrap_or_else(|| panic!("no overlayfs row:\n{out}"));
    assert!(row.trim_end().ends_with("error"), "{row}");
}
