//! The one on-disk layout of the metadata store, versioned.
//!
//! Keys are sequences of string components (written `a/b/c` below) encoded so
//! that byte order is component order and a component may hold any byte (see
//! `encode`); values are JSON. Timestamps are `[unix seconds, nanoseconds]`.
//! Labels with empty values are never stored (setting one to "" removes it).
//!
//! ```text
//! v1                                        {"version":1}           schema version record
//! v1/<ns>                                   {}                      the namespace exists
//! v1/<ns>/labels                            {"<key>":"<value>",..}  namespace labels
//! v1/<ns>/content/blob/<digest>             {"size":N,"created_at":T,"updated_at":T,"labels":{..}}
//! v1/<ns>/content/ingests/<ref>             {"bref":"<backend ref>","expected":"<digest>"|null,"expire_at":T|null}
//! v1/<ns>/leases/<id>                       {"created_at":T,"labels":{..}}
//! v1/<ns>/leases/<id>/content/<digest>      ""                      lease resources
//! v1/<ns>/leases/<id>/ingests/<ref>         ""
//! v1/<ns>/leases/<id>/images/<name>         ""
//! v1/<ns>/leases/<id>/containers/<id>       ""
//! v1/<ns>/leases/<id>/snapshots/<snapshotter>/<key>  ""
//! v1/<ns>/images/<name>                     {"labels":{..},"target":{"media_type":..,"digest":..,"size":N,"annotations":{..}},
//!                                            "created_at":T,"updated_at":T}     (see `images.rs`)
//! v1/<ns>/containers/<id>                   {"labels":{..},"image":..,"runtime":{"name":..,"options":Any|null},"spec":Any,
//!                                            "snapshotter":..,"snapshot_key":..,"created_at":T,"updated_at":T,
//!                                            "extensions":{..},"sandbox":..}   (Any = {"type_url":..,"value":"<hex>"}; see `containers.rs`)
//! v1/<ns>/snapshots/<snapshotter>/<key>     {"bkey":"<backend key>","kind":"active"|"view"|"committed",
//!                                            "parent":"<key>","created_at":T,"updated_at":T,"labels":{..},
//!                                            "pending":{..}|absent}
//! v1/<ns>/snapshots/<snapshotter>/<key>/children/<child>  ""        child links
//! ```
//!
//! Notes:
//! - `<ns>` is an identifier (`[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`), so it can
//!   never collide with the other components at its level.
//! - The backend ref of an ingest is `<ns>/<random>/<ref>`: unique, so two
//!   namespaces (or an aborted and a new ingest) never share a backend ingest.
//! - Content blobs themselves are shared by all namespaces in the blob store;
//!   a namespace sees a blob only through its `content/blob/<digest>` record.
//! - The backend key of a snapshot is `<ns>/<random>/<key>`: unique, so two
//!   namespaces (or a removed and a re-created key) never share a backend
//!   snapshot. A snapshot's `parent` is the namespace's key of its committed
//!   parent; the parent lists it under `children` (so a parent with children
//!   cannot be removed).
//! - `pending` marks a snapshot whose backend work has not been confirmed:
//!   `{"op":"create","lease":..}` on a reserved prepare/view key, and
//!   `{"op":"commit","from":"<key>","lease":..}` on a name being committed
//!   from an active key (which carries `{"op":"committing","to":"<name>"}`).
//!   Pending records are invisible to Stat/Walk, are GC roots, and are rolled
//!   back or forward from the backend's state when the snapshotter is
//!   registered (crash recovery; see `snapshots.rs`).
//! - An ingest has `expire_at` (24h after it was opened) unless it was opened
//!   under a lease, in which case the lease keeps it (see the `gc` module).
//! - A change to this layout needs a new version and a migration in
//!   `db.rs` (`init_schema`); additions that old code ignores may stay in `v1`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::SystemTime;

use berth_content::Digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kv::{prefix_end, ReadTxn, WriteTxn};
use crate::time::nanos;
use crate::Labels;

/// The schema version bucket.
pub(crate) const V1: &str = "v1";
/// The schema minor version written by this code.
pub(crate) const SCHEMA_VERSION: u32 = 1;

pub(crate) const LABELS: &str = "labels";
pub(crate) const CONTENT: &str = "content";
pub(crate) const BLOB: &str = "blob";
pub(crate) const INGESTS: &str = "ingests";
pub(crate) const LEASES: &str = "leases";
pub(crate) const IMAGES: &str = "images";
pub(crate) const CONTAINERS: &str = "containers";
pub(crate) const SNAPSHOTS: &str = "snapshots";
pub(crate) const CHILDREN: &str = "children";

const TERM: u8 = 0x00;
const ESC: u8 = 0x01;

/// Encodes key components: each component's bytes with 0x00 escaped as
/// `01 01` and 0x01 as `01 02`, then a 0x00 terminator. So no encoded
/// component is a prefix of another, and the encoding of a path is a prefix
/// of the encodings of exactly its descendants.
pub(crate) fn encode(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for p in parts {
        for &b in p.as_bytes() {
            match b {
                TERM => out.extend_from_slice(&[ESC, 0x01]),
                ESC => out.extend_from_slice(&[ESC, 0x02]),
                b => out.push(b),
            }
        }
        out.push(TERM);
    }
    out
}

/// The inverse of [`encode`].
pub(crate) fn decode(key: &[u8]) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < key.len() {
        match key[i] {
            TERM => parts.push(String::from_utf8(std::mem::take(&mut cur)).ok()?),
            ESC => {
                i += 1;
                match key.get(i)? {
                    0x01 => cur.push(TERM),
                    0x02 => cur.push(ESC),
                    _ => return None,
                }
            }
            b => cur.push(b),
        }
        i += 1;
    }
    if !cur.is_empty() {
        return None;
    }
    Some(parts)
}

/// A key for messages: components joined by `/`.
pub(crate) fn display_key(key: &[u8]) -> String {
    match decode(key) {
        Some(parts) => parts.join("/"),
        None => format!("{key:?}"),
    }
}

pub(crate) fn namespace_key(ns: &str) -> Vec<u8> {
    encode(&[V1, ns])
}

pub(crate) fn namespace_labels_key(ns: &str) -> Vec<u8> {
    encode(&[V1, ns, LABELS])
}

pub(crate) fn blobs_prefix(ns: &str) -> Vec<u8> {
    encode(&[V1, ns, CONTENT, BLOB])
}

pub(crate) fn blob_key(ns: &str, digest: &Digest) -> Vec<u8> {
    encode(&[V1, ns, CONTENT, BLOB, &digest.to_string()])
}

pub(crate) fn ingests_prefix(ns: &str) -> Vec<u8> {
    encode(&[V1, ns, CONTENT, INGESTS])
}

pub(crate) fn ingest_key(ns: &str, reference: &str) -> Vec<u8> {
    encode(&[V1, ns, CONTENT, INGESTS, reference])
}

pub(crate) fn leases_prefix(ns: &str) -> Vec<u8> {
    encode(&[V1, ns, LEASES])
}

pub(crate) fn lease_key(ns: &str, id: &str) -> Vec<u8> {
    encode(&[V1, ns, LEASES, id])
}

/// `v1/<ns>/leases/<id>/<resource parts..>`
pub(crate) fn lease_resource_key(ns: &str, id: &str, resource: &[&str]) -> Vec<u8> {
    let mut parts = vec![V1, ns, LEASES, id];
    parts.extend_from_slice(resource);
    encode(&parts)
}

/// `v1/<ns>/snapshots`: every snapshotter's records of the namespace.
pub(crate) fn snapshots_prefix(ns: &str) -> Vec<u8> {
    encode(&[V1, ns, SNAPSHOTS])
}

/// `v1/<ns>/snapshots/<snapshotter>`
pub(crate) fn snapshotter_prefix(ns: &str, snapshotter: &str) -> Vec<u8> {
    encode(&[V1, ns, SNAPSHOTS, snapshotter])
}

/// `v1/<ns>/snapshots/<snapshotter>/<key>` (also the prefix of its child links).
pub(crate) fn snapshot_key(ns: &str, snapshotter: &str, key: &str) -> Vec<u8> {
    encode(&[V1, ns, SNAPSHOTS, snapshotter, key])
}

/// `v1/<ns>/snapshots/<snapshotter>/<parent>/children/<child>`
pub(crate) fn snapshot_child_key(
    ns: &str,
    snapshotter: &str,
    parent: &str,
    child: &str,
) -> Vec<u8> {
    encode(&[V1, ns, SNAPSHOTS, snapshotter, parent, CHILDREN, child])
}

/// `v1/<ns>/snapshots/<snapshotter>/<parent>/children`
pub(crate) fn snapshot_children_prefix(ns: &str, snapshotter: &str, parent: &str) -> Vec<u8> {
    encode(&[V1, ns, SNAPSHOTS, snapshotter, parent, CHILDREN])
}

/// Schema version record at `v1`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SchemaRecord {
    pub(crate) version: u32,
}

/// Namespace marker at `v1/<ns>`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct NamespaceRecord {}

/// `v1/<ns>/content/blob/<digest>`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BlobRecord {
    pub(crate) size: u64,
    #[serde(with = "nanos")]
    pub(crate) created_at: SystemTime,
    #[serde(with = "nanos")]
    pub(crate) updated_at: SystemTime,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: Labels,
}

/// `v1/<ns>/content/ingests/<ref>`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IngestRecord {
    /// The reference of the ingest in the blob store.
    pub(crate) bref: String,
    /// Set when the ingest resolves to a blob already in the store (shared
    /// content): GC keeps that blob while the ingest exists.
    #[serde(default)]
    pub(crate) expected: Option<Digest>,
    /// After this the ingest is no longer a GC root; `None` when leased.
    #[serde(default, with = "nanos::option")]
    pub(crate) expire_at: Option<SystemTime>,
}

/// `v1/<ns>/leases/<id>`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    #[serde(with = "nanos")]
    pub(crate) created_at: SystemTime,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: Labels,
}

/// A snapshot's kind as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SnapshotKind {
    View,
    Active,
    Committed,
}

/// Backend work a snapshot record is waiting for (see the module notes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Pending {
    /// A reserved prepare/view key; the backend snapshot may not exist yet.
    Create {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<String>,
    },
    /// A name being committed from active key `from`.
    Commit {
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<String>,
    },
    /// An active key being committed as `to`.
    Committing { to: String },
}

/// `v1/<ns>/snapshots/<snapshotter>/<key>`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    /// The key of the snapshot in the backend.
    pub(crate) bkey: String,
    pub(crate) kind: SnapshotKind,
    /// The namespace's key of the parent; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) parent: String,
    #[serde(with = "nanos")]
    pub(crate) created_at: SystemTime,
    #[serde(with = "nanos")]
    pub(crate) updated_at: SystemTime,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pending: Option<Pending>,
}

pub(crate) fn get_json<T, R>(tx: &R, key: &[u8]) -> Result<Option<T>>
where
    T: DeserializeOwned,
    R: ReadTxn + ?Sized,
{
    match tx.get(key)? {
        None => Ok(None),
        Some(v) => decode_json(key, &v).map(Some),
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| Error::Corrupt {
        key: display_key(key),
        reason: e.to_string(),
    })
}

pub(crate) fn put_json<T, W>(tx: &mut W, key: &[u8], value: &T) -> Result<()>
where
    T: Serialize,
    W: WriteTxn + ?Sized,
{
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        key: display_key(key),
        reason: format!("cannot encode record: {e}"),
    })?;
    tx.put(key, &bytes)
}

/// Visits the keys under `prefix` whose remaining components number exactly
/// `depth`, passing those components and the value.
pub(crate) fn scan_children<R: ReadTxn + ?Sized>(
    tx: &R,
    prefix: &[u8],
    depth: usize,
    mut f: impl FnMut(&[u8], Vec<String>, &[u8]) -> Result<()>,
) -> Result<()> {
    tx.scan_prefix(prefix, &mut |k, v| {
        if let Some(rest) = decode(&k[prefix.len()..]) {
            if rest.len() == depth {
                f(k, rest, v)?;
            }
        }
        Ok(ControlFlow::Continue(()))
    })
}

/// All namespaces, in order. Skips over each namespace's subtree, so the cost
/// is one seek per namespace.
pub(crate) fn list_namespaces<R: ReadTxn + ?Sized>(tx: &R) -> Result<Vec<String>> {
    use std::ops::Bound;
    let v1 = encode(&[V1]);
    let v1_end = prefix_end(&v1);
    let mut out = Vec::new();
    let mut start = v1.clone();
    let mut inclusive = false;
    loop {
        let lower = if inclusive {
            Bound::Included(start.as_slice())
        } else {
            Bound::Excluded(start.as_slice())
        };
        let upper = match &v1_end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        let Some((k, _)) = tx.first_in(lower, upper)? else {
            break;
        };
        let Some(rest) = decode(&k[v1.len()..]) else {
            return Err(Error::Corrupt {
                key: display_key(&k),
                reason: "undecodable key".into(),
            });
        };
        let Some(ns) = rest.into_iter().next() else {
            break;
        };
        let ns_prefix = namespace_key(&ns);
        out.push(ns);
        match prefix_end(&ns_prefix) {
            Some(next) => {
                start = next;
                inclusive = true;
            }
            None => break,
        }
    }
    Ok(out)
}

/// Creates the namespace marker if missing (containerd creates the namespace
/// bucket on the first write of any object into it).
pub(crate) fn ensure_namespace<W: WriteTxn + ?Sized>(tx: &mut W, ns: &str) -> Result<()> {
    let key = namespace_key(ns);
    if tx.get(&key)?.is_none() {
        put_json(tx, &key, &NamespaceRecord::default())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_roundtrip_and_prefixes() {
        for parts in [
            vec!["v1", "ns", "content", "blob", "sha256:abc"],
            vec!["a\0b", "\u{1}", ""],
            vec!["snap/shot key", "x"],
        ] {
            let k = encode(&parts);
            let back = decode(&k).unwrap();
            assert_eq!(back, parts);
        }
        // "ab" is not a prefix-path of "abc".
        let ab = encode(&["v1", "ab"]);
        let abc = encode(&["v1", "abc"]);
        assert!(!abc.starts_with(&ab));
        // A path is a prefix of its descendants.
        assert!(encode(&["v1", "ab", "x"]).starts_with(&ab));
        assert!(decode(b"a").is_none());
    }
}
