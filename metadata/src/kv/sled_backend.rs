//! sled 0.34 backend (cargo feature `sled`).
//!
//! sled has no iterable transactions, so the [`KvStore`] contract is built on
//! top of it:
//! - one writer at a time (a mutex held by the open [`WriteTxn`]);
//! - the write transaction buffers its writes in an ordered overlay that its
//!   own reads and scans see merged over the tree;
//! - commit applies the overlay as one atomic `sled::Batch` and `flush()`es
//!   (fsync) before returning;
//! - readers hold a shared lock for the life of their transaction, and commit
//!   takes it exclusively only while applying and flushing the batch, so a
//!   reader never sees half a batch and the tree does not change under it.
//!
//! Caveat: a long read transaction delays commits (not other readers).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use super::{is_empty_range, Backend, KvStore, ReadTxn, ScanFn, WriteTxn};
use crate::error::{Error, Result};

const NAME: &str = "sled";

fn err(op: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |e| Error::storage(NAME, op, e)
}

/// How long opening waits for sled's lock of a database closed just before.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A sled database directory.
pub struct SledStore {
    db: sled::Db,
    writer: Mutex<()>,
    snapshot: RwLock<()>,
}

impl SledStore {
    /// Opens or creates the sled database in directory `path`.
    pub fn open(path: &Path) -> Result<SledStore> {
        // sled's file lock goes with the last handle of a database, which its flusher
        // thread may hold a moment after the database was dropped: a store reopened in
        // the same process (a restart) waits for it, briefly.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                // sled reports it as ErrorKind::Other with this text.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(Error::Storage {
                        backend: NAME,
                        op: "open",
                        source: format!("{}: {e}", path.display()).into(),
                    })
                }
            }
        };
        Ok(SledStore {
            db,
            writer: Mutex::new(()),
            snapshot: RwLock::new(()),
        })
    }
}

impl KvStore for SledStore {
    fn backend(&self) -> Backend {
        Backend::Sled
    }

    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>> {
        // A poisoned lock only means a panic elsewhere; the tree itself is
        // consistent because batches apply atomically.
        let guard = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        Ok(Box::new(SledRead {
            db: &self.db,
            _guard: guard,
        }))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>> {
        let guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Box::new(SledWrite {
            store: self,
            _writer: guard,
            pending: BTreeMap::new(),
        }))
    }
}

fn tree_range(
    db: &sled::Db,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec)>> {
    let iter = if is_empty_range(start, end) {
        None
    } else {
        Some(db.range::<&[u8], _>((start, end)))
    };
    iter.into_iter().flatten().map(|r| r.map_err(err("range")))
}

struct SledRead<'a> {
    db: &'a sled::Db,
    _guard: RwLockReadGuard<'a, ()>,
}

impl ReadTxn for SledRead<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key).map_err(err("get"))?.map(|v| v.to_vec()))
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        for item in tree_range(self.db, start, end) {
            let (k, v) = item?;
            if let ControlFlow::Break(()) = f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

struct SledWrite<'a> {
    store: &'a SledStore,
    _writer: MutexGuard<'a, ()>,
    /// Buffered writes: `Some(value)` = put, `None` = delete.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl ReadTxn for SledWrite<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        Ok(self
            .store
            .db
            .get(key)
            .map_err(err("get"))?
            .map(|v| v.to_vec()))
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        // Merge the tree (stable: only this writer changes it) with the overlay.
        let mut tree = tree_range(&self.store.db, start, end).peekable();
        let mut overlay = if is_empty_range(start, end) {
            None
        } else {
            Some(self.pending.range::<[u8], _>((start, end)))
        }
        .into_iter()
        .flatten()
        .peekable();
        loop {
            let pick = match (tree.peek(), overlay.peek()) {
                (None, None) => break,
                (Some(_), None) | (Some(Err(_)), _) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(Ok((tk, _))), Some((ok, _))) => tk.as_ref().cmp(ok.as_slice()),
            };
            if pick == Ordering::Equal {
                // The overlay shadows the tree's entry.
                tree.next();
            }
            let take_tree = pick == Ordering::Less;
            let flow = if take_tree {
                match tree.next() {
                    Some(item) => {
                        let (k, v) = item?;
                        f(&k, &v)?
                    }
                    None => break,
                }
            } else {
                match overlay.next() {
                    Some((k, Some(v))) => f(k, v)?,
                    Some((_, None)) => ControlFlow::Continue(()),
                    None => break,
                }
            };
            if let ControlFlow::Break(()) = flow {
                break;
            }
        }
        Ok(())
    }
}

impl WriteTxn for SledWrite<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let existed = self.get(key)?.is_some();
        self.pending.insert(key.to_vec(), None);
        Ok(existed)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let SledWrite {
            store,
            _writer,
            pending,
        } = *self;
        if pending.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        let _exclusive = store.snapshot.write().unwrap_or_else(|e| e.into_inner());
        store.db.apply_batch(batch).map_err(err("apply batch"))?;
        store.db.flush().map_err(err("flush"))?;
        Ok(())
        // `_exclusive`, then `_writer`, are released here.
    }
}
