//! Spec generation: containerd's default Linux spec, then the image config and run options
//! applied in the order `ctr run` applies its `SpecOpts`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxCpu, LinuxMemory, LinuxNamespaceType, LinuxPids, LinuxResources, Mount, Process, Spec,
    User,
};
use serde_json::json;

use crate::error::{Error, Result};
use crate::image::ImageConfig;
use crate::mounts::{default_mounts, host_network_mounts};
use crate::user;

/// containerd's type URL of a runtime spec in an `Any` (the value is the spec's JSON).
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// containerd's type URL of an exec's process in an `Any` (the value is the process's JSON).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// `ociVersion` of generated specs: containerd 1.6's (runc 1.1 takes any 1.x).
pub const SPEC_VERSION: &str = "1.0.2-dev";
/// The environment's `PATH` when the image sets none (containerd's `defaultUnixEnv`).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The CFS period `--cpus` works with, in microseconds (as ctr and Docker).
pub const CPU_PERIOD: u64 = 100_000;

/// containerd's default capability set (`defaultUnixCaps`).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Namespaces shared with the host instead of new ones (the mount namespace is always new).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostNamespaces {
    pub pid: bool,
    pub ipc: bool,
    pub uts: bool,
    /// Host networking also binds the host's `/etc/hosts` and `/etc/resolv.conf` read-only
    /// and sets `HOSTNAME` to the host's name, like `ctr run --net-host`.
    pub network: bool,
}

/// Cgroup resource limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// CPUs' worth of CFS quota (`--cpus 0.5`: 50000us per 100000us period).
    pub cpus: Option<f64>,
    /// Relative CPU weight (cgroup v1 `cpu.shares`).
    pub cpu_shares: Option<u64>,
    /// CPUs the container may run on (`0-2,4`).
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use (`0`).
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Maximum number of processes.
    pub pids_limit: Option<i64>,
}

/// What a container runs with beyond its image config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// containerd namespace, for the default cgroups path `/<namespace>/<id>`.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// Replaces the image's Cmd (the Entrypoint stays), if not empty.
    pub args: Vec<String>,
    /// `KEY=value` set over the image's environment; a bare `KEY` unsets it.
    pub env: Vec<String>,
    /// Working directory instead of the image's.
    pub cwd: Option<String>,
    /// User instead of the image's (same syntax: `uid[:gid]`, `name[:group]`).
    pub user: Option<String>,
    /// The container's root filesystem on this host (e.g. its snapshot mounted read-only),
    /// to resolve user and group names; without it only numeric users work.
    pub rootfs: Option<PathBuf>,
    /// Hostname in the container's UTS namespace (also `HOSTNAME` in the environment).
    pub hostname: Option<String>,
    /// Namespaces shared with the host.
    pub host: HostNamespaces,
    /// Cgroups path instead of `/<namespace>/<id>`; `Some("")` leaves it to the runtime.
    pub cgroups_path: Option<String>,
    pub resources: Resources,
    /// Extra mounts after the default ones (e.g. from [`crate::parse_mount`]).
    pub mounts: Vec<Mount>,
    /// Mount the rootfs read-only.
    pub readonly_rootfs: bool,
    /// Give the process a terminal (and `TERM=xterm` unless set).
    pub terminal: bool,
    /// The terminal's initial size as (width, height), so the process sees it from its
    /// first instruction (a later `ResizePty` races with it).
    pub console_size: Option<(u32, u32)>,
    /// Allow the process to gain privileges (turns off `noNewPrivileges`).
    pub new_privileges: bool,
    pub annotations: BTreeMap<String, String>,
}

impl RunOptions {
    /// Options for container `id` in `namespace`, everything else default.
    pub fn new(namespace: impl Into<String>, id: impl Into<String>) -> RunOptions {
        RunOptions {
            namespace: namespace.into(),
            id: id.into(),
            ..RunOptions::default()
        }
    }
}

/// How to derive an exec's process from the container's spec (ctr's `tasks exec`).
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command; must not be empty.
    pub args: Vec<String>,
    /// `KEY=value` over the container's environment.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// Numeric `uid[:gid]` (names would need the rootfs).
    pub user: Option<String>,
    pub terminal: bool,
    /// The terminal's initial size as (width, height).
    pub console_size: Option<(u32, u32)>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// containerd's default Linux spec (`populateDefaultUnixSpec`) plus the device cgroup rules of
/// `WithDefaultUnixDevices` and the mounts of [`default_mounts`]: new pid, ipc, uts, mount and
/// network namespaces, root path `rootfs`, cwd `/`, uid 0, no-new-privileges, the default
/// capabilities, `RLIMIT_NOFILE` 1024/1024, masked and read-only paths, cgroups path
/// `/<namespace>/<id>`. The process has no args yet.
pub fn default_spec(namespace: &str, id: &str) -> Spec {
    let device = |major: i64, minor: Option<i64>| {
        let mut d = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
        if let Some(minor) = minor {
            d["minor"] = json!(minor);
        }
        d
    };
    let value = json!({
        "ociVersion": SPEC_VERSION,
        "root": {"path": "rootfs"},
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "mounts": default_mounts(),
        "linux": {
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "cgroupsPath": format!("/{namespace}/{id}"),
            "resources": {
                "devices": [
                    {"allow": false, "access": "rwm"},
                    device(1, Some(3)),   // /dev/null
                    device(1, Some(8)),   // /dev/random
                    device(1, Some(7)),   // /dev/full
                    device(5, Some(0)),   // /dev/tty
                    device(1, Some(5)),   // /dev/zero
                    device(1, Some(9)),   // /dev/urandom
                    device(5, Some(1)),   // /dev/console
                    device(136, None),    // /dev/pts/*
                    device(5, Some(2)),   // /dev/ptmx
                ],
            },
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network"},
            ],
        },
    });
    serde_json::from_value(value).expect("the default spec is a valid spec")
}

/// containerd's `replaceOrAppendEnvValues`: each `KEY=value` of `overrides` replaces the entry
/// of `KEY` in `defaults` or is appended; a bare `KEY` removes it.
pub fn replace_or_append_env(defaults: &[String], overrides: &[String]) -> Vec<String> {
    fn key(e: &str) -> &str {
        e.split_once('=').map_or(e, |(k, _)| k)
    }
    let mut out: Vec<Option<String>> = defaults.iter().cloned().map(Some).collect();
    for o in overrides {
        let k = key(o);
        let existing = out
            .iter()
            .position(|e| e.as_deref().is_some_and(|e| key(e) == k));
        match (o.contains('='), existing) {
            (true, Some(i)) => out[i] = Some(o.clone()),
            (true, None) => out.push(Some(o.clone())),
            (false, Some(i)) => out[i] = None,
            (false, None) => {}
        }
    }
    out.into_iter().flatten().collect()
}

fn has_key(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
}

fn validate_cpuset(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            let a = ends.next().unwrap_or("");
            let b = ends.next();
            let num = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
            match b {
                None => num(a),
                Some(b) => num(a) && num(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
            }
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid {what} {s:?}: want a list like 0-2,4"
        )))
    }
}

fn resources(spec_resources: &mut LinuxResources, r: &Resources) -> Result<()> {
    if let Some(limit) = r.memory_limit {
        if limit <= 0 {
            return Err(invalid(format!(
                "invalid memory limit {limit}: must be positive"
            )));
        }
        let mut m = LinuxMemory::default();
        m.set_limit(Some(limit));
        spec_resources.set_memory(Some(m));
    }
    let mut cpu = LinuxCpu::default();
    let mut any_cpu = false;
    if let Some(cpus) = r.cpus {
        let quota = cpus * CPU_PERIOD as f64;
        if !cpus.is_finite() || quota < 1000.0 {
            return Err(invalid(format!(
                "invalid cpus {cpus}: must be at least 0.01"
            )));
        }
        cpu.set_quota(Some(quota as i64))
            .set_period(Some(CPU_PERIOD));
        any_cpu = true;
    }
    if let Some(shares) = r.cpu_shares {
        if shares < 2 {
            return Err(invalid(format!(
                "invalid cpu shares {shares}: must be at least 2"
            )));
        }
        cpu.set_shares(Some(shares));
        any_cpu = true;
    }
    if let Some(cpus) = &r.cpuset_cpus {
        validate_cpuset("cpuset cpus", cpus)?;
        cpu.set_cpus(Some(cpus.clone()));
        any_cpu = true;
    }
    if let Some(mems) = &r.cpuset_mems {
        validate_cpuset("cpuset mems", mems)?;
        cpu.set_mems(Some(mems.clone()));
        any_cpu = true;
    }
    if any_cpu {
        spec_resources.set_cpu(Some(cpu));
    }
    if let Some(limit) = r.pids_limit {
        if limit <= 0 {
            return Err(invalid(format!(
                "invalid pids limit {limit}: must be positive"
            )));
        }
        let mut p = LinuxPids::default();
        p.set_limit(limit);
        spec_resources.set_pids(Some(p));
    }
    Ok(())
}

fn set_user(process: &mut Process, u: user::User) {
    let mut spec_user = User::default();
    spec_user
        .set_uid(u.uid)
        .set_gid(u.gid)
        .set_additional_gids(Some(u.additional_gids));
    process.set_user(spec_user);
}

fn console_box(size: Option<(u32, u32)>) -> Option<oci_spec::runtime::Box> {
    let (width, height) = size.filter(|&(w, h)| w > 0 && h > 0)?;
    oci_spec::runtime::BoxBuilder::default()
        .width(u64::from(width))
        .height(u64::from(height))
        .build()
        .ok()
}

fn host_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn validate_id(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.contains('/') || s == "." || s == ".." {
        return Err(invalid(format!("invalid {what} {s:?}")));
    }
    Ok(())
}

/// The spec of a new container: [`default_spec`], then the image config (environment,
/// Entrypoint + Cmd or `args`, working directory, user), then `opts`.
///
/// The environment is the image's (or [`DEFAULT_PATH_ENV`] if it has none) with `HOSTNAME`
/// and then `opts.env` set over it; a default `PATH` is added if the result has none, and
/// `TERM=xterm` with a terminal unless `TERM` is set.
pub fn generate(image: &ImageConfig, opts: &RunOptions) -> Result<Spec> {
    validate_id("namespace", &opts.namespace)?;
    validate_id("container id", &opts.id)?;
    let mut spec = default_spec(&opts.namespace, &opts.id);

    // Environment.
    let mut env = if image.env.is_empty() {
        vec![DEFAULT_PATH_ENV.to_string()]
    } else {
        image.env.clone()
    };
    let hostname = match &opts.hostname {
        Some(h) if h.is_empty() => None,
        Some(h) => Some(h.clone()),
        None => None,
    };
    let env_hostname = hostname
        .clone()
        .or_else(|| opts.host.network.then(host_hostname).flatten());
    if let Some(h) = &env_hostname {
        env = replace_or_append_env(&env, &[format!("HOSTNAME={h}")]);
    }
    env = replace_or_append_env(&env, &opts.env);
    if !has_key(&env, "PATH") {
        env.insert(0, DEFAULT_PATH_ENV.to_string());
    }
    if opts.terminal && !has_key(&env, "TERM") {
        env.push("TERM=xterm".to_string());
    }

    // Command.
    let args = image.args(&opts.args);
    if args.is_empty() {
        return Err(invalid(
            "no command: the image has neither Entrypoint nor Cmd, and none was given",
        ));
    }

    // Working directory.
    let cwd = match opts.cwd.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None if image.working_dir.is_empty() => "/".to_string(),
        None => image.working_dir.clone(),
    };
    if !cwd.starts_with('/') {
        return Err(invalid(format!(
            "invalid working directory {cwd:?}: must be absolute"
        )));
    }

    // User.
    let user_str = opts.user.as_deref().unwrap_or(&image.user);
    let resolved = user::resolve(user_str, opts.rootfs.as_deref())?;

    let process = spec
        .process_mut()
        .as_mut()
        .expect("default spec has a process");
    process
        .set_env(Some(env))
        .set_args(Some(args))
        .set_cwd(cwd.into());
    set_user(process, resolved);
    if opts.terminal {
        process.set_terminal(Some(true));
        process.set_console_size(console_box(opts.console_size));
    }
    if opts.new_privileges {
        process.set_no_new_privileges(Some(false));
    }

    if let Some(h) = hostname {
        spec.set_hostname(Some(h));
    }
    if opts.readonly_rootfs {
        if let Some(root) = spec.root_mut() {
            root.set_readonly(Some(true));
        }
    }

    // Mounts: defaults, host files of host networking, then the caller's.
    let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
    if opts.host.network {
        mounts.extend(host_network_mounts());
    }
    mounts.extend(opts.mounts.iter().cloned());

    let linux = spec.linux_mut().as_mut().expect("default spec has linux");
    let shared: Vec<LinuxNamespaceType> = [
        (opts.host.pid, LinuxNamespaceType::Pid),
        (opts.host.ipc, LinuxNamespaceType::Ipc),
        (opts.host.uts, LinuxNamespaceType::Uts),
        (opts.host.network, LinuxNamespaceType::Network),
    ]
    .into_iter()
    .filter_map(|(host, t)| host.then_some(t))
    .collect();
    if let Some(namespaces) = linux.namespaces_mut() {
        namespaces.retain(|n| !shared.contains(&n.typ()));
    }
    if let Some(path) = &opts.cgroups_path {
        linux.set_cgroups_path((!path.is_empty()).then(|| path.into()));
    }
    resources(
        linux
            .resources_mut()
            .get_or_insert_with(LinuxResources::default),
        &opts.resources,
    )?;

    if !opts.annotations.is_empty() {
        spec.set_annotations(Some(
            opts.annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    Ok(spec)
}

/// The process of an exec: the container's process with other args, terminal, environment,
/// working directory and user (ctr's `tasks exec`).
pub fn exec_process(spec: &Spec, opts: &ExecOptions) -> Result<Process> {
    if opts.args.is_empty() {
        return Err(invalid("exec needs a command"));
    }
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(opts.args.clone()))
        .set_terminal(opts.terminal.then_some(true))
        .set_console_size(
            opts.terminal
                .then(|| console_box(opts.console_size))
                .flatten(),
        );
    let mut env = replace_or_append_env(p.env().as_deref().unwrap_or(&[]), &opts.env);
    if opts.terminal && !has_key(&env, "TERM") {
        env.push("TERM=xterm".to_string());
    }
    p.set_env(Some(env));
    if let Some(cwd) = opts.cwd.as_deref().filter(|c| !c.is_empty()) {
        if !cwd.starts_with('/') {
            return Err(invalid(format!(
                "invalid working directory {cwd:?}: must be absolute"
            )));
        }
        p.set_cwd(cwd.into());
    }
    if let Some(u) = opts.user.as_deref().filter(|u| !u.is_empty()) {
        set_user(&mut p, user::resolve(u, None)?);
    }
    Ok(p)
}

/// The spec as JSON, as it travels in an `Any` and lands in `config.json`.
pub fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("runtime spec types serialise")
}

/// A spec from its JSON.
pub fn from_json(data: &[u8]) -> Result<Spec> {
    serde_json::from_slice(data).map_err(|e| invalid(format!("invalid runtime spec: {e}")))
}

#[cfg(test)]
mod tests;
