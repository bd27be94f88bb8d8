//! `berth version`

use serde_json::json;

use crate::error::CallExt;
use crate::output::{self, Format};
use crate::{client, Global};

pub async fn run(g: &Global) -> anyhow::Result<()> {
    let client_version = env!("CARGO_PKG_VERSION");
    if g.format == Format::Table {
        output::line(format!("Client:\n  Version:  {client_version}\n"))?;
    }
    let conn = client::connect(g).await?;
    let server = conn
        .version()
        .version(())
        .await
        .ctx("version")?
        .into_inner();
    match g.format {
        Format::Table => output::line(format!(
            "Server:\n  Version:  {}\n  Revision: {}",
            server.version, server.revision
        ))?,
        Format::Json => output::json(&json!({
            "client": { "version": client_version },
            "server": { "version": server.version, "revision": server.revision },
        }))?,
    }
    Ok(())
}
