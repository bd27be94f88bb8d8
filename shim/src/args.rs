//! The shim's command line, Go `flag` style (`-namespace NS`, `-debug`, `--id=ID`), as
//! containerd passes it: `[flags] start|delete`, or no action for the long-lived server.

use crate::error::{Error, Result};

/// Parsed flags and action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub namespace: String,
    pub id: String,
    /// The daemon's gRPC address.
    pub address: String,
    pub publish_binary: String,
    /// The bundle, if not the working directory.
    pub bundle: String,
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    /// `start`, `delete`, or empty for the server.
    pub action: String,
}

impl Args {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args> {
        let mut out = Args::default();
        let mut it = args.into_iter().peekable();
        while let Some(arg) = it.next() {
            if arg == "--" {
                if let Some(a) = it.next() {
                    out.action = a;
                }
                break;
            }
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                out.action = arg;
                break;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            match name {
                "debug" | "v" | "version" => {
                    let on = inline.as_deref().is_none_or(|v| v == "true" || v == "1");
                    if name == "debug" {
                        out.debug = on;
                    } else {
                        out.version = on;
                    }
                }
                "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                    let value = match inline {
                        Some(v) => v,
                        None => it.next().ok_or_else(|| {
                            Error::invalid(format!("flag needs an argument: -{name}"))
                        })?,
                    };
                    let slot = match name {
                        "namespace" => &mut out.namespace,
                        "id" => &mut out.id,
                        "address" => &mut out.address,
                        "publish-binary" => &mut out.publish_binary,
                        "bundle" => &mut out.bundle,
                        _ => &mut out.socket,
                    };
                    *slot = value;
                }
                other => {
                    return Err(Error::invalid(format!(
                        "flag provided but not defined: -{other}"
                    )))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[&str]) -> Args {
        Args::parse(s.iter().map(|s| s.to_string())).unwrap()
    }

    #[test]
    fn go_style_flags() {
        let a = parse(&[
            "-namespace",
            "default",
            "-address",
            "/run/c.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "t1",
            "-debug",
            "start",
        ]);
        assert_eq!(a.namespace, "default");
        assert_eq!(a.address, "/run/c.sock");
        assert_eq!(a.id, "t1");
        assert!(a.debug);
        assert_eq!(a.action, "start");
        let a = parse(&["--namespace=ns", "-id=x", "-bundle", "/b", "delete"]);
        assert_eq!(
            (a.namespace.as_str(), a.id.as_str(), a.bundle.as_str()),
            ("ns", "x", "/b")
        );
        assert_eq!(a.action, "delete");
        let a = parse(&["-namespace", "ns", "-id", "x"]);
        assert_eq!(a.action, "");
        assert!(Args::parse(["-bogus".to_string()]).is_err());
    }
}
