//! The `containerd.task.v2.Task` service: containers and their processes, driven through an
//! [`OciRuntime`], with events published in order.
//!
//! State lives behind one `std` mutex that is never held across an await. Exits come from the
//! reaper through [`TaskService::handle_exit`]; an exit whose process is still being started
//! (its start event not yet published) is held back until the start event is queued, and an
//! exit of a pid not known yet (an exec that ended before `runc exec` returned) is kept
//! until the pid is learned.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_errdefs::ErrorKind;
use berth_proto::containerd::events as ev;
use berth_proto::containerd::runc::v1::{Options as RuncOptions, ProcessDetails};
use berth_proto::containerd::task::v2 as api;
use berth_proto::containerd::v1::types::{ProcessInfo, Status};
use prost::{Message, Name};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::reaper::{Exit, Reaper};
use crate::runtime::{self, OciRuntime, ProcessOpts, RuncCli, RuntimeConfig};
use crate::stdio::{self, Prepared, ProcessIo, StdioPaths};
use crate::ttrpc::{self, decode, encode, BoxFuture, RequestContext};

/// The file in the bundle where the init process's exit is recorded.
pub const EXIT_STATUS_FILE: &str = "exit-status.json";
/// The init pid file in the bundle.
pub const INIT_PID_FILE: &str = "init.pid";

/// How long `Delete` waits for a process's output to drain.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// An exit as recorded in the bundle.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    pub pid: u32,
    pub exit_status: u32,
    /// Nanoseconds since the Unix epoch.
    pub exited_at_ns: u128,
}

impl ExitRecord {
    fn from_exit(e: &Exit) -> ExitRecord {
        ExitRecord {
            pid: e.pid as u32,
            exit_status: e.status as u32,
            exited_at_ns: e
                .at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        }
    }

    pub fn exited_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_nanos(self.exited_at_ns.min(u64::MAX as u128) as u64)
    }

    /// The exit recorded in `bundle`, if any.
    pub fn load(bundle: &Path) -> Option<ExitRecord> {
        let data = std::fs::read(bundle.join(EXIT_STATUS_FILE)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let tmp = bundle.join(format!(".{EXIT_STATUS_FILE}"));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, bundle.join(EXIT_STATUS_FILE))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

struct Process {
    exec_id: String,
    pid: u32,
    status: ProcStatus,
    stdio: StdioPaths,
    /// The OCI process JSON of an exec.
    spec: Vec<u8>,
    /// A start is in flight: exits wait in `pending_exit`.
    starting: bool,
    pending_exit: Option<Exit>,
    exit: Option<ExitRecord>,
    exit_tx: watch::Sender<Option<ExitRecord>>,
    io: Option<ProcessIo>,
}

impl Process {
    fn new(exec_id: &str, stdio: StdioPaths, spec: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            pid: 0,
            status: ProcStatus::Created,
            stdio,
            spec,
            starting: false,
            pending_exit: None,
            exit: None,
            exit_tx: watch::channel(None).0,
            io: None,
        }
    }

    fn state(&self, container: &Container) -> api::StateResponse {
        let status = match self.status {
            ProcStatus::Created => Status::Created,
            ProcStatus::Running => Status::Running,
            ProcStatus::Paused => Status::Paused,
            ProcStatus::Stopped => Status::Stopped,
        };
        api::StateResponse {
            id: container.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: self.pid,
            status: status as i32,
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
            exit_status: self.exit.map_or(0, |e| e.exit_status),
            exited_at: self.exit.map(|e| e.exited_at().into()),
            exec_id: self.exec_id.clone(),
        }
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    runtime: Arc<dyn OciRuntime>,
    rootfs_mounted: bool,
    init: Process,
    execs: HashMap<String, Process>,
    /// The OOM watch, if the host has a v1 memory controller.
    oom: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(h) = &self.oom {
            h.abort();
        }
    }
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::not_found(format!("process {exec_id} not found")))
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::not_found(format!("process {exec_id} not found")))
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Ids whose Create is in flight.
    creating: Vec<String>,
    /// Exits of pids not known yet (newest last).
    unmatched: VecDeque<Exit>,
}

impl State {
    fn container(&self, id: &str) -> Result<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| Error::not_found(format!("container {id} not found")))
    }

    fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("container {id} not found")))
    }

    fn take_unmatched(&mut self, pid: u32) -> Option<Exit> {
        let i = self.unmatched.iter().rposition(|e| e.pid as u32 == pid)?;
        self.unmatched.remove(i)
    }
}

const UNMATCHED_LIMIT: usize = 256;

/// The shim's task service.
pub struct TaskService {
    namespace: String,
    state: Mutex<State>,
    reaper: Arc<Reaper>,
    publisher: Publisher,
    /// Notified when the shim should exit.
    shutdown: Arc<Notify>,
    /// Where console sockets are created.
    console_dir: PathBuf,
    /// The shim's own socket, removed as soon as a shutdown is decided.
    socket: Option<PathBuf>,
}

impl TaskService {
    pub fn new(
        namespace: &str,
        reaper: Arc<Reaper>,
        publisher: Publisher,
        shutdown: Arc<Notify>,
        socket: Option<PathBuf>,
    ) -> Arc<TaskService> {
        Arc::new(TaskService {
            namespace: namespace.to_string(),
            state: Mutex::new(State::default()),
            reaper,
            publisher,
            shutdown,
            console_dir: Path::new(crate::STATE_DIR).join("c"),
            socket,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Records the exit of a child the reaper did not spawn for a runtime call.
    pub fn handle_exit(&self, exit: Exit) {
        let mut st = self.lock();
        let found = st.containers.iter().find_map(|(id, c)| {
            std::iter::once(&c.init)
                .chain(c.execs.values())
                .find(|p| p.pid == exit.pid as u32 && p.exit.is_none() && p.pid != 0)
                .map(|p| (id.clone(), p.exec_id.clone()))
        });
        let Some((id, exec_id)) = found else {
            st.unmatched.push_back(exit);
            if st.unmatched.len() > UNMATCHED_LIMIT {
                st.unmatched.pop_front();
            }
            return;
        };
        let c = st.containers.get_mut(&id).expect("found above");
        let bundle = c.bundle.clone();
        let p = c.process_mut(&exec_id).expect("found above");
        if p.starting {
            p.pending_exit = Some(exit);
            return;
        }
        self.finish_exit(&id, &bundle, p, exit);
    }

    /// Marks `p` exited, records it and publishes `/tasks/exit`.
    fn finish_exit(&self, id: &str, bundle: &Path, p: &mut Process, exit: Exit) {
        let record = ExitRecord::from_exit(&exit);
        p.status = ProcStatus::Stopped;
        p.exit = Some(record);
        if p.exec_id.is_empty() {
            if let Err(e) = record.save(bundle) {
                log_line!("record exit status in {}: {e}", bundle.display());
            }
        }
        p.exit_tx.send_replace(Some(record));
        self.publisher.publish(
            "/tasks/exit",
            &ev::TaskExit {
                container_id: id.to_string(),
                id: if p.exec_id.is_empty() {
                    id.to_string()
                } else {
                    p.exec_id.clone()
                },
                pid: record.pid,
                exit_status: record.exit_status,
                exited_at: Some(record.exited_at().into()),
            },
        );
    }

    /// Ends a start: clears `starting`, then applies an exit that came meanwhile.
    fn end_start(&self, st: &mut State, id: &str, exec_id: &str) {
        let pending = {
            let Ok(c) = st.container_mut(id) else { return };
            let Ok(p) = c.process_mut(exec_id) else {
                return;
            };
            p.starting = false;
            p.pending_exit.take()
        };
        let pid = st
            .container(id)
            .and_then(|c| c.process(exec_id))
            .map(|p| p.pid)
            .unwrap_or(0);
        let exit = pending.or_else(|| {
            if pid != 0 {
                st.take_unmatched(pid)
            } else {
                None
            }
        });
        if let Some(exit) = exit {
            let c = st.containers.get_mut(id).expect("checked above");
            let bundle = c.bundle.clone();
            let p = c.process_mut(exec_id).expect("checked above");
            if p.exit.is_none() {
                self.finish_exit(id, &bundle, p, exit);
            }
        }
    }

    async fn create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        if req.id.is_empty() {
            return Err(Error::invalid("container id is empty"));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::new(
                ErrorKind::NotImplemented,
                "restoring from a checkpoint is not supported",
            ));
        }
        {
            let mut st = self.lock();
            if st.containers.contains_key(&req.id) || st.creating.contains(&req.id) {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("container {} already exists", req.id),
                ));
            }
            st.creating.push(req.id.clone());
        }
        let result = self.create_inner(&req).await;
        let mut st = self.lock();
        st.creating.retain(|i| i != &req.id);
        let mut container = result?;
        let pid = container.init.pid;
        match crate::oom::watch(&req.id, pid, self.publisher.clone()) {
            Ok(w) => container.oom = w,
            Err(e) => log_line!("watch OOM events of {}: {e}", req.id),
        }
        st.containers.insert(req.id.clone(), container);
        self.publisher.publish(
            "/tasks/create",
            &ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(ev::TaskIo {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
            },
        );
        // An init killed between create and now.
        if let Some(exit) = st.take_unmatched(pid) {
            let c = st.containers.get_mut(&req.id).expect("inserted above");
            let bundle = c.bundle.clone();
            self.finish_exit(&req.id, &bundle, &mut c.init, exit);
        }
        Ok(api::CreateTaskResponse { pid })
    }

    async fn create_inner(&self, req: &api::CreateTaskRequest) -> Result<Container> {
        let bundle = PathBuf::from(&req.bundle);
        let options = match &req.options {
            Some(any) if !any.value.is_empty() || !any.type_url.is_empty() => {
                if !any.type_url.ends_with(RuncOptions::full_name().as_str()) {
                    return Err(Error::invalid(format!(
                        "unsupported runtime options type {}",
                        any.type_url
                    )));
                }
                Some(
                    RuncOptions::decode(any.value.as_slice())
                        .map_err(|e| Error::invalid(format!("decode runtime options: {e}")))?,
                )
            }
            _ => None,
        };
        let config = RuntimeConfig::from_options(&self.namespace, options.as_ref());
        std::fs::create_dir_all(&config.root)
            .map_err(|e| Error::io(format!("create {}", config.root.display()), e))?;
        config.save(&bundle)?;
        let runtime: Arc<dyn OciRuntime> =
            Arc::new(RuncCli::new(config, &bundle, self.reaper.clone()));

        let rootfs = bundle.join("rootfs");
        let mounted = !req.rootfs.is_empty();
        if mounted {
            crate::mount::mount_all(&req.rootfs, &rootfs, &self.reaper).await?;
        }
        let stdio_paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let pid_file = bundle.join(INIT_PID_FILE);
        let created = async {
            let mut prepared = stdio::prepare(&stdio_paths, &self.console_dir).await?;
            let io = run_with_stdio(&mut prepared, &pid_file, |opts| {
                runtime.create(&req.id, &bundle, opts)
            })
            .await?;
            let pid = read_pid(&pid_file)?;
            Ok::<_, Error>((pid, io))
        }
        .await;
        let (pid, io) = match created {
            Ok(v) => v,
            Err(e) => {
                let _ = runtime.delete(&req.id, true).await;
                if mounted {
                    let _ = crate::mount::unmount_all(&rootfs);
                }
                return Err(e);
            }
        };
        let mut init = Process::new("", stdio_paths, Vec::new());
        init.pid = pid;
        init.io = Some(io);
        Ok(Container {
            id: req.id.clone(),
            bundle,
            runtime,
            rootfs_mounted: mounted,
            init,
            execs: HashMap::new(),
            oom: None,
        })
    }

    async fn start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        if req.exec_id.is_empty() {
            self.start_init(&req.id).await
        } else {
            self.start_exec(&req.id, &req.exec_id).await
        }
    }

    async fn start_init(&self, id: &str) -> Result<api::StartResponse> {
        let runtime = {
            let mut st = self.lock();
            let c = st.container_mut(id)?;
            if c.init.status != ProcStatus::Created || c.init.starting {
                return Err(Error::precondition(format!(
                    "container {id} is not in the created state"
                )));
            }
            c.init.starting = true;
            c.runtime.clone()
        };
        let result = runtime.start(id).await;
        let mut st = self.lock();
        let pid = match (&result, st.container_mut(id)) {
            (Ok(()), Ok(c)) => {
                if c.init.exit.is_none() && c.init.pending_exit.is_none() {
                    c.init.status = ProcStatus::Running;
                }
                let pid = c.init.pid;
                self.publisher.publish(
                    "/tasks/start",
                    &ev::TaskStart {
                        container_id: id.to_string(),
                        pid,
                    },
                );
                pid
            }
            _ => 0,
        };
        self.end_start(&mut st, id, "");
        result.map(|()| api::StartResponse { pid })
    }

    async fn start_exec(&self, id: &str, exec_id: &str) -> Result<api::StartResponse> {
        let (runtime, bundle, stdio_paths, spec) = {
            let mut st = self.lock();
            let c = st.container_mut(id)?;
            if c.init.exit.is_some() {
                return Err(Error::precondition(format!(
                    "container {id} is not running"
                )));
            }
            let runtime = c.runtime.clone();
            let bundle = c.bundle.clone();
            let p = c.process_mut(exec_id)?;
            if p.status != ProcStatus::Created || p.starting {
                return Err(Error::precondition(format!(
                    "process {exec_id} is not in the created state"
                )));
            }
            p.starting = true;
            (runtime, bundle, p.stdio.clone(), p.spec.clone())
        };
        let name = file_safe(exec_id);
        let spec_path = bundle.join(format!("exec-{name}.json"));
        let pid_file = bundle.join(format!("exec-{name}.pid"));
        let started = async {
            std::fs::write(&spec_path, &spec)
                .map_err(|e| Error::io(format!("write {}", spec_path.display()), e))?;
            let mut prepared = stdio::prepare(&stdio_paths, &self.console_dir).await?;
            let io = run_with_stdio(&mut prepared, &pid_file, |opts| {
                runtime.exec(id, &spec_path, opts)
            })
            .await?;
            Ok::<_, Error>((read_pid(&pid_file)?, io))
        }
        .await;
        let _ = std::fs::remove_file(&spec_path);
        let _ = std::fs::remove_file(&pid_file);
        let mut st = self.lock();
        let result = match (started, st.container_mut(id)) {
            (Ok((pid, io)), Ok(c)) => {
                if let Ok(p) = c.process_mut(exec_id) {
                    p.pid = pid;
                    p.io = Some(io);
                    if p.exit.is_none() {
                        p.status = ProcStatus::Running;
                    }
                }
                self.publisher.publish(
                    "/tasks/exec-started",
                    &ev::TaskExecStarted {
                        container_id: id.to_string(),
                        exec_id: exec_id.to_string(),
                        pid,
                    },
                );
                Ok(api::StartResponse { pid })
            }
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        };
        self.end_start(&mut st, id, exec_id);
        result
    }

    async fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut p = {
                let mut st = self.lock();
                let c = st.container_mut(&req.id)?;
                let p = c.process(&req.exec_id)?;
                if matches!(p.status, ProcStatus::Running | ProcStatus::Paused) || p.starting {
                    return Err(Error::precondition(format!(
                        "cannot delete running process {}",
                        req.exec_id
                    )));
                }
                c.execs.remove(&req.exec_id).expect("found above")
            };
            if let Some(io) = &mut p.io {
                io.wait_output(OUTPUT_DRAIN).await;
            }
            let exit = p.exit.unwrap_or(ExitRecord {
                pid: p.pid,
                exit_status: 0,
                exited_at_ns: 0,
            });
            return Ok(api::DeleteResponse {
                pid: exit.pid,
                exit_status: exit.exit_status,
                exited_at: Some(exit.exited_at().into()),
            });
        }

        let (runtime, created, mut rx) = {
            let st = self.lock();
            let c = st.container(&req.id)?;
            if matches!(c.init.status, ProcStatus::Running | ProcStatus::Paused) || c.init.starting
            {
                return Err(Error::precondition(format!(
                    "cannot delete running task {}",
                    req.id
                )));
            }
            (
                c.runtime.clone(),
                c.init.status == ProcStatus::Created,
                c.init.exit_tx.subscribe(),
            )
        };
        if let Err(e) = runtime.delete(&req.id, true).await {
            if !runtime::is_not_exist(&e) {
                return Err(e.context(format!("delete container {}", req.id)));
            }
        }
        if created {
            // The init was killed by the delete: take its real exit if it comes soon.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|e| e.is_some())).await;
        }
        let mut c = {
            let mut st = self.lock();
            st.containers
                .remove(&req.id)
                .ok_or_else(|| Error::not_found(format!("container {} not found", req.id)))?
        };
        if let Some(io) = &mut c.init.io {
            io.wait_output(OUTPUT_DRAIN).await;
        }
        for p in c.execs.values_mut() {
            if let Some(io) = &mut p.io {
                io.wait_output(Duration::from_millis(500)).await;
            }
        }
        if c.rootfs_mounted {
            crate::mount::unmount_all(&c.bundle.join("rootfs"))?;
        }
        let exit = c.init.exit.unwrap_or_else(|| ExitRecord {
            pid: c.init.pid,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at_ns: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        });
        self.publisher.publish(
            "/tasks/delete",
            &ev::TaskDelete {
                container_id: req.id.clone(),
                pid: exit.pid,
                exit_status: exit.exit_status,
                exited_at: Some(exit.exited_at().into()),
                id: String::new(),
            },
        );
        Ok(api::DeleteResponse {
            pid: exit.pid,
            exit_status: exit.exit_status,
            exited_at: Some(exit.exited_at().into()),
        })
    }

    fn state(&self, req: api::StateRequest) -> Result<api::StateResponse> {
        let st = self.lock();
        if st.creating.contains(&req.id) {
            // Not NotFound: a daemon restarting mid-create must not take this shim for empty.
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("container {} is being created", req.id),
            ));
        }
        let c = st.container(&req.id)?;
        Ok(c.process(&req.exec_id)?.state(c))
    }

    async fn kill(&self, req: api::KillRequest) -> Result<()> {
        let (runtime, pid) = {
            let st = self.lock();
            let c = st.container(&req.id)?;
            let p = c.process(&req.exec_id)?;
            if p.exit.is_some() && !(req.all && req.exec_id.is_empty()) {
                return Err(Error::not_found("process already finished"));
            }
            (c.runtime.clone(), p.pid)
        };
        if req.exec_id.is_empty() {
            return runtime
                .kill(&req.id, req.signal, req.all)
                .await
                .map_err(|e| {
                    if runtime::is_process_gone(&e) {
                        Error::not_found("process already finished")
                    } else {
                        e
                    }
                });
        }
        if pid == 0 {
            return Err(Error::precondition(format!(
                "process {} has not been started",
                req.exec_id
            )));
        }
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| Error::invalid(format!("invalid signal {}", req.signal)))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).map_err(|e| {
            if e == nix::Error::ESRCH {
                Error::not_found("process already finished")
            } else {
                Error::from(e).context(format!("kill process {}", req.exec_id))
            }
        })
    }

    fn exec(&self, req: api::ExecProcessRequest) -> Result<()> {
        if req.exec_id.is_empty() {
            return Err(Error::invalid("exec id is empty"));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .ok_or_else(|| Error::invalid("exec without a process spec"))?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(|e| Error::invalid(format!("exec process spec is not JSON: {e}")))?;
        let mut st = self.lock();
        let c = st.container_mut(&req.id)?;
        if c.init.exit.is_some() {
            return Err(Error::precondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("id {} already in use", req.exec_id),
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        c.execs
            .insert(req.exec_id.clone(), Process::new(&req.exec_id, stdio, spec));
        self.publisher.publish(
            "/tasks/exec-added",
            &ev::TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
            },
        );
        Ok(())
    }

    async fn wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse> {
        let mut rx = {
            let st = self.lock();
            st.container(&req.id)?
                .process(&req.exec_id)?
                .exit_tx
                .subscribe()
        };
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Error::not_found("process deleted while waiting"))?
            .expect("waited for Some");
        Ok(api::WaitResponse {
            exit_status: exit.exit_status,
            exited_at: Some(exit.exited_at().into()),
        })
    }

    async fn pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse> {
        let runtime = self.lock().container(&req.id)?.runtime.clone();
        let pids = runtime.ps(&req.id).await?;
        let st = self.lock();
        let c = st.container(&req.id)?;
        let processes = pids
            .into_iter()
            .map(|pid| {
                let info = c
                    .execs
                    .values()
                    .find(|p| p.pid == pid)
                    .map(|p| prost_types::Any {
                        type_url: ProcessDetails::full_name(),
                        value: ProcessDetails {
                            exec_id: p.exec_id.clone(),
                        }
                        .encode_to_vec(),
                    });
                ProcessInfo { pid, info }
            })
            .collect();
        Ok(api::PidsResponse { processes })
    }

    async fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let runtime = {
            let st = self.lock();
            let c = st.container(id)?;
            let want = if pause {
                ProcStatus::Running
            } else {
                ProcStatus::Paused
            };
            if c.init.status != want {
                return Err(Error::precondition(format!(
                    "container {id} is not {}",
                    if pause { "running" } else { "paused" }
                )));
            }
            c.runtime.clone()
        };
        if pause {
            runtime.pause(id).await?;
        } else {
            runtime.resume(id).await?;
        }
        let mut st = self.lock();
        if let Ok(c) = st.container_mut(id) {
            if c.init.exit.is_none() {
                c.init.status = if pause {
                    ProcStatus::Paused
                } else {
                    ProcStatus::Running
                };
            }
        }
        if pause {
            self.publisher.publish(
                "/tasks/paused",
                &ev::TaskPaused {
                    container_id: id.to_string(),
                },
            );
        } else {
            self.publisher.publish(
                "/tasks/resumed",
                &ev::TaskResumed {
                    container_id: id.to_string(),
                },
            );
        }
        Ok(())
    }

    async fn update(&self, req: api::UpdateTaskRequest) -> Result<()> {
        let runtime = self.lock().container(&req.id)?.runtime.clone();
        let resources = req
            .resources
            .ok_or_else(|| Error::invalid("update without resources"))?;
        runtime.update(&req.id, &resources.value).await
    }

    fn resize_pty(&self, req: api::ResizePtyRequest) -> Result<()> {
        let st = self.lock();
        let p = st.container(&req.id)?.process(&req.exec_id)?;
        match &p.io {
            Some(io) => io.resize(req.width, req.height),
            None => Err(Error::precondition("the process has no terminal")),
        }
    }

    fn close_io(&self, req: api::CloseIoRequest) -> Result<()> {
        let mut st = self.lock();
        let p = st.container_mut(&req.id)?.process_mut(&req.exec_id)?;
        if req.stdin {
            if let Some(io) = &mut p.io {
                io.close_stdin();
            }
        }
        Ok(())
    }

    fn connect(&self, req: api::ConnectRequest) -> Result<api::ConnectResponse> {
        // As containerd's shim: an unknown id is not an error, just no task pid.
        let task_pid = self
            .lock()
            .containers
            .get(&req.id)
            .map_or(0, |c| c.init.pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.to_string(),
        })
    }

    fn shutdown(&self, req: api::ShutdownRequest) -> Result<()> {
        if !self.lock().containers.is_empty() && !req.now {
            return Ok(());
        }
        // No new client may reach a shim that is going away.
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
        self.shutdown.notify_one();
        Ok(())
    }
}

/// Runs a runtime call that hands stdio to a process, receiving the pty master in terminal
/// mode; returns the shim's side of the process's stdio.
async fn run_with_stdio<'a, F>(
    prepared: &mut Prepared,
    pid_file: &Path,
    call: F,
) -> Result<ProcessIo>
where
    F: FnOnce(ProcessOpts) -> runtime::RtFuture<'a, ()>,
{
    let opts = ProcessOpts {
        pid_file: pid_file.to_path_buf(),
        console_socket: prepared.console_socket().map(Path::to_path_buf),
        stdio: prepared.take_child_stdio(),
    };
    match prepared {
        Prepared::Pipes { io, .. } => {
            call(opts).await?;
            Ok(std::mem::take(io))
        }
        Prepared::Console {
            listener,
            paths,
            socket_path,
        } => {
            let run = call(opts);
            let receive = stdio::receive_console(listener);
            tokio::pin!(run, receive);
            // The runtime sends the master before it exits; wait for both, or its failure.
            let master = tokio::select! {
                r = &mut run => {
                    r?;
                    tokio::time::timeout(Duration::from_secs(10), &mut receive)
                        .await
                        .map_err(|_| Error::internal("the runtime sent no pty master"))??
                }
                m = &mut receive => {
                    let m = m?;
                    run.await?;
                    m
                }
            };
            let _ = std::fs::remove_file(&*socket_path);
            stdio::start_console(master, paths).await
        }
    }
}

fn read_pid(path: &Path) -> Result<u32> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read pid file {}", path.display()), e))?;
    s.trim()
        .parse()
        .map_err(|_| Error::internal(format!("bad pid file {}: {s:?}", path.display())))
}

/// A file-name-safe form of an exec id.
fn file_safe(id: &str) -> String {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !id.starts_with('.')
    {
        id.to_string()
    } else {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(id.as_bytes()))
    }
}

fn reply<M: Message>(r: Result<M>) -> std::result::Result<Vec<u8>, ttrpc::Status> {
    r.map(|m| encode(&m)).map_err(Into::into)
}

impl ttrpc::Service for TaskService {
    fn name(&self) -> &str {
        "containerd.task.v2.Task"
    }

    fn call(
        self: Arc<Self>,
        method: &str,
        _ctx: RequestContext,
        payload: Vec<u8>,
    ) -> BoxFuture<std::result::Result<Vec<u8>, ttrpc::Status>> {
        let method = method.to_string();
        Box::pin(async move {
            let p = payload.as_slice();
            match method.as_str() {
                "State" => reply(self.state(decode(p)?)),
                "Create" => reply(self.create(decode(p)?).await),
                "Start" => reply(self.start(decode(p)?).await),
                "Delete" => reply(self.delete(decode(p)?).await),
                "Pids" => reply(self.pids(decode(p)?).await),
                "Pause" => {
                    let r: api::PauseRequest = decode(p)?;
                    reply(self.pause(&r.id, true).await)
                }
                "Resume" => {
                    let r: api::ResumeRequest = decode(p)?;
                    reply(self.pause(&r.id, false).await)
                }
                "Checkpoint" => Err(ttrpc::status(
                    ttrpc::Code::Unimplemented,
                    "checkpoint is not supported by this shim",
                )),
                "Kill" => reply(self.kill(decode(p)?).await),
                "Exec" => reply(self.exec(decode(p)?)),
                "ResizePty" => reply(self.resize_pty(decode(p)?)),
                "CloseIO" => reply(self.close_io(decode(p)?)),
                "Update" => reply(self.update(decode(p)?).await),
                "Wait" => reply(self.wait(decode(p)?).await),
                "Stats" => {
                    let r: api::StatsRequest = decode(p)?;
                    reply(self.stats(&r.id).await)
                }
                "Connect" => reply(self.connect(decode(p)?)),
                "Shutdown" => reply(self.shutdown(decode(p)?)),
                other => Err(ttrpc::status(
                    ttrpc::Code::Unimplemented,
                    format!("method {other} not found"),
                )),
            }
        })
    }
}

impl TaskService {
    async fn stats(&self, id: &str) -> Result<api::StatsResponse> {
        let pid = self.lock().container(id)?.init.pid;
        let stats = crate::metrics::collect(pid)?;
        Ok(api::StatsResponse { stats: Some(stats) })
    }
}
