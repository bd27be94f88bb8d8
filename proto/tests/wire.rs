//! Wire checks: exact encodings, and names and field numbers as containerd has them.

use berth_proto::containerd::services::content::v1::{WriteAction, WriteContentRequest};
use berth_proto::FILE_DESCRIPTOR_SET;
use prost::{Message, Name};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet, ServiceDescriptorProto};

fn fds() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

/// Looks up a message by full name (`pkg.Msg` or `pkg.Outer.Inner`).
fn message(fds: &FileDescriptorSet, full_name: &str) -> DescriptorProto {
    for file in &fds.file {
        let Some(rest) = full_name.strip_prefix(&format!("{}.", file.package())) else {
            continue;
        };
        let mut path = rest.split('.');
        let first = path.next().unwrap();
        let Some(mut msg) = file.message_type.iter().find(|m| m.name() == first) else {
            continue;
        };
        for part in path {
            msg = msg
                .nested_type
                .iter()
                .find(|m| m.name() == part)
                .unwrap_or_else(|| panic!("{full_name}: no nested {part}"));
        }
        return msg.clone();
    }
    panic!("message {full_name} not in descriptor set");
}

fn service(fds: &FileDescriptorSet, full_name: &str) -> ServiceDescriptorProto {
    fds.file
        .iter()
        .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
        .find(|(pkg, s)| format!("{pkg}.{}", s.name()) == full_name)
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| panic!("service {full_name} not in descriptor set"))
}

/// Checks a message's fields: exactly these names with these numbers, nothing else.
fn check_fields(fds: &FileDescriptorSet, full_name: &str, expected: &[(&str, i32)]) {
    let msg = message(fds, full_name);
    let mut actual: Vec<(String, i32)> = msg
        .field
        .iter()
        .map(|f| (f.name().to_string(), f.number()))
        .collect();
    actual.sort_by_key(|(_, n)| *n);
    let mut expected: Vec<(String, i32)> =
        expected.iter().map(|(n, i)| (n.to_string(), *i)).collect();
    expected.sort_by_key(|(_, n)| *n);
    assert_eq!(actual, expected, "fields of {full_name}");
}

/// Checks a service's methods: name, input, output, client/server streaming.
fn check_methods(
    fds: &FileDescriptorSet,
    full_name: &str,
    expected: &[(&str, &str, &str, bool, bool)],
) {
    let svc = service(fds, full_name);
    let actual: Vec<(String, String, String, bool, bool)> = svc
        .method
        .iter()
        .map(|m| {
            (
                m.name().to_string(),
                m.input_type().to_string(),
                m.output_type().to_string(),
                m.client_streaming(),
                m.server_streaming(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, bool, bool)> = expected
        .iter()
        .map(|(n, i, o, cs, ss)| (n.to_string(), i.to_string(), o.to_string(), *cs, *ss))
        .collect();
    assert_eq!(actual, expected, "methods of {full_name}");
}

#[test]
fn write_content_request_exact_bytes() {
    let req = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: "r".into(),
        total: 5,
        expected: "d".into(),
        offset: 3,
        data: vec![0xAA, 0xBB].into(),
        labels: [("k".to_string(), "v".to_string())].into(),
    };
    let expected: &[u8] = &[
        0x08, 0x02, // 1: action = COMMIT (varint)
        0x12, 0x01, b'r', // 2: ref
        0x18, 0x05, // 3: total
        0x22, 0x01, b'd', // 4: expected
        0x28, 0x03, // 5: offset
        0x32, 0x02, 0xAA, 0xBB, // 6: data
        0x3a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // 7: labels {k: v}
    ];
    assert_eq!(req.encode_to_vec(), expected);
    assert_eq!(WriteContentRequest::decode(expected).unwrap(), req);
}

#[test]
fn envelope_decodes_from_containerd_bytes() {
    use berth_proto::containerd::events::TaskExit;
    use berth_proto::containerd::types::Envelope;

    // Envelope{namespace: "ns", topic: "/tasks/exit", event: Any{TaskExit{container_id: "c", pid: 7}}}
    let exit = [0x0a, 0x01, b'c', 0x18, 0x07];
    let type_url = b"containerd.events.TaskExit";
    let mut any = vec![0x0a, type_url.len() as u8];
    any.extend_from_slice(type_url);
    any.extend_from_slice(&[0x12, exit.len() as u8]);
    any.extend_from_slice(&exit);
    let mut bytes = vec![0x12, 0x02, b'n', b's', 0x1a, 0x0b];
    bytes.extend_from_slice(b"/tasks/exit");
    bytes.extend_from_slice(&[0x22, any.len() as u8]);
    bytes.extend_from_slice(&any);

    let env = Envelope::decode(bytes.as_slice()).unwrap();
    assert_eq!(env.namespace, "ns");
    assert_eq!(env.topic, "/tasks/exit");
    let event = env.event.unwrap();
    assert_eq!(event.type_url, TaskExit::full_name());
    let exit = TaskExit::decode(event.value.as_slice()).unwrap();
    assert_eq!(exit.container_id, "c");
    assert_eq!(exit.pid, 7);
}

#[test]
fn type_names_are_containerds() {
    use berth_proto::containerd::{events, runc, services, task, types, v1};

    assert_eq!(
        events::NamespaceCreate::full_name(),
        "containerd.events.NamespaceCreate"
    );
    assert_eq!(events::TaskExit::full_name(), "containerd.events.TaskExit");
    // Image events are in the images service package.
    assert_eq!(
        services::images::v1::ImageCreate::full_name(),
        "containerd.services.images.v1.ImageCreate"
    );
    assert_eq!(runc::v1::Options::full_name(), "containerd.runc.v1.Options");
    assert_eq!(types::Envelope::full_name(), "containerd.types.Envelope");
    assert_eq!(
        v1::types::Process::full_name(),
        "containerd.v1.types.Process"
    );
    assert_eq!(
        task::v2::CreateTaskRequest::full_name(),
        "containerd.task.v2.CreateTaskRequest"
    );
    assert_eq!(
        services::containers::v1::container::Runtime::full_name(),
        "containerd.services.containers.v1.Container.Runtime"
    );
    // prost's type URL is the full name behind a bare "/" (no type.googleapis.com domain).
    assert_eq!(
        events::NamespaceCreate::type_url(),
        "/containerd.events.NamespaceCreate"
    );
}

#[test]
fn enum_values() {
    use berth_proto::containerd::services::snapshots::v1::Kind;
    use berth_proto::containerd::v1::types::Status;
    use berth_proto::grpc::health::v1::health_check_response::ServingStatus;

    assert_eq!(
        [
            Status::Unknown,
            Status::Created,
            Status::Running,
            Status::Stopped
        ]
        .map(|s| s as i32),
        [0, 1, 2, 3]
    );
    assert_eq!([Status::Paused as i32, Status::Pausing as i32], [4, 5]);
    assert_eq!(
        [Kind::Unknown, Kind::View, Kind::Active, Kind::Committed].map(|k| k as i32),
        [0, 1, 2, 3]
    );
    assert_eq!(
        [WriteAction::Stat, WriteAction::Write, WriteAction::Commit].map(|a| a as i32),
        [0, 1, 2]
    );
    assert_eq!(ServingStatus::Serving as i32, 1);
    assert_eq!(ServingStatus::ServiceUnknown as i32, 3);
}

#[test]
fn services_and_methods() {
    let fds = fds();
    let content = "containerd.services.content.v1";
    let c = |m: &str| format!(".{content}.{m}");
    let empty = ".google.protobuf.Empty";
    check_methods(
        &fds,
        &format!("{content}.Content"),
        &[
            ("Info", &c("InfoRequest"), &c("InfoResponse"), false, false),
            (
                "Update",
                &c("UpdateRequest"),
                &c("UpdateResponse"),
                false,
                false,
            ),
            (
                "List",
                &c("ListContentRequest"),
                &c("ListContentResponse"),
                false,
                true,
            ),
            ("Delete", &c("DeleteContentRequest"), empty, false, false),
            (
                "Read",
                &c("ReadContentRequest"),
                &c("ReadContentResponse"),
                false,
                true,
            ),
            (
                "Status",
                &c("StatusRequest"),
                &c("StatusResponse"),
                false,
                false,
            ),
            (
                "ListStatuses",
                &c("ListStatusesRequest"),
                &c("ListStatusesResponse"),
                false,
                false,
            ),
            (
                "Write",
                &c("WriteContentRequest"),
                &c("WriteContentResponse"),
                true,
                true,
            ),
            ("Abort", &c("AbortRequest"), empty, false, false),
        ],
    );

    let method_names = |name: &str| -> Vec<String> {
        service(&fds, name)
            .method
            .iter()
            .map(|m| m.name().to_string())
            .collect()
    };
    assert_eq!(
        method_names("containerd.services.namespaces.v1.Namespaces"),
        ["Get", "List", "Create", "Update", "Delete"]
    );
    assert_eq!(
        method_names("containerd.task.v2.Task"),
        [
            "State",
            "Create",
            "Start",
            "Delete",
            "Pids",
            "Pause",
            "Resume",
            "Checkpoint",
            "Kill",
            "Exec",
            "ResizePty",
            "CloseIO",
            "Update",
            "Wait",
            "Stats",
            "Connect",
            "Shutdown"
        ]
    );
    assert_eq!(
        method_names("containerd.services.tasks.v1.Tasks"),
        [
            "Create",
            "Start",
            "Delete",
            "DeleteProcess",
            "Get",
            "List",
            "Kill",
            "Exec",
            "ResizePty",
            "CloseIO",
            "Pause",
            "Resume",
            "ListPids",
            "Checkpoint",
            "Update",
            "Metrics",
            "Wait"
        ]
    );
    let subscribe = service(&fds, "containerd.services.events.v1.Events")
        .method
        .into_iter()
        .find(|m| m.name() == "Subscribe")
        .unwrap();
    assert_eq!(subscribe.output_type(), ".containerd.types.Envelope");
    assert!(subscribe.server_streaming() && !subscribe.client_streaming());

    let mut all: Vec<String> = fds
        .file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| format!("{}.{}", f.package(), s.name()))
        })
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            "containerd.services.containers.v1.Containers",
            "containerd.services.content.v1.Content",
            "containerd.services.diff.v1.Diff",
            "containerd.services.events.ttrpc.v1.Events",
            "containerd.services.events.v1.Events",
            "containerd.services.images.v1.Images",
            "containerd.services.introspection.v1.Introspection",
            "containerd.services.leases.v1.Leases",
            "containerd.services.namespaces.v1.Namespaces",
            "containerd.services.snapshots.v1.Snapshots",
            "containerd.services.tasks.v1.Tasks",
            "containerd.services.version.v1.Version",
            "containerd.task.v2.Task",
            "grpc.health.v1.Health",
        ]
    );
}

#[test]
fn field_numbers_match_containerd() {
    let fds = fds();
    check_fields(
        &fds,
        "containerd.services.tasks.v1.CreateTaskRequest",
        &[
            ("container_id", 1),
            ("rootfs", 3),
            ("stdin", 4),
            ("stdout", 5),
            ("stderr", 6),
            ("terminal", 7),
            ("checkpoint", 8),
            ("options", 9),
            ("runtime_path", 10),
            ("task_api_address", 11),
            ("task_api_version", 12),
        ],
    );
    check_fields(
        &fds,
        "containerd.services.containers.v1.Container",
        &[
            ("id", 1),
            ("labels", 2),
            ("image", 3),
            ("runtime", 4),
            ("spec", 5),
            ("snapshotter", 6),
            ("snapshot_key", 7),
            ("created_at", 8),
            ("updated_at", 9),
            ("extensions", 10),
            ("sandbox", 11),
        ],
    );
    check_fields(
        &fds,
        "containerd.services.containers.v1.Container.Runtime",
        &[("name", 1), ("options", 2)],
    );
    check_fields(
        &fds,
        "containerd.services.snapshots.v1.PrepareSnapshotRequest",
        &[("snapshotter", 1), ("key", 2), ("parent", 3), ("labels", 4)],
    );
    check_fields(
        &fds,
        "containerd.services.snapshots.v1.CommitSnapshotRequest",
        &[
            ("snapshotter", 1),
            ("name", 2),
            ("key", 3),
            ("labels", 4),
            ("parent", 5),
        ],
    );
    check_fields(
        &fds,
        "containerd.types.Envelope",
        &[
            ("timestamp", 1),
            ("namespace", 2),
            ("topic", 3),
            ("event", 4),
        ],
    );
    check_fields(
        &fds,
        "containerd.types.Descriptor",
        &[
            ("media_type", 1),
            ("digest", 2),
            ("size", 3),
            ("annotations", 5),
        ],
    );
    check_fields(
        &fds,
        "containerd.services.images.v1.Image",
        &[
            ("name", 1),
            ("labels", 2),
            ("target", 3),
            ("created_at", 7),
            ("updated_at", 8),
        ],
    );
    check_fields(
        &fds,
        "containerd.events.SnapshotCommit",
        &[("key", 1), ("name", 2), ("snapshotter", 5)],
    );
    check_fields(
        &fds,
        "containerd.events.ContentCreate",
        &[("digest", 1), ("size", 2), ("mediaType", 3)],
    );
    check_fields(
        &fds,
        "containerd.task.v2.StateResponse",
        &[
            ("id", 1),
            ("bundle", 2),
            ("pid", 3),
            ("status", 4),
            ("stdin", 5),
            ("stdout", 6),
            ("stderr", 7),
            ("terminal", 8),
            ("exit_status", 9),
            ("exited_at", 10),
            ("exec_id", 11),
        ],
    );
    check_fields(
        &fds,
        "containerd.runc.v1.Options",
        &[
            ("no_pivot_root", 1),
            ("no_new_keyring", 2),
            ("shim_cgroup", 3),
            ("io_uid", 4),
            ("io_gid", 5),
            ("binary_name", 6),
            ("root", 7),
            ("systemd_cgroup", 9),
            ("criu_image_path", 10),
            ("criu_work_path", 11),
            ("task_api_address", 12),
            ("task_api_version", 13),
        ],
    );
    check_fields(
        &fds,
        "containerd.services.content.v1.WriteContentResponse",
        &[
            ("action", 1),
            ("started_at", 2),
            ("updated_at", 3),
            ("offset", 4),
            ("total", 5),
            ("digest", 6),
        ],
    );

    // Types of a few fields that are easy to get wrong.
    let process = message(&fds, "containerd.v1.types.Process");
    let status = process.field.iter().find(|f| f.name() == "status").unwrap();
    assert_eq!(status.r#type(), Type::Enum);
    assert_eq!(status.type_name(), ".containerd.v1.types.Status");
    let rootfs = message(&fds, "containerd.services.tasks.v1.CreateTaskRequest")
        .field
        .into_iter()
        .find(|f| f.name() == "rootfs")
        .unwrap();
    assert_eq!(rootfs.label(), Label::Repeated);
    assert_eq!(rootfs.type_name(), ".containerd.types.Mount");
    let size = message(&fds, "containerd.services.content.v1.Info")
        .field
        .into_iter()
        .find(|f| f.name() == "size")
        .unwrap();
    assert_eq!(size.r#type(), Type::Int64);
}

#[test]
fn grpc_service_names() {
    use berth_proto::containerd::services::{content, namespaces, tasks};
    use berth_proto::grpc::health;
    use tonic::server::NamedService;

    fn name<S: NamedService>() -> &'static str {
        S::NAME
    }
    assert_eq!(
        name::<content::v1::content_server::ContentServer<()>>(),
        "containerd.services.content.v1.Content"
    );
    assert_eq!(
        name::<namespaces::v1::namespaces_server::NamespacesServer<()>>(),
        "containerd.services.namespaces.v1.Namespaces"
    );
    assert_eq!(
        name::<tasks::v1::tasks_server::TasksServer<()>>(),
        "containerd.services.tasks.v1.Tasks"
    );
    assert_eq!(
        name::<health::v1::health_server::HealthServer<()>>(),
        "grpc.health.v1.Health"
    );
    // Clients exist for the same services.
    let _ = content::v1::content_client::ContentClient::<tonic::transport::Channel>::new;
}
