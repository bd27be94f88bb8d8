//! `containerd.services.images.v1.Images`: thin handlers over the image
//! records of the metadata store (containerd's `services/images/local.go`).

use std::sync::Arc;

use berth_metadata::{Db, Descriptor as Target, Image as Record};
use berth_proto::containerd::services::images::v1::{
    images_server::Images, CreateImageRequest, CreateImageResponse, DeleteImageRequest,
    GetImageRequest, GetImageResponse, Image, ImageCreate, ImageDelete, ImageUpdate,
    ListImagesRequest, ListImagesResponse, UpdateImageRequest, UpdateImageResponse,
};
use berth_proto::containerd::types::Descriptor;
use tonic::{Request, Response, Status};

use crate::error::blocking;
use crate::events::Exchange;
use crate::gc::GcScheduler;
use crate::namespace::{lease, namespace};

pub struct ImagesService {
    db: Arc<Db>,
    events: Exchange,
    gc: GcScheduler,
}

impl ImagesService {
    pub fn new(db: Arc<Db>, events: Exchange, gc: GcScheduler) -> Self {
        ImagesService { db, events, gc }
    }
}

pub(crate) fn descriptor_from_proto(d: Descriptor) -> Target {
    Target {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
    }
}

pub(crate) fn descriptor_to_proto(d: Target) -> Descriptor {
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
    }
}

fn from_proto(i: Image) -> Record {
    let mut r = Record::new(i.name, descriptor_from_proto(i.target.unwrap_or_default()));
    r.labels = i.labels.into_iter().collect();
    r
}

fn to_proto(r: Record) -> Image {
    Image {
        name: r.name,
        labels: r.labels.into_iter().collect(),
        target: Some(descriptor_to_proto(r.target)),
        created_at: Some(r.created_at.into()),
        updated_at: Some(r.updated_at.into()),
    }
}

/// The image of a create/update request; containerd requires a name.
fn required(i: Option<Image>) -> Result<Image, Status> {
    match i {
        Some(i) if !i.name.is_empty() => Ok(i),
        _ => Err(Status::invalid_argument("Image.Name required")),
    }
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get(
        &self,
        request: Request<GetImageRequest>,
    ) -> Result<Response<GetImageResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let name = request.into_inner().name;
        let db = self.db.clone();
        let image = blocking(move || db.images().get(&ns, &name)).await?;
        Ok(Response::new(GetImageResponse {
            image: Some(to_proto(image)),
        }))
    }

    async fn list(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let filters = request.into_inner().filters;
        let db = self.db.clone();
        let all = blocking(move || db.images().list(&ns, &filters)).await?;
        Ok(Response::new(ListImagesResponse {
            images: all.into_iter().map(to_proto).collect(),
        }))
    }

    async fn create(
        &self,
        request: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let record = from_proto(required(request.into_inner().image)?);
        let (db, n) = (self.db.clone(), ns.clone());
        let created = blocking(move || db.images().create(&n, record, lease.as_deref())).await?;
        self.events.publish(
            &ns,
            "/images/create",
            &ImageCreate {
                name: created.name.clone(),
                labels: created.labels.clone().into_iter().collect(),
            },
        );
        Ok(Response::new(CreateImageResponse {
            image: Some(to_proto(created)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateImageRequest>,
    ) -> Result<Response<UpdateImageResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let record = from_proto(required(req.image)?);
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let (db, n) = (self.db.clone(), ns.clone());
        let updated = blocking(move || db.images().update(&n, record, &paths)).await?;
        self.events.publish(
            &ns,
            "/images/update",
            &ImageUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone().into_iter().collect(),
            },
        );
        // A new target may leave the old one unreferenced.
        self.gc.schedule();
        Ok(Response::new(UpdateImageResponse {
            image: Some(to_proto(updated)),
        }))
    }

    async fn delete(&self, request: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let req = request.into_inner();
        let (db, n, name) = (self.db.clone(), ns.clone(), req.name.clone());
        let target = req.target.map(|t| t.digest);
        blocking(move || {
            db.images()
                .delete(&n, &name, target.as_deref(), lease.as_deref())
        })
        .await?;
        self.events
            .publish(&ns, "/images/delete", &ImageDelete { name: req.name });
        if req.sync {
            self.gc.run_now().await?;
        } else {
            self.gc.schedule();
        }
        Ok(Response::new(()))
    }
}
