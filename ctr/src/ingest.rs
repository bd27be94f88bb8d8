//! Uploading a blob with Content.Write: STAT (learn where the ingest stands), WRITE chunks at
//! increasing offsets, COMMIT with the total, expected digest and labels. One request, one
//! response, in lockstep. An existing ingest for the ref resumes at its offset.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context as _};
use berth_proto::containerd::services::content::v1::{
    WriteAction, WriteContentRequest, WriteContentResponse,
};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

use crate::client::Conn;
use crate::error::{CallError, CallExt};
use crate::progress::Progress;

/// Bytes per WRITE message (well under the 16 MiB message limit).
pub const CHUNK_SIZE: usize = 1 << 20;

/// Where the bytes come from.
pub enum Source {
    /// A stream we can only read forward (stdin): resuming reads and drops the prefix.
    Stream(Box<dyn AsyncRead + Unpin + Send>),
    /// A file: resuming seeks.
    File(tokio::fs::File),
}

impl Source {
    async fn read_chunk(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Stream(r) => fill(r, buf).await,
            Source::File(f) => fill(f, buf).await,
        }
    }

    /// Moves to `offset`; bytes read on the way go into `hasher`, a seek invalidates it.
    async fn skip_to(&mut self, offset: u64, hasher: &mut Option<Sha256>) -> anyhow::Result<()> {
        match self {
            Source::File(f) => {
                f.seek(std::io::SeekFrom::Start(offset)).await?;
                *hasher = None;
            }
            Source::Stream(r) => {
                let mut left = offset;
                let mut buf = vec![0u8; CHUNK_SIZE];
                while left > 0 {
                    let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let n = fill(r, &mut buf[..want]).await?;
                    if n == 0 {
                        bail!(
                            "input ended after {} bytes, but the ingest already has {offset}",
                            offset - left
                        );
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(&buf[..n]);
                    }
                    left -= n as u64;
                }
            }
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the input ends.
async fn fill<R: AsyncRead + Unpin + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What to upload.
pub struct Upload {
    /// The ingest's ref (its identity for resuming).
    pub reference: String,
    /// The size, if known.
    pub total: Option<u64>,
    /// The expected digest, if known.
    pub expected: Option<String>,
    pub labels: HashMap<String, String>,
    /// What to say in errors, e.g. `content ingest myref`.
    pub context: String,
}

/// The result of an upload.
#[derive(Debug, Clone)]
pub struct Committed {
    pub digest: String,
    pub size: u64,
    /// The blob was already in the store.
    pub existed: bool,
    /// Bytes the ingest already had when we started.
    pub resumed_at: u64,
}

/// Uploads `source` as `up` and commits it.
pub async fn upload(conn: &Conn, up: Upload, mut source: Source) -> anyhow::Result<Committed> {
    let ctx = up.context.as_str();
    let total = up
        .total
        .map(|t| i64::try_from(t).context("size too large"))
        .transpose()?;
    let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
    let stat = WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: up.reference.clone(),
        total: total.unwrap_or(0),
        expected: up.expected.clone().unwrap_or_default(),
        ..Default::default()
    };
    tx.send(stat)
        .await
        .map_err(|_| anyhow!("{ctx}: write stream closed"))?;
    // With an expected digest, AlreadyExists at STAT means there is nothing to do.
    let existing = up.expected.clone().map(|digest| Committed {
        digest,
        size: up.total.unwrap_or(0),
        existed: true,
        resumed_at: 0,
    });
    let mut responses = match (
        conn.content().write(ReceiverStream::new(rx)).await,
        &existing,
    ) {
        (Ok(r), _) => r.into_inner(),
        (Err(s), Some(done)) if s.code() == Code::AlreadyExists => return Ok(done.clone()),
        (Err(s), _) => return Err(CallError::new(ctx, &s).into()),
    };
    let status = match (next(&mut responses, ctx).await, existing) {
        (Ok(r), _) => r,
        (Err(e), Some(done)) if is_already_exists(&e) => return Ok(done),
        (Err(e), _) => return Err(e),
    };
    let resumed_at = u64::try_from(status.offset).unwrap_or(0);
    let known_total = up
        .total
        .or_else(|| u64::try_from(status.total).ok().filter(|t| *t > 0));

    let mut hasher = Some(Sha256::new());
    let mut progress = Progress::new(&up.reference, known_total);
    let mut offset = resumed_at;
    if resumed_at > 0 {
        source
            .skip_to(resumed_at, &mut hasher)
            .await
            .with_context(|| format!("{ctx}: resuming at offset {resumed_at}"))?;
        progress.set(offset);
    }

    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let n = source
            .read_chunk(&mut buf)
            .await
            .with_context(|| format!("{ctx}: reading input"))?;
        if n == 0 {
            break;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            offset: offset as i64,
            data: buf[..n].to_vec().into(),
            ..Default::default()
        };
        send(&tx, &mut responses, req, ctx).await?;
        let resp = next(&mut responses, ctx).await?;
        offset += n as u64;
        if resp.offset != offset as i64 {
            bail!(
                "{ctx}: server is at offset {} after a write ending at {offset}",
                resp.offset
            );
        }
        progress.set(offset);
    }
    progress.finish();

    if let Some(t) = up.total {
        if t != offset {
            bail!("{ctx}: read {offset} bytes, expected {t}");
        }
    }
    let computed = hasher.map(|h| format!("sha256:{}", hex::encode(h.finalize())));
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        // The offset matters: a WRITE or COMMIT at offset 0 restarts a non-empty ingest.
        offset: offset as i64,
        total: offset as i64,
        expected: up.expected.clone().unwrap_or_default(),
        labels: up.labels.clone(),
        ..Default::default()
    };
    send(&tx, &mut responses, commit, ctx).await?;
    // What we know beats what the server echoes: the expected digest was verified by the
    // commit, and the local hash covers every byte sent.
    let known = up.expected.clone().or(computed);
    let (digest, existed) = match next(&mut responses, ctx).await {
        Ok(resp) => match known {
            Some(d) => (d, false),
            None if !resp.digest.is_empty() => (resp.digest, false),
            None => bail!("{ctx}: the server did not say which digest it committed"),
        },
        Err(e) if is_already_exists(&e) => match known {
            Some(d) => (d, true),
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    drop(tx);
    // Let the server end the stream cleanly; its status no longer matters.
    while let Ok(Some(_)) = responses.message().await {}
    Ok(Committed {
        digest,
        size: offset,
        existed,
        resumed_at,
    })
}

fn is_already_exists(e: &anyhow::Error) -> bool {
    e.downcast_ref::<CallError>()
        .is_some_and(|c| c.code == Code::AlreadyExists)
}

/// Sends a request; if the server already hung up, its status explains why.
async fn send(
    tx: &mpsc::Sender<WriteContentRequest>,
    responses: &mut Streaming<WriteContentResponse>,
    req: WriteContentRequest,
    ctx: &str,
) -> anyhow::Result<()> {
    if tx.send(req).await.is_err() {
        next(responses, ctx).await?;
        bail!("{ctx}: the server closed the write stream");
    }
    Ok(())
}

async fn next(
    responses: &mut Streaming<WriteContentResponse>,
    ctx: &str,
) -> anyhow::Result<WriteContentResponse> {
    responses
        .message()
        .await
        .ctx(ctx)?
        .ok_or_else(|| anyhow!("{ctx}: the server ended the write stream early"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fill_reads_across_short_reads() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        // A reader that returns at most 7 bytes per read.
        let (mut w, mut r) = tokio::io::duplex(7);
        let copy = data.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(&copy).await.unwrap();
        });
        let mut buf = vec![0u8; 2048];
        assert_eq!(fill(&mut r, &mut buf).await.unwrap(), 2048);
        assert_eq!(&buf[..], &data[..2048]);
        assert_eq!(fill(&mut r, &mut buf).await.unwrap(), 3000 - 2048);
        assert_eq!(fill(&mut r, &mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn stream_skip_hashes_skipped_bytes() {
        let data = b"hello world".to_vec();
        let mut src = Source::Stream(Box::new(std::io::Cursor::new(data.clone())));
        let mut hasher = Some(Sha256::new());
        src.skip_to(6, &mut hasher).await.unwrap();
        let mut buf = [0u8; 16];
        let n = src.read_chunk(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"world");
        hasher.as_mut().unwrap().update(&buf[..n]);
        assert_eq!(
            hex::encode(hasher.unwrap().finalize()),
            hex::encode(Sha256::digest(&data))
        );
        let mut short = Source::Stream(Box::new(std::io::Cursor::new(b"ab".to_vec())));
        assert!(short.skip_to(5, &mut None).await.is_err());
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::client;
    use crate::testing::Server;

    fn upload_of(reference: &str, expected: Option<String>, total: Option<u64>) -> Upload {
        Upload {
            reference: reference.to_string(),
            total,
            expected,
            labels: [("k".to_string(), "v".to_string())].into(),
            context: format!("content ingest {reference}"),
        }
    }

    fn stream(data: Vec<u8>) -> Source {
        Source::Stream(Box::new(std::io::Cursor::new(data)))
    }

    #[tokio::test]
    async fn uploads_in_chunks_with_headers() {
        let server = Server::start().await;
        let conn = client::connect(&server.global("testns"))
            .await
            .unwrap()
            .with_lease(Some("lease-1"))
            .unwrap();
        let data: Vec<u8> = (0..(CHUNK_SIZE * 2 + 10)).map(|i| i as u8).collect();
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let done = upload(&conn, upload_of("r1", None, None), stream(data.clone()))
            .await
            .unwrap();
        assert_eq!(done.digest, want);
        assert_eq!(done.size, data.len() as u64);
        assert!(!done.existed);
        let st = server.fake.0.lock().unwrap();
        assert_eq!(st.blobs[&want], data);
        assert_eq!(st.labels[&want]["k"], "v");
        assert_eq!(
            st.write_offsets,
            vec![0, CHUNK_SIZE as i64, 2 * CHUNK_SIZE as i64]
        );
        assert_eq!(
            st.headers,
            vec![("testns".to_string(), Some("lease-1".to_string()))]
        );
    }

    #[tokio::test]
    async fn resumes_existing_ingest_and_reports_existing_blobs() {
        let server = Server::start().await;
        let conn = client::connect(&server.global("default")).await.unwrap();
        let data = b"0123456789".to_vec();
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        server
            .fake
            .0
            .lock()
            .unwrap()
            .ingests
            .insert("r2".into(), (data[..4].to_vec(), 10));
        let done = upload(
            &conn,
            upload_of("r2", Some(want.clone()), Some(10)),
            stream(data.clone()),
        )
        .await
        .unwrap();
        assert_eq!(done.resumed_at, 4);
        assert_eq!(done.digest, want);
        assert_eq!(server.fake.0.lock().unwrap().write_offsets, vec![4]);

        // Now it exists: nothing to write.
        let again = upload(
            &conn,
            upload_of("r3", Some(want.clone()), Some(10)),
            stream(data),
        )
        .await
        .unwrap();
        assert!(again.existed);
        assert_eq!(again.digest, want);
        assert_eq!(server.fake.0.lock().unwrap().write_offsets, vec![4]);
    }

    #[tokio::test]
    async fn size_and_digest_mismatches_fail_with_context() {
        let server = Server::start().await;
        let conn = client::connect(&server.global("default")).await.unwrap();
        let err = upload(
            &conn,
            upload_of("r4", None, Some(3)),
            stream(b"ab".to_vec()),
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "content ingest r4: read 2 bytes, expected 3"
        );
        let bad = format!("sha256:{}", "0".repeat(64));
        let err = upload(
            &conn,
            upload_of("r5", Some(bad), None),
            stream(b"ab".to_vec()),
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "content ingest r5: FailedPrecondition: digest mismatch"
        );
    }

    #[tokio::test]
    async fn missing_socket_is_one_clear_line() {
        let server = Server::start().await;
        let mut g = server.global("default");
        g.address = server.dir.join("nope.sock");
        let err = client::connect(&g).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to berthd at {}: No such file or directory (is berthd running?)",
                g.address.display()
            )
        );
    }
}
