//! redb backend: one table of byte keys, every commit `Durability::Immediate`.
//!
//! redb gives MVCC snapshots for readers and a single blocking writer, so the
//! [`KvStore`] contract maps onto it directly.

use std::fs::File;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};

use super::{is_empty_range, Backend, KvStore, ReadTxn, ScanFn, WriteTxn};
use crate::error::{Error, Result};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("berth-metadata");
const NAME: &str = "redb";

fn err<E>(op: &'static str) -> impl FnOnce(E) -> Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    move |e| Error::storage(NAME, op, e)
}

/// A redb database file holding one table. A store that does not exist yet is created by
/// its first write transaction, not when opened: a daemon starting on a fresh root waits
/// for no fsync, and reads until then see an empty store.
pub struct RedbStore {
    path: PathBuf,
    /// An exclusive lock on the file's directory, held while open: another process must
    /// not use the store even before its file exists.
    _dir_lock: File,
    db: OnceLock<Database>,
    /// Serialises the creation of a fresh store.
    creating: Mutex<()>,
}

impl RedbStore {
    /// Opens the database file at `path` (its parent must exist), or prepares to create it
    /// on the first write.
    pub fn open(path: &Path) -> Result<RedbStore> {
        let store = RedbStore {
            _dir_lock: lock_dir(path)?,
            path: path.to_path_buf(),
            db: OnceLock::new(),
            creating: Mutex::new(()),
        };
        if path.exists() {
            store.create_or_open()?;
        }
        Ok(store)
    }

    /// The database, opened or created now if it is not yet.
    fn create_or_open(&self) -> Result<&Database> {
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let db = open_database(&self.path)?;
        Ok(self.db.get_or_init(|| db))
    }
}

/// Locks the directory of `path` exclusively (flock), or says who holds it.
fn lock_dir(path: &Path) -> Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let f = File::open(dir).map_err(|e| Error::Storage {
        backend: NAME,
        op: "open directory",
        source: format!("{}: {e}", dir.display()).into(),
    })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Unavailable(format!(
            "metadata store {} is open in another process",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Storage {
            backend: NAME,
            op: "lock directory",
            source: format!("{}: {e}", dir.display()).into(),
        }),
    }
}

/// Opens or creates the file and makes sure the table exists, so read transactions can
/// always open it. The table's creation need not be durable: it is redone here if a crash
/// loses it, and the first durable commit persists it.
fn open_database(path: &Path) -> Result<Database> {
    let db = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Unavailable(format!(
            "metadata store {} is open in another process",
            path.display()
        )),
        e => Error::Storage {
            backend: NAME,
            op: "open",
            source: format!("{}: {e}", path.display()).into(),
        },
    })?;
    let exists = match db
        .begin_read()
        .map_err(err("begin read"))?
        .open_table(TABLE)
    {
        Ok(_) => true,
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(e) => return Err(err("open table")(e)),
    };
    if !exists {
        let mut tx = db.begin_write().map_err(err("begin write"))?;
        tx.set_durability(Durability::None)
            .map_err(err("set durability"))?;
        tx.open_table(TABLE).map_err(err("create table"))?;
        tx.commit().map_err(err("commit"))?;
    }
    Ok(db)
}

impl KvStore for RedbStore {
    fn backend(&self) -> Backend {
        Backend::Redb
    }

    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>> {
        let Some(db) = self.db.get() else {
            return Ok(Box::new(Empty));
        };
        let tx = db.begin_read().map_err(err("begin read"))?;
        let table = tx.open_table(TABLE).map_err(err("open table"))?;
        Ok(Box::new(RedbRead { table }))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>> {
        let mut tx = self
            .create_or_open()?
            .begin_write()
            .map_err(err("begin write"))?;
        tx.set_durability(Durability::Immediate)
            .map_err(err("set durability"))?;
        Ok(Box::new(RedbWrite { tx }))
    }
}

/// A read transaction of a store not created yet.
struct Empty;

impl ReadTxn for Empty {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn range(&self, _start: Bound<&[u8]>, _end: Bound<&[u8]>, _f: &mut ScanFn<'_>) -> Result<()> {
        Ok(())
    }
}

fn scan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
    f: &mut ScanFn<'_>,
) -> Result<()> {
    if is_empty_range(start, end) {
        return Ok(());
    }
    let iter = table.range::<&[u8]>((start, end)).map_err(err("range"))?;
    for item in iter {
        let (k, v) = item.map_err(err("range"))?;
        if let ControlFlow::Break(()) = f(k.value(), v.value())? {
            break;
        }
    }
    Ok(())
}

struct RedbRead {
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl ReadTxn for RedbRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .table
            .get(key)
            .map_err(err("get"))?
            .map(|v| v.value().to_vec()))
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        scan(&self.table, start, end, f)
    }
}

struct RedbWrite {
    tx: redb::WriteTransaction,
}

impl ReadTxn for RedbWrite {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let table = self.tx.open_table(TABLE).map_err(err("open table"))?;
        let v = table.get(key).map_err(err("get"))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        let table = self.tx.open_table(TABLE).map_err(err("open table"))?;
        scan(&table, start, end, f)
    }
}

impl WriteTxn for RedbWrite {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut table = self.tx.open_table(TABLE).map_err(err("open table"))?;
        table.insert(key, value).map_err(err("insert"))?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let mut table = self.tx.open_table(TABLE).map_err(err("open table"))?;
        let old = table.remove(key).map_err(err("remove"))?;
        Ok(old.is_some())
    }

    fn delete_prefix(&mut self, prefix: &[u8]) -> Result<usize> {
        let mut table = self.tx.open_table(TABLE).map_err(err("open table"))?;
        let end = super::prefix_end(prefix);
        let range = match &end {
            Some(end) => (Bound::Included(prefix), Bound::Excluded(end.as_slice())),
            None => (Bound::Included(prefix), Bound::Unbounded),
        };
        let mut n = 0usize;
        table
            .retain_in::<&[u8], _>(range, |_, _| {
                n += 1;
                false
            })
            .map_err(err("remove range"))?;
        Ok(n)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().map_err(err("commit"))
    }
}
