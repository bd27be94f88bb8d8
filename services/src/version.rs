//! `containerd.services.version.v1.Version`.

use berth_proto::containerd::services::version::v1::{version_server::Version, VersionResponse};
use tonic::{Request, Response, Status};

/// Version reported to clients; the revision is the build's git commit when known.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = match option_env!("BERTH_REVISION") {
    Some(r) => r,
    None => "unknown",
};

pub struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: VERSION.to_string(),
            revision: REVISION.to_string(),
        }))
    }
}
