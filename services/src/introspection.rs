//! `containerd.services.introspection.v1.Introspection`: what this daemon
//! serves, as containerd-style plugin records, and who it is.

use std::path::Path;
use std::sync::Arc;

use berth_filters::{self as filters, Adaptor};
use berth_proto::containerd::services::introspection::v1::{
    introspection_server::Introspection, Plugin, PluginInfoRequest, PluginInfoResponse,
    PluginsRequest, PluginsResponse, ServerResponse,
};
use berth_proto::containerd::types::Platform;
use berth_proto::google::rpc::Status as RpcStatus;
use tonic::{Request, Response, Status};

use crate::error::{join_error, to_status};

/// One built-in component, described as containerd describes its plugins.
#[derive(Clone)]
pub struct PluginRecord {
    pub kind: &'static str,
    pub id: String,
    pub requires: Vec<&'static str>,
    pub exports: Vec<(String, String)>,
    /// Why the component could not start on this host, if it could not.
    pub init_err: Option<String>,
    /// A snapshotter whose self-check may still be running at start-up: asked for its
    /// [`init_error`](berth_snapshotter::Snapshotter::init_error) when listed.
    pub backend: Option<Arc<dyn berth_snapshotter::Snapshotter>>,
}

impl PluginRecord {
    pub fn new(kind: &'static str, id: impl Into<String>) -> Self {
        PluginRecord {
            kind,
            id: id.into(),
            requires: Vec::new(),
            exports: Vec::new(),
            init_err: None,
            backend: None,
        }
    }

    pub fn requires(mut self, kinds: &[&'static str]) -> Self {
        self.requires = kinds.to_vec();
        self
    }

    pub fn export(mut self, key: &str, value: impl Into<String>) -> Self {
        self.exports.push((key.to_string(), value.into()));
        self
    }

    /// The record as listed; may wait for a backend's self-check (blocking).
    fn to_proto(&self) -> Plugin {
        let init_err = self
            .init_err
            .clone()
            .or_else(|| self.backend.as_ref().and_then(|b| b.init_error()));
        Plugin {
            r#type: self.kind.to_string(),
            id: self.id.clone(),
            requires: self.requires.iter().map(|s| s.to_string()).collect(),
            platforms: vec![host_platform()],
            exports: self.exports.iter().cloned().collect(),
            capabilities: Vec::new(),
            init_err: init_err.map(|message| RpcStatus {
                code: tonic::Code::Unknown as i32,
                message,
                details: Vec::new(),
            }),
        }
    }
}

/// The platform this daemon runs on, in OCI terms.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        ..Default::default()
    }
}

struct PluginFields<'a>(&'a Plugin);

impl Adaptor for PluginFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match (path.first().map(String::as_str), path.len()) {
            (Some("type"), 1) => Some(self.0.r#type.clone()),
            (Some("id"), 1) => Some(self.0.id.clone()),
            (Some("capabilities"), 2) => {
                self.0.capabilities.iter().find(|c| **c == path[1]).cloned()
            }
            _ => None,
        }
    }
}

pub struct IntrospectionService {
    plugins: Arc<Vec<PluginRecord>>,
    uuid: String,
}

impl IntrospectionService {
    pub fn new(plugins: Vec<PluginRecord>, uuid: String) -> Self {
        IntrospectionService {
            plugins: Arc::new(plugins),
            uuid,
        }
    }
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        request: Request<PluginsRequest>,
    ) -> Result<Response<PluginsResponse>, Status> {
        let filter = filters::parse_all(&request.into_inner().filters).map_err(to_status)?;
        let records = self.plugins.clone();
        let plugins = tokio::task::spawn_blocking(move || {
            records
                .iter()
                .map(PluginRecord::to_proto)
                .filter(|p| filter.matches(&PluginFields(p)))
                .collect()
        })
        .await
        .map_err(join_error)?;
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<ServerResponse>, Status> {
        Ok(Response::new(ServerResponse {
            uuid: self.uuid.clone(),
            pid: u64::from(std::process::id()),
            pidns: pid_namespace().unwrap_or(0),
            deprecations: Vec::new(),
        }))
    }

    async fn plugin_info(
        &self,
        request: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        let req = request.into_inner();
        let plugin = self
            .plugins
            .iter()
            .find(|p| p.kind == req.r#type && p.id == req.id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!("plugin {}.{} not found", req.r#type, req.id))
            })?;
        let plugin = tokio::task::spawn_blocking(move || plugin.to_proto())
            .await
            .map_err(join_error)?;
        Ok(Response::new(PluginInfoResponse {
            plugin: Some(plugin),
            extra: None,
        }))
    }
}

/// The inode of this process's PID namespace, as containerd reports it.
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// The daemon's identity: a UUID created once and kept under the root.
pub fn load_or_create_uuid(root: &Path) -> std::io::Result<String> {
    let dir = root.join("io.containerd.grpc.v1.introspection");
    let path = dir.join("uuid");
    match std::fs::read_to_string(&path) {
        Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => return Ok(s.trim().to_string()),
        Ok(_) => tracing::warn!(path = %path.display(), "invalid server uuid; creating a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&dir)?;
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = dir.join("uuid.tmp");
    std::fs::write(&tmp, id.as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    // Made durable in the background: start-up does not wait for the fsyncs, and a uuid
    // that a power loss cuts short reads as invalid and is replaced, as above.
    std::thread::spawn(move || {
        let synced = std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::File::open(&dir)?.sync_all());
        if let Err(e) = synced {
            tracing::warn!(path = %path.display(), error = %e, "cannot sync the server uuid");
        }
    });
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_uuid(dir.path()).expect("create");
        let b = load_or_create_uuid(dir.path()).expect("load");
        assert_eq!(a, b);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
