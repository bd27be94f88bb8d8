//! OCI layer archives: applying a layer tar onto a directory safely (with
//! whiteouts converted for the target snapshotter), writing the diff of two
//! trees as a layer, compression detection and digests, and a corpus of
//! hostile layers for tests.
//!
//! Architecture invariants: synchronous (the daemon calls it from blocking
//! threads); knows nothing of gRPC, namespaces, snapshotters or the content
//! store beyond the `Digest` type; never holds a whole layer or file in
//! memory; no name from an archive is ever resolved without `openat2`
//! anchored at the target root.

pub mod apply;
pub mod compression;
pub mod corpus;
pub mod diff;
pub mod digest;
mod error;
pub mod layer;
mod path;
mod sys;
pub mod writer;

pub use crate::apply::{apply_layer, ApplyOptions, ApplyStats, WhiteoutMode};
pub use crate::compression::{CompressWriter, Compression, DecompressReader};
pub use crate::diff::{write_diff, write_overlay_upper_diff, write_tree, DiffStats};
pub use crate::digest::{DigestReader, DigestWriter};
pub use crate::error::{Error, Result};
pub use crate::layer::{apply_blob, write_layer, AppliedLayer, WrittenLayer};
pub use crate::sys::Resolve;
