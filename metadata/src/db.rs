//! [`Db`]: the entry point, tying the KV store to the shared blob store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use berth_content::Store;

use crate::error::{Error, Result};
use crate::kv::{self, Backend, KvStore, ReadTxn, WriteTxn};
use crate::schema::{self, SchemaRecord, SCHEMA_VERSION, V1};
use crate::snapshots::Registered;

/// Where and how to open the metadata store.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Directory holding the store (created if missing): the redb backend
    /// uses the file `meta.redb` in it, the sled backend the directory
    /// `meta.sled`.
    pub path: PathBuf,
    /// The KV engine.
    pub backend: Backend,
}

impl DbOptions {
    /// The path of the KV store itself for these options.
    pub fn store_path(&self) -> PathBuf {
        match self.backend {
            Backend::Redb => self.path.join("meta.redb"),
            Backend::Sled => self.path.join("meta.sled"),
        }
    }
}

/// Namespaced metadata over the shared blob store and the snapshotters:
/// namespaces, content records, ingests, leases, snapshots and garbage
/// collection.
///
/// All methods block (file and KV I/O); call them from a blocking thread.
/// Handles: [`Db::namespaces`], [`Db::content`], [`Db::leases`],
/// [`Db::snapshots`]; GC: [`Db::garbage_collect`].
pub struct Db {
    pub(crate) kv: Box<dyn KvStore>,
    /// The store holds this build's schema record. A fresh store gets it with its first
    /// write, so that opening one writes (and waits for) nothing.
    schema_recorded: AtomicBool,
    pub(crate) store: Arc<Store>,
    /// Content commits, deletes and ingest changes hold this shared; the
    /// content sweep of GC holds it exclusively while deleting blobs, so a
    /// blob cannot be re-committed (and recorded) between GC deciding it is
    /// unreferenced and deleting it. Never held with a KV write open by GC.
    pub(crate) content_lock: RwLock<()>,
    /// Snapshotter backends by name ([`Db::register_snapshotter`]).
    pub(crate) snapshotters: RwLock<BTreeMap<String, Arc<Registered>>>,
    /// Lets handles hand out owned writers (`Arc<Db>`).
    pub(crate) me: Weak<Db>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.kv.backend())
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if needed) the metadata store and checks its schema.
    /// Returns an `Arc` because content writers keep the database alive.
    pub fn open(opts: DbOptions, content: Arc<Store>) -> Result<Arc<Db>> {
        std::fs::create_dir_all(&opts.path).map_err(|source| Error::Io {
            op: "create directory",
            path: opts.path.clone(),
            source,
        })?;
        let kv = kv::open(&opts.store_path(), opts.backend)?;
        let schema_recorded = check_schema(&*kv)?;
        Ok(Arc::new_cyclic(|me| Db {
            kv,
            schema_recorded: AtomicBool::new(schema_recorded),
            store: content,
            content_lock: RwLock::new(()),
            snapshotters: RwLock::new(BTreeMap::new()),
            me: me.clone(),
        }))
    }

    /// The KV engine in use.
    pub fn backend(&self) -> Backend {
        self.kv.backend()
    }

    /// The shared blob store underneath (not namespaced: for GC-aware
    /// callers only).
    pub fn blob_store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn view<T>(&self, f: impl FnOnce(&dyn ReadTxn) -> Result<T>) -> Result<T> {
        kv::view(&*self.kv, f)
    }

    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut dyn WriteTxn) -> Result<T>) -> Result<T> {
        if self.schema_recorded.load(Ordering::Acquire) {
            return kv::update(&*self.kv, f);
        }
        let out = kv::update(&*self.kv, |tx| {
            if schema::get_json::<SchemaRecord, _>(tx, &schema_key())?.is_none() {
                put_schema(tx)?;
            }
            f(tx)
        })?;
        self.schema_recorded.store(true, Ordering::Release);
        Ok(out)
    }

    pub(crate) fn content_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.content_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn content_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.content_lock.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn arc(&self) -> Result<Arc<Db>> {
        self.me
            .upgrade()
            .ok_or_else(|| Error::FailedPrecondition("metadata database is closing".into()))
    }
}

fn schema_key() -> Vec<u8> {
    schema::encode(&[V1])
}

fn put_schema(tx: &mut dyn WriteTxn) -> Result<()> {
    schema::put_json(
        tx,
        &schema_key(),
        &SchemaRecord {
            version: SCHEMA_VERSION,
        },
    )
}

/// Checks the store's schema version, migrating an older one. Returns whether the store
/// holds a schema record (a fresh store does not until its first write).
fn check_schema(kv: &dyn KvStore) -> Result<bool> {
    let found = kv::view(kv, |tx| {
        schema::get_json::<SchemaRecord, _>(tx, &schema_key())
    })?;
    match found {
        None => Ok(false),
        Some(r) if r.version == SCHEMA_VERSION => Ok(true),
        // Migrations from older minor versions go here.
        Some(r) if r.version < SCHEMA_VERSION => kv::update(kv, put_schema).map(|()| true),
        Some(r) => Err(Error::FailedPrecondition(format!(
            "metadata schema v1.{} is newer than this build supports (v1.{SCHEMA_VERSION})",
            r.version
        ))),
    }
}
