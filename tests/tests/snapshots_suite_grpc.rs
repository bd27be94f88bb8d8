//! The snapshotter conformance suite (`berth_snapshotter::testsuite`) through the gRPC
//! Snapshots service, as containerd runs its suite through its client: an adapter implements
//! `Snapshotter` over a `SnapshotsClient` (blocking on its own runtime) to a berthd rooted in
//! the case's directory, in one namespace, under one lease (as containerd's client works, so GC
//! leaves the suite's snapshots alone). Reopening the snapshotter restarts berthd on the same
//! root. Root, real mounts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::containerd::services::leases::v1::{
    leases_client::LeasesClient, CreateRequest as LeaseCreate,
};
use berth_proto::containerd::services::snapshots::v1::{
    snapshots_client::SnapshotsClient, CleanupRequest, CommitSnapshotRequest, Info as ProtoInfo,
    Kind as ProtoKind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use berth_proto::containerd::types::Mount as ProtoMount;
use berth_snapshotter::{Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};
use berth_tests::{connect, Ctx, Daemon, Svc};
use tonic::{Code, Status};

const NS: &str = "testsuite";
const LEASE: &str = "testsuite";

/// berthd serving `<case root>/berthd`, and a blocking Snapshots client for one snapshotter.
struct Remote {
    rt: tokio::runtime::Runtime,
    client: SnapshotsClient<Svc>,
    snapshotter: &'static str,
    child: Child,
    log: PathBuf,
}

fn start(root: &Path, snapshotter: &'static str) -> Box<dyn Snapshotter> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = root.join("berthd");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let socket = dir.join("b.sock");
    let config = dir.join("config.toml");
    let log = dir.join("log");
    std::fs::write(&config, "").expect("config");
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log");
    let child = Command::new(Daemon::binary("berthd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("dup"))
        .stderr(logf)
        .spawn()
        .expect("spawn berthd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        if socket.exists() {
            if let Ok(c) = rt.block_on(connect(&socket)) {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "berthd did not start; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The lease that holds everything the suite makes (kept across restarts).
    let mut leases = LeasesClient::with_interceptor(channel.clone(), Ctx::ns(NS));
    match rt.block_on(leases.create(LeaseCreate {
        id: LEASE.into(),
        labels: HashMap::new(),
    })) {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {}
        Err(s) => panic!("create lease: {s}"),
    }
    let client = SnapshotsClient::with_interceptor(channel, Ctx::ns(NS).lease(LEASE));
    Box::new(Remote {
        rt,
        client,
        snapshotter,
        child,
        log,
    })
}

impl Drop for Remote {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "berthd did not stop on SIGTERM; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// A gRPC status in the snapshotter crate's vocabulary, by code.
fn err(s: Status) -> Error {
    let m = s.message().to_string();
    match s.code() {
        Code::NotFound => Error::NotFound(m),
        Code::AlreadyExists => Error::AlreadyExists(m),
        Code::InvalidArgument => Error::InvalidArgument(m),
        Code::FailedPrecondition => Error::FailedPrecondition(m),
        Code::Unimplemented => Error::Unsupported(m),
        c => Error::Storage(format!("{c:?}: {m}")),
    }
}

fn mounts(m: Vec<ProtoMount>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            kind: m.r#type,
            source: m.source,
            options: m.options,
        })
        .collect()
}

fn info(i: ProtoInfo) -> Info {
    let time = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| std::time::SystemTime::try_from(t).ok())
            .unwrap_or(std::time::UNIX_EPOCH)
    };
    Info {
        kind: match ProtoKind::try_from(i.kind) {
            Ok(ProtoKind::View) => Kind::View,
            Ok(ProtoKind::Committed) => Kind::Committed,
            _ => Kind::Active,
        },
        name: i.name,
        parent: i.parent,
        labels: i.labels.into_iter().collect(),
        created: time(i.created_at),
        updated: time(i.updated_at),
    }
}

fn proto_info(i: Info) -> ProtoInfo {
    ProtoInfo {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            Kind::View => ProtoKind::View,
            Kind::Active => ProtoKind::Active,
            Kind::Committed => ProtoKind::Committed,
        } as i32,
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
        labels: i.labels.into_iter().collect(),
    }
}

impl Remote {
    fn call<T, F>(&self, f: impl FnOnce(SnapshotsClient<Svc>, String) -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, Status>>,
    {
        self.rt
            .block_on(f(self.client.clone(), self.snapshotter.to_string()))
            .map_err(err)
    }
}

impl Snapshotter for Remote {
    fn stat(&self, key: &str) -> Result<Info> {
        let key = key.to_string();
        self.call(|mut c, snapshotter| async move {
            let r = c.stat(StatSnapshotRequest { snapshotter, key }).await?;
            Ok(info(r.into_inner().info.unwrap_or_default()))
        })
    }

    fn update(&self, i: Info, fieldpaths: &[String]) -> Result<Info> {
        let paths = fieldpaths.to_vec();
        self.call(|mut c, snapshotter| async move {
            let r = c
                .update(UpdateSnapshotRequest {
                    snapshotter,
                    info: Some(proto_info(i)),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await?;
            Ok(info(r.into_inner().info.unwrap_or_default()))
        })
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_string();
        self.call(|mut c, snapshotter| async move {
            let u = c
                .usage(UsageRequest { snapshotter, key })
                .await?
                .into_inner();
            Ok(Usage {
                size: u.size,
                inodes: u.inodes,
            })
        })
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_string();
        self.call(|mut c, snapshotter| async move {
            let r = c.mounts(MountsRequest { snapshotter, key }).await?;
            Ok(mounts(r.into_inner().mounts))
        })
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.call(|mut c, snapshotter| async move {
            let r = c
                .prepare(PrepareSnapshotRequest {
                    snapshotter,
                    key,
                    parent,
                    labels: labels.into_iter().collect(),
                })
                .await?;
            Ok(mounts(r.into_inner().mounts))
        })
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.call(|mut c, snapshotter| async move {
            let r = c
                .view(ViewSnapshotRequest {
                    snapshotter,
                    key,
                    parent,
                    labels: labels.into_iter().collect(),
                })
                .await?;
            Ok(mounts(r.into_inner().mounts))
        })
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let (name, key) = (name.to_string(), key.to_string());
        self.call(|mut c, snapshotter| async move {
            c.commit(CommitSnapshotRequest {
                snapshotter,
                name,
                key,
                labels: labels.into_iter().collect(),
                parent: String::new(),
            })
            .await?;
            Ok(())
        })
    }

    fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.call(|mut c, snapshotter| async move {
            c.remove(RemoveSnapshotRequest { snapshotter, key }).await?;
            Ok(())
        })
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        let filters = filters.to_vec();
        // The whole stream first: the callback may call back (e.g. Stat).
        let infos = self.call(|mut c, snapshotter| async move {
            let mut stream = c
                .list(ListSnapshotsRequest {
                    snapshotter,
                    filters,
                })
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(r) = stream.message().await? {
                out.extend(r.info.into_iter().map(info));
            }
            Ok(out)
        })?;
        for i in infos {
            f(i)?;
        }
        Ok(())
    }

    fn cleanup(&self) -> Result<()> {
        self.call(|mut c, snapshotter| async move {
            c.cleanup(CleanupRequest { snapshotter }).await?;
            Ok(())
        })
    }
}

mod native {
    use super::*;

    fn factory(root: &Path) -> Box<dyn Snapshotter> {
        start(root, "native")
    }

    berth_snapshotter::snapshotter_suite_tests!("native", factory);
}

mod overlayfs {
    use super::*;

    fn factory(root: &Path) -> Box<dyn Snapshotter> {
        start(root, "overlayfs")
    }

    berth_snapshotter::snapshotter_suite_tests!("overlayfs", factory);
}

mod aufs {
    use super::*;

    fn factory(root: &Path) -> Box<dyn Snapshotter> {
        // The suite mounts what the service returns in this process.
        berth_tests::helpers_on_path();
        start(root, "aufs")
    }

    berth_snapshotter::snapshotter_suite_tests!("aufs", factory);
}

mod devmapper {
    use super::*;

    fn factory(root: &Path) -> Box<dyn Snapshotter> {
        start(root, "devmapper")
    }

    berth_snapshotter::snapshotter_suite_tests!("devmapper", factory);
}
