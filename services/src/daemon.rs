//! Assembles the daemon: stores, services, the unix socket, and shutdown.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_proto::containerd::services::containers::v1::containers_server::ContainersServer;
use berth_proto::containerd::services::diff::v1::diff_server::DiffServer;
use berth_proto::containerd::services::images::v1::images_server::ImagesServer;
use berth_proto::containerd::services::tasks::v1::tasks_server::TasksServer;
use berth_proto::containerd::services::{
    content::v1::content_server::ContentServer, events::v1::events_server::EventsServer,
    introspection::v1::introspection_server::IntrospectionServer,
    leases::v1::leases_server::LeasesServer, namespaces::v1::namespaces_server::NamespacesServer,
    snapshots::v1::snapshots_server::SnapshotsServer, version::v1::version_server::VersionServer,
};
use berth_proto::grpc::health::v1::health_server::HealthServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::config::{Config, KvBackend, SnapshotterConfig};
use crate::containers::ContainersService;
use crate::content::early::EarlyDataLayer;
use crate::content::ContentService;
use crate::diff::DiffService;
use crate::events::{EventsService, Exchange};
use crate::gc::GcScheduler;
use crate::h2_authority;
use crate::health::HealthService;
use crate::images::ImagesService;
use crate::introspection::{load_or_create_uuid, IntrospectionService, PluginRecord};
use crate::leases::LeasesService;
use crate::namespaces::NamespacesService;
use crate::oversize::OversizeLayer;
use crate::runtime::{RuntimeManager, ShimEvents};
use crate::snapshots::SnapshotsService;
use crate::tasks::TasksService;
use crate::version::VersionService;

/// How long in-flight calls (and open event streams) get after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// HTTP/2 flow-control windows and frame size: Content.Write clients send 1 MiB messages
/// (containerd's and ours), which with hyper's default 1 MB windows stall on WINDOW_UPDATEs
/// mid-message. Frames stay small enough (64 KiB) that a message arrives in pieces the
/// early hasher (`content::early`) works on while the rest is in flight.
const H2_STREAM_WINDOW: u32 = 4 << 20;
const H2_CONNECTION_WINDOW: u32 = 8 << 20;
const H2_MAX_FRAME: u32 = 64 << 10;
/// Request metadata up to 1 MiB, as large as `h2_authority` takes a header block: tonic's
/// default of 16 KiB refused calls that containerd's server (grpc-go: 16 MiB) serves.
const H2_MAX_HEADER_LIST: u32 = 1 << 20;

/// The stores, opened on their own thread (`open_stores`) while the async runtime starts.
pub struct Stores {
    db: Arc<berth_metadata::Db>,
    uuid: String,
    snapshotters: Vec<SnapshotterStatus>,
}

/// Creates the root and state directories and opens the content store, the metadata store and
/// the snapshotter backends, on a new thread: start-up time is what clients wait, so this
/// overlaps with building the async runtime, and the stores open in parallel (they are
/// independent until the backends register with the metadata store).
pub fn open_stores(config: &Config) -> anyhow::Result<JoinHandle<anyhow::Result<Stores>>> {
    let (root, state) = (config.root.clone(), config.state.clone());
    let kv = config.metadata.backend;
    let snapshotter_config = config.snapshotter.clone();
    let opening = std::thread::Builder::new()
        .name("open-stores".into())
        .spawn(move || {
            create_dir(&root, 0o711)?;
            create_dir(&state, 0o711)?;
            let backend = match kv {
                KvBackend::Redb => berth_metadata::Backend::Redb,
                #[cfg(feature = "sled")]
                KvBackend::Sled => berth_metadata::Backend::Sled,
                #[cfg(not(feature = "sled"))]
                KvBackend::Sled => {
                    bail!("metadata backend sled needs berthd built with --features sled")
                }
            };
            std::thread::scope(|scope| {
                let backends = open_snapshotters(scope, &root, &snapshotter_config);
                let uuid = load_or_create_uuid(&root).context("server uuid")?;
                let content = Arc::new(
                    berth_content::Store::open(root.join("io.containerd.content.v1.content"))
                        .context("open content store")?,
                );
                let db = berth_metadata::Db::open(
                    berth_metadata::DbOptions {
                        path: root.join("io.containerd.metadata.v1.kv"),
                        backend,
                    },
                    content,
                )
                .context("open metadata store")?;
                let snapshotters = register_snapshotters(backends, &db)?;
                Ok(Stores {
                    db,
                    uuid,
                    snapshotters,
                })
            })
        })
        .context("start opening the stores")?;
    Ok(opening)
}

pub async fn run(config: Config, stores: JoinHandle<anyhow::Result<Stores>>) -> anyhow::Result<()> {
    let Stores {
        db,
        uuid,
        snapshotters,
    } = tokio::task::spawn_blocking(move || stores.join())
        .await?
        .map_err(|_| anyhow::anyhow!("opening the stores panicked"))??;

    let exchange = Exchange::new();
    let gc = GcScheduler::start(
        db.clone(),
        Duration::from_millis(config.gc.schedule_delay_ms),
    );
    // Leftovers of a crash (orphan blobs, stale ingests) go at start-up.
    gc.schedule();

    // Shims publish their events to `<address>.ttrpc`, as containerd's do.
    let ttrpc_address = PathBuf::from(format!("{}.ttrpc", config.grpc.address.display()));
    let ttrpc_listener = bind_socket(&ttrpc_address, config.grpc.uid, config.grpc.gid)?;
    let ttrpc_server = berth_ttrpc::Server::new().register(ShimEvents::new(exchange.clone()));
    tokio::spawn(async move {
        if let Err(e) = ttrpc_server.serve(ttrpc_listener).await {
            tracing::error!(error = %e, "ttrpc event endpoint failed");
        }
    });
    let runtime = Arc::new(RuntimeManager::new(
        &config.state,
        &config.grpc.address,
        &ttrpc_address,
        exchange.clone(),
    ));
    // Tasks that outlived the previous daemon: reconnect or clean up, before
    // clients can ask about them.
    runtime.restore().await;

    let plugins = plugin_records(&config, &snapshotters);
    let max_recv = config.grpc.max_recv_message_size;
    let max_send = config.grpc.max_send_message_size;

    macro_rules! svc {
        ($server:ident, $svc:expr) => {
            $server::new($svc)
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(max_send)
        };
    }

    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .http2_max_header_list_size(H2_MAX_HEADER_LIST)
        .layer(OversizeLayer)
        .layer(EarlyDataLayer)
        .add_service(svc!(VersionServer, VersionService))
        .add_service(svc!(HealthServer, HealthService))
        .add_service(svc!(
            IntrospectionServer,
            IntrospectionService::new(plugins, uuid)
        ))
        .add_service(svc!(
            NamespacesServer,
            NamespacesService::new(db.clone(), exchange.clone())
        ))
        .add_service(svc!(
            ContentServer,
            ContentService::new(db.clone(), exchange.clone(), gc.clone())
        ))
        .add_service(svc!(
            LeasesServer,
            LeasesService::new(db.clone(), gc.clone())
        ))
        .add_service(svc!(
            SnapshotsServer,
            SnapshotsService::new(db.clone(), exchange.clone(), gc.clone())
        ))
        .add_service(svc!(
            ContainersServer,
            ContainersService::new(db.clone(), exchange.clone(), gc.clone())
        ))
        .add_service(svc!(
            ImagesServer,
            ImagesService::new(db.clone(), exchange.clone(), gc.clone())
        ))
        .add_service(svc!(
            DiffServer,
            DiffService::new(db.clone(), config.state.join("tmpmounts"))
        ))
        .add_service(svc!(
            TasksServer,
            TasksService::new(db.clone(), runtime.clone())
        ))
        .add_service(svc!(EventsServer, EventsService::new(exchange.clone())));

    let listener = bind_socket(&config.grpc.address, config.grpc.uid, config.grpc.gid)?;
    tracing::info!(address = %config.grpc.address.display(), root = %config.root.display(),
        "berthd serving");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let connections =
        UnixListenerStream::new(listener).map(|c| c.map(h2_authority::SanitizedAuthority::new));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(connections, async {
        let _ = stop_rx.await;
    }));
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down");
    let _ = stop_tx.send(());
    exchange.close();
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("calls still open after grace period; closing them"),
    }
    let _ = std::fs::remove_file(&config.grpc.address);
    let _ = std::fs::remove_file(&ttrpc_address);
    // Devices and mounts the backends hold (those of running containers
    // stay until the containers' mounts go).
    for s in &snapshotters {
        if let Some(backend) = &s.backend {
            backend.close();
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Plugin type of snapshotters, as containerd's.
const SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";

/// A snapshotter backend as started: its root, and why it could not start
/// on this host, if it could not.
struct SnapshotterStatus {
    name: &'static str,
    root: PathBuf,
    /// The backend, when it started (closed at shutdown).
    backend: Option<Arc<dyn berth_snapshotter::Snapshotter>>,
    init_err: Option<String>,
}

type BackendResult = berth_snapshotter::Result<Arc<dyn berth_snapshotter::Snapshotter>>;

/// A snapshotter backend being opened on its own thread.
struct Opening<'scope> {
    name: &'static str,
    root: PathBuf,
    handle: std::thread::ScopedJoinHandle<'scope, BackendResult>,
}

/// Opens the snapshotter backends under `<root>/io.containerd.snapshotter.v1.<name>`,
/// each on its own thread of `scope`.
fn open_snapshotters<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    root: &Path,
    config: &SnapshotterConfig,
) -> Vec<Opening<'scope>> {
    type Ctor = Box<dyn FnOnce(&Path) -> BackendResult + Send>;
    let devmapper = config.devmapper.clone();
    let backends: [(&'static str, Ctor); 4] = [
        (
            berth_snapshotter::overlay::NAME,
            Box::new(|p| Ok(Arc::new(berth_snapshotter::OverlaySnapshotter::new(p)?))),
        ),
        (
            berth_snapshotter::native::NAME,
            Box::new(|p| Ok(Arc::new(berth_snapshotter::NativeSnapshotter::new(p)?))),
        ),
        (
            berth_snapshotter::aufs::NAME,
            Box::new(|p| Ok(Arc::new(berth_snapshotter::AufsSnapshotter::new(p)?))),
        ),
        (
            berth_snapshotter::devmapper::NAME,
            Box::new(move |p| {
                Ok(Arc::new(
                    berth_snapshotter::devmapper::DevmapperSnapshotter::new(p, &devmapper)?,
                ))
            }),
        ),
    ];
    backends
        .into_iter()
        .map(|(name, ctor)| {
            let dir = root.join(format!("{SNAPSHOTTER}.{name}"));
            let at = dir.clone();
            Opening {
                name,
                root: dir,
                handle: scope.spawn(move || ctor(&at)),
            }
        })
        .collect()
}

/// Registers the opened backends with the metadata store (which recovers
/// what a crash left half-done). A backend that cannot work on this host is
/// reported, not fatal; a failing recovery is fatal (the store would be
/// inconsistent).
fn register_snapshotters(
    opening: Vec<Opening<'_>>,
    db: &berth_metadata::Db,
) -> anyhow::Result<Vec<SnapshotterStatus>> {
    let mut out = Vec::new();
    for Opening { name, root, handle } in opening {
        let opened = handle
            .join()
            .map_err(|_| anyhow::anyhow!("snapshotter {name}: opening panicked"))?;
        let (backend, init_err) = match opened {
            Ok(backend) => {
                db.register_snapshotter(name, backend.clone())
                    .with_context(|| format!("snapshotter {name}: recover"))?;
                (Some(backend), None)
            }
            Err(e) => {
                tracing::warn!(snapshotter = name, error = %e, "snapshotter unavailable on this host");
                (None, Some(e.to_string()))
            }
        };
        out.push(SnapshotterStatus {
            name,
            root,
            backend,
            init_err,
        });
    }
    Ok(out)
}

fn plugin_records(config: &Config, snapshotters: &[SnapshotterStatus]) -> Vec<PluginRecord> {
    const GRPC: &str = "io.containerd.grpc.v1";
    const METADATA: &str = "io.containerd.metadata.v1";
    const CONTENT: &str = "io.containerd.content.v1";
    const EVENT: &str = "io.containerd.event.v1";
    const GC: &str = "io.containerd.gc.v1";
    const LEASE: &str = "io.containerd.lease.v1";
    const DIFFER: &str = "io.containerd.differ.v1";
    let kv = match config.metadata.backend {
        KvBackend::Redb => "redb",
        KvBackend::Sled => "sled",
    };
    let mut records = vec![
        PluginRecord::new(EVENT, "exchange"),
        PluginRecord::new(CONTENT, "content").export(
            "root",
            config
                .root
                .join(CONTENT.to_owned() + ".content")
                .display()
                .to_string(),
        ),
    ];
    for s in snapshotters {
        let mut r =
            PluginRecord::new(SNAPSHOTTER, s.name).export("root", s.root.display().to_string());
        r.init_err = s.init_err.clone();
        r.backend = s.backend.clone();
        records.push(r);
    }
    records.extend([
        PluginRecord::new(METADATA, kv)
            .requires(&[CONTENT, EVENT, SNAPSHOTTER])
            .export("backend", kv),
        PluginRecord::new(GC, "scheduler").requires(&[METADATA]),
        PluginRecord::new(LEASE, "manager").requires(&[METADATA]),
        PluginRecord::new(GRPC, "version"),
        PluginRecord::new(GRPC, "healthcheck"),
        PluginRecord::new(GRPC, "introspection"),
        PluginRecord::new(GRPC, "namespaces").requires(&[METADATA]),
        PluginRecord::new(GRPC, "content").requires(&[METADATA]),
        PluginRecord::new(GRPC, "leases").requires(&[LEASE]),
        PluginRecord::new(GRPC, "snapshots").requires(&[METADATA]),
        PluginRecord::new(GRPC, "containers").requires(&[METADATA]),
        PluginRecord::new(GRPC, "images").requires(&[METADATA, GC]),
        PluginRecord::new(DIFFER, "walking").requires(&[METADATA]),
        PluginRecord::new(GRPC, "diff").requires(&[DIFFER]),
        PluginRecord::new("io.containerd.runtime.v2", "task").requires(&[EVENT, METADATA]),
        PluginRecord::new(GRPC, "tasks").requires(&["io.containerd.runtime.v2", METADATA]),
        PluginRecord::new(GRPC, "events").requires(&[EVENT]),
    ]);
    records
}

fn create_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("create {}", path.display()))
}

/// Binds the unix socket: replaces a stale one, refuses to steal a live one,
/// and leaves it mode 0660 owned by the configured uid/gid.
fn bind_socket(path: &Path, uid: u32, gid: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        create_dir(parent, 0o711)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon is already serving on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
