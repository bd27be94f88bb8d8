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

use berth_content::{Digest, Landing};
use berth_metadata::{ContentWriter, ContentWriterOpts, Db};
use berth_proto::containerd::services::content::v1::{
    WriteAction, WriteContentRequest, WriteContentResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::early::{EarlyHasher, Hashed};
use super::{parse_digest, to_i64, BoxStream};
use crate::error::{blocking, join_error, to_status};

/// Appends smaller than this are copied in the step: handing them to another thread costs
/// more than the copy.
const HAND_OVER_MIN: u64 = 64 << 10;

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
    // However the session ends, data handed over but not taken (a message refused or cut
    // short) is cut off, and the rest is in place before the ref is free again, so that a
    // writer or an abort that comes next finds the ref unlocked and the data there.
    if let Some(mut writer) = slot.take() {
        let _ = tokio::task::spawn_blocking(move || writer.close_landing()).await;
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
    let mut ahead: Option<Ahead> = None;
    loop {
        let mut writer = slot
            .take()
            .ok_or_else(|| Status::internal("writer released unexpectedly"))?;
        // A plain append starts landing in the ingest now, while its hash is computed.
        let landed = ahead.as_ref().is_some_and(|a| a.hand_over(&req));
        let (db2, ns2) = (db.clone(), ns.to_string());
        let (hasher, replies) = (early.clone(), tx.clone());
        let run_step = move || {
            // One result per message, in order: this one's hash (done by now, on its thread).
            let hashed = match early.as_ref().map(|e| e.take()) {
                Some(Ok(hashed)) => hashed,
                Some(Err(())) => {
                    early = None;
                    None
                }
                None => None,
            };
            // The reply goes out from here, before the session's task is woken.
            let r = step(&db2, &ns2, &mut writer, &mut want, req, hashed, landed)
                .map(|resp| replies.blocking_send(Ok(resp)).is_ok());
            if want.discard {
                // Release the ref lock, then drop the ingest (containerd aborts it too).
                let reference = writer.reference().to_string();
                let _ = writer.close_landing();
                drop(writer);
                if let Err(e) = db2.content().abort(&ns2, &reference) {
                    tracing::debug!(error = %e, "abort of redundant ingest failed");
                }
                return (None, r.map(|sent| (sent, want)), early, None);
            }
            // The next message goes on from where this one left the ingest (after a failure
            // the session ends).
            let mut ahead = None;
            if let (Some(e), Ok(_)) = (&early, &r) {
                e.next_start(writer.hash_state());
                let status = writer.status();
                ahead = writer.landing().map(|landing| Ahead {
                    landing,
                    offset: status.offset,
                    total: status.total,
                });
            }
            (Some(writer), r.map(|sent| (sent, want)), early, ahead)
        };
        // On the hashing thread, right after this message's hash; else on the blocking pool.
        let ran = match hasher {
            Some(h) => h
                .run(run_step)
                .await
                .map_err(|_| Status::internal("content write step was dropped"))?,
            None => tokio::task::spawn_blocking(run_step)
                .await
                .map_err(join_error)?,
        };
        let (w, result, e, a) = ran;
        (early, ahead) = (e, a);
        *slot = w;
        let (sent, w2) = result?;
        want = w2;
        if !sent {
            return Ok(());
        }
        req = match stream.message().await? {
            Some(r) => r,
            None => return Ok(()),
        };
    }
}

/// Where the next message's data can go as soon as it is decoded: the writer's landing, at
/// the ingest's offset, within its declared total (0: none).
struct Ahead {
    landing: Landing,
    offset: u64,
    total: u64,
}

impl Ahead {
    /// Hands `req`'s data to the landing if the message appends at the ingest's end (WRITE
    /// or COMMIT at its offset, within the declared total) and is worth a copy on another
    /// thread; whether it did. A step that then refuses the message for another reason ends
    /// the session, which cuts the data off again.
    fn hand_over(&self, req: &WriteContentRequest) -> bool {
        let len = req.data.len() as u64;
        let appends = matches!(
            WriteAction::try_from(req.action),
            Ok(WriteAction::Write | WriteAction::Commit)
        ) && u64::try_from(req.offset) == Ok(self.offset);
        let total = match u64::try_from(req.total) {
            Ok(0) => Some(self.total),
            total => total.ok(),
        };
        let fits = match (total, self.offset.checked_add(len)) {
            (Some(total), Some(end)) => total == 0 || end <= total,
            _ => false,
        };
        appends
            && fits
            && len >= HAND_OVER_MIN
            && self.landing.write_at(self.offset, req.data.clone())
    }
}

/// Handles one request against the locked writer (blocking I/O).
fn step(
    db: &Db,
    ns: &str,
    writer: &mut ContentWriter,
    want: &mut Expectation,
    req: WriteContentRequest,
    hashed: Option<Hashed>,
    landed: bool,
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
            // Hashed (and landed) early from the ingest before this message: usable unless
            // truncated.
            let truncated = offset == 0 && status.offset > 0;
            if truncated {
                writer.truncate(0).map_err(to_status)?;
                resp.offset = 0;
            }
            if !req.data.is_empty() {
                let len = req.data.len() as u64;
                let hashed = hashed
                    .filter(|h| h.len == len && !truncated)
                    .map(|h| h.state);
                if landed && hashed.is_none() {
                    writer.drop_landed().map_err(to_status)?;
                }
                match (hashed, landed) {
                    (Some(after), true) => writer.adopt(len, after),
                    (Some(after), false) => writer.write_hashed(&req.data, after),
                    (None, _) => writer.write(&req.data),
                }
                .map_err(to_status)?;
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
