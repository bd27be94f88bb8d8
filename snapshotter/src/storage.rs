//! Each backend's small transactional metadata (containerd's
//! `snapshots/storage`): one redb file (`metadata.db`) in the backend's root.
//!
//! Schema (version 1):
//! - `snapshots`: key (active/view key or committed name) -> JSON [`Record`]
//!   (numeric id, kind, parent name, labels, created/updated, usage).
//! - `children`: (parent id, child id) -> child key; a snapshot with any
//!   entry under its id cannot be removed.
//! - `meta`: `next_id` (ids are never reused, so a directory named by an id
//!   that has no record is garbage forever), `version`.
//!
//! Ids are decimal strings on the outside: they name the backend's
//! directories. Reads see a consistent snapshot; a write transaction is
//! atomic and durable on commit. Nothing here touches the filesystem beyond
//! the database file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use berth_filters::{Adaptor, Filter};
use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Error, Info, Kind, Labels, Result, Usage};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(u64, u64), &str> = TableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const SCHEMA_VERSION: u64 = 1;

fn storage_err<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Storage(format!("{op}: {e}"))
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    /// Name of the committed parent; empty for none.
    pub parent: String,
    pub labels: Labels,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Usage stored at commit (zero before).
    pub size: i64,
    pub inodes: i64,
}

impl Record {
    fn info(&self, name: &str) -> Info {
        Info {
            kind: self.kind,
            name: name.to_string(),
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            created: self.created,
            updated: self.updated,
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            size: self.size,
            inodes: self.inodes,
        }
    }
}

/// An active or view snapshot with its chain of parent ids (immediate parent
/// first), as containerd's `storage.Snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub kind: Kind,
    pub parent_ids: Vec<String>,
}

/// The metadata database of one backend. A database that does not exist yet is created by
/// the first write transaction, not when opened: a daemon starting on a fresh root waits
/// for no fsync, and reads until then see no snapshots.
pub struct MetaStore {
    path: PathBuf,
    /// An exclusive lock on the database's directory, held while open: another instance
    /// must not use the directory even before the database file exists.
    _dir_lock: File,
    db: OnceLock<Database>,
    /// Serialises the creation of a fresh database.
    creating: Mutex<()>,
}

impl MetaStore {
    /// Opens the database at `path` (its directory must exist), or prepares to create it
    /// on the first write.
    pub fn open(path: &Path) -> Result<MetaStore> {
        let store = MetaStore {
            _dir_lock: lock_dir(path).map_err(Error::Storage)?,
            path: path.to_path_buf(),
            db: OnceLock::new(),
            creating: Mutex::new(()),
        };
        if path.exists() {
            store.create_or_open()?;
        }
        Ok(store)
    }

    /// The database, opened (and its schema set up) or created now if it is not yet.
    fn create_or_open(&self) -> Result<&Database> {
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let db = Database::create(&self.path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Storage(format!(
                "{} is already open (by this or another process)",
                self.path.display()
            )),
            e => Error::Storage(format!("open {}: {e}", self.path.display())),
        })?;
        if !is_current(&db)? {
            set_up_schema(&db, &self.path)?;
        }
        Ok(self.db.get_or_init(|| db))
    }

    /// Runs `f` in a read transaction (a consistent snapshot).
    pub fn read<T>(&self, f: impl FnOnce(&ReadTx) -> Result<T>) -> Result<T> {
        let Some(db) = self.db.get() else {
            return f(&ReadTx { tables: None });
        };
        let tx = db.begin_read().map_err(storage_err("begin read"))?;
        let rtx = ReadTx {
            tables: Some((
                tx.open_table(SNAPSHOTS)
                    .map_err(storage_err("open table"))?,
                tx.open_table(CHILDREN).map_err(storage_err("open table"))?,
            )),
        };
        f(&rtx)
    }

    /// Runs `f` in a write transaction, committed (durably) if `f` succeeds
    /// and rolled back if it fails.
    pub fn write<T>(&self, f: impl FnOnce(&mut WriteTx) -> Result<T>) -> Result<T> {
        write_with(self.create_or_open()?, Durability::Immediate, f)
    }

    /// Runs `f` on the current state with writers held off (e.g. while a directory is
    /// scanned for leftovers), committing nothing.
    pub fn exclusive<T>(&self, f: impl FnOnce(&dyn Transaction) -> Result<T>) -> Result<T> {
        let creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        let Some(db) = self.db.get() else {
            // Writers wait on `creating` to create the database.
            let out = f(&ReadTx { tables: None });
            drop(creating);
            return out;
        };
        drop(creating);
        let tx = db.begin_write().map_err(storage_err("begin write"))?;
        let wtx = WriteTx { tx };
        let out = f(&wtx);
        if let Err(e) = wtx.tx.abort() {
            tracing::warn!(error = %e, "snapshot metadata: abort failed");
        }
        out
    }
}

/// Locks the directory of `db_path` exclusively (flock), or says who holds it.
fn lock_dir(db_path: &Path) -> std::result::Result<File, String> {
    let dir = db_path.parent().unwrap_or(Path::new("."));
    let f = File::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{} is already open (by this or another process)",
            db_path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("lock {}: {e}", dir.display())),
    }
}

/// True if the tables exist and the schema version is this build's: nothing to set up.
fn is_current(db: &Database) -> Result<bool> {
    let tx = db.begin_read().map_err(storage_err("begin read"))?;
    for table in [
        tx.open_untyped_table(SNAPSHOTS),
        tx.open_untyped_table(CHILDREN),
    ] {
        match table {
            Ok(_) => {}
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(storage_err("open table")(e)),
        }
    }
    let meta = match tx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(storage_err("open table")(e)),
    };
    let version = meta
        .get("version")
        .map_err(storage_err("get version"))?
        .map(|v| v.value());
    Ok(version == Some(SCHEMA_VERSION))
}

/// Creates the tables and records the schema version. Need not be durable: a crash that
/// loses them has them created again, and the first durable commit persists them.
fn set_up_schema(db: &Database, path: &Path) -> Result<()> {
    write_with(db, Durability::None, |tx| {
        tx.tx
            .open_table(SNAPSHOTS)
            .map_err(storage_err("create table"))?;
        tx.tx
            .open_table(CHILDREN)
            .map_err(storage_err("create table"))?;
        let mut meta = tx
            .tx
            .open_table(META)
            .map_err(storage_err("create table"))?;
        let version = meta
            .get("version")
            .map_err(storage_err("get version"))?
            .map(|v| v.value());
        match version {
            None => {
                meta.insert("version", SCHEMA_VERSION)
                    .map_err(storage_err("put version"))?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(Error::Storage(format!(
                    "{}: unsupported schema version {v} (this build knows {SCHEMA_VERSION})",
                    path.display()
                )))
            }
        }
        Ok(())
    })
}

/// Runs `f` in a write transaction of `db`, committed if `f` succeeds and rolled back if
/// it fails.
fn write_with<T>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&mut WriteTx) -> Result<T>,
) -> Result<T> {
    let mut tx = db.begin_write().map_err(storage_err("begin write"))?;
    tx.set_durability(durability)
        .map_err(storage_err("set durability"))?;
    let mut wtx = WriteTx { tx };
    match f(&mut wtx) {
        Ok(v) => {
            wtx.tx.commit().map_err(storage_err("commit"))?;
            Ok(v)
        }
        Err(e) => {
            if let Err(abort) = wtx.tx.abort() {
                tracing::warn!(error = %abort, "snapshot metadata: abort failed");
            }
            Err(e)
        }
    }
}

/// Read operations, available in both kinds of transaction.
pub trait Transaction {
    /// The record stored under `key`, if any.
    fn record(&self, key: &str) -> Result<Option<Record>>;
    /// Every record, in key order.
    fn records(&self) -> Result<Vec<(String, Record)>>;
    /// True if some snapshot names the snapshot with `id` as its parent.
    fn has_children(&self, id: u64) -> Result<bool>;

    /// Id (as a string), info and stored usage of `key`; NotFound if absent.
    fn get_info(&self, key: &str) -> Result<(String, Info, Usage)> {
        let r = self
            .record(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        Ok((r.id.to_string(), r.info(key), r.usage()))
    }

    /// An active or view snapshot with its parent ids; NotFound if absent,
    /// FailedPrecondition if committed.
    fn get_snapshot(&self, key: &str) -> Result<Snapshot> {
        let r = self
            .record(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        if r.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is committed, not active or view"
            )));
        }
        Ok(Snapshot {
            id: r.id.to_string(),
            kind: r.kind,
            parent_ids: self.parent_ids(&r.parent)?,
        })
    }

    /// Ids of `parent` and its ancestors, nearest first.
    fn parent_ids(&self, parent: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut next = parent.to_string();
        while !next.is_empty() {
            let p = self.record(&next)?.ok_or_else(|| {
                Error::Storage(format!("missing parent {next} in the snapshot chain"))
            })?;
            ids.push(p.id.to_string());
            next = p.parent;
        }
        Ok(ids)
    }

    /// Infos of every snapshot matching `filter`, collected so the caller can
    /// run callbacks after the transaction ends.
    fn infos(&self, filter: &Filter) -> Result<Vec<Info>> {
        Ok(self
            .records()?
            .into_iter()
            .map(|(k, r)| r.info(&k))
            .filter(|info| filter.matches(&InfoAdaptor(info)))
            .collect())
    }

    /// Id -> key of every snapshot.
    fn id_map(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .records()?
            .into_iter()
            .map(|(k, r)| (r.id.to_string(), k))
            .collect())
    }
}

/// Filter fields of a snapshot, as containerd's `adaptSnapshot`.
pub struct InfoAdaptor<'a>(pub &'a Info);

impl Adaptor for InfoAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let info = self.0;
        match path.first().map(String::as_str)? {
            "kind" => Some(info.kind.as_str().to_string()),
            "name" => Some(info.name.clone()),
            "parent" => Some(info.parent.clone()),
            "labels" => berth_filters::check_map(&path[1..], &info.labels),
            _ => None,
        }
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Storage(format!("decode record of {key}: {e}")))
}

fn get_record<T>(table: &T, key: &str) -> Result<Option<Record>>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key).map_err(storage_err("get"))? {
        Some(v) => Ok(Some(decode(key, v.value())?)),
        None => Ok(None),
    }
}

fn all_records<T>(table: &T) -> Result<Vec<(String, Record)>>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    let mut out = Vec::new();
    for item in table.iter().map_err(storage_err("iterate"))? {
        let (k, v) = item.map_err(storage_err("iterate"))?;
        let key = k.value().to_string();
        let rec = decode(&key, v.value())?;
        out.push((key, rec));
    }
    Ok(out)
}

fn any_child<T>(table: &T, id: u64) -> Result<bool>
where
    T: ReadableTable<(u64, u64), &'static str>,
{
    let mut range = table
        .range((id, 0)..=(id, u64::MAX))
        .map_err(storage_err("range"))?;
    Ok(range
        .next()
        .transpose()
        .map_err(storage_err("range"))?
        .is_some())
}

/// A read transaction: the snapshots and children tables, none before the database
/// exists.
pub struct ReadTx {
    tables: Option<(SnapshotsTable, ChildrenTable)>,
}

type SnapshotsTable = ReadOnlyTable<&'static str, &'static [u8]>;
type ChildrenTable = ReadOnlyTable<(u64, u64), &'static str>;

impl Transaction for ReadTx {
    fn record(&self, key: &str) -> Result<Option<Record>> {
        match &self.tables {
            Some((snapshots, _)) => get_record(snapshots, key),
            None => Ok(None),
        }
    }

    fn records(&self) -> Result<Vec<(String, Record)>> {
        match &self.tables {
            Some((snapshots, _)) => all_records(snapshots),
            None => Ok(Vec::new()),
        }
    }

    fn has_children(&self, id: u64) -> Result<bool> {
        match &self.tables {
            Some((_, children)) => any_child(children, id),
            None => Ok(false),
        }
    }
}

/// A write transaction.
pub struct WriteTx {
    tx: redb::WriteTransaction,
}

impl Transaction for WriteTx {
    fn record(&self, key: &str) -> Result<Option<Record>> {
        let t = self
            .tx
            .open_table(SNAPSHOTS)
            .map_err(storage_err("open table"))?;
        get_record(&t, key)
    }

    fn records(&self) -> Result<Vec<(String, Record)>> {
        let t = self
            .tx
            .open_table(SNAPSHOTS)
            .map_err(storage_err("open table"))?;
        all_records(&t)
    }

    fn has_children(&self, id: u64) -> Result<bool> {
        let t = self
            .tx
            .open_table(CHILDREN)
            .map_err(storage_err("open table"))?;
        any_child(&t, id)
    }
}

/// Labels with empty values mean "absent" (as containerd's bolt store).
fn clean_labels(mut labels: Labels) -> Labels {
    labels.retain(|_, v| !v.is_empty());
    labels
}

impl WriteTx {
    fn put(&mut self, key: &str, rec: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(rec)
            .map_err(|e| Error::Storage(format!("encode record of {key}: {e}")))?;
        let mut t = self
            .tx
            .open_table(SNAPSHOTS)
            .map_err(storage_err("open table"))?;
        t.insert(key, bytes.as_slice())
            .map_err(storage_err("put"))?;
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<()> {
        let mut t = self
            .tx
            .open_table(SNAPSHOTS)
            .map_err(storage_err("open table"))?;
        t.remove(key).map_err(storage_err("delete"))?;
        Ok(())
    }

    fn set_child(&mut self, parent: u64, child: u64, key: Option<&str>) -> Result<()> {
        let mut t = self
            .tx
            .open_table(CHILDREN)
            .map_err(storage_err("open table"))?;
        match key {
            Some(k) => t
                .insert((parent, child), k)
                .map_err(storage_err("put child"))?,
            None => t
                .remove((parent, child))
                .map_err(storage_err("delete child"))?,
        };
        Ok(())
    }

    fn next_id(&mut self) -> Result<u64> {
        let mut t = self
            .tx
            .open_table(META)
            .map_err(storage_err("open table"))?;
        let id = t
            .get("next_id")
            .map_err(storage_err("get next id"))?
            .map(|v| v.value())
            .unwrap_or(1);
        t.insert("next_id", id + 1)
            .map_err(storage_err("put next id"))?;
        Ok(id)
    }

    /// Records a new active or view snapshot `key` on `parent` (a committed
    /// snapshot or empty). AlreadyExists, NotFound (parent) or
    /// InvalidArgument (parent not committed, kind committed).
    pub fn create_snapshot(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<Snapshot> {
        if kind == Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "snapshot {key}: only active or view snapshots can be created"
            )));
        }
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let parent_rec = if parent.is_empty() {
            None
        } else {
            let p = self
                .record(parent)?
                .ok_or_else(|| Error::NotFound(format!("parent {parent}")))?;
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!(
                    "parent {parent} is not a committed snapshot"
                )));
            }
            Some(p)
        };
        if self.record(key)?.is_some() {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        let id = self.next_id()?;
        let now = SystemTime::now();
        let rec = Record {
            id,
            kind,
            parent: parent.to_string(),
            labels: clean_labels(labels),
            created: now,
            updated: now,
            size: 0,
            inodes: 0,
        };
        self.put(key, &rec)?;
        let mut parent_ids = Vec::new();
        if let Some(p) = parent_rec {
            self.set_child(p.id, id, Some(key))?;
            parent_ids.push(p.id.to_string());
            parent_ids.extend(self.parent_ids(&p.parent)?);
        }
        Ok(Snapshot {
            id: id.to_string(),
            kind,
            parent_ids,
        })
    }

    /// Turns active `key` into committed `name` with `usage` and `labels`
    /// (replacing the active's labels). Returns the id, which is kept.
    pub fn commit_active(
        &mut self,
        key: &str,
        name: &str,
        usage: Usage,
        labels: Labels,
    ) -> Result<String> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot name must not be empty".into(),
            ));
        }
        if self.record(name)?.is_some() {
            return Err(Error::AlreadyExists(format!("committed snapshot {name}")));
        }
        let mut rec = self
            .record(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        if rec.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is {}, not active: only active snapshots can be committed",
                rec.kind.as_str()
            )));
        }
        let now = SystemTime::now();
        rec.kind = Kind::Committed;
        rec.created = now;
        rec.updated = now;
        rec.labels = clean_labels(labels);
        rec.size = usage.size;
        rec.inodes = usage.inodes;
        self.delete(key)?;
        self.put(name, &rec)?;
        if !rec.parent.is_empty() {
            let p = self
                .record(&rec.parent)?
                .ok_or_else(|| Error::Storage(format!("missing parent {} of {key}", rec.parent)))?;
            self.set_child(p.id, rec.id, Some(name))?;
        }
        Ok(rec.id.to_string())
    }

    /// Removes `key`; FailedPrecondition if it has children. Returns its id
    /// and kind.
    pub fn remove(&mut self, key: &str) -> Result<(String, Kind)> {
        let rec = self
            .record(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        if self.has_children(rec.id)? {
            return Err(Error::FailedPrecondition(format!(
                "cannot remove snapshot {key}: it has children"
            )));
        }
        if !rec.parent.is_empty() {
            if let Some(p) = self.record(&rec.parent)? {
                self.set_child(p.id, rec.id, None)?;
            }
        }
        self.delete(key)?;
        Ok((rec.id.to_string(), rec.kind))
    }

    /// Updates the labels of `info.name` (containerd's `UpdateInfo`): no
    /// paths = replace all labels; `labels` = replace all; `labels.<k>` =
    /// set or (absent/empty) remove one; anything else InvalidArgument.
    pub fn update_info(&mut self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let key = info.name.as_str();
        let mut rec = self
            .record(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        let mut labels = rec.labels.clone();
        if fieldpaths.is_empty() {
            labels = info.labels.clone();
        } else {
            for path in fieldpaths {
                if let Some(k) = path.strip_prefix("labels.") {
                    match info.labels.get(k) {
                        Some(v) => labels.insert(k.to_string(), v.clone()),
                        None => labels.remove(k),
                    };
                } else if path == "labels" {
                    labels = info.labels.clone();
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update {path:?} field on snapshot {key:?}"
                    )));
                }
            }
        }
        rec.labels = clean_labels(labels);
        rec.updated = SystemTime::now();
        self.put(key, &rec)?;
        Ok(rec.info(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let ms = MetaStore::open(&dir.path().join("metadata.db")).unwrap();
        (dir, ms)
    }

    #[test]
    fn create_commit_remove() {
        let (_d, ms) = store();
        let s = ms
            .write(|tx| tx.create_snapshot(Kind::Active, "a", "", Labels::new()))
            .unwrap();
        assert_eq!(s.id, "1");
        assert!(s.parent_ids.is_empty());
        ms.write(|tx| tx.commit_active("a", "c", Usage { size: 5, inodes: 1 }, Labels::new()))
            .unwrap();
        let (id, info, usage) = ms.read(|tx| tx.get_info("c")).unwrap();
        assert_eq!(
            (id.as_str(), info.kind, usage.size),
            ("1", Kind::Committed, 5)
        );
        let s2 = ms
            .write(|tx| tx.create_snapshot(Kind::View, "v", "c", Labels::new()))
            .unwrap();
        assert_eq!(s2.parent_ids, vec!["1".to_string()]);
        let err = ms.write(|tx| tx.remove("c")).unwrap_err();
        assert_eq!(err.kind(), berth_errdefs::ErrorKind::FailedPrecondition);
        // The failed transaction changed nothing.
        assert!(ms.read(|tx| tx.record("c")).unwrap().is_some());
        ms.write(|tx| tx.remove("v")).unwrap();
        ms.write(|tx| tx.remove("c")).unwrap();
        assert!(ms.read(|tx| tx.id_map()).unwrap().is_empty());
        // Ids are not reused.
        let s3 = ms
            .write(|tx| tx.create_snapshot(Kind::Active, "a", "", Labels::new()))
            .unwrap();
        assert_eq!(s3.id, "3");
    }

    #[test]
    fn errors() {
        let (_d, ms) = store();
        let k = |r: Result<Snapshot>| r.unwrap_err().kind();
        use berth_errdefs::ErrorKind as E;
        assert_eq!(
            k(ms.write(|tx| tx.create_snapshot(Kind::Active, "a", "nope", Labels::new()))),
            E::NotFound
        );
        ms.write(|tx| tx.create_snapshot(Kind::Active, "a", "", Labels::new()))
            .unwrap();
        assert_eq!(
            k(ms.write(|tx| tx.create_snapshot(Kind::View, "a", "", Labels::new()))),
            E::AlreadyExists
        );
        assert_eq!(
            k(ms.write(|tx| tx.create_snapshot(Kind::View, "b", "a", Labels::new()))),
            E::InvalidArgument
        );
    }
}
