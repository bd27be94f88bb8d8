use std::collections::BTreeSet;

use berth_errdefs::ErrorKind;
use serde_json::{json, Value};

use super::*;
use crate::parse_mount;

/// Generates a spec and returns its JSON, the form runc reads.
fn check(image: &ImageConfig, opts: &RunOptions) -> Value {
    let spec = generate(image, opts).unwrap();
    let value: Value = serde_json::from_slice(&to_json(&spec)).unwrap();
    // Whatever the options, the JSON reads back as the same spec.
    assert_eq!(from_json(&to_json(&spec)).unwrap(), spec);
    value
}

fn opts() -> RunOptions {
    RunOptions::new("default", "c1")
}

fn busybox() -> ImageConfig {
    ImageConfig {
        cmd: vec!["/bin/sh".into()],
        ..ImageConfig::default()
    }
}

fn set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn destinations(v: &Value) -> Vec<&str> {
    v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect()
}

#[test]
fn defaults_are_containerds() {
    let v = check(&busybox(), &opts());
    assert_eq!(v["ociVersion"], SPEC_VERSION);
    assert_eq!(v["root"], json!({"path": "rootfs"}));
    let p = &v["process"];
    assert_eq!(p["args"], json!(["/bin/sh"]));
    assert_eq!(p["cwd"], "/");
    assert_eq!(
        p["user"],
        json!({"uid": 0, "gid": 0, "additionalGids": [0]})
    );
    assert_eq!(p["noNewPrivileges"], true);
    assert!(p.get("terminal").is_none());
    assert!(p.get("oomScoreAdj").is_none());
    assert_eq!(
        p["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
    );
    let caps: BTreeSet<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    for set_name in ["bounding", "permitted", "effective"] {
        assert_eq!(set(&p["capabilities"][set_name]), caps, "{set_name}");
    }
    assert!(p["capabilities"].get("ambient").is_none());
    assert_eq!(caps.len(), 14);

    let l = &v["linux"];
    assert_eq!(l["cgroupsPath"], "/default/c1");
    assert_eq!(
        l["namespaces"],
        json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network"}
        ])
    );
    assert_eq!(strs(&l["maskedPaths"]), MASKED_PATHS);
    assert_eq!(strs(&l["readonlyPaths"]), READONLY_PATHS);
    let devices = l["resources"]["devices"].as_array().unwrap();
    assert_eq!(devices[0], json!({"allow": false, "access": "rwm"}));
    assert!(devices.contains(&json!({
        "allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"
    })));
    assert!(devices.contains(&json!({
        "allow": true, "type": "c", "major": 136, "access": "rwm"
    })));
    assert!(l["resources"].get("memory").is_none());
    assert!(l["resources"].get("cpu").is_none());
    assert!(l["resources"].get("pids").is_none());

    assert_eq!(
        destinations(&v),
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/run"
        ]
    );
    let sys = &v["mounts"][5];
    assert_eq!(sys["type"], "sysfs");
    assert!(strs(&sys["options"]).contains(&"ro"));
    let cgroup = &v["mounts"][6];
    assert_eq!(cgroup["type"], "cgroup");
    assert!(strs(&cgroup["options"]).contains(&"ro"));
    assert!(v.get("hostname").is_none());
    assert!(v.get("annotations").is_none());
}

#[test]
fn resources_land_in_linux_resources() {
    let mut o = opts();
    o.resources = Resources {
        cpus: Some(0.5),
        cpu_shares: Some(512),
        cpuset_cpus: Some("0-1,3".into()),
        cpuset_mems: Some("0".into()),
        memory_limit: Some(512 << 20),
        pids_limit: Some(64),
    };
    let v = check(&busybox(), &o);
    let r = &v["linux"]["resources"];
    assert_eq!(r["memory"], json!({"limit": 536870912}));
    assert_eq!(
        r["cpu"],
        json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1,3", "mems": "0"})
    );
    assert_eq!(r["pids"], json!({"limit": 64}));
    // The device rules stay.
    assert_eq!(r["devices"].as_array().unwrap().len(), 10);
}

#[test]
fn bad_resources_are_invalid() {
    let cases: Vec<(Resources, &str)> = vec![
        (
            Resources {
                cpus: Some(0.0),
                ..Resources::default()
            },
            "invalid cpus",
        ),
        (
            Resources {
                cpus: Some(f64::NAN),
                ..Resources::default()
            },
            "invalid cpus",
        ),
        (
            Resources {
                memory_limit: Some(0),
                ..Resources::default()
            },
            "invalid memory limit",
        ),
        (
            Resources {
                pids_limit: Some(-1),
                ..Resources::default()
            },
            "invalid pids limit",
        ),
        (
            Resources {
                cpuset_cpus: Some("1-0".into()),
                ..Resources::default()
            },
            "invalid cpuset cpus",
        ),
        (
            Resources {
                cpuset_mems: Some("a".into()),
                ..Resources::default()
            },
            "invalid cpuset mems",
        ),
    ];
    for (r, why) in cases {
        let mut o = opts();
        o.resources = r;
        let e = generate(&busybox(), &o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn host_network_drops_the_network_namespace() {
    let mut o = opts();
    o.host.network = true;
    let v = check(&busybox(), &o);
    let types: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["pid", "ipc", "uts", "mount"]);
    let d = destinations(&v);
    assert_eq!(&d[d.len() - 2..], ["/etc/hosts", "/etc/resolv.conf"]);
    assert_eq!(
        v["mounts"][d.len() - 1],
        json!({
            "destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf",
            "options": ["rbind", "ro"]
        })
    );
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let want = format!("HOSTNAME={}", h.trim());
        assert!(strs(&v["process"]["env"]).contains(&want.as_str()));
    }
    assert!(v.get("hostname").is_none());

    let mut o = opts();
    o.host = HostNamespaces {
        pid: true,
        ipc: true,
        uts: true,
        network: false,
    };
    let v = check(&busybox(), &o);
    assert_eq!(
        v["linux"]["namespaces"],
        json!([{"type": "mount"}, {"type": "network"}])
    );
    assert!(!destinations(&v).contains(&"/etc/hosts"));
}

#[test]
fn env_merges_over_the_image_and_the_default_path() {
    // No image env: the default PATH, then ours.
    let mut o = opts();
    o.env = vec!["A=1".into(), "B=2".into()];
    let v = check(&busybox(), &o);
    assert_eq!(strs(&v["process"]["env"]), [DEFAULT_PATH_ENV, "A=1", "B=2"]);

    // Image env: ours replaces in place, appends, or unsets with a bare key.
    let image = ImageConfig {
        env: vec!["PATH=/bin".into(), "A=image".into(), "GONE=x".into()],
        ..busybox()
    };
    o.env = vec!["A=mine".into(), "C=3".into(), "GONE".into()];
    let v = check(&image, &o);
    assert_eq!(strs(&v["process"]["env"]), ["PATH=/bin", "A=mine", "C=3"]);

    // An image env without PATH still gets one.
    let image = ImageConfig {
        env: vec!["LANG=C".into()],
        ..busybox()
    };
    let v = check(&image, &opts());
    assert_eq!(strs(&v["process"]["env"]), [DEFAULT_PATH_ENV, "LANG=C"]);

    // A terminal adds TERM unless set; a hostname adds HOSTNAME unless set.
    let mut o = opts();
    o.terminal = true;
    o.console_size = Some((100, 30));
    o.hostname = Some("box".into());
    let v = check(&busybox(), &o);
    assert_eq!(v["process"]["terminal"], true);
    assert_eq!(
        v["process"]["consoleSize"],
        json!({"height": 30, "width": 100})
    );
    assert_eq!(v["hostname"], "box");
    assert_eq!(
        strs(&v["process"]["env"]),
        [DEFAULT_PATH_ENV, "HOSTNAME=box", "TERM=xterm"]
    );
    o.env = vec!["TERM=vt100".into(), "HOSTNAME=mine".into()];
    let v = check(&busybox(), &o);
    assert_eq!(
        strs(&v["process"]["env"]),
        [DEFAULT_PATH_ENV, "HOSTNAME=mine", "TERM=vt100"]
    );
}

#[test]
fn replace_or_append() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        replace_or_append_env(&s(&["A=1", "B=2"]), &s(&["B=3", "C", "D=4", "A"])),
        s(&["B=3", "D=4"])
    );
    assert_eq!(replace_or_append_env(&[], &s(&["X=", "Y"])), s(&["X="]));
}

#[test]
fn entrypoint_cmd_args_and_cwd() {
    let image = ImageConfig {
        entrypoint: vec!["/init".into(), "--".into()],
        cmd: vec!["serve".into()],
        working_dir: "/srv".into(),
        ..ImageConfig::default()
    };
    let v = check(&image, &opts());
    assert_eq!(v["process"]["args"], json!(["/init", "--", "serve"]));
    assert_eq!(v["process"]["cwd"], "/srv");

    let mut o = opts();
    o.args = vec!["echo".into(), "hi".into()];
    o.cwd = Some("/tmp".into());
    let v = check(&image, &o);
    assert_eq!(v["process"]["args"], json!(["/init", "--", "echo", "hi"]));
    assert_eq!(v["process"]["cwd"], "/tmp");

    let e = generate(&ImageConfig::default(), &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("no command"), "{e}");
    o.cwd = Some("relative".into());
    assert!(generate(&image, &o).is_err());
}

#[test]
fn user_from_passwd_in_the_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1001::/home/web:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("etc/group"),
        "root:x:0:\nwheel:x:10:root,web\nweb:x:1001:\n",
    )
    .unwrap();
    let image = ImageConfig {
        user: "web".into(),
        ..busybox()
    };
    let mut o = opts();
    o.rootfs = Some(dir.path().to_path_buf());
    let v = check(&image, &o);
    assert_eq!(
        v["process"]["user"],
        json!({"uid": 1000, "gid": 1001, "additionalGids": [1001, 10]})
    );
    // --user wins over the image's.
    o.user = Some("0".into());
    let v = check(&image, &o);
    assert_eq!(
        v["process"]["user"],
        json!({"uid": 0, "gid": 0, "additionalGids": [0, 10]})
    );
    // Without the rootfs a name cannot be resolved; numbers can.
    let e = generate(&image, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(
        e.to_string().contains("needs the container's rootfs"),
        "{e}"
    );
    let mut o = opts();
    o.user = Some("1000:1000".into());
    let v = check(&image, &o);
    assert_eq!(
        v["process"]["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1000]})
    );
}

#[test]
fn mounts_rootfs_cgroups_and_annotations() {
    let mut o = opts();
    o.mounts = vec![parse_mount("type=bind,src=/tmp,dst=/host,options=rbind:ro").unwrap()];
    o.readonly_rootfs = true;
    o.cgroups_path = Some("/custom/path".into());
    o.new_privileges = true;
    o.annotations.insert("io.berth.test".into(), "yes".into());
    let v = check(&busybox(), &o);
    assert_eq!(*destinations(&v).last().unwrap(), "/host");
    assert_eq!(v["root"], json!({"path": "rootfs", "readonly": true}));
    assert_eq!(v["linux"]["cgroupsPath"], "/custom/path");
    assert_eq!(v["process"]["noNewPrivileges"], false);
    assert_eq!(v["annotations"], json!({"io.berth.test": "yes"}));

    o.cgroups_path = Some(String::new());
    let v = check(&busybox(), &o);
    assert!(v["linux"].get("cgroupsPath").is_none());
}

#[test]
fn bad_ids_are_invalid() {
    for (ns, id) in [("", "c"), ("default", ""), ("default", "a/b"), ("..", "c")] {
        let e = generate(&busybox(), &RunOptions::new(ns, id)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}

#[test]
fn exec_derives_from_the_container_process() {
    let image = ImageConfig {
        env: vec!["PATH=/bin".into(), "A=1".into()],
        working_dir: "/srv".into(),
        ..busybox()
    };
    let spec = generate(&image, &opts()).unwrap();
    let p = exec_process(
        &spec,
        &ExecOptions {
            args: vec!["ps".into()],
            env: vec!["B=2".into()],
            terminal: true,
            console_size: Some((80, 24)),
            user: Some("5:6".into()),
            ..ExecOptions::default()
        },
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&to_json(&p)).unwrap();
    assert_eq!(v["args"], json!(["ps"]));
    assert_eq!(v["terminal"], true);
    assert_eq!(v["consoleSize"], json!({"height": 24, "width": 80}));
    assert_eq!(v["cwd"], "/srv");
    assert_eq!(strs(&v["env"]), ["PATH=/bin", "A=1", "B=2", "TERM=xterm"]);
    assert_eq!(
        v["user"],
        json!({"uid": 5, "gid": 6, "additionalGids": [6]})
    );
    assert_eq!(set(&v["capabilities"]["bounding"]).len(), 14);

    let e = exec_process(&spec, &ExecOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn invalid_spec_json() {
    let e = from_json(b"{\"process\": 1}").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}
