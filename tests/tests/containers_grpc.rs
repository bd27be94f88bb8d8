//! The containers service over gRPC and through the stock `ctr`.

use std::collections::HashMap;

use berth_proto::containerd::services::containers::v1::{
    container::Runtime, containers_client::ContainersClient, Container, CreateContainerRequest,
    DeleteContainerRequest, GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
};
use berth_proto::containerd::services::events::v1::SubscribeRequest;
use berth_tests::{ctr, expect_code, success, Ctx, Daemon, Svc};
use tonic::Code;

const SPEC_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

fn container(id: &str) -> Container {
    Container {
        id: id.into(),
        labels: HashMap::from([("app".into(), "web".into())]),
        image: "docker.io/library/busybox:latest".into(),
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_URL.into(),
            value: br#"{"ociVersion":"1.0.2","process":{"args":["sh"]}}"#.to_vec(),
        }),
        snapshotter: "overlayfs".into(),
        snapshot_key: id.into(),
        ..Default::default()
    }
}

async fn client(d: &Daemon, ns: &str) -> ContainersClient<Svc> {
    ContainersClient::with_interceptor(d.channel().await, Ctx::ns(ns))
}

#[tokio::test]
async fn create_get_list_update_delete() {
    let d = Daemon::start().await;
    let mut c = client(&d, "default").await;
    let mut events = d
        .events(Ctx::ns("default"))
        .await
        .subscribe(SubscribeRequest {
            filters: vec![r#"topic~="^/containers/""#.into()],
        })
        .await
        .expect("subscribe")
        .into_inner();

    let created = c
        .create(CreateContainerRequest {
            container: Some(container("web1")),
        })
        .await
        .expect("create")
        .into_inner()
        .container
        .expect("container");
    assert!(created.created_at.is_some() && created.created_at == created.updated_at);
    assert_eq!(
        created.spec,
        container("web1").spec,
        "spec bytes kept as sent"
    );

    let got = c
        .get(GetContainerRequest { id: "web1".into() })
        .await
        .expect("get")
        .into_inner()
        .container
        .expect("container");
    assert_eq!(got, created);

    expect_code(
        c.create(CreateContainerRequest {
            container: Some(container("web1")),
        })
        .await,
        Code::AlreadyExists,
        &["web1"],
    );

    // Filters: by label and by runtime name.
    c.create(CreateContainerRequest {
        container: Some(Container {
            labels: HashMap::from([("app".into(), "db".into())]),
            ..container("db1")
        }),
    })
    .await
    .expect("create db1");
    let web = c
        .list(ListContainersRequest {
            filters: vec!["labels.app==web".into()],
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(
        web.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["web1"]
    );
    let all = c
        .list(ListContainersRequest {
            filters: vec!["runtime.name==io.containerd.runc.v2".into()],
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(all.len(), 2);

    // Update one label by field path; the rest stays.
    let mut change = container("web1");
    change.labels = HashMap::from([("tier".into(), "front".into())]);
    let updated = c
        .update(UpdateContainerRequest {
            container: Some(change),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.tier".into()],
            }),
        })
        .await
        .expect("update")
        .into_inner()
        .container
        .expect("container");
    assert_eq!(updated.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(
        updated.labels.get("tier").map(String::as_str),
        Some("front")
    );
    assert_eq!(updated.created_at, created.created_at);
    assert_ne!(updated.updated_at, created.updated_at);

    // Immutable fields and unknown paths are refused.
    let mut other_runtime = container("web1");
    other_runtime.runtime = Some(Runtime {
        name: "io.containerd.berth.v2".into(),
        options: None,
    });
    expect_code(
        c.update(UpdateContainerRequest {
            container: Some(other_runtime),
            update_mask: None,
        })
        .await,
        Code::InvalidArgument,
        &["immutable"],
    );
    expect_code(
        c.update(UpdateContainerRequest {
            container: Some(container("web1")),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["snapshotter".into()],
            }),
        })
        .await,
        Code::InvalidArgument,
        &["snapshotter"],
    );

    c.delete(DeleteContainerRequest { id: "web1".into() })
        .await
        .expect("delete");
    expect_code(
        c.get(GetContainerRequest { id: "web1".into() }).await,
        Code::NotFound,
        &["web1"],
    );

    let mut topics = Vec::new();
    while topics.len() < 4 {
        let env = tokio::time::timeout(std::time::Duration::from_secs(10), events.message())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("event");
        topics.push(env.topic);
    }
    assert_eq!(
        topics,
        [
            "/containers/create",
            "/containers/create",
            "/containers/update",
            "/containers/delete"
        ]
    );
}

#[tokio::test]
async fn invalid_containers_are_refused() {
    let d = Daemon::start().await;
    let mut c = client(&d, "default").await;
    let cases = [
        (
            Container {
                id: "-bad".into(),
                ..container("x")
            },
            "container.ID",
        ),
        (
            Container {
                spec: None,
                ..container("x")
            },
            "spec must be set",
        ),
        (
            Container {
                runtime: None,
                ..container("x")
            },
            "runtime.name must be set",
        ),
        (
            Container {
                snapshotter: String::new(),
                ..container("x")
            },
            "snapshotter must be set",
        ),
    ];
    for (bad, needle) in cases {
        expect_code(
            c.create(CreateContainerRequest {
                container: Some(bad),
            })
            .await,
            Code::InvalidArgument,
            &[needle],
        );
    }
    expect_code(
        c.create(CreateContainerRequest { container: None }).await,
        Code::InvalidArgument,
        &["container must be set"],
    );
    // Namespaces isolate containers.
    c.create(CreateContainerRequest {
        container: Some(container("mine")),
    })
    .await
    .expect("create");
    expect_code(
        client(&d, "other")
            .await
            .get(GetContainerRequest { id: "mine".into() })
            .await,
        Code::NotFound,
        &["mine"],
    );
}

#[tokio::test]
async fn stock_ctr_lists_and_removes_containers() {
    let d = Daemon::start().await;
    let mut c = client(&d, "default").await;
    c.create(CreateContainerRequest {
        container: Some(container("viactr")),
    })
    .await
    .expect("create");
    let ls = success(&ctr(&d, &["containers", "ls"]), "ctr containers ls");
    assert!(
        ls.contains("viactr") && ls.contains("io.containerd.runc.v2"),
        "{ls}"
    );
    let info = success(
        &ctr(&d, &["containers", "info", "viactr"]),
        "ctr containers info viactr",
    );
    assert!(
        info.contains("\"ociVersion\": \"1.0.2\"") || info.contains("ociVersion"),
        "{info}"
    );
    success(
        &ctr(&d, &["containers", "label", "viactr", "k=v"]),
        "ctr containers label viactr k=v",
    );
    let labelled = c
        .get(GetContainerRequest {
            id: "viactr".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .container
        .expect("container");
    assert_eq!(labelled.labels.get("k").map(String::as_str), Some("v"));
    success(
        &ctr(&d, &["containers", "rm", "viactr"]),
        "ctr containers rm viactr",
    );
    let ls = success(
        &ctr(&d, &["containers", "ls", "-q"]),
        "ctr containers ls -q",
    );
    assert!(!ls.contains("viactr"), "{ls}");
}
