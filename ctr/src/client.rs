//! The connection to berthd: a tonic channel over the unix socket, with the namespace (and an
//! optional lease) attached to every request as gRPC metadata.

use std::io;
use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use berth_proto::containerd::services::{
    containers::v1::containers_client::ContainersClient,
    content::v1::content_client::ContentClient, diff::v1::diff_client::DiffClient,
    events::v1::events_client::EventsClient, images::v1::images_client::ImagesClient,
    introspection::v1::introspection_client::IntrospectionClient,
    leases::v1::leases_client::LeasesClient, namespaces::v1::namespaces_client::NamespacesClient,
    snapshots::v1::snapshots_client::SnapshotsClient, tasks::v1::tasks_client::TasksClient,
    version::v1::version_client::VersionClient,
};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error;
use crate::Global;

/// gRPC metadata key of the namespace.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// gRPC metadata key of the lease new content is held by.
pub const LEASE_HEADER: &str = "containerd-lease";
/// Maximum gRPC message size, both ways.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Adds `containerd-namespace` (and `containerd-lease`) to every request.
#[derive(Clone)]
pub struct Meta {
    namespace: AsciiMetadataValue,
    lease: Option<AsciiMetadataValue>,
}

impl Meta {
    pub fn new(namespace: &str) -> anyhow::Result<Self> {
        Ok(Meta {
            namespace: ascii("namespace", namespace)?,
            lease: None,
        })
    }
}

fn ascii(what: &str, value: &str) -> anyhow::Result<AsciiMetadataValue> {
    MetadataValue::try_from(value)
        .map_err(|_| anyhow!("invalid {what} {value:?}: must be printable ASCII"))
}

impl tonic::service::Interceptor for Meta {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        md.insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(lease) = &self.lease {
            md.insert(LEASE_HEADER, lease.clone());
        }
        Ok(req)
    }
}

pub type Svc = InterceptedService<Channel, Meta>;

/// A live connection to berthd.
pub struct Conn {
    channel: Channel,
    meta: Meta,
}

macro_rules! clients {
    ($($name:ident => $client:ident),* $(,)?) => {
        $(
            pub fn $name(&self) -> $client<Svc> {
                $client::with_interceptor(self.channel.clone(), self.meta.clone())
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE)
            }
        )*
    };
}

impl Conn {
    clients! {
        containers => ContainersClient,
        content => ContentClient,
        diff => DiffClient,
        images => ImagesClient,
        events => EventsClient,
        introspection => IntrospectionClient,
        leases => LeasesClient,
        namespaces => NamespacesClient,
        snapshots => SnapshotsClient,
        tasks => TasksClient,
        version => VersionClient,
    }

    /// The same connection, with new content held by `lease` (if any).
    pub fn with_lease(&self, lease: Option<&str>) -> anyhow::Result<Conn> {
        let meta = Meta {
            lease: lease.map(|l| ascii("lease", l)).transpose()?,
            ..self.meta.clone()
        };
        Ok(Conn {
            channel: self.channel.clone(),
            meta,
        })
    }
}

/// Connects to berthd at `--address` within `--timeout`.
pub async fn connect(g: &Global) -> anyhow::Result<Conn> {
    let meta = Meta::new(&g.namespace)?;
    let path: PathBuf = g.address.clone();
    let shown = g.address.display().to_string();
    // The URI is a placeholder: the connector below ignores it and dials the socket.
    let endpoint = Endpoint::try_from("http://[::]:50051").context("building the endpoint")?;
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        }
    }));
    let result = if g.timeout.is_zero() {
        connect.await
    } else {
        match tokio::time::timeout(g.timeout, connect).await {
            Ok(r) => r,
            Err(_) => {
                let reason = format!(
                    "timed out after {}",
                    crate::parse::format_duration(g.timeout)
                );
                return Err(anyhow!(error::connect_message(&shown, &reason, None)));
            }
        }
    };
    let channel = result.map_err(|e| {
        let io = find_io_error(&e);
        let reason = match io {
            Some(io) => error::io_message(io),
            None => error::one_line(&e.to_string()),
        };
        anyhow!(error::connect_message(
            &shown,
            &reason,
            io.map(io::Error::kind)
        ))
    })?;
    Ok(Conn { channel, meta })
}

fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}
