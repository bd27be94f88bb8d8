//! Leases: named GC roots that hold resources (content, ingests, snapshots,
//! images, containers) until the lease is deleted or expires.

use std::time::SystemTime;

use berth_content::Digest;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::kv::{ReadTxn, WriteTxn};
use crate::schema::{self, LeaseRecord, CONTAINERS, CONTENT, IMAGES, INGESTS, SNAPSHOTS};
use crate::validate::{normalize_labels, validate_identifier, validate_labels, validate_lease_id};
use crate::Labels;
use berth_filters::{self as filters, check_map, Adaptor};

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub created_at: SystemTime,
    pub labels: Labels,
}

/// A resource held by a lease. `kind` is containerd's resource type string:
/// `content` (id = digest), `ingests` (id = ingest ref), `images` (id = image
/// name), `containers` (id = container id) or `snapshots/<snapshotter>` (id =
/// snapshot key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    pub id: String,
    pub kind: String,
}

impl Resource {
    /// A content resource.
    pub fn content(digest: &Digest) -> Resource {
        Resource {
            id: digest.to_string(),
            kind: CONTENT.to_string(),
        }
    }

    /// Key components under `v1/<ns>/leases/<id>/` for this resource.
    fn key_parts(&self) -> Result<Vec<String>> {
        let kinds: Vec<&str> = self.kind.split('/').collect();
        if self.id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "lease resource of type {:?}: id must not be empty",
                self.kind
            )));
        }
        match kinds.as_slice() {
            [CONTENT] => {
                let d = Digest::parse(&self.id).map_err(|e| {
                    Error::InvalidArgument(format!("invalid content resource id: {e}"))
                })?;
                Ok(vec![CONTENT.into(), d.to_string()])
            }
            [k @ (INGESTS | IMAGES | CONTAINERS)] => Ok(vec![k.to_string(), self.id.clone()]),
            [SNAPSHOTS, snapshotter] if !snapshotter.is_empty() => Ok(vec![
                SNAPSHOTS.into(),
                snapshotter.to_string(),
                self.id.clone(),
            ]),
            [CONTENT | INGESTS | IMAGES | CONTAINERS | SNAPSHOTS, ..] => Err(
                Error::InvalidArgument(format!("invalid resource type {:?}", self.kind)),
            ),
            _ => Err(Error::NotImplemented(format!(
                "resource type {:?} not supported",
                self.kind
            ))),
        }
    }

    fn from_key_parts(parts: &[String]) -> Option<Resource> {
        match parts {
            [kind, id] if kind != SNAPSHOTS => Some(Resource {
                id: id.clone(),
                kind: kind.clone(),
            }),
            [kind, snapshotter, id] if kind == SNAPSHOTS => Some(Resource {
                id: id.clone(),
                kind: format!("{SNAPSHOTS}/{snapshotter}"),
            }),
            _ => None,
        }
    }
}

/// Lease operations; from [`Db::leases`].
#[derive(Clone, Copy)]
pub struct Leases<'a> {
    db: &'a Db,
}

impl Db {
    /// Lease operations.
    pub fn leases(&self) -> Leases<'_> {
        Leases { db: self }
    }
}

fn check_lease_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument("lease id must not be empty".into()));
    }
    Ok(())
}

struct LeaseAdaptor<'a>(&'a Lease);

impl Adaptor for LeaseAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "id" => Some(self.0.id.clone()).filter(|s| !s.is_empty()),
            "labels" => check_map(&path[1..], &self.0.labels),
            _ => None,
        }
    }
}

impl Leases<'_> {
    /// Creates a lease; an empty `id` gets a random one. `AlreadyExists` if
    /// the id is taken in this namespace. Creates the namespace if needed.
    pub fn create(&self, ns: &str, id: &str, mut labels: Labels) -> Result<Lease> {
        validate_identifier("namespace", ns)?;
        validate_labels("lease.Labels", &labels)?;
        normalize_labels(&mut labels);
        let id = if id.is_empty() {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            validate_lease_id(id)?;
            id.to_string()
        };
        self.db.update(|tx| {
            let key = schema::lease_key(ns, &id);
            if tx.get(&key)?.is_some() {
                return Err(Error::AlreadyExists(format!("lease {id:?}")));
            }
            schema::ensure_namespace(tx, ns)?;
            let record = LeaseRecord {
                created_at: SystemTime::now(),
                labels,
            };
            schema::put_json(tx, &key, &record)?;
            Ok(Lease {
                id: id.clone(),
                created_at: record.created_at,
                labels: record.labels,
            })
        })
    }

    /// Deletes a lease and its resource list (the resources themselves go at
    /// the next GC if nothing else holds them). `NotFound` if absent.
    pub fn delete(&self, ns: &str, id: &str) -> Result<()> {
        validate_identifier("namespace", ns)?;
        check_lease_id(id)?;
        self.db.update(|tx| {
            let key = schema::lease_key(ns, id);
            if tx.get(&key)?.is_none() {
                return Err(Error::NotFound(format!("lease {id:?}")));
            }
            tx.delete_prefix(&key)?;
            Ok(())
        })
    }

    /// The leases of a namespace matching any of `filters` (fields `id`,
    /// `labels.<key>`), sorted by id.
    pub fn list<S: AsRef<str>>(&self, ns: &str, filters: &[S]) -> Result<Vec<Lease>> {
        validate_identifier("namespace", ns)?;
        let filter = filters::parse_all(filters)?;
        self.db.view(|tx| {
            let mut out = Vec::new();
            schema::scan_children(tx, &schema::leases_prefix(ns), 1, |k, rest, v| {
                let record: LeaseRecord = schema::decode_json(k, v)?;
                let lease = Lease {
                    id: rest.into_iter().next().unwrap_or_default(),
                    created_at: record.created_at,
                    labels: record.labels,
                };
                if filter.matches(&LeaseAdaptor(&lease)) {
                    out.push(lease);
                }
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// Adds a resource to a lease. `NotFound` if the lease does not exist;
    /// `InvalidArgument` for a malformed resource; `NotImplemented` for an
    /// unknown resource type.
    pub fn add_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<()> {
        validate_identifier("namespace", ns)?;
        check_lease_id(id)?;
        let parts = resource.key_parts()?;
        self.db.update(|tx| add_lease_resource(tx, ns, id, &parts))
    }

    /// Removes a resource from a lease (no error if it was not there).
    /// `NotFound` if the lease does not exist.
    pub fn delete_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<()> {
        validate_identifier("namespace", ns)?;
        check_lease_id(id)?;
        let parts = resource.key_parts()?;
        self.db.update(|tx| {
            require_lease(tx, ns, id)?;
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            tx.delete(&schema::lease_resource_key(ns, id, &parts))?;
            Ok(())
        })
    }

    /// The resources a lease holds. `NotFound` if the lease does not exist.
    pub fn list_resources(&self, ns: &str, id: &str) -> Result<Vec<Resource>> {
        validate_identifier("namespace", ns)?;
        check_lease_id(id)?;
        self.db.view(|tx| {
            require_lease(tx, ns, id)?;
            let prefix = schema::lease_key(ns, id);
            let mut out = Vec::new();
            for depth in [2, 3] {
                schema::scan_children(tx, &prefix, depth, |_, rest, _| {
                    if let Some(r) = Resource::from_key_parts(&rest) {
                        out.push(r);
                    }
                    Ok(())
                })?;
            }
            out.sort();
            Ok(out)
        })
    }
}

pub(crate) fn require_lease<R: ReadTxn + ?Sized>(tx: &R, ns: &str, id: &str) -> Result<()> {
    if tx.get(&schema::lease_key(ns, id))?.is_none() {
        return Err(Error::NotFound(format!("lease {id:?}")));
    }
    Ok(())
}

/// Records `parts` (e.g. `["content", "<digest>"]`) as held by lease `id`;
/// `NotFound` if the lease does not exist.
pub(crate) fn add_lease_resource<W: WriteTxn + ?Sized>(
    tx: &mut W,
    ns: &str,
    id: &str,
    parts: &[String],
) -> Result<()> {
    require_lease(tx, ns, id)?;
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    tx.put(&schema::lease_resource_key(ns, id, &parts), b"")
}

/// Drops `parts` from lease `id` if the lease exists.
pub(crate) fn remove_lease_resource<W: WriteTxn + ?Sized>(
    tx: &mut W,
    ns: &str,
    id: &str,
    parts: &[&str],
) -> Result<()> {
    tx.delete(&schema::lease_resource_key(ns, id, parts))?;
    Ok(())
}
