//! The ttrpc server: accepts connections, decodes requests, runs each call in its own task
//! and writes the responses back in whatever order they finish.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::{
    read_frame, status, write_frame, Code, Frame, KeyValue, Request, Response, Status,
    MAX_MESSAGE_LEN, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE,
};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler learns about its call besides the payload.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub metadata: Vec<KeyValue>,
    /// The client's timeout, when it set one.
    pub timeout: Option<Duration>,
}

/// One ttrpc service (`containerd.task.v2.Task`, ...).
pub trait Service: Send + Sync + 'static {
    /// The full service name, e.g. `containerd.task.v2.Task`.
    fn name(&self) -> &str;

    /// Handles one call to `method` with its encoded request; returns the encoded reply.
    fn call(
        self: Arc<Self>,
        method: &str,
        ctx: RequestContext,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, Status>>;
}

/// Decodes a request payload; a malformed one is `InvalidArgument`.
pub fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, Status> {
    M::decode(payload).map_err(|e| status(Code::InvalidArgument, format!("decode request: {e}")))
}

/// Encodes a reply.
pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// A set of services served on unix sockets.
#[derive(Clone, Default)]
pub struct Server {
    services: Arc<HashMap<String, Arc<dyn Service>>>,
}

impl Server {
    pub fn new() -> Server {
        Server::default()
    }

    /// Adds a service (before serving).
    pub fn register(mut self, service: Arc<dyn Service>) -> Server {
        Arc::make_mut(&mut self.services).insert(service.name().to_string(), service);
        self
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(&self, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let server = self.clone();
            tokio::spawn(async move { server.serve_connection(stream).await });
        }
    }

    /// Serves one connection until the peer closes it.
    pub async fn serve_connection(&self, stream: UnixStream) {
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((id, payload)) = rx.recv().await {
                if write_frame(&mut wr, id, MESSAGE_TYPE_RESPONSE, &payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        loop {
            let frame = match read_frame(&mut rd).await {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => break,
            };
            let (header, payload) = match frame {
                Frame::Message(h, p) => (h, p),
                Frame::Oversized(h) => {
                    let resp = error_response(status(
                        Code::ResourceExhausted,
                        format!("message length {} exceeds maximum", h.length),
                    ));
                    let _ = tx.send((h.stream_id, resp));
                    continue;
                }
            };
            if header.message_type != MESSAGE_TYPE_REQUEST {
                continue;
            }
            let tx = tx.clone();
            let services = self.services.clone();
            tokio::spawn(async move {
                let resp = match Request::decode(payload.as_slice()) {
                    Ok(req) => handle(&services, req).await,
                    Err(e) => error_response(status(Code::InvalidArgument, e.to_string())),
                };
                let _ = tx.send((header.stream_id, resp));
            });
        }
        drop(tx);
        let _ = writer.await;
    }
}

async fn handle(services: &HashMap<String, Arc<dyn Service>>, req: Request) -> Vec<u8> {
    let Some(service) = services.get(&req.service) else {
        return error_response(status(
            Code::Unimplemented,
            format!("service {} not found", req.service),
        ));
    };
    let ctx = RequestContext {
        metadata: req.metadata,
        timeout: (req.timeout_nano > 0).then(|| Duration::from_nanos(req.timeout_nano as u64)),
    };
    let call = service.clone().call(&req.method, ctx.clone(), req.payload);
    let result = match ctx.timeout {
        Some(t) => match tokio::time::timeout(t, call).await {
            Ok(r) => r,
            Err(_) => Err(status(Code::DeadlineExceeded, "deadline exceeded")),
        },
        None => call.await,
    };
    match result {
        Ok(payload) if payload.len() > MAX_MESSAGE_LEN => error_response(status(
            Code::ResourceExhausted,
            format!("response of {} bytes exceeds maximum", payload.len()),
        )),
        Ok(payload) => Response {
            status: Some(status(Code::Ok, "")),
            payload,
        }
        .encode_to_vec(),
        Err(s) => error_response(s),
    }
}

fn error_response(s: Status) -> Vec<u8> {
    Response {
        status: Some(s),
        payload: Vec::new(),
    }
    .encode_to_vec()
}
