//! `containerd.services.tasks.v1.Tasks`: thin handlers that find the
//! container's record and forward to its shim through the runtime manager.

use std::sync::Arc;
use std::time::SystemTime;

use berth_filters::{self as filters, Adaptor};
use berth_metadata::Db;
use berth_proto::containerd::services::tasks::v1::{
    tasks_server::Tasks, CheckpointTaskRequest, CheckpointTaskResponse, CloseIoRequest,
    CreateTaskRequest, CreateTaskResponse, DeleteProcessRequest, DeleteResponse, DeleteTaskRequest,
    ExecProcessRequest, GetRequest, GetResponse, KillRequest, ListPidsRequest, ListPidsResponse,
    ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, PauseTaskRequest,
    ResizePtyRequest, ResumeTaskRequest, StartRequest, StartResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use berth_proto::containerd::task::v2 as shimapi;
use berth_proto::containerd::types::Metric;
use berth_proto::containerd::v1::types::Process;
use tonic::{Request, Response, Status};

use crate::error::blocking;
use crate::namespace::namespace;
use crate::runtime::{shim::to_status, CreateOpts, RuntimeManager, Shim};

pub struct TasksService {
    db: Arc<Db>,
    runtime: Arc<RuntimeManager>,
}

impl TasksService {
    pub fn new(db: Arc<Db>, runtime: Arc<RuntimeManager>) -> Self {
        TasksService { db, runtime }
    }
}

async fn state(shim: &Shim, exec_id: &str) -> Result<Process, Status> {
    let s = shim
        .client
        .state(&shimapi::StateRequest {
            id: shim.id.clone(),
            exec_id: exec_id.to_string(),
        })
        .await
        .map_err(to_status)?;
    // containerd's `id` is the process's: the container id for the init
    // process, the exec id otherwise.
    let id = if exec_id.is_empty() {
        shim.id.clone()
    } else {
        exec_id.to_string()
    };
    Ok(Process {
        container_id: shim.id.clone(),
        id,
        pid: s.pid,
        status: s.status,
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
        exit_status: s.exit_status,
        exited_at: s.exited_at,
    })
}

fn delete_response(id: String, r: shimapi::DeleteResponse) -> DeleteResponse {
    DeleteResponse {
        id,
        pid: r.pid,
        exit_status: r.exit_status,
        exited_at: r.exited_at,
    }
}

struct TaskFields<'a>(&'a Process);

impl Adaptor for TaskFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match (path.first().map(String::as_str)?, path.len()) {
            ("id", 1) => Some(self.0.id.clone()),
            ("container_id", 1) => Some(self.0.container_id.clone()),
            ("pid", 1) => Some(self.0.pid.to_string()),
            ("status", 1) => berth_proto::containerd::v1::types::Status::try_from(self.0.status)
                .ok()
                .map(|s| s.as_str_name().to_lowercase()),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn create(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        if req.checkpoint.is_some() {
            return Err(Status::unimplemented(
                "restoring from a checkpoint is not supported",
            ));
        }
        let (db, n, id) = (self.db.clone(), ns.clone(), req.container_id.clone());
        let container = blocking(move || db.containers().get(&n, &id)).await?;
        let spec = container
            .spec
            .ok_or_else(|| Status::failed_precondition("container has no spec"))?
            .value;
        let runtime_options = container.runtime.options.map(|a| prost_types::Any {
            type_url: a.type_url,
            value: a.value,
        });
        let task_options = req.options.or_else(|| runtime_options.clone());
        let (_, pid) = self
            .runtime
            .create(
                &ns,
                &req.container_id,
                CreateOpts {
                    runtime: container.runtime.name,
                    runtime_options,
                    spec,
                    rootfs: req.rootfs,
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    terminal: req.terminal,
                    task_options,
                },
            )
            .await?;
        Ok(Response::new(CreateTaskResponse {
            container_id: req.container_id,
            pid,
        }))
    }

    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<StartResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let shim = self.runtime.get(&ns, &req.container_id)?;
        let r = shim
            .client
            .start(&shimapi::StartRequest {
                id: req.container_id,
                exec_id: req.exec_id,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(StartResponse { pid: r.pid }))
    }

    async fn delete(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let id = request.into_inner().container_id;
        let r = self.runtime.delete(&ns, &id).await?;
        Ok(Response::new(delete_response(id, r)))
    }

    async fn delete_process(
        &self,
        request: Request<DeleteProcessRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "exec id must be set; delete the task instead",
            ));
        }
        let shim = self.runtime.get(&ns, &req.container_id)?;
        let r = shim
            .client
            .delete(&shimapi::DeleteRequest {
                id: req.container_id,
                exec_id: req.exec_id.clone(),
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(delete_response(req.exec_id, r)))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let shim = self.runtime.get(&ns, &req.container_id)?;
        let process = state(&shim, &req.exec_id).await?;
        Ok(Response::new(GetResponse {
            process: Some(process),
        }))
    }

    async fn list(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let filter =
            filters::parse(&request.into_inner().filter).map_err(crate::error::to_status)?;
        let mut tasks = Vec::new();
        for shim in self.runtime.list(&ns) {
            // A shim that stopped answering is skipped, not fatal to the list.
            match state(&shim, "").await {
                Ok(p) if filter.matches(&TaskFields(&p)) => tasks.push(p),
                Ok(_) => {}
                Err(e) => tracing::debug!(id = %shim.id, error = %e.message(), "task state"),
            }
        }
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let shim = self.runtime.get(&ns, &req.container_id)?;
        shim.client
            .kill(&shimapi::KillRequest {
                id: req.container_id,
                exec_id: req.exec_id,
                signal: req.signal,
                all: req.all,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn exec(&self, request: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec id must not be empty"));
        }
        // containerd's rule for exec ids too: they name files in the bundle and FIFOs.
        berth_metadata::validate::validate_identifier("exec id", &req.exec_id)
            .map_err(crate::error::to_status)?;
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("process spec must be set"))?;
        let shim = self.runtime.get(&ns, &req.container_id)?;
        shim.client
            .exec(&shimapi::ExecProcessRequest {
                id: req.container_id,
                exec_id: req.exec_id,
                terminal: req.terminal,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                spec: Some(spec),
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let shim = self.runtime.get(&ns, &req.container_id)?;
        shim.client
            .resize_pty(&shimapi::ResizePtyRequest {
                id: req.container_id,
                exec_id: req.exec_id,
                width: req.width,
                height: req.height,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, request: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let shim = self.runtime.get(&ns, &req.container_id)?;
        shim.client
            .close_io(&shimapi::CloseIoRequest {
                id: req.container_id,
                exec_id: req.exec_id,
                stdin: req.stdin,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn pause(&self, request: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let id = request.into_inner().container_id;
        let shim = self.runtime.get(&ns, &id)?;
        shim.client
            .pause(&shimapi::PauseRequest { id })
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn resume(&self, request: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let id = request.into_inner().container_id;
        let shim = self.runtime.get(&ns, &id)?;
        shim.client
            .resume(&shimapi::ResumeRequest { id })
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        request: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let id = request.into_inner().container_id;
        let shim = self.runtime.get(&ns, &id)?;
        let r = shim
            .client
            .pids(&shimapi::PidsRequest { id })
            .await
            .map_err(to_status)?;
        Ok(Response::new(ListPidsResponse {
            processes: r.processes,
        }))
    }

    async fn checkpoint(
        &self,
        _: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        Err(Status::unimplemented(
            "checkpoint is not supported by berthd",
        ))
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let shim = self.runtime.get(&ns, &req.container_id)?;
        shim.client
            .update(&shimapi::UpdateTaskRequest {
                id: req.container_id,
                resources: req.resources,
                annotations: req.annotations,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        request: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let filter =
            filters::parse_all(&request.into_inner().filters).map_err(crate::error::to_status)?;
        let mut metrics = Vec::new();
        for shim in self.runtime.list(&ns) {
            let Ok(process) = state(&shim, "").await else {
                continue;
            };
            if !filter.matches(&TaskFields(&process)) {
                continue;
            }
            let stats = shim
                .client
                .stats(&shimapi::StatsRequest {
                    id: shim.id.clone(),
                })
                .await
                .map_err(to_status)?;
            metrics.push(Metric {
                timestamp: Some(SystemTime::now().into()),
                id: shim.id.clone(),
                data: stats.stats,
            });
        }
        Ok(Response::new(MetricsResponse { metrics }))
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let shim = self.runtime.get(&ns, &req.container_id)?;
        let r = shim
            .client
            .wait(&shimapi::WaitRequest {
                id: req.container_id,
                exec_id: req.exec_id,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(WaitResponse {
            exit_status: r.exit_status,
            exited_at: r.exited_at,
        }))
    }
}
