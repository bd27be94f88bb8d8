//! The crate's one error type.

use berth_errdefs::{Classify, ErrorKind};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from the metadata store.
///
/// Messages name the object and say what is wrong; [`Error::kind`] gives the
/// class (containerd's errdefs meanings) so callers never match on text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad identifier, label, digest, filter or field path.
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// The named object does not exist (in this namespace).
    #[error("{0}: not found")]
    NotFound(String),
    /// The named object already exists (in this namespace).
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The object is not in a state that allows the operation.
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// The resource is busy (e.g. the store is open in another process).
    #[error("{0}: unavailable")]
    Unavailable(String),
    /// The operation or resource type is not supported.
    #[error("{0}: not implemented")]
    NotImplemented(String),
    /// A filter string did not parse.
    #[error(transparent)]
    Filter(#[from] berth_filters::ParseError),
    /// The blob store refused or failed; its kind is kept.
    #[error("{context}: {source}")]
    Content {
        context: String,
        #[source]
        source: berth_content::Error,
    },
    /// A snapshotter backend refused or failed; its kind is kept.
    #[error("{context}: {source}")]
    Snapshotter {
        context: String,
        #[source]
        source: berth_snapshotter::Error,
    },
    /// The embedded KV store failed.
    #[error("metadata store ({backend}): {op}: {source}")]
    Storage {
        backend: &'static str,
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A record in the KV store could not be decoded.
    #[error("metadata store: corrupt record at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A filesystem operation outside the KV store failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) | Error::Filter(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::NotImplemented(_) => ErrorKind::NotImplemented,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Content { source, .. } => source.kind(),
            Error::Snapshotter { source, .. } => source.kind(),
            Error::Storage { .. } | Error::Corrupt { .. } | Error::Io { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn storage<E>(backend: &'static str, op: &'static str, source: E) -> Error
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        Error::Storage {
            backend,
            op,
            source: source.into(),
        }
    }

    pub(crate) fn content(context: impl Into<String>, source: berth_content::Error) -> Error {
        Error::Content {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn snapshotter(
        context: impl Into<String>,
        source: berth_snapshotter::Error,
    ) -> Error {
        Error::Snapshotter {
            context: context.into(),
            source,
        }
    }

    /// True if this is a NotFound error.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// True if this is an AlreadyExists error.
    pub fn is_already_exists(&self) -> bool {
        self.kind() == ErrorKind::AlreadyExists
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
}
