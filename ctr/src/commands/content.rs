//! `berth content ls|get|ingest|fetch-blob-from-file|rm|label|active|info`

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use berth_proto::containerd::services::content::v1::{
    DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, Status, StatusRequest, UpdateRequest,
};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::error::CallExt;
use crate::ingest::{self, Source, Upload};
use crate::output::{self, Format, Table};
use crate::{client, parse, Global};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List blobs, optionally matching filters (e.g. 'labels."containerd.io/gc.root"').
    #[command(visible_alias = "list")]
    Ls {
        /// Print digests only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Write a blob to stdout.
    #[command(visible_alias = "cat")]
    Get { digest: String },
    /// Store stdin as a blob under an ingest ref; prints the digest.
    Ingest {
        /// The ingest's ref: an interrupted ingest with the same ref resumes.
        #[arg(value_name = "REF")]
        reference: String,
        /// Size of the input in bytes (enables the progress bar and the size check).
        #[arg(long)]
        expected_size: Option<u64>,
        /// Digest the input must have.
        #[arg(long)]
        expected_digest: Option<String>,
        /// Label to set on the blob (key=value); repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Lease that holds the new blob.
        #[arg(long)]
        lease: Option<String>,
    },
    /// Store a file as a blob (resumes an interrupted upload of the same file); prints the digest.
    FetchBlobFromFile {
        file: PathBuf,
        /// Label to set on the blob (key=value); repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Lease that holds the new blob.
        #[arg(long)]
        lease: Option<String>,
    },
    /// Remove blobs.
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Set (key=value) or remove (key=) labels of a blob.
    Label {
        digest: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List ongoing ingests, optionally those whose ref matches a regular expression (or a
    /// filter such as 'ref==x').
    Active {
        #[arg(value_name = "REF-FILTER")]
        filter: Option<String>,
    },
    /// Show a blob's size, timestamps and labels.
    Info { digest: String },
}

pub async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls { quiet, filters } => ls(g, quiet, filters).await,
        Command::Get { digest } => get(g, &digest).await,
        Command::Ingest {
            reference,
            expected_size,
            expected_digest,
            labels,
            lease,
        } => {
            let up = Upload {
                context: format!("content ingest {reference}"),
                reference,
                total: expected_size,
                expected: expected_digest,
                labels: parse::labels(&labels)?.into_iter().collect(),
            };
            let conn = client::connect(g).await?.with_lease(lease.as_deref())?;
            let done =
                ingest::upload(&conn, up, Source::Stream(Box::new(tokio::io::stdin()))).await?;
            committed(g, &done)
        }
        Command::FetchBlobFromFile {
            file,
            labels,
            lease,
        } => fetch_blob_from_file(g, &file, labels, lease.as_deref()).await,
        Command::Rm { digests } => {
            let conn = client::connect(g).await?;
            super::for_each(digests, |digest| {
                let mut client = conn.content();
                async move {
                    client
                        .delete(DeleteContentRequest {
                            digest: digest.clone(),
                        })
                        .await
                        .ctx(format_args!("content rm {digest}"))?;
                    output::line(&digest)?;
                    Ok(())
                }
            })
            .await
        }
        Command::Label { digest, labels } => {
            let update = parse::label_update(&labels)?;
            let conn = client::connect(g).await?;
            let info = Info {
                digest: digest.clone(),
                labels: update.labels,
                ..Default::default()
            };
            let info = conn
                .content()
                .update(UpdateRequest {
                    info: Some(info),
                    update_mask: Some(update.mask),
                })
                .await
                .ctx(format_args!("content label {digest}"))?
                .into_inner()
                .info
                .unwrap_or_default();
            match g.format {
                Format::Json => output::json(&info_json(&info))?,
                Format::Table => output::line(format!(
                    "{}   {}",
                    info.digest,
                    output::labels(&info.labels)
                ))?,
            }
            Ok(())
        }
        Command::Active { filter } => active(g, filter).await,
        Command::Info { digest } => {
            let conn = client::connect(g).await?;
            let info = conn
                .content()
                .info(InfoRequest {
                    digest: digest.clone(),
                })
                .await
                .ctx(format_args!("content info {digest}"))?
                .into_inner()
                .info
                .unwrap_or_default();
            output::json(&info_json(&info))?;
            Ok(())
        }
    }
}

async fn ls(g: &Global, quiet: bool, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = client::connect(g).await?;
    let mut stream = conn
        .content()
        .list(ListContentRequest { filters })
        .await
        .ctx("content ls")?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(resp) = stream.message().await.ctx("content ls")? {
        infos.extend(resp.info);
    }
    if quiet {
        for info in &infos {
            output::line(&info.digest)?;
        }
        return Ok(());
    }
    match g.format {
        Format::Json => output::json(&Value::Array(infos.iter().map(info_json).collect()))?,
        Format::Table => {
            let mut table = Table::new(&["DIGEST", "SIZE", "AGE", "LABELS"]);
            for info in &infos {
                table.row(vec![
                    info.digest.clone(),
                    output::human_size(info.size),
                    output::age(info.created_at.as_ref()),
                    output::labels(&info.labels),
                ]);
            }
            table.print()?;
        }
    }
    Ok(())
}

async fn get(g: &Global, digest: &str) -> anyhow::Result<()> {
    let ctx = format!("content get {digest}");
    let conn = client::connect(g).await?;
    let mut stream = conn
        .content()
        .read(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })
        .await
        .ctx(&ctx)?
        .into_inner();
    let mut out = tokio::io::stdout();
    let mut offset = 0i64;
    while let Some(chunk) = stream.message().await.ctx(&ctx)? {
        if chunk.offset != offset {
            bail!(
                "{ctx}: got data at offset {}, expected {offset}",
                chunk.offset
            );
        }
        out.write_all(&chunk.data).await?;
        offset += chunk.data.len() as i64;
    }
    out.flush().await?;
    Ok(())
}

async fn fetch_blob_from_file(
    g: &Global,
    file: &std::path::Path,
    labels: Vec<String>,
    lease: Option<&str>,
) -> anyhow::Result<()> {
    let labels = parse::labels(&labels)?;
    let shown = file.display();
    let (digest, size) = hash_file(file)
        .await
        .with_context(|| format!("content fetch-blob-from-file {shown}"))?;
    let reference = format!("fetch-blob-{digest}");
    let conn = client::connect(g).await?.with_lease(lease)?;

    // Say so when we pick up an earlier, interrupted upload.
    match conn
        .content()
        .status(StatusRequest {
            r#ref: reference.clone(),
        })
        .await
    {
        Ok(resp) => {
            if let Some(st) = resp.into_inner().status.filter(|s| s.offset > 0) {
                eprintln!(
                    "resuming {reference} at {} of {}",
                    output::human_size(st.offset),
                    output::human_size(size as i64)
                );
            }
        }
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(s).ctx(format_args!("content status {reference}")),
    }

    let source = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("content fetch-blob-from-file: opening {shown}"))?;
    let up = Upload {
        context: format!("content fetch-blob-from-file {shown}"),
        reference,
        total: Some(size),
        expected: Some(digest),
        labels: labels.into_iter().collect(),
    };
    let done = ingest::upload(&conn, up, Source::File(source)).await?;
    committed(g, &done)
}

/// The sha256 digest and size of a file.
async fn hash_file(path: &std::path::Path) -> anyhow::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; ingest::CHUNK_SIZE];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

fn committed(g: &Global, done: &ingest::Committed) -> anyhow::Result<()> {
    match g.format {
        Format::Json => output::json(&json!({
            "digest": done.digest,
            "size": done.size,
            "existed": done.existed,
            "resumed_at": done.resumed_at,
        }))?,
        Format::Table => output::line(&done.digest)?,
    }
    Ok(())
}

async fn active(g: &Global, filter: Option<String>) -> anyhow::Result<()> {
    let filters = filter.map(|f| ref_filter(&f)).into_iter().collect();
    let conn = client::connect(g).await?;
    let statuses = conn
        .content()
        .list_statuses(ListStatusesRequest { filters })
        .await
        .ctx("content active")?
        .into_inner()
        .statuses;
    match g.format {
        Format::Json => output::json(&Value::Array(statuses.iter().map(status_json).collect()))?,
        Format::Table => {
            let mut table = Table::new(&["REF", "SIZE/TOTAL", "STARTED", "UPDATED"]);
            for st in &statuses {
                let total = if st.total > 0 {
                    output::human_size(st.total)
                } else {
                    "?".to_string()
                };
                table.row(vec![
                    st.r#ref.clone(),
                    format!("{}/{}", output::human_size(st.offset), total),
                    output::age(st.started_at.as_ref()),
                    output::age(st.updated_at.as_ref()),
                ]);
            }
            table.print()?;
        }
    }
    Ok(())
}

/// A bare argument is a regular expression on the ref; anything with an operator is a filter.
fn ref_filter(arg: &str) -> String {
    if ["==", "!=", "~="].iter().any(|op| arg.contains(op)) {
        return arg.to_string();
    }
    let quoted: String = arg
        .chars()
        .flat_map(|c| match c {
            '\\' | '"' => vec!['\\', c],
            _ => vec![c],
        })
        .collect();
    format!("ref~=\"{quoted}\"")
}

fn info_json(info: &Info) -> Value {
    json!({
        "digest": info.digest,
        "size": info.size,
        "created_at": output::timestamp_json(info.created_at.as_ref()),
        "updated_at": output::timestamp_json(info.updated_at.as_ref()),
        "labels": output::labels_json(&info.labels),
    })
}

fn status_json(st: &Status) -> Value {
    json!({
        "ref": st.r#ref,
        "offset": st.offset,
        "total": st.total,
        "expected": st.expected,
        "started_at": output::timestamp_json(st.started_at.as_ref()),
        "updated_at": output::timestamp_json(st.updated_at.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_filters() {
        assert_eq!(ref_filter("^fetch-"), r#"ref~="^fetch-""#);
        assert_eq!(ref_filter(r#"a\d"b"#), r#"ref~="a\\d\"b""#);
        assert_eq!(ref_filter("ref==x"), "ref==x");
    }

    #[test]
    fn info_json_has_stable_fields() {
        let info = Info {
            digest: "sha256:ab".into(),
            size: 3,
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            info_json(&info).to_string(),
            r#"{"created_at":"1970-01-01T00:00:00Z","digest":"sha256:ab","labels":{},"size":3,"updated_at":null}"#
        );
    }

    #[tokio::test]
    async fn hashes_files() {
        let dir = std::env::temp_dir().join(format!("berth-ctr-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blob");
        std::fs::write(&path, b"hello").unwrap();
        let (digest, size) = hash_file(&path).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(size, 5);
        assert_eq!(
            digest,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
