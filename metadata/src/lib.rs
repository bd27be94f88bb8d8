//! Berth's metadata store: containerd's `metadata` package in Rust.
//!
//! Namespaced records (namespaces, content, ingests, leases; images,
//! containers and snapshots later) in an embedded transactional KV store
//! ([`kv`]: redb by default, sled behind the `sled` feature), wrapping the
//! shared blob store of `berth-content`, plus garbage collection ([`Db::garbage_collect`]).
//!
//! Entry point: [`Db::open`], then the handles [`Db::namespaces`],
//! [`Db::content`] and [`Db::leases`]. The layout of the store is documented
//! in one place, the [`schema`] module.
//!
//! Architecture invariants:
//! - everything is synchronous and blocking (the daemon calls it from
//!   `spawn_blocking`); no gRPC or prost types here;
//! - blob-store work (fsync, rename, deletes, copies) never runs inside a KV
//!   write transaction;
//! - every error has a [`berth_errdefs::ErrorKind`] via [`Error::kind`].

pub mod content;
mod db;
pub mod error;
pub mod gc;
pub mod kv;
pub mod leases;
pub mod namespaces;
pub mod schema;
mod time;
pub mod validate;

/// Labels of an object: key to value, ordered.
pub type Labels = std::collections::BTreeMap<String, String>;

pub use content::{Content, ContentInfo, ContentWriter, ContentWriterOpts};
pub use db::{Db, DbOptions};
pub use error::{Error, Result};
pub use gc::{GcStats, Removed, ResourceKind};
pub use kv::Backend;
pub use leases::{Lease, Leases, Resource};
pub use namespaces::{Namespace, Namespaces};
