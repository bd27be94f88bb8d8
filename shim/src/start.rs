//! `start`: create the shim's socket, launch the long-lived server on it, print its address.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::args::Args;
use crate::error::{Error, Result};

/// The file in the bundle that holds the shim's address.
pub const ADDRESS_FILE: &str = "address";
/// The file in the bundle that holds the shim server's pid.
pub const SHIM_PID_FILE: &str = "shim.pid";

/// The socket address of the shim for container `id` in namespace `ns` of the daemon at
/// `daemon_address`: `unix:///run/berth/s/<sha256(daemon_address/ns/id)>`.
pub fn socket_address(daemon_address: &str, ns: &str, id: &str) -> String {
    let key = Path::new(daemon_address).join(ns).join(id);
    let digest = Sha256::digest(key.as_os_str().as_encoded_bytes());
    format!("unix://{}/s/{}", crate::STATE_DIR, hex::encode(digest))
}

/// Annotations that put containers in one shim (a pod's sandbox and its containers), as
/// containerd's runc shim honours them.
const GROUP_ANNOTATIONS: &[&str] = &[
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The group named by the bundle's `config.json` annotations, if any.
fn group_id(bundle: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: std::collections::HashMap<String, String>,
    }
    let data = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: Spec = serde_json::from_slice(&data).ok()?;
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|a| spec.annotations.get(*a).filter(|v| !v.is_empty()).cloned())
}

/// Writes `address` into the bundle atomically.
fn write_address(bundle: &Path, address: &str) -> Result<()> {
    let tmp = bundle.join(format!(".{ADDRESS_FILE}"));
    std::fs::write(&tmp, address)
        .and_then(|()| std::fs::rename(&tmp, bundle.join(ADDRESS_FILE)))
        .map_err(|e| Error::io(format!("write {ADDRESS_FILE} in {}", bundle.display()), e))
}

/// Runs `start`; returns the address to print.
pub fn start(args: &Args) -> Result<String> {
    if args.id.is_empty() {
        return Err(Error::invalid("shim id is empty"));
    }
    let bundle = std::env::current_dir().map_err(|e| Error::io("get working directory", e))?;
    let group = group_id(&bundle).unwrap_or_else(|| args.id.clone());
    let address = socket_address(&args.address, &args.namespace, &group);
    let path = crate::ttrpc::socket_path(&address);
    let dir = Path::new(&path).parent().expect("socket under a directory");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                // A live shim already serves this container.
                write_address(&bundle, &address)?;
                return Ok(address);
            }
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("remove stale socket {path}"), e))?;
            UnixListener::bind(&path).map_err(|e| Error::io(format!("bind {path}"), e))?
        }
        Err(e) => return Err(Error::io(format!("bind {path}"), e)),
    };
    let launched = (|| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("chmod {path}"), e))?;
        write_address(&bundle, &address)?;
        launch_server(args, &bundle, &listener)
    })();
    if let Err(e) = launched {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(address)
}

/// Re-executes this binary as the server, in its own session, with the listener as fd 3.
fn launch_server(args: &Args, bundle: &Path, listener: &UnixListener) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find own executable", e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("-namespace")
        .arg(&args.namespace)
        .arg("-id")
        .arg(&args.id)
        .arg("-address")
        .arg(&args.address);
    if !args.publish_binary.is_empty() {
        cmd.arg("-publish-binary").arg(&args.publish_binary);
    }
    if args.debug {
        cmd.arg("-debug");
    }
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Not waited for: the server outlives this process and is adopted by init.
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("launch the shim server", e))?;
    // For a daemon that must stop a shim that no longer answers.
    std::fs::write(bundle.join(SHIM_PID_FILE), child.id().to_string())
        .map_err(|e| Error::io(format!("write {SHIM_PID_FILE}"), e))?;
    Ok(())
}
