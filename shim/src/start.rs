//! `start`: create the shim's socket, launch the long-lived server on it, print its address.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

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

/// The bundle: `-bundle` (Berth's daemon passes it, so that it can spawn the shim without a
/// working directory), entered as the working directory the server relies on; else the
/// working directory (as containerd starts shims).
fn enter_bundle(args: &Args) -> Result<std::path::PathBuf> {
    if !args.bundle.is_empty() {
        std::env::set_current_dir(&args.bundle)
            .map_err(|e| Error::io(format!("enter bundle {}", args.bundle), e))?;
    }
    std::env::current_dir().map_err(|e| Error::io("get working directory", e))
}

/// Runs `start`; returns the address to print.
pub fn start(args: &Args) -> Result<String> {
    if args.id.is_empty() {
        return Err(Error::invalid("shim id is empty"));
    }
    let bundle = enter_bundle(args)?;
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

/// Forks the server: it continues in the child, in its own session, with the listener as fd 3
/// and stdio on /dev/null (the daemon reads `start`'s stdout until end-of-file). A fork
/// instead of a re-exec: one process start fewer on every container's way up.
fn launch_server(args: &Args, bundle: &Path, listener: &UnixListener) -> Result<()> {
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))?;
    // SAFETY: `start` runs single-threaded (no runtime, no helper threads), so the child is a
    // complete copy of the process and may run anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io(
            "fork the shim server",
            io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        let served = become_server(devnull.as_raw_fd(), listener.as_raw_fd())
            .and_then(|()| crate::serve::serve(args));
        std::process::exit(i32::from(served.is_err()));
    }
    // For a daemon that must stop a shim that no longer answers.
    std::fs::write(bundle.join(SHIM_PID_FILE), pid.to_string())
        .map_err(|e| Error::io(format!("write {SHIM_PID_FILE}"), e))
}

/// In the forked server: a session of its own, stdio on /dev/null, the listener at fd 3.
fn become_server(devnull: i32, listener: i32) -> Result<()> {
    let check = |r: libc::c_int, what: &str| {
        if r < 0 {
            Err(Error::io(what.to_string(), io::Error::last_os_error()))
        } else {
            Ok(())
        }
    };
    // SAFETY: plain syscalls on descriptors this process owns.
    unsafe {
        check(libc::setsid(), "setsid")?;
        let mut devnull = devnull;
        if listener != 3 {
            if devnull == 3 {
                devnull = libc::fcntl(devnull, libc::F_DUPFD_CLOEXEC, 4);
                check(devnull, "move /dev/null")?;
            }
            check(libc::dup2(listener, 3), "move the listener to fd 3")?;
        }
        for fd in 0..3 {
            check(libc::dup2(devnull, fd), "redirect stdio")?;
        }
    }
    Ok(())
}
