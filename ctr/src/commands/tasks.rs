//! `berth tasks ls|start|kill|exec|ps|pause|resume|metrics|attach|delete`
//!
//! Stdio works as in ctr: FIFOs in a fresh directory under `/run/berth/fifo`, their paths in the
//! request, copied to and from the terminal by this process (`stdio`); a foreground process
//! gets our signals and, with a terminal, our window size (`session`).

mod metrics;
pub(super) mod session;
pub(super) mod stdio;

use berth_proto::containerd::runc::v1::ProcessDetails;
use berth_proto::containerd::services::containers::v1::GetContainerRequest;
use berth_proto::containerd::services::snapshots::v1::MountsRequest;
use berth_proto::containerd::services::tasks::v1::{
    CreateTaskRequest, DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetRequest,
    KillRequest, ListPidsRequest, ListTasksRequest, MetricsRequest, PauseTaskRequest,
    ResumeTaskRequest, StartRequest,
};
use berth_proto::containerd::types::Mount;
use berth_proto::containerd::v1::types::{Process, Status};
use prost::Message as _;
use serde_json::{json, Value};
use tonic::Code;

use self::session::Target;
use self::stdio::{Fifos, Paths};
use crate::client::{self, Conn};
use crate::error::{CallError, CallExt};
use crate::output::{self, Format, Table};
use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List tasks, optionally matching a filter (e.g. 'status==running').
    #[command(visible_alias = "list")]
    Ls {
        /// Print task IDs only.
        #[arg(short, long)]
        quiet: bool,
        filter: Option<String>,
    },
    /// Create and start the task of a container; waits for its exit unless detached.
    Start {
        /// Return once the task started (its stdio FIFOs stay for `tasks attach`).
        #[arg(short, long)]
        detach: bool,
        /// Send all stdio to /dev/null.
        #[arg(long)]
        null_io: bool,
        container: String,
    },
    /// Send a signal to a task (or one of its exec processes).
    Kill {
        /// Signal name or number (SIGTERM, TERM, 15).
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
        /// Signal every process of the task.
        #[arg(long)]
        all: bool,
        /// Signal this exec process instead of the init process.
        #[arg(long)]
        exec_id: Option<String>,
        container: String,
    },
    /// Run an additional process in a running task.
    Exec(ExecArgs),
    /// List the processes of a task.
    Ps { container: String },
    /// Freeze a task.
    Pause { container: String },
    /// Thaw a paused task.
    Resume { container: String },
    /// Show a task's cgroup statistics.
    #[command(visible_alias = "metric")]
    Metrics { container: String },
    /// Reattach to a task's stdio and wait for its exit.
    Attach { container: String },
    /// Delete stopped tasks (or one exec process); prints their exit statuses.
    #[command(visible_aliases = ["rm", "remove", "del"])]
    Delete {
        /// Kill a running task first (SIGKILL) and wait for it.
        #[arg(short, long)]
        force: bool,
        /// Delete this exec process instead of the task.
        #[arg(long)]
        exec_id: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// ID of the new process (unique within the task).
    #[arg(long, required = true)]
    exec_id: String,
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Return once the process started.
    #[arg(short, long)]
    detach: bool,
    /// Working directory of the process.
    #[arg(long)]
    cwd: Option<String>,
    /// Numeric user (uid[:gid]) to run as.
    #[arg(short, long)]
    user: Option<String>,
    /// Environment variable (KEY=VALUE); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Send all stdio to /dev/null.
    #[arg(long)]
    null_io: bool,
    container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    let conn = client::connect(g).await?;
    match command {
        Command::Ls { quiet, filter } => ls(g, &conn, quiet, filter.unwrap_or_default()).await,
        Command::Start {
            detach,
            null_io,
            container,
        } => {
            let c = conn
                .containers()
                .get(GetContainerRequest {
                    id: container.clone(),
                })
                .await
                .ctx(format_args!("tasks start {container}: container"))?
                .into_inner()
                .container
                .unwrap_or_default();
            let terminal = spec_terminal(c.spec.as_ref().map(|a| a.value.as_slice()));
            let rootfs = if c.snapshot_key.is_empty() {
                Vec::new()
            } else {
                conn.snapshots()
                    .mounts(MountsRequest {
                        snapshotter: c.snapshotter.clone(),
                        key: c.snapshot_key.clone(),
                    })
                    .await
                    .ctx(format_args!(
                        "tasks start {container}: mounts of snapshot {}",
                        c.snapshot_key
                    ))?
                    .into_inner()
                    .mounts
            };
            let mut started = false;
            let status = start(
                &conn,
                NewTask {
                    id: &container,
                    rootfs,
                    terminal,
                    detach,
                    null_io,
                },
                &mut started,
            )
            .await?;
            session::exit_with(status.unwrap_or(0))
        }
        Command::Kill {
            signal,
            all,
            exec_id,
            container,
        } => {
            let signal = parse_signal(&signal)?;
            let exec_id = exec_id.unwrap_or_default();
            let target = Target {
                container_id: container.clone(),
                exec_id: exec_id.clone(),
            };
            conn.tasks()
                .kill(KillRequest {
                    container_id: container,
                    exec_id,
                    signal,
                    all,
                })
                .await
                .ctx(format_args!("tasks kill {}", target.name()))?;
            Ok(())
        }
        Command::Exec(args) => {
            let status = exec(&conn, args).await?;
            session::exit_with(status.unwrap_or(0))
        }
        Command::Ps { container } => ps(g, &conn, &container).await,
        Command::Pause { container } => {
            conn.tasks()
                .pause(PauseTaskRequest {
                    container_id: container.clone(),
                })
                .await
                .ctx(format_args!("tasks pause {container}"))?;
            Ok(())
        }
        Command::Resume { container } => {
            conn.tasks()
                .resume(ResumeTaskRequest {
                    container_id: container.clone(),
                })
                .await
                .ctx(format_args!("tasks resume {container}"))?;
            Ok(())
        }
        Command::Metrics { container } => show_metrics(g, &conn, &container).await,
        Command::Attach { container } => {
            let status = attach(&conn, &container).await?;
            session::exit_with(status)
        }
        Command::Delete {
            force,
            exec_id,
            containers,
        } => {
            let exec_id = exec_id.unwrap_or_default();
            let conn = &conn;
            super::for_each(containers, |id| {
                let exec_id = exec_id.clone();
                async move {
                    let target = Target {
                        container_id: id,
                        exec_id,
                    };
                    let status = delete(conn, &target, force).await?;
                    match g.format {
                        Format::Json => output::json_line(&json!({
                            "id": target.name(), "exit_status": status,
                        }))?,
                        Format::Table => output::line(format!("{}   {status}", target.name()))?,
                    }
                    Ok(())
                }
            })
            .await
        }
    }
}

/// Whether a container's spec (JSON) asks for a terminal.
fn spec_terminal(spec: Option<&[u8]>) -> bool {
    spec.and_then(|s| serde_json::from_slice::<Value>(s).ok())
        .and_then(|v| v["process"]["terminal"].as_bool())
        .unwrap_or(false)
}

/// The lowercase name of a task status, as ctr prints it (`RUNNING`, ...).
fn status_name(status: i32) -> String {
    Status::try_from(status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| status.to_string())
}

fn process_json(p: &Process) -> Value {
    json!({
        "container_id": p.container_id,
        "id": p.id,
        "pid": p.pid,
        "status": status_name(p.status).to_lowercase(),
        "stdin": p.stdin,
        "stdout": p.stdout,
        "stderr": p.stderr,
        "terminal": p.terminal,
        "exit_status": p.exit_status,
        "exited_at": output::timestamp_json(p.exited_at.as_ref()),
    })
}

async fn ls(g: &Global, conn: &Conn, quiet: bool, filter: String) -> anyhow::Result<()> {
    let tasks = conn
        .tasks()
        .list(ListTasksRequest { filter })
        .await
        .ctx("tasks ls")?
        .into_inner()
        .tasks;
    if quiet {
        for t in &tasks {
            output::line(&t.container_id)?;
        }
        return Ok(());
    }
    match g.format {
        Format::Json => output::json(&Value::Array(tasks.iter().map(process_json).collect()))?,
        Format::Table => {
            let mut table = Table::new(&["TASK", "PID", "STATUS"]);
            for t in &tasks {
                table.row(vec![
                    t.container_id.clone(),
                    t.pid.to_string(),
                    status_name(t.status),
                ]);
            }
            table.print()?;
        }
    }
    Ok(())
}

/// What [`start`] creates.
pub(super) struct NewTask<'a> {
    pub id: &'a str,
    pub rootfs: Vec<Mount>,
    pub terminal: bool,
    pub detach: bool,
    pub null_io: bool,
}

/// Creates and starts the task of container `t.id`. Detached, returns `None` once it runs
/// (its FIFOs stay for `tasks attach`); in the foreground, copies stdio, forwards signals,
/// waits for the exit, deletes the task and returns the exit status. `started` tells a caller
/// whose cleanup depends on it whether the task got as far as running.
pub(super) async fn start(
    conn: &Conn,
    t: NewTask<'_>,
    started: &mut bool,
) -> anyhow::Result<Option<u32>> {
    let fifos = if t.null_io {
        None
    } else {
        Some(Fifos::create(t.id, t.terminal)?)
    };
    let paths = fifos.as_ref().map(|f| f.paths.clone()).unwrap_or_default();
    let target = Target::init(t.id);
    let raw = if t.terminal && !t.detach {
        stdio::RawTerminal::enter()?
    } else {
        None
    };
    let copies = (!t.detach).then(|| stdio::copy(&paths));
    let _held = t.detach.then(|| stdio::hold(&paths));
    let fail = |fifos: Option<Fifos>| {
        stdio::unblock(&paths);
        if let Some(f) = fifos {
            f.remove();
        }
    };
    let created = conn
        .tasks()
        .create(CreateTaskRequest {
            container_id: t.id.to_string(),
            rootfs: t.rootfs,
            stdin: paths.stdin.clone(),
            stdout: paths.stdout.clone(),
            stderr: paths.stderr.clone(),
            terminal: t.terminal,
            ..Default::default()
        })
        .await
        .ctx(format_args!("creating the task of {}", t.id));
    if let Err(e) = created {
        drop(raw);
        fail(fifos);
        return Err(e);
    }
    let wait = (!t.detach).then(|| session::wait_in_background(conn, &target));
    let started_r = conn
        .tasks()
        .start(StartRequest {
            container_id: t.id.to_string(),
            exec_id: String::new(),
        })
        .await
        .ctx(format_args!("starting the task of {}", t.id));
    if let Err(e) = started_r {
        if let Some(w) = wait {
            w.abort();
        }
        drop(raw);
        let _ = delete(conn, &target, true).await;
        fail(fifos);
        return Err(e);
    }
    *started = true;
    let (Some(copies), Some(wait)) = (copies, wait) else {
        // Detached: the FIFOs stay for `tasks attach`; `tasks delete` removes them.
        return Ok(None);
    };
    let status = session::interact(conn, &target, t.terminal, copies, wait).await;
    drop(raw);
    let status = status?;
    conn.tasks()
        .delete(DeleteTaskRequest {
            container_id: t.id.to_string(),
        })
        .await
        .ctx(format_args!("deleting the task of {}", t.id))?;
    if let Some(f) = fifos {
        f.remove();
    }
    Ok(Some(status))
}

async fn exec(conn: &Conn, a: ExecArgs) -> anyhow::Result<Option<u32>> {
    let target = Target {
        container_id: a.container.clone(),
        exec_id: a.exec_id.clone(),
    };
    let what = format!("tasks exec {}", target.name());
    let c = conn
        .containers()
        .get(GetContainerRequest {
            id: a.container.clone(),
        })
        .await
        .ctx(format_args!("{what}: container"))?
        .into_inner()
        .container
        .unwrap_or_default();
    let spec = berth_oci::from_json(&c.spec.unwrap_or_default().value)
        .map_err(|e| anyhow::anyhow!("{what}: the container's spec: {e}"))?;
    let process = berth_oci::exec_process(
        &spec,
        &berth_oci::ExecOptions {
            args: a.command,
            env: a.env,
            cwd: a.cwd,
            user: a.user,
            terminal: a.tty,
            console_size: a.tty.then(stdio::terminal_size).flatten(),
        },
    )
    .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;

    let fifos = if a.null_io {
        None
    } else {
        Some(Fifos::create(
            &format!("{}-{}", a.container, a.exec_id),
            a.tty,
        )?)
    };
    let paths = fifos.as_ref().map(|f| f.paths.clone()).unwrap_or_default();
    let raw = if a.tty && !a.detach {
        stdio::RawTerminal::enter()?
    } else {
        None
    };
    let copies = (!a.detach).then(|| stdio::copy(&paths));
    let _held = a.detach.then(|| stdio::hold(&paths));
    let cleanup = |fifos: Option<Fifos>| {
        stdio::unblock(&paths);
        if let Some(f) = fifos {
            f.remove();
        }
    };
    let r = conn
        .tasks()
        .exec(ExecProcessRequest {
            container_id: a.container.clone(),
            stdin: paths.stdin.clone(),
            stdout: paths.stdout.clone(),
            stderr: paths.stderr.clone(),
            terminal: a.tty,
            spec: Some(prost_types::Any {
                type_url: berth_oci::PROCESS_TYPE_URL.to_string(),
                value: berth_oci::to_json(&process),
            }),
            exec_id: a.exec_id.clone(),
        })
        .await
        .ctx(&what);
    if let Err(e) = r {
        drop(raw);
        cleanup(fifos);
        return Err(e);
    }
    let wait = (!a.detach).then(|| session::wait_in_background(conn, &target));
    let r = conn
        .tasks()
        .start(StartRequest {
            container_id: a.container.clone(),
            exec_id: a.exec_id.clone(),
        })
        .await
        .ctx(format_args!("{what}: start"));
    if let Err(e) = r {
        if let Some(w) = wait {
            w.abort();
        }
        drop(raw);
        let _ = delete(conn, &target, true).await;
        cleanup(fifos);
        return Err(e);
    }
    let (Some(copies), Some(wait)) = (copies, wait) else {
        return Ok(None);
    };
    let status = session::interact(conn, &target, a.tty, copies, wait).await;
    drop(raw);
    let status = status?;
    conn.tasks()
        .delete_process(DeleteProcessRequest {
            container_id: a.container,
            exec_id: a.exec_id,
        })
        .await
        .ctx(format_args!("{what}: delete"))?;
    if let Some(f) = fifos {
        f.remove();
    }
    Ok(Some(status))
}

async fn attach(conn: &Conn, container: &str) -> anyhow::Result<u32> {
    let target = Target::init(container);
    let p = conn
        .tasks()
        .get(GetRequest {
            container_id: container.to_string(),
            exec_id: String::new(),
        })
        .await
        .ctx(format_args!("tasks attach {container}"))?
        .into_inner()
        .process
        .unwrap_or_default();
    if Status::try_from(p.status) == Ok(Status::Stopped) {
        return Ok(p.exit_status);
    }
    let paths = Paths {
        stdin: p.stdin,
        stdout: p.stdout,
        stderr: p.stderr,
        terminal: p.terminal,
    };
    let raw = if paths.terminal {
        stdio::RawTerminal::enter()?
    } else {
        None
    };
    let wait = session::wait_in_background(conn, &target);
    let copies = stdio::copy(&paths);
    let status = session::interact(conn, &target, paths.terminal, copies, wait).await;
    drop(raw);
    status
}

/// Deletes a task (or exec process); with `force`, kills it first and waits for its exit.
/// Removes the stdio FIFOs `berth` made for it. Returns the exit status.
async fn delete(conn: &Conn, target: &Target, force: bool) -> anyhow::Result<u32> {
    let what = format!("tasks delete {}", target.name());
    let process = conn
        .tasks()
        .get(GetRequest {
            container_id: target.container_id.clone(),
            exec_id: target.exec_id.clone(),
        })
        .await
        .ctx(&what)?
        .into_inner()
        .process
        .unwrap_or_default();
    let stopped = matches!(
        Status::try_from(process.status),
        Ok(Status::Stopped) | Ok(Status::Created)
    );
    if force && !stopped {
        let wait = session::wait_in_background(conn, target);
        match conn
            .tasks()
            .kill(KillRequest {
                container_id: target.container_id.clone(),
                exec_id: target.exec_id.clone(),
                signal: libc::SIGKILL as u32,
                all: target.exec_id.is_empty(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(CallError::new(format!("{what}: kill"), &s).into()),
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), wait).await;
    }
    let status = if target.exec_id.is_empty() {
        conn.tasks()
            .delete(DeleteTaskRequest {
                container_id: target.container_id.clone(),
            })
            .await
            .ctx(&what)?
            .into_inner()
            .exit_status
    } else {
        conn.tasks()
            .delete_process(DeleteProcessRequest {
                container_id: target.container_id.clone(),
                exec_id: target.exec_id.clone(),
            })
            .await
            .ctx(&what)?
            .into_inner()
            .exit_status
    };
    stdio::remove_fifo_dir(&[&process.stdin, &process.stdout, &process.stderr]);
    Ok(status)
}

async fn ps(g: &Global, conn: &Conn, container: &str) -> anyhow::Result<()> {
    let processes = conn
        .tasks()
        .list_pids(ListPidsRequest {
            container_id: container.to_string(),
        })
        .await
        .ctx(format_args!("tasks ps {container}"))?
        .into_inner()
        .processes;
    let exec_id = |info: Option<&prost_types::Any>| -> String {
        info.filter(|a| a.type_url.ends_with("containerd.runc.v1.ProcessDetails"))
            .and_then(|a| ProcessDetails::decode(a.value.as_slice()).ok())
            .map(|d| d.exec_id)
            .unwrap_or_default()
    };
    match g.format {
        Format::Json => output::json(&Value::Array(
            processes
                .iter()
                .map(|p| json!({"pid": p.pid, "exec_id": exec_id(p.info.as_ref())}))
                .collect(),
        ))?,
        Format::Table => {
            let mut table = Table::new(&["PID", "INFO"]);
            for p in &processes {
                let id = exec_id(p.info.as_ref());
                table.row(vec![
                    p.pid.to_string(),
                    if id.is_empty() { "-".into() } else { id },
                ]);
            }
            table.print()?;
        }
    }
    Ok(())
}

async fn show_metrics(g: &Global, conn: &Conn, container: &str) -> anyhow::Result<()> {
    let what = format!("tasks metrics {container}");
    let list = conn
        .tasks()
        .metrics(MetricsRequest {
            filters: vec![format!("id=={container}")],
        })
        .await
        .ctx(&what)?
        .into_inner()
        .metrics;
    let Some(m) = list.into_iter().find(|m| m.id == container) else {
        return Err(CallError {
            context: what,
            code: Code::NotFound,
            message: format!("no metrics for task {container}"),
        }
        .into());
    };
    let data = m.data.unwrap_or_default();
    if !metrics::is_v1(&data.type_url) {
        anyhow::bail!("{what}: cannot show metrics of type {:?}", data.type_url);
    }
    let decoded = metrics::Metrics::decode(data.value.as_slice())
        .map_err(|e| anyhow::anyhow!("{what}: decoding cgroup v1 metrics: {e}"))?;
    match g.format {
        Format::Json => output::json(&json!({
            "id": m.id,
            "timestamp": output::timestamp_json(m.timestamp.as_ref()),
            "metrics": metrics::to_json(&decoded),
        }))?,
        Format::Table => {
            let mut head = Table::new(&["ID", "TIMESTAMP"]);
            head.row(vec![m.id.clone(), output::timestamp(m.timestamp.as_ref())]);
            head.print()?;
            output::line("")?;
            let mut table = Table::new(&["METRIC", "VALUE"]);
            for (k, v) in metrics::rows(&decoded) {
                table.row(vec![k, v]);
            }
            table.print()?;
        }
    }
    Ok(())
}

const SIGNALS: &[(&str, libc::c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Parses a signal: a number, or a name with or without `SIG` (any case).
pub(super) fn parse_signal(s: &str) -> anyhow::Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        anyhow::bail!("invalid signal {s:?}: numbers go from 1 to 64");
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, v)| v as u32)
        .ok_or_else(|| anyhow::anyhow!("invalid signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        // Catches clashes with the global flags (-a, -n) in every command.
        use clap::CommandFactory;
        crate::Cli::command().debug_assert();
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("SigHup").unwrap(), 1);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn terminal_from_spec() {
        assert!(spec_terminal(Some(br#"{"process": {"terminal": true}}"#)));
        assert!(!spec_terminal(Some(br#"{"process": {}}"#)));
        assert!(!spec_terminal(Some(b"garbage")));
        assert!(!spec_terminal(None));
    }

    #[test]
    fn statuses_print_like_ctr() {
        assert_eq!(status_name(Status::Running as i32), "RUNNING");
        assert_eq!(status_name(42), "42");
    }
}
