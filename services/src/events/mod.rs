//! The events exchange: the daemon's own publications and those of clients
//! (Publish) and shims (Forward), fanned out to subscribers.

mod service;

pub use service::EventsService;

use std::time::SystemTime;

use berth_filters::{Adaptor, Filter};
use berth_metadata::validate::validate_identifier;
use berth_proto::containerd::types::Envelope;
use prost::Name;
use tokio::sync::broadcast;

/// Buffered envelopes per subscriber before it is told it lagged.
const CAPACITY: usize = 4096;

#[derive(Clone)]
pub struct Exchange {
    tx: broadcast::Sender<Envelope>,
    /// Flips to true at shutdown so open Subscribe streams end.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new()
    }
}

impl Exchange {
    pub fn new() -> Exchange {
        let (tx, _) = broadcast::channel(CAPACITY);
        let (closed, _) = tokio::sync::watch::channel(false);
        Exchange { tx, closed }
    }

    /// Publishes an event the daemon itself raised, after the change it
    /// describes has committed.
    pub fn publish<M: Name>(&self, namespace: &str, topic: &str, event: &M) {
        let any = prost_types::Any {
            // containerd's typeurl registry knows events by bare full name.
            type_url: M::full_name(),
            value: event.encode_to_vec(),
        };
        self.forward(Envelope {
            timestamp: Some(SystemTime::now().into()),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(any),
        });
    }

    /// Sends an envelope as is (Forward, or Publish after validation).
    pub fn forward(&self, envelope: Envelope) {
        tracing::debug!(topic = %envelope.topic, namespace = %envelope.namespace, "event");
        // No subscribers is not an error.
        let _ = self.tx.send(envelope);
    }

    /// A feed of every envelope from now on, and a signal that fires at shutdown.
    pub fn subscribe(
        &self,
    ) -> (
        broadcast::Receiver<Envelope>,
        tokio::sync::watch::Receiver<bool>,
    ) {
        (self.tx.subscribe(), self.closed.subscribe())
    }

    /// Ends every subscription (daemon shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// Exposes an envelope's fields to containerd filters:
/// `topic`, `namespace`, and `event.*` (not decoded: never matches).
struct EnvelopeFields<'a>(&'a Envelope);

impl Adaptor for EnvelopeFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("topic") if path.len() == 1 => Some(self.0.topic.clone()),
            Some("namespace") if path.len() == 1 => Some(self.0.namespace.clone()),
            _ => None,
        }
    }
}

/// True when the envelope passes the subscriber's filter.
fn matches(filter: &Filter, envelope: &Envelope) -> bool {
    filter.matches(&EnvelopeFields(envelope))
}

/// containerd's topic rule: "/" then identifier components.
fn validate_topic(topic: &str) -> Result<(), String> {
    let Some(rest) = topic.strip_prefix('/') else {
        return Err(format!("topic {topic:?} must start with '/'"));
    };
    if rest.is_empty() {
        return Err(format!("topic {topic:?} must have at least one component"));
    }
    for component in rest.split('/') {
        validate_identifier("topic component", component)
            .map_err(|e| format!("topic {topic:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_containerd_rules() {
        assert!(validate_topic("/namespaces/create").is_ok());
        assert!(validate_topic("namespaces/create").is_err());
        assert!(validate_topic("/").is_err());
        assert!(validate_topic("/a//b").is_err());
        assert!(validate_topic("/a/b c").is_err());
    }
}
