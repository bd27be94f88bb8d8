//! OCI runtime specs for Berth containers, generated the way containerd's `oci` package does
//! for Linux (`populateDefaultUnixSpec` plus the `SpecOpts` that `ctr run` applies).
//!
//! Map:
//! - [`generate`]: the spec of a new container from an [`ImageConfig`] and [`RunOptions`].
//! - [`default_spec`]: containerd's default Linux spec alone (namespaces, mounts, masked and
//!   read-only paths, capabilities, rlimits, device cgroup rules, cgroups path).
//! - [`exec_process`]: the process of an exec, derived from the container's spec.
//! - [`ImageConfig`]: the runtime part of an image config document.
//! - [`parse_mount`]: `ctr run --mount` syntax; [`user::resolve`]: users from the rootfs.
//!
//! The spec is [`oci_spec::runtime::Spec`]; [`to_json`] gives the JSON that travels in the
//! containers service's `Any` ([`SPEC_TYPE_URL`]) and that runc reads as `config.json`.
//!
//! Architecture invariants: pure functions of their inputs plus, when a rootfs path is given,
//! reads of its `/etc/passwd` and `/etc/group` (and `/proc/sys/kernel/hostname` for host
//! networking). Nothing here knows gRPC, the daemon or mounts. Never sets
//! `process.oomScoreAdj` (hosts without CAP_SYS_RESOURCE refuse a negative one).

pub mod error;
pub mod image;
pub mod mounts;
mod spec;
pub mod user;

pub use error::{Error, Result};
pub use image::ImageConfig;
pub use mounts::{default_mounts, host_network_mounts, parse_mount};
pub use oci_spec::runtime::{Mount, Process, Spec};
pub use spec::{
    default_spec, exec_process, from_json, generate, replace_or_append_env, to_json, ExecOptions,
    HostNamespaces, Resources, RunOptions, CPU_PERIOD, DEFAULT_PATH_ENV, PROCESS_TYPE_URL,
    SPEC_TYPE_URL, SPEC_VERSION,
};
