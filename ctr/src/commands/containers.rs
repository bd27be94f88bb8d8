//! `berth containers ls|info|rm|label`

use berth_proto::containerd::services::containers::v1::{
    Container, DeleteContainerRequest, GetContainerRequest, ListContainersRequest,
    UpdateContainerRequest,
};
use berth_proto::containerd::services::snapshots::v1::RemoveSnapshotRequest;
use berth_proto::containerd::services::tasks::v1::GetRequest;
use serde_json::{json, Value};
use tonic::Code;

use crate::client::{self, Conn};
use crate::error::{CallError, CallExt};
use crate::output::{self, Format, Table};
use crate::{parse, Global};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List containers, optionally matching filters (e.g. 'image==busybox', 'labels.app').
    #[command(visible_alias = "list")]
    Ls {
        /// Print IDs only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Show a container's record, its runtime spec decoded.
    Info {
        id: String,
        /// Print only the runtime spec.
        #[arg(long)]
        spec: bool,
    },
    /// Remove containers that have no task, and their snapshots.
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        /// Keep the container's snapshot.
        #[arg(long)]
        keep_snapshot: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set (key=value) or remove (key=) labels of a container.
    Label {
        id: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
}

pub async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    let conn = client::connect(g).await?;
    match command {
        Command::Ls { quiet, filters } => ls(g, &conn, quiet, filters).await,
        Command::Info { id, spec } => {
            let c = get(&conn, &id, &format!("containers info {id}")).await?;
            let v = to_json(&c);
            if spec {
                output::json(&v["spec"])?;
            } else {
                output::json(&v)?;
            }
            Ok(())
        }
        Command::Rm { keep_snapshot, ids } => {
            let conn = &conn;
            super::for_each(ids, |id| async move {
                remove(conn, &id, keep_snapshot).await?;
                output::line(&id)?;
                Ok(())
            })
            .await
        }
        Command::Label { id, labels } => {
            let update = parse::label_update(&labels)?;
            let container = Container {
                id: id.clone(),
                labels: update.labels,
                ..Default::default()
            };
            let c = conn
                .containers()
                .update(UpdateContainerRequest {
                    container: Some(container),
                    update_mask: Some(update.mask),
                })
                .await
                .ctx(format_args!("containers label {id}"))?
                .into_inner()
                .container
                .unwrap_or_default();
            match g.format {
                Format::Json => output::json(&to_json(&c))?,
                Format::Table => output::line(format!("{}   {}", c.id, output::labels(&c.labels)))?,
            }
            Ok(())
        }
    }
}

pub(super) async fn get(conn: &Conn, id: &str, what: &str) -> anyhow::Result<Container> {
    Ok(conn
        .containers()
        .get(GetContainerRequest { id: id.to_string() })
        .await
        .ctx(what)?
        .into_inner()
        .container
        .unwrap_or_default())
}

/// Removes a container like containerd's `Delete(WithSnapshotCleanup)`: refused while it has
/// a task; its snapshot goes first (unless kept), then the record.
pub(super) async fn remove(conn: &Conn, id: &str, keep_snapshot: bool) -> anyhow::Result<()> {
    let what = format!("containers rm {id}");
    match conn
        .tasks()
        .get(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await
    {
        Ok(_) => {
            return Err(CallError {
                context: what,
                code: Code::FailedPrecondition,
                message: format!(
                    "container {id} has a task; delete it first (berth tasks delete {id})"
                ),
            }
            .into())
        }
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(CallError::new(&what, &s).into()),
    }
    let c = get(conn, id, &what).await?;
    let snapshot = (!keep_snapshot && !c.snapshot_key.is_empty())
        .then_some((c.snapshotter.as_str(), c.snapshot_key.as_str()));
    delete_with_snapshot(conn, id, snapshot, &what).await
}

/// Deletes container `id` and the snapshot (snapshotter, key) given, if any: the calls of a
/// remove once it is known that no task runs.
pub(super) async fn delete_with_snapshot(
    conn: &Conn,
    id: &str,
    snapshot: Option<(&str, &str)>,
    what: &str,
) -> anyhow::Result<()> {
    if let Some((snapshotter, key)) = snapshot {
        match conn
            .snapshots()
            .remove(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => {
                return Err(
                    CallError::new(format!("{what}: snapshot {key} ({snapshotter})"), &s).into(),
                )
            }
        }
    }
    conn.containers()
        .delete(DeleteContainerRequest { id: id.to_string() })
        .await
        .ctx(what)?;
    Ok(())
}

async fn ls(g: &Global, conn: &Conn, quiet: bool, filters: Vec<String>) -> anyhow::Result<()> {
    let mut containers = conn
        .containers()
        .list(ListContainersRequest { filters })
        .await
        .ctx("containers ls")?
        .into_inner()
        .containers;
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    if quiet {
        for c in &containers {
            output::line(&c.id)?;
        }
        return Ok(());
    }
    match g.format {
        Format::Json => output::json(&Value::Array(containers.iter().map(to_json).collect()))?,
        Format::Table => {
            let mut table = Table::new(&["CONTAINER", "IMAGE", "RUNTIME", "AGE"]);
            for c in &containers {
                table.row(vec![
                    c.id.clone(),
                    if c.image.is_empty() {
                        "-".into()
                    } else {
                        c.image.clone()
                    },
                    c.runtime
                        .as_ref()
                        .map(|r| r.name.clone())
                        .unwrap_or_default(),
                    output::age(c.created_at.as_ref()),
                ]);
            }
            table.print()?;
        }
    }
    Ok(())
}

/// A container as JSON; the spec is decoded when it is the JSON containerd puts there.
fn to_json(c: &Container) -> Value {
    let spec = match &c.spec {
        None => Value::Null,
        Some(any) => match serde_json::from_slice::<Value>(&any.value) {
            Ok(v) => v,
            Err(_) => json!({"type_url": any.type_url, "size": any.value.len()}),
        },
    };
    let runtime = c.runtime.as_ref();
    json!({
        "id": c.id,
        "labels": output::labels_json(&c.labels),
        "image": c.image,
        "runtime": {
            "name": runtime.map(|r| r.name.clone()).unwrap_or_default(),
            "options": runtime.and_then(|r| r.options.as_ref()).map(|o| json!({
                "type_url": o.type_url, "size": o.value.len(),
            })),
        },
        "spec_type_url": c.spec.as_ref().map(|s| s.type_url.clone()),
        "spec": spec,
        "snapshotter": c.snapshotter,
        "snapshot_key": c.snapshot_key,
        "created_at": output::timestamp_json(c.created_at.as_ref()),
        "updated_at": output::timestamp_json(c.updated_at.as_ref()),
        "extensions": c.extensions.keys().collect::<Vec<_>>(),
        "sandbox": c.sandbox,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_decodes_the_spec() {
        let c = Container {
            id: "c1".into(),
            image: "busybox".into(),
            spec: Some(prost_types::Any {
                type_url: berth_oci::SPEC_TYPE_URL.into(),
                value: br#"{"ociVersion":"1.0.2-dev","process":{"args":["sh"]}}"#.to_vec(),
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: "c1".into(),
            ..Default::default()
        };
        let v = to_json(&c);
        assert_eq!(v["spec"]["process"]["args"][0], "sh");
        assert_eq!(v["spec_type_url"], berth_oci::SPEC_TYPE_URL);
        assert_eq!(v["snapshot_key"], "c1");
        assert_eq!(v["created_at"], Value::Null);

        let c = Container {
            spec: Some(prost_types::Any {
                type_url: "x".into(),
                value: vec![0, 1, 2],
            }),
            ..Default::default()
        };
        assert_eq!(to_json(&c)["spec"], json!({"type_url": "x", "size": 3}));
    }
}
