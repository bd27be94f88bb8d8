//! Namespaces: create, get, list, update labels, delete when empty.

use std::ops::ControlFlow;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::kv::{ReadTxn, WriteTxn};
use crate::schema::{
    self, NamespaceRecord, BLOB, CONTAINERS, CONTENT, IMAGES, INGESTS, LEASES, SNAPSHOTS, V1,
};
use crate::validate::{normalize_labels, validate_identifier, validate_label, validate_labels};
use crate::Labels;

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// Namespace operations; from [`Db::namespaces`].
#[derive(Clone, Copy)]
pub struct Namespaces<'a> {
    db: &'a Db,
}

impl Db {
    /// Namespace operations.
    pub fn namespaces(&self) -> Namespaces<'_> {
        Namespaces { db: self }
    }
}

fn read_labels<R: ReadTxn + ?Sized>(tx: &R, name: &str) -> Result<Labels> {
    Ok(schema::get_json::<Labels, _>(tx, &schema::namespace_labels_key(name))?.unwrap_or_default())
}

fn write_labels<W: WriteTxn + ?Sized>(
    tx: &mut W,
    name: &str,
    mut labels: Labels,
) -> Result<Labels> {
    normalize_labels(&mut labels);
    let key = schema::namespace_labels_key(name);
    if labels.is_empty() {
        tx.delete(&key)?;
    } else {
        schema::put_json(tx, &key, &labels)?;
    }
    Ok(labels)
}

fn exists<R: ReadTxn + ?Sized>(tx: &R, name: &str) -> Result<bool> {
    Ok(tx.get(&schema::namespace_key(name))?.is_some())
}

impl Namespaces<'_> {
    /// Creates a namespace. `AlreadyExists` if it exists (also when it was
    /// created implicitly by writing objects into it).
    pub fn create(&self, name: &str, labels: Labels) -> Result<Namespace> {
        validate_identifier("namespace", name)?;
        validate_labels("namespace.Labels", &labels)?;
        self.db.update(|tx| {
            if exists(tx, name)? {
                return Err(Error::AlreadyExists(format!("namespace {name:?}")));
            }
            schema::put_json(
                tx,
                &schema::namespace_key(name),
                &NamespaceRecord::default(),
            )?;
            let labels = write_labels(tx, name, labels)?;
            Ok(Namespace {
                name: name.to_string(),
                labels,
            })
        })
    }

    /// The namespace and its labels; `NotFound` if it does not exist.
    pub fn get(&self, name: &str) -> Result<Namespace> {
        validate_identifier("namespace", name)?;
        self.db.view(|tx| {
            if !exists(tx, name)? {
                return Err(Error::NotFound(format!("namespace {name:?}")));
            }
            Ok(Namespace {
                name: name.to_string(),
                labels: read_labels(tx, name)?,
            })
        })
    }

    /// All namespaces, sorted by name.
    pub fn list(&self) -> Result<Vec<Namespace>> {
        self.db.view(|tx| {
            schema::list_namespaces(tx)?
                .into_iter()
                .map(|name| {
                    let labels = read_labels(tx, &name)?;
                    Ok(Namespace { name, labels })
                })
                .collect()
        })
    }

    /// Updates labels. `paths` is a field mask: `labels.<key>` sets that
    /// label from `labels` (removing it when absent or empty), `labels`
    /// replaces all labels; no paths replaces all labels. Like containerd,
    /// updating a namespace that does not exist creates it.
    pub fn update(&self, name: &str, labels: Labels, paths: &[String]) -> Result<Namespace> {
        validate_identifier("namespace", name)?;
        self.db.update(|tx| {
            let current = read_labels(tx, name)?;
            let next = apply_label_mask(current, &labels, paths, "namespace", name)?;
            validate_labels("namespace.Labels", &next)?;
            schema::ensure_namespace(tx, name)?;
            let labels = write_labels(tx, name, next)?;
            Ok(Namespace {
                name: name.to_string(),
                labels,
            })
        })
    }

    /// Deletes an empty namespace. `NotFound` if it does not exist;
    /// `FailedPrecondition` naming what it still holds otherwise.
    pub fn delete(&self, name: &str) -> Result<()> {
        validate_identifier("namespace", name)?;
        self.db.update(|tx| {
            if !exists(tx, name)? {
                return Err(Error::NotFound(format!("namespace {name:?}")));
            }
            let held = held_objects(tx, name)?;
            if !held.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "namespace {name:?} must be empty, but it still has {}",
                    held.join(", ")
                )));
            }
            tx.delete_prefix(&schema::namespace_key(name))?;
            Ok(())
        })
    }
}

/// Applies a `labels` / `labels.<key>` field mask (empty = replace all).
pub(crate) fn apply_label_mask(
    mut current: Labels,
    update: &Labels,
    paths: &[String],
    what: &str,
    name: &str,
) -> Result<Labels> {
    if paths.is_empty() {
        return Ok(update.clone());
    }
    for path in paths {
        if let Some(key) = path.strip_prefix("labels.") {
            match update.get(key) {
                Some(v) if !v.is_empty() => {
                    validate_label(key, v)?;
                    current.insert(key.to_string(), v.clone());
                }
                _ => {
                    current.remove(key);
                }
            }
        } else if path == "labels" {
            current = update.clone();
        } else {
            return Err(Error::InvalidArgument(format!(
                "cannot update {path:?} field on {what} {name:?}"
            )));
        }
    }
    Ok(current)
}

/// What kinds of objects a namespace still holds, for messages.
fn held_objects<R: ReadTxn + ?Sized>(tx: &R, ns: &str) -> Result<Vec<String>> {
    let mut held = Vec::new();
    let checks: [(&[&str], &str); 5] = [
        (&[V1, ns, IMAGES], "images"),
        (&[V1, ns, CONTENT, BLOB], "content blobs"),
        (&[V1, ns, CONTENT, INGESTS], "content ingests"),
        (&[V1, ns, CONTAINERS], "containers"),
        (&[V1, ns, LEASES], "leases"),
    ];
    for (parts, what) in checks {
        if tx.has_prefix(&schema::encode(parts))? {
            held.push(what.to_string());
        }
    }
    // Snapshots, per snapshotter (as containerd reports them).
    let prefix = schema::encode(&[V1, ns, SNAPSHOTS]);
    let mut snapshotters: Vec<String> = Vec::new();
    tx.scan_prefix(&prefix, &mut |k, _| {
        if let Some(rest) = schema::decode(&k[prefix.len()..]) {
            if let Some(s) = rest.into_iter().next() {
                if snapshotters.last() != Some(&s) {
                    snapshotters.push(s);
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    for s in snapshotters {
        held.push(format!("snapshots on {s:?} snapshotter"));
    }
    Ok(held)
}
