//! Namespaced snapshots: per-namespace records over the raw snapshotter
//! backends (containerd's `metadata/snapshot.go`).
//!
//! Each namespace sees only its own keys. The backend never sees a
//! namespace's key: every snapshot gets a unique backend key
//! `<ns>/<random>/<key>` (see the [`schema`](crate::schema) notes), so two
//! namespaces can use the same key and a removed key can be re-created while
//! GC still has to remove the old backend snapshot. Labels, timestamps,
//! parent/children links and the kind live here, not in the backend (labels
//! prefixed `containerd.io/snapshot/` are passed down too, as containerd does).
//!
//! Ordering (containerd's, with the backend work moved out of the write
//! transaction): prepare/view/commit reserve their record in a short write
//! transaction (marked `pending`), call the backend outside any transaction,
//! then confirm the record in a second transaction, undoing the reservation
//! if the backend failed. A crash in between leaves a pending record, which
//! is resolved against the backend when the snapshotter is registered again
//! ([`Db::register_snapshotter`]). Remove only drops the record; the backend
//! snapshot goes at the next garbage collection, leaf first.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use berth_errdefs::ErrorKind;
use berth_filters::{self as filters, check_map, Adaptor};
use berth_snapshotter::{Info, Kind, Mount, Snapshotter, Usage};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::kv::{ReadTxn, WriteTxn};
use crate::leases::{add_lease_resource, remove_lease_resource};
use crate::namespaces::apply_label_mask;
use crate::schema::{self, Pending, SnapshotKind, SnapshotRecord, SNAPSHOTS};
use crate::validate::{normalize_labels, validate_identifier, validate_labels};
use crate::Labels;

/// Labels with this prefix are also given to the backend (containerd's
/// `snapshots.FilterInheritedLabels`).
pub const INHERITED_LABEL_PREFIX: &str = "containerd.io/snapshot/";

/// A registered backend.
pub(crate) struct Registered {
    pub(crate) backend: Arc<dyn Snapshotter>,
    /// Held shared by operations that create backend snapshots (prepare,
    /// view, commit), from reserving their record to confirming it; held
    /// exclusively by GC's backend sweep, `cleanup` and crash recovery, so
    /// those never see a backend snapshot whose record is not yet written.
    lock: RwLock<()>,
}

impl Registered {
    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Snapshot operations on one snapshotter; from [`Db::snapshots`].
#[derive(Clone)]
pub struct Snapshots<'a> {
    db: &'a Db,
    name: String,
    reg: Arc<Registered>,
}

impl std::fmt::Debug for Snapshots<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("snapshotter", &self.name)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Registers a snapshotter backend under `name` (as clients select it,
    /// e.g. `overlayfs`). First resolves what a crash left half-done in this
    /// snapshotter (pending records; see the module notes). `AlreadyExists`
    /// if the name is taken; `InvalidArgument` for a name with `/`.
    pub fn register_snapshotter(&self, name: &str, backend: Arc<dyn Snapshotter>) -> Result<()> {
        if name.is_empty() || name.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "snapshotter name {name:?} must be non-empty and have no '/'"
            )));
        }
        let reg = Arc::new(Registered {
            backend,
            lock: RwLock::new(()),
        });
        {
            let map = self.snapshotters.read().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(name) {
                return Err(Error::AlreadyExists(format!("snapshotter {name:?}")));
            }
        }
        {
            let _x = reg.exclusive();
            recover(self, name, &reg)?;
        }
        let mut map = self.snapshotters.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(name) {
            return Err(Error::AlreadyExists(format!("snapshotter {name:?}")));
        }
        map.insert(name.to_string(), reg);
        Ok(())
    }

    /// The names of the registered snapshotters, sorted.
    pub fn snapshotters(&self) -> Vec<String> {
        let map = self.snapshotters.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    pub(crate) fn registered_snapshotters(&self) -> Vec<(String, Arc<Registered>)> {
        let map = self.snapshotters.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Snapshot operations on the snapshotter registered as `snapshotter`.
    /// `InvalidArgument` for an empty or unknown name (containerd's
    /// "snapshotter not loaded").
    pub fn snapshots(&self, snapshotter: &str) -> Result<Snapshots<'_>> {
        if snapshotter.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshotter argument missing".into(),
            ));
        }
        let map = self.snapshotters.read().unwrap_or_else(|e| e.into_inner());
        let reg = map.get(snapshotter).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!("snapshotter not loaded: {snapshotter}"))
        })?;
        Ok(Snapshots {
            db: self,
            name: snapshotter.to_string(),
            reg,
        })
    }
}

fn kind_of(k: SnapshotKind) -> Kind {
    match k {
        SnapshotKind::View => Kind::View,
        SnapshotKind::Active => Kind::Active,
        SnapshotKind::Committed => Kind::Committed,
    }
}

fn info_of(key: &str, r: &SnapshotRecord) -> Info {
    Info {
        kind: kind_of(r.kind),
        name: key.to_string(),
        parent: r.parent.clone(),
        labels: r.labels.clone(),
        created: r.created_at,
        updated: r.updated_at,
    }
}

/// True if the record is a snapshot clients can see: confirmed, or an active
/// snapshot whose commit is under way.
fn visible(r: &SnapshotRecord) -> bool {
    matches!(r.pending, None | Some(Pending::Committing { .. }))
}

fn inherited(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(INHERITED_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "snapshot {what} must not be empty"
        )));
    }
    Ok(())
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!("snapshot {key:?}"))
}

fn new_bkey(ns: &str, key: &str) -> String {
    format!("{ns}/{}/{key}", uuid::Uuid::new_v4().simple())
}

fn get_record<R: ReadTxn + ?Sized>(
    tx: &R,
    ns: &str,
    sn: &str,
    key: &str,
) -> Result<Option<SnapshotRecord>> {
    schema::get_json(tx, &schema::snapshot_key(ns, sn, key))
}

fn put_record<W: WriteTxn + ?Sized>(
    tx: &mut W,
    ns: &str,
    sn: &str,
    key: &str,
    r: &SnapshotRecord,
) -> Result<()> {
    schema::put_json(tx, &schema::snapshot_key(ns, sn, key), r)
}

/// A visible record, or `NotFound`.
fn get_visible<R: ReadTxn + ?Sized>(
    tx: &R,
    ns: &str,
    sn: &str,
    key: &str,
) -> Result<SnapshotRecord> {
    get_record(tx, ns, sn, key)?
        .filter(visible)
        .ok_or_else(|| not_found(key))
}

fn lease_parts(sn: &str, key: &str) -> Vec<String> {
    vec![SNAPSHOTS.to_string(), sn.to_string(), key.to_string()]
}

/// Deletes a record, its child links and its link from its parent.
fn drop_record<W: WriteTxn + ?Sized>(
    tx: &mut W,
    ns: &str,
    sn: &str,
    key: &str,
    parent: &str,
) -> Result<()> {
    tx.delete_prefix(&schema::snapshot_key(ns, sn, key))?;
    if !parent.is_empty() {
        tx.delete(&schema::snapshot_child_key(ns, sn, parent, key))?;
    }
    Ok(())
}

struct InfoFields<'a>(&'a Info);

impl Adaptor for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "kind" => Some(self.0.kind.as_str().to_string()),
            "name" => Some(self.0.name.clone()),
            "parent" => Some(self.0.parent.clone()).filter(|p| !p.is_empty()),
            "labels" => check_map(&path[1..], &self.0.labels),
            _ => None,
        }
    }
}

impl Snapshots<'_> {
    /// The snapshotter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's snapshot `key`. `NotFound` if this namespace has none.
    pub fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        validate_identifier("namespace", ns)?;
        self.db.view(|tx| {
            let r = get_visible(tx, ns, &self.name, key)?;
            Ok(info_of(key, &r))
        })
    }

    /// Updates labels (only): no paths replaces all labels; `labels` the
    /// same; `labels.<k>` sets or (absent/empty in `info`) removes one; any
    /// other path (e.g. `parent`) is `InvalidArgument`. Bumps `updated`.
    pub fn update(&self, ns: &str, info: Info, paths: &[String]) -> Result<Info> {
        validate_identifier("namespace", ns)?;
        if info.name.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot name must not be empty".into(),
            ));
        }
        let key = info.name.as_str();
        self.db.update(|tx| {
            let mut r = get_visible(tx, ns, &self.name, key)?;
            let mut next =
                apply_label_mask(r.labels.clone(), &info.labels, paths, "snapshot", key)?;
            validate_labels("info.Labels", &next)?;
            normalize_labels(&mut next);
            r.labels = next;
            r.updated_at = SystemTime::now();
            put_record(tx, ns, &self.name, key, &r)?;
            Ok(info_of(key, &r))
        })
    }

    /// Disk usage of the snapshot's own layer, from the backend.
    pub fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        let bkey = self.resolve(ns, key)?;
        self.reg
            .backend
            .usage(&bkey)
            .map_err(|e| Error::snapshotter(format!("snapshot {key:?}"), e))
    }

    /// Bytes the snapshot shares with others (block-sharing backends), from
    /// the backend; `None` where it does not track sharing.
    pub fn shared_usage(&self, ns: &str, key: &str) -> Result<Option<i64>> {
        let bkey = self.resolve(ns, key)?;
        self.reg
            .backend
            .shared_usage(&bkey)
            .map_err(|e| Error::snapshotter(format!("snapshot {key:?}"), e))
    }

    /// The mounts of an active snapshot or a view, from the backend.
    pub fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>> {
        let bkey = self.resolve(ns, key)?;
        self.reg
            .backend
            .mounts(&bkey)
            .map_err(|e| Error::snapshotter(format!("snapshot {key:?}"), e))
    }

    fn resolve(&self, ns: &str, key: &str) -> Result<String> {
        validate_identifier("namespace", ns)?;
        self.db
            .view(|tx| Ok(get_visible(tx, ns, &self.name, key)?.bkey))
    }

    /// A new active snapshot `key` on top of committed `parent` ("" for
    /// none). `AlreadyExists` if `key` exists in this namespace; `NotFound`
    /// if `parent` does not (or `lease` does not); `InvalidArgument` if
    /// `parent` is not committed. Held by `lease` if given.
    pub fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: Labels,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, lease, SnapshotKind::Active)
    }

    /// A new read-only view `key` of committed `parent`; as [`prepare`](Self::prepare).
    pub fn view(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: Labels,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, lease, SnapshotKind::View)
    }

    fn create(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        mut labels: Labels,
        lease: Option<&str>,
        kind: SnapshotKind,
    ) -> Result<Vec<Mount>> {
        validate_identifier("namespace", ns)?;
        check_key("key", key)?;
        validate_labels("info.Labels", &labels)?;
        normalize_labels(&mut labels);
        let lease = lease.filter(|l| !l.is_empty());
        let sn = self.name.as_str();
        let _shared = self.reg.shared();

        // 1. Reserve the key.
        let bkey = new_bkey(ns, key);
        let bparent = self.db.update(|tx| {
            if tx.get(&schema::snapshot_key(ns, sn, key))?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
            }
            let bparent = if parent.is_empty() {
                String::new()
            } else {
                let p = get_record(tx, ns, sn, parent)?
                    .filter(visible)
                    .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?}")))?;
                if p.kind != SnapshotKind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent snapshot {parent:?} is not committed"
                    )));
                }
                tx.put(&schema::snapshot_child_key(ns, sn, parent, key), b"")?;
                p.bkey
            };
            if let Some(lease) = lease {
                add_lease_resource(tx, ns, lease, &lease_parts(sn, key))?;
            }
            schema::ensure_namespace(tx, ns)?;
            let now = SystemTime::now();
            let record = SnapshotRecord {
                bkey: bkey.clone(),
                kind,
                parent: parent.to_string(),
                created_at: now,
                updated_at: now,
                labels: labels.clone(),
                pending: Some(Pending::Create {
                    lease: lease.map(str::to_string),
                }),
            };
            put_record(tx, ns, sn, key, &record)?;
            Ok(bparent)
        })?;

        // 2. The backend, outside any transaction.
        let backend = &self.reg.backend;
        let created = match kind {
            SnapshotKind::Active => backend.prepare(&bkey, &bparent, inherited(&labels)),
            _ => backend.view(&bkey, &bparent, inherited(&labels)),
        };
        let mounts = match created {
            Ok(m) => m,
            Err(e) => {
                self.undo_create(ns, key, &bkey, false);
                return Err(Error::snapshotter(format!("snapshot {key:?}"), e));
            }
        };

        // 3. Confirm.
        let confirmed = self.db.update(|tx| {
            match get_record(tx, ns, sn, key)? {
                Some(mut r) if r.bkey == bkey => {
                    r.pending = None;
                    put_record(tx, ns, sn, key, &r)?;
                    Ok(())
                }
                // Pending records are never removed by others; defensive.
                _ => Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?}: record vanished while the snapshot was created"
                ))),
            }
        });
        match confirmed {
            Ok(()) => Ok(mounts),
            Err(e) => {
                self.undo_create(ns, key, &bkey, true);
                Err(e)
            }
        }
    }

    /// Best-effort undo of a failed create: the backend snapshot (if it was
    /// made) and the reserved record. What fails here is left to recovery.
    fn undo_create(&self, ns: &str, key: &str, bkey: &str, backend_made: bool) {
        let sn = self.name.as_str();
        if backend_made {
            if let Err(e) = self.reg.backend.remove(bkey) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(snapshotter = sn, namespace = ns, key, error = %e,
                        "failed to remove backend snapshot after a failed create");
                }
            }
        }
        let undo = self.db.update(|tx| {
            let Some(r) = get_record(tx, ns, sn, key)? else {
                return Ok(());
            };
            if r.bkey != bkey {
                return Ok(());
            }
            if let Some(Pending::Create { lease: Some(lease) }) = &r.pending {
                remove_lease_resource(tx, ns, lease, &[SNAPSHOTS, sn, key])?;
            }
            drop_record(tx, ns, sn, key, &r.parent)
        });
        if let Err(e) = undo {
            tracing::warn!(snapshotter = sn, namespace = ns, key, error = %e,
                "failed to remove reserved snapshot record; recovery will at next start");
        }
    }

    /// Commits active snapshot `key` as `name` (with `labels`); `key` is gone
    /// afterwards. `AlreadyExists` if `name` exists; `NotFound` if `key` does
    /// not; `FailedPrecondition` if `key` is not active. `name` is held by
    /// `lease` if given (and `key` leaves it).
    pub fn commit(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        mut labels: Labels,
        lease: Option<&str>,
    ) -> Result<()> {
        validate_identifier("namespace", ns)?;
        check_key("name", name)?;
        check_key("key", key)?;
        validate_labels("info.Labels", &labels)?;
        normalize_labels(&mut labels);
        let lease = lease.filter(|l| !l.is_empty());
        let sn = self.name.as_str();
        let _shared = self.reg.shared();

        // 1. Reserve the name and mark the key.
        let nbkey = new_bkey(ns, name);
        let obkey = self.db.update(|tx| {
            if tx.get(&schema::snapshot_key(ns, sn, name))?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?}")));
            }
            let mut r = match get_record(tx, ns, sn, key)? {
                Some(r) if r.pending.is_none() => r,
                Some(r) if matches!(r.pending, Some(Pending::Committing { .. })) => {
                    return Err(Error::FailedPrecondition(format!(
                        "snapshot {key:?} is being committed"
                    )))
                }
                _ => return Err(not_found(key)),
            };
            if r.kind != SnapshotKind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            if let Some(lease) = lease {
                add_lease_resource(tx, ns, lease, &lease_parts(sn, name))?;
            }
            let now = SystemTime::now();
            let record = SnapshotRecord {
                bkey: nbkey.clone(),
                kind: SnapshotKind::Committed,
                parent: r.parent.clone(),
                created_at: now,
                updated_at: now,
                labels: labels.clone(),
                pending: Some(Pending::Commit {
                    from: key.to_string(),
                    lease: lease.map(str::to_string),
                }),
            };
            put_record(tx, ns, sn, name, &record)?;
            if !r.parent.is_empty() {
                tx.put(&schema::snapshot_child_key(ns, sn, &r.parent, name), b"")?;
            }
            let obkey = r.bkey.clone();
            r.pending = Some(Pending::Committing {
                to: name.to_string(),
            });
            put_record(tx, ns, sn, key, &r)?;
            Ok(obkey)
        })?;

        // 2. The backend, outside any transaction.
        if let Err(e) = self.reg.backend.commit(&nbkey, &obkey, inherited(&labels)) {
            if let Err(u) = self.db.update(|tx| roll_back_commit(tx, ns, sn, name)) {
                tracing::warn!(snapshotter = sn, namespace = ns, key, name, error = %u,
                    "failed to undo commit records; recovery will at next start");
            }
            return Err(Error::snapshotter(format!("commit snapshot {key:?}"), e));
        }

        // 3. Confirm: the name is committed, the key is gone. If this fails
        // the records stay pending and recovery rolls forward.
        self.db.update(|tx| roll_forward_commit(tx, ns, sn, name))
    }

    /// Removes the namespace's record of `key` (and its place in `lease`).
    /// The backend snapshot goes at the next garbage collection.
    /// `NotFound` if absent; `FailedPrecondition` if it has children.
    pub fn remove(&self, ns: &str, key: &str, lease: Option<&str>) -> Result<()> {
        validate_identifier("namespace", ns)?;
        let sn = self.name.as_str();
        self.db.update(|tx| {
            let r = get_record(tx, ns, sn, key)?.ok_or_else(|| not_found(key))?;
            match r.pending {
                None => {}
                Some(Pending::Committing { .. }) => {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key:?}: it is being committed"
                    )))
                }
                Some(_) => return Err(not_found(key)),
            }
            if tx.has_prefix(&schema::snapshot_children_prefix(ns, sn, key))? {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?} with child"
                )));
            }
            drop_record(tx, ns, sn, key, &r.parent)?;
            if let Some(lease) = lease.filter(|l| !l.is_empty()) {
                remove_lease_resource(tx, ns, lease, &[SNAPSHOTS, sn, key])?;
            }
            Ok(())
        })
    }

    /// Calls `f` for every snapshot of the namespace matching any of
    /// `filters` (fields `kind`, `name`, `parent`, `labels.<k>`), in key
    /// order. No transaction is open while `f` runs, so it may call back.
    pub fn walk<S: AsRef<str>>(
        &self,
        ns: &str,
        filters: &[S],
        f: &mut dyn FnMut(Info) -> Result<()>,
    ) -> Result<()> {
        for info in self.list(ns, filters)? {
            f(info)?;
        }
        Ok(())
    }

    /// The snapshots of the namespace matching any of `filters`, in key order.
    pub fn list<S: AsRef<str>>(&self, ns: &str, filters: &[S]) -> Result<Vec<Info>> {
        validate_identifier("namespace", ns)?;
        let filter = filters::parse_all(filters)?;
        self.db.view(|tx| {
            let mut out = Vec::new();
            let prefix = schema::snapshotter_prefix(ns, &self.name);
            schema::scan_children(tx, &prefix, 1, |k, rest, v| {
                let r: SnapshotRecord = schema::decode_json(k, v)?;
                if !visible(&r) {
                    return Ok(());
                }
                let info = info_of(&rest[0], &r);
                if filter.matches(&InfoFields(&info)) {
                    out.push(info);
                }
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// Lets the backend remove on-disk leftovers no snapshot owns.
    pub fn cleanup(&self) -> Result<()> {
        let _x = self.reg.exclusive();
        self.reg
            .backend
            .cleanup()
            .map_err(|e| Error::snapshotter(format!("snapshotter {:?}: cleanup", self.name), e))
    }
}

/// Completes a commit whose backend work is done: `name` confirmed, its
/// `from` key gone (record, parent link, lease entry).
fn roll_forward_commit<W: WriteTxn + ?Sized>(
    tx: &mut W,
    ns: &str,
    sn: &str,
    name: &str,
) -> Result<()> {
    let mut r = get_record(tx, ns, sn, name)?.ok_or_else(|| not_found(name))?;
    let Some(Pending::Commit { from, lease }) = r.pending.take() else {
        return Ok(());
    };
    put_record(tx, ns, sn, name, &r)?;
    if let Some(old) = get_record(tx, ns, sn, &from)? {
        if matches!(&old.pending, Some(Pending::Committing { to }) if to == name) {
            drop_record(tx, ns, sn, &from, &old.parent)?;
        }
    }
    if let Some(lease) = lease {
        remove_lease_resource(tx, ns, &lease, &[SNAPSHOTS, sn, &from])?;
    }
    Ok(())
}

/// Undoes the records of a commit whose backend work failed (or never
/// happened): `name` gone, its `from` key active again.
fn roll_back_commit<W: WriteTxn + ?Sized>(
    tx: &mut W,
    ns: &str,
    sn: &str,
    name: &str,
) -> Result<()> {
    let Some(r) = get_record(tx, ns, sn, name)? else {
        return Ok(());
    };
    let Some(Pending::Commit { from, lease }) = &r.pending else {
        return Ok(());
    };
    drop_record(tx, ns, sn, name, &r.parent)?;
    if let Some(lease) = lease {
        remove_lease_resource(tx, ns, lease, &[SNAPSHOTS, sn, name])?;
    }
    if let Some(mut old) = get_record(tx, ns, sn, from)? {
        if matches!(&old.pending, Some(Pending::Committing { to }) if to == name) {
            old.pending = None;
            put_record(tx, ns, sn, from, &old)?;
        }
    }
    Ok(())
}

/// Resolves pending records of snapshotter `sn` left by a crash, from the
/// backend's state. Runs with the snapshotter's lock held exclusively (or
/// before it is registered), so nothing of this snapshotter is in flight.
fn recover(db: &Db, sn: &str, reg: &Registered) -> Result<()> {
    let pending = db.view(|tx| {
        let mut out = Vec::new();
        for ns in schema::list_namespaces(tx)? {
            let prefix = schema::snapshotter_prefix(&ns, sn);
            schema::scan_children(tx, &prefix, 1, |k, rest, v| {
                let r: SnapshotRecord = schema::decode_json(k, v)?;
                if r.pending.is_some() {
                    out.push((ns.clone(), rest[0].clone(), r));
                }
                Ok(())
            })?;
        }
        Ok(out)
    })?;
    let backend = &reg.backend;
    // Commits first: they decide what happens to the keys they mark.
    for (ns, key, r) in &pending {
        if !matches!(r.pending, Some(Pending::Commit { .. })) {
            continue;
        }
        let done = match backend.stat(&r.bkey) {
            Ok(info) => info.kind == Kind::Committed,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(Error::snapshotter(format!("recover snapshot {key:?}"), e)),
        };
        if done {
            tracing::info!(snapshotter = sn, namespace = %ns, name = %key, "recovery: completing interrupted commit");
            db.update(|tx| roll_forward_commit(tx, ns, sn, key))?;
        } else {
            tracing::info!(snapshotter = sn, namespace = %ns, name = %key, "recovery: undoing interrupted commit");
            db.update(|tx| roll_back_commit(tx, ns, sn, key))?;
        }
    }
    for (ns, key, r) in &pending {
        match &r.pending {
            Some(Pending::Create { lease }) => {
                tracing::info!(snapshotter = sn, namespace = %ns, key = %key, "recovery: undoing interrupted create");
                match backend.remove(&r.bkey) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::snapshotter(format!("recover snapshot {key:?}"), e))
                    }
                }
                db.update(|tx| {
                    match get_record(tx, ns, sn, key)? {
                        Some(cur) if cur.bkey == r.bkey => {}
                        _ => return Ok(()),
                    }
                    if let Some(lease) = lease {
                        remove_lease_resource(tx, ns, lease, &[SNAPSHOTS, sn, key])?;
                    }
                    drop_record(tx, ns, sn, key, &r.parent)
                })?;
            }
            Some(Pending::Committing { to }) => {
                // Its commit record (handled above) is gone: the mark is stale.
                db.update(|tx| {
                    let Some(mut cur) = get_record(tx, ns, sn, key)? else {
                        return Ok(());
                    };
                    let commit_alive = get_record(tx, ns, sn, to)?.is_some_and(
                        |t| matches!(&t.pending, Some(Pending::Commit { from, .. }) if from == key),
                    );
                    if cur.bkey == r.bkey && !commit_alive {
                        cur.pending = None;
                        put_record(tx, ns, sn, key, &cur)?;
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The backend keys every namespace's records of snapshotter `sn` use.
pub(crate) fn referenced_bkeys<R: ReadTxn + ?Sized>(
    tx: &R,
    sn: &str,
) -> Result<std::collections::HashSet<String>> {
    let mut seen = std::collections::HashSet::new();
    for ns in schema::list_namespaces(tx)? {
        let prefix = schema::snapshotter_prefix(&ns, sn);
        schema::scan_children(tx, &prefix, 1, |k, _, v| {
            let r: SnapshotRecord = schema::decode_json(k, v)?;
            seen.insert(r.bkey);
            Ok(())
        })?;
    }
    Ok(seen)
}

/// Orders backend snapshots for removal, children before parents: by depth
/// in the backend's parent chains (`nodes`: key -> parent key), deepest
/// first, ties by key.
pub(crate) fn leaf_first(nodes: &BTreeMap<String, String>, remove: Vec<String>) -> Vec<String> {
    let depth = |key: &str| {
        let mut d = 0usize;
        let mut cur = key;
        // Bounded, in case a corrupt backend reports a cycle.
        while let Some(p) = nodes.get(cur).filter(|p| !p.is_empty()) {
            d += 1;
            if d > nodes.len() {
                break;
            }
            cur = p;
        }
        d
    };
    let mut keyed: Vec<(usize, String)> = remove.into_iter().map(|k| (depth(&k), k)).collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_first_orders_children_before_parents() {
        let nodes: BTreeMap<String, String> =
            [("a", ""), ("b", "a"), ("c", "b"), ("d", "a"), ("x", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let order = leaf_first(
            &nodes,
            vec!["a".into(), "b".into(), "c".into(), "d".into(), "x".into()],
        );
        assert_eq!(order, vec!["c", "b", "d", "a", "x"]);
    }
}
