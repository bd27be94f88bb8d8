//! Container records (containerd's `metadata/containers.go`): what to run —
//! spec, runtime, image, snapshot — per namespace. A container holds its
//! snapshot (and anything its `containerd.io/gc.ref.*` labels name) against
//! garbage collection.

use std::collections::BTreeMap;
use std::time::SystemTime;

use berth_filters::{self as filters, check_map, Adaptor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schema::{self, CONTAINERS, V1};
use crate::time::nanos;
use crate::validate::{normalize_labels, validate_identifier, validate_labels};
use crate::{Db, Labels};

/// A protobuf `Any` kept opaque: the metadata layer never decodes specs or
/// runtime options.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AnyValue {
    pub type_url: String,
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

/// The runtime that runs a container's task, e.g. `io.containerd.runc.v2`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerRuntime {
    pub name: String,
    pub options: Option<AnyValue>,
}

/// A container record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    #[serde(skip)]
    pub id: String,
    pub labels: Labels,
    pub image: String,
    pub runtime: ContainerRuntime,
    /// The OCI runtime spec (JSON in an `Any`).
    pub spec: Option<AnyValue>,
    pub snapshotter: String,
    pub snapshot_key: String,
    #[serde(with = "nanos")]
    pub created_at: SystemTime,
    #[serde(with = "nanos")]
    pub updated_at: SystemTime,
    pub extensions: BTreeMap<String, AnyValue>,
    pub sandbox: String,
}

/// Container operations; from [`Db::containers`].
#[derive(Clone, Copy)]
pub struct Containers<'a> {
    db: &'a Db,
}

impl Db {
    /// Container operations.
    pub fn containers(&self) -> Containers<'_> {
        Containers { db: self }
    }
}

pub(crate) fn containers_prefix(ns: &str) -> Vec<u8> {
    schema::encode(&[V1, ns, CONTAINERS])
}

fn container_key(ns: &str, id: &str) -> Vec<u8> {
    schema::encode(&[V1, ns, CONTAINERS, id])
}

/// containerd's `validateContainer`.
fn validate(c: &Container) -> Result<()> {
    validate_identifier("container.ID", &c.id)?;
    if c.extensions.keys().any(String::is_empty) {
        return Err(Error::InvalidArgument(
            "container.Extension keys must not be zero-length".into(),
        ));
    }
    validate_labels("containers.Labels", &c.labels)?;
    if c.runtime.name.is_empty() {
        return Err(Error::InvalidArgument(
            "container.Runtime.Name must be set".into(),
        ));
    }
    if c.spec.is_none() {
        return Err(Error::InvalidArgument("container.Spec must be set".into()));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(Error::InvalidArgument(
            "container.Snapshotter must be set if container.SnapshotKey is set".into(),
        ));
    }
    Ok(())
}

struct ContainerAdaptor<'a>(&'a Container);

impl Adaptor for ContainerAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let c = self.0;
        let value = match path.first().map(String::as_str)? {
            "id" => c.id.clone(),
            "runtime" => match path.get(1).map(String::as_str) {
                Some("name") if path.len() == 2 => c.runtime.name.clone(),
                _ => return None,
            },
            "image" => c.image.clone(),
            "labels" => return check_map(&path[1..], &c.labels),
            "snapshotter" => c.snapshotter.clone(),
            "snapshotkey" => c.snapshot_key.clone(),
            "sandbox" => c.sandbox.clone(),
            _ => return None,
        };
        Some(value).filter(|v| !v.is_empty())
    }
}

/// Reads a container record in any transaction (GC uses it too).
pub(crate) fn read_in<R: crate::kv::ReadTxn + ?Sized>(
    tx: &R,
    ns: &str,
    id: &str,
) -> Result<Container> {
    let mut c: Container = schema::get_json(tx, &container_key(ns, id))?
        .ok_or_else(|| Error::NotFound(format!("container {id:?}")))?;
    c.id = id.to_string();
    Ok(c)
}

impl Containers<'_> {
    pub fn get(&self, ns: &str, id: &str) -> Result<Container> {
        validate_identifier("namespace", ns)?;
        self.db.view(|tx| read_in(tx, ns, id))
    }

    /// Containers matching any of `filters` (fields `id`, `runtime.name`,
    /// `image`, `labels.<key>`, `snapshotter`, `snapshotkey`), sorted by id.
    pub fn list<S: AsRef<str>>(&self, ns: &str, filters: &[S]) -> Result<Vec<Container>> {
        validate_identifier("namespace", ns)?;
        let filter = filters::parse_all(filters)?;
        self.db.view(|tx| {
            let mut out = Vec::new();
            schema::scan_children(tx, &containers_prefix(ns), 1, |k, rest, v| {
                let mut c: Container = schema::decode_json(k, v)?;
                c.id = rest.into_iter().next().unwrap_or_default();
                if filter.matches(&ContainerAdaptor(&c)) {
                    out.push(c);
                }
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// Creates a container; timestamps are set here. `AlreadyExists` if the
    /// id is taken. Under a lease, the lease holds the container too.
    pub fn create(&self, ns: &str, mut c: Container, lease: Option<&str>) -> Result<Container> {
        validate_identifier("namespace", ns)?;
        validate(&c)?;
        normalize_labels(&mut c.labels);
        self.db.update(|tx| {
            let key = container_key(ns, &c.id);
            if tx.get(&key)?.is_some() {
                return Err(Error::AlreadyExists(format!("container {:?}", c.id)));
            }
            schema::ensure_namespace(tx, ns)?;
            if let Some(lease) = lease {
                crate::leases::add_lease_resource(
                    tx,
                    ns,
                    lease,
                    &[CONTAINERS.into(), c.id.clone()],
                )?;
            }
            c.created_at = SystemTime::now();
            c.updated_at = c.created_at;
            schema::put_json(tx, &key, &c)?;
            Ok(c)
        })
    }

    /// Updates a container with containerd's field mask rules: no paths =
    /// replace labels, spec, extensions, image and snapshot key (snapshotter
    /// and runtime name must not change); otherwise `labels`, `labels.<k>`,
    /// `spec`, `extensions`, `extensions.<k>`, `image`, `snapshotkey`.
    pub fn update(&self, ns: &str, c: Container, paths: &[String]) -> Result<Container> {
        validate_identifier("namespace", ns)?;
        if c.id.is_empty() {
            return Err(Error::InvalidArgument("must specify a container id".into()));
        }
        self.db.update(|tx| {
            let mut updated = read_in(&*tx, ns, &c.id)?;
            let full = ["labels", "spec", "extensions", "image", "snapshotkey"].map(String::from);
            let paths = if paths.is_empty() {
                if updated.snapshotter != c.snapshotter {
                    return Err(Error::InvalidArgument(
                        "container.Snapshotter field is immutable".into(),
                    ));
                }
                if updated.runtime.name != c.runtime.name {
                    return Err(Error::InvalidArgument(
                        "container.Runtime.Name field is immutable".into(),
                    ));
                }
                &full[..]
            } else {
                paths
            };
            for path in paths {
                if let Some(key) = path.strip_prefix("labels.") {
                    match c.labels.get(key) {
                        Some(v) => updated.labels.insert(key.to_string(), v.clone()),
                        None => updated.labels.remove(key),
                    };
                    continue;
                }
                if let Some(key) = path.strip_prefix("extensions.") {
                    match c.extensions.get(key) {
                        Some(v) => updated.extensions.insert(key.to_string(), v.clone()),
                        None => updated.extensions.remove(key),
                    };
                    continue;
                }
                match path.as_str() {
                    "labels" => updated.labels = c.labels.clone(),
                    "spec" => updated.spec = c.spec.clone(),
                    "extensions" => updated.extensions = c.extensions.clone(),
                    "image" => updated.image = c.image.clone(),
                    "snapshotkey" => updated.snapshot_key = c.snapshot_key.clone(),
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "cannot update {other:?} field on {:?}",
                            c.id
                        )))
                    }
                }
            }
            validate(&updated)?;
            normalize_labels(&mut updated.labels);
            updated.updated_at = SystemTime::now();
            schema::put_json(tx, &container_key(ns, &c.id), &updated)?;
            Ok(updated)
        })
    }

    /// Deletes the record; its snapshot goes at the next GC if nothing else
    /// holds it. `NotFound` if absent.
    pub fn delete(&self, ns: &str, id: &str) -> Result<()> {
        validate_identifier("namespace", ns)?;
        self.db.update(|tx| {
            let key = container_key(ns, id);
            if tx.get(&key)?.is_none() {
                return Err(Error::NotFound(format!("container {id:?}")));
            }
            tx.delete(&key)?;
            Ok(())
        })
    }
}

/// Bytes as a hex string in JSON (specs are a few KiB; a number array would
/// quadruple them).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}
