//! `berth plugins ls [--detailed] [FILTER...]`

use berth_proto::containerd::services::introspection::v1::{Plugin, PluginsRequest};
use berth_proto::containerd::types::Platform;
use serde_json::{json, Value};

use crate::error::{one_line, CallExt};
use crate::output::{self, Format, Table};
use crate::{client, Global};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List plugins, optionally matching filters (e.g. 'type==io.containerd.snapshotter.v1').
    #[command(visible_alias = "list")]
    Ls {
        /// Show requirements, exports, capabilities and errors.
        #[arg(short, long)]
        detailed: bool,
        filters: Vec<String>,
    },
}

pub async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    let Command::Ls { detailed, filters } = command;
    let conn = client::connect(g).await?;
    let plugins = conn
        .introspection()
        .plugins(PluginsRequest { filters })
        .await
        .ctx("plugins ls")?
        .into_inner()
        .plugins;
    match g.format {
        Format::Json => output::json(&Value::Array(plugins.iter().map(to_json).collect()))?,
        Format::Table if detailed => output::line(detailed_text(&plugins).trim_end())?,
        Format::Table => {
            let mut table = Table::new(&["TYPE", "ID", "PLATFORMS", "STATUS"]);
            for p in &plugins {
                table.row(vec![
                    p.r#type.clone(),
                    p.id.clone(),
                    platforms(&p.platforms),
                    status(p).to_string(),
                ]);
            }
            table.print()?;
        }
    }
    Ok(())
}

fn status(p: &Plugin) -> &'static str {
    if error(p).is_some() {
        "error"
    } else {
        "ok"
    }
}

fn error(p: &Plugin) -> Option<String> {
    p.init_err
        .as_ref()
        .filter(|s| s.code != 0 || !s.message.is_empty())
        .map(|s| one_line(&s.message))
}

fn platform(p: &Platform) -> String {
    let mut s = format!("{}/{}", p.os, p.architecture);
    if !p.variant.is_empty() {
        s.push('/');
        s.push_str(&p.variant);
    }
    s
}

fn platforms(ps: &[Platform]) -> String {
    if ps.is_empty() {
        "-".to_string()
    } else {
        ps.iter().map(platform).collect::<Vec<_>>().join(",")
    }
}

fn detailed_text(plugins: &[Plugin]) -> String {
    let mut out = String::new();
    for p in plugins {
        out.push_str(&format!("Type:          {}\n", p.r#type));
        out.push_str(&format!("ID:            {}\n", p.id));
        if !p.requires.is_empty() {
            out.push_str("Requires:\n");
            for r in &p.requires {
                out.push_str(&format!("               {r}\n"));
            }
        }
        if !p.platforms.is_empty() {
            out.push_str(&format!("Platforms:     {}\n", platforms(&p.platforms)));
        }
        if !p.exports.is_empty() {
            out.push_str("Exports:\n");
            let mut exports: Vec<_> = p.exports.iter().collect();
            exports.sort();
            for (k, v) in exports {
                out.push_str(&format!("               {k:<15}{v}\n"));
            }
        }
        if !p.capabilities.is_empty() {
            out.push_str(&format!("Capabilities:  {}\n", p.capabilities.join(",")));
        }
        if let Some(e) = error(p) {
            out.push_str(&format!("Error:         {e}\n"));
        }
        out.push_str(&format!("Status:        {}\n\n", status(p)));
    }
    out
}

fn to_json(p: &Plugin) -> Value {
    json!({
        "type": p.r#type,
        "id": p.id,
        "requires": p.requires,
        "platforms": p.platforms.iter().map(platform).collect::<Vec<_>>(),
        "exports": output::labels_json(&p.exports),
        "capabilities": p.capabilities,
        "status": status(p),
        "error": error(p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::google::rpc::Status;

    fn plugin(err: Option<&str>) -> Plugin {
        Plugin {
            r#type: "io.containerd.snapshotter.v1".into(),
            id: "overlayfs".into(),
            platforms: vec![Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                ..Default::default()
            }],
            init_err: err.map(|m| Status {
                code: 9,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn status_and_platforms() {
        assert_eq!(status(&plugin(None)), "ok");
        assert_eq!(status(&plugin(Some("no overlay"))), "error");
        assert_eq!(platforms(&plugin(None).platforms), "linux/amd64");
        assert_eq!(platforms(&[]), "-");
        let v = to_json(&plugin(Some("no\noverlay")));
        assert_eq!(v["error"], "no overlay");
        assert_eq!(v["platforms"][0], "linux/amd64");
    }

    #[test]
    fn detailed_lists_error() {
        let text = detailed_text(&[plugin(Some("boom"))]);
        assert!(text.contains("Error:         boom\n"));
        assert!(text.contains("Status:        error\n"));
    }
}
