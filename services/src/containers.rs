//! `containerd.services.containers.v1.Containers`.

use std::sync::Arc;

use berth_metadata::{AnyValue, Container as Record, ContainerRuntime, Db};
use berth_proto::containerd::events::{
    container_create, ContainerCreate, ContainerDelete, ContainerUpdate,
};
use berth_proto::containerd::services::containers::v1::{
    container::Runtime, containers_server::Containers, Container, CreateContainerRequest,
    CreateContainerResponse, DeleteContainerRequest, GetContainerRequest, GetContainerResponse,
    ListContainerMessage, ListContainersRequest, ListContainersResponse, UpdateContainerRequest,
    UpdateContainerResponse,
};
use futures::Stream;
use std::pin::Pin;
use tonic::{Request, Response, Status};

use crate::error::blocking;
use crate::events::Exchange;
use crate::gc::GcScheduler;
use crate::namespace::{lease, namespace};

pub struct ContainersService {
    db: Arc<Db>,
    events: Exchange,
    gc: GcScheduler,
}

impl ContainersService {
    pub fn new(db: Arc<Db>, events: Exchange, gc: GcScheduler) -> Self {
        ContainersService { db, events, gc }
    }
}

fn any_in(a: prost_types::Any) -> AnyValue {
    AnyValue {
        type_url: a.type_url,
        value: a.value,
    }
}

fn any_out(a: AnyValue) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url,
        value: a.value,
    }
}

fn from_proto(c: Container) -> Record {
    let runtime = c.runtime.unwrap_or_default();
    Record {
        id: c.id,
        labels: c.labels.into_iter().collect(),
        image: c.image,
        runtime: ContainerRuntime {
            name: runtime.name,
            options: runtime.options.map(any_in),
        },
        spec: c.spec.map(any_in),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        // Set by the store.
        created_at: std::time::UNIX_EPOCH,
        updated_at: std::time::UNIX_EPOCH,
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_in(v)))
            .collect(),
        sandbox: c.sandbox,
    }
}

fn to_proto(c: Record) -> Container {
    Container {
        id: c.id,
        labels: c.labels.into_iter().collect(),
        image: c.image,
        runtime: Some(Runtime {
            name: c.runtime.name,
            options: c.runtime.options.map(any_out),
        }),
        spec: c.spec.map(any_out),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: Some(c.created_at.into()),
        updated_at: Some(c.updated_at.into()),
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_out(v)))
            .collect(),
        sandbox: c.sandbox,
    }
}

fn required(c: Option<Container>) -> Result<Container, Status> {
    c.ok_or_else(|| Status::invalid_argument("container must be set"))
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListContainerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(
        &self,
        request: Request<GetContainerRequest>,
    ) -> Result<Response<GetContainerResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let id = request.into_inner().id;
        let db = self.db.clone();
        let c = blocking(move || db.containers().get(&ns, &id)).await?;
        Ok(Response::new(GetContainerResponse {
            container: Some(to_proto(c)),
        }))
    }

    async fn list(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let filters = request.into_inner().filters;
        let db = self.db.clone();
        let all = blocking(move || db.containers().list(&ns, &filters)).await?;
        Ok(Response::new(ListContainersResponse {
            containers: all.into_iter().map(to_proto).collect(),
        }))
    }

    type ListStreamStream = ListStream;

    async fn list_stream(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let ns = namespace(request.metadata())?;
        let filters = request.into_inner().filters;
        let db = self.db.clone();
        let all = blocking(move || db.containers().list(&ns, &filters)).await?;
        let messages: Vec<Result<ListContainerMessage, Status>> = all
            .into_iter()
            .map(|c| {
                Ok(ListContainerMessage {
                    container: Some(to_proto(c)),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn create(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let record = from_proto(required(request.into_inner().container)?);
        let (db, n) = (self.db.clone(), ns.clone());
        let created =
            blocking(move || db.containers().create(&n, record, lease.as_deref())).await?;
        self.events.publish(
            &ns,
            "/containers/create",
            &ContainerCreate {
                id: created.id.clone(),
                image: created.image.clone(),
                runtime: Some(container_create::Runtime {
                    name: created.runtime.name.clone(),
                    options: created.runtime.options.clone().map(any_out),
                }),
            },
        );
        Ok(Response::new(CreateContainerResponse {
            container: Some(to_proto(created)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        let record = from_proto(required(req.container)?);
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let (db, n) = (self.db.clone(), ns.clone());
        let updated = blocking(move || db.containers().update(&n, record, &paths)).await?;
        self.events.publish(
            &ns,
            "/containers/update",
            &ContainerUpdate {
                id: updated.id.clone(),
                image: updated.image.clone(),
                labels: updated.labels.clone().into_iter().collect(),
                snapshot_key: updated.snapshot_key.clone(),
            },
        );
        Ok(Response::new(UpdateContainerResponse {
            container: Some(to_proto(updated)),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteContainerRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata())?;
        let id = request.into_inner().id;
        let (db, n, i) = (self.db.clone(), ns.clone(), id.clone());
        blocking(move || db.containers().delete(&n, &i)).await?;
        self.events
            .publish(&ns, "/containers/delete", &ContainerDelete { id });
        self.gc.schedule();
        Ok(Response::new(()))
    }
}
