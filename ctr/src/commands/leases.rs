//! `berth leases ls|create|rm`

use std::time::{Duration, SystemTime};

use berth_proto::containerd::services::leases::v1::{
    CreateRequest, DeleteRequest, Lease, ListRequest,
};
use serde_json::{json, Value};

use crate::error::CallExt;
use crate::output::{self, Format, Table};
use crate::{client, parse, Global};

/// The label that makes the garbage collector drop a lease after a point in time.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List leases, optionally matching filters (e.g. 'id~=^build-').
    #[command(visible_alias = "list")]
    Ls {
        /// Print IDs only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Create a lease; prints its ID.
    Create {
        /// ID of the lease (the server picks one if omitted).
        #[arg(long)]
        id: Option<String>,
        /// Let the lease expire after this long (e.g. 30m, 24h, 7d).
        #[arg(long, value_parser = parse::duration)]
        expires: Option<Duration>,
        /// Labels as key=value.
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove leases.
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        /// Wait for the garbage collection that the removal triggers.
        #[arg(long)]
        sync: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls { quiet, filters } => {
            let conn = client::connect(g).await?;
            let leases = conn
                .leases()
                .list(ListRequest { filters })
                .await
                .ctx("leases ls")?
                .into_inner()
                .leases;
            if quiet {
                for lease in &leases {
                    output::line(&lease.id)?;
                }
                return Ok(());
            }
            match g.format {
                Format::Json => output::json(&Value::Array(leases.iter().map(to_json).collect()))?,
                Format::Table => {
                    let mut table = Table::new(&["ID", "CREATED AT", "LABELS"]);
                    for lease in &leases {
                        table.row(vec![
                            lease.id.clone(),
                            output::timestamp(lease.created_at.as_ref()),
                            output::labels(&lease.labels),
                        ]);
                    }
                    table.print()?;
                }
            }
            Ok(())
        }
        Command::Create {
            id,
            expires,
            labels,
        } => {
            let mut labels = parse::labels(&labels)?;
            if let Some(after) = expires {
                labels.insert(EXPIRE_LABEL.to_string(), expiry(SystemTime::now(), after));
            }
            let id = id.unwrap_or_default();
            let what = match id.as_str() {
                "" => "leases create".to_string(),
                id => format!("leases create {id}"),
            };
            let conn = client::connect(g).await?;
            let lease = conn
                .leases()
                .create(CreateRequest {
                    id: id.clone(),
                    labels: labels.into_iter().collect(),
                })
                .await
                .ctx(what)?
                .into_inner()
                .lease
                .unwrap_or_default();
            match g.format {
                Format::Json => output::json(&to_json(&lease))?,
                Format::Table => output::line(&lease.id)?,
            }
            Ok(())
        }
        Command::Rm { sync, ids } => {
            let conn = client::connect(g).await?;
            super::for_each(ids, |id| {
                let mut client = conn.leases();
                async move {
                    client
                        .delete(DeleteRequest {
                            id: id.clone(),
                            sync,
                        })
                        .await
                        .ctx(format_args!("leases rm {id}"))?;
                    output::line(&id)?;
                    Ok(())
                }
            })
            .await
        }
    }
}

/// `now + after` as RFC 3339, to the second.
pub(crate) fn expiry(now: SystemTime, after: Duration) -> String {
    let at = prost_types::Timestamp::from(now + after);
    prost_types::Timestamp {
        seconds: at.seconds,
        nanos: 0,
    }
    .to_string()
}

fn to_json(lease: &Lease) -> Value {
    json!({
        "id": lease.id,
        "created_at": output::timestamp_json(lease.created_at.as_ref()),
        "labels": output::labels_json(&lease.labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_rfc3339_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert_eq!(
            expiry(now, parse::duration("24h").unwrap()),
            "2023-11-15T22:13:20Z"
        );
    }
}
