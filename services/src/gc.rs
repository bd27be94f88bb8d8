//! Runs metadata garbage collection: in the background shortly after
//! deletions (bursts share one run), or right away for `sync` requests.

use std::sync::Arc;
use std::time::Duration;

use berth_metadata::Db;
use tokio::sync::{Mutex, Notify};
use tonic::Status;

use crate::error::blocking;

#[derive(Clone)]
pub struct GcScheduler {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    wake: Notify,
    /// One collection at a time.
    running: Mutex<()>,
}

impl GcScheduler {
    /// Starts the background collector.
    pub fn start(db: Arc<Db>, delay: Duration) -> GcScheduler {
        let inner = Arc::new(Inner {
            db,
            wake: Notify::new(),
            running: Mutex::new(()),
        });
        let bg = inner.clone();
        tokio::spawn(async move {
            loop {
                bg.wake.notified().await;
                tokio::time::sleep(delay).await;
                if let Err(status) = collect(&bg).await {
                    tracing::warn!(error = %status.message(), "background garbage collection failed");
                }
            }
        });
        GcScheduler { inner }
    }

    /// Asks for a collection soon.
    pub fn schedule(&self) {
        self.inner.wake.notify_one();
    }

    /// Collects now and returns when done.
    pub async fn run_now(&self) -> Result<(), Status> {
        collect(&self.inner).await
    }
}

async fn collect(inner: &Arc<Inner>) -> Result<(), Status> {
    let _guard = inner.running.lock().await;
    let db = inner.db.clone();
    let stats = blocking(move || db.garbage_collect()).await?;
    tracing::debug!(?stats, "garbage collection done");
    Ok(())
}
