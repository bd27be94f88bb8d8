//! The crate's one error type, classified with containerd's error kinds.

use std::io;
use std::path::{Path, PathBuf};

use berth_content::Digest;
use berth_errdefs::{Classify, ErrorKind};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything applying, diffing or (de)compressing a layer can fail with.
/// Branch on [`Error::kind`], not on the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A layer entry that is not allowed: it names a path outside the root,
    /// has an unsupported type, is truncated, and so on. The message names the
    /// entry as it appears in the archive and says what is wrong.
    #[error("layer entry {entry:?}: {reason}")]
    InvalidEntry { entry: String, reason: String },

    /// A file-system operation for one entry failed. When the failure comes
    /// from what the archive asks for (a missing link target, a symlink loop, a
    /// parent that is not a directory), the kind is InvalidArgument; otherwise
    /// (no space, I/O error) it is Internal.
    #[error("layer entry {entry:?}: {op}: {source}")]
    EntryIo {
        entry: String,
        op: String,
        #[source]
        source: io::Error,
    },

    /// The tar stream itself is malformed or ends early.
    #[error("corrupt layer archive {context}: {source}")]
    Corrupt {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A compressed or uncompressed digest differs from the expected one.
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },

    /// Something the host or this crate does not support (e.g. no openat2).
    #[error("not supported: {0}")]
    Unsupported(String),

    /// An I/O failure outside a layer entry, with the operation and the path.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The class of the error, with containerd's meanings.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidEntry { .. } | Error::Corrupt { .. } | Error::DigestMismatch { .. } => {
                ErrorKind::InvalidArgument
            }
            Error::EntryIo { source, .. } => {
                if caused_by_archive(source) {
                    ErrorKind::InvalidArgument
                } else {
                    ErrorKind::Internal
                }
            }
            Error::Unsupported(_) => ErrorKind::NotImplemented,
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } => ErrorKind::Internal,
        }
    }

    /// The entry an error is about, when it is about one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Error::InvalidEntry { entry, .. } | Error::EntryIo { entry, .. } => Some(entry),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(entry: &str, reason: impl Into<String>) -> Error {
        Error::InvalidEntry {
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn entry_io(entry: &str, op: impl Into<String>, source: io::Error) -> Error {
        Error::EntryIo {
            entry: entry.to_string(),
            op: op.into(),
            source,
        }
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
}

/// Errors that mean "the archive asked for something impossible or
/// forbidden" rather than "the host failed".
fn caused_by_archive(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::ENOTDIR
                | libc::ELOOP
                | libc::EXDEV
                | libc::EEXIST
                | libc::EISDIR
                | libc::ENAMETOOLONG
                | libc::EINVAL
                | libc::ENOTEMPTY
                | libc::EMLINK
        )
    ) || matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
    )
}
