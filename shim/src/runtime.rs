//! The OCI runtime behind the shim, driven through its command line.
//!
//! [`OciRuntime`] is what the task service needs; [`RuncCli`] implements it for runc and for
//! runtimes with runc's command line (crun), selected by `containerd.runc.v1.Options`
//! `binary_name`. Every invocation is spawned through the [`Reaper`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reaper::Reaper;
use crate::runc_direct;
use crate::stdio::ChildStdio;

/// A boxed future borrowing the runtime.
pub type RtFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// How to create a container or exec a process.
pub struct ProcessOpts {
    pub pid_file: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub stdio: ChildStdio,
}

/// An OCI runtime.
pub trait OciRuntime: Send + Sync {
    /// The binary, for messages.
    fn name(&self) -> &str;
    /// `create --bundle B ID`: the container's init waits for `start`.
    fn create<'a>(&'a self, id: &'a str, bundle: &'a Path, opts: ProcessOpts) -> RtFuture<'a, ()>;
    fn start<'a>(&'a self, id: &'a str) -> RtFuture<'a, ()>;
    /// `exec --detach --process SPEC ID`.
    fn exec<'a>(&'a self, id: &'a str, spec: &'a Path, opts: ProcessOpts) -> RtFuture<'a, ()>;
    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> RtFuture<'a, ()>;
    fn delete<'a>(&'a self, id: &'a str, force: bool) -> RtFuture<'a, ()>;
    fn pause<'a>(&'a self, id: &'a str) -> RtFuture<'a, ()>;
    fn resume<'a>(&'a self, id: &'a str) -> RtFuture<'a, ()>;
    /// The pids of the container's processes.
    fn ps<'a>(&'a self, id: &'a str) -> RtFuture<'a, Vec<u32>>;
    /// `update --resources -`, with `resources` as OCI `LinuxResources` JSON.
    fn update<'a>(&'a self, id: &'a str, resources: &'a [u8]) -> RtFuture<'a, ()>;
}

/// What the shim records in the bundle about its runtime (for `delete` of a dead shim).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Binary name or path (`runc`, `crun`, ...).
    pub binary: String,
    /// The runtime's state root (`--root`).
    pub root: PathBuf,
    #[serde(default)]
    pub systemd_cgroup: bool,
    #[serde(default)]
    pub no_pivot_root: bool,
    #[serde(default)]
    pub no_new_keyring: bool,
}

/// The file in the bundle holding the [`RuntimeConfig`].
pub const RUNTIME_CONFIG_FILE: &str = "berth-runtime.json";

impl RuntimeConfig {
    /// The default for namespace `ns`: runc with its state under Berth's.
    pub fn default_for(ns: &str) -> RuntimeConfig {
        RuntimeConfig {
            binary: "runc".into(),
            root: default_root("runc", ns),
            ..RuntimeConfig::default()
        }
    }

    /// The configuration from runc options (`None` = defaults). Without a `root` option the
    /// state lives in `/run/berth/<binary name>/<ns>`.
    pub fn from_options(
        ns: &str,
        opts: Option<&berth_proto::containerd::runc::v1::Options>,
    ) -> Self {
        let mut c = RuntimeConfig::default_for(ns);
        if let Some(o) = opts {
            if !o.binary_name.is_empty() {
                c.binary = o.binary_name.clone();
                c.root = default_root(&o.binary_name, ns);
            }
            if !o.root.is_empty() {
                c.root = Path::new(&o.root).join(ns);
            }
            c.systemd_cgroup = o.systemd_cgroup;
            c.no_pivot_root = o.no_pivot_root;
            c.no_new_keyring = o.no_new_keyring;
        }
        c
    }

    pub fn save(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(RUNTIME_CONFIG_FILE);
        let data = serde_json::to_vec(self).map_err(|e| Error::internal(e.to_string()))?;
        std::fs::write(&path, data).map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    /// The saved configuration, or `None` when the bundle has none.
    pub fn load(bundle: &Path) -> Result<Option<RuntimeConfig>> {
        let path = bundle.join(RUNTIME_CONFIG_FILE);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| Error::internal(format!("parse {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }
}

/// Whether the host mixes cgroup v1 controllers with a cgroup2 mount at
/// `/sys/fs/cgroup/unified` (systemd's hybrid layout).
pub fn host_is_hybrid() -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    fn fs_type(path: &str) -> Option<i64> {
        let c = std::ffi::CString::new(path).ok()?;
        // SAFETY: statfs fills the zeroed struct; the path is a valid C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
    }
    fs_type("/sys/fs/cgroup/unified") == Some(CGROUP2_SUPER_MAGIC)
        && fs_type("/sys/fs/cgroup") != Some(CGROUP2_SUPER_MAGIC)
}

/// The runtime's command line with its global flags. crun refuses the hybrid layout ("drop
/// all controllers from cgroupv2"), so on such hosts crun runs in a private mount namespace
/// where a tmpfs hides `/sys/fs/cgroup/unified`; it then sees, and uses, cgroup v1 only.
pub fn base_command(config: &RuntimeConfig) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&config.binary);
    cmd.arg("--root").arg(&config.root);
    if config.systemd_cgroup {
        cmd.arg("--systemd-cgroup");
    }
    let is_crun = Path::new(&config.binary)
        .file_name()
        .is_some_and(|n| n == "crun");
    if is_crun && host_is_hybrid() {
        // SAFETY: only raw syscalls (async-signal-safe) between fork and exec; the strings
        // are allocated before the fork.
        unsafe {
            cmd.pre_exec(|| {
                let none = std::ptr::null();
                let root = c"/".as_ptr();
                let target = c"/sys/fs/cgroup/unified".as_ptr();
                let tmpfs = c"tmpfs".as_ptr();
                if libc::unshare(libc::CLONE_NEWNS) < 0
                    || libc::mount(
                        none,
                        root,
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        none.cast(),
                    ) < 0
                    || libc::mount(tmpfs, target, tmpfs, 0, none.cast()) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

fn default_root(binary: &str, ns: &str) -> PathBuf {
    let name = Path::new(binary)
        .file_name()
        .map_or_else(|| binary.to_string(), |n| n.to_string_lossy().into_owned());
    Path::new(crate::STATE_DIR).join(name).join(ns)
}

/// runc, or a runtime with runc's command line.
pub struct RuncCli {
    config: RuntimeConfig,
    /// runc's JSON log for the container (errors of `create`/`exec` land there).
    log: PathBuf,
    reaper: Arc<Reaper>,
}

impl RuncCli {
    pub fn new(config: RuntimeConfig, bundle: &Path, reaper: Arc<Reaper>) -> RuncCli {
        RuncCli {
            config,
            log: bundle.join("log.json"),
            reaper,
        }
    }

    /// runc itself (not a runtime that only shares its command line): the shim may then
    /// carry out `start` and the delete of a stopped container directly ([`runc_direct`]).
    fn is_runc(&self) -> bool {
        Path::new(&self.config.binary)
            .file_name()
            .is_some_and(|n| n == "runc")
    }

    fn command(&self) -> Command {
        let mut cmd = base_command(&self.config);
        cmd.arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        cmd
    }

    /// Runs a command that does not hand its stdio to a container.
    async fn run(&self, mut cmd: Command, stdin: Option<&[u8]>, what: &str) -> Result<Vec<u8>> {
        let out = self
            .reaper
            .output(&mut cmd, stdin)
            .await
            .map_err(|e| Error::io(format!("run {} {what}", self.config.binary), e))?;
        if out.status != 0 {
            let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if msg.is_empty() {
                msg = self.last_log_error();
            }
            return Err(Error::internal(format!(
                "{} {what} failed (exit status {}): {msg}",
                self.config.binary, out.status
            )));
        }
        Ok(out.stdout)
    }

    /// Runs a command whose stdio goes to the container process.
    async fn run_detached(&self, mut cmd: Command, stdio: ChildStdio, what: &str) -> Result<()> {
        cmd.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let spawned = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| Error::io(format!("run {} {what}", self.config.binary), e))?;
        drop(cmd);
        let pid = spawned.pid;
        let exit = spawned
            .exit
            .await
            .map_err(|_| Error::internal(format!("lost the exit status of {pid}")))?;
        if exit.status != 0 {
            return Err(Error::internal(format!(
                "{} {what} failed (exit status {}): {}",
                self.config.binary,
                exit.status,
                self.last_log_error()
            )));
        }
        Ok(())
    }

    /// The last error runc logged.
    fn last_log_error(&self) -> String {
        #[derive(Deserialize)]
        struct Line {
            #[serde(default)]
            level: String,
            #[serde(default)]
            msg: String,
        }
        let Ok(data) = std::fs::read_to_string(&self.log) else {
            return "no runtime log".into();
        };
        data.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Line>(l).ok())
            .find(|l| l.level == "error" || l.level == "fatal")
            .map(|l| l.msg)
            .unwrap_or_else(|| "no error in the runtime log".into())
    }
}

impl OciRuntime for RuncCli {
    fn name(&self) -> &str {
        &self.config.binary
    }

    fn create<'a>(&'a self, id: &'a str, bundle: &'a Path, opts: ProcessOpts) -> RtFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = self.command();
            cmd.arg("create")
                .arg("--bundle")
                .arg(bundle)
                .arg("--pid-file")
                .arg(&opts.pid_file);
            if let Some(s) = &opts.console_socket {
                cmd.arg("--console-socket").arg(s);
            }
            if self.config.no_pivot_root {
                cmd.arg("--no-pivot");
            }
            if self.config.no_new_keyring {
                cmd.arg("--no-new-keyring");
            }
            // No working directory: runc and crun enter `--bundle` themselves, and without
            // one the spawn is a vfork (posix_spawn), not a fork.
            cmd.arg(id);
            self.run_detached(cmd, opts.stdio, "create").await
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> RtFuture<'a, ()> {
        Box::pin(async move {
            if self.is_runc() {
                if let Some(result) = runc_direct::start(&self.config.root, id).await {
                    return result;
                }
            }
            let mut cmd = self.command();
            cmd.arg("start").arg(id);
            self.run(cmd, None, "start").await.map(drop)
        })
    }

    fn exec<'a>(&'a self, id: &'a str, spec: &'a Path, opts: ProcessOpts) -> RtFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = self.command();
            cmd.arg("exec")
                .arg("--detach")
                .arg("--process")
                .arg(spec)
                .arg("--pid-file")
                .arg(&opts.pid_file);
            if let Some(s) = &opts.console_socket {
                cmd.arg("--console-socket").arg(s);
            }
            cmd.arg(id);
            self.run_detached(cmd, opts.stdio, "exec").await
        })
    }

    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> RtFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = self.command();
            cmd.arg("kill");
            if all {
                cmd.arg("--all");
            }
            cmd.arg(id).arg(signal.to_string());
            self.run(cmd, None, "kill").await.map(drop)
        })
    }

    fn delete<'a>(&'a self, id: &'a str, force: bool) -> RtFuture<'a, ()> {
        Box::pin(async move {
            if self.is_runc() {
                let root = self.config.root.clone();
                let owned_id = id.to_string();
                let direct = tokio::task::spawn_blocking(move || {
                    runc_direct::delete_stopped(&root, &owned_id)
                })
                .await
                .ok()
                .flatten();
                if let Some(result) = direct {
                    return result;
                }
            }
            let mut cmd = self.command();
            cmd.arg("delete");
            if force {
                cmd.arg("--force");
            }
            cmd.arg(id);
            self.run(cmd, None, "delete").await.map(drop)
        })
    }

    fn pause<'a>(&'a self, id: &'a str) -> RtFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = self.command();
            cmd.arg("pause").arg(id);
            self.run(cmd, None, "pause").await.map(drop)
        })
    }

    fn resume<'a>(&'a self, id: &'a str) -> RtFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = self.command();
            cmd.arg("resume").arg(id);
            self.run(cmd, None, "resume").await.map(drop)
        })
    }

    fn ps<'a>(&'a self, id: &'a str) -> RtFuture<'a, Vec<u32>> {
        Box::pin(async move {
            let mut cmd = self.command();
            cmd.arg("ps").arg("--format").arg("json").arg(id);
            let out = self.run(cmd, None, "ps").await?;
            let pids: Option<Vec<u32>> = serde_json::from_slice(&out)
                .map_err(|e| Error::internal(format!("parse {} ps output: {e}", self.name())))?;
            Ok(pids.unwrap_or_default())
        })
    }

    fn update<'a>(&'a self, id: &'a str, resources: &'a [u8]) -> RtFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = self.command();
            cmd.arg("update").arg("--resources").arg("-").arg(id);
            self.run(cmd, Some(resources), "update").await.map(drop)
        })
    }
}

/// Whether a runtime error means the process is already gone (containerd's
/// `checkKillError`).
pub fn is_process_gone(e: &Error) -> bool {
    let m = e.to_string();
    m.contains("os: process already finished")
        || m.contains("container not running")
        || m.contains("no such process")
        || m.contains("process already finished")
}

/// Whether a runtime error means the container does not exist.
pub fn is_not_exist(e: &Error) -> bool {
    let m = e.to_string();
    m.contains("does not exist") || m.contains("not found")
}
