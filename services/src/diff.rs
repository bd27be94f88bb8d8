//! `containerd.services.diff.v1.Diff`: applies layer blobs from the content
//! store onto mounts and writes the difference of two mount lists as a new
//! layer blob (containerd's `diff/apply` and `diff/walking` differs).
//!
//! The work is `berth_image::mounts`; this module reads the namespace and
//! lease, opens and records content, and checks digests.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use berth_archive::compression::{
    MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_GZIP, MEDIA_TYPE_OCI_LAYER_ZSTD,
};
use berth_archive::Compression;
use berth_content::Digest;
use berth_image::mounts::{apply_to_mounts, diff_mounts};
use berth_image::Error;
use berth_metadata::{ContentWriter, ContentWriterOpts, Db, Labels};
use berth_proto::containerd::services::diff::v1::{
    diff_server::Diff, ApplyRequest, ApplyResponse, DiffRequest, DiffResponse,
};
use berth_proto::containerd::types::{Descriptor, Mount};
use tonic::{Request, Response, Status};

use crate::error::blocking;
use crate::namespace::{lease, namespace};

/// Label of a compressed layer blob naming its uncompressed digest.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

pub struct DiffService {
    db: Arc<Db>,
    /// Temporary mount points.
    scratch: PathBuf,
}

impl DiffService {
    pub fn new(db: Arc<Db>, scratch: PathBuf) -> Self {
        DiffService { db, scratch }
    }
}

fn mounts_from_proto(mounts: Vec<Mount>) -> Vec<berth_snapshotter::Mount> {
    mounts
        .into_iter()
        .map(|m| berth_snapshotter::Mount {
            kind: m.r#type,
            source: m.source,
            options: m.options,
        })
        .collect()
}

fn parse_digest(what: &str, d: &str) -> Result<Digest, Status> {
    Digest::parse(d).map_err(|e| Status::invalid_argument(format!("{what} {d:?}: {e}")))
}

fn meta(context: impl Into<String>) -> impl FnOnce(berth_metadata::Error) -> Error {
    move |e| Error::store(context, e)
}

/// A content writer as `io::Write`.
struct Sink<'a>(&'a mut ContentWriter);

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let desc = req
            .diff
            .ok_or_else(|| Status::invalid_argument("diff descriptor must be set"))?;
        if Compression::from_media_type(&desc.media_type).is_none() {
            return Err(Status::unimplemented(format!(
                "unsupported diff media type: {:?}",
                desc.media_type
            )));
        }
        let digest = parse_digest("diff digest", &desc.digest)?;
        let mounts = mounts_from_proto(req.mounts);
        let (db, scratch) = (self.db.clone(), self.scratch.clone());
        let applied = blocking(move || {
            let what = format!("layer {digest}");
            let info = db.content().info(&ns, &digest).map_err(meta(&what))?;
            if desc.size > 0 && info.size != desc.size as u64 {
                return Err(Error::InvalidArgument(format!(
                    "{what}: descriptor size {} but the blob has {} bytes",
                    desc.size, info.size
                )));
            }
            let expected_diff = match info.labels.get(LABEL_UNCOMPRESSED) {
                Some(d) => Some(Digest::parse(d).map_err(|e| {
                    Error::InvalidArgument(format!("{what}: label {LABEL_UNCOMPRESSED}: {e}"))
                })?),
                None => None,
            };
            let reader = db.content().reader(&ns, &digest).map_err(meta(&what))?;
            let applied = apply_to_mounts(reader, &mounts, &scratch)?;
            if applied.compressed != digest {
                return Err(Error::InvalidArgument(format!(
                    "{what}: blob digest mismatch: read {}",
                    applied.compressed
                )));
            }
            if let Some(d) = expected_diff {
                if applied.uncompressed != d {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: uncompressed digest mismatch: expected {d}, got {}",
                        applied.uncompressed
                    )));
                }
            }
            tracing::debug!(layer = %digest, diff_id = %applied.uncompressed,
                entries = applied.stats.entries, "applied layer");
            Ok(applied)
        })
        .await?;
        Ok(Response::new(ApplyResponse {
            applied: Some(Descriptor {
                media_type: MEDIA_TYPE_OCI_LAYER.into(),
                digest: applied.uncompressed.to_string(),
                size: applied.uncompressed_size as i64,
                annotations: Default::default(),
            }),
        }))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let req = request.into_inner();
        let media_type = if req.media_type.is_empty() {
            MEDIA_TYPE_OCI_LAYER_GZIP.to_string()
        } else {
            req.media_type
        };
        let compression = match media_type.as_str() {
            MEDIA_TYPE_OCI_LAYER => Compression::Uncompressed,
            MEDIA_TYPE_OCI_LAYER_GZIP => Compression::Gzip,
            MEDIA_TYPE_OCI_LAYER_ZSTD => Compression::Zstd,
            other => {
                return Err(Status::unimplemented(format!(
                    "unsupported diff media type: {other:?}"
                )))
            }
        };
        if req.right.is_empty() {
            return Err(Status::invalid_argument("right mounts must be set"));
        }
        let reference = if req.r#ref.is_empty() {
            format!("diff-{}", uuid::Uuid::new_v4().simple())
        } else {
            req.r#ref
        };
        let (lower, upper) = (mounts_from_proto(req.left), mounts_from_proto(req.right));
        let mut labels: Labels = req.labels.into_iter().collect();
        let (db, scratch) = (self.db.clone(), self.scratch.clone());
        let (digest, size) = blocking(move || {
            let what = format!("diff ref {reference:?}");
            let mut w = db
                .content()
                .writer(
                    &ns,
                    ContentWriterOpts {
                        reference: reference.clone(),
                        total: None,
                        expected: None,
                        lease,
                    },
                )
                .map_err(meta(&what))?;
            // Start from scratch if an earlier attempt left data.
            w.truncate(0).map_err(meta(&what))?;
            let written = diff_mounts(&lower, &upper, &scratch, compression, Sink(&mut w));
            let written = match written {
                Ok(x) => x,
                Err(e) => {
                    drop(w);
                    let _ = db.content().abort(&ns, &reference);
                    return Err(e);
                }
            };
            labels.insert(
                LABEL_UNCOMPRESSED.to_string(),
                written.uncompressed.to_string(),
            );
            match w.commit(written.size, Some(written.digest), labels) {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {
                    // The same layer is already there: make sure it has
                    // the label.
                    let info = db
                        .content()
                        .info(&ns, &written.digest)
                        .map_err(meta(&what))?;
                    if !info.labels.contains_key(LABEL_UNCOMPRESSED) {
                        let mut l = Labels::new();
                        l.insert(
                            LABEL_UNCOMPRESSED.to_string(),
                            written.uncompressed.to_string(),
                        );
                        db.content()
                            .update(
                                &ns,
                                &written.digest,
                                &l,
                                &[format!("labels.{LABEL_UNCOMPRESSED}")],
                            )
                            .map_err(meta(&what))?;
                    }
                }
                Err(e) => return Err(meta(what)(e)),
            }
            Ok::<_, Error>((written.digest, written.size))
        })
        .await?;
        Ok(Response::new(DiffResponse {
            diff: Some(Descriptor {
                media_type,
                digest: digest.to_string(),
                size: size as i64,
                annotations: Default::default(),
            }),
        }))
    }
}
