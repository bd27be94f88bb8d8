//! `containerd.services.snapshots.v1.Snapshots`: thin handlers over the
//! namespaced snapshots of the metadata store, one backend per `snapshotter`
//! name (`overlayfs`, `native`, `aufs`, `devmapper`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use berth_metadata::{Db, Labels};
use berth_proto::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use berth_proto::containerd::services::snapshots::v1::{
    snapshots_server::Snapshots, CleanupRequest, CommitSnapshotRequest, Info, Kind,
    ListSnapshotsRequest, ListSnapshotsResponse, MountsRequest, MountsResponse,
    PrepareSnapshotRequest, PrepareSnapshotResponse, RemoveSnapshotRequest, StatSnapshotRequest,
    StatSnapshotResponse, UpdateSnapshotRequest, UpdateSnapshotResponse, UsageRequest,
    UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use berth_proto::containerd::types::Mount;
use berth_snapshotter::{Info as SnapshotInfo, Kind as SnapshotKind};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::error::blocking;
use crate::events::Exchange;
use crate::gc::GcScheduler;
use crate::namespace::{lease, namespace};

/// The snapshotter used when a request names none and the namespace has no
/// default, as containerd's `DefaultSnapshotter` on Linux.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// Namespace label naming the namespace's default snapshotter (containerd's
/// `defaults.DefaultSnapshotterNSLabel`).
pub const DEFAULT_SNAPSHOTTER_LABEL: &str = "containerd.io/defaults/snapshotter";
/// Response header of Usage carrying the bytes a snapshot shares with
/// others (block-sharing backends, e.g. devmapper).
pub const SHARED_SIZE_HEADER: &str = "berth-shared-size";
/// Infos per List response.
const LIST_BATCH: usize = 100;

pub struct SnapshotsService {
    db: Arc<Db>,
    events: Exchange,
    gc: GcScheduler,
}

impl SnapshotsService {
    pub fn new(db: Arc<Db>, events: Exchange, gc: GcScheduler) -> Self {
        SnapshotsService { db, events, gc }
    }
}

/// The snapshotter a request means. containerd resolves an empty name in its
/// client (`Client.resolveSnapshotterName`: the namespace label
/// `containerd.io/defaults/snapshotter`, else the default) and its server
/// rejects it; Berth resolves it the same way on the server too, so thin
/// clients get what containerd's client would have chosen.
fn resolve(db: &Db, ns: &str, name: &str) -> berth_metadata::Result<String> {
    if !name.is_empty() {
        return Ok(name.to_string());
    }
    match db.namespaces().get(ns) {
        Ok(n) => Ok(n
            .labels
            .get(DEFAULT_SNAPSHOTTER_LABEL)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| DEFAULT_SNAPSHOTTER.to_string())),
        Err(e) if e.is_not_found() => Ok(DEFAULT_SNAPSHOTTER.to_string()),
        Err(e) => Err(e),
    }
}

fn mounts_to_proto(mounts: Vec<berth_snapshotter::Mount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn kind_to_proto(k: SnapshotKind) -> Kind {
    match k {
        SnapshotKind::View => Kind::View,
        SnapshotKind::Active => Kind::Active,
        SnapshotKind::Committed => Kind::Committed,
    }
}

fn info_to_proto(info: SnapshotInfo) -> Info {
    Info {
        name: info.name,
        parent: info.parent,
        kind: kind_to_proto(info.kind) as i32,
        created_at: Some(info.created.into()),
        updated_at: Some(info.updated.into()),
        labels: info.labels.into_iter().collect(),
    }
}

/// The fields of an Update request's info that Update reads (name, labels);
/// the rest is carried for completeness.
fn info_from_proto(info: Info) -> SnapshotInfo {
    let kind = match Kind::try_from(info.kind) {
        Ok(Kind::View) => SnapshotKind::View,
        Ok(Kind::Committed) => SnapshotKind::Committed,
        _ => SnapshotKind::Active,
    };
    let time = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    SnapshotInfo {
        kind,
        name: info.name,
        parent: info.parent,
        labels: info.labels.into_iter().collect(),
        created: time(info.created_at),
        updated: time(info.updated_at),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        let (n, key, parent) = (ns.clone(), req.key.clone(), req.parent.clone());
        let labels: Labels = req.labels.into_iter().collect();
        let (snapshotter, mounts) = blocking(move || {
            let sn = resolve(&db, &n, &req.snapshotter)?;
            let mounts = db
                .snapshots(&sn)?
                .prepare(&n, &key, &parent, labels, lease.as_deref())?;
            Ok::<_, berth_metadata::Error>((sn, mounts))
        })
        .await?;
        self.events.publish(
            &ns,
            "/snapshot/prepare",
            &SnapshotPrepare {
                key: req.key,
                parent: req.parent,
                snapshotter,
            },
        );
        Ok(Response::new(PrepareSnapshotResponse {
            mounts: mounts_to_proto(mounts),
        }))
    }

    async fn view(
        &self,
        request: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        let labels: Labels = req.labels.into_iter().collect();
        // containerd publishes no event for views.
        let mounts = blocking(move || {
            let sn = resolve(&db, &ns, &req.snapshotter)?;
            db.snapshots(&sn)?
                .view(&ns, &req.key, &req.parent, labels, lease.as_deref())
        })
        .await?;
        Ok(Response::new(ViewSnapshotResponse {
            mounts: mounts_to_proto(mounts),
        }))
    }

    async fn mounts(
        &self,
        request: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        let mounts = blocking(move || {
            let sn = resolve(&db, &ns, &req.snapshotter)?;
            db.snapshots(&sn)?.mounts(&ns, &req.key)
        })
        .await?;
        Ok(Response::new(MountsResponse {
            mounts: mounts_to_proto(mounts),
        }))
    }

    async fn commit(
        &self,
        request: Request<CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        let (n, name, key) = (ns.clone(), req.name.clone(), req.key.clone());
        let labels: Labels = req.labels.into_iter().collect();
        let snapshotter = blocking(move || {
            let sn = resolve(&db, &n, &req.snapshotter)?;
            db.snapshots(&sn)?
                .commit(&n, &name, &key, labels, lease.as_deref())?;
            Ok::<_, berth_metadata::Error>(sn)
        })
        .await?;
        self.events.publish(
            &ns,
            "/snapshot/commit",
            &SnapshotCommit {
                key: req.key,
                name: req.name,
                snapshotter,
            },
        );
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        let (n, key) = (ns.clone(), req.key.clone());
        let snapshotter = blocking(move || {
            let sn = resolve(&db, &n, &req.snapshotter)?;
            db.snapshots(&sn)?.remove(&n, &key, lease.as_deref())?;
            Ok::<_, berth_metadata::Error>(sn)
        })
        .await?;
        self.events.publish(
            &ns,
            "/snapshot/remove",
            &SnapshotRemove {
                key: req.key,
                snapshotter,
            },
        );
        // The backend snapshot goes with the next collection.
        self.gc.schedule();
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        let info = blocking(move || {
            let sn = resolve(&db, &ns, &req.snapshotter)?;
            db.snapshots(&sn)?.stat(&ns, &req.key)
        })
        .await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info_to_proto(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let info = req
            .info
            .ok_or_else(|| Status::invalid_argument("info must be set"))?;
        let info = info_from_proto(info);
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let db = self.db.clone();
        let updated = blocking(move || {
            let sn = resolve(&db, &ns, &req.snapshotter)?;
            db.snapshots(&sn)?.update(&ns, info, &paths)
        })
        .await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info_to_proto(updated)),
        }))
    }

    type ListStream = BoxStream<ListSnapshotsResponse>;

    async fn list(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        let infos = blocking(move || {
            let sn = resolve(&db, &ns, &req.snapshotter)?;
            db.snapshots(&sn)?.list(&ns, &req.filters)
        })
        .await?;
        let mut batches: Vec<Result<ListSnapshotsResponse, Status>> = Vec::new();
        let mut infos = infos.into_iter().map(info_to_proto).peekable();
        while infos.peek().is_some() {
            batches.push(Ok(ListSnapshotsResponse {
                info: infos.by_ref().take(LIST_BATCH).collect(),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(
        &self,
        request: Request<UsageRequest>,
    ) -> Result<Response<UsageResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        let (usage, shared) = blocking(move || {
            let sn = resolve(&db, &ns, &req.snapshotter)?;
            let snapshots = db.snapshots(&sn)?;
            let usage = snapshots.usage(&ns, &req.key)?;
            let shared = snapshots.shared_usage(&ns, &req.key)?;
            Ok::<_, berth_metadata::Error>((usage, shared))
        })
        .await?;
        let mut response = Response::new(UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        });
        // Not in containerd's message: a response header, which stock
        // clients ignore and Berth's CLI shows.
        if let Some(shared) = shared {
            response
                .metadata_mut()
                .insert(SHARED_SIZE_HEADER, shared.into());
        }
        Ok(response)
    }

    /// Reclaims the space of removed snapshots now: one garbage collection,
    /// which removes unreferenced backend snapshots and ends with each
    /// backend's cleanup.
    async fn cleanup(&self, request: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        blocking(move || {
            let sn = resolve(&db, &ns, &req.snapshotter)?;
            db.snapshots(&sn).map(|_| ())
        })
        .await?;
        self.gc.run_now().await?;
        Ok(Response::new(()))
    }
}
