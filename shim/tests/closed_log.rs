//! The shim's stderr is the bundle's `log` FIFO, which has no reader while the daemon
//! restarts: a line logged then must be dropped, not panic (a panicking task, e.g. the event
//! forwarder, would be gone for good).

use std::process::{Command, Stdio};

#[test]
fn a_log_line_without_a_reader_is_dropped() {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    // An empty namespace is refused with one log line and exit code 1.
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-berth-v2"))
        .args([
            "-namespace",
            "",
            "-id",
            "x",
            "-address",
            "/nonexistent",
            "start",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .status()
        .expect("run the shim");
    assert_eq!(out.code(), Some(1), "{out:?} (101 is a panic)");
}
