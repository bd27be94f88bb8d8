//! Task metrics (`Stats`).
//!
//! containerd answers with `io.containerd.cgroups.v1.Metrics` (or `io.containerd.cgroups.v2`);
//! those message types are not in berth-proto yet, so `Stats` is `Unimplemented` for now.

use berth_errdefs::ErrorKind;

use crate::error::{Error, Result};

/// The cgroup metrics of the task whose init is `pid`.
pub fn collect(_pid: u32) -> Result<prost_types::Any> {
    Err(Error::new(
        ErrorKind::NotImplemented,
        "task metrics are not supported by this shim yet (no cgroup metrics types)",
    ))
}
