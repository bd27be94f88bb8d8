//! Garbage collection: mark and sweep over all namespaces (containerd's
//! `metadata/gc.go` and `db.go` GarbageCollect).
//!
//! Roots:
//! - leases, unless labelled `containerd.io/gc.expire` with an RFC 3339 time
//!   that has passed, and every resource they hold;
//! - objects labelled `containerd.io/gc.root` (content, snapshots);
//! - ingests whose `expire_at` is in the future (leased ingests have none and
//!   live only through their lease);
//! - snapshots whose backend work is pending (in flight, or a crash remnant
//!   that recovery resolves when the snapshotter is registered);
//! - images, unless labelled `containerd.io/gc.expire` with a time that has
//!   passed (see `images.rs`); (later) containers.
//!
//! Edges (from an object's labels; `<any>` after `.` or `/`):
//! - `containerd.io/gc.ref.content`, `containerd.io/gc.ref.content.<any>`,
//!   `containerd.io/gc.ref.content/<any>` -> the content with that digest;
//! - `containerd.io/gc.ref.snapshot.<snapshotter>[/<any>]` -> that snapshot;
//! - `containerd.io/gc.ref.image[.<any>|/<any>]` -> that image;
//! - an image -> its target content (and its labels' references);
//! - an ingest with an expected digest -> that content;
//! - a snapshot -> its parent (same namespace and snapshotter).
//!
//! Sweep: unreachable content records, ingest records, snapshot records and
//! leases (expired ones included) of every namespace are deleted in ONE write
//! transaction, which also does the marking so nothing changes in between.
//! Then, outside any KV write transaction, blobs that no namespace references
//! any more and blob-store ingests that no namespace's ingest record names are
//! removed from disk (under the content lock, so no commit races the sweep);
//! and, per registered snapshotter (under its lock, so no snapshot is created
//! meanwhile), backend snapshots no record names are removed, children before
//! parents, followed by the backend's `cleanup`.
//!
//! Adding a resource type: a [`ResourceKind`] variant, its roots in
//! `scan_roots`, its outgoing edges in `references`, its records in
//! `scan_all` and its deletion in `remove` (and, if it has backend data, a
//! sweep like `sweep_content` / `sweep_snapshots`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime};

use berth_content::Digest;
use berth_errdefs::ErrorKind;

use crate::db::Db;
use crate::error::Result;
use crate::kv::{ReadTxn, WriteTxn};
use crate::schema::{
    self, BlobRecord, IngestRecord, LeaseRecord, SnapshotRecord, CONTAINERS, CONTENT, IMAGES,
    INGESTS, SNAPSHOTS,
};
use crate::time::parse_rfc3339;
use crate::Labels;

/// Label marking an object as a GC root.
pub const LABEL_GC_ROOT: &str = "containerd.io/gc.root";
/// Label giving a lease (or image) an expiry time (RFC 3339).
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";
/// Label prefix of references to content.
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Label prefix of references to snapshots (`.<snapshotter>` follows).
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Label prefix of references to images.
pub const LABEL_GC_REF_IMAGE: &str = "containerd.io/gc.ref.image";

/// The kinds of records GC knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// `content/blob/<digest>`; key = digest.
    Content,
    /// `content/ingests/<ref>`; key = ref.
    Ingest,
    /// `leases/<id>`; key = id.
    Lease,
    /// `images/<name>`; key = name.
    Image,
    /// `containers/<id>`; key = id.
    Container,
    /// `snapshots/<snapshotter>/<key>`; key = `<snapshotter>/<key>`.
    Snapshot,
}

/// A record removed by GC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Removed {
    pub namespace: String,
    pub kind: ResourceKind,
    pub key: String,
}

/// A backend snapshot removed by GC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemovedSnapshot {
    /// The snapshotter's name.
    pub snapshotter: String,
    /// The backend's key (`<ns>/<random>/<key>`).
    pub key: String,
}

/// What a collection did.
#[derive(Debug, Clone, Default)]
pub struct GcStats {
    /// Records deleted from the metadata store (for events: e.g. content
    /// records per namespace, later images and snapshots).
    pub removed: Vec<Removed>,
    /// Blobs deleted from the blob store.
    pub blobs_removed: Vec<Digest>,
    /// Blob-store ingests aborted (backend refs).
    pub ingests_aborted: Vec<String>,
    /// Backend snapshots removed, in the order they were removed (children
    /// before parents).
    pub snapshots_removed: Vec<RemovedSnapshot>,
    /// Time spent marking and sweeping records (the write transaction).
    pub meta_duration: Duration,
    /// Time spent removing blobs and ingests from disk.
    pub content_duration: Duration,
    /// Time spent removing backend snapshots (and in backends' cleanup).
    pub snapshot_duration: Duration,
}

impl GcStats {
    /// Number of records removed.
    pub fn records_removed(&self) -> usize {
        self.removed.len()
    }

    /// Total time.
    pub fn elapsed(&self) -> Duration {
        self.meta_duration + self.content_duration + self.snapshot_duration
    }

    /// Content records removed, as (namespace, digest).
    pub fn removed_content(&self) -> impl Iterator<Item = (&str, &str)> {
        self.removed
            .iter()
            .filter(|r| r.kind == ResourceKind::Content)
            .map(|r| (r.namespace.as_str(), r.key.as_str()))
    }

    /// Snapshot records removed, as (namespace, snapshotter, key).
    pub fn removed_snapshots(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.removed
            .iter()
            .filter(|r| r.kind == ResourceKind::Snapshot)
            .filter_map(|r| {
                let (sn, key) = r.key.split_once('/')?;
                Some((r.namespace.as_str(), sn, key))
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Node {
    kind: ResourceKind,
    ns: String,
    key: String,
}

fn node(kind: ResourceKind, ns: &str, key: impl Into<String>) -> Node {
    Node {
        kind,
        ns: ns.to_string(),
        key: key.into(),
    }
}

impl Db {
    /// Runs one mark-and-sweep collection over all namespaces.
    pub fn garbage_collect(&self) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let t0 = Instant::now();
        let now = SystemTime::now();
        // Most runs find nothing: look in a read transaction first, so that those write
        // (and fsync) nothing.
        let any_garbage = self.view(|tx| {
            let marked = mark(tx, scan_roots(tx, now)?)?;
            Ok(scan_all(tx)?.iter().any(|n| !marked.contains(n)))
        })?;
        stats.removed = if !any_garbage {
            Vec::new()
        } else {
            self.update(|tx| {
                let roots = scan_roots(tx, now)?;
                let marked = mark(tx, roots)?;
                let mut removed = Vec::new();
                for n in scan_all(tx)? {
                    if !marked.contains(&n) {
                        remove(tx, &n)?;
                        removed.push(Removed {
                            namespace: n.ns,
                            kind: n.kind,
                            key: n.key,
                        });
                    }
                }
                removed.sort();
                Ok(removed)
            })?
        };
        stats.meta_duration = t0.elapsed();
        for r in &stats.removed {
            tracing::debug!(namespace = %r.namespace, kind = ?r.kind, key = %r.key, "gc removed record");
        }

        let t1 = Instant::now();
        self.sweep_content(&mut stats)?;
        stats.content_duration = t1.elapsed();

        let t2 = Instant::now();
        let swept = self.sweep_snapshots(&mut stats);
        stats.snapshot_duration = t2.elapsed();
        swept?;
        Ok(stats)
    }

    /// Removes backend snapshots no record names, leaf first, then lets each
    /// backend clean up. Per snapshotter, holds its lock exclusively (no
    /// prepare/view/commit meanwhile), never a KV write. A snapshot the
    /// backend refuses to remove is logged and left for the next run.
    fn sweep_snapshots(&self, stats: &mut GcStats) -> Result<()> {
        let mut first_err = None;
        for (name, reg) in self.registered_snapshotters() {
            let _exclusive = reg.exclusive();
            let seen = self.view(|tx| crate::snapshots::referenced_bkeys(tx, &name))?;
            let mut nodes: BTreeMap<String, String> = BTreeMap::new();
            if let Err(e) = reg.backend.walk(&[], &mut |info| {
                nodes.insert(info.name, info.parent);
                Ok(())
            }) {
                tracing::warn!(snapshotter = %name, error = %e, "gc: cannot walk snapshots");
                first_err.get_or_insert(crate::Error::snapshotter(
                    format!("gc: walk snapshotter {name:?}"),
                    e,
                ));
                continue;
            }
            let orphans: Vec<String> = nodes
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for key in crate::snapshots::leaf_first(&nodes, orphans) {
                match reg.backend.remove(&key) {
                    Ok(()) => {
                        tracing::debug!(snapshotter = %name, key = %key, "gc removed snapshot");
                        stats.snapshots_removed.push(RemovedSnapshot {
                            snapshotter: name.clone(),
                            key,
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(snapshotter = %name, key = %key, error = %e,
                            "gc: cannot remove snapshot; leaving it for the next run");
                    }
                }
            }
            if let Err(e) = reg.backend.cleanup() {
                tracing::warn!(snapshotter = %name, error = %e, "gc: snapshotter cleanup failed");
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Deletes unreferenced blobs and orphan blob-store ingests. Holds the
    /// content lock exclusively (no commits meanwhile), never a KV write.
    fn sweep_content(&self, stats: &mut GcStats) -> Result<()> {
        let _exclusive = self.content_exclusive();
        let (blobs_seen, brefs_seen) = self.view(|tx| {
            let mut blobs: HashSet<Digest> = HashSet::new();
            let mut brefs: HashSet<String> = HashSet::new();
            for ns in schema::list_namespaces(tx)? {
                schema::scan_children(tx, &schema::blobs_prefix(&ns), 1, |_, rest, _| {
                    if let Some(d) = rest.first().and_then(|d| Digest::parse(d).ok()) {
                        blobs.insert(d);
                    }
                    Ok(())
                })?;
                schema::scan_children(tx, &schema::ingests_prefix(&ns), 1, |k, _, v| {
                    let r: IngestRecord = schema::decode_json(k, v)?;
                    // An expected digest may come from another namespace:
                    // keep that blob while the ingest exists.
                    if let Some(d) = r.expected {
                        blobs.insert(d);
                    }
                    brefs.insert(r.bref);
                    Ok(())
                })?;
            }
            Ok((blobs, brefs))
        })?;

        let store = &self.store;
        let mut orphans = Vec::new();
        store
            .walk(|info| {
                if !blobs_seen.contains(&info.digest) {
                    orphans.push(info.digest);
                }
                Ok(())
            })
            .map_err(|e| crate::Error::content("gc: walk blobs", e))?;
        for d in orphans {
            match store.delete(&d) {
                Ok(()) => {
                    tracing::debug!(digest = %d, "gc removed blob");
                    stats.blobs_removed.push(d);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(crate::Error::content(format!("gc: delete blob {d}"), e)),
            }
        }

        let statuses = store
            .list_statuses()
            .map_err(|e| crate::Error::content("gc: list ingests", e))?;
        for st in statuses {
            if brefs_seen.contains(&st.reference) {
                continue;
            }
            match store.abort(&st.reference) {
                Ok(()) => {
                    tracing::debug!(reference = %st.reference, "gc aborted ingest");
                    stats.ingests_aborted.push(st.reference);
                }
                // Gone, or a live writer holds it: leave it for next time.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unavailable) => {}
                Err(e) => {
                    return Err(crate::Error::content(
                        format!("gc: abort ingest {:?}", st.reference),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}

fn lease_expired(labels: &Labels, now: SystemTime, ns: &str, id: &str) -> bool {
    match labels.get(LABEL_GC_EXPIRE) {
        None => false,
        Some(v) => match parse_rfc3339(v) {
            Some(t) => now > t,
            None => {
                tracing::info!(namespace = ns, lease = id, value = %v, "ignoring invalid lease expiration");
                false
            }
        },
    }
}

/// Collects the roots of every namespace.
fn scan_roots<R: ReadTxn + ?Sized>(tx: &R, now: SystemTime) -> Result<Vec<Node>> {
    let mut roots = Vec::new();
    for ns in schema::list_namespaces(tx)? {
        // Leases and what they hold.
        let leases = schema::leases_prefix(&ns);
        let mut live: HashSet<String> = HashSet::new();
        schema::scan_children(tx, &leases, 1, |k, rest, v| {
            let id = rest.into_iter().next().unwrap_or_default();
            let record: LeaseRecord = schema::decode_json(k, v)?;
            if !lease_expired(&record.labels, now, &ns, &id) {
                roots.push(node(ResourceKind::Lease, &ns, id.clone()));
                live.insert(id);
            }
            Ok(())
        })?;
        for depth in [3, 4] {
            schema::scan_children(tx, &leases, depth, |_, rest, _| {
                if !live.contains(&rest[0]) {
                    return Ok(());
                }
                let n = match (rest[1].as_str(), &rest[2..]) {
                    (CONTENT, [d]) => node(ResourceKind::Content, &ns, d.clone()),
                    (INGESTS, [r]) => node(ResourceKind::Ingest, &ns, r.clone()),
                    (IMAGES, [i]) => node(ResourceKind::Image, &ns, i.clone()),
                    (CONTAINERS, [c]) => node(ResourceKind::Container, &ns, c.clone()),
                    (SNAPSHOTS, [s, key]) => {
                        node(ResourceKind::Snapshot, &ns, format!("{s}/{key}"))
                    }
                    _ => return Ok(()),
                };
                roots.push(n);
                Ok(())
            })?;
        }

        // Every container (containerd: containers are always roots).
        schema::scan_children(
            tx,
            &crate::containers::containers_prefix(&ns),
            1,
            |_, rest, _| {
                roots.push(node(ResourceKind::Container, &ns, rest[0].clone()));
                Ok(())
            },
        )?;

        // Unexpired ingests.
        schema::scan_children(tx, &schema::ingests_prefix(&ns), 1, |k, rest, v| {
            let r: IngestRecord = schema::decode_json(k, v)?;
            if r.expire_at.is_some_and(|t| t > now) {
                roots.push(node(ResourceKind::Ingest, &ns, rest[0].clone()));
            }
            Ok(())
        })?;

        // Content labelled as a root.
        schema::scan_children(tx, &schema::blobs_prefix(&ns), 1, |k, rest, v| {
            let r: BlobRecord = schema::decode_json(k, v)?;
            if r.labels.contains_key(LABEL_GC_ROOT) {
                roots.push(node(ResourceKind::Content, &ns, rest[0].clone()));
            }
            Ok(())
        })?;

        // Images (unless expired).
        for name in crate::images::gc_roots(tx, &ns, now)? {
            roots.push(node(ResourceKind::Image, &ns, name));
        }

        // Snapshots labelled as a root, or with backend work pending.
        schema::scan_children(tx, &schema::snapshots_prefix(&ns), 2, |k, rest, v| {
            let r: SnapshotRecord = schema::decode_json(k, v)?;
            if r.labels.contains_key(LABEL_GC_ROOT) || r.pending.is_some() {
                roots.push(node(
                    ResourceKind::Snapshot,
                    &ns,
                    format!("{}/{}", rest[0], rest[1]),
                ));
            }
            Ok(())
        })?;
    }
    Ok(roots)
}

/// The nodes an object's labels reference.
fn label_refs(ns: &str, labels: &Labels, out: &mut Vec<Node>) {
    // `prefix` alone, or followed by `.`/`/` and anything.
    let is_ref = |k: &str, prefix: &str| match k.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('.') || rest.starts_with('/'),
        None => false,
    };
    for (k, v) in labels {
        if is_ref(k, LABEL_GC_REF_CONTENT) {
            out.push(node(ResourceKind::Content, ns, v.clone()));
        } else if let Some(rest) = k.strip_prefix(LABEL_GC_REF_SNAPSHOT) {
            let snapshotter = rest.split('/').next().unwrap_or_default();
            if !snapshotter.is_empty() {
                out.push(node(
                    ResourceKind::Snapshot,
                    ns,
                    format!("{snapshotter}/{v}"),
                ));
            }
        } else if is_ref(k, LABEL_GC_REF_IMAGE) {
            out.push(node(ResourceKind::Image, ns, v.clone()));
        }
    }
}

/// The outgoing edges of a node.
fn references<R: ReadTxn + ?Sized>(tx: &R, n: &Node, out: &mut Vec<Node>) -> Result<()> {
    match n.kind {
        ResourceKind::Content => {
            let Ok(d) = Digest::parse(&n.key) else {
                return Ok(());
            };
            if let Some(r) = schema::get_json::<BlobRecord, _>(tx, &schema::blob_key(&n.ns, &d))? {
                label_refs(&n.ns, &r.labels, out);
            }
        }
        ResourceKind::Ingest => {
            let key = schema::ingest_key(&n.ns, &n.key);
            if let Some(r) = schema::get_json::<IngestRecord, _>(tx, &key)? {
                if let Some(d) = r.expected {
                    out.push(node(ResourceKind::Content, &n.ns, d.to_string()));
                }
            }
        }
        ResourceKind::Snapshot => {
            let Some((sn, key)) = n.key.split_once('/') else {
                return Ok(());
            };
            let rkey = schema::snapshot_key(&n.ns, sn, key);
            if let Some(r) = schema::get_json::<SnapshotRecord, _>(tx, &rkey)? {
                if !r.parent.is_empty() {
                    out.push(node(
                        ResourceKind::Snapshot,
                        &n.ns,
                        format!("{sn}/{}", r.parent),
                    ));
                }
                label_refs(&n.ns, &r.labels, out);
            }
        }
        ResourceKind::Container => {
            if let Ok(c) = crate::containers::read_in(tx, &n.ns, &n.key) {
                if !c.snapshotter.is_empty() && !c.snapshot_key.is_empty() {
                    out.push(node(
                        ResourceKind::Snapshot,
                        &n.ns,
                        format!("{}/{}", c.snapshotter, c.snapshot_key),
                    ));
                }
                label_refs(&n.ns, &c.labels, out);
            }
        }
        // An image holds its target and what its labels name.
        ResourceKind::Image => {
            if let Some((target, labels)) = crate::images::gc_edges(tx, &n.ns, &n.key)? {
                out.push(node(ResourceKind::Content, &n.ns, target));
                label_refs(&n.ns, &labels, out);
            }
        }
        // A lease's resources are roots already.
        ResourceKind::Lease => {}
    }
    Ok(())
}

/// Everything reachable from `roots`.
fn mark<R: ReadTxn + ?Sized>(tx: &R, roots: Vec<Node>) -> Result<HashSet<Node>> {
    let mut marked: HashSet<Node> = HashSet::new();
    let mut stack = roots;
    let mut refs = Vec::new();
    while let Some(n) = stack.pop() {
        if marked.contains(&n) {
            continue;
        }
        refs.clear();
        references(tx, &n, &mut refs)?;
        marked.insert(n);
        stack.extend(refs.drain(..).filter(|r| !marked.contains(r)));
    }
    Ok(marked)
}

/// Every collectible record of every namespace.
fn scan_all<R: ReadTxn + ?Sized>(tx: &R) -> Result<Vec<Node>> {
    let mut all = Vec::new();
    for ns in schema::list_namespaces(tx)? {
        let kinds: [(Vec<u8>, ResourceKind); 3] = [
            (schema::leases_prefix(&ns), ResourceKind::Lease),
            (schema::ingests_prefix(&ns), ResourceKind::Ingest),
            (schema::blobs_prefix(&ns), ResourceKind::Content),
        ];
        for (prefix, kind) in kinds {
            let mut keys = BTreeSet::new();
            schema::scan_children(tx, &prefix, 1, |_, rest, _| {
                keys.insert(rest[0].clone());
                Ok(())
            })?;
            all.extend(keys.into_iter().map(|k| node(kind, &ns, k)));
        }
        all.extend(
            crate::images::gc_all(tx, &ns)?
                .into_iter()
                .map(|k| node(ResourceKind::Image, &ns, k)),
        );
        let mut snapshots = BTreeSet::new();
        schema::scan_children(tx, &schema::snapshots_prefix(&ns), 2, |_, rest, _| {
            snapshots.insert(format!("{}/{}", rest[0], rest[1]));
            Ok(())
        })?;
        all.extend(
            snapshots
                .into_iter()
                .map(|k| node(ResourceKind::Snapshot, &ns, k)),
        );
    }
    Ok(all)
}

/// Deletes one unreachable record.
fn remove<W: WriteTxn + ?Sized>(tx: &mut W, n: &Node) -> Result<()> {
    match n.kind {
        ResourceKind::Content => {
            if let Ok(d) = Digest::parse(&n.key) {
                tx.delete(&schema::blob_key(&n.ns, &d))?;
            }
        }
        ResourceKind::Ingest => {
            tx.delete(&schema::ingest_key(&n.ns, &n.key))?;
        }
        ResourceKind::Lease => {
            tx.delete_prefix(&schema::lease_key(&n.ns, &n.key))?;
        }
        ResourceKind::Snapshot => {
            let Some((sn, key)) = n.key.split_once('/') else {
                return Ok(());
            };
            let rkey = schema::snapshot_key(&n.ns, sn, key);
            if let Some(r) = schema::get_json::<SnapshotRecord, _>(tx, &rkey)? {
                // The record, its child links, and its link from a parent
                // that stays.
                tx.delete_prefix(&rkey)?;
                if !r.parent.is_empty() {
                    tx.delete(&schema::snapshot_child_key(&n.ns, sn, &r.parent, key))?;
                }
            }
        }
        ResourceKind::Image => crate::images::gc_remove(tx, &n.ns, &n.key)?,
        ResourceKind::Container => {}
    }
    Ok(())
}
