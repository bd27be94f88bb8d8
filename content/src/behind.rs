//! Write-behind for an ingest: large chunks handed to [`Behind::queue`] are copied into the
//! page cache by a thread of the writer's own, so the caller can answer its client (who
//! waits for that answer before it sends more) while the copy runs.
//!
//! What the rest of the store sees does not change: every other writer operation first
//! waits for the queue to land ([`Behind::drain`]), statuses of the ingest wait too
//! ([`InFlight::wait_idle`], reached through the ref lock), and the ref lock itself is
//! released only after the last queued write. A failed write stops the thread's writing;
//! the writer learns where the good data ends at its next operation.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::locks::RefLock;
use crate::writer::{start_writeback, WRITEBACK_CHUNK};

/// Chunks queued at most before `queue` waits (about 4 MiB of 1 MiB messages).
const QUEUE_DEPTH: usize = 4;
/// How long a status waits for an active writer's queue before reading what landed.
const STATUS_WAIT: Duration = Duration::from_secs(10);

/// What a writer's queue has done, shared with the store through the ref lock.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    progress: Mutex<Progress>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Progress {
    /// Bytes queued and bytes done with (written or failed), since the writer opened.
    queued: u64,
    done: u64,
    /// The end of the data known to be written, and the first failure.
    good_end: u64,
    error: Option<String>,
}

impl InFlight {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (bounded) until everything queued has been written or has failed.
    pub(crate) fn wait_idle(&self) {
        let deadline = Instant::now() + STATUS_WAIT;
        let mut p = self.progress();
        while p.done < p.queued {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!("ingest writes still queued after {STATUS_WAIT:?}");
                return;
            };
            p = self
                .changed
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

enum Job {
    Write(u64, Bytes),
    /// Drop the writer's ref lock: everything before it has landed.
    Release(RefLock),
}

/// The queue and its thread, for one open writer.
pub(crate) struct Behind {
    jobs: mpsc::SyncSender<Job>,
    in_flight: Arc<InFlight>,
}

impl std::fmt::Debug for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Behind")
    }
}

impl Behind {
    /// Starts the thread on a handle of `file`; data written before is at `offset`.
    pub(crate) fn start(
        file: &File,
        in_flight: Arc<InFlight>,
        offset: u64,
    ) -> std::io::Result<Behind> {
        let file = file.try_clone()?;
        {
            let mut p = in_flight.progress();
            p.good_end = offset;
            p.error = None;
        }
        let (jobs, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let shared = in_flight.clone();
        std::thread::Builder::new()
            .name("ingest-write".into())
            .spawn(move || run(file, rx, &shared, offset))?;
        Ok(Behind { jobs, in_flight })
    }

    /// Queues `data` for `offset` (waiting while the queue is full). `false` when the thread
    /// is gone: the caller writes itself.
    pub(crate) fn queue(&self, offset: u64, data: Bytes) -> bool {
        let len = data.len() as u64;
        self.in_flight.progress().queued += len;
        if self.jobs.send(Job::Write(offset, data)).is_ok() {
            return true;
        }
        let mut p = self.in_flight.progress();
        p.queued -= len;
        false
    }

    /// Waits until everything queued has landed; on a failure, where the good data ends
    /// and what went wrong.
    pub(crate) fn drain(&self) -> Result<(), (u64, String)> {
        let mut p = self.in_flight.progress();
        while p.done < p.queued {
            p = self
                .in_flight
                .changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
        match &p.error {
            Some(e) => Err((p.good_end, e.clone())),
            None => Ok(()),
        }
    }

    /// Ends the queue: `lock` is dropped now if nothing is in flight, else by the thread
    /// after what is queued has landed.
    pub(crate) fn release(self, lock: Option<RefLock>) {
        let Some(lock) = lock else {
            return;
        };
        let idle = {
            let p = self.in_flight.progress();
            p.done >= p.queued
        };
        if !idle {
            // A gone thread has nothing left to write: the lock then drops here.
            let _ = self.jobs.send(Job::Release(lock));
        }
    }
}

fn run(file: File, jobs: mpsc::Receiver<Job>, in_flight: &InFlight, offset: u64) {
    let mut failed = false;
    let mut writeback_from = offset;
    for job in jobs {
        let (offset, data) = match job {
            Job::Write(offset, data) => (offset, data),
            Job::Release(lock) => {
                drop(lock);
                continue;
            }
        };
        let written = if failed {
            None
        } else {
            Some(file.write_all_at(&data, offset))
        };
        let end = offset + data.len() as u64;
        {
            let mut p = in_flight.progress();
            p.done += data.len() as u64;
            match &written {
                Some(Ok(())) => p.good_end = end,
                Some(Err(e)) => {
                    failed = true;
                    p.error = Some(e.to_string());
                }
                None => {}
            }
        }
        in_flight.changed.notify_all();
        if matches!(written, Some(Ok(()))) && end.saturating_sub(writeback_from) >= WRITEBACK_CHUNK
        {
            start_writeback(&file, writeback_from, end - writeback_from);
            writeback_from = end;
        }
    }
}
