//! The images service over gRPC and through the stock `ctr`: CRUD, filters,
//! field masks, events, and images as GC roots (`sync` delete).

use std::collections::HashMap;
use std::time::Duration;

use berth_proto::containerd::services::events::v1::SubscribeRequest;
use berth_proto::containerd::services::images::v1::{
    images_client::ImagesClient, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image,
    ImageCreate, ImageDelete, ImageUpdate, ListImagesRequest, UpdateImageRequest,
};
use berth_proto::containerd::types::Descriptor;
use berth_tests::{ctr, digest_of, expect_code, success, write_blob, Ctx, Daemon, Svc};
use prost::Message;
use tonic::Code;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn client(d: &Daemon, ns: &str) -> ImagesClient<Svc> {
    ImagesClient::with_interceptor(d.channel().await, Ctx::ns(ns))
}

fn image(name: &str, digest: &str, size: i64) -> Image {
    Image {
        name: name.into(),
        labels: HashMap::from([("a".into(), "1".into())]),
        target: Some(Descriptor {
            media_type: MANIFEST.into(),
            digest: digest.into(),
            size,
            annotations: HashMap::new(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_get_list_update_delete_with_events() {
    let d = Daemon::start().await;
    let mut c = client(&d, "n").await;
    let mut events = d
        .events(Ctx::ns("n"))
        .await
        .subscribe(SubscribeRequest {
            filters: vec![r#"topic~="^/images/""#.into()],
        })
        .await
        .expect("subscribe")
        .into_inner();

    let dg = digest_of(b"manifest");
    let created = c
        .create(CreateImageRequest {
            image: Some(image("docker.io/library/x:1", &dg, 8)),
            source_date_epoch: None,
        })
        .await
        .expect("create")
        .into_inner()
        .image
        .expect("image");
    assert!(created.created_at.is_some() && created.created_at == created.updated_at);
    expect_code(
        c.create(CreateImageRequest {
            image: Some(image("docker.io/library/x:1", &dg, 8)),
            source_date_epoch: None,
        })
        .await,
        Code::AlreadyExists,
        &["docker.io/library/x:1"],
    );
    expect_code(
        c.create(CreateImageRequest {
            image: Some(image("", &dg, 8)),
            source_date_epoch: None,
        })
        .await,
        Code::InvalidArgument,
        &["name"],
    );
    expect_code(
        c.create(CreateImageRequest {
            image: Some(image("bad", "sha256:zz", 8)),
            source_date_epoch: None,
        })
        .await,
        Code::InvalidArgument,
        &["digest"],
    );

    let got = c
        .get(GetImageRequest {
            name: "docker.io/library/x:1".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .image
        .expect("image");
    assert_eq!(got, created);
    expect_code(
        c.get(GetImageRequest {
            name: "nope".into(),
        })
        .await,
        Code::NotFound,
        &["nope"],
    );

    c.create(CreateImageRequest {
        image: Some(image("other", &digest_of(b"o"), 1)),
        source_date_epoch: None,
    })
    .await
    .expect("create other");
    let names = |imgs: Vec<Image>| imgs.into_iter().map(|i| i.name).collect::<Vec<_>>();
    let all = c
        .list(ListImagesRequest { filters: vec![] })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(names(all), ["docker.io/library/x:1", "other"]);
    let by_digest = c
        .list(ListImagesRequest {
            filters: vec![format!("target.digest=={dg}")],
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(names(by_digest), ["docker.io/library/x:1"]);

    // One label by field path.
    let mut change = image("docker.io/library/x:1", &dg, 8);
    change.labels = HashMap::from([("b".into(), "2".into())]);
    let updated = c
        .update(UpdateImageRequest {
            image: Some(change),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.b".into()],
            }),
            source_date_epoch: None,
        })
        .await
        .expect("update")
        .into_inner()
        .image
        .expect("image");
    assert_eq!(
        updated.labels,
        HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
    );
    assert_eq!(updated.created_at, created.created_at);
    expect_code(
        c.update(UpdateImageRequest {
            image: Some(image("docker.io/library/x:1", &dg, 8)),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
            source_date_epoch: None,
        })
        .await,
        Code::InvalidArgument,
        &["name"],
    );

    c.delete(DeleteImageRequest {
        name: "docker.io/library/x:1".into(),
        sync: false,
        target: None,
    })
    .await
    .expect("delete");
    expect_code(
        c.delete(DeleteImageRequest {
            name: "docker.io/library/x:1".into(),
            sync: false,
            target: None,
        })
        .await,
        Code::NotFound,
        &[],
    );

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let env = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("event");
        assert_eq!(env.namespace, "n");
        let any = env.event.expect("payload");
        let name = match env.topic.as_str() {
            "/images/create" => ImageCreate::decode(&*any.value).unwrap().name,
            "/images/update" => {
                let u = ImageUpdate::decode(&*any.value).unwrap();
                assert_eq!(u.labels.get("b").map(String::as_str), Some("2"));
                u.name
            }
            "/images/delete" => ImageDelete::decode(&*any.value).unwrap().name,
            t => panic!("unexpected topic {t}"),
        };
        assert!(any
            .type_url
            .starts_with("containerd.services.images.v1.Image"));
        seen.push((env.topic, name));
    }
    assert_eq!(
        seen,
        [
            (
                "/images/create".to_string(),
                "docker.io/library/x:1".to_string()
            ),
            ("/images/create".to_string(), "other".to_string()),
            (
                "/images/update".to_string(),
                "docker.io/library/x:1".to_string()
            ),
            (
                "/images/delete".to_string(),
                "docker.io/library/x:1".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn image_keeps_content_until_sync_delete() {
    let d = Daemon::start().await;
    let mut content = d.content("n").await;
    let layer = write_blob(&mut content, "l", b"layer bytes", &[])
        .await
        .unwrap();
    let manifest = format!(r#"{{"layers":["{layer}"]}}"#);
    let m = write_blob(
        &mut content,
        "m",
        manifest.as_bytes(),
        &[("containerd.io/gc.ref.content.l.0", &layer)],
    )
    .await
    .unwrap();
    let mut c = client(&d, "n").await;
    c.create(CreateImageRequest {
        image: Some(image("img", &m, manifest.len() as i64)),
        source_date_epoch: None,
    })
    .await
    .unwrap();

    let blob = |dg: &str| {
        d.blobs_dir()
            .join(dg.trim_start_matches("sha256:"))
            .exists()
    };
    // Collect with an unrelated sync delete: both blobs stay.
    c.create(CreateImageRequest {
        image: Some(image("tmp", &m, manifest.len() as i64)),
        source_date_epoch: None,
    })
    .await
    .unwrap();
    c.delete(DeleteImageRequest {
        name: "tmp".into(),
        sync: true,
        target: None,
    })
    .await
    .unwrap();
    assert!(blob(&m) && blob(&layer));

    // The stock ctr sees the image and removes it; then nothing holds them.
    let ls = success(
        &ctr(&d, &["-n", "n", "images", "ls", "-q"]),
        "ctr images ls",
    );
    assert_eq!(ls.lines().collect::<Vec<_>>(), ["img"]);
    expect_code(
        c.delete(DeleteImageRequest {
            name: "img".into(),
            sync: true,
            target: Some(Descriptor {
                digest: digest_of(b"not it"),
                ..Default::default()
            }),
        })
        .await,
        Code::NotFound,
        &["img"],
    );
    success(
        &ctr(&d, &["-n", "n", "images", "rm", "--sync", "img"]),
        "ctr images rm",
    );
    assert!(!blob(&m) && !blob(&layer), "blobs collected");
}
