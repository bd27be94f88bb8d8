//! `containerd.services.events.v1.Events`.

use std::pin::Pin;

use berth_filters as filters;
use berth_metadata::validate::validate_identifier;
use berth_proto::containerd::services::events::v1::{
    events_server::Events, ForwardRequest, PublishRequest, SubscribeRequest,
};
use berth_proto::containerd::types::Envelope;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::{matches, validate_topic, Exchange};
use crate::error::to_status;
use crate::namespace::namespace;

pub struct EventsService {
    exchange: Exchange,
}

impl EventsService {
    pub fn new(exchange: Exchange) -> Self {
        EventsService { exchange }
    }
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        validate_topic(&req.topic).map_err(Status::invalid_argument)?;
        let event = req
            .event
            .ok_or_else(|| Status::invalid_argument("event must not be empty"))?;
        self.exchange.forward(Envelope {
            timestamp: Some(std::time::SystemTime::now().into()),
            namespace: ns,
            topic: req.topic,
            event: Some(event),
        });
        Ok(Response::new(()))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let envelope = request
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope must not be empty"))?;
        validate_topic(&envelope.topic).map_err(Status::invalid_argument)?;
        validate_identifier("namespace", &envelope.namespace).map_err(to_status)?;
        if envelope.event.is_none() {
            return Err(Status::invalid_argument("envelope event must not be empty"));
        }
        self.exchange.forward(envelope);
        Ok(Response::new(()))
    }

    type SubscribeStream = EnvelopeStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = filters::parse_all(&request.into_inner().filters).map_err(to_status)?;
        let (mut rx, mut closed) = self.exchange.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    // The client went away: stop without waiting for an event.
                    _ = tx.closed() => return,
                    _ = closed.wait_for(|c| *c) => return,
                };
                match received {
                    Ok(env) => {
                        if matches(&filter, &env) && tx.send(Ok(env)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "event subscriber too slow; events dropped");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small channel; the task ends when the
/// client goes away (send fails).
fn async_stream<F, Fut>(f: F) -> EnvelopeStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Envelope, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
