//! One Content.Write session: the STAT / WRITE / COMMIT protocol over a
//! bidirectional stream, with containerd's semantics:
//! - the first message must carry a ref, which the session then holds
//!   exclusively (a second session on it gets Unavailable);
//! - every response carries the offset; STAT also the digest so far, the
//!   total and the ingest's timestamps;
//! - an expected digest that is already present gives AlreadyExists;
//! - a WRITE at an offset other than the current one gives OutOfRange, and
//!   offset 0 after data restarts the ingest;
//! - a failed COMMIT ends the session but keeps the ingest for a retry.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_content::Digest;
use berth_metadata::{ContentWriter, ContentWriterOpts, Db};
use berth_proto::containerd::services::content::v1::{
    WriteAction, WriteContentRequest, WriteContentResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::early::{EarlyHasher, Start};
use super::{parse_digest, to_i64, BoxStream};
use crate::error::{blocking, join_error, to_status};

pub fn serve(
    db: Arc<Db>,
    ns: String,
    lease: Option<String>,
    stream: Streaming<WriteContentRequest>,
    early: Option<Arc<EarlyHasher>>,
) -> BoxStream<WriteContentResponse> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Err(status) = session(db, ns, lease, stream, early, &tx).await {
            if status.code() != tonic::Code::NotFound {
                tracing::debug!(error = %status.message(), "content write failed");
            }
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// What the session has learnt about the blob so far.
struct Expectation {
    total: u64,
    expected: Option<Digest>,
    /// The blob turned out to exist: drop the ingest when the session ends.
    discard: bool,
}

async fn session(
    db: Arc<Db>,
    ns: String,
    lease: Option<String>,
    mut stream: Streaming<WriteContentRequest>,
    early: Option<Arc<EarlyHasher>>,
    tx: &mpsc::Sender<Result<WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(req) = stream.message().await? else {
        return Ok(());
    };
    if req.r#ref.is_empty() {
        return Err(Status::invalid_argument(
            "first message must have a reference",
        ));
    }
    let want = Expectation {
        total: non_negative("total", req.total)?,
        expected: optional_digest(&req.expected)?,
        discard: false,
    };
    let writer = {
        let (db, ns, reference) = (db.clone(), ns.clone(), req.r#ref.clone());
        let (total, expected) = (want.total, want.expected);
        blocking(move || {
            db.content().writer(
                &ns,
                ContentWriterOpts {
                    reference,
                    total: (total > 0).then_some(total),
                    expected,
                    lease,
                },
            )
        })
        .await?
    };
    let mut slot = Some(writer);
    let result = steps(&db, &ns, &mut slot, req, want, stream, early, tx).await;
    // However the session ends, queued data lands before the ref is free again, so that a
    // writer or an abort that comes next finds the ref unlocked and the data there.
    if let Some(mut writer) = slot.take() {
        let _ = tokio::task::spawn_blocking(move || writer.wait_written()).await;
    }
    result
}

/// The session's messages after the first, against the writer in `slot` (taken out for
/// each step, put back after it; `None` once released).
#[allow(clippy::too_many_arguments)]
async fn steps(
    db: &Arc<Db>,
    ns: &str,
    slot: &mut Option<ContentWriter>,
    mut req: WriteContentRequest,
    mut want: Expectation,
    mut stream: Streaming<WriteContentRequest>,
    mut early: Option<Arc<EarlyHasher>>,
    tx: &mpsc::Sender<Result<WriteContentResponse, Status>>,
) -> Result<(), Status> {
    loop {
        let mut writer = slot
            .take()
            .ok_or_else(|| Status::internal("writer released unexpectedly"))?;
        let (db2, ns2) = (db.clone(), ns.to_string());
        let (w, result, e) = tokio::task::spawn_blocking(move || {
            let mut deferred = false;
            let r = step(
                &db2,
                &ns2,
                &mut writer,
                &mut want,
                req,
                early.as_ref(),
                &mut deferred,
            );
            if want.discard {
                // Release the ref lock, then drop the ingest (containerd aborts it too).
                let reference = writer.reference().to_string();
                let _ = writer.wait_written();
                drop(writer);
                if let Err(e) = db2.content().abort(&ns2, &reference) {
                    tracing::debug!(error = %e, "abort of redundant ingest failed");
                }
                return (None, r.map(|resp| (resp, want)), early);
            }
            // One result per message, in order, used or not, keeps the thread in step; the
            // next message's hash continues from this one's or from the writer's state.
            if let Some(e) = early.clone() {
                if deferred {
                    e.next_start(Start::Chain);
                } else {
                    // The pending hashes take their (earlier) results first.
                    let state = writer.hash_state();
                    match e.take() {
                        Ok(_) => e.next_start(Start::From(state)),
                        Err(()) => early = None,
                    }
                }
            }
            (Some(writer), r.map(|resp| (resp, want)), early)
        })
        .await
        .map_err(join_error)?;
        early = e;
        *slot = w;
        let (resp, w2) = result?;
        want = w2;
        if tx.send(Ok(resp)).await.is_err() {
            return Ok(());
        }
        req = match stream.message().await? {
            Some(r) => r,
            None => return Ok(()),
        };
    }
}

/// Handles one request against the locked writer (blocking I/O).
fn step(
    db: &Db,
    ns: &str,
    writer: &mut ContentWriter,
    want: &mut Expectation,
    req: WriteContentRequest,
    early: Option<&Arc<EarlyHasher>>,
    deferred: &mut bool,
) -> Result<WriteContentResponse, Status> {
    let action = WriteAction::try_from(req.action)
        .map_err(|_| Status::invalid_argument(format!("unknown write action {}", req.action)))?;
    let offset = non_negative("offset", req.offset)?;
    let total = non_negative("total", req.total)?;
    let status = writer.status();
    let mut resp = WriteContentResponse {
        action: req.action,
        offset: to_i64(status.offset),
        ..Default::default()
    };

    if let Some(expected) = optional_digest(&req.expected)? {
        want.expected = Some(expected);
        if db.content().info(ns, &expected).is_ok() {
            want.discard = true;
            return Err(Status::already_exists(format!(
                "blob with expected digest {expected} exists"
            )));
        }
    }
    if total > 0 {
        want.total = total;
        writer.set_total(total).map_err(to_status)?;
    }

    match action {
        WriteAction::Stat => {
            resp.digest = writer.digest().to_string();
            resp.started_at = Some(status.started_at.into());
            resp.updated_at = Some(status.updated_at.into());
            resp.total = to_i64(if want.total > 0 {
                want.total
            } else {
                status.total
            });
        }
        WriteAction::Write | WriteAction::Commit => {
            if offset > 0 && offset != status.offset {
                return Err(Status::out_of_range(format!(
                    "write @{offset} must occur at current offset {}",
                    status.offset
                )));
            }
            // Hashed early from the state before this message: usable unless truncated.
            let truncated = offset == 0 && status.offset > 0;
            if truncated {
                writer.truncate(0).map_err(to_status)?;
                resp.offset = 0;
            }
            if !req.data.is_empty() {
                let len = req.data.len() as u64;
                match early.filter(|_| !truncated) {
                    // The thread hashed this data onto the ingest's state before it.
                    Some(e) => {
                        let e = Arc::clone(e);
                        writer.write_hash_later(req.data.clone(), move || {
                            e.take()
                                .ok()
                                .flatten()
                                .filter(|h| h.len == len)
                                .map(|h| h.state)
                        })
                    }
                    None => writer.write(&req.data),
                }
                .map_err(to_status)?;
                *deferred = early.is_some() && !truncated;
                resp.offset += to_i64(len);
            }
            let digest = if action == WriteAction::Commit {
                let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
                writer
                    .commit(want.total, want.expected, labels)
                    .map_err(to_status)?
            } else {
                writer.digest()
            };
            resp.digest = digest.to_string();
        }
    }
    Ok(resp)
}

fn non_negative(what: &str, v: i64) -> Result<u64, Status> {
    u64::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("{what} {v} must not be negative")))
}

fn optional_digest(s: &str) -> Result<Option<Digest>, Status> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_digest(s).map(Some)
    }
}
