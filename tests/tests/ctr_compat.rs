//! The stock `ctr` (Debian's containerd 1.6) driving berthd over its unix socket.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::containerd::services::content::v1::{InfoRequest, StatusRequest};
use berth_proto::containerd::services::leases::v1::ListRequest;
use berth_proto::containerd::services::namespaces::v1::GetNamespaceRequest;
use berth_tests::{
    ctr, ctr_command, ctr_input, digest_of, expect_code, failure, random_bytes, random_id, success,
    Daemon, Writer,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

/// The row of a `ctr ... ls` table whose first column is `key`.
fn row<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
}

#[tokio::test]
async fn ctr_version_shows_server_version() {
    let d = Daemon::start().await;
    let want = d.version().await.version(()).await.unwrap().into_inner();
    let uuid = d
        .introspection()
        .await
        .server(())
        .await
        .unwrap()
        .into_inner()
        .uuid;
    assert!(!want.version.is_empty(), "server reports a version");
    assert!(!uuid.is_empty(), "server reports a uuid");

    let out = success(&ctr(&d, &["version"]), "ctr version");
    let server = out
        .split("Server:")
        .nth(1)
        .unwrap_or_else(|| panic!("ctr version printed no Server section:\n{out}"));
    assert!(
        server.contains(&format!("Version:  {}", want.version)),
        "server version {} missing from:\n{out}",
        want.version
    );
    assert!(
        server.contains(&format!("Revision: {}", want.revision)),
        "server revision {} missing from:\n{out}",
        want.revision
    );
    assert!(
        server.contains(&uuid),
        "server uuid {uuid} missing from:\n{out}"
    );
}

#[tokio::test]
async fn ctr_plugins_ls_lists_grpc_services() {
    let d = Daemon::start().await;
    let out = success(&ctr(&d, &["plugins", "ls"]), "ctr plugins ls");
    let header = out.lines().next().unwrap_or_default();
    for col in ["TYPE", "ID", "PLATFORMS", "STATUS"] {
        assert!(header.contains(col), "header lacks {col}: {header}");
    }
    for id in [
        "content",
        "namespaces",
        "leases",
        "events",
        "version",
        "introspection",
    ] {
        let found = out.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&"io.containerd.grpc.v1")
                && cols.get(1) == Some(&id)
                && cols.last() == Some(&"ok")
        });
        assert!(
            found,
            "no `io.containerd.grpc.v1 {id} ... ok` row in:\n{out}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("io.containerd.content.v1") && l.contains("content")),
        "no content store plugin in:\n{out}"
    );

    // Detailed view: type, id and exports are printed per plugin.
    let detail = success(&ctr(&d, &["plugins", "ls", "-d"]), "ctr plugins ls -d");
    assert!(
        detail.contains("io.containerd.grpc.v1") && detail.contains("Platform"),
        "detailed listing:\n{detail}"
    );
}

#[tokio::test]
async fn ctr_namespaces_create_label_ls_rm() {
    let d = Daemon::start().await;
    let ns = format!("ns-{}", random_id());

    success(
        &ctr(&d, &["namespaces", "create", &ns, "team=blue"]),
        "ctr namespaces create",
    );
    let again = failure(
        &ctr(&d, &["namespaces", "create", &ns]),
        "second ctr namespaces create",
    );
    assert!(again.contains("already exists"), "stderr: {again}");

    let ls = success(&ctr(&d, &["namespaces", "ls"]), "ctr namespaces ls");
    let r = row(&ls, &ns).unwrap_or_else(|| panic!("{ns} missing from:\n{ls}"));
    assert!(r.contains("team=blue"), "labels missing: {r}");

    success(
        &ctr(&d, &["namespaces", "label", &ns, "tier=gold"]),
        "ctr namespaces label",
    );
    success(
        &ctr(&d, &["namespaces", "label", &ns, "team="]),
        "ctr namespaces label (clear)",
    );
    let got = d
        .namespaces()
        .await
        .get(GetNamespaceRequest { name: ns.clone() })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    let labels: BTreeMap<_, _> = got.labels.into_iter().collect();
    assert_eq!(
        labels,
        BTreeMap::from([("tier".to_string(), "gold".to_string())]),
        "labels after `ctr namespaces label`"
    );
    let ls = success(&ctr(&d, &["ns", "ls", "-q"]), "ctr ns ls -q");
    assert!(ls.lines().any(|l| l == ns), "{ns} missing from:\n{ls}");

    // A namespace holding content cannot be removed.
    let data = random_bytes(4096);
    success(
        &ctr_input(&d, &["-n", &ns, "content", "ingest", "blob-1"], &data),
        "ctr content ingest",
    );
    let err = failure(&ctr(&d, &["namespaces", "rm", &ns]), "ctr namespaces rm");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("must be empty") && lower.contains("failed precondition"),
        "namespace rm should fail with a precondition message, stderr: {err}"
    );
    let ls = success(&ctr(&d, &["ns", "ls", "-q"]), "ctr ns ls -q");
    assert!(ls.lines().any(|l| l == ns), "{ns} vanished:\n{ls}");

    let digest = digest_of(&data);
    success(
        &ctr(&d, &["-n", &ns, "content", "rm", &digest]),
        "ctr content rm",
    );
    let out = success(&ctr(&d, &["namespaces", "rm", &ns]), "ctr namespaces rm");
    assert!(out.lines().any(|l| l == ns), "rm prints the name: {out}");
    let ls = success(&ctr(&d, &["ns", "ls", "-q"]), "ctr ns ls -q");
    assert!(!ls.lines().any(|l| l == ns), "{ns} still listed:\n{ls}");
}

#[tokio::test]
async fn ctr_content_ingest_ls_get_label_rm() {
    let d = Daemon::start().await;
    let data = random_bytes(3 << 20);
    let digest = digest_of(&data);

    // Ingest from stdin without expectations.
    success(
        &ctr_input(&d, &["content", "ingest", "ingest-plain"], &data),
        "ctr content ingest",
    );
    let ls = success(&ctr(&d, &["content", "ls"]), "ctr content ls");
    let r = row(&ls, &digest).unwrap_or_else(|| panic!("{digest} missing from:\n{ls}"));
    assert!(r.contains("3.146MB"), "size column: {r}");
    let quiet = success(&ctr(&d, &["content", "ls", "-q"]), "ctr content ls -q");
    assert!(
        quiet.lines().any(|l| l == digest),
        "{digest} missing:\n{quiet}"
    );

    // `get` returns identical bytes.
    let out = ctr(&d, &["content", "get", &digest]);
    success(&out, "ctr content get");
    assert_eq!(out.stdout.len(), data.len(), "ctr content get size");
    assert!(
        out.stdout == data,
        "ctr content get returned different bytes"
    );

    // Wrong expectations are refused and leave nothing behind.
    let mut content = d.content("default").await;
    let data3 = random_bytes(10_000);
    let wrong = digest_of(b"something else");
    let err = failure(
        &ctr_input(
            &d,
            &[
                "content",
                "ingest",
                "--expected-digest",
                &wrong,
                "ingest-wrong-digest",
            ],
            &data3,
        ),
        "ingest with a wrong expected digest",
    );
    assert!(err.contains("digest"), "stderr: {err}");
    let err = failure(
        &ctr_input(
            &d,
            &[
                "content",
                "ingest",
                "--expected-size",
                "9999",
                "ingest-wrong-size",
            ],
            &data3,
        ),
        "ingest with a wrong expected size",
    );
    assert!(err.contains("size"), "stderr: {err}");
    expect_code(
        content
            .info(InfoRequest {
                digest: digest_of(&data3),
            })
            .await,
        Code::NotFound,
        &[],
    );

    // Labels.
    success(
        &ctr(
            &d,
            &["content", "label", &digest, "color=red", "shape=round"],
        ),
        "ctr content label",
    );
    let ls = success(&ctr(&d, &["content", "ls"]), "ctr content ls");
    let r = row(&ls, &digest).unwrap();
    // ctr prints labels in Go map order: any order.
    let column = r.split_whitespace().last().unwrap_or_default();
    let mut printed: Vec<&str> = column.split(',').collect();
    printed.sort_unstable();
    assert_eq!(printed, ["color=red", "shape=round"], "labels column: {r}");
    let info = content
        .info(InfoRequest {
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.labels.get("color").map(String::as_str), Some("red"));
    assert_eq!(info.labels.get("shape").map(String::as_str), Some("round"));

    // Remove.
    let out = success(&ctr(&d, &["content", "rm", &digest]), "ctr content rm");
    assert!(out.contains(&digest), "rm prints the digest: {out}");
    expect_code(
        content
            .info(InfoRequest {
                digest: digest.clone(),
            })
            .await,
        Code::NotFound,
        &["not found"],
    );
    let quiet = success(&ctr(&d, &["content", "ls", "-q"]), "ctr content ls -q");
    assert!(
        !quiet.contains(&digest),
        "removed blob still listed:\n{quiet}"
    );
}

/// `--expected-digest` / `--expected-size`: ctr checks the COMMIT response's digest.
#[tokio::test]
async fn ctr_content_ingest_with_expected_digest_and_size() {
    let d = Daemon::start().await;
    let data = random_bytes(1 << 20);
    let digest = digest_of(&data);
    let size = data.len().to_string();
    success(
        &ctr_input(
            &d,
            &[
                "content",
                "ingest",
                "--expected-digest",
                &digest,
                "--expected-size",
                &size,
                "ingest-expected",
            ],
            &data,
        ),
        "ctr content ingest --expected-digest --expected-size",
    );
    let mut content = d.content("default").await;
    let info = content
        .info(InfoRequest {
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.size, data.len() as i64);
    let out = ctr(&d, &["content", "get", &digest]);
    assert!(out.stdout == data, "ingested blob differs");
}

#[tokio::test]
async fn ctr_content_active_shows_interrupted_ingest() {
    let d = Daemon::start().await;
    let mut content = d.content("default").await;
    let reference = format!("interrupted-{}", random_id());
    let data = random_bytes(3 * 4096);
    let (mut w, _) = Writer::open(&mut content, &reference, 100_000, "")
        .await
        .unwrap();
    let offset = w.write_all(0, &data, 4096).await.unwrap();
    assert_eq!(offset, data.len() as i64);
    w.close().await.unwrap();

    let status = content
        .status(StatusRequest {
            r#ref: reference.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.offset, data.len() as i64);

    let out = success(&ctr(&d, &["content", "active"]), "ctr content active");
    let r = row(&out, &reference).unwrap_or_else(|| panic!("{reference} missing from:\n{out}"));
    assert!(r.contains("12.29kB"), "size column shows the offset: {r}");
    // The argument is a filter on the ingests (ctr passes it to ListStatuses).
    let out = success(
        &ctr(&d, &["content", "active", "ref==nomatch"]),
        "ctr content active ref==nomatch",
    );
    assert!(row(&out, &reference).is_none(), "filter ignored:\n{out}");
    let out = success(
        &ctr(&d, &["content", "active", "ref~=interrupted"]),
        "ctr content active ref~=interrupted",
    );
    assert!(
        row(&out, &reference).is_some(),
        "{reference} missing:\n{out}"
    );
}

#[tokio::test]
async fn ctr_leases_create_ls_rm() {
    let d = Daemon::start().await;
    let id = format!("lease-{}", random_id());
    let out = success(
        &ctr(&d, &["leases", "create", "--id", &id, "owner=tests"]),
        "ctr leases create",
    );
    assert_eq!(out.trim(), id, "create prints the id");
    let generated = success(&ctr(&d, &["leases", "create"]), "ctr leases create");
    let generated = generated.trim().to_string();
    assert!(!generated.is_empty(), "a generated id is printed");

    let ls = success(&ctr(&d, &["leases", "ls"]), "ctr leases ls");
    let r = row(&ls, &id).unwrap_or_else(|| panic!("{id} missing from:\n{ls}"));
    assert!(r.contains("owner=tests"), "labels column: {r}");
    assert!(
        r.contains("containerd.io/gc.expire="),
        "the default 24h expiry label: {r}"
    );
    assert!(row(&ls, &generated).is_some(), "{generated} missing:\n{ls}");

    // Seen over gRPC in the default namespace.
    let leases = d
        .leases("default")
        .await
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(leases.iter().any(|l| l.id == id), "{leases:?}");

    let out = success(&ctr(&d, &["leases", "rm", &id]), "ctr leases rm");
    assert!(out.contains(&id), "rm prints the id: {out}");
    let ls = success(&ctr(&d, &["leases", "ls", "-q"]), "ctr leases ls -q");
    assert!(!ls.lines().any(|l| l == id), "{id} still listed:\n{ls}");
    assert!(
        ls.lines().any(|l| l == generated),
        "{generated} gone:\n{ls}"
    );
    failure(&ctr(&d, &["leases", "rm", &id]), "removing a removed lease");
}

#[tokio::test]
async fn ctr_events_receives_namespace_create() {
    let d = Daemon::start().await;
    let mut cmd = tokio::process::Command::from(ctr_command(&d));
    cmd.arg("events")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn ctr events");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // ctr gives no sign of having subscribed: create namespaces until one event arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut created = Vec::new();
    let line = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ctr events printed no /namespaces/create event within 20s"
        );
        let ns = format!("evt-{}", random_id());
        success(
            &ctr(&d, &["namespaces", "create", &ns]),
            "ctr namespaces create",
        );
        created.push(ns);
        match tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
            Ok(Ok(Some(line))) => break line,
            Ok(Ok(None)) => {
                let out = child.wait_with_output().await.unwrap();
                panic!(
                    "ctr events exited: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(Err(e)) => panic!("read ctr events: {e}"),
            Err(_) => continue,
        }
    };
    // ctr prints: <timestamp> <namespace> <topic> <event as JSON>; the JSON needs the Any
    // type_url to name a type ctr knows.
    assert!(line.contains(" /namespaces/create "), "event line: {line}");
    assert!(
        created
            .iter()
            .any(|ns| line.ends_with(&format!("{{\"name\":\"{ns}\"}}"))),
        "event names none of {created:?}: {line}"
    );
    child.kill().await.ok();
}

/// containerd publishes `/namespaces/create` in the caller's namespace (ctr's `-n`, here
/// `default`), not in the namespace created: `ctr events` shows
/// `<time> default /namespaces/create {"name":"x"}`.
#[tokio::test]
async fn ctr_events_envelope_namespace_is_the_callers() {
    let d = Daemon::start().await;
    let mut cmd = tokio::process::Command::from(ctr_command(&d));
    cmd.arg("events")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn ctr events");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event within 20s"
        );
        let ns = format!("evt-{}", random_id());
        success(
            &ctr(&d, &["-n", "default", "namespaces", "create", &ns]),
            "create",
        );
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
        {
            break line;
        }
    };
    assert!(
        line.contains(" default /namespaces/create "),
        "envelope namespace should be the caller's (default): {line}"
    );
    child.kill().await.ok();
}
