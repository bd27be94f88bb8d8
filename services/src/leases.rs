//! `containerd.services.leases.v1.Leases`.

use std::sync::Arc;

use berth_metadata::{Db, Lease as LeaseRecord, Resource as LeaseResource};
use berth_proto::containerd::services::leases::v1::{
    leases_server::Leases, AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest,
    DeleteResourceRequest, Lease, ListRequest, ListResourcesRequest, ListResourcesResponse,
    ListResponse, Resource,
};
use tonic::{Request, Response, Status};

use crate::error::blocking;
use crate::gc::GcScheduler;
use crate::namespace::namespace;

pub struct LeasesService {
    db: Arc<Db>,
    gc: GcScheduler,
}

impl LeasesService {
    pub fn new(db: Arc<Db>, gc: GcScheduler) -> Self {
        LeasesService { db, gc }
    }
}

fn lease_to_proto(l: LeaseRecord) -> Lease {
    Lease {
        id: l.id,
        created_at: Some(l.created_at.into()),
        labels: l.labels.into_iter().collect(),
    }
}

fn resource_from_proto(r: Option<Resource>) -> Result<LeaseResource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resource must be set"))?;
    Ok(LeaseResource {
        id: r.id,
        kind: r.r#type,
    })
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(
        &self,
        request: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let labels = req.labels.into_iter().collect();
        let db = self.db.clone();
        let lease = blocking(move || db.leases().create(&ns, &req.id, labels)).await?;
        Ok(Response::new(CreateResponse {
            lease: Some(lease_to_proto(lease)),
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let db = self.db.clone();
        blocking(move || db.leases().delete(&ns, &req.id)).await?;
        if req.sync {
            self.gc.run_now().await?;
        } else {
            self.gc.schedule();
        }
        Ok(Response::new(()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let filters = request.into_inner().filters;
        let db = self.db.clone();
        let leases = blocking(move || db.leases().list(&ns, &filters)).await?;
        Ok(Response::new(ListResponse {
            leases: leases.into_iter().map(lease_to_proto).collect(),
        }))
    }

    async fn add_resource(
        &self,
        request: Request<AddResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let resource = resource_from_proto(req.resource)?;
        let db = self.db.clone();
        blocking(move || db.leases().add_resource(&ns, &req.id, &resource)).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        request: Request<DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let resource = resource_from_proto(req.resource)?;
        let db = self.db.clone();
        blocking(move || db.leases().delete_resource(&ns, &req.id, &resource)).await?;
        self.gc.schedule();
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        request: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let id = request.into_inner().id;
        let db = self.db.clone();
        let resources = blocking(move || db.leases().list_resources(&ns, &id)).await?;
        Ok(Response::new(ListResourcesResponse {
            resources: resources
                .into_iter()
                .map(|r| Resource {
                    id: r.id,
                    r#type: r.kind,
                })
                .collect(),
        }))
    }
}
