//! The one error vocabulary that crosses every Berth crate.
//!
//! Lower crates (content, metadata, snapshotters) classify their errors with
//! [`ErrorKind`]; the gRPC edge turns a kind into a status code in one place.
//! The kinds and their meanings are containerd's (`errdefs`).

use std::fmt;

/// The class of an error, with containerd's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed: a bad digest, identifier, filter or field.
    InvalidArgument,
    /// The object does not exist.
    NotFound,
    /// The object already exists.
    AlreadyExists,
    /// The object is not in a state that allows the operation.
    FailedPrecondition,
    /// The resource is busy (e.g. a ref locked by another writer); retry later.
    Unavailable,
    /// An offset or size is outside the valid range.
    OutOfRange,
    /// The operation is not supported here.
    NotImplemented,
    /// The operation was cancelled or timed out.
    Aborted,
    /// Anything else: I/O failures, corrupt state.
    Internal,
}

impl ErrorKind {
    /// A short lowercase name, as containerd prints them.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::NotImplemented => "not implemented",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every crate's error type so callers can branch on the class
/// without matching message text.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}
