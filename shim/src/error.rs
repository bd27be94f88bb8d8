//! The shim's error: a class (containerd's vocabulary) and a message with its context.

use std::fmt;
use std::io;

use berth_errdefs::{Classify, ErrorKind};

use crate::ttrpc::{self, Code, Status};

/// An error of the shim.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O failure while doing `what`; the io error stays the source.
    pub fn io(what: impl Into<String>, e: io::Error) -> Error {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        };
        Error {
            kind,
            message: what.into(),
            source: Some(Box::new(e)),
        }
    }

    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, m)
    }

    pub fn invalid(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, m)
    }

    pub fn precondition(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::FailedPrecondition, m)
    }

    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, m)
    }

    /// Adds context in front of the message.
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Error {
        Error::io("system call", io::Error::from(e))
    }
}

/// The one conversion of a shim error to a wire status.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        ttrpc::status(Code::from_kind(e.kind), e.to_string())
    }
}
