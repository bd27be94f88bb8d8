//! A bbolt-style transactional key-value store over ordered byte keys.
//!
//! Contract, for every backend:
//! - a read transaction ([`ReadTxn`]) is a consistent snapshot: it never sees a
//!   write transaction that commits after it began, and never a partial one;
//! - a write transaction ([`WriteTxn`]) sees its own writes, is atomic, and is
//!   durable on disk when [`WriteTxn::commit`] returns `Ok`;
//! - dropping a write transaction without committing rolls it back;
//! - there is one writer at a time (`begin_write` blocks while another write
//!   transaction is open);
//! - keys are ordered bytewise; [`ReadTxn::range`] and [`ReadTxn::scan_prefix`]
//!   visit keys in ascending order.
//!
//! Do not open a write transaction (or commit one) on a thread that holds a
//! read transaction of the same store: the sled backend takes its snapshot
//! lock exclusively while applying a commit.
//!
//! Backends: [`redb`](redb_backend) (default, `Durability::Immediate`) and, with
//! the cargo feature `sled`, `sled` (module `sled_backend`).

use std::ops::{Bound, ControlFlow};
use std::path::Path;

use crate::error::Result;

pub mod redb_backend;
#[cfg(feature = "sled")]
pub mod sled_backend;

/// Which KV engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// redb, committed with `Durability::Immediate` (fsync before commit returns).
    #[default]
    Redb,
    /// sled 0.34 (cargo feature `sled`): one writer, writes buffered and applied
    /// as one atomic `Batch`, then `flush()`ed before commit returns.
    Sled,
}

impl Backend {
    /// The backend's name as used in messages and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Sled => "sled",
        }
    }
}

/// Callback for scans: return `ControlFlow::Break(())` to stop early.
pub type ScanFn<'f> = dyn FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>> + 'f;

/// A consistent read-only snapshot.
pub trait ReadTxn {
    /// The value at `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits every key in `(start, end)` in ascending order.
    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, f: &mut ScanFn<'_>) -> Result<()>;

    /// Visits every key that starts with `prefix` in ascending order.
    fn scan_prefix(&self, prefix: &[u8], f: &mut ScanFn<'_>) -> Result<()> {
        match prefix_end(prefix) {
            Some(end) => self.range(Bound::Included(prefix), Bound::Excluded(end.as_slice()), f),
            None => self.range(Bound::Included(prefix), Bound::Unbounded, f),
        }
    }

    /// The first entry in `(start, end)`, if any.
    fn first_in(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut found = None;
        self.range(start, end, &mut |k, v| {
            found = Some((k.to_vec(), v.to_vec()));
            Ok(ControlFlow::Break(()))
        })?;
        Ok(found)
    }

    /// All entries under `prefix`, in order.
    fn collect_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan_prefix(prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// True if any key starts with `prefix`.
    fn has_prefix(&self, prefix: &[u8]) -> Result<bool> {
        let mut any = false;
        self.scan_prefix(prefix, &mut |_, _| {
            any = true;
            Ok(ControlFlow::Break(()))
        })?;
        Ok(any)
    }
}

/// An atomic, durable-on-commit write transaction. Dropping it rolls back.
pub trait WriteTxn: ReadTxn {
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `key`; true if it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool>;

    /// Removes every key starting with `prefix`; returns how many.
    fn delete_prefix(&mut self, prefix: &[u8]) -> Result<usize> {
        let mut keys = Vec::new();
        self.scan_prefix(prefix, &mut |k, _| {
            keys.push(k.to_vec());
            Ok(ControlFlow::Continue(()))
        })?;
        for k in &keys {
            self.delete(k)?;
        }
        Ok(keys.len())
    }

    /// Makes every write of this transaction visible and durable, atomically.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A transactional store.
pub trait KvStore: Send + Sync {
    /// Which engine this is.
    fn backend(&self) -> Backend;
    /// Starts a read transaction (a snapshot).
    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>>;
    /// Starts the (single) write transaction; blocks while another is open.
    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>>;
}

/// Opens (creating if needed) the store at `path` with the chosen backend.
///
/// For redb `path` is a file; for sled it is a directory.
pub fn open(path: &Path, backend: Backend) -> Result<Box<dyn KvStore>> {
    match backend {
        Backend::Redb => Ok(Box::new(redb_backend::RedbStore::open(path)?)),
        #[cfg(feature = "sled")]
        Backend::Sled => Ok(Box::new(sled_backend::SledStore::open(path)?)),
        #[cfg(not(feature = "sled"))]
        Backend::Sled => Err(crate::Error::NotImplemented(
            "metadata backend \"sled\" (berth-metadata was built without the `sled` feature)"
                .into(),
        )),
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// if there is none (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Runs `f` in a read transaction.
pub fn view<T>(kv: &dyn KvStore, f: impl FnOnce(&dyn ReadTxn) -> Result<T>) -> Result<T> {
    let tx = kv.begin_read()?;
    f(&*tx)
}

/// Runs `f` in a write transaction and commits if it returns `Ok`; otherwise
/// the transaction is rolled back and the error returned.
pub fn update<T>(kv: &dyn KvStore, f: impl FnOnce(&mut dyn WriteTxn) -> Result<T>) -> Result<T> {
    let mut tx = kv.begin_write()?;
    let out = f(&mut *tx)?;
    tx.commit()?;
    Ok(out)
}

/// True if the bounds describe an empty range (some engines panic on start > end).
pub(crate) fn is_empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    let s = match start {
        Bound::Included(s) | Bound::Excluded(s) => s,
        Bound::Unbounded => return false,
    };
    match end {
        Bound::Unbounded => false,
        Bound::Included(e) => match start {
            Bound::Included(_) => s > e,
            _ => s >= e,
        },
        Bound::Excluded(e) => s >= e,
    }
}
