//! Landing: data copied into an ingest ahead of its writer, by a thread of the writer's own.
//! Whoever receives the data (the daemon's Content.Write session, as soon as a message is
//! decoded) hands it to a [`Landing`] at the offset the writer will reach; the writer then
//! [adopts](crate::Writer::adopt) it, once its hash is known too, so the copy into the page
//! cache runs alongside the hashing instead of after it.
//!
//! What the rest of the store sees does not change: every writer operation first waits for
//! queued data to land ([`Lander::drain`]), statuses of the ingest wait too
//! ([`InFlight::wait_idle`], reached through the ref lock), and the ref lock itself is
//! released only after the last queued write. Once the writer closes its landing, nothing
//! more is taken. A failed write stops the thread's writing; the writer learns of it at its
//! next operation and cuts off everything it had not adopted.

use std::fs::File;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::locks::RefLock;
use crate::writer::{write_back_if_due, write_in_pieces};

/// Writes queued at most; [`Landing::write_at`] refuses more.
const QUEUE_DEPTH: usize = 4;
/// How long a status waits for an active writer's queue before reading what landed.
const STATUS_WAIT: Duration = Duration::from_secs(10);

/// What a writer's landing has done, shared with the store through the ref lock.
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
    /// The first failure.
    error: Option<String>,
    /// The writer has closed its landing: nothing more is queued.
    closed: bool,
    /// Threads waiting for `done` to reach `queued` (the landing thread wakes them only
    /// then).
    waiting: usize,
}

impl InFlight {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (bounded) until everything queued has been written or has failed.
    pub(crate) fn wait_idle(&self) {
        drop(self.wait_done(Some(STATUS_WAIT)));
    }

    /// Waits until everything queued has been written or has failed, or `limit` passed.
    fn wait_done(&self, limit: Option<Duration>) -> MutexGuard<'_, Progress> {
        let deadline = limit.map(|l| Instant::now() + l);
        let mut p = self.progress();
        p.waiting += 1;
        while p.done < p.queued {
            p = match deadline {
                None => self.changed.wait(p).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        tracing::warn!("ingest writes still queued after {limit:?}");
                        break;
                    };
                    self.changed
                        .wait_timeout(p, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        p.waiting -= 1;
        p
    }
}

enum Job {
    Write(u64, Bytes),
    /// Drop the writer's ref lock: everything before it has landed.
    Release(RefLock),
}

/// Writes data into an ingest ahead of its writer (see the module documentation). Cheap to
/// clone; every clone stops taking data once the writer closes its landing.
#[derive(Clone)]
pub struct Landing {
    jobs: mpsc::SyncSender<Job>,
    in_flight: Arc<InFlight>,
}

impl std::fmt::Debug for Landing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Landing")
    }
}

impl Landing {
    /// Queues `data` to be written at `offset`, without waiting. `false` when the landing
    /// is closed, full or its thread gone: the data was not taken.
    pub fn write_at(&self, offset: u64, data: Bytes) -> bool {
        let len = data.len() as u64;
        {
            let mut p = self.in_flight.progress();
            if p.closed {
                return false;
            }
            p.queued += len;
        }
        if self.jobs.try_send(Job::Write(offset, data)).is_ok() {
            return true;
        }
        self.in_flight.progress().queued -= len;
        false
    }
}

/// The writer's side of its landing thread.
pub(crate) struct Lander {
    landing: Landing,
}

impl std::fmt::Debug for Lander {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lander")
    }
}

impl Lander {
    /// Starts the thread on a handle of `file`; data written before is at `offset`.
    pub(crate) fn start(
        file: &File,
        in_flight: Arc<InFlight>,
        offset: u64,
    ) -> std::io::Result<Lander> {
        let file = file.try_clone()?;
        {
            let mut p = in_flight.progress();
            p.error = None;
            p.closed = false;
        }
        let (jobs, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let shared = in_flight.clone();
        std::thread::Builder::new()
            .name("ingest-land".into())
            .spawn(move || run(file, rx, &shared, offset))?;
        Ok(Lander {
            landing: Landing { jobs, in_flight },
        })
    }

    /// A handle for whoever receives the data.
    pub(crate) fn landing(&self) -> Landing {
        self.landing.clone()
    }

    /// Waits until everything queued has landed; on a failure, what went wrong.
    pub(crate) fn drain(&self) -> Result<(), String> {
        match &self.landing.in_flight.wait_done(None).error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Takes no more data from any [`Landing`] (what was queued still lands).
    pub(crate) fn close(&self) {
        self.landing.in_flight.progress().closed = true;
    }

    /// Ends the landing: `lock` is dropped now if nothing is in flight, else by the thread
    /// after what is queued has landed.
    pub(crate) fn release(self, lock: Option<RefLock>) {
        let idle = {
            let mut p = self.landing.in_flight.progress();
            p.closed = true;
            p.done >= p.queued
        };
        if let (Some(lock), false) = (lock, idle) {
            // A gone thread has nothing left to write: the lock then drops here.
            let _ = self.landing.jobs.send(Job::Release(lock));
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
        let len = data.len() as u64;
        let written = (!failed).then(|| write_in_pieces(&file, &data, offset));
        let end = offset + len;
        let wake = {
            let mut p = in_flight.progress();
            p.done += len;
            if let Some(Err(e)) = &written {
                failed = true;
                p.error = Some(e.to_string());
            }
            p.waiting > 0
        };
        if wake {
            in_flight.changed.notify_all();
        }
        if matches!(written, Some(Ok(()))) {
            write_back_if_due(&file, &mut writeback_from, end);
        }
    }
}
