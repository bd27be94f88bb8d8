//! Berth's local content store, on-disk compatible with containerd's
//! `plugins/content/local`.
//!
//! Layout under the root the caller passes (the daemon uses
//! `<root>/io.containerd.content.v1.content`):
//!
//! - `blobs/sha256/<hex>`: committed, read-only blobs;
//! - `ingest/<sha256 of ref>/`: resumable writes, holding `data`, `ref`,
//!   `startedat`, `updatedat` and, when declared, `total` and `expected`.
//!
//! Architecture invariants: this crate knows nothing of gRPC, namespaces or
//! leases; it is synchronous (callers use a blocking thread pool; a writer may copy
//! data handed to its landing on a thread of its own, invisible to everyone else); a blob
//! appears under `blobs/` only after its data is fsynced and verified, by an
//! atomic rename; no operation holds a whole blob in memory.

mod digest;
mod error;
mod landing;
mod locks;
mod reader;
mod store;
mod timestamp;
mod writer;

pub use crate::digest::{Digest, ALGORITHM};
pub use crate::error::{Error, Result};
pub use crate::landing::Landing;
pub use crate::reader::Reader;
pub use crate::store::{BlobInfo, Status, Store};
pub use crate::writer::{HashState, Writer, WriterOpts};
