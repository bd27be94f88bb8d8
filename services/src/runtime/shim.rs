//! One shim process: starting it (`<shim> start`), talking to it over
//! ttrpc, and cleaning up after it (`<shim> delete`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_proto::containerd::task::v2 as shimapi;
use berth_ttrpc::{self as ttrpc, TaskClient};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tonic::{Code, Status};

/// Berth's own shim.
const BERTH_SHIM: &str = "containerd-shim-berth-v2";
/// Records which shim binary serves a bundle, for `delete` after a restart.
const SHIM_BINARY_FILE: &str = "shim-binary-path";
/// Per-call timeout on the shim API (but Wait, which blocks).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Shim {
    pub id: String,
    pub bundle: PathBuf,
    pub client: TaskClient,
}

/// A ttrpc failure as the gRPC status the client should see.
pub fn to_status(e: ttrpc::Error) -> Status {
    let code = Code::from_i32(e.code() as i32);
    match e {
        ttrpc::Error::Status(s) => Status::new(code, s.message),
        other => Status::new(code, format!("shim: {other}")),
    }
}

/// containerd's naming rule: `io.containerd.runc.v2` runs
/// `containerd-shim-runc-v2`; an absolute path is used as is. Looked up next
/// to berthd first, then on PATH.
pub fn binary_for(runtime: &str) -> Result<PathBuf, Status> {
    if runtime.starts_with('/') {
        let p = PathBuf::from(runtime);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Status::not_found(format!(
                "runtime {runtime:?}: no such shim binary"
            )))
        };
    }
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(Status::invalid_argument(format!(
            "runtime {runtime:?}: name must look like <prefix>.<name>.<version>, e.g. io.containerd.runc.v2"
        )));
    }
    let name = format!(
        "containerd-shim-{}-{}",
        parts[parts.len() - 2],
        parts[parts.len() - 1]
    );
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let path = std::env::var_os("PATH").unwrap_or_default();
    own_dir
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Status::not_found(format!(
                "runtime {runtime:?}: shim binary {name} not installed (not next to berthd or on PATH)"
            ))
        })
}

/// Creates the bundle: the spec as `config.json`, an empty `rootfs/`. One blocking job (it
/// is on the path of every task start; a job per file cost more than the files).
pub async fn prepare_bundle(bundle: &Path, spec: &[u8], binary: &Path) -> Result<(), Status> {
    serde_json::from_slice::<serde_json::Value>(spec)
        .map_err(|e| Status::invalid_argument(format!("container spec is not valid JSON: {e}")))?;
    let (b, spec, binary) = (bundle.to_path_buf(), spec.to_vec(), binary.to_path_buf());
    tokio::task::spawn_blocking(move || write_bundle(&b, &spec, &binary))
        .await
        .map_err(|e| Status::internal(format!("bundle {}: {e}", bundle.display())))?
}

/// The files of [`prepare_bundle`]; a bundle left half-written is removed again.
fn write_bundle(bundle: &Path, spec: &[u8], binary: &Path) -> Result<(), Status> {
    let io = |what: &str, e: std::io::Error| {
        Status::internal(format!("bundle {}: {what}: {e}", bundle.display()))
    };
    if let Some(parent) = bundle.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("create parent", e))?;
    }
    std::fs::create_dir(bundle).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Status::already_exists(format!("task bundle {} already exists", bundle.display()))
        }
        _ => io("create", e),
    })?;
    let files = std::fs::create_dir(bundle.join("rootfs"))
        .map_err(|e| io("create rootfs", e))
        .and_then(|()| {
            std::fs::write(bundle.join("config.json"), spec).map_err(|e| io("write config.json", e))
        })
        .and_then(|()| {
            std::fs::write(
                bundle.join(SHIM_BINARY_FILE),
                binary.as_os_str().as_encoded_bytes(),
            )
            .map_err(|e| io("write shim path", e))
        });
    if files.is_err() {
        // Nothing is mounted in it yet.
        let _ = std::fs::remove_dir_all(bundle);
    }
    files
}

/// Removes a bundle, never crossing into a still-mounted rootfs.
pub async fn remove_bundle(bundle: &Path) {
    let b = bundle.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        detach_rootfs(&b);
        if let Err(e) = std::fs::remove_dir_all(&b) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(bundle = %b.display(), error = %e, "cannot remove bundle");
            }
        }
    })
    .await;
}

/// Detaches whatever is still mounted on the bundle's rootfs (a shim that
/// died before unmounting it).
pub async fn unmount_rootfs(bundle: &Path) {
    let b = bundle.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || detach_rootfs(&b)).await;
}

fn detach_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    // Stacked mounts: undo until nothing is left (bounded).
    for _ in 0..16 {
        if nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

/// Every `<ns>/<id>` bundle under the runtime root.
pub async fn list_bundles(root: &Path) -> std::io::Result<Vec<(String, String, PathBuf)>> {
    let mut out = Vec::new();
    let mut namespaces = match tokio::fs::read_dir(root).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    while let Some(ns) = namespaces.next_entry().await? {
        if !ns.file_type().await?.is_dir() {
            continue;
        }
        let mut ids = tokio::fs::read_dir(ns.path()).await?;
        while let Some(id) = ids.next_entry().await? {
            if id.file_type().await?.is_dir() {
                out.push((
                    ns.file_name().to_string_lossy().into_owned(),
                    id.file_name().to_string_lossy().into_owned(),
                    id.path(),
                ));
            }
        }
    }
    Ok(out)
}

fn shim_command(
    binary: &Path,
    ns: &str,
    id: &str,
    bundle: &Path,
    grpc: &Path,
    ttrpc: &Path,
    action: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    let publish = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("berthd"));
    cmd.arg("-namespace")
        .arg(ns)
        .arg("-address")
        .arg(grpc)
        .arg("-publish-binary")
        .arg(publish)
        .arg("-id")
        .arg(id);
    // Berth's shim takes the bundle as a flag; containerd's need it as working directory.
    // Without one, the spawn is a vfork (posix_spawn) instead of a fork of the whole daemon
    // (its page tables copied, its pages write-protected for copy-on-write).
    if binary.file_name() == Some(std::ffi::OsStr::new(BERTH_SHIM)) {
        cmd.arg("-bundle").arg(bundle);
    } else {
        cmd.current_dir(bundle);
    }
    cmd.arg(action)
        .env("TTRPC_ADDRESS", ttrpc)
        .env("GRPC_ADDRESS", grpc)
        .env("NAMESPACE", ns)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a shim subcommand, feeding `input` on stdin; its stdout on success.
async fn run(
    mut cmd: tokio::process::Command,
    input: Vec<u8>,
    timeout: Duration,
    what: &str,
) -> Result<Vec<u8>, Status> {
    let mut child = cmd
        .spawn()
        .map_err(|e| Status::internal(format!("{what}: spawn shim: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&input).await;
    }
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!("{what}: shim did not answer in {timeout:?}"))
        })?
        .map_err(|e| Status::internal(format!("{what}: wait for shim: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Status::internal(format!(
            "{what}: shim failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(out.stdout)
}

/// Opens (creating if needed) the bundle's `log` FIFO, into which shims
/// write their logs, and copies them to the daemon's log. Read-write so
/// neither side ever blocks on open (containerd's `openShimLog`).
pub async fn forward_shim_log(bundle: &Path, id: &str) {
    use tokio::io::AsyncBufReadExt;
    let path = bundle.join("log");
    if let Err(e) = nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o700)) {
        if e != nix::errno::Errno::EEXIST {
            tracing::warn!(path = %path.display(), error = %e, "cannot create shim log fifo");
            return;
        }
    }
    let pipe = match tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open shim log fifo");
            return;
        }
    };
    let id = id.to_string();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "shim", id = %id, "{line}");
        }
    });
}

impl Shim {
    /// `<shim> start`: the shim daemonises, prints its address; connect.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        ns: &str,
        id: &str,
        bundle: &Path,
        binary: &Path,
        runtime: &str,
        options: Option<&prost_types::Any>,
        grpc: &Path,
        ttrpc_addr: &Path,
        timeout: Duration,
    ) -> Result<Shim, Status> {
        let input = options.map(|o| o.encode_to_vec()).unwrap_or_default();
        forward_shim_log(bundle, id).await;
        let cmd = shim_command(binary, ns, id, bundle, grpc, ttrpc_addr, "start");
        let what = format!("start shim for {runtime}");
        let stdout = run(cmd, input, timeout, &what).await?;
        let address = String::from_utf8_lossy(&stdout).trim().to_string();
        if address.is_empty() {
            return Err(Status::internal(format!("{what}: shim printed no address")));
        }
        let client = match TaskClient::connect(&address).await {
            Ok(c) => c.with_timeout(CALL_TIMEOUT),
            Err(e) => {
                let status = Status::unavailable(format!("{what}: connect to {address}: {e}"));
                let _ = run_delete(ns, id, bundle, grpc, ttrpc_addr, timeout).await;
                return Err(status);
            }
        };
        Ok(Shim {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            client,
        })
    }

    /// Reconnects to the shim serving `bundle` (its `address` file) and
    /// checks that it answers; also returns the pid of its task (0: none). Its
    /// log is read again, as after a start.
    pub async fn reconnect(id: &str, bundle: &Path) -> Result<(Shim, u32), Status> {
        forward_shim_log(bundle, id).await;
        let address = tokio::fs::read_to_string(bundle.join("address"))
            .await
            .map_err(|e| Status::not_found(format!("shim address: {e}")))?;
        let client = TaskClient::connect(address.trim())
            .await
            .map_err(to_status)?
            .with_timeout(CALL_TIMEOUT);
        let connected = client
            .connect_shim(&shimapi::ConnectRequest { id: id.to_string() })
            .await
            .map_err(to_status)?;
        let shim = Shim {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            client,
        };
        Ok((shim, connected.task_pid))
    }

    /// Whether the shim holds a task, asked until `deadline` while a create is still in
    /// flight there. No only on the shim's NotFound: anything else keeps the task.
    pub async fn has_task(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let state = self
                .client
                .state(&shimapi::StateRequest {
                    id: self.id.clone(),
                    exec_id: String::new(),
                })
                .await
                .map_err(to_status);
            match state {
                Err(s) if s.code() == Code::NotFound => return false,
                Err(s)
                    if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return true,
            }
        }
    }

    /// Asks the shim to exit (it has no task left). The connection closing
    /// is the expected answer.
    pub async fn shutdown(&self) {
        match self
            .client
            .shutdown(&shimapi::ShutdownRequest {
                id: self.id.clone(),
                now: false,
            })
            .await
        {
            Ok(()) | Err(ttrpc::Error::Closed) => {}
            Err(e) => tracing::debug!(id = %self.id, error = %e, "shim shutdown"),
        }
    }

    /// Undoes a half-created task as far as the shim still answers: kill,
    /// delete, shut the shim down.
    pub async fn kill_and_cleanup(&self, ns: &str) {
        let _ = self
            .client
            .kill(&shimapi::KillRequest {
                id: self.id.clone(),
                exec_id: String::new(),
                signal: 9,
                all: true,
            })
            .await;
        let _ = self
            .client
            .delete(&shimapi::DeleteRequest {
                id: self.id.clone(),
                exec_id: String::new(),
            })
            .await;
        let _ = self
            .client
            .shutdown(&shimapi::ShutdownRequest {
                id: self.id.clone(),
                now: true,
            })
            .await;
        tracing::debug!(namespace = %ns, id = %self.id, "undid failed task create");
    }
}

/// `<shim> delete` for a shim that is gone: it cleans up the container and
/// prints a `DeleteResponse`.
pub async fn run_delete(
    ns: &str,
    id: &str,
    bundle: &Path,
    grpc: &Path,
    ttrpc_addr: &Path,
    timeout: Duration,
) -> Result<shimapi::DeleteResponse, Status> {
    let binary = tokio::fs::read(bundle.join(SHIM_BINARY_FILE))
        .await
        .map_err(|e| Status::not_found(format!("shim binary of {}: {e}", bundle.display())))?;
    let binary = PathBuf::from(String::from_utf8_lossy(&binary).into_owned());
    let cmd = shim_command(&binary, ns, id, bundle, grpc, ttrpc_addr, "delete");
    let out = run(cmd, Vec::new(), timeout, "shim delete").await?;
    shimapi::DeleteResponse::decode(out.as_slice())
        .map_err(|e| Status::internal(format!("shim delete printed garbage: {e}")))
}
