//! Errors of snapshotter backends, classified with Berth's error kinds.

use berth_errdefs::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0}: not found")]
    NotFound(String),
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Filter(#[from] berth_filters::ParseError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot metadata: {0}")]
    Storage(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidArgument(_) | Error::Filter(_) => ErrorKind::InvalidArgument,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::Unsupported(_) => ErrorKind::NotImplemented,
            Error::Io { .. } | Error::Storage(_) => ErrorKind::Internal,
        }
    }

    /// Wraps an I/O error with the operation and path that failed.
    pub fn io(op: &'static str, path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
