//! `berth namespaces ls|create|label|rm`

use berth_proto::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, ListNamespacesRequest, Namespace,
    UpdateNamespaceRequest,
};
use serde_json::{json, Value};

use crate::error::CallExt;
use crate::output::{self, Format, Table};
use crate::{client, parse, Global};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List namespaces.
    #[command(visible_alias = "list")]
    Ls {
        /// Print names only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a namespace with optional labels.
    Create {
        name: String,
        /// Labels as key=value.
        labels: Vec<String>,
    },
    /// Set (key=value) or remove (key=) labels of a namespace.
    #[command(visible_alias = "set-label")]
    Label {
        name: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Remove namespaces (they must be empty).
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls { quiet } => ls(g, quiet).await,
        Command::Create { name, labels } => {
            let labels = parse::labels(&labels)?;
            let conn = client::connect(g).await?;
            let ns = conn
                .namespaces()
                .create(CreateNamespaceRequest {
                    namespace: Some(Namespace {
                        name: name.clone(),
                        labels: labels.into_iter().collect(),
                    }),
                })
                .await
                .ctx(format_args!("namespaces create {name}"))?
                .into_inner()
                .namespace
                .unwrap_or_default();
            show_one(g, &ns)
        }
        Command::Label { name, labels } => {
            let update = parse::label_update(&labels)?;
            let conn = client::connect(g).await?;
            let ns = conn
                .namespaces()
                .update(UpdateNamespaceRequest {
                    namespace: Some(Namespace {
                        name: name.clone(),
                        labels: update.labels,
                    }),
                    update_mask: Some(update.mask),
                })
                .await
                .ctx(format_args!("namespaces label {name}"))?
                .into_inner()
                .namespace
                .unwrap_or_default();
            show_one(g, &ns)
        }
        Command::Rm { names } => {
            let conn = client::connect(g).await?;
            super::for_each(names, |name| {
                let mut client = conn.namespaces();
                async move {
                    client
                        .delete(DeleteNamespaceRequest { name: name.clone() })
                        .await
                        .ctx(format_args!("namespaces rm {name}"))?;
                    output::line(&name)?;
                    Ok(())
                }
            })
            .await
        }
    }
}

async fn ls(g: &Global, quiet: bool) -> anyhow::Result<()> {
    let conn = client::connect(g).await?;
    let mut namespaces = conn
        .namespaces()
        .list(ListNamespacesRequest::default())
        .await
        .ctx("namespaces ls")?
        .into_inner()
        .namespaces;
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    if quiet {
        for ns in &namespaces {
            output::line(&ns.name)?;
        }
        return Ok(());
    }
    match g.format {
        Format::Json => output::json(&Value::Array(namespaces.iter().map(to_json).collect()))?,
        Format::Table => table(&namespaces).print()?,
    }
    Ok(())
}

fn show_one(g: &Global, ns: &Namespace) -> anyhow::Result<()> {
    match g.format {
        Format::Json => output::json(&to_json(ns))?,
        Format::Table => table(std::slice::from_ref(ns)).print()?,
    }
    Ok(())
}

fn table(namespaces: &[Namespace]) -> Table {
    let mut table = Table::new(&["NAME", "LABELS"]);
    for ns in namespaces {
        table.row(vec![ns.name.clone(), output::labels(&ns.labels)]);
    }
    table
}

fn to_json(ns: &Namespace) -> Value {
    json!({ "name": ns.name, "labels": output::labels_json(&ns.labels) })
}
