//! The crate's one error type.

use std::path::PathBuf;

use berth_errdefs::{Classify, ErrorKind};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of image handling. Branch on [`Error::kind`], never on the text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input (an archive, a manifest, a request) is malformed.
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// Something named does not exist (content, image, platform).
    #[error("{0}: not found")]
    NotFound(String),
    /// Something unsupported (a media type, a mount type).
    #[error("{0}: not implemented")]
    NotImplemented(String),
    /// The state does not allow the operation.
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// Applying or writing a layer failed; the archive's kind is kept
    /// (hostile entries are InvalidArgument).
    #[error("{context}: {source}")]
    Archive {
        context: String,
        #[source]
        source: berth_archive::Error,
    },
    /// Mounting or unmounting failed.
    #[error("{context}: {source}")]
    Mount {
        context: String,
        #[source]
        source: berth_snapshotter::Error,
    },
    /// A store behind one of the traits (content, snapshots, images) failed;
    /// its kind is kept.
    #[error("{context}: {message}")]
    Store {
        context: String,
        kind: ErrorKind,
        message: String,
    },
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The class of this error (containerd's errdefs meanings).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::NotImplemented(_) => ErrorKind::NotImplemented,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::Archive { source, .. } => source.kind(),
            Error::Mount { source, .. } => source.kind(),
            Error::Store { kind, .. } => *kind,
            Error::Io { .. } => ErrorKind::Internal,
        }
    }

    /// Wraps an error of a store implementation, keeping its kind.
    pub fn store<E: Classify + std::fmt::Display>(context: impl Into<String>, e: E) -> Error {
        Error::Store {
            context: context.into(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    pub(crate) fn archive(context: impl Into<String>, source: berth_archive::Error) -> Error {
        Error::Archive {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn mount(context: impl Into<String>, source: berth_snapshotter::Error) -> Error {
        Error::Mount {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True if this is a NotFound error.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
}
