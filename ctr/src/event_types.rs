//! Decoding of the events containerd publishes (`containerd.events.*` and the image events of
//! `containerd.services.images.v1`) into JSON with the proto field names.

use berth_proto::containerd::events as ev;
use berth_proto::containerd::services::images::v1 as images;
use berth_proto::containerd::types::Mount;
use prost::{Message, Name};
use serde_json::{json, Value};

use crate::output::{labels_json, timestamp_json};

/// The bare type name of an `Any` (`containerd.events.TaskExit`), whether its URL is bare,
/// starts with `/` or carries a host (`types.googleapis.com/...`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// Decodes a known event; `Err` says why not (unknown type, bad bytes).
pub fn decode(any: &prost_types::Any) -> Result<Value, String> {
    let name = type_name(&any.type_url);
    let data = any.value.as_slice();

    macro_rules! events {
        ($($ty:ty => |$e:ident| $json:expr),* $(,)?) => {
            $(
                if name == <$ty as Name>::full_name() {
                    let $e = <$ty as Message>::decode(data)
                        .map_err(|err| format!("cannot decode {name}: {err}"))?;
                    return Ok($json);
                }
            )*
        };
    }

    events! {
        ev::ContainerCreate => |e| json!({
            "id": e.id,
            "image": e.image,
            "runtime": e.runtime.map(|r| json!({
                "name": r.name,
                "options": r.options.map(|o| o.type_url),
            })),
        }),
        ev::ContainerUpdate => |e| json!({
            "id": e.id,
            "image": e.image,
            "labels": labels_json(&e.labels),
            "snapshot_key": e.snapshot_key,
        }),
        ev::ContainerDelete => |e| json!({ "id": e.id }),
        ev::ContentCreate => |e| json!({
            "digest": e.digest,
            "size": e.size,
            "media_type": e.media_type,
        }),
        ev::ContentDelete => |e| json!({ "digest": e.digest }),
        images::ImageCreate => |e| json!({ "name": e.name, "labels": labels_json(&e.labels) }),
        images::ImageUpdate => |e| json!({ "name": e.name, "labels": labels_json(&e.labels) }),
        images::ImageDelete => |e| json!({ "name": e.name }),
        ev::NamespaceCreate => |e| json!({ "name": e.name, "labels": labels_json(&e.labels) }),
        ev::NamespaceUpdate => |e| json!({ "name": e.name, "labels": labels_json(&e.labels) }),
        ev::NamespaceDelete => |e| json!({ "name": e.name }),
        ev::SnapshotPrepare => |e| json!({
            "key": e.key,
            "parent": e.parent,
            "snapshotter": e.snapshotter,
        }),
        ev::SnapshotCommit => |e| json!({
            "key": e.key,
            "name": e.name,
            "snapshotter": e.snapshotter,
        }),
        ev::SnapshotRemove => |e| json!({ "key": e.key, "snapshotter": e.snapshotter }),
        ev::TaskCreate => |e| json!({
            "container_id": e.container_id,
            "bundle": e.bundle,
            "rootfs": e.rootfs.iter().map(mount_json).collect::<Vec<_>>(),
            "io": e.io.map(|io| json!({
                "stdin": io.stdin,
                "stdout": io.stdout,
                "stderr": io.stderr,
                "terminal": io.terminal,
            })),
            "checkpoint": e.checkpoint,
            "pid": e.pid,
        }),
        ev::TaskStart => |e| json!({ "container_id": e.container_id, "pid": e.pid }),
        ev::TaskDelete => |e| json!({
            "container_id": e.container_id,
            "id": e.id,
            "pid": e.pid,
            "exit_status": e.exit_status,
            "exited_at": timestamp_json(e.exited_at.as_ref()),
        }),
        ev::TaskExit => |e| json!({
            "container_id": e.container_id,
            "id": e.id,
            "pid": e.pid,
            "exit_status": e.exit_status,
            "exited_at": timestamp_json(e.exited_at.as_ref()),
        }),
        ev::TaskOom => |e| json!({ "container_id": e.container_id }),
        ev::TaskExecAdded => |e| json!({ "container_id": e.container_id, "exec_id": e.exec_id }),
        ev::TaskExecStarted => |e| json!({
            "container_id": e.container_id,
            "exec_id": e.exec_id,
            "pid": e.pid,
        }),
        ev::TaskPaused => |e| json!({ "container_id": e.container_id }),
        ev::TaskResumed => |e| json!({ "container_id": e.container_id }),
        ev::TaskCheckpointed => |e| json!({
            "container_id": e.container_id,
            "checkpoint": e.checkpoint,
        }),
    }
    Err(format!(
        "unknown event type {name:?} ({} bytes)",
        data.len()
    ))
}

fn mount_json(m: &Mount) -> Value {
    json!({
        "type": m.r#type,
        "source": m.source,
        "target": m.target,
        "options": m.options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any<M: Message + Name>(m: &M, url: String) -> prost_types::Any {
        prost_types::Any {
            type_url: url,
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn decodes_known_events_by_bare_and_prefixed_names() {
        let e = ev::NamespaceCreate {
            name: "x".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
        };
        let want = r#"{"labels":{"a":"b"},"name":"x"}"#;
        for url in [
            ev::NamespaceCreate::full_name(),
            ev::NamespaceCreate::type_url(),
            format!("types.googleapis.com/{}", ev::NamespaceCreate::full_name()),
        ] {
            assert_eq!(decode(&any(&e, url)).unwrap().to_string(), want);
        }
        let e = images::ImageDelete { name: "img".into() };
        let v = decode(&any(&e, images::ImageDelete::full_name())).unwrap();
        assert_eq!(v.to_string(), r#"{"name":"img"}"#);
        let e = ev::TaskExit {
            container_id: "c".into(),
            pid: 7,
            exit_status: 1,
            ..Default::default()
        };
        let v = decode(&any(&e, "containerd.events.TaskExit".into())).unwrap();
        assert_eq!(v["exit_status"], 1);
        assert_eq!(v["exited_at"], Value::Null);
    }

    #[test]
    fn unknown_and_invalid_events_are_errors() {
        let unknown = prost_types::Any {
            type_url: "example.Thing".into(),
            value: vec![1, 2, 3],
        };
        assert_eq!(
            decode(&unknown).unwrap_err(),
            r#"unknown event type "example.Thing" (3 bytes)"#
        );
        let invalid = prost_types::Any {
            type_url: "containerd.events.ContentDelete".into(),
            value: vec![0xff, 0xff],
        };
        assert!(decode(&invalid).unwrap_err().starts_with("cannot decode"));
    }
}
