//! `delete`: clean up after a shim that is gone: delete the runtime's container, unmount the
//! rootfs, and report the init's exit (as recorded in the bundle, else killed).

use std::path::PathBuf;
use std::time::SystemTime;

use berth_proto::containerd::task::v2::DeleteResponse;

use crate::args::Args;
use crate::error::{Error, Result};
use crate::runtime::RuntimeConfig;
use crate::service::{ExitRecord, INIT_PID_FILE};

/// Runs `delete`; returns the encoded `DeleteResponse` to print.
pub fn delete(args: &Args) -> Result<DeleteResponse> {
    if args.id.is_empty() {
        return Err(Error::invalid("shim id is empty"));
    }
    let bundle = if args.bundle.is_empty() {
        std::env::current_dir().map_err(|e| Error::io("get working directory", e))?
    } else {
        PathBuf::from(&args.bundle)
    };
    let config = RuntimeConfig::load(&bundle)?
        .unwrap_or_else(|| RuntimeConfig::default_for(&args.namespace));
    match crate::runtime::base_command(&config)
        .arg("delete")
        .arg("--force")
        .arg(&args.id)
        .output()
    {
        Ok(out) if !out.status.success() => {
            let msg = String::from_utf8_lossy(&out.stderr);
            if !msg.contains("does not exist") && !msg.contains("not found") {
                log_line!(
                    "{} delete --force {}: {}",
                    config.binary,
                    args.id,
                    msg.trim()
                );
            }
        }
        Ok(_) => {}
        Err(e) => log_line!("run {}: {e}", config.binary),
    }
    if let Err(e) = crate::mount::unmount_all(&bundle.join("rootfs")) {
        log_line!("unmount rootfs: {e}");
    }
    let pid = std::fs::read_to_string(bundle.join(INIT_PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let (exit_status, exited_at) = match ExitRecord::load(&bundle) {
        Some(r) => (r.exit_status, r.exited_at()),
        None => (128 + libc::SIGKILL as u32, SystemTime::now()),
    };
    Ok(DeleteResponse {
        pid,
        exit_status,
        exited_at: Some(exited_at.into()),
    })
}
