//! The crate's one error type, classified with containerd's error kinds.

use std::io;
use std::path::{Path, PathBuf};

use berth_errdefs::{Classify, ErrorKind};

use crate::digest::Digest;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the content store can fail with. Branch on [`Error::kind`],
/// not on the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A digest string that is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },

    /// A writer was requested without a reference.
    #[error("ref must not be empty")]
    EmptyRef,

    /// No blob with this digest.
    #[error("content {0}: not found")]
    BlobNotFound(Digest),

    /// A blob with this digest already exists.
    #[error("content {0}: already exists")]
    BlobExists(Digest),

    /// No ingest for this reference.
    #[error("ingest ref {0:?}: not found")]
    IngestNotFound(String),

    /// Another live writer holds the reference.
    #[error("ref {reference} locked for {held_ms}ms (since {since})")]
    Locked {
        reference: String,
        held_ms: u128,
        since: String,
    },

    /// Commit with a size that differs from the bytes written.
    #[error("unexpected commit size {actual}, expected {expected}")]
    SizeMismatch { actual: u64, expected: u64 },

    /// Commit with a digest that differs from the bytes written.
    #[error("unexpected commit digest {actual}, expected {expected}")]
    DigestMismatch { actual: Digest, expected: Digest },

    /// A write would take the ingest beyond its declared total.
    #[error(
        "provided content larger than expected: writing {len} bytes at offset {offset} exceeds total {total}"
    )]
    ExceedsTotal { offset: u64, len: u64, total: u64 },

    /// A declared total is smaller than what was already written.
    #[error("total {total} is smaller than the {offset} bytes already written")]
    TotalTooSmall { total: u64, offset: u64 },

    /// Truncate beyond the current write offset.
    #[error("cannot truncate to {requested}: beyond current offset {offset}")]
    TruncateBeyondOffset { requested: u64, offset: u64 },

    /// The writer was already committed.
    #[error("writer for ref {0:?} is closed")]
    WriterClosed(String),

    /// On-disk state that does not make sense.
    #[error("corrupt content store state at {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// An I/O failure, with the operation and the path.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An error raised by a caller's callback (e.g. inside [`Store::walk`](crate::Store::walk)).
    #[error("{message}")]
    Other { kind: ErrorKind, message: String },
}

impl Error {
    /// The class of the error, with containerd's meanings.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidDigest { .. } | Error::EmptyRef => ErrorKind::InvalidArgument,
            Error::BlobNotFound(_) | Error::IngestNotFound(_) => ErrorKind::NotFound,
            Error::BlobExists(_) => ErrorKind::AlreadyExists,
            Error::Locked { .. } => ErrorKind::Unavailable,
            Error::SizeMismatch { .. }
            | Error::DigestMismatch { .. }
            | Error::ExceedsTotal { .. }
            | Error::TotalTooSmall { .. }
            | Error::WriterClosed(_) => ErrorKind::FailedPrecondition,
            Error::TruncateBeyondOffset { .. } => ErrorKind::OutOfRange,
            Error::Corrupt { .. } | Error::Io { .. } => ErrorKind::Internal,
            Error::Other { kind, .. } => *kind,
        }
    }

    /// An error of any kind with a message; for callbacks passed into the store.
    pub fn other(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::Other {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl AsRef<Path>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
}

/// Attaches an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
