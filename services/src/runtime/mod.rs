//! The runtime manager: starts a shim per task (containerd's shim v2
//! contract), keeps a ttrpc client to each, reconnects to live shims when
//! the daemon starts and cleans up after dead ones.
//!
//! Bundles live at `<state>/io.containerd.runtime.v2.task/<ns>/<id>`:
//! `config.json` (the OCI spec), `rootfs/` (mounted by the shim), `address`
//! (written by the shim), and `shim-binary-path` (written here, so a dead
//! shim's `delete` can be run after a daemon restart).

mod events;
pub mod shim;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::containerd::events::{TaskDelete, TaskExit};
use berth_proto::containerd::task::v2 as shimapi;
use berth_proto::containerd::types::Mount;
use tonic::Status;

use crate::events::Exchange;
pub use events::ShimEvents;
pub use shim::Shim;

/// The runtime plugin's directory name under state, as containerd's.
pub const TASK_DIR: &str = "io.containerd.runtime.v2.task";
/// Longest a shim gets to start, or to answer a reconnect.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a task is created from.
pub struct CreateOpts {
    pub runtime: String,
    pub runtime_options: Option<prost_types::Any>,
    pub spec: Vec<u8>,
    pub rootfs: Vec<Mount>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub task_options: Option<prost_types::Any>,
}

pub struct RuntimeManager {
    root: PathBuf,
    grpc_address: PathBuf,
    ttrpc_address: PathBuf,
    events: Exchange,
    tasks: Mutex<HashMap<(String, String), Arc<Shim>>>,
}

impl RuntimeManager {
    pub fn new(
        state: &Path,
        grpc_address: &Path,
        ttrpc_address: &Path,
        events: Exchange,
    ) -> RuntimeManager {
        RuntimeManager {
            root: state.join(TASK_DIR),
            grpc_address: grpc_address.to_path_buf(),
            ttrpc_address: ttrpc_address.to_path_buf(),
            events,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn bundle(&self, ns: &str, id: &str) -> PathBuf {
        self.root.join(ns).join(id)
    }

    /// The live task `id` in `ns`.
    pub fn get(&self, ns: &str, id: &str) -> Result<Arc<Shim>, Status> {
        self.lock()
            .get(&(ns.to_string(), id.to_string()))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("task {id}: not found")))
    }

    /// Every live task of `ns`.
    pub fn list(&self, ns: &str) -> Vec<Arc<Shim>> {
        let mut all: Vec<Arc<Shim>> = self
            .lock()
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|(_, s)| s.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Shim>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a shim for the container and creates its task. On any failure
    /// nothing is left behind: no shim, no bundle.
    pub async fn create(
        self: &Arc<Self>,
        ns: &str,
        id: &str,
        opts: CreateOpts,
    ) -> Result<(Arc<Shim>, u32), Status> {
        let key = (ns.to_string(), id.to_string());
        let bundle = self.bundle(ns, id);
        {
            let tasks = self.lock();
            if tasks.contains_key(&key) || bundle.exists() {
                return Err(Status::already_exists(format!("task {id}: already exists")));
            }
        }
        let binary = shim::binary_for(&opts.runtime)?;
        shim::prepare_bundle(&bundle, &opts.spec, &binary).await?;
        let shim = match Shim::start(
            ns,
            id,
            &bundle,
            &binary,
            &opts.runtime,
            opts.runtime_options.as_ref(),
            &self.grpc_address,
            &self.ttrpc_address,
            SHIM_START_TIMEOUT,
        )
        .await
        {
            Ok(s) => Arc::new(s),
            Err(e) => {
                shim::remove_bundle(&bundle).await;
                return Err(e);
            }
        };
        let created = shim
            .client
            .create(&shimapi::CreateTaskRequest {
                id: id.to_string(),
                bundle: bundle.display().to_string(),
                rootfs: opts.rootfs,
                terminal: opts.terminal,
                stdin: opts.stdin,
                stdout: opts.stdout,
                stderr: opts.stderr,
                checkpoint: String::new(),
                parent_checkpoint: String::new(),
                options: opts.task_options,
            })
            .await;
        match created {
            Ok(resp) => {
                self.register(ns, id, shim.clone());
                Ok((shim, resp.pid))
            }
            Err(e) => {
                let status = shim::to_status(e);
                shim.kill_and_cleanup(ns).await;
                // The shim may not have answered (e.g. a timeout mid-create):
                // `<shim> delete` force-deletes whatever the runtime created.
                if let Err(e) = shim::run_delete(
                    ns,
                    id,
                    &bundle,
                    &self.grpc_address,
                    &self.ttrpc_address,
                    SHIM_START_TIMEOUT,
                )
                .await
                {
                    tracing::debug!(namespace = %ns, id = %id, error = %e.message(), "shim delete after failed create");
                }
                shim::remove_bundle(&bundle).await;
                Err(status)
            }
        }
    }

    /// Tracks a live shim, and cleans up after it if it dies with its task
    /// still registered (killed, crashed): exit and delete events, bundle
    /// removed, as containerd does for a dead shim.
    fn register(self: &Arc<Self>, ns: &str, id: &str, shim: Arc<Shim>) {
        let key = (ns.to_string(), id.to_string());
        self.lock().insert(key.clone(), shim.clone());
        let manager = Arc::downgrade(self);
        tokio::spawn(async move {
            shim.client.client().closed().await;
            let Some(manager) = manager.upgrade() else {
                return;
            };
            let orphaned = {
                let mut tasks = manager.lock();
                let ours = tasks.get(&key).is_some_and(|s| Arc::ptr_eq(s, &shim));
                if ours {
                    tasks.remove(&key);
                }
                ours
            };
            if orphaned {
                tracing::warn!(namespace = %key.0, id = %key.1, "shim died; cleaning up its task");
                manager.cleanup_dead(&key.0, &key.1, &shim.bundle).await;
            }
        });
    }

    /// Deletes the task's init process, stops its shim and removes the
    /// bundle.
    pub async fn delete(&self, ns: &str, id: &str) -> Result<shimapi::DeleteResponse, Status> {
        let shim = self.get(ns, id)?;
        let resp = shim
            .client
            .delete(&shimapi::DeleteRequest {
                id: id.to_string(),
                exec_id: String::new(),
            })
            .await
            .map_err(shim::to_status)?;
        self.lock().remove(&(ns.to_string(), id.to_string()));
        shim.shutdown().await;
        shim::remove_bundle(&shim.bundle).await;
        Ok(resp)
    }

    /// Reconnects to the shims of tasks that outlived the previous daemon
    /// and cleans up after those whose shim is gone: all in parallel, each
    /// bounded in time.
    pub async fn restore(self: &Arc<Self>) {
        let bundles = match shim::list_bundles(&self.root).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, root = %self.root.display(), "cannot list task bundles");
                return;
            }
        };
        let jobs = bundles.into_iter().map(|(ns, id, bundle)| {
            let me = self.clone();
            tokio::spawn(async move { me.restore_one(ns, id, bundle).await })
        });
        for job in futures::future::join_all(jobs).await {
            if let Err(e) = job {
                tracing::warn!(error = %e, "task restore failed");
            }
        }
    }

    async fn restore_one(self: &Arc<Self>, ns: String, id: String, bundle: PathBuf) {
        let deadline = tokio::time::Instant::now() + RECONNECT_TIMEOUT;
        match tokio::time::timeout_at(deadline, Shim::reconnect(&id, &bundle)).await {
            Ok(Ok((shim, task_pid))) => {
                if task_pid == 0 && !shim.has_task(deadline).await {
                    // Started, but the previous daemon died before its task was created (as
                    // containerd, which cleans such leaked shims up): no task, no events.
                    tracing::info!(namespace = %ns, id = %id, "shim without a task; removing it");
                    shim.shutdown().await;
                    shim::remove_bundle(&bundle).await;
                    return;
                }
                tracing::info!(namespace = %ns, id = %id, "reconnected to shim");
                self.register(&ns, &id, Arc::new(shim));
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.message().to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::info!(namespace = %ns, id = %id, reason = %why, "shim is gone; cleaning up");
                self.cleanup_dead(&ns, &id, &bundle).await;
            }
        }
    }

    /// What containerd does for a dead shim: run `<shim> delete` in the
    /// bundle (it reaps the container and reports its exit), publish the
    /// exit and delete events, and remove the bundle.
    async fn cleanup_dead(&self, ns: &str, id: &str, bundle: &Path) {
        let resp = shim::run_delete(
            ns,
            id,
            bundle,
            &self.grpc_address,
            &self.ttrpc_address,
            SHIM_START_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(namespace = %ns, id = %id, error = %e.message(), "shim delete failed");
            shimapi::DeleteResponse {
                pid: 0,
                exit_status: 255,
                exited_at: Some(std::time::SystemTime::now().into()),
            }
        });
        shim::unmount_rootfs(bundle).await;
        shim::remove_bundle(bundle).await;
        self.events.publish(
            ns,
            "/tasks/exit",
            &TaskExit {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: resp.pid,
                exit_status: resp.exit_status,
                exited_at: resp.exited_at,
            },
        );
        self.events.publish(
            ns,
            "/tasks/delete",
            &TaskDelete {
                container_id: id.to_string(),
                pid: resp.pid,
                exit_status: resp.exit_status,
                exited_at: resp.exited_at,
                id: String::new(),
            },
        );
    }
}
