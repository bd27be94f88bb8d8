//! containerd's content test suite (`core/content/testsuite`) and the content service's write
//! protocol (`contentserver.go`), over gRPC against berthd.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use berth_proto::containerd::services::content::v1::{
    content_client::ContentClient, AbortRequest, DeleteContentRequest, Info, InfoRequest,
    ListContentRequest, ListStatusesRequest, StatusRequest, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use berth_proto::containerd::services::leases::v1::{CreateRequest, ListResourcesRequest};
use berth_tests::{
    assert_between, digest_of, expect_code, random_bytes, read_blob, read_range, system_time,
    write_blob, Ctx, Daemon, Svc, Writer,
};
use tonic::Code;

const GC_ROOT: (&str, &str) = ("containerd.io/gc.root", "2024-01-01T00:00:00Z");

fn now() -> SystemTime {
    SystemTime::now()
}

fn label_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn info(c: &mut ContentClient<Svc>, digest: &str) -> Result<Info, tonic::Status> {
    Ok(c.info(InfoRequest {
        digest: digest.to_string(),
    })
    .await?
    .into_inner()
    .info
    .expect("InfoResponse.info is set"))
}

/// What `checkInfo` checks: digest, size, labels, and both timestamps within bounds.
#[allow(clippy::too_many_arguments)]
#[track_caller]
fn check_info(
    info: &Info,
    digest: &str,
    size: usize,
    labels: &BTreeMap<String, String>,
    created: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) {
    assert_eq!(info.digest, digest, "info digest");
    assert_eq!(info.size, size as i64, "info size of {digest}");
    let got: BTreeMap<String, String> = info.labels.clone().into_iter().collect();
    assert_eq!(&got, labels, "labels of {digest}");
    assert_between(
        "created_at",
        system_time(&info.created_at),
        created.0,
        created.1,
    );
    assert_between(
        "updated_at",
        system_time(&info.updated_at),
        updated.0,
        updated.1,
    );
}

/// What `checkStatus` checks, on a STAT response.
#[track_caller]
fn check_stat(
    st: &WriteContentResponse,
    offset: usize,
    total: usize,
    digest: &str,
    started: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) {
    assert_eq!(st.offset, offset as i64, "STAT offset");
    assert_eq!(st.total, total as i64, "STAT total");
    assert_eq!(st.digest, digest, "STAT digest of the bytes so far");
    assert_between(
        "started_at",
        system_time(&st.started_at),
        started.0,
        started.1,
    );
    assert_between(
        "updated_at",
        system_time(&st.updated_at),
        updated.0,
        updated.1,
    );
}

#[tokio::test]
async fn writer_with_ref_size_and_digest_variants() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    // ref, declare size, declare digest, blob size
    let cases = [
        ("c1", false, false, 256),
        ("c2", true, false, 256),
        ("c3", false, true, 256),
        ("c4", true, true, 256),
        ("c5", true, true, 8 << 20),
    ];
    // All writers are open at once, as in the Go suite.
    let mut open = Vec::new();
    for (reference, with_size, with_digest, size) in cases {
        let data = random_bytes(size);
        let digest = digest_of(&data);
        let (w, first) = Writer::open(
            &mut c,
            reference,
            if with_size { size as i64 } else { 0 },
            if with_digest { &digest } else { "" },
        )
        .await
        .unwrap_or_else(|e| panic!("open {reference}: {e}"));
        assert_eq!(first.offset, 0, "{reference} starts empty");
        open.push((reference, w, data, digest));
    }
    for (reference, mut w, data, digest) in open {
        let chunk = if data.len() <= 256 { 32 } else { 1 << 20 };
        let end = w.write_all(0, &data, chunk).await.unwrap();
        assert_eq!(end, data.len() as i64);
        let pre = now();
        let resp = w
            .commit(end, 0, "", &[GC_ROOT])
            .await
            .unwrap_or_else(|e| panic!("commit {reference}: {e}"));
        let post = now();
        assert_eq!(
            resp.offset,
            data.len() as i64,
            "commit offset of {reference}"
        );
        let i = info(&mut c, &digest).await.unwrap();
        check_info(
            &i,
            &digest,
            data.len(),
            &label_map(&[GC_ROOT]),
            (pre, post),
            (pre, post),
        );
        assert!(
            read_blob(&mut c, &digest).await.unwrap() == data,
            "{reference} reads back"
        );
    }
}

/// containerd's remote writer takes the committed digest from the COMMIT response (and
/// compares it with the expected one), so it must be the blob's digest.
#[tokio::test]
async fn commit_response_carries_the_committed_digest() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    for (reference, with_digest) in [("plain", false), ("expected", true)] {
        let data = random_bytes(1000);
        let digest = digest_of(&data);
        let (mut w, _) = Writer::open(&mut c, reference, 0, "").await.unwrap();
        let end = w.write_all(0, &data, 256).await.unwrap();
        let resp = w
            .commit(end, 1000, if with_digest { &digest } else { "" }, &[])
            .await
            .unwrap();
        assert_eq!(resp.digest, digest, "COMMIT response digest ({reference})");
        assert_eq!(resp.offset, 1000);
    }
}

#[tokio::test]
async fn status_tracks_offset_digest_and_times() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let data = random_bytes(256);
    let d1 = digest_of(&data);

    let pre_start = now();
    let (mut w, first) = Writer::open(&mut c, "c1", 256, &d1).await.unwrap();
    let post_start = now();
    // Empty ingest: digest of nothing.
    check_stat(
        &first,
        0,
        256,
        &digest_of(b""),
        (pre_start, post_start),
        (pre_start, post_start),
    );
    let started_at = first.started_at;

    for (from, to) in [(0, 64), (64, 192), (192, 256)] {
        let pre = now();
        w.write(from as i64, &data[from..to]).await.unwrap();
        let post = now();
        let st = w.stat().await.unwrap();
        check_stat(
            &st,
            to,
            256,
            &digest_of(&data[..to]),
            (pre_start, post_start),
            (pre, post),
        );
        assert_eq!(st.started_at, started_at, "started_at never moves");

        // The Status and ListStatuses RPCs agree with the session.
        let s = c
            .status(StatusRequest { r#ref: "c1".into() })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            (s.r#ref.as_str(), s.offset, s.total),
            ("c1", to as i64, 256)
        );
        assert_eq!(s.started_at, started_at);
        let all = c
            .list_statuses(ListStatusesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .statuses;
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].offset, to as i64);
    }

    let pre = now();
    w.commit(256, 0, "", &[GC_ROOT]).await.unwrap();
    let post = now();
    let i = info(&mut c, &d1).await.unwrap();
    check_info(
        &i,
        &d1,
        256,
        &label_map(&[GC_ROOT]),
        (pre, post),
        (pre, post),
    );
    expect_code(
        c.status(StatusRequest { r#ref: "c1".into() }).await,
        Code::NotFound,
        &[],
    );
}

#[tokio::test]
async fn resume_after_reconnect_keeps_started_at() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let data = random_bytes(256);
    let dgst = digest_of(&data);
    let (first, second) = data.split_at(128);

    let pre_start = now();
    let (mut w1, _) = Writer::open(&mut c, "cb", 256, &dgst).await.unwrap();
    let post_start = now();
    let pre_update = now();
    w1.write(0, first).await.unwrap();
    let post_update = now();
    let st1 = w1.stat().await.unwrap();
    check_stat(
        &st1,
        128,
        256,
        &digest_of(first),
        (pre_start, post_start),
        (pre_update, post_update),
    );
    w1.close().await.unwrap();

    // A new connection, a new session on the same ref: same state, same times.
    let mut c2 = d.content("testsuite").await;
    let (mut w2, st2) = Writer::open(&mut c2, "cb", 256, &dgst).await.unwrap();
    check_stat(
        &st2,
        128,
        256,
        &digest_of(first),
        (pre_start, post_start),
        (pre_update, post_update),
    );
    assert_eq!(
        st2.started_at, st1.started_at,
        "started_at survives the resume"
    );
    assert_eq!(
        st2.updated_at, st1.updated_at,
        "updated_at survives the resume"
    );

    let pre = now();
    w2.write(128, second).await.unwrap();
    let post = now();
    let st = w2.stat().await.unwrap();
    check_stat(&st, 256, 256, &dgst, (pre_start, post_start), (pre, post));

    let pre = now();
    w2.commit(256, 0, "", &[]).await.unwrap();
    let post = now();
    let i = info(&mut c2, &dgst).await.unwrap();
    check_info(&i, &dgst, 256, &BTreeMap::new(), (pre, post), (pre, post));
}

#[derive(Clone, Copy, Debug)]
enum Resume {
    /// WRITE from offset 0 again: the ingest is truncated and rewritten.
    Truncate,
    /// Continue at the resumed offset.
    Continue,
}

async fn check_resume(mode: Resume) {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    for (i, size) in [500usize, 5000, 50000].into_iter().enumerate() {
        for (j, fraction) in [0.0, 0.1, 0.5, 0.9, 1.0].into_iter().enumerate() {
            let data = random_bytes(size);
            let dg = digest_of(&data);
            let limit = (size as f64 * fraction) as usize;
            let reference = format!("ref-{i}-{j}");
            let what = format!("{mode:?} {reference} ({limit} of {size} bytes)");

            let (mut w, _) = Writer::open(&mut c, &reference, size as i64, &dg)
                .await
                .unwrap_or_else(|e| panic!("{what}: open: {e}"));
            w.write_all(0, &data[..limit], 1024).await.unwrap();
            w.close().await.unwrap();

            let (mut w, st) = Writer::open(&mut c, &reference, size as i64, &dg)
                .await
                .unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
            assert_eq!(st.offset, limit as i64, "{what}: resumed offset");
            assert_eq!(
                st.digest,
                digest_of(&data[..limit]),
                "{what}: resumed digest"
            );

            let pre = now();
            let end = match mode {
                Resume::Truncate => {
                    // The first WRITE at offset 0 truncates whatever was there.
                    let first = &data[..1024.min(size)];
                    let r = w.write(0, first).await.unwrap();
                    assert_eq!(
                        r.offset,
                        first.len() as i64,
                        "{what}: offset after truncate"
                    );
                    w.write_all(first.len() as i64, &data[first.len()..], 1024)
                        .await
                        .unwrap()
                }
                Resume::Continue => w
                    .write_all(limit as i64, &data[limit..], 1024)
                    .await
                    .unwrap(),
            };
            assert_eq!(end, size as i64, "{what}");
            w.commit(end, size as i64, &dg, &[])
                .await
                .unwrap_or_else(|e| panic!("{what}: commit: {e}"));
            let post = now();
            let got = info(&mut c, &dg).await.unwrap();
            check_info(&got, &dg, size, &BTreeMap::new(), (pre, post), (pre, post));
            assert!(
                read_blob(&mut c, &dg).await.unwrap() == data,
                "{what}: bytes"
            );
        }
    }
}

#[tokio::test]
async fn resume_truncate_at_every_fraction() {
    check_resume(Resume::Truncate).await;
}

#[tokio::test]
async fn resume_continue_at_every_fraction() {
    check_resume(Resume::Continue).await;
}

#[tokio::test]
async fn commit_of_existing_content_is_already_exists() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let c1 = random_bytes(256);
    let d1 = write_blob(&mut c, "c1", &c1, &[]).await.unwrap();

    for (i, expected) in [d1.as_str(), ""].into_iter().enumerate() {
        let reference = format!("c1-commitexists-{i}");
        let (mut w, _) = Writer::open(&mut c, &reference, 0, "").await.unwrap();
        w.write(0, &c1).await.unwrap();
        expect_code(
            w.commit(256, 256, expected, &[]).await,
            Code::AlreadyExists,
            &["exists"],
        );
        // The failed commit removed the ingest.
        expect_code(
            c.status(StatusRequest { r#ref: reference }).await,
            Code::NotFound,
            &[],
        );
    }
    // Declaring an existing digest up front is refused at once.
    expect_code(
        Writer::open(&mut c, "c1-again", 256, &d1).await,
        Code::AlreadyExists,
        &[&d1],
    );
}

/// containerd's `checkCommitErrorState`: a failed commit leaves the ingest in a state a
/// retry can use, and the ref stays exclusive to one writer throughout.
#[tokio::test]
async fn commit_error_state() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let c1 = random_bytes(256);
    let d1 = write_blob(&mut c, "c1", &c1, &[]).await.unwrap();
    let d2 = digest_of(&random_bytes(256));
    let reference = "c1-commiterror-state";

    async fn unavailable(c: &mut ContentClient<Svc>, reference: &str) {
        expect_code(
            Writer::open(c, reference, 0, "").await,
            Code::Unavailable,
            &[reference],
        );
    }

    // Exists, with digest.
    let (mut w, _) = Writer::open(&mut c, reference, 0, "").await.unwrap();
    w.write(0, &c1).await.unwrap();
    unavailable(&mut c, reference).await;
    expect_code(w.commit(256, 256, &d1, &[]).await, Code::AlreadyExists, &[]);

    // Exists, without digest.
    let (mut w, st) = Writer::open(&mut c, reference, 0, "").await.unwrap();
    assert_eq!(st.offset, 0, "AlreadyExists removed the ingest");
    unavailable(&mut c, reference).await;
    w.write(0, &c1).await.unwrap();
    expect_code(w.commit(256, 256, "", &[]).await, Code::AlreadyExists, &[]);

    // Wrong digest: FailedPrecondition, ingest kept.
    let mut more = c1.clone();
    more.extend_from_slice(b"more");
    let (mut w, st) = Writer::open(&mut c, reference, 0, "").await.unwrap();
    assert_eq!(st.offset, 0, "AlreadyExists removed the ingest");
    unavailable(&mut c, reference).await;
    w.write(0, &more).await.unwrap();
    expect_code(
        w.commit(260, 260, &d2, &[]).await,
        Code::FailedPrecondition,
        &["digest"],
    );

    // Wrong size: FailedPrecondition, ingest kept.
    let (mut w, st) = Writer::open(&mut c, reference, 0, "").await.unwrap();
    assert_eq!(st.offset, 260, "a failed commit keeps the ingest");
    assert_eq!(st.digest, digest_of(&more));
    unavailable(&mut c, reference).await;
    expect_code(
        w.commit(260, 256, "", &[]).await,
        Code::FailedPrecondition,
        &["256", "260"],
    );

    // Now the right commit succeeds.
    let (mut w, st) = Writer::open(&mut c, reference, 0, "").await.unwrap();
    assert_eq!(st.offset, 260);
    unavailable(&mut c, reference).await;
    let resp = w.commit(260, 260, "", &[]).await.unwrap();
    assert_eq!(resp.offset, 260);
    assert_eq!(info(&mut c, &digest_of(&more)).await.unwrap().size, 260);

    // The ref is free again: a new ingest under it.
    let (mut w, st) = Writer::open(&mut c, reference, 0, "").await.unwrap();
    assert_eq!(st.offset, 0, "a committed ref starts afresh");
    w.write(0, &c1).await.unwrap();
    unavailable(&mut c, reference).await;
    expect_code(w.commit(256, 256, &d1, &[]).await, Code::AlreadyExists, &[]);

    // Truncate and close, twice: the ref stays usable.
    for _ in 0..2 {
        let (mut w, _) = Writer::open(&mut c, reference, 0, "").await.unwrap();
        unavailable(&mut c, reference).await;
        let r = w.write(0, &[]).await.unwrap();
        assert_eq!(r.offset, 0);
        w.close().await.unwrap();
    }
}

#[tokio::test]
async fn wrong_digest_then_correct_commit() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let data = random_bytes(10_000);
    let right = digest_of(&data);
    let wrong = digest_of(b"not these bytes");
    let (mut w, _) = Writer::open(&mut c, "retry", 0, "").await.unwrap();
    w.write_all(0, &data, 4096).await.unwrap();
    let st = expect_code(
        w.commit(10_000, 10_000, &wrong, &[]).await,
        Code::FailedPrecondition,
        &["digest"],
    );
    assert!(
        st.message().contains(&right) || st.message().contains(&wrong),
        "{st:?}"
    );
    expect_code(info(&mut c, &wrong).await, Code::NotFound, &[]);
    expect_code(info(&mut c, &right).await, Code::NotFound, &[]);

    let (mut w, _) = Writer::open(&mut c, "retry", 0, "").await.unwrap();
    expect_code(
        w.commit(10_000, 9_999, "", &[]).await,
        Code::FailedPrecondition,
        &["9999", "10000"],
    );
    let (mut w, st) = Writer::open(&mut c, "retry", 0, "").await.unwrap();
    assert_eq!(st.offset, 10_000, "ingest kept after failed commits");
    w.commit(10_000, 10_000, &right, &[("k", "v")])
        .await
        .unwrap();
    let i = info(&mut c, &right).await.unwrap();
    assert_eq!(i.size, 10_000);
    assert_eq!(i.labels.get("k").map(String::as_str), Some("v"));
    assert!(read_blob(&mut c, &right).await.unwrap() == data);
}

/// Large WRITEs (copied into the ingest on the writer's own thread while they are hashed):
/// every reply carries the digest of all data so far, acknowledged data is in the ingest (its
/// status counts it, a new session resumes from it), a WRITE at 0 starts over, a refused
/// WRITE leaves nothing behind, and a COMMIT carrying the last piece commits it all.
#[tokio::test]
async fn large_writes_reply_with_the_digest_so_far_and_are_in_place() {
    const MIB: usize = 1 << 20;
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let data = random_bytes(5 * MIB);
    let (mut w, _) = Writer::open(&mut c, "large", 0, "").await.unwrap();
    for i in 0..3 {
        let r = w
            .write((i * MIB) as i64, &data[i * MIB..(i + 1) * MIB])
            .await
            .unwrap();
        assert_eq!(r.offset, ((i + 1) * MIB) as i64);
        assert_eq!(r.digest, digest_of(&data[..(i + 1) * MIB]), "reply {i}");
    }
    let s = c
        .status(StatusRequest {
            r#ref: "large".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(s.offset, (3 * MIB) as i64);
    // Refused after its data was on its way into the ingest (a malformed expected digest):
    // nothing of it stays.
    expect_code(
        w.send(WriteContentRequest {
            action: WriteAction::Write as i32,
            offset: (3 * MIB) as i64,
            expected: "sha256:not-hex".into(),
            data: data[3 * MIB..4 * MIB].to_vec().into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &[],
    );
    let (mut w, st) = Writer::open(&mut c, "large", 0, "").await.unwrap();
    assert_eq!(st.offset, (3 * MIB) as i64);
    assert_eq!(st.digest, digest_of(&data[..3 * MIB]));

    // Starting over, then a COMMIT that carries the rest.
    let r = w.write(0, &data[..2 * MIB]).await.unwrap();
    assert_eq!(
        (r.offset, r.digest),
        ((2 * MIB) as i64, digest_of(&data[..2 * MIB]))
    );
    let r = w
        .send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset: (2 * MIB) as i64,
            data: data[2 * MIB..].to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.digest, digest_of(&data));
    assert!(read_blob(&mut c, &digest_of(&data)).await.unwrap() == data);
}

#[tokio::test]
async fn write_at_wrong_offset_is_out_of_range() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let data = random_bytes(300);
    let (mut w, _) = Writer::open(&mut c, "offsets", 300, "").await.unwrap();
    w.write(0, &data[..100]).await.unwrap();
    expect_code(
        w.write(50, &data[50..60]).await,
        Code::OutOfRange,
        &["50", "100"],
    );
    let (mut w, st) = Writer::open(&mut c, "offsets", 300, "").await.unwrap();
    assert_eq!(st.offset, 100, "the refused WRITE changed nothing");
    expect_code(
        w.write(200, &data[200..]).await,
        Code::OutOfRange,
        &["200", "100"],
    );
    let (mut w, st) = Writer::open(&mut c, "offsets", 300, "").await.unwrap();
    assert_eq!(st.offset, 100);
    let end = w.write_all(100, &data[100..], 64).await.unwrap();
    w.commit(end, 300, &digest_of(&data), &[]).await.unwrap();
    assert!(read_blob(&mut c, &digest_of(&data)).await.unwrap() == data);
}

#[tokio::test]
async fn read_ranges_and_past_the_end() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let blob = b"foobar";
    let dg = write_blob(&mut c, "small", blob, &[]).await.unwrap();

    // A size past the end is clamped (checkSmallBlob reads size+1).
    assert_eq!(read_range(&mut c, &dg, 0, 7).await.unwrap(), blob);
    assert_eq!(read_range(&mut c, &dg, 2, 2).await.unwrap(), b"ob");
    assert_eq!(read_range(&mut c, &dg, 3, 100).await.unwrap(), b"bar");
    assert_eq!(read_range(&mut c, &dg, 0, 0).await.unwrap(), blob);
    assert!(read_range(&mut c, &dg, 6, 0).await.unwrap().is_empty());
    expect_code(
        read_range(&mut c, &dg, 7, 0).await,
        Code::OutOfRange,
        &["7", "6"],
    );

    // A big blob comes back in several in-order chunks.
    let big = random_bytes((5 << 20) + 123);
    let bd = write_blob(&mut c, "big", &big, &[]).await.unwrap();
    assert!(read_blob(&mut c, &bd).await.unwrap() == big);
    let tail = read_range(&mut c, &bd, (4 << 20) + 7, 0).await.unwrap();
    assert!(tail == big[(4 << 20) + 7..], "tail read");
}

#[tokio::test]
async fn labels_update_with_and_without_field_paths() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let data = random_bytes(256);
    let d1 = digest_of(&data);
    let (mut w, _) = Writer::open(&mut c, "c1-checklabels", 256, &d1)
        .await
        .unwrap();
    w.write(0, &data).await.unwrap();
    let mut labels = label_map(&[("k1", "v1"), ("k2", "v2"), GC_ROOT]);
    let pre_commit = now();
    w.commit(256, 0, "", &[("k1", "v1"), ("k2", "v2"), GC_ROOT])
        .await
        .unwrap();
    let post_commit = now();
    let i = info(&mut c, &d1).await.unwrap();
    let commit_window = (pre_commit, post_commit);
    check_info(&i, &d1, 256, &labels, commit_window, commit_window);

    let update = |labels: &BTreeMap<String, String>, paths: &[&str]| UpdateRequest {
        info: Some(Info {
            digest: d1.clone(),
            labels: labels.clone().into_iter().collect(),
            ..Default::default()
        }),
        update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };

    // No field paths: the labels are replaced.
    labels.insert("k1".into(), "newvalue".into());
    labels.remove("k2");
    labels.insert("k3".into(), "v3".into());
    let pre = now();
    let resp = c.update(update(&labels, &[])).await.unwrap().into_inner();
    let post = now();
    check_info(
        &resp.info.unwrap(),
        &d1,
        256,
        &labels,
        commit_window,
        (pre, post),
    );
    let i = info(&mut c, &d1).await.unwrap();
    check_info(&i, &d1, 256, &labels, commit_window, (pre, post));

    // labels.k3 (absent from the request: removed) and labels.k1 (set).
    let want = label_map(&[("k1", "v1"), GC_ROOT]);
    let pre = now();
    c.update(update(&want, &["labels.k3", "labels.k1"]))
        .await
        .unwrap();
    let post = now();
    let i = info(&mut c, &d1).await.unwrap();
    check_info(&i, &d1, 256, &want, commit_window, (pre, post));

    // labels.k9 only: other labels are untouched.
    c.update(update(
        &label_map(&[("k9", "nine"), ("k1", "ignored")]),
        &["labels.k9"],
    ))
    .await
    .unwrap();
    let i = info(&mut c, &d1).await.unwrap();
    let want = label_map(&[("k1", "v1"), ("k9", "nine"), GC_ROOT]);
    assert_eq!(i.labels.into_iter().collect::<BTreeMap<_, _>>(), want);

    // The `labels` path replaces the whole map.
    let only = label_map(&[("solo", "1")]);
    c.update(update(&only, &["labels"])).await.unwrap();
    let i = info(&mut c, &d1).await.unwrap();
    assert_eq!(i.labels.into_iter().collect::<BTreeMap<_, _>>(), only);

    // Other fields cannot be updated; unknown digests are NotFound.
    expect_code(
        c.update(update(&only, &["size"])).await,
        Code::InvalidArgument,
        &["size"],
    );
    let mut missing = update(&only, &[]);
    missing.info.as_mut().unwrap().digest = digest_of(b"missing");
    expect_code(c.update(missing).await, Code::NotFound, &[]);
}

async fn list(c: &mut ContentClient<Svc>, filters: &[&str]) -> BTreeSet<String> {
    let mut stream = c
        .list(ListContentRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("List {filters:?}: {e}"))
        .into_inner();
    let mut out = BTreeSet::new();
    while let Some(batch) = stream.message().await.unwrap() {
        for i in batch.info {
            assert!(out.insert(i.digest.clone()), "{} listed twice", i.digest);
        }
    }
    out
}

#[tokio::test]
async fn list_with_filters() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let a = write_blob(
        &mut c,
        "a",
        &random_bytes(100),
        &[("color", "red"), ("size", "big")],
    )
    .await
    .unwrap();
    let b = write_blob(&mut c, "b", &random_bytes(200), &[("color", "red")])
        .await
        .unwrap();
    let cc = write_blob(&mut c, "c", &random_bytes(300), &[("color", "blue")])
        .await
        .unwrap();
    let set = |xs: &[&String]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    assert_eq!(list(&mut c, &[]).await, set(&[&a, &b, &cc]));
    assert_eq!(list(&mut c, &["labels.color==red"]).await, set(&[&a, &b]));
    assert_eq!(
        list(&mut c, &["labels.color==red,labels.size==big"]).await,
        set(&[&a]),
        "comma is AND"
    );
    assert_eq!(
        list(&mut c, &["labels.color==blue", "labels.size==big"]).await,
        set(&[&a, &cc]),
        "several filters are OR"
    );
    assert_eq!(list(&mut c, &["labels.color!=red"]).await, set(&[&cc]));
    assert_eq!(list(&mut c, &["labels.color~=^bl"]).await, set(&[&cc]));
    assert_eq!(list(&mut c, &["labels.size"]).await, set(&[&a]));
    assert_eq!(list(&mut c, &[&format!("digest=={b}")]).await, set(&[&b]));
    assert!(list(&mut c, &["labels.color==green"]).await.is_empty());

    // ListStatuses filters on ref.
    for r in ["ing-a-1", "ing-b-1"] {
        let (mut w, _) = Writer::open(&mut c, r, 0, "").await.unwrap();
        w.write(0, b"partial").await.unwrap();
        w.close().await.unwrap();
    }
    let refs = |filters: &[&str]| ListStatusesRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    let names = |r: Vec<berth_proto::containerd::services::content::v1::Status>| {
        r.into_iter().map(|s| s.r#ref).collect::<BTreeSet<_>>()
    };
    let all = c
        .list_statuses(refs(&[]))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(names(all), ["ing-a-1", "ing-b-1"].map(String::from).into());
    let one = c
        .list_statuses(refs(&["ref==ing-a-1"]))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(names(one), ["ing-a-1"].map(String::from).into());
    let re = c
        .list_statuses(refs(&["ref~=^ing-b"]))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(names(re), ["ing-b-1"].map(String::from).into());
}

#[tokio::test]
async fn namespaces_isolate_content() {
    let d = Daemon::start().await;
    let mut a = d.content("ns-a").await;
    let mut b = d.content("ns-b").await;
    let data = random_bytes(1000);
    let dg = write_blob(&mut a, "ref-1000", &data, &[("owner", "a")])
        .await
        .unwrap();
    // b has something of its own, so the namespace exists.
    let other = write_blob(&mut b, "other", &random_bytes(10), &[])
        .await
        .unwrap();

    expect_code(info(&mut b, &dg).await, Code::NotFound, &[]);
    expect_code(read_blob(&mut b, &dg).await, Code::NotFound, &[]);
    expect_code(
        b.delete(DeleteContentRequest { digest: dg.clone() }).await,
        Code::NotFound,
        &[],
    );
    assert_eq!(list(&mut b, &[]).await, BTreeSet::from([other.clone()]));
    assert_eq!(list(&mut a, &[]).await, BTreeSet::from([dg.clone()]));
    // Still intact in a.
    assert!(read_blob(&mut a, &dg).await.unwrap() == data);

    // Ingests are per namespace too: the same ref in two namespaces are two ingests.
    let (mut wa, _) = Writer::open(&mut a, "same-ref", 0, "").await.unwrap();
    wa.write(0, b"in a").await.unwrap();
    let (wb, st) = Writer::open(&mut b, "same-ref", 0, "").await.unwrap();
    assert_eq!(st.offset, 0, "b does not see a's ingest");
    wb.close().await.unwrap();
    wa.close().await.unwrap();
}

/// containerd's `checkCrossNSShare` (the default "shared" policy): a writer in another
/// namespace for a digest the store already holds starts complete and commits without data.
#[tokio::test]
async fn cross_namespace_share() {
    let d = Daemon::start().await;
    let mut a = d.content("ns-a").await;
    let mut b = d.content("ns-b").await;
    let data = random_bytes(1000);
    let dg = digest_of(&data);
    let t1 = now();
    write_blob(&mut a, "ref-1000", &data, &[]).await.unwrap();

    let (mut w, st) = Writer::open(&mut b, "ref-1000", 1000, &dg).await.unwrap();
    let t2 = now();
    check_stat(&st, 1000, 1000, &dg, (t1, t2), (t1, t2));
    w.commit(1000, 1000, &dg, &[]).await.unwrap();
    let t3 = now();
    let i = info(&mut b, &dg).await.unwrap();
    check_info(&i, &dg, 1000, &BTreeMap::new(), (t1, t3), (t1, t3));
    assert!(read_blob(&mut b, &dg).await.unwrap() == data);

    // Deleting it from a leaves b's.
    a.delete(DeleteContentRequest { digest: dg.clone() })
        .await
        .unwrap();
    expect_code(info(&mut a, &dg).await, Code::NotFound, &[]);
    assert!(read_blob(&mut b, &dg).await.unwrap() == data);
}

#[tokio::test]
async fn leased_writes_are_lease_resources() {
    let d = Daemon::start().await;
    let ns = "leased";
    let mut leases = d.leases(ns).await;
    let lease = leases
        .create(CreateRequest {
            id: "lease-1".into(),
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.id, "lease-1");

    let mut leased = d.content(Ctx::ns(ns).lease("lease-1")).await;
    let mut plain = d.content(ns).await;
    let held = write_blob(&mut leased, "held", &random_bytes(5000), &[])
        .await
        .unwrap();
    let free = write_blob(&mut plain, "free", &random_bytes(5000), &[])
        .await
        .unwrap();
    let (mut w, _) = Writer::open(&mut leased, "leased-ingest", 0, "")
        .await
        .unwrap();
    w.write(0, b"partial").await.unwrap();
    w.close().await.unwrap();

    let resources = leases
        .list_resources(ListResourcesRequest {
            id: "lease-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .resources;
    let got: BTreeSet<(String, String)> = resources.into_iter().map(|r| (r.r#type, r.id)).collect();
    assert!(
        got.contains(&("content".to_string(), held.clone())),
        "leased blob missing from {got:?}"
    );
    assert!(
        !got.iter().any(|(_, id)| *id == free),
        "blob written without the lease is listed: {got:?}"
    );
    assert!(
        got.contains(&("ingests".to_string(), "leased-ingest".to_string())),
        "leased ingest missing from {got:?}"
    );
    // Writing under a lease that does not exist fails.
    let mut ghost = d.content(Ctx::ns(ns).lease("no-such-lease")).await;
    expect_code(
        write_blob(&mut ghost, "ghost", &random_bytes(10), &[]).await,
        Code::NotFound,
        &["no-such-lease"],
    );
}

#[tokio::test]
async fn abort_and_delete() {
    let d = Daemon::start().await;
    let mut c = d.content("testsuite").await;
    let (mut w, _) = Writer::open(&mut c, "to-abort", 0, "").await.unwrap();
    w.write(0, b"some bytes").await.unwrap();
    // Abort of a locked ingest is refused while its writer is live.
    w.close().await.unwrap();
    c.abort(AbortRequest {
        r#ref: "to-abort".into(),
    })
    .await
    .unwrap();
    expect_code(
        c.status(StatusRequest {
            r#ref: "to-abort".into(),
        })
        .await,
        Code::NotFound,
        &[],
    );
    expect_code(
        c.abort(AbortRequest {
            r#ref: "to-abort".into(),
        })
        .await,
        Code::NotFound,
        &[],
    );
    let (_, st) = Writer::open(&mut c, "to-abort", 0, "").await.unwrap();
    assert_eq!(st.offset, 0, "an aborted ref starts afresh");

    let dg = write_blob(&mut c, "to-delete", &random_bytes(64), &[])
        .await
        .unwrap();
    c.delete(DeleteContentRequest { digest: dg.clone() })
        .await
        .unwrap();
    expect_code(info(&mut c, &dg).await, Code::NotFound, &[]);
    expect_code(
        c.delete(DeleteContentRequest { digest: dg }).await,
        Code::NotFound,
        &[],
    );
}
