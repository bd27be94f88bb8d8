//! Tasks over gRPC with specs from `berth-oci`: hostname, a rootfs overlay of many layers,
//! crun through Berth's shim, and bad input (specs, rootfs, duplicate ids, exec ids) that must
//! leave nothing behind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::containerd::runc::v1::Options as RuncOptions;
use berth_proto::containerd::services::containers::v1::{
    container::Runtime, containers_client::ContainersClient, Container, CreateContainerRequest,
};
use berth_proto::containerd::services::tasks::v1::{
    tasks_client::TasksClient, CreateTaskRequest, DeleteTaskRequest, ExecProcessRequest,
    StartRequest, WaitRequest,
};
use berth_proto::containerd::types::Mount;
use berth_tests::{busybox_rootfs, expect_code, random_id, Ctx, Daemon, NamespaceCgroups, Svc};
use prost::Message;
use tonic::Code;

const SPEC_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

struct Env {
    d: Daemon,
    ns: String,
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    /// Last: after the daemon.
    _cgroups: NamespaceCgroups,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = busybox_rootfs(dir.path());
        let ns = format!("g{}", random_id());
        Env {
            _cgroups: NamespaceCgroups(ns.clone()),
            d: Daemon::start().await,
            ns,
            dir,
            rootfs,
        }
    }

    async fn containers(&self) -> ContainersClient<Svc> {
        ContainersClient::with_interceptor(self.d.channel().await, Ctx::ns(&self.ns))
    }

    async fn tasks(&self) -> TasksClient<Svc> {
        TasksClient::with_interceptor(self.d.channel().await, Ctx::ns(&self.ns))
    }

    fn spec(&self, id: &str, args: &[&str], hostname: Option<&str>) -> Vec<u8> {
        let mut opts = berth_oci::RunOptions::new(&self.ns, id);
        opts.args = args.iter().map(|s| s.to_string()).collect();
        opts.hostname = hostname.map(str::to_string);
        let spec = berth_oci::generate(&berth_oci::ImageConfig::default(), &opts).expect("spec");
        berth_oci::to_json(&spec)
    }

    async fn create_container(
        &self,
        id: &str,
        runtime: &str,
        options: Option<prost_types::Any>,
        spec: Vec<u8>,
    ) {
        self.containers()
            .await
            .create(CreateContainerRequest {
                container: Some(Container {
                    id: id.into(),
                    runtime: Some(Runtime {
                        name: runtime.into(),
                        options,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_URL.into(),
                        value: spec,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .expect("create container");
    }

    fn rootfs_mount(&self) -> Vec<Mount> {
        vec![Mount {
            r#type: "bind".into(),
            source: self.rootfs.display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), "rw".into()],
        }]
    }

    /// Creates (on the busybox bind mount), starts and waits for the task; returns (exit
    /// status, stdout).
    async fn run_task(&self, id: &str) -> (u32, String) {
        self.run_task_on(id, self.rootfs_mount()).await
    }

    /// [`Env::run_task`] on the root filesystem `rootfs`.
    async fn run_task_on(&self, id: &str, rootfs: Vec<Mount>) -> (u32, String) {
        // Drain both FIFOs (the stock shim needs stderr too).
        let drain = |name: &str| {
            let fifo = self.dir.path().join(format!("{id}.{name}"));
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .expect("fifo");
            let path = fifo.clone();
            let reader = std::thread::spawn(move || {
                let mut out = String::new();
                std::fs::File::open(&path)
                    .and_then(|mut f| f.read_to_string(&mut out))
                    .expect("read fifo");
                out
            });
            (fifo, reader)
        };
        let (fifo, reader) = drain("stdout");
        let (err_fifo, err_reader) = drain("stderr");
        let mut tasks = self.tasks().await;
        tasks
            .create(CreateTaskRequest {
                container_id: id.into(),
                rootfs,
                stdout: fifo.display().to_string(),
                stderr: err_fifo.display().to_string(),
                ..Default::default()
            })
            .await
            .expect("create task");
        tasks
            .start(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            })
            .await
            .expect("start");
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            tasks.wait(WaitRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }),
        )
        .await
        .expect("task exits in time")
        .expect("wait")
        .into_inner();
        tasks
            .delete(DeleteTaskRequest {
                container_id: id.into(),
            })
            .await
            .expect("delete task");
        let out = reader.join().expect("reader");
        let _ = err_reader.join();
        (waited.exit_status, out)
    }

    fn bundles_left(&self) -> usize {
        let dir = self
            .d
            .state()
            .join("io.containerd.runtime.v2.task")
            .join(&self.ns);
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }
}

async fn hostname_is_set(runtime: &str) {
    let env = Env::new().await;
    let id = format!("h{}", random_id());
    let spec = env.spec(&id, &["/bin/hostname"], Some("berth-host"));
    env.create_container(&id, runtime, None, spec).await;
    let (status, out) = env.run_task(&id).await;
    assert_eq!((status, out.trim()), (0, "berth-host"));
    assert_eq!(env.bundles_left(), 0);
}

#[tokio::test]
async fn hostname_is_set_with_the_runc_shim() {
    hostname_is_set("io.containerd.runc.v2").await;
}

#[tokio::test]
async fn hostname_is_set_with_the_berth_shim() {
    hostname_is_set("io.containerd.berth.v2").await;
}

/// A rootfs of many layers: the overlay's `lowerdir=` option is longer than the page the
/// kernel takes mount data in, so it must be given relative to the layers' common parent
/// (as containerd does); the mount is the shim's.
async fn deep_overlay_rootfs(runtime: &str) {
    let env = Env::new().await;
    let base = env.dir.path().join("x".repeat(200));
    let bottom = busybox_rootfs(&base.join("0"));
    let mut lower: Vec<String> = (1..40)
        .rev()
        .map(|n| {
            let layer = base.join(n.to_string()).join("rootfs");
            std::fs::create_dir_all(&layer).expect("layer dir");
            layer.display().to_string()
        })
        .collect();
    std::fs::write(base.join("39/rootfs/top"), "from the top layer\n").expect("top file");
    lower.push(bottom.display().to_string());
    let (upper, work) = (base.join("upper"), base.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).expect("overlay dir");
    }
    let options = vec![
        format!("workdir={}", work.display()),
        format!("upperdir={}", upper.display()),
        format!("lowerdir={}", lower.join(":")),
    ];
    assert!(options.join(",").len() > 4096, "lowerdir fits in a page");

    let id = format!("o{}", random_id());
    let spec = env.spec(&id, &["/bin/sh", "-c", "cat /top; echo w > /new"], None);
    env.create_container(&id, runtime, None, spec).await;
    let overlay = vec![Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }];
    let (status, out) = env.run_task_on(&id, overlay).await;
    assert_eq!((status, out.trim()), (0, "from the top layer"));
    assert_eq!(
        std::fs::read_to_string(upper.join("new")).expect("write reached the upper dir"),
        "w\n"
    );
    assert_eq!(env.bundles_left(), 0);
}

#[tokio::test]
async fn deep_overlay_rootfs_with_the_berth_shim() {
    deep_overlay_rootfs("io.containerd.berth.v2").await;
}

#[tokio::test]
async fn deep_overlay_rootfs_with_the_runc_shim() {
    deep_overlay_rootfs("io.containerd.runc.v2").await;
}

/// crun refuses hybrid cgroup hosts on its own; Berth's shim hides the
/// unified hierarchy from it. On a host without crun the test fails: CI
/// installs it.
#[tokio::test]
async fn crun_runs_through_the_berth_shim() {
    assert!(
        Path::new("/usr/bin/crun").exists(),
        "crun missing: apt-get install crun"
    );
    let env = Env::new().await;
    let id = format!("c{}", random_id());
    let spec = env.spec(&id, &["/bin/sh", "-c", "echo hello-crun; exit 6"], None);
    let options = RuncOptions {
        binary_name: "crun".into(),
        ..Default::default()
    };
    let any = prost_types::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: options.encode_to_vec(),
    };
    env.create_container(&id, "io.containerd.berth.v2", Some(any), spec)
        .await;
    let (status, out) = env.run_task(&id).await;
    assert_eq!((status, out.trim()), (6, "hello-crun"));
}

#[tokio::test]
async fn bad_tasks_leave_nothing_behind() {
    let env = Env::new().await;
    let mut tasks = env.tasks().await;

    // No such container.
    expect_code(
        tasks
            .create(CreateTaskRequest {
                container_id: "nosuch".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &["nosuch"],
    );

    // A spec that is not JSON.
    let id = format!("j{}", random_id());
    env.create_container(&id, "io.containerd.runc.v2", None, b"{not json".to_vec())
        .await;
    expect_code(
        tasks
            .create(CreateTaskRequest {
                container_id: id.clone(),
                rootfs: env.rootfs_mount(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["json"],
    );

    // A rootfs whose snapshot is missing.
    for runtime in ["io.containerd.runc.v2", "io.containerd.berth.v2"] {
        let id = format!("m{}", random_id());
        env.create_container(&id, runtime, None, env.spec(&id, &["/bin/true"], None))
            .await;
        let err = tasks
            .create(CreateTaskRequest {
                container_id: id.clone(),
                rootfs: vec![Mount {
                    r#type: "bind".into(),
                    source: "/nonexistent/snapshot/fs".into(),
                    target: String::new(),
                    options: vec!["rbind".into(), "rw".into()],
                }],
                ..Default::default()
            })
            .await
            .expect_err("a missing rootfs source must fail");
        assert!(
            err.message().contains("nonexistent"),
            "{runtime}: error should name the missing source: {err:?}"
        );
    }

    // Duplicate task.
    let id = format!("d{}", random_id());
    env.create_container(
        &id,
        "io.containerd.berth.v2",
        None,
        env.spec(&id, &["/bin/sh", "-c", "sleep 30"], None),
    )
    .await;
    tasks
        .create(CreateTaskRequest {
            container_id: id.clone(),
            rootfs: env.rootfs_mount(),
            ..Default::default()
        })
        .await
        .expect("first create");
    expect_code(
        tasks
            .create(CreateTaskRequest {
                container_id: id.clone(),
                rootfs: env.rootfs_mount(),
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
        &["already exists"],
    );

    // Exec ids follow containerd's identifier rule (they name files in the bundle).
    for bad in ["../../evil", "a/b", &"x".repeat(77)] {
        expect_code(
            tasks
                .exec(ExecProcessRequest {
                    container_id: id.clone(),
                    exec_id: bad.to_string(),
                    spec: Some(prost_types::Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process"
                            .into(),
                        value: br#"{"args":["/bin/true"],"cwd":"/"}"#.to_vec(),
                    }),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            &["exec id"],
        );
    }
    tasks
        .delete(DeleteTaskRequest {
            container_id: id.clone(),
        })
        .await
        .expect("delete created task");

    // Nothing leaked: no bundle, no mount under the state dir, no shim.
    assert_eq!(env.bundles_left(), 0, "bundles left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let state = env.d.state().display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&state)),
        "mounts left under {state}"
    );
    let shims = std::process::Command::new("pgrep")
        .args(["-f", &format!("-namespace {}", env.ns)])
        .output()
        .expect("pgrep");
    assert!(
        shims.stdout.is_empty(),
        "shims left: {}",
        String::from_utf8_lossy(&shims.stdout)
    );
}
