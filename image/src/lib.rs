//! OCI images for Berth: the image library used by the daemon and the CLI.
//!
//! Map:
//! - [`mounts`]: apply a layer blob onto a snapshot's mounts (overlay upper
//!   directories directly, bind mounts on their source, anything else on a
//!   temporary mount) and diff two mount lists into a layer.
//! - [`oci`]: image-spec types, media types, platforms, chain IDs.
//! - [`store`]: the traits the operations work through (content, snapshots,
//!   layer applier, images), implemented over gRPC by the CLI.
//! - [`walk`]: index -> manifest (by platform) -> config + layers, GC labels
//!   (`containerd.io/gc.ref.content.*`), completeness.
//! - [`import`] (OCI layout and docker-archive tars), [`export`] (OCI layout
//!   with a docker `manifest.json`), [`unpack`] (layers into snapshots by
//!   chain ID).
//! - [`testimage`]: test images made offline from the host's busybox.
//!
//! Architecture invariants: synchronous and blocking; knows nothing of gRPC,
//! namespaces or the metadata store (stores are reached through traits).

pub mod error;
pub mod export;
pub mod import;
pub mod mounts;
pub mod oci;
pub mod store;
pub mod testimage;
pub mod unpack;
pub mod walk;

pub use error::{Error, Result};
