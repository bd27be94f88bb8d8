//! A gRPC client built on grpc-core (Python's `grpcio`), which, unlike grpc-go, sends the unix
//! socket's path as the HTTP/2 `:authority` (percent-encoded since grpc 1.57; grpc-java sends
//! it bare). containerd's server ignores the authority; berthd must too, or every call from
//! such a client fails with RST_STREAM PROTOCOL_ERROR. `.ci/run` installs `grpcio`.

use std::process::Command;

use berth_proto::containerd::services::content::v1::InfoRequest;
use berth_tests::Daemon;

/// Calls berthd over `unix:<socket>` with grpcio's defaults (and with the bare path as the
/// authority, as grpc-java sends it), using hand-encoded protobuf, and prints one line per call.
const CLIENT: &str = r#"
import hashlib, sys
import grpc

sock = sys.argv[1]
data = b"hello from grpc-core"
digest = "sha256:" + hashlib.sha256(data).hexdigest()

def field(num, value):
    if isinstance(value, int):
        out, v = bytes([num << 3]), value
        while v >= 0x80:
            out += bytes([v & 0x7f | 0x80]); v >>= 7
        return out + bytes([v])
    value = value.encode() if isinstance(value, str) else value
    return bytes([num << 3 | 2, len(value)]) + value

def code(call):
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name

for name, options in [("default", []), ("bare-path", [("grpc.default_authority", sock)])]:
    ch = grpc.insecure_channel("unix:" + sock, options=options)
    ns = [("containerd-namespace", "grpc-core-" + name)]
    version = ch.unary_unary("/containerd.services.version.v1.Version/Version")
    # Several calls on one connection: later requests refer to the authority through the
    # client's HPACK dynamic table.
    for i in range(3):
        reply = version(b"", timeout=10)
        print(name, "version", "OK" if reply[:1] == b"\n" else "bad reply")
    # 200 KB of metadata: a header block of several frames (HEADERS and CONTINUATIONs).
    reply = version(b"", metadata=[("x-large", "v" * 200_000)], timeout=10)
    print(name, "large-metadata", "OK" if reply[:1] == b"\n" else "bad reply")
    write = ch.stream_stream("/containerd.services.content.v1.Content/Write")
    commit = field(1, 2) + field(2, "greeting") + field(3, len(data)) + field(4, digest) + field(6, data)
    replies = list(write(iter([commit]), metadata=ns, timeout=10))
    print(name, "write", "OK" if digest.encode() in replies[-1] else "no digest")
    info = ch.unary_unary("/containerd.services.content.v1.Content/Info")
    print(name, "info-bad-digest", code(lambda: info(field(1, "sha256:nothex"), metadata=ns, timeout=10)))
    print(name, "info-unknown", code(lambda: info(field(1, "sha256:" + "0" * 64), metadata=ns, timeout=10)))
print("blob", digest)
"#;

#[tokio::test]
async fn grpc_core_clients_reach_every_call() {
    let d = Daemon::start().await;
    let out = Command::new("python3")
        .args(["-c", CLIENT])
        .arg(d.socket())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python grpcio client failed ({}): stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = String::new();
    for name in ["default", "bare-path"] {
        for _ in 0..3 {
            expected += &format!("{name} version OK\n");
        }
        expected += &format!("{name} large-metadata OK\n");
        expected += &format!("{name} write OK\n");
        expected += &format!("{name} info-bad-digest INVALID_ARGUMENT\n");
        expected += &format!("{name} info-unknown NOT_FOUND\n");
    }
    let (calls, digest) = stdout.split_once("blob ").expect("blob line");
    assert_eq!(calls, expected);

    // What the grpc-core client wrote is in the store, seen through tonic.
    for ns in ["grpc-core-default", "grpc-core-bare-path"] {
        let info = d
            .content(ns)
            .await
            .info(InfoRequest {
                digest: digest.trim().to_string(),
            })
            .await
            .expect("blob written by grpcio")
            .into_inner()
            .info
            .expect("info");
        assert_eq!(info.size, "hello from grpc-core".len() as i64);
    }
}
