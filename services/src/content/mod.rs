//! `containerd.services.content.v1.Content`: thin handlers over the
//! namespaced content view of the metadata store.

pub mod early;
mod write;

use std::pin::Pin;
use std::sync::Arc;

use berth_content::Digest;
use berth_metadata::{ContentInfo, Db};
use berth_proto::containerd::events::ContentDelete;
use berth_proto::containerd::services::content::v1::{
    content_server::Content, AbortRequest, DeleteContentRequest, Info, InfoRequest, InfoResponse,
    ListContentRequest, ListContentResponse, ListStatusesRequest, ListStatusesResponse,
    ReadContentRequest, ReadContentResponse, Status as IngestStatus, StatusRequest, StatusResponse,
    UpdateRequest, UpdateResponse, WriteContentRequest, WriteContentResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{blocking, to_status};
use crate::events::Exchange;
use crate::gc::GcScheduler;
use crate::namespace::namespace;

/// Bytes per Read response and per List batch, well under the 16 MiB limit.
const READ_CHUNK: usize = 1 << 20;
const LIST_BATCH: usize = 100;

pub struct ContentService {
    db: Arc<Db>,
    events: Exchange,
    gc: GcScheduler,
}

impl ContentService {
    pub fn new(db: Arc<Db>, events: Exchange, gc: GcScheduler) -> Self {
        ContentService { db, events, gc }
    }
}

pub(crate) fn parse_digest(s: &str) -> Result<Digest, Status> {
    Digest::parse(s).map_err(to_status)
}

fn info_to_proto(info: ContentInfo) -> Info {
    Info {
        digest: info.digest.to_string(),
        size: i64::try_from(info.size).unwrap_or(i64::MAX),
        created_at: Some(info.created_at.into()),
        updated_at: Some(info.updated_at.into()),
        labels: info.labels.into_iter().collect(),
    }
}

fn status_to_proto(s: berth_content::Status) -> IngestStatus {
    IngestStatus {
        started_at: Some(s.started_at.into()),
        updated_at: Some(s.updated_at.into()),
        r#ref: s.reference,
        offset: to_i64(s.offset),
        total: to_i64(s.total),
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let digest = parse_digest(&request.get_ref().digest)?;
        let db = self.db.clone();
        let info = blocking(move || db.content().info(&ns, &digest)).await?;
        Ok(Response::new(InfoResponse {
            info: Some(info_to_proto(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let info = req
            .info
            .ok_or_else(|| Status::invalid_argument("info must be set"))?;
        let digest = parse_digest(&info.digest)?;
        let labels: berth_metadata::Labels = info.labels.into_iter().collect();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let db = self.db.clone();
        let updated = blocking(move || db.content().update(&ns, &digest, &labels, &paths)).await?;
        Ok(Response::new(UpdateResponse {
            info: Some(info_to_proto(updated)),
        }))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        request: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(request.metadata())?;
        let filters = request.into_inner().filters;
        let db = self.db.clone();
        let infos = blocking(move || db.content().list(&ns, &filters)).await?;
        let batches: Vec<Result<ListContentResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|chunk| {
                Ok(ListContentResponse {
                    info: chunk.iter().cloned().map(info_to_proto).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn delete(&self, request: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let digest = parse_digest(&request.get_ref().digest)?;
        let db = self.db.clone();
        let ns2 = ns.clone();
        blocking(move || db.content().delete(&ns2, &digest)).await?;
        self.events.publish(
            &ns,
            "/content/delete",
            &ContentDelete {
                digest: digest.to_string(),
            },
        );
        self.gc.schedule();
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        request: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let digest = parse_digest(&req.digest)?;
        if req.offset < 0 {
            return Err(Status::invalid_argument(format!(
                "read offset {} must not be negative",
                req.offset
            )));
        }
        if req.size < 0 {
            return Err(Status::invalid_argument(format!(
                "read size {} must not be negative",
                req.size
            )));
        }
        let db = self.db.clone();
        let reader = blocking(move || db.content().reader(&ns, &digest)).await?;
        let blob_size = reader.size();
        let offset = req.offset as u64;
        if offset > blob_size {
            return Err(Status::out_of_range(format!(
                "read offset {offset} past object length {blob_size} bytes"
            )));
        }
        // size 0 means "to the end"; a range past the end is clamped.
        let end = match req.size as u64 {
            0 => blob_size,
            n => offset.saturating_add(n).min(blob_size),
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut pos = offset;
            while pos < end {
                let len = usize::try_from(end - pos)
                    .unwrap_or(READ_CHUNK)
                    .min(READ_CHUNK);
                let mut buf = vec![0u8; len];
                let msg = match reader.read_at(pos, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        let m = ReadContentResponse {
                            offset: to_i64(pos),
                            data: buf,
                        };
                        pos += n as u64;
                        Ok(m)
                    }
                    Err(e) => Err(to_status(e)),
                };
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let reference = request.into_inner().r#ref;
        let db = self.db.clone();
        let status = blocking(move || db.content().status(&ns, &reference)).await?;
        Ok(Response::new(StatusResponse {
            status: Some(status_to_proto(status)),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let filters = request.into_inner().filters;
        let db = self.db.clone();
        let statuses = blocking(move || db.content().list_statuses(&ns, &filters)).await?;
        Ok(Response::new(ListStatusesResponse {
            statuses: statuses.into_iter().map(status_to_proto).collect(),
        }))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = crate::namespace::lease(request.metadata())?;
        let (_, mut extensions, stream) = request.into_parts();
        let early = extensions
            .remove::<early::EarlyData>()
            .and_then(early::EarlyHasher::start);
        Ok(Response::new(write::serve(
            self.db.clone(),
            ns,
            lease,
            stream,
            early,
        )))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let reference = request.into_inner().r#ref;
        let db = self.db.clone();
        blocking(move || db.content().abort(&ns, &reference)).await?;
        Ok(Response::new(()))
    }
}
