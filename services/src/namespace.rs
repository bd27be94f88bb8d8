//! Request context containerd clients send as gRPC metadata.

use tonic::{metadata::MetadataMap, Status};

/// Header carrying the namespace of every namespaced call.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Header carrying the lease new objects belong to.
pub const LEASE_HEADER: &str = "containerd-lease";

/// The namespace of a call: required, and a valid identifier.
pub fn namespace(md: &MetadataMap) -> Result<String, Status> {
    let value = md
        .get(NAMESPACE_HEADER)
        .ok_or_else(|| Status::failed_precondition("namespace is required"))?;
    let ns = value.to_str().map_err(|_| {
        Status::invalid_argument("namespace header containerd-namespace is not valid ASCII")
    })?;
    if ns.is_empty() {
        return Err(Status::failed_precondition("namespace is required"));
    }
    berth_metadata::validate::validate_identifier("namespace", ns)
        .map_err(crate::error::to_status)?;
    Ok(ns.to_string())
}

/// The lease of a call, if any.
pub fn lease(md: &MetadataMap) -> Result<Option<String>, Status> {
    match md.get(LEASE_HEADER) {
        None => Ok(None),
        Some(v) => {
            let id = v.to_str().map_err(|_| {
                Status::invalid_argument("lease header containerd-lease is not valid ASCII")
            })?;
            if id.is_empty() {
                Ok(None)
            } else {
                Ok(Some(id.to_string()))
            }
        }
    }
}
