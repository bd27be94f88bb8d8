//! An in-memory Content service on a unix socket, for testing the client side of the wire
//! protocol (STAT/WRITE/COMMIT lockstep, resume, AlreadyExists, metadata headers).

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::containerd::services::content::v1::{
    content_server::{Content, ContentServer},
    *,
};
use futures::Stream;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::output::Format;
use crate::Global;

#[derive(Default)]
pub struct State {
    pub blobs: HashMap<String, Vec<u8>>,
    pub labels: HashMap<String, HashMap<String, String>>,
    /// ref -> (data so far, total)
    pub ingests: HashMap<String, (Vec<u8>, i64)>,
    /// (namespace, lease) of every request.
    pub headers: Vec<(String, Option<String>)>,
    /// Offsets of WRITE requests.
    pub write_offsets: Vec<i64>,
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<State>>);

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Fake {
    fn note<T>(&self, req: &Request<T>) {
        let get = |k| {
            req.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let ns = get("containerd-namespace").unwrap_or_default();
        let lease = get("containerd-lease");
        self.0.lock().unwrap().headers.push((ns, lease));
    }
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[tonic::async_trait]
impl Content for Fake {
    async fn info(&self, r: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.note(&r);
        let st = self.0.lock().unwrap();
        let d = r.into_inner().digest;
        let blob = st
            .blobs
            .get(&d)
            .ok_or_else(|| Status::not_found(format!("content {d}: not found")))?;
        Ok(Response::new(InfoResponse {
            info: Some(Info {
                digest: d.clone(),
                size: blob.len() as i64,
                labels: st.labels.get(&d).cloned().unwrap_or_default(),
                ..Default::default()
            }),
        }))
    }

    async fn update(&self, _: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        Err(Status::unimplemented("update"))
    }

    type ListStream = Boxed<ListContentResponse>;

    async fn list(
        &self,
        _: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        Err(Status::unimplemented("list"))
    }

    async fn delete(&self, _: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("delete"))
    }

    type ReadStream = Boxed<ReadContentResponse>;

    async fn read(
        &self,
        r: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.note(&r);
        let d = r.into_inner().digest;
        let blob = self
            .0
            .lock()
            .unwrap()
            .blobs
            .get(&d)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("content {d}: not found")))?;
        let chunks: Vec<_> = blob
            .chunks(1000)
            .enumerate()
            .map(|(i, c)| {
                Ok(ReadContentResponse {
                    offset: (i * 1000) as i64,
                    data: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.note(&r);
        let reference = r.into_inner().r#ref;
        let st = self.0.lock().unwrap();
        let (data, total) = st
            .ingests
            .get(&reference)
            .ok_or_else(|| Status::not_found(format!("ref {reference}: not found")))?;
        Ok(Response::new(StatusResponse {
            status: Some(super::testing::status(
                &reference,
                data.len() as i64,
                *total,
            )),
        }))
    }

    async fn list_statuses(
        &self,
        _: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        Err(Status::unimplemented("list_statuses"))
    }

    type WriteStream = Boxed<WriteContentResponse>;

    async fn write(
        &self,
        r: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        self.note(&r);
        let mut input = r.into_inner();
        let state = self.0.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let result: Result<(), Status> = async {
                let mut reference = String::new();
                while let Some(req) = input.message().await? {
                    let resp = {
                        let mut st = state.lock().unwrap();
                        if reference.is_empty() {
                            reference = req.r#ref.clone();
                            if !req.expected.is_empty() && st.blobs.contains_key(&req.expected) {
                                return Err(Status::already_exists(format!(
                                    "content {}: already exists",
                                    req.expected
                                )));
                            }
                        }
                        let total = req.total;
                        let ingest = st.ingests.entry(reference.clone()).or_default();
                        if total > 0 {
                            ingest.1 = total;
                        }
                        let action = WriteAction::try_from(req.action);
                        // containerd: a WRITE or COMMIT at offset 0 restarts the ingest.
                        if action != Ok(WriteAction::Stat) && req.offset == 0 {
                            ingest.0.clear();
                        }
                        match action {
                            Ok(WriteAction::Stat) => {}
                            Ok(WriteAction::Write) => {
                                if req.offset != ingest.0.len() as i64 {
                                    return Err(Status::out_of_range("bad offset"));
                                }
                                ingest.0.extend_from_slice(&req.data);
                                st.write_offsets.push(req.offset);
                            }
                            Ok(WriteAction::Commit) => {
                                let (data, _) = st.ingests.remove(&reference).unwrap_or_default();
                                let d = digest(&data);
                                if !req.expected.is_empty() && req.expected != d {
                                    return Err(Status::failed_precondition("digest mismatch"));
                                }
                                if req.total != data.len() as i64 {
                                    return Err(Status::failed_precondition("size mismatch"));
                                }
                                st.labels.insert(d.clone(), req.labels.clone());
                                st.blobs.insert(d.clone(), data.clone());
                                // Keep an empty ingest so the lookup below works.
                                st.ingests.insert(reference.clone(), (data, 0));
                            }
                            Err(_) => return Err(Status::invalid_argument("bad action")),
                        }
                        let (data, total) = &st.ingests[&reference];
                        let resp = WriteContentResponse {
                            action: req.action,
                            offset: data.len() as i64,
                            total: *total,
                            digest: digest(data),
                            ..Default::default()
                        };
                        if req.action == WriteAction::Commit as i32 {
                            st.ingests.remove(&reference);
                        }
                        resp
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(s) = result {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, _: Request<AbortRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("abort"))
    }
}

pub fn status(
    reference: &str,
    offset: i64,
    total: i64,
) -> berth_proto::containerd::services::content::v1::Status {
    berth_proto::containerd::services::content::v1::Status {
        r#ref: reference.to_string(),
        offset,
        total,
        ..Default::default()
    }
}

/// A running fake daemon: its socket lives in a temp dir removed on drop.
pub struct Server {
    pub dir: PathBuf,
    pub fake: Fake,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    pub async fn start() -> Server {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-ctr-fake-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = tokio::net::UnixListener::bind(dir.join("berthd.sock")).unwrap();
        let fake = Fake::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let svc = ContentServer::new(fake.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Server {
            dir,
            fake,
            shutdown: Some(tx),
        }
    }

    pub fn global(&self, namespace: &str) -> Global {
        Global {
            address: self.dir.join("berthd.sock"),
            namespace: namespace.to_string(),
            format: Format::Table,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
