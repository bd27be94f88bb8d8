//! `berth run IMAGE ID [CMD...]`: a container from an unpacked image, and its task.
//!
//! As `ctr run`: the image's manifest for this platform and its config come from the content
//! store; the chain ID of its layers names the unpacked snapshot; a writable snapshot `ID` on
//! top of it (under a lease until the container holds it); a runtime spec from `berth-oci`;
//! the container record; then the task with stdio FIFOs, in the foreground until it exits.
//! With `--rootfs DIR` the container runs on a directory instead: no image, no snapshot.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use berth_proto::containerd::services::containers::v1::{
    container::Runtime, Container, CreateContainerRequest, DeleteContainerRequest,
    GetContainerRequest,
};
use berth_proto::containerd::services::content::v1::ReadContentRequest;
use berth_proto::containerd::services::images::v1::GetImageRequest;
use berth_proto::containerd::services::leases::v1::{CreateRequest, DeleteRequest};
use berth_proto::containerd::services::namespaces::v1::GetNamespaceRequest;
use berth_proto::containerd::services::snapshots::v1::{
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use berth_proto::containerd::types::Mount;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use super::tasks::session;
use super::tasks::{self, stdio, NewTask};
use crate::client::{self, Conn};
use crate::error::{CallError, CallExt};
use crate::Global;

/// The namespace label naming its default snapshotter (containerd's).
const DEFAULT_SNAPSHOTTER_LABEL: &str = "containerd.io/defaults/snapshotter";
/// The container label with the image's stop signal (containerd's).
const STOP_SIGNAL_LABEL: &str = "io.containerd.image.config.stop-signal";
/// How long the lease that holds a new snapshot lives if `berth` dies before removing it.
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove the task, the container and its snapshot after the exit.
    #[arg(long)]
    rm: bool,
    /// Return once the task started (its stdio FIFOs stay for `berth tasks attach`).
    #[arg(short, long)]
    detach: bool,
    /// Allocate a terminal (puts the local one in raw mode).
    #[arg(short, long)]
    tty: bool,
    /// Environment variable (KEY=VALUE, or KEY to unset); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Extra mount, as ctr: type=bind,src=/a,dst=/b,options=rbind:ro; repeatable.
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<String>,
    /// Memory limit: bytes or a size like 512m, 1g.
    #[arg(short, long, alias = "memory-limit", value_parser = parse_bytes)]
    memory: Option<i64>,
    /// CPUs' worth of CFS quota (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// CPUs the container may run on (e.g. 0-1,3).
    #[arg(long)]
    cpuset_cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Use the host's network (and its /etc/hosts and /etc/resolv.conf).
    #[arg(long)]
    net_host: bool,
    /// Hostname (default: the container ID; the host's with --net-host).
    #[arg(long)]
    hostname: Option<String>,
    /// User to run as: uid[:gid] or name[:group] from the image's /etc/passwd and /etc/group.
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory.
    #[arg(long)]
    cwd: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Send all stdio to /dev/null.
    #[arg(long)]
    null_io: bool,
    /// Container label (key=value); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Runtime: io.containerd.berth.v2 (Berth's shim) or io.containerd.runc.v2 (the
    /// stock runc shim, if installed).
    #[arg(long, env = "BERTH_RUNTIME", default_value = "io.containerd.berth.v2")]
    runtime: String,
    /// Snapshotter (default: the namespace's default, else overlayfs).
    #[arg(long, env = "BERTH_SNAPSHOTTER", default_value = "")]
    snapshotter: String,
    /// Platform of the image to run (default: this host's, e.g. linux/amd64).
    #[arg(long)]
    platform: Option<String>,
    /// IMAGE is a root filesystem directory no snapshotter manages (as ctr's --rootfs); the
    /// command must then be given.
    #[arg(long)]
    rootfs: bool,
    /// The image, or with --rootfs the root filesystem directory.
    #[arg(value_name = "IMAGE")]
    image: String,
    id: String,
    /// Command and arguments instead of the image's Cmd.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Parses a size: plain bytes, or a number with a binary unit `k`, `m`, `g`, `t` (also
/// `kb`/`kib`, any case), as Docker's `--memory`: `512m`, `1g`, `1.5g`.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: want e.g. 1048576, 512m or 1g"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > i64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(bytes as i64)
}

/// The chain IDs of layers with `diff_ids` (image-spec: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`); the last names the unpacked
/// snapshot of the whole image.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: String,
}

impl Platform {
    fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: String::new(),
        }
    }

    /// `os[/arch[/variant]]`.
    fn parse(s: &str) -> anyhow::Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            bail!("invalid platform {s:?}: want os[/arch[/variant]]");
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts
                .get(1)
                .map(|a| a.to_string())
                .unwrap_or(Platform::host().architecture),
            variant: parts.get(2).map(|v| v.to_string()).unwrap_or_default(),
        })
    }

    /// Whether an image's `other` platform runs here (an empty variant matches any).
    fn matches(&self, other: &Platform) -> bool {
        other.os == self.os
            && other.architecture == self.architecture
            && (self.variant.is_empty()
                || other.variant.is_empty()
                || other.variant == self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: String,
    #[serde(default)]
    rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// What `berth run` needs of an image.
#[derive(Debug)]
struct Resolved {
    /// The runtime part of the config.
    config: berth_oci::ImageConfig,
    diff_ids: Vec<String>,
}

/// Reads a whole blob and checks its digest.
async fn read_blob(conn: &Conn, digest: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let ctx = format!("{what}: reading {digest}");
    let mut stream = conn
        .content()
        .read(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })
        .await
        .ctx(&ctx)?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.ctx(&ctx)? {
        data.extend_from_slice(&chunk.data);
    }
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    if digest.starts_with("sha256:") && got != digest {
        bail!("{ctx}: content has digest {got}");
    }
    Ok(data)
}

/// The kind of a manifest-ish document: by media type, else by its members.
fn kind_of(media_type: &str, data: &[u8]) -> &'static str {
    match media_type {
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => "index",
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => "manifest",
        _ => match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(v) if v.get("manifests").is_some() => "index",
            Ok(v) if v.get("config").is_some() => "manifest",
            _ => "unknown",
        },
    }
}

/// From the image's target, the manifest for `platform`, its config and diff IDs.
async fn resolve_image(
    conn: &Conn,
    name: &str,
    target: Descriptor,
    platform: &Platform,
) -> anyhow::Result<Resolved> {
    let what = format!("image {name}");
    let mut desc = target;
    for _ in 0..8 {
        let data = read_blob(conn, &desc.digest, &what).await?;
        match kind_of(&desc.media_type, &data) {
            "index" => {
                let index: Index = serde_json::from_slice(&data)
                    .with_context(|| format!("{what}: index {}", desc.digest))?;
                desc = index
                    .manifests
                    .into_iter()
                    .find(|m| m.platform.as_ref().is_none_or(|p| platform.matches(p)))
                    .ok_or_else(|| anyhow!("{what} has no manifest for {platform}"))?;
            }
            "manifest" => {
                let manifest: Manifest = serde_json::from_slice(&data)
                    .with_context(|| format!("{what}: manifest {}", desc.digest))?;
                let config_data = read_blob(conn, &manifest.config.digest, &what).await?;
                let doc: ConfigDoc = serde_json::from_slice(&config_data)
                    .with_context(|| format!("{what}: config {}", manifest.config.digest))?;
                let declared = Platform {
                    os: doc.os.clone(),
                    architecture: doc.architecture.clone(),
                    variant: doc.variant.clone(),
                };
                if !doc.os.is_empty() && !platform.matches(&declared) {
                    bail!("{what} is for {declared}, not {platform}");
                }
                let config = berth_oci::ImageConfig::from_json(&config_data)
                    .map_err(|e| anyhow!("{what}: {e}"))?;
                return Ok(Resolved {
                    config,
                    diff_ids: doc.rootfs.diff_ids,
                });
            }
            _ => bail!(
                "{what}: {} is neither an index nor a manifest (media type {:?})",
                desc.digest,
                desc.media_type
            ),
        }
    }
    bail!("{what}: indexes nested too deep")
}

/// The snapshotter to use: the flag, else the namespace's default label, else overlayfs.
async fn snapshotter_name(conn: &Conn, g: &Global, flag: &str) -> String {
    if !flag.is_empty() {
        return flag.to_string();
    }
    conn.namespaces()
        .get(GetNamespaceRequest {
            name: g.namespace.clone(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().namespace)
        .and_then(|n| n.labels.get(DEFAULT_SNAPSHOTTER_LABEL).cloned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "overlayfs".to_string())
}

/// The snapshot's mounts made read-only, as containerd's `tryReadonlyMounts` (plus binds).
fn readonly_mounts(mounts: &[Mount]) -> Vec<berth_snapshotter::Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut options: Vec<String> =
                m.options.iter().filter(|o| *o != "rw").cloned().collect();
            options.push("ro".to_string());
            berth_snapshotter::Mount {
                kind: m.r#type.clone(),
                source: m.source.clone(),
                options,
            }
        })
        .collect()
}

/// Generates the spec, with the snapshot mounted read-only on a temporary directory so that
/// user and group names resolve from its /etc/passwd and /etc/group (as containerd's
/// `WithUser` does). Without the privilege to mount, numeric users still work.
fn generate_spec(
    config: &berth_oci::ImageConfig,
    mut opts: berth_oci::RunOptions,
    mounts: &[Mount],
) -> anyhow::Result<berth_oci::Spec> {
    let root = match stdio::unique_dir(&std::env::temp_dir().join("berth-rootfs"), &opts.id) {
        Ok(dir) => dir,
        Err(_) => return berth_oci::generate(config, &opts).map_err(anyhow::Error::from),
    };
    let guard = berth_snapshotter::MountGuard::mount(&readonly_mounts(mounts), &root);
    let result = match &guard {
        Ok(_) => {
            opts.rootfs = Some(root.clone());
            berth_oci::generate(config, &opts).map_err(anyhow::Error::from)
        }
        Err(mount_err) => berth_oci::generate(config, &opts).map_err(|e| match e {
            berth_oci::Error::RootfsRequired { .. } => {
                anyhow!("{e}; mounting it failed: {mount_err}")
            }
            e => e.into(),
        }),
    };
    if let Ok(g) = guard {
        g.unmount()
            .with_context(|| format!("unmounting {}", root.display()))?;
    }
    let _ = std::fs::remove_dir(&root);
    result
}

/// What this run created, undone if it fails before its task runs.
#[derive(Default)]
struct Created {
    lease: Option<String>,
    snapshot: Option<(String, String)>,
    container: Option<String>,
}

impl Created {
    async fn undo(&mut self, conn: &Conn) {
        if let Some(id) = self.container.take() {
            let _ = conn
                .containers()
                .delete(DeleteContainerRequest { id })
                .await;
        }
        if let Some((snapshotter, key)) = self.snapshot.take() {
            let _ = conn
                .snapshots()
                .remove(RemoveSnapshotRequest { snapshotter, key })
                .await;
        }
        self.release_lease(conn).await;
    }

    /// Releases the lease, if any. The future owns its client, so it can run alongside the
    /// task's start.
    fn release_lease(&mut self, conn: &Conn) -> impl Future<Output = ()> + Send + 'static {
        let lease = self.lease.take();
        let mut leases = conn.leases();
        async move {
            if let Some(id) = lease {
                let _ = leases.delete(DeleteRequest { id, sync: false }).await;
            }
        }
    }
}

pub async fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    if a.rm && a.detach {
        bail!("--rm and --detach cannot be used together");
    }
    // Check the options before anything is created.
    let mut extra_mounts = Vec::new();
    for m in &a.mounts {
        extra_mounts.push(berth_oci::parse_mount(m)?);
    }
    if let Some(p) = &a.platform {
        Platform::parse(p)?;
    }
    let mut labels: BTreeMap<String, String> = crate::parse::labels(&a.labels)?;
    let id = a.id.clone();

    let rootfs_dir = match a.rootfs {
        true => Some(rootfs_dir(&a)?),
        false => None,
    };

    let conn = client::connect(g).await?;

    let source = match rootfs_dir {
        Some(dir) => Source::Dir(dir),
        None => {
            // An image needs a snapshot before the container exists: a duplicate id must
            // fail before that work. (On a directory, Create itself says so.) The check and
            // the image's resolution are independent reads: both at once.
            let (absent, source) =
                tokio::join!(check_absent(&conn, &id), image_source(g, &a, &conn));
            absent?;
            source?
        }
    };

    let mut created = Created::default();
    let result = create(
        g,
        &a,
        &conn,
        &mut created,
        CreateInputs {
            source: &source,
            extra_mounts,
            labels: &mut labels,
        },
    )
    .await;
    let rootfs = match result {
        Ok(mounts) => mounts,
        Err(e) => {
            created.undo(&conn).await;
            return Err(e);
        }
    };
    // The container holds its snapshot now: the lease goes while the task starts.
    let release = tokio::spawn(created.release_lease(&conn));

    let mut started = false;
    let status = tasks::start(
        &conn,
        NewTask {
            id: &id,
            rootfs,
            terminal: a.tty,
            detach: a.detach,
            null_io: a.null_io,
        },
        &mut started,
    )
    .await;
    let _ = release.await;
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            if !started || a.rm {
                created.undo(&conn).await;
            }
            return Err(e);
        }
    };
    if a.rm {
        // The task is gone (deleted on exit): remove what this run created.
        let snapshot = created.snapshot.take();
        let snapshot = snapshot.as_ref().map(|(s, k)| (s.as_str(), k.as_str()));
        let what = format!("run --rm {id}");
        super::containers::delete_with_snapshot(&conn, &id, snapshot, &what).await?;
    }
    session::exit_with(status.unwrap_or(0))
}

/// Fails if container `id` exists.
async fn check_absent(conn: &Conn, id: &str) -> anyhow::Result<()> {
    match conn
        .containers()
        .get(GetContainerRequest { id: id.to_string() })
        .await
    {
        Ok(_) => Err(CallError {
            context: format!("run {id}"),
            code: Code::AlreadyExists,
            message: format!("container {id} already exists"),
        }
        .into()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(CallError::new(format!("run {id}"), &s).into()),
    }
}

struct CreateInputs<'a> {
    source: &'a Source,
    extra_mounts: Vec<berth_oci::Mount>,
    labels: &'a mut BTreeMap<String, String>,
}

/// What the container's root filesystem comes from.
enum Source {
    /// An unpacked image: a new snapshot on top of its chain ID `parent` (empty: no layers).
    Image {
        name: String,
        config: Box<berth_oci::ImageConfig>,
        snapshotter: String,
        parent: String,
    },
    /// A directory (`--rootfs`).
    Dir(std::path::PathBuf),
}

/// The `--rootfs` directory, absolute, and the command to run on it.
fn rootfs_dir(a: &Args) -> anyhow::Result<std::path::PathBuf> {
    let dir =
        std::fs::canonicalize(&a.image).with_context(|| format!("root filesystem {}", a.image))?;
    if !dir.is_dir() {
        bail!("root filesystem {}: not a directory", dir.display());
    }
    if a.command.is_empty() {
        bail!("run --rootfs: give the command to run (there is no image to take it from)");
    }
    Ok(dir)
}

/// Resolves the image: its config for this platform and the snapshot its layers unpack to.
async fn image_source(g: &Global, a: &Args, conn: &Conn) -> anyhow::Result<Source> {
    let id = &a.id;
    let platform = match &a.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let snapshotter = snapshotter_name(conn, g, &a.snapshotter).await;
    let image = conn
        .images()
        .get(GetImageRequest {
            name: a.image.clone(),
        })
        .await
        .ctx(format_args!("image {}", a.image))?
        .into_inner()
        .image
        .unwrap_or_default();
    let target = image.target.clone().unwrap_or_default();
    let resolved = resolve_image(
        conn,
        &a.image,
        Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            platform: None,
        },
        &platform,
    )
    .await?;
    let parent = chain_ids(&resolved.diff_ids).pop().unwrap_or_default();
    if !parent.is_empty() {
        match conn
            .snapshots()
            .stat(StatSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: parent.clone(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {
                return Err(CallError {
                    context: format!("run {id}"),
                    code: Code::FailedPrecondition,
                    message: format!(
                        "image {} is not unpacked for snapshotter {snapshotter}; run `berth images unpack`",
                        a.image
                    ),
                }
                .into())
            }
            Err(s) => {
                return Err(CallError::new(
                    format!("run {id}: snapshot {parent} of image {}", a.image),
                    &s,
                )
                .into())
            }
        }
    }

    Ok(Source::Image {
        name: image.name,
        config: Box::new(resolved.config),
        snapshotter,
        parent,
    })
}

/// The snapshot under a lease (for an image) and the container record; returns the rootfs
/// mounts (none for a directory).
async fn create(
    g: &Global,
    a: &Args,
    conn: &Conn,
    created: &mut Created,
    i: CreateInputs<'_>,
) -> anyhow::Result<Vec<Mount>> {
    let id = &a.id;
    let opts = berth_oci::RunOptions {
        namespace: g.namespace.clone(),
        id: id.clone(),
        args: a.command.clone(),
        env: a.env.clone(),
        cwd: a.cwd.clone(),
        user: a.user.clone(),
        rootfs: None,
        hostname: a
            .hostname
            .clone()
            .or_else(|| (!a.net_host).then(|| id.clone())),
        host: berth_oci::HostNamespaces {
            network: a.net_host,
            ..Default::default()
        },
        cgroups_path: None,
        resources: berth_oci::Resources {
            cpus: a.cpus,
            cpuset_cpus: a.cpuset_cpus.clone(),
            memory_limit: a.memory,
            pids_limit: a.pids_limit,
            ..Default::default()
        },
        mounts: i.extra_mounts,
        readonly_rootfs: a.read_only,
        terminal: a.tty,
        console_size: a.tty.then(stdio::terminal_size).flatten(),
        new_privileges: false,
        annotations: BTreeMap::new(),
    };
    // A directory has no image config: the defaults.
    let no_image = berth_oci::ImageConfig::default();
    let (spec, mounts, snapshotter, image_name, config) = match i.source {
        Source::Image {
            name,
            config,
            snapshotter,
            parent,
        } => {
            let mounts = prepare_snapshot(conn, created, id, snapshotter, parent).await?;
            let (c, m) = ((**config).clone(), mounts.clone());
            let spec = tokio::task::spawn_blocking(move || generate_spec(&c, opts, &m))
                .await
                .context("generating the spec")?
                .with_context(|| format!("run {id}: runtime spec"))?;
            (spec, mounts, snapshotter.as_str(), name.as_str(), &**config)
        }
        Source::Dir(dir) => {
            let opts = berth_oci::RunOptions {
                rootfs: Some(dir.clone()),
                ..opts
            };
            let mut spec = berth_oci::generate(&no_image, &opts)
                .with_context(|| format!("run {id}: runtime spec"))?;
            if let Some(root) = spec.root_mut() {
                root.set_path(dir.clone());
            }
            (spec, Vec::new(), "", "", &no_image)
        }
    };

    for (k, v) in &config.labels {
        i.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let stop_signal = if config.stop_signal.is_empty() {
        "SIGTERM".to_string()
    } else {
        config.stop_signal.clone()
    };
    i.labels
        .entry(STOP_SIGNAL_LABEL.to_string())
        .or_insert(stop_signal);

    conn.containers()
        .create(CreateContainerRequest {
            container: Some(Container {
                id: id.clone(),
                labels: i.labels.clone().into_iter().collect(),
                image: image_name.to_string(),
                runtime: Some(Runtime {
                    name: a.runtime.clone(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: berth_oci::SPEC_TYPE_URL.to_string(),
                    value: berth_oci::to_json(&spec),
                }),
                snapshotter: snapshotter.to_string(),
                snapshot_key: if snapshotter.is_empty() {
                    String::new()
                } else {
                    id.clone()
                },
                ..Default::default()
            }),
        })
        .await
        .ctx(format_args!("run {id}: creating the container"))?;
    created.container = Some(id.clone());
    Ok(mounts)
}

/// The container's writable snapshot `id` on `parent`, under a lease until the container
/// record holds it.
async fn prepare_snapshot(
    conn: &Conn,
    created: &mut Created,
    id: &str,
    snapshotter: &str,
    parent: &str,
) -> anyhow::Result<Vec<Mount>> {
    let lease_id = format!(
        "berth-run-{id}-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let expire = prost_types::Timestamp::from(SystemTime::now() + LEASE_EXPIRY);
    let expire = prost_types::Timestamp {
        seconds: expire.seconds,
        nanos: 0,
    };
    conn.leases()
        .create(CreateRequest {
            id: lease_id.clone(),
            labels: [("containerd.io/gc.expire".to_string(), expire.to_string())]
                .into_iter()
                .collect(),
        })
        .await
        .ctx(format_args!("run {id}: lease"))?;
    created.lease = Some(lease_id.clone());

    let leased = conn.with_lease(Some(&lease_id))?;
    let mounts = leased
        .snapshots()
        .prepare(PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: id.to_string(),
            parent: parent.to_string(),
            labels: Default::default(),
        })
        .await
        .ctx(format_args!(
            "run {id}: preparing snapshot {id} ({})",
            snapshotter
        ))?
        .into_inner()
        .mounts;
    created.snapshot = Some((snapshotter.to_string(), id.to_string()));
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("64kb"), Ok(64 << 10));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("2t"), Ok(2 << 40));
        for bad in ["", "m", "12x", "-1", "0", "1.2.3m", "99999999999t"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chain_ids_match_the_image_spec() {
        let diff_ids = [
            "sha256:77ea7eee3d80b1a38f83906dd3048e2689457eb90e18a7d12f839c5ae37106a2",
            "sha256:95cf1a2e1698fe3ca1fcc3f653119146b271d0b62e487ec264441e886a11bd06",
            "sha256:a0e70458d19e37e14d6388030a017c587283e2fb6ef10c0744cad0294c47e8f8",
        ]
        .map(String::from);
        assert_eq!(
            chain_ids(&diff_ids),
            [
                "sha256:77ea7eee3d80b1a38f83906dd3048e2689457eb90e18a7d12f839c5ae37106a2",
                "sha256:9c7a0b8937394482a0afcc4bef0ca0aba0d74084bd9f60198ec7fac434e5436d",
                "sha256:1512378f2edc09c9e21c7511cc1aaf7c6d42d3b6ff301027b8527b8b23c3ce70",
            ]
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn platforms() {
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert_eq!(amd64.to_string(), "linux/amd64");
        let arm = Platform::parse("linux/arm/v7").unwrap();
        assert!(amd64.matches(&Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new()
        }));
        assert!(!amd64.matches(&arm));
        assert!(arm.matches(&Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: String::new()
        }));
        assert!(!arm.matches(&Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: "v6".into()
        }));
        assert_eq!(Platform::parse("linux").unwrap().os, "linux");
        assert!(Platform::parse("linux//x").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn document_kinds() {
        assert_eq!(kind_of(MEDIA_OCI_INDEX, b""), "index");
        assert_eq!(kind_of(MEDIA_DOCKER_MANIFEST, b""), "manifest");
        assert_eq!(kind_of("", br#"{"manifests": []}"#), "index");
        assert_eq!(kind_of("", br#"{"config": {}}"#), "manifest");
        assert_eq!(kind_of("", b"[]"), "unknown");
    }

    #[test]
    fn readonly_snapshot_mounts() {
        let m = readonly_mounts(&[
            Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![
                    "index=off".into(),
                    "lowerdir=/l".into(),
                    "upperdir=/u".into(),
                ],
            },
            Mount {
                r#type: "bind".into(),
                source: "/snap".into(),
                target: String::new(),
                options: vec!["rbind".into(), "rw".into()],
            },
        ]);
        assert_eq!(
            m[0].options,
            ["index=off", "lowerdir=/l", "upperdir=/u", "ro"]
        );
        assert_eq!(m[1].options, ["rbind", "ro"]);
        assert_eq!(m[1].kind, "bind");
    }

    #[test]
    fn flags_parse_like_ctr() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        let c = Cli::try_parse_from([
            "run",
            "--rm",
            "-t",
            "--env",
            "A=1",
            "-e",
            "B=2",
            "--memory",
            "512m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "10",
            "--net-host",
            "--mount",
            "type=bind,src=/tmp,dst=/host,options=rbind:ro",
            "img",
            "c1",
            "sh",
            "-c",
            "echo hi",
        ])
        .unwrap();
        assert!(c.a.rm && c.a.tty && c.a.net_host && !c.a.detach);
        assert_eq!(c.a.env, ["A=1", "B=2"]);
        assert_eq!(c.a.memory, Some(512 << 20));
        assert_eq!(c.a.cpus, Some(0.5));
        assert_eq!(c.a.pids_limit, Some(10));
        assert_eq!(c.a.runtime, "io.containerd.berth.v2");
        assert_eq!((c.a.image.as_str(), c.a.id.as_str()), ("img", "c1"));
        assert_eq!(c.a.command, ["sh", "-c", "echo hi"]);
        let c = Cli::try_parse_from(["run", "--memory-limit", "1048576", "img", "c2"]).unwrap();
        assert_eq!(c.a.memory, Some(1 << 20));
        assert!(c.a.command.is_empty());
        assert!(Cli::try_parse_from(["run", "--memory", "lots", "img", "c"]).is_err());
    }
}
