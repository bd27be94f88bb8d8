//! `containerd.services.namespaces.v1.Namespaces`.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_metadata::Db;
use berth_proto::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use berth_proto::containerd::services::namespaces::v1::{
    namespaces_server::Namespaces, CreateNamespaceRequest, CreateNamespaceResponse,
    DeleteNamespaceRequest, GetNamespaceRequest, GetNamespaceResponse, ListNamespacesRequest,
    ListNamespacesResponse, Namespace, UpdateNamespaceRequest, UpdateNamespaceResponse,
};
use tonic::{Request, Response, Status};

use crate::error::blocking;
use crate::events::Exchange;

pub struct NamespacesService {
    db: Arc<Db>,
    events: Exchange,
}

impl NamespacesService {
    pub fn new(db: Arc<Db>, events: Exchange) -> Self {
        NamespacesService { db, events }
    }
}

fn to_proto(name: String, labels: BTreeMap<String, String>) -> Namespace {
    Namespace {
        name,
        labels: labels.into_iter().collect(),
    }
}

/// containerd publishes namespace events in the caller's namespace (the
/// `containerd-namespace` header), not the one acted on; without a header,
/// the one acted on.
fn event_namespace(md: &tonic::metadata::MetadataMap, acted_on: &str) -> String {
    crate::namespace::namespace(md).unwrap_or_else(|_| acted_on.to_string())
}

fn required(ns: Option<Namespace>) -> Result<Namespace, Status> {
    ns.ok_or_else(|| Status::invalid_argument("namespace must be set"))
}

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    async fn get(
        &self,
        request: Request<GetNamespaceRequest>,
    ) -> Result<Response<GetNamespaceResponse>, Status> {
        let name = request.into_inner().name;
        let db = self.db.clone();
        let n = name.clone();
        let labels = blocking(move || db.namespaces().get(&n)).await?.labels;
        Ok(Response::new(GetNamespaceResponse {
            namespace: Some(to_proto(name, labels)),
        }))
    }

    async fn list(
        &self,
        _: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let db = self.db.clone();
        let all = blocking(move || db.namespaces().list()).await?;
        Ok(Response::new(ListNamespacesResponse {
            namespaces: all
                .into_iter()
                .map(|n| to_proto(n.name, n.labels))
                .collect(),
        }))
    }

    async fn create(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let caller = request.metadata().clone();
        let ns = required(request.into_inner().namespace)?;
        let labels: BTreeMap<String, String> = ns.labels.into_iter().collect();
        let (db, name, l) = (self.db.clone(), ns.name.clone(), labels.clone());
        blocking(move || db.namespaces().create(&name, l)).await?;
        self.events.publish(
            &event_namespace(&caller, &ns.name),
            "/namespaces/create",
            &NamespaceCreate {
                name: ns.name.clone(),
                labels: labels.clone().into_iter().collect(),
            },
        );
        Ok(Response::new(CreateNamespaceResponse {
            namespace: Some(to_proto(ns.name, labels)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let caller = request.metadata().clone();
        let req = request.into_inner();
        let ns = required(req.namespace)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels: BTreeMap<String, String> = ns.labels.into_iter().collect();
        let (db, name) = (self.db.clone(), ns.name.clone());
        let labels = blocking(move || db.namespaces().update(&name, labels, &paths))
            .await?
            .labels;
        self.events.publish(
            &event_namespace(&caller, &ns.name),
            "/namespaces/update",
            &NamespaceUpdate {
                name: ns.name.clone(),
                labels: labels.clone().into_iter().collect(),
            },
        );
        Ok(Response::new(UpdateNamespaceResponse {
            namespace: Some(to_proto(ns.name, labels)),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteNamespaceRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = request.metadata().clone();
        let name = request.into_inner().name;
        let (db, n) = (self.db.clone(), name.clone());
        blocking(move || db.namespaces().delete(&n)).await?;
        self.events.publish(
            &event_namespace(&caller, &name),
            "/namespaces/delete",
            &NamespaceDelete { name: name.clone() },
        );
        Ok(Response::new(()))
    }
}
