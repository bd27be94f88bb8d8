//! `containerd-shim-berth-v2`, containerd's shim v2 over an OCI runtime CLI (runc, crun). It
//! speaks ttrpc through the `berth-ttrpc` crate (which the daemon also uses to drive shims).
//!
//! - [`run`]: the binary's entry point: `start` (launch the server, print its address),
//!   `delete` (clean up after a dead shim, print a `DeleteResponse`), or the server itself.
//!
//! Architecture invariants: one reaper for every child (`reaper`); the server is
//! single-threaded; events leave in the order they were published; exits of init processes
//! are recorded in the bundle (`exit-status.json`) before they are published.

/// A line on stderr, which is the bundle's `log` FIFO while serving. A failed write (no
/// reader while the daemon restarts: EPIPE) is dropped: `eprintln!` would panic, killing
/// the task that logs (e.g. the event forwarder).
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod metrics;
pub use berth_ttrpc as ttrpc;

mod args;
mod delete;
mod error;
mod events;
mod mount;
mod oom;
mod reaper;
mod runc_direct;
mod runtime;
mod serve;
mod service;
mod start;
mod stdio;

pub use args::Args;
pub use error::{Error, Result};
pub use start::{socket_address, ADDRESS_FILE, SHIM_PID_FILE};

/// Where the shim keeps its sockets (`s/`), console sockets (`c/`) and the default runc
/// root (`runc/<namespace>`).
pub const STATE_DIR: &str = "/run/berth";

/// The shim's version, reported by `Connect`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The binary's main: returns the process exit code.
pub fn run() -> i32 {
    use std::io::Write;

    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            log_line!("containerd-shim-berth-v2: {e}");
            return 2;
        }
    };
    if args.version {
        println!("containerd-shim-berth-v2:\n  Version: {VERSION}");
        return 0;
    }
    if args.namespace.is_empty() {
        log_line!("containerd-shim-berth-v2: shim namespace cannot be empty");
        return 1;
    }
    let result = match args.action.as_str() {
        "start" => start::start(&args).and_then(|address| {
            let mut out = std::io::stdout();
            out.write_all(address.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("write address", e))
        }),
        "delete" => delete::delete(&args).and_then(|resp| {
            use prost::Message;
            let mut out = std::io::stdout();
            out.write_all(&resp.encode_to_vec())
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("write delete response", e))
        }),
        "" => serve::serve(&args),
        other => Err(Error::invalid(format!("unknown action {other:?}"))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            log_line!("containerd-shim-berth-v2: {e}");
            1
        }
    }
}
