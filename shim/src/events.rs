//! Publishing task events to the daemon (`containerd.services.events.ttrpc.v1.Events/Forward`
//! on the daemon's `TTRPC_ADDRESS`), one at a time and in the order they were published.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_proto::containerd::services::events::ttrpc::v1::ForwardRequest;
use berth_proto::containerd::types::Envelope;
use prost::{Message, Name};
use tokio::sync::mpsc;

use crate::ttrpc::EventsClient;

/// Queues events for the forwarder task.
#[derive(Clone)]
pub struct Publisher {
    namespace: String,
    tx: Option<mpsc::UnboundedSender<Envelope>>,
    /// Events queued and not yet handled by the forwarder.
    queued: Arc<AtomicUsize>,
}

impl Publisher {
    /// A publisher and the task that forwards its events to `address` (none: events are
    /// dropped). Run the task; it ends once every publisher is dropped and the queue is sent.
    pub fn new(
        namespace: &str,
        address: Option<String>,
    ) -> (Publisher, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let publisher = Publisher {
            namespace: namespace.to_string(),
            tx: address.as_ref().map(|_| tx),
            queued: queued.clone(),
        };
        (publisher, forward(address, rx, queued))
    }

    /// Queues `event` under `topic` (e.g. `/tasks/exit`).
    pub fn publish<E: Message + Name>(&self, topic: &str, event: &E) {
        let Some(tx) = &self.tx else { return };
        let envelope = Envelope {
            timestamp: Some(SystemTime::now().into()),
            namespace: self.namespace.clone(),
            topic: topic.to_string(),
            event: Some(prost_types::Any {
                type_url: E::full_name(),
                value: event.encode_to_vec(),
            }),
        };
        self.queued.fetch_add(1, Ordering::SeqCst);
        if tx.send(envelope).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits (at most `limit`) until every queued event has been forwarded or given up on.
    pub async fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.queued.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

const ATTEMPTS: u32 = 5;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn forward(
    address: Option<String>,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    queued: Arc<AtomicUsize>,
) {
    let Some(address) = address else { return };
    let mut client: Option<EventsClient> = None;
    while let Some(envelope) = rx.recv().await {
        let req = ForwardRequest {
            envelope: Some(envelope),
        };
        for attempt in 0..ATTEMPTS {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = EventsClient::connect(&address).await.ok();
            }
            if let Some(c) = &client {
                match c.forward(&req, CALL_TIMEOUT).await {
                    Ok(()) => break,
                    Err(e) => {
                        log_line!("forward event to {address}: {e}");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        queued.fetch_sub(1, Ordering::SeqCst);
    }
}
