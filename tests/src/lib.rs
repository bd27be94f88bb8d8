//! End-to-end test harness: `berthd` in a fresh temp root with its own unix socket, gRPC
//! clients over that socket, and runners for the stock `ctr` and our `berth` CLI.
//!
//! Every [`Daemon`] owns its directory (`/tmp/berth-XXXXXX/`, short enough for a unix socket
//! path) and kills its process on drop, so tests run in parallel without sharing anything.

pub mod bench;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_proto::containerd::services::content::v1::{
    content_client::ContentClient, ReadContentRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use berth_proto::containerd::services::events::v1::events_client::EventsClient;
use berth_proto::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use berth_proto::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd::services::version::v1::version_client::VersionClient;
use berth_proto::grpc::health::v1::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

/// The stock containerd CLI (Debian's `containerd` package).
pub const CTR: &str = "/usr/bin/ctr";
/// How long berthd gets to answer health checks after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long berthd gets to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one request/response step of a write session may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message the test clients accept (the daemon sends at most 16 MiB).
const CLIENT_MAX_MESSAGE: usize = 64 << 20;

/// Namespace header containerd clients send.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Lease header containerd clients send.
pub const LEASE_HEADER: &str = "containerd-lease";

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// The metadata KV backend berthd runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    #[default]
    Redb,
    Sled,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Sled => "sled",
        }
    }
}

/// How to start berthd.
#[derive(Debug, Clone)]
pub struct Opts {
    pub backend: Backend,
    /// TOML appended to the generated config file (which holds `[metadata]` and `[gc]`).
    pub extra_config: String,
    /// berthd's `--log-level`.
    pub log_level: String,
    /// `[gc] schedule_delay_ms`; `None` keeps berthd's default. The harness default is an
    /// hour, so garbage collection runs only when a test asks for it (a `sync` lease delete):
    /// otherwise the start-up collection would race tests that write unrooted content in
    /// their first 100 ms, as containerd's GC removes content nothing references.
    pub gc_delay_ms: Option<u64>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            backend: Backend::Redb,
            extra_config: String::new(),
            log_level: "info".into(),
            gc_delay_ms: Some(3_600_000),
        }
    }
}

impl Opts {
    pub fn backend(backend: Backend) -> Self {
        Opts {
            backend,
            ..Opts::default()
        }
    }
}

/// A running `berthd` in its own temp directory. Killed (SIGKILL) on drop.
pub struct Daemon {
    dir: tempfile::TempDir,
    opts: Opts,
    child: std::sync::Mutex<Option<Child>>,
}

impl Daemon {
    /// Starts berthd with defaults (redb) and waits until it answers health checks.
    pub async fn start() -> Daemon {
        Daemon::start_with(Opts::default()).await
    }

    /// Starts berthd with `opts` and waits until it answers health checks.
    pub async fn start_with(opts: Opts) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("berth-")
            .tempdir_in("/tmp")
            .expect("create temp dir under /tmp");
        let mut d = Daemon {
            dir,
            opts,
            child: std::sync::Mutex::new(None),
        };
        let mut config = format!("[metadata]\nbackend = \"{}\"\n", d.opts.backend.name());
        if let Some(ms) = d.opts.gc_delay_ms {
            config += &format!("\n[gc]\nschedule_delay_ms = {ms}\n");
        }
        config += &format!("\n{}\n", d.opts.extra_config);
        std::fs::write(d.config_path(), config).expect("write berthd config");
        d.spawn().await;
        d
    }

    /// The unix socket berthd serves on.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("berthd.sock")
    }

    /// berthd's persistent root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// berthd's state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The content store's blob directory (`<root>/io.containerd.content.v1.content/blobs/sha256`).
    pub fn blobs_dir(&self) -> PathBuf {
        self.root()
            .join("io.containerd.content.v1.content")
            .join("blobs")
            .join("sha256")
    }

    /// The config file berthd runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("berthd.log")
    }

    /// Everything berthd wrote to stdout/stderr so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The running process id, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// The path of a workspace binary next to the test executable
    /// (`target/<profile>/deps/x` -> `target/<profile>/<name>`).
    pub fn binary(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let bin = profile_dir.join(name);
        assert!(
            bin.exists(),
            "{} not found: run `cargo build --workspace --all-features` first",
            bin.display()
        );
        bin
    }

    async fn spawn(&mut self) {
        assert!(
            self.child.get_mut().unwrap().is_none(),
            "berthd is already running"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open berthd log");
        let child = Command::new(Daemon::binary("berthd"))
            .arg("--config")
            .arg(self.config_path())
            .arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--address")
            .arg(self.socket())
            .arg("--log-level")
            .arg(&self.opts.log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn berthd");
        *self.child.get_mut().unwrap() = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                self.child.get_mut().unwrap().take();
                let hint = if self.opts.backend == Backend::Sled {
                    " (the sled backend needs berthd built by `cargo build --workspace --all-features`)"
                } else {
                    ""
                };
                panic!(
                    "berthd exited during start-up ({status}){hint}; its log:\n{}",
                    self.log()
                );
            }
            if self.socket().exists()
                && tokio::time::timeout(Duration::from_secs(2), self.health_check())
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "berthd did not answer health checks on {} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.socket().display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One grpc.health.v1 Check over a fresh connection; Ok only for SERVING.
    pub async fn health_check(&self) -> Result<(), String> {
        let channel = connect(&self.socket()).await.map_err(|e| e.to_string())?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|s| s.to_string())?;
        match resp.into_inner().status {
            s if s == ServingStatus::Serving as i32 => Ok(()),
            s => Err(format!("health status {s}")),
        }
    }

    /// The exit status if the daemon process has exited (it stays reapable for `kill9`).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Panics unless the daemon process is alive and answers health checks (within 10 s).
    pub async fn assert_serving(&self) {
        if let Some(status) = self.exit_status() {
            panic!("berthd died ({status}); its log:\n{}", self.log());
        }
        match tokio::time::timeout(Duration::from_secs(10), self.health_check()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("berthd health check failed: {e}; log:\n{}", self.log()),
            Err(_) => panic!("berthd health check timed out; log:\n{}", self.log()),
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.get_mut().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .get_mut()
            .unwrap()
            .take()
            .expect("berthd is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for berthd") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "berthd did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts berthd again on the same root, state and socket (after `kill9` or `stop`;
    /// a still-running daemon is stopped first).
    pub async fn restart(&mut self) {
        if self.child.get_mut().unwrap().is_some() {
            self.stop().await;
        }
        self.spawn().await;
    }

    /// A new gRPC channel over the daemon's socket.
    pub async fn channel(&self) -> Channel {
        connect(&self.socket()).await.unwrap_or_else(|e| {
            panic!(
                "connect to {}: {e:?} (berthd exit status: {:?})",
                self.socket().display(),
                self.exit_status()
            )
        })
    }

    pub async fn content(&self, ctx: impl Into<Ctx>) -> ContentClient<Svc> {
        ContentClient::with_interceptor(self.channel().await, ctx.into())
            .max_decoding_message_size(CLIENT_MAX_MESSAGE)
            .max_encoding_message_size(CLIENT_MAX_MESSAGE)
    }

    pub async fn namespaces(&self) -> NamespacesClient<Svc> {
        NamespacesClient::with_interceptor(self.channel().await, Ctx::none())
    }

    pub async fn leases(&self, ctx: impl Into<Ctx>) -> LeasesClient<Svc> {
        LeasesClient::with_interceptor(self.channel().await, ctx.into())
    }

    pub async fn events(&self, ctx: impl Into<Ctx>) -> EventsClient<Svc> {
        EventsClient::with_interceptor(self.channel().await, ctx.into())
    }

    pub async fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel().await)
    }

    pub async fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel().await)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // What the killed daemon left mounted under its root (the devmapper
        // pool) goes with the test, so its loop device is released too.
        if let Err(e) = berth_snapshotter::mount::unmount_recursive(&self.root()) {
            eprintln!("unmount leftovers under {}: {e}", self.root().display());
        }
        if std::thread::panicking() {
            // The test failed: show what the daemon said (its tail) next to the panic.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(100)..];
            eprintln!(
                "--- berthd log ({}), last {} lines ---\n{}",
                self.log_path().display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Connects a tonic channel to a unix socket; requests time out after 120 s.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    connect_with(path, Some(Duration::from_secs(120))).await
}

/// [`connect`] with a request timeout of choice: `None` for none, e.g. for streams that may
/// run for minutes.
pub async fn connect_with(
    path: &Path,
    request_timeout: Option<Duration>,
) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    let mut ep = Endpoint::try_from("http://[::]:50051")?.connect_timeout(Duration::from_secs(5));
    if let Some(t) = request_timeout {
        ep = ep.timeout(t);
    }
    ep.connect_with_connector(tower::service_fn(move |_| {
        let p = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(p).await?,
            ))
        }
    }))
    .await
}

// ---------------------------------------------------------------------------------------------
// Request context: namespace and lease headers
// ---------------------------------------------------------------------------------------------

/// A channel whose requests carry a [`Ctx`].
pub type Svc = InterceptedService<Channel, Ctx>;

/// The containerd request context: `containerd-namespace` and `containerd-lease` headers,
/// attached to every request by an interceptor.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub namespace: Option<String>,
    pub lease: Option<String>,
}

impl Ctx {
    /// Requests in namespace `ns`.
    pub fn ns(ns: &str) -> Ctx {
        Ctx {
            namespace: Some(ns.to_string()),
            lease: None,
        }
    }

    /// Requests without any header.
    pub fn none() -> Ctx {
        Ctx::default()
    }

    /// The same, with a lease header.
    pub fn lease(mut self, id: &str) -> Ctx {
        self.lease = Some(id.to_string());
        self
    }
}

impl From<&str> for Ctx {
    fn from(ns: &str) -> Ctx {
        Ctx::ns(ns)
    }
}

impl Interceptor for Ctx {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        for (key, value) in [
            (NAMESPACE_HEADER, &self.namespace),
            (LEASE_HEADER, &self.lease),
        ] {
            if let Some(v) = value {
                let v: MetadataValue<_> = v.parse().map_err(|_| {
                    Status::invalid_argument(format!("test client: bad {key} header {v:?}"))
                })?;
                req.metadata_mut().insert(key, v);
            }
        }
        Ok(req)
    }
}

// ---------------------------------------------------------------------------------------------
// Content helpers
// ---------------------------------------------------------------------------------------------

/// `sha256:<hex>` of `data`.
/// Puts the workspace's binaries (`target/<profile>`) first on this test
/// process's `PATH`, once: programs that find Berth's helpers by name (the
/// FUSE mount helper starting `berth-aufs`) then find them when the test
/// itself mounts, as they do under berthd (which puts its own directory on
/// `PATH`). Call it first thing in a test; std serialises environment access.
pub fn helpers_on_path() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = Daemon::binary("berthd")
            .parent()
            .expect("binary has a directory")
            .to_path_buf();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path)))
            .expect("PATH");
        std::env::set_var("PATH", joined);
    });
}

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// Removes, when dropped, the cgroups runc leaves for a namespace: deleting a task removes
/// its `/<namespace>/<id>` cgroup but not the namespace's parent (as under containerd), and
/// tests use a namespace each. Best effort: a cgroup still in use stays.
pub struct NamespaceCgroups(pub String);

impl Drop for NamespaceCgroups {
    fn drop(&mut self) {
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(&self.0));
        }
    }
}

/// Where cgroups live: `/sys/fs/cgroup` (the unified hierarchy, or the v1 mounts' parent) and
/// every hierarchy mounted under it.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir());
    std::iter::once(root.to_path_buf())
        .chain(hierarchies)
        .collect()
}

/// The parent of process `pid` (for a task's init: its shim), from `/proc/<pid>/stat`.
pub fn parent_pid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // The command (2nd field) may hold spaces; the parent pid is 2nd after it.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("ppid in /proc/<pid>/stat")
}

/// A random identifier-safe suffix, e.g. for refs.
pub fn random_id() -> String {
    hex::encode(random_bytes(6))
}

/// One Content.Write session, driven in lock step: each request gets exactly one response,
/// as containerd's remote writer does. Dropping it closes the request stream without commit,
/// which leaves the ingest for a later resume.
pub struct Writer {
    tx: mpsc::Sender<WriteContentRequest>,
    rx: Streaming<WriteContentResponse>,
    reference: String,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Opens a session on `reference` and sends its first STAT (with `total` and `expected`,
    /// 0 / "" for none). Errors of opening (e.g. Unavailable for a locked ref) come back here.
    pub async fn open(
        client: &mut ContentClient<Svc>,
        reference: &str,
        total: i64,
        expected: &str,
    ) -> Result<(Writer, WriteContentResponse), Status> {
        let (tx, rx) = mpsc::channel(4);
        let call = client.write(ReceiverStream::new(rx));
        let rx = tokio::time::timeout(STEP_TIMEOUT, call)
            .await
            .map_err(|_| Status::deadline_exceeded("test client: Write call timed out"))??
            .into_inner();
        let mut w = Writer {
            tx,
            rx,
            reference: reference.to_string(),
        };
        let first = w
            .send(WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: reference.to_string(),
                total,
                expected: expected.to_string(),
                ..Default::default()
            })
            .await?;
        Ok((w, first))
    }

    /// Sends one request and waits (bounded) for its response.
    pub async fn send(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        let step = async {
            if self.tx.send(req).await.is_err() {
                // The server ended the call; its status is on the response stream.
            }
            match self.rx.message().await? {
                Some(resp) => Ok(resp),
                None => Err(Status::unknown(
                    "test client: write stream ended without a response",
                )),
            }
        };
        tokio::time::timeout(STEP_TIMEOUT, step)
            .await
            .map_err(|_| Status::deadline_exceeded("test client: write step timed out"))?
    }

    /// Ends the session without commit (closes the request stream) and waits, bounded, until
    /// the daemon has ended it too, so the ref is unlocked when this returns.
    pub async fn close(self) -> Result<(), Status> {
        let Writer { tx, mut rx, .. } = self;
        drop(tx);
        let drain = async {
            while rx.message().await?.is_some() {}
            Ok(())
        };
        tokio::time::timeout(STEP_TIMEOUT, drain)
            .await
            .map_err(|_| Status::deadline_exceeded("test client: write session did not end"))?
    }

    pub async fn stat(&mut self) -> Result<WriteContentResponse, Status> {
        self.send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: self.reference.clone(),
            ..Default::default()
        })
        .await
    }

    /// WRITE `data` at `offset`.
    pub async fn write(
        &mut self,
        offset: i64,
        data: &[u8],
    ) -> Result<WriteContentResponse, Status> {
        self.send(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            offset,
            data: data.to_vec().into(),
            ..Default::default()
        })
        .await
    }

    /// WRITEs `data` from `offset` on in chunks of `chunk` bytes; returns the final offset.
    pub async fn write_all(
        &mut self,
        mut offset: i64,
        data: &[u8],
        chunk: usize,
    ) -> Result<i64, Status> {
        for part in data.chunks(chunk.max(1)) {
            let resp = self.write(offset, part).await?;
            offset += part.len() as i64;
            if resp.offset != offset {
                return Err(Status::internal(format!(
                    "test client: WRITE answered offset {}, expected {offset}",
                    resp.offset
                )));
            }
        }
        Ok(offset)
    }

    /// COMMIT at `offset` (no data) with `total`/`expected` (0 / "" for none) and labels.
    pub async fn commit(
        &mut self,
        offset: i64,
        total: i64,
        expected: &str,
        labels: &[(&str, &str)],
    ) -> Result<WriteContentResponse, Status> {
        self.send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            offset,
            total,
            expected: expected.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await
    }
}

/// Writes `data` under `reference` (1 MiB chunks) and commits it with its size, digest and
/// `labels`. Returns the digest.
pub async fn write_blob(
    client: &mut ContentClient<Svc>,
    reference: &str,
    data: &[u8],
    labels: &[(&str, &str)],
) -> Result<String, Status> {
    let digest = digest_of(data);
    let size = data.len() as i64;
    let (mut w, first) = Writer::open(client, reference, size, &digest).await?;
    let offset = w
        .write_all(first.offset, &data[first.offset as usize..], 1 << 20)
        .await?;
    w.commit(offset, size, &digest, labels).await?;
    Ok(digest)
}

/// Reads a whole blob, checking that chunks arrive in order.
pub async fn read_blob(client: &mut ContentClient<Svc>, digest: &str) -> Result<Vec<u8>, Status> {
    read_range(client, digest, 0, 0).await
}

/// Reads `size` bytes (0 = to the end) from `offset`.
pub async fn read_range(
    client: &mut ContentClient<Svc>,
    digest: &str,
    offset: i64,
    size: i64,
) -> Result<Vec<u8>, Status> {
    let read = async {
        let mut stream = client
            .read(ReadContentRequest {
                digest: digest.to_string(),
                offset,
                size,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if chunk.offset != offset + out.len() as i64 {
                return Err(Status::internal(format!(
                    "test client: Read chunk at offset {}, expected {}",
                    chunk.offset,
                    offset + out.len() as i64
                )));
            }
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .map_err(|_| Status::deadline_exceeded("test client: Read timed out"))?
}

/// Panics unless `result` is an error with `code` whose message contains every one of
/// `needles` (case-insensitive). Returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    needles: &[&str],
) -> Status {
    let status = match result {
        Ok(v) => panic!("expected {code:?}, got success: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "expected {code:?}, got {:?}: {}",
        status.code(),
        status.message()
    );
    let msg = status.message().to_lowercase();
    for n in needles {
        assert!(
            msg.contains(&n.to_lowercase()),
            "message of {code:?} should mention {n:?}: {:?}",
            status.message()
        );
    }
    status
}

/// A protobuf timestamp as `SystemTime`.
pub fn system_time(ts: &Option<prost_types::Timestamp>) -> SystemTime {
    let ts = ts.as_ref().expect("timestamp is set");
    assert!(ts.seconds >= 0, "timestamp before 1970: {ts:?}");
    UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32)
}

/// Panics unless `lo <= t <= hi`.
#[track_caller]
pub fn assert_between(what: &str, t: SystemTime, lo: SystemTime, hi: SystemTime) {
    assert!(
        lo <= t && t <= hi,
        "{what} {t:?} not between {lo:?} and {hi:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// CLIs
// ---------------------------------------------------------------------------------------------

/// A `ctr --address <socket>` command. Panics (fails the test) if the stock ctr is missing.
pub fn ctr_command(d: &Daemon) -> Command {
    assert!(
        Path::new(CTR).exists(),
        "stock ctr not found at {CTR}: install Debian's `containerd` package"
    );
    let mut cmd = Command::new(CTR);
    cmd.arg("--address")
        .arg(d.socket())
        .arg("--connect-timeout")
        .arg("10s")
        .env_remove("CONTAINERD_NAMESPACE")
        .env_remove("CONTAINERD_ADDRESS");
    cmd
}

/// Runs the stock `ctr` against `d`.
pub fn ctr(d: &Daemon, args: &[&str]) -> Output {
    run(ctr_command(d).args(args), None)
}

/// Runs the stock `ctr` against `d` with `input` on stdin.
pub fn ctr_input(d: &Daemon, args: &[&str], input: &[u8]) -> Output {
    run(ctr_command(d).args(args), Some(input))
}

/// A `berth --address <socket>` command (our CLI).
pub fn berth_command(d: &Daemon) -> Command {
    let mut cmd = Command::new(Daemon::binary("berth"));
    cmd.arg("--address").arg(d.socket());
    cmd
}

/// Runs our `berth` CLI against `d`.
pub fn berth(d: &Daemon, args: &[&str]) -> Output {
    run(berth_command(d).args(args), None)
}

/// Runs `cmd` to completion within [`CLI_TIMEOUT`], feeding `input` on stdin; panics (after
/// killing it) if it takes longer.
pub fn run(cmd: &mut Command, input: Option<&[u8]>) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let feeder = input.map(|data| {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{what} did not finish within {CLI_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Panics unless `out` succeeded; returns its stdout as text.
#[track_caller]
pub fn success(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics unless `out` failed; returns its stderr as text.
#[track_caller]
pub fn failure(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A busybox root filesystem in `dir/rootfs` (the host's `/bin/busybox`,
/// from Debian's busybox-static, plus applet links), for `ctr run --rootfs`
/// and bind-mounted task roots.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copy /bin/busybox (install busybox-static)");
    for applet in [
        "sh", "echo", "sleep", "true", "cat", "ls", "ps", "hostname", "grep", "wc",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    root
}
