//! The daemon's ttrpc endpoint for shims
//! (`containerd.services.events.ttrpc.v1.Events/Forward`): events shims
//! publish go into the exchange like any other.

use std::sync::Arc;

use berth_proto::containerd::services::events::ttrpc::v1::ForwardRequest;
use berth_ttrpc::{self as ttrpc, BoxFuture, Code, RequestContext, Service};

use crate::events::Exchange;

pub struct ShimEvents {
    exchange: Exchange,
}

impl ShimEvents {
    pub fn new(exchange: Exchange) -> Arc<ShimEvents> {
        Arc::new(ShimEvents { exchange })
    }
}

impl Service for ShimEvents {
    fn name(&self) -> &str {
        "containerd.services.events.ttrpc.v1.Events"
    }

    fn call(
        self: Arc<Self>,
        method: &str,
        _: RequestContext,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, ttrpc::Status>> {
        let result = match method {
            "Forward" => ttrpc::decode::<ForwardRequest>(&payload).and_then(|req| {
                let envelope = req
                    .envelope
                    .ok_or_else(|| ttrpc::status(Code::InvalidArgument, "envelope must be set"))?;
                self.exchange.forward(envelope);
                Ok(ttrpc::encode(&()))
            }),
            other => Err(ttrpc::status(
                Code::Unimplemented,
                format!("method {other} not found"),
            )),
        };
        Box::pin(async move { result })
    }
}
