//! Error presentation: every failure becomes one line on stderr, `berth: <what>: <why>`, and
//! exit code 1.

use std::fmt;
use std::io;
use std::process::ExitCode;

/// A failed gRPC call: what we tried, the gRPC code and the server's message.
#[derive(Debug)]
pub struct CallError {
    pub context: String,
    pub code: tonic::Code,
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Code`'s Debug is the canonical name (`NotFound`, `AlreadyExists`, ...).
        write!(f, "{}: {:?}", self.context, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for CallError {}

impl CallError {
    pub fn new(context: impl fmt::Display, status: &tonic::Status) -> Self {
        // Transport failures say only "transport error"; the cause is in the source chain.
        let mut message = status.message().to_string();
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            let text = match cause.downcast_ref::<io::Error>() {
                Some(io) => io_message(io),
                None => cause.to_string(),
            };
            if !text.is_empty() && !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            source = cause.source();
        }
        CallError {
            context: context.to_string(),
            code: status.code(),
            message: one_line(&message),
        }
    }
}

/// Attaches "what we were doing" to a gRPC result.
pub trait CallExt<T> {
    fn ctx(self, context: impl fmt::Display) -> anyhow::Result<T>;
}

impl<T> CallExt<T> for Result<T, tonic::Status> {
    fn ctx(self, context: impl fmt::Display) -> anyhow::Result<T> {
        self.map_err(|s| CallError::new(context, &s).into())
    }
}

/// Marks a failure that has already been printed (e.g. one of several `rm` arguments): exit 1
/// without printing again.
#[derive(Debug)]
pub struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("errors were reported")
    }
}

impl std::error::Error for Reported {}

/// Prints an error on one line without exiting, for commands that go on with other arguments.
pub fn print(e: &anyhow::Error) {
    eprintln!("berth: {}", strip_os_errors(&one_line(&format!("{e:#}"))));
}

/// Drops every " (os error N)" from a message: the text before it says the same.
pub fn strip_os_errors(s: &str) -> String {
    const MARK: &str = " (os error ";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(MARK) {
        let after = &rest[i + MARK.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..i]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..i + MARK.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The exit path of `main`.
pub fn report(e: &anyhow::Error) -> ExitCode {
    if e.chain().any(|c| c.is::<Reported>()) {
        return ExitCode::FAILURE;
    }
    // A closed stdout (`berth content get ... | head`) is not a failure of ours.
    if is_broken_pipe(e) {
        return ExitCode::SUCCESS;
    }
    print(e);
    ExitCode::FAILURE
}

/// Whether `e` comes from writing to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Collapses whitespace runs that contain line breaks, so every message is one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

/// An io::Error's text without the "(os error N)" suffix.
pub fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// The one-line message for a failed connection to the daemon.
pub fn connect_message(address: &str, reason: &str, kind: Option<io::ErrorKind>) -> String {
    let hint = match kind {
        Some(io::ErrorKind::PermissionDenied) => "(do you have permission to use the socket?)",
        _ => "(is berthd running?)",
    };
    format!("cannot connect to berthd at {address}: {reason} {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_error_names_the_code() {
        let status = tonic::Status::not_found("content sha256:abc: not found");
        let err = CallError::new("content get sha256:abc", &status);
        assert_eq!(
            err.to_string(),
            "content get sha256:abc: NotFound: content sha256:abc: not found"
        );
        let err = CallError::new("leases rm x", &tonic::Status::already_exists(""));
        assert_eq!(err.to_string(), "leases rm x: AlreadyExists");
    }

    #[test]
    fn call_ext_wraps_status() {
        let r: Result<(), tonic::Status> = Err(tonic::Status::failed_precondition("busy"));
        let e = r.ctx(format_args!("namespaces rm {}", "x")).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "namespaces rm x: FailedPrecondition: busy"
        );
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("a\n  b\n\nc"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn os_error_codes_are_dropped() {
        assert_eq!(
            strip_os_errors("open x: No such file or directory (os error 2): more"),
            "open x: No such file or directory: more"
        );
        assert_eq!(strip_os_errors("a (os error x) b"), "a (os error x) b");
        assert_eq!(strip_os_errors("a (os error 13)"), "a");
    }

    #[test]
    fn io_messages_drop_os_error_suffix() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_message(&e), "No such file or directory");
        let e = io::Error::other("custom (thing)");
        assert_eq!(io_message(&e), "custom (thing)");
    }

    #[test]
    fn connect_message_has_hint() {
        assert_eq!(
            connect_message(
                "/run/berth/berthd.sock",
                "No such file or directory",
                Some(io::ErrorKind::NotFound)
            ),
            "cannot connect to berthd at /run/berth/berthd.sock: No such file or directory \
             (is berthd running?)"
        );
        assert!(connect_message(
            "/s",
            "Permission denied",
            Some(io::ErrorKind::PermissionDenied)
        )
        .ends_with("(do you have permission to use the socket?)"));
    }

    #[test]
    fn reported_errors_exit_quietly() {
        assert_eq!(report(&anyhow::Error::new(Reported)), ExitCode::FAILURE);
        let pipe = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(report(&pipe), ExitCode::SUCCESS);
    }
}
