//! OCI images for Berth: the image library used by the daemon and the CLI.
//!
//! Map:
//! - [`mounts`]: apply a layer blob onto a snapshot's mounts (overlay upper
//!   directories directly, bind mounts on their source, anything else on a
//!   temporary mount) and diff two mount lists into a layer.
//! - [`oci`]: image-spec types, media types, platforms, chain IDs.
//! - [`testimage`]: test images made offline from the host's busybox.
//!
//! Architecture invariants: synchronous and blocking; knows nothing of gRPC,
//! namespaces or the metadata store (stores are reached through traits).

pub mod error;
pub mod mounts;
pub mod oci;
pub mod testimage;

pub use error::{Error, Result};
