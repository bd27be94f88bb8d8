//! Berth's metadata store: containerd's `metadata` package in Rust.
//!
//! Namespaced records (namespaces, content, ingests, leases, snapshots;
//! images and containers later) in an embedded transactional KV store
//! ([`kv`]: redb by default, sled behind the `sled` feature), wrapping the
//! shared blob store of `berth-content` and the snapshotter backends of
//! `berth-snapshotter`, plus garbage collection ([`Db::garbage_collect`]).
//!
//! Entry point: [`Db::open`] (and [`Db::register_snapshotter`] per backend),
//! then the handles [`Db::namespaces`], [`Db::content`], [`Db::leases`] and
//! [`Db::snapshots`]. The layout of the store is documented in one place, the
//! [`schema`] module.
//!
//! Architecture invariants:
//! - everything is synchronous and blocking (the daemon calls it from
//!   `spawn_blocking`); no gRPC or prost types here;
//! - blob-store and snapshotter work (fsync, rename, deletes, copies, mounts
//!   of backends) never runs inside a KV write transaction;
//! - every error has a [`berth_errdefs::ErrorKind`] via [`Error::kind`].

pub mod containers;
pub mod content;
mod db;
pub mod error;
pub mod gc;
pub mod images;
pub mod kv;
pub mod leases;
pub mod namespaces;
pub mod schema;
pub mod snapshots;
mod time;
pub mod validate;

/// Labels of an object: key to value, ordered.
pub type Labels = std::collections::BTreeMap<String, String>;

pub use containers::{AnyValue, Container, ContainerRuntime, Containers};
pub use content::{Content, ContentInfo, ContentWriter, ContentWriterOpts};
pub use db::{Db, DbOptions};
pub use error::{Error, Result};
pub use gc::{GcStats, Removed, RemovedSnapshot, ResourceKind};
pub use images::{Descriptor, Image, Images};
pub use kv::Backend;
pub use leases::{Lease, Leases, Resource};
pub use namespaces::{Namespace, Namespaces};
pub use snapshots::Snapshots;
