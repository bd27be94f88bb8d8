//! Mounts: containerd's default Linux mounts, the host files of host networking, and the
//! `--mount` syntax of `ctr run`.

use oci_spec::runtime::Mount;

use crate::error::{Error, Result};

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into())
        .set_typ(Some(kind.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// containerd's default mounts (`oci/mounts.go`), plus a read-only cgroup filesystem at
/// `/sys/fs/cgroup` as containerd's CRI adds it.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
    ]
}

/// The host's `/etc/hosts` and `/etc/resolv.conf`, bound read-only (containerd's
/// `WithHostHostsFile` and `WithHostResolvconf`, which `ctr run --net-host` adds).
pub fn host_network_mounts() -> Vec<Mount> {
    vec![
        mount("/etc/hosts", "bind", "/etc/hosts", &["rbind", "ro"]),
        mount(
            "/etc/resolv.conf",
            "bind",
            "/etc/resolv.conf",
            &["rbind", "ro"],
        ),
    ]
}

/// Splits one CSV record (Go's `encoding/csv`, as ctr reads `--mount`): commas separate
/// fields, a field in double quotes may hold commas, `""` inside quotes is a quote.
fn csv_fields(s: &str) -> Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => {
                        return Err(Error::InvalidArgument(format!(
                            "invalid mount {s:?}: unterminated quote"
                        )))
                    }
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "invalid mount {s:?}: text after a closing quote"
                    )))
                }
            }
        } else {
            loop {
                match chars.next() {
                    Some(',') => break,
                    Some(c) => field.push(c),
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                }
            }
            fields.push(field);
        }
    }
}

/// Parses ctr's `--mount` syntax: `type=bind,src=/a,dst=/b,options=rbind:ro` (keys `type`,
/// `source`/`src`, `destination`/`dst`, `options` with `:`-separated values). The type
/// defaults to `bind` when a source is given and options to `rbind` for binds, so
/// `src=/a,dst=/b` is a read-write bind mount.
pub fn parse_mount(spec: &str) -> Result<Mount> {
    let bad = |why: String| Error::InvalidArgument(format!("invalid mount {spec:?}: {why}"));
    let mut kind = None;
    let mut source = None;
    let mut destination = None;
    let mut options = None;
    for field in csv_fields(spec)? {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| bad(format!("{field:?} is not key=value")))?;
        match key {
            "type" => kind = Some(value.to_string()),
            "source" | "src" => source = Some(value.to_string()),
            "destination" | "dst" | "target" => destination = Some(value.to_string()),
            "options" => {
                options = Some(
                    value
                        .split(':')
                        .filter(|o| !o.is_empty())
                        .map(String::from)
                        .collect::<Vec<_>>(),
                )
            }
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    let destination = destination.ok_or_else(|| bad("no destination (dst=...)".into()))?;
    if !destination.starts_with('/') {
        return Err(bad(format!(
            "destination {destination:?} is not an absolute path"
        )));
    }
    let kind = match kind {
        Some(k) if !k.is_empty() => k,
        _ if source.is_some() => "bind".to_string(),
        _ => return Err(bad("no type (type=...)".into())),
    };
    if kind == "bind" {
        match &source {
            Some(s) if s.starts_with('/') => {}
            Some(s) => return Err(bad(format!("bind source {s:?} is not an absolute path"))),
            None => return Err(bad("a bind mount needs a source (src=...)".into())),
        }
    }
    let options = match options {
        Some(o) => o,
        None if kind == "bind" => vec!["rbind".to_string()],
        None => Vec::new(),
    };
    let mut m = Mount::default();
    m.set_destination(destination.into())
        .set_typ(Some(kind))
        .set_source(source.map(Into::into))
        .set_options(Some(options));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_errdefs::ErrorKind;

    fn json(m: &Mount) -> serde_json::Value {
        serde_json::to_value(m).unwrap()
    }

    #[test]
    fn ctr_mount_syntax() {
        let m = parse_mount("type=bind,src=/tmp,dst=/host,options=rbind:ro").unwrap();
        assert_eq!(
            json(&m),
            serde_json::json!({
                "destination": "/host", "type": "bind", "source": "/tmp",
                "options": ["rbind", "ro"]
            })
        );
        let m = parse_mount("source=/a,destination=/b").unwrap();
        assert_eq!(json(&m)["type"], "bind");
        assert_eq!(json(&m)["options"], serde_json::json!(["rbind"]));
        let m = parse_mount("type=tmpfs,dst=/scratch,options=size=1m:mode=1777").unwrap();
        assert_eq!(
            json(&m),
            serde_json::json!({
                "destination": "/scratch", "type": "tmpfs", "options": ["size=1m", "mode=1777"]
            })
        );
        let m = parse_mount(r#""src=/with,comma",dst=/x"#).unwrap();
        assert_eq!(json(&m)["source"], "/with,comma");
    }

    #[test]
    fn bad_mounts() {
        for (spec, why) in [
            ("src=/a", "no destination"),
            ("src=/a,dst=rel", "not an absolute path"),
            ("dst=/b", "no type"),
            ("type=bind,dst=/b", "needs a source"),
            ("type=bind,src=rel,dst=/b", "not an absolute path"),
            ("src=/a,dst=/b,colour=red", "unknown key"),
            ("src=/a,dst=/b,ro", "not key=value"),
            (r#""src=/a,dst=/b"#, "unterminated quote"),
        ] {
            let e = parse_mount(spec).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.to_string().contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn csv() {
        assert_eq!(csv_fields("a,b").unwrap(), ["a", "b"]);
        assert_eq!(csv_fields(r#""a""b",c"#).unwrap(), [r#"a"b"#, "c"]);
        assert_eq!(csv_fields("a,").unwrap(), ["a", ""]);
    }
}
