//! The crate's one error type, classified with containerd's error kinds.

use std::io;
use std::path::PathBuf;

use berth_errdefs::{Classify, ErrorKind};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything spec generation can fail with. Branch on [`Error::kind`], not on the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A malformed option: a mount flag, a user string, a resource value, an image config.
    #[error("{0}")]
    InvalidArgument(String),

    /// A user or group name that the rootfs's `/etc/passwd` or `/etc/group` does not list.
    #[error("{what} {name:?} not found in the rootfs's {file}")]
    NotFound {
        what: &'static str,
        name: String,
        file: &'static str,
    },

    /// Resolving a user needs the rootfs, and none was given.
    #[error("resolving user {user:?} needs the container's rootfs (/etc/passwd, /etc/group)")]
    RootfsRequired { user: String },

    /// Reading a file of the rootfs failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) | Error::RootfsRequired { .. } => ErrorKind::InvalidArgument,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } => ErrorKind::Internal,
        }
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
}
