//! Bad input gets the right gRPC code and a message saying what is wrong, and the daemon
//! keeps serving after each.

use berth_proto::containerd::services::content::v1::{
    DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, StatusRequest, UpdateRequest, WriteContentRequest,
};
use berth_proto::containerd::services::events::v1::PublishRequest;
use berth_proto::containerd::services::leases::v1::{CreateRequest, DeleteRequest, ListRequest};
use berth_proto::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest,
    Namespace,
};
use berth_tests::{
    digest_of, expect_code, random_bytes, read_blob, read_range, write_blob, Ctx, Daemon, Writer,
};
use tonic::Code;

const MIB: usize = 1 << 20;

fn malformed_digests() -> Vec<(&'static str, String)> {
    let hex = hex::encode([0xabu8; 32]);
    vec![
        ("empty", String::new()),
        ("no algorithm", hex.clone()),
        ("md5", "md5:d41d8cd98f00b204e9800998ecf8427e".into()),
        ("short hex", "sha256:abc123".into()),
        ("long hex", format!("sha256:{hex}0")),
        ("uppercase hex", format!("sha256:{}", hex.to_uppercase())),
        ("non-hex", format!("sha256:{}", "z".repeat(64))),
        ("garbage", "not a digest at all".into()),
        ("path", "sha256:../../../../etc/passwd".into()),
        ("empty algorithm", format!(":{hex}")),
    ]
}

#[tokio::test]
async fn malformed_digests_are_invalid_argument() {
    let d = Daemon::start().await;
    let mut c = d.content("default").await;
    for (what, digest) in malformed_digests() {
        let case = |op: &str| format!("{op} with {what} digest {digest:?}");
        let st = expect_code(
            c.info(InfoRequest {
                digest: digest.clone(),
            })
            .await,
            Code::InvalidArgument,
            &["digest"],
        );
        assert!(
            digest.is_empty() || st.message().contains(&digest),
            "{}: message should quote the input: {st:?}",
            case("Info")
        );
        expect_code(
            read_blob(&mut c, &digest).await,
            Code::InvalidArgument,
            &["digest"],
        );
        expect_code(
            c.delete(DeleteContentRequest {
                digest: digest.clone(),
            })
            .await,
            Code::InvalidArgument,
            &["digest"],
        );
        expect_code(
            c.update(UpdateRequest {
                info: Some(Info {
                    digest: digest.clone(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await,
            Code::InvalidArgument,
            &["digest"],
        );
        if !digest.is_empty() {
            // As the expected digest of a write, at open and at commit.
            expect_code(
                Writer::open(&mut c, "bad-expected", 0, &digest).await,
                Code::InvalidArgument,
                &["digest"],
            );
            let (mut w, _) = Writer::open(&mut c, "bad-expected", 0, "").await.unwrap();
            w.write(0, b"data").await.unwrap();
            expect_code(
                w.commit(4, 4, &digest, &[]).await,
                Code::InvalidArgument,
                &["digest"],
            );
        }
        d.assert_serving().await;
    }
}

#[tokio::test]
async fn negative_offsets_and_sizes_are_invalid_argument() {
    let d = Daemon::start().await;
    let mut c = d.content("default").await;
    let dg = write_blob(&mut c, "blob", b"0123456789", &[])
        .await
        .unwrap();

    expect_code(
        read_range(&mut c, &dg, -1, 0).await,
        Code::InvalidArgument,
        &["offset", "-1"],
    );
    d.assert_serving().await;
    expect_code(
        read_range(&mut c, &dg, 0, -5).await,
        Code::InvalidArgument,
        &["size", "-5"],
    );
    d.assert_serving().await;

    let (mut w, _) = Writer::open(&mut c, "neg", 0, "").await.unwrap();
    expect_code(
        w.write(-3, b"x").await,
        Code::InvalidArgument,
        &["offset", "-3"],
    );
    d.assert_serving().await;
    expect_code(
        Writer::open(&mut c, "neg", -10, "").await,
        Code::InvalidArgument,
        &["total", "-10"],
    );
    d.assert_serving().await;

    // A first message without a ref, and an unknown action.
    expect_code(
        Writer::open(&mut c, "", 0, "").await,
        Code::InvalidArgument,
        &["ref"],
    );
    let (mut w, _) = Writer::open(&mut c, "action", 0, "").await.unwrap();
    expect_code(
        w.send(WriteContentRequest {
            action: 42,
            r#ref: "action".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["action"],
    );
    d.assert_serving().await;

    // Malformed filters.
    let mut stream = c
        .list(ListContentRequest {
            filters: vec!["labels.\"unterminated==x".into()],
        })
        .await
        .map(|r| r.into_inner());
    let listed = match &mut stream {
        Ok(s) => s.message().await.map(|_| ()),
        Err(e) => Err(e.clone()),
    };
    expect_code(listed, Code::InvalidArgument, &["filter"]);
    d.assert_serving().await;
}

#[tokio::test]
async fn missing_namespace_is_failed_precondition() {
    let d = Daemon::start().await;
    let dg = digest_of(b"x");
    for ctx in [Ctx::none(), Ctx::ns("")] {
        let mut c = d.content(ctx.clone()).await;
        let need = &["namespace is required"];
        expect_code(
            c.info(InfoRequest { digest: dg.clone() }).await,
            Code::FailedPrecondition,
            need,
        );
        expect_code(
            c.list(ListContentRequest::default()).await,
            Code::FailedPrecondition,
            need,
        );
        expect_code(
            c.status(StatusRequest { r#ref: "r".into() }).await,
            Code::FailedPrecondition,
            need,
        );
        expect_code(
            c.list_statuses(ListStatusesRequest::default()).await,
            Code::FailedPrecondition,
            need,
        );
        expect_code(
            c.delete(DeleteContentRequest { digest: dg.clone() }).await,
            Code::FailedPrecondition,
            need,
        );
        expect_code(
            c.read(ReadContentRequest {
                digest: dg.clone(),
                ..Default::default()
            })
            .await,
            Code::FailedPrecondition,
            need,
        );
        expect_code(
            Writer::open(&mut c, "r", 0, "").await,
            Code::FailedPrecondition,
            need,
        );
        let mut l = d.leases(ctx.clone()).await;
        expect_code(
            l.create(CreateRequest {
                id: "l".into(),
                labels: Default::default(),
            })
            .await,
            Code::FailedPrecondition,
            need,
        );
        expect_code(
            l.list(ListRequest::default()).await,
            Code::FailedPrecondition,
            need,
        );
        let mut e = d.events(ctx.clone()).await;
        expect_code(
            e.publish(PublishRequest {
                topic: "/tests/x".into(),
                event: Some(prost_types::Any {
                    type_url: "containerd.events.NamespaceCreate".into(),
                    value: vec![],
                }),
            })
            .await,
            Code::FailedPrecondition,
            need,
        );
        d.assert_serving().await;
    }
}

#[tokio::test]
async fn invalid_namespaces_are_invalid_argument() {
    let d = Daemon::start().await;
    let long = "a".repeat(77);
    for ns in ["-bad", "bad-", "a..b", "a/b", "a b", "_x", long.as_str()] {
        let mut c = d.content(ns).await;
        let st = expect_code(
            c.info(InfoRequest {
                digest: digest_of(b"x"),
            })
            .await,
            Code::InvalidArgument,
            &["namespace"],
        );
        assert!(
            st.message().contains(ns),
            "message should quote {ns:?}: {st:?}"
        );
        expect_code(
            write_blob(&mut c, "r", b"data", &[]).await,
            Code::InvalidArgument,
            &["namespace"],
        );
        d.assert_serving().await;
    }
    // 76 characters is the limit, and fine.
    let mut c = d.content("b".repeat(76).as_str()).await;
    write_blob(&mut c, "r", b"data", &[]).await.unwrap();
}

#[tokio::test]
async fn invalid_identifiers_are_invalid_argument() {
    let d = Daemon::start().await;
    let mut n = d.namespaces().await;
    let long = "x".repeat(77);
    for name in [
        "",
        "-bad",
        "a..b",
        "has space",
        "a/b",
        "trailing.",
        long.as_str(),
    ] {
        expect_code(
            n.create(CreateNamespaceRequest {
                namespace: Some(Namespace {
                    name: name.into(),
                    labels: Default::default(),
                }),
            })
            .await,
            Code::InvalidArgument,
            &["identifier"],
        );
        d.assert_serving().await;
    }
    // Nothing was created.
    let list = n.list(ListNamespacesRequest::default()).await.unwrap();
    let names: Vec<String> = list
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert!(names.iter().all(|n| n == "default"), "{names:?}");
}

#[tokio::test]
async fn invalid_lease_ids_are_invalid_argument() {
    let d = Daemon::start().await;
    // Lease ids are looser than namespaces (containerd accepts any non-empty
    // id; its clients use `123-a_-Z` and paths), but control characters and
    // huge ids are refused.
    let long = "x".repeat(1025);
    let mut l = d.leases("default").await;
    for id in ["tab\there", "nul\0byte", "new\nline", long.as_str()] {
        expect_code(
            l.create(CreateRequest {
                id: id.into(),
                labels: Default::default(),
            })
            .await,
            Code::InvalidArgument,
            &["identifier"],
        );
        d.assert_serving().await;
    }
    // Nothing was created.
    let leases = l.list(ListRequest::default()).await.unwrap().into_inner();
    assert!(leases.leases.is_empty(), "{leases:?}");
    // What containerd's client generates (nanoseconds-base64url) is fine.
    for id in ["123456789-a_-Z", "987-_abc", "/tmp/mnt/target", "has space"] {
        l.create(CreateRequest {
            id: id.into(),
            labels: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("lease id {id:?} refused: {e}"));
    }
}

/// An empty id is not an error: the server picks one, as containerd's does.
#[tokio::test]
async fn empty_lease_id_gets_a_generated_one() {
    let d = Daemon::start().await;
    let mut l = d.leases("default").await;
    let generated = l
        .create(CreateRequest::default())
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert!(
        !generated.id.is_empty() && generated.id.chars().all(|c| c.is_ascii_alphanumeric()),
        "generated lease id {:?}",
        generated.id
    );
    d.assert_serving().await;
}

#[tokio::test]
async fn oversize_labels_are_invalid_argument() {
    let d = Daemon::start().await;
    let big = "v".repeat(4096);
    let fits = "v".repeat(4095);

    // Content commit.
    let mut c = d.content("default").await;
    let (mut w, _) = Writer::open(&mut c, "labels", 0, "").await.unwrap();
    w.write(0, b"labelled").await.unwrap();
    expect_code(
        w.commit(8, 8, "", &[("k", &big)]).await,
        Code::InvalidArgument,
        &["label", "4096"],
    );
    d.assert_serving().await;
    // The ingest is intact; a commit with a label that fits works (key + value = 4096).
    let (mut w, st) = Writer::open(&mut c, "labels", 0, "").await.unwrap();
    assert_eq!(st.offset, 8);
    w.commit(8, 8, "", &[("k", &fits)]).await.unwrap();
    let dg = digest_of(b"labelled");

    // Content update.
    expect_code(
        c.update(UpdateRequest {
            info: Some(Info {
                digest: dg.clone(),
                labels: [("k".to_string(), big.clone())].into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await,
        Code::InvalidArgument,
        &["label", "4096"],
    );
    d.assert_serving().await;
    let info = c
        .info(InfoRequest { digest: dg })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(
        info.labels.get("k").map(String::len),
        Some(4095),
        "label unchanged"
    );

    // Namespace and lease labels.
    let mut n = d.namespaces().await;
    expect_code(
        n.create(CreateNamespaceRequest {
            namespace: Some(Namespace {
                name: "labelled".into(),
                labels: [("k".to_string(), big.clone())].into(),
            }),
        })
        .await,
        Code::InvalidArgument,
        &["label", "4096"],
    );
    d.assert_serving().await;
    let mut l = d.leases("default").await;
    expect_code(
        l.create(CreateRequest {
            id: "labelled".into(),
            labels: [("k".to_string(), big.clone())].into(),
        })
        .await,
        Code::InvalidArgument,
        &["label", "4096"],
    );
    d.assert_serving().await;
}

/// A 17 MiB WRITE and a 17 MiB unary request: refused with a message naming the limit, and
/// the daemon carries on.
async fn oversize_requests(d: &Daemon) -> (tonic::Status, tonic::Status) {
    let mut c = d.content("default").await;
    let data = random_bytes(17 * MIB);
    let (mut w, _) = Writer::open(&mut c, "huge", 0, "").await.unwrap();
    let write = w.write(0, &data).await.expect_err("17 MiB WRITE accepted");
    d.assert_serving().await;

    let mut n = d.namespaces().await;
    let unary = n
        .create(CreateNamespaceRequest {
            namespace: Some(Namespace {
                name: "huge".into(),
                labels: [("k".to_string(), "v".repeat(17 * MIB))].into(),
            }),
        })
        .await;
    let unary = match unary {
        Ok(r) => panic!(
            "17 MiB request accepted: {:?}",
            r.into_inner().namespace.map(|n| (n.name, n.labels.len()))
        ),
        Err(e) => e,
    };
    d.assert_serving().await;

    // The same bytes in 1 MiB WRITEs go through, and read back in messages under the limit.
    let dg = write_blob(&mut c, "huge", &data, &[]).await.unwrap();
    assert!(read_blob(&mut c, &dg).await.unwrap() == data);
    d.assert_serving().await;
    (write, unary)
}

#[tokio::test]
async fn oversize_messages_are_refused_without_crash() {
    let d = Daemon::start().await;
    let (write, unary) = oversize_requests(&d).await;
    for st in [write, unary] {
        let msg = st.message().to_lowercase();
        assert!(
            msg.contains("too large") && msg.contains("16777216"),
            "the message should name the limit: {st:?}"
        );
    }
}

/// grpc-go (containerd, ctr) answers oversize messages with ResourceExhausted; tonic's
/// decoder says OutOfRange, which Content.Write also uses for a wrong offset.
#[tokio::test]
async fn oversize_messages_are_resource_exhausted() {
    let d = Daemon::start().await;
    let (write, unary) = oversize_requests(&d).await;
    assert_eq!(
        (write.code(), unary.code()),
        (Code::ResourceExhausted, Code::ResourceExhausted),
        "codes of a 17 MiB WRITE and a 17 MiB unary request: {write:?} / {unary:?}"
    );
}

#[tokio::test]
async fn unknown_objects_are_not_found() {
    let d = Daemon::start().await;
    let mut c = d.content("default").await;
    let missing = digest_of(b"never written");
    expect_code(
        c.info(InfoRequest {
            digest: missing.clone(),
        })
        .await,
        Code::NotFound,
        &[&missing],
    );
    expect_code(read_blob(&mut c, &missing).await, Code::NotFound, &[]);
    expect_code(
        c.delete(DeleteContentRequest {
            digest: missing.clone(),
        })
        .await,
        Code::NotFound,
        &[],
    );
    expect_code(
        c.status(StatusRequest {
            r#ref: "no-such-ref".into(),
        })
        .await,
        Code::NotFound,
        &["no-such-ref"],
    );
    let mut l = d.leases("default").await;
    expect_code(
        l.delete(DeleteRequest {
            id: "no-such-lease".into(),
            sync: false,
        })
        .await,
        Code::NotFound,
        &["no-such-lease"],
    );
    let mut n = d.namespaces().await;
    expect_code(
        n.get(GetNamespaceRequest {
            name: "no-such-ns".into(),
        })
        .await,
        Code::NotFound,
        &["no-such-ns"],
    );
    expect_code(
        n.delete(DeleteNamespaceRequest {
            name: "no-such-ns".into(),
        })
        .await,
        Code::NotFound,
        &["no-such-ns"],
    );
    d.assert_serving().await;
}

#[tokio::test]
async fn deleting_a_namespace_with_content_is_failed_precondition() {
    let d = Daemon::start().await;
    let mut c = d.content("full").await;
    let dg = write_blob(&mut c, "r", b"keep me", &[]).await.unwrap();
    let mut n = d.namespaces().await;
    expect_code(
        n.delete(DeleteNamespaceRequest {
            name: "full".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["full", "must be empty", "blobs"],
    );
    d.assert_serving().await;
    // Nothing was lost.
    assert_eq!(read_blob(&mut c, &dg).await.unwrap(), b"keep me");
    c.delete(DeleteContentRequest { digest: dg }).await.unwrap();
    n.delete(DeleteNamespaceRequest {
        name: "full".into(),
    })
    .await
    .unwrap();
    expect_code(
        n.get(GetNamespaceRequest {
            name: "full".into(),
        })
        .await,
        Code::NotFound,
        &[],
    );
}
