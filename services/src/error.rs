//! The one place where Berth's error vocabulary becomes gRPC status codes.

use std::fmt::Display;

use berth_errdefs::{Classify, ErrorKind};
use tonic::{Code, Status};

/// Maps an error class to the gRPC code containerd uses for it
/// (containerd's `errdefs.ToGRPC`).
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::OutOfRange => Code::OutOfRange,
        ErrorKind::NotImplemented => Code::Unimplemented,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::Internal => Code::Internal,
    }
}

/// Converts any classified library error into a status whose message is the
/// error's full text, so clients see what was wrong.
pub fn to_status<E: Classify + Display>(err: E) -> Status {
    let kind = err.kind();
    if kind == ErrorKind::Internal {
        tracing::error!(error = %err, "internal error");
    }
    Status::new(code_of(kind), err.to_string())
}

/// A blocking task that panicked or was cancelled: never the client's fault.
pub fn join_error(err: tokio::task::JoinError) -> Status {
    tracing::error!(error = %err, "blocking task failed");
    Status::internal(format!("internal task failed: {err}"))
}

/// Runs blocking store work off the async runtime and maps its error.
pub async fn blocking<T, E, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Classify + Display + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(join_error)?
        .map_err(to_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(ErrorKind);
    impl Classify for E {
        fn kind(&self) -> ErrorKind {
            self.0
        }
    }
    impl Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "thing: {}", self.0)
        }
    }

    #[test]
    fn kinds_map_to_containerd_codes() {
        let s = to_status(E(ErrorKind::NotFound));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "thing: not found");
        assert_eq!(
            to_status(E(ErrorKind::Unavailable)).code(),
            Code::Unavailable
        );
        assert_eq!(
            to_status(E(ErrorKind::FailedPrecondition)).code(),
            Code::FailedPrecondition
        );
        assert_eq!(to_status(E(ErrorKind::OutOfRange)).code(), Code::OutOfRange);
    }
}
