//! The ttrpc client: one connection, many concurrent calls told apart by stream id.

use std::collections::HashMap;
use std::os::linux::net::SocketAddrExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::containerd::services::events::ttrpc::v1::ForwardRequest;
use berth_proto::containerd::task::v2 as task;
use prost::Message;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::{
    read_frame, socket_path, write_frame, Code, Error, Frame, KeyValue, Request, Response,
    MAX_MESSAGE_LEN, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE,
};

type Pending = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Result<Response, Error>>>>>>;

/// A ttrpc connection. Cloning shares it; it closes when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Calls waiting for their response; `None` once the connection is gone.
    pending: Pending,
    next_id: AtomicU32,
    reader: tokio::task::JoinHandle<()>,
    /// Becomes true when the connection ends.
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects to `address`: `unix:///path`, `/path` or an abstract socket name.
    pub async fn connect(address: &str) -> Result<Client, Error> {
        let path = socket_path(address);
        let stream = if let Some(name) = path.strip_prefix('\0') {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            s.set_nonblocking(true)?;
            UnixStream::from_std(s)?
        } else {
            UnixStream::connect(&path).await?
        };
        Ok(Client::new(stream))
    }

    /// Wraps a connected stream (must be called within a tokio runtime).
    pub fn new(stream: UnixStream) -> Client {
        let (mut rd, wr) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader_pending = pending.clone();
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let reader = tokio::spawn(async move {
            loop {
                match read_frame(&mut rd).await {
                    Ok(Some(Frame::Message(h, payload))) => {
                        if h.message_type != MESSAGE_TYPE_RESPONSE {
                            continue;
                        }
                        let waiter = reader_pending
                            .lock()
                            .unwrap()
                            .as_mut()
                            .and_then(|p| p.remove(&h.stream_id));
                        if let Some(w) = waiter {
                            let _ =
                                w.send(Response::decode(payload.as_slice()).map_err(Error::from));
                        }
                    }
                    Ok(Some(Frame::Oversized(h))) => {
                        let waiter = reader_pending
                            .lock()
                            .unwrap()
                            .as_mut()
                            .and_then(|p| p.remove(&h.stream_id));
                        if let Some(w) = waiter {
                            let _ = w.send(Err(Error::TooLarge(h.length as usize)));
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            // Fail every call still waiting, and any made from now on.
            reader_pending.lock().unwrap().take();
            closed_tx.send_replace(true);
        });
        Client {
            inner: Arc::new(Inner {
                writer: tokio::sync::Mutex::new(wr),
                pending,
                next_id: AtomicU32::new(1),
                reader,
                closed,
            }),
        }
    }

    /// Calls `service/method` with `req`, without a timeout.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
    ) -> Result<Resp, Error> {
        self.call_with(service, method, req, None, Vec::new()).await
    }

    /// Calls `service/method` with `req`, a timeout (sent to the server too) and metadata.
    pub async fn call_with<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        timeout: Option<Duration>,
        metadata: Vec<KeyValue>,
    ) -> Result<Resp, Error> {
        let request = Request {
            service: service.to_string(),
            method: method.to_string(),
            payload: req.encode_to_vec(),
            timeout_nano: timeout.map_or(0, |t| t.as_nanos().min(i64::MAX as u128) as i64),
            metadata,
        }
        .encode_to_vec();
        if request.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLarge(request.len()));
        }
        let id = self.inner.next_id.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.inner.pending.lock().unwrap().as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(Error::Closed),
        };
        let exchange = async {
            {
                let mut w = self.inner.writer.lock().await;
                write_frame(&mut *w, id, MESSAGE_TYPE_REQUEST, &request).await?;
            }
            rx.await.map_err(|_| Error::Closed)?
        };
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .unwrap_or(Err(Error::Timeout)),
            None => exchange.await,
        };
        if result.is_err() {
            if let Some(p) = self.inner.pending.lock().unwrap().as_mut() {
                p.remove(&id);
            }
        }
        let response = result?;
        match response.status {
            Some(s) if s.code != Code::Ok as i32 => Err(Error::Status(s)),
            _ => Ok(Resp::decode(response.payload.as_slice())?),
        }
    }

    /// Whether the connection has ended (the peer closed it or it failed).
    pub fn is_closed(&self) -> bool {
        self.inner.pending.lock().unwrap().is_none()
    }

    /// Resolves when the connection ends (the peer exited or closed it).
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        // An error means the reader is gone, which also means closed.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// The shim v2 task API (`containerd.task.v2.Task`) over a [`Client`].
#[derive(Clone)]
pub struct TaskClient {
    client: Client,
    timeout: Option<Duration>,
}

macro_rules! task_methods {
    ($($(#[$doc:meta])* $fn:ident => $method:literal ($req:ty) -> $resp:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $fn(&self, req: &$req) -> Result<$resp, Error> {
                self.client
                    .call_with(TaskClient::SERVICE, $method, req, self.timeout, Vec::new())
                    .await
            }
        )*
    };
}

impl TaskClient {
    /// The service name.
    pub const SERVICE: &'static str = "containerd.task.v2.Task";

    pub fn new(client: Client) -> TaskClient {
        TaskClient {
            client,
            timeout: None,
        }
    }

    /// Connects to a shim's address.
    pub async fn connect(address: &str) -> Result<TaskClient, Error> {
        Ok(TaskClient::new(Client::connect(address).await?))
    }

    /// Sets a timeout for every call but `wait` (which blocks until the process exits).
    pub fn with_timeout(mut self, timeout: Duration) -> TaskClient {
        self.timeout = Some(timeout);
        self
    }

    /// The underlying connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `Wait`: blocks until the process exits (no timeout).
    pub async fn wait(&self, req: &task::WaitRequest) -> Result<task::WaitResponse, Error> {
        self.client.call(TaskClient::SERVICE, "Wait", req).await
    }

    task_methods! {
        state => "State" (task::StateRequest) -> task::StateResponse;
        create => "Create" (task::CreateTaskRequest) -> task::CreateTaskResponse;
        start => "Start" (task::StartRequest) -> task::StartResponse;
        delete => "Delete" (task::DeleteRequest) -> task::DeleteResponse;
        pids => "Pids" (task::PidsRequest) -> task::PidsResponse;
        pause => "Pause" (task::PauseRequest) -> ();
        resume => "Resume" (task::ResumeRequest) -> ();
        checkpoint => "Checkpoint" (task::CheckpointTaskRequest) -> ();
        kill => "Kill" (task::KillRequest) -> ();
        exec => "Exec" (task::ExecProcessRequest) -> ();
        resize_pty => "ResizePty" (task::ResizePtyRequest) -> ();
        close_io => "CloseIO" (task::CloseIoRequest) -> ();
        update => "Update" (task::UpdateTaskRequest) -> ();
        stats => "Stats" (task::StatsRequest) -> task::StatsResponse;
        connect_shim => "Connect" (task::ConnectRequest) -> task::ConnectResponse;
        /// `Shutdown`: the shim exits once it has no tasks (or at once with `now`); the
        /// connection closes, so an `Error::Closed` here is success too.
        shutdown => "Shutdown" (task::ShutdownRequest) -> ();
    }
}

/// The daemon's event forwarder (`containerd.services.events.ttrpc.v1.Events`).
#[derive(Clone)]
pub struct EventsClient {
    client: Client,
}

impl EventsClient {
    /// The service name.
    pub const SERVICE: &'static str = "containerd.services.events.ttrpc.v1.Events";

    pub fn new(client: Client) -> EventsClient {
        EventsClient { client }
    }

    /// Connects to the daemon's ttrpc address.
    pub async fn connect(address: &str) -> Result<EventsClient, Error> {
        Ok(EventsClient::new(Client::connect(address).await?))
    }

    /// `Forward`: hands an event envelope to the daemon.
    pub async fn forward(&self, req: &ForwardRequest, timeout: Duration) -> Result<(), Error> {
        self.client
            .call_with(
                EventsClient::SERVICE,
                "Forward",
                req,
                Some(timeout),
                Vec::new(),
            )
            .await
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}
