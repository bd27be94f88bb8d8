//! Namespaced content: per-namespace records over the shared blob store.
//!
//! Blob storage is shared; visibility is per namespace. A namespace sees a
//! blob only if it has a `content/blob/<digest>` record, which is written
//! when a writer in that namespace commits. If the blob is already in the
//! store (written by another namespace), opening a writer with that expected
//! digest records a "shared" ingest and committing it without writing any
//! data records the blob in this namespace (containerd's shared policy).
//!
//! Ordering (containerd's): backend work (fsync, rename, copies) happens
//! outside KV write transactions; the blob-store commit comes first and the
//! record second, so a crash in between leaves an orphan blob for GC, never a
//! record without a blob.

use std::time::{Duration, SystemTime};

use berth_content::{Digest, HashState, Landing, Reader, Status, WriterOpts};
use berth_errdefs::ErrorKind;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::leases::{add_lease_resource, remove_lease_resource};
use crate::namespaces::apply_label_mask;
use crate::schema::{self, BlobRecord, IngestRecord, CONTENT, INGESTS};
use crate::validate::{normalize_labels, validate_identifier, validate_labels};
use crate::Labels;
use berth_filters::{self as filters, check_map, Adaptor};

/// How long an ingest opened without a lease stays a GC root.
pub const INGEST_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);

/// A blob as a namespace sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentInfo {
    pub digest: Digest,
    pub size: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: Labels,
}

impl ContentInfo {
    fn from_record(digest: Digest, r: BlobRecord) -> ContentInfo {
        ContentInfo {
            digest,
            size: r.size,
            created_at: r.created_at,
            updated_at: r.updated_at,
            labels: r.labels,
        }
    }
}

/// What to open a namespaced writer for.
#[derive(Debug, Clone, Default)]
pub struct ContentWriterOpts {
    /// The ingest reference (per namespace). Must not be empty.
    pub reference: String,
    /// Expected size, if known (`None` or 0 = unknown).
    pub total: Option<u64>,
    /// Expected digest, if known.
    pub expected: Option<Digest>,
    /// Lease that will hold the ingest and, after commit, the blob.
    pub lease: Option<String>,
}

/// Content operations; from [`Db::content`].
#[derive(Clone, Copy)]
pub struct Content<'a> {
    db: &'a Db,
}

impl Db {
    /// Content operations.
    pub fn content(&self) -> Content<'_> {
        Content { db: self }
    }
}

struct InfoAdaptor<'a>(&'a ContentInfo);

impl Adaptor for InfoAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "digest" => Some(self.0.digest.to_string()),
            "size" => Some(self.0.size.to_string()),
            "labels" => check_map(&path[1..], &self.0.labels),
            _ => None,
        }
    }
}

fn content_err(what: impl Into<String>) -> impl FnOnce(berth_content::Error) -> Error {
    move |e| Error::content(what, e)
}

fn not_found(digest: &Digest) -> Error {
    Error::NotFound(format!("content digest {digest}"))
}

impl Content<'_> {
    /// The namespace's view of a blob. `NotFound` if this namespace has no
    /// record of it, even if another namespace does.
    pub fn info(&self, ns: &str, digest: &Digest) -> Result<ContentInfo> {
        validate_identifier("namespace", ns)?;
        self.db.view(|tx| {
            let r: BlobRecord = schema::get_json(tx, &schema::blob_key(ns, digest))?
                .ok_or_else(|| not_found(digest))?;
            Ok(ContentInfo::from_record(*digest, r))
        })
    }

    /// Updates a blob's labels. `paths`: `labels` replaces all labels,
    /// `labels.<key>` sets (or, when absent/empty in `labels`, removes) one;
    /// no paths replaces all labels. Bumps `updated_at`.
    pub fn update(
        &self,
        ns: &str,
        digest: &Digest,
        labels: &Labels,
        paths: &[String],
    ) -> Result<ContentInfo> {
        validate_identifier("namespace", ns)?;
        let _shared = self.db.content_shared();
        self.db.update(|tx| {
            let key = schema::blob_key(ns, digest);
            let mut r: BlobRecord = schema::get_json(tx, &key)?.ok_or_else(|| not_found(digest))?;
            let mut next = apply_label_mask(
                r.labels.clone(),
                labels,
                paths,
                "content",
                &digest.to_string(),
            )?;
            validate_labels("info.Labels", &next)?;
            normalize_labels(&mut next);
            r.labels = next;
            r.updated_at = SystemTime::now();
            schema::put_json(tx, &key, &r)?;
            Ok(ContentInfo::from_record(*digest, r))
        })
    }

    /// The namespace's blobs matching any of `filters` (fields `digest`,
    /// `size`, `labels.<key>`), sorted by digest.
    pub fn list<S: AsRef<str>>(&self, ns: &str, filters: &[S]) -> Result<Vec<ContentInfo>> {
        validate_identifier("namespace", ns)?;
        let filter = filters::parse_all(filters)?;
        self.db.view(|tx| {
            let mut out = Vec::new();
            schema::scan_children(tx, &schema::blobs_prefix(ns), 1, |k, rest, v| {
                let Some(digest) = rest.first().and_then(|d| Digest::parse(d).ok()) else {
                    return Ok(());
                };
                let info = ContentInfo::from_record(digest, schema::decode_json(k, v)?);
                if filter.matches(&InfoAdaptor(&info)) {
                    out.push(info);
                }
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// Removes the namespace's record of a blob. The blob itself is removed
    /// by the next GC if no namespace references it. `NotFound` if absent.
    pub fn delete(&self, ns: &str, digest: &Digest) -> Result<()> {
        validate_identifier("namespace", ns)?;
        let _shared = self.db.content_shared();
        self.db.update(|tx| {
            if !tx.delete(&schema::blob_key(ns, digest))? {
                return Err(not_found(digest));
            }
            Ok(())
        })
    }

    /// Opens a blob for reading if this namespace has it.
    pub fn reader(&self, ns: &str, digest: &Digest) -> Result<Reader> {
        self.info(ns, digest)?;
        self.db
            .store
            .reader(digest)
            .map_err(content_err(format!("content digest {digest}")))
    }

    /// The progress of an ingest of this namespace (`reference` is the
    /// namespace's ref). `NotFound` if absent.
    pub fn status(&self, ns: &str, reference: &str) -> Result<Status> {
        validate_identifier("namespace", ns)?;
        let record = self.ingest(ns, reference)?;
        let mut st = self
            .db
            .store
            .status(&record.bref)
            .map_err(content_err(format!("ingest ref {reference:?}")))?;
        st.reference = reference.to_string();
        Ok(st)
    }

    /// The active ingests of this namespace matching any of `filters`
    /// (field `ref`), sorted by ref.
    pub fn list_statuses<S: AsRef<str>>(&self, ns: &str, filters: &[S]) -> Result<Vec<Status>> {
        validate_identifier("namespace", ns)?;
        let filter = filters::parse_all(filters)?;
        let records = self.db.view(|tx| {
            let mut out = Vec::new();
            schema::scan_children(tx, &schema::ingests_prefix(ns), 1, |k, rest, v| {
                let r: IngestRecord = schema::decode_json(k, v)?;
                out.push((rest.into_iter().next().unwrap_or_default(), r.bref));
                Ok(())
            })?;
            Ok(out)
        })?;
        let mut out = Vec::new();
        for (reference, bref) in records {
            let mut st = match self.db.store.status(&bref) {
                Ok(st) => st,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::content(format!("ingest ref {reference:?}"), e)),
            };
            st.reference = reference;
            let adaptor = |p: &[String]| match p.first().map(String::as_str) {
                Some("ref") => Some(st.reference.clone()),
                _ => None,
            };
            if filter.matches(&adaptor) {
                out.push(st);
            }
        }
        Ok(out)
    }

    /// Abandons an ingest: drops the record and the partial data.
    /// `NotFound` if absent; `Unavailable` while a writer holds it.
    pub fn abort(&self, ns: &str, reference: &str) -> Result<()> {
        validate_identifier("namespace", ns)?;
        let _shared = self.db.content_shared();
        let record = self.ingest(ns, reference)?;
        if record.expected.is_none() {
            // Outside the KV transaction; fails (and keeps the record) while
            // a writer holds the ref.
            match self.db.store.abort(&record.bref) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::content(format!("ingest ref {reference:?}"), e)),
            }
        }
        self.db.update(|tx| {
            if !tx.delete(&schema::ingest_key(ns, reference))? {
                return Err(Error::NotFound(format!("ingest ref {reference:?}")));
            }
            Ok(())
        })
    }

    fn ingest(&self, ns: &str, reference: &str) -> Result<IngestRecord> {
        self.db.view(|tx| {
            schema::get_json(tx, &schema::ingest_key(ns, reference))?
                .ok_or_else(|| Error::NotFound(format!("ingest ref {reference:?}")))
        })
    }

    /// Opens (or resumes) a namespaced writer.
    ///
    /// - `AlreadyExists` if `expected` is already in this namespace (the blob
    ///   is still added to the lease, as containerd does).
    /// - If `expected` is in the blob store (another namespace wrote it) and
    ///   `total` is unknown or matches, no data needs to be written: commit
    ///   records it here. Writing data switches to a real ingest (copying the
    ///   existing blob first, as containerd does).
    /// - The ingest is recorded under the lease if one is given (`NotFound` if
    ///   the lease does not exist), else it expires from GC's roots after
    ///   [`INGEST_EXPIRY`].
    /// - `Unavailable` while another writer holds the same ref.
    pub fn writer(&self, ns: &str, opts: ContentWriterOpts) -> Result<ContentWriter> {
        validate_identifier("namespace", ns)?;
        if opts.reference.is_empty() {
            return Err(Error::InvalidArgument("ref must not be empty".into()));
        }
        let db = self.db.arc()?;
        let total = opts.total.filter(|t| *t > 0);
        let lease = opts.lease.clone().filter(|l| !l.is_empty());
        let reference = opts.reference.clone();

        let _shared = self.db.content_shared();

        // Is the blob already in the store (shared content)? Checked outside
        // the write transaction.
        let mut shared: Option<(Digest, u64)> = None;
        if let Some(expected) = opts.expected {
            if let Ok(info) = self.db.store.info(&expected) {
                if total.is_none() || total == Some(info.size) {
                    shared = Some((expected, info.size));
                }
            }
        }

        enum Opened {
            Exists,
            Ingest { bref: String, created: bool },
        }
        let opened = self.db.update(|tx| {
            if let Some(expected) = &opts.expected {
                if tx.get(&schema::blob_key(ns, expected))?.is_some() {
                    if let Some(lease) = &lease {
                        add_lease_resource(tx, ns, lease, &[CONTENT.into(), expected.to_string()])?;
                    }
                    return Ok(Opened::Exists);
                }
            }
            schema::ensure_namespace(tx, ns)?;
            let key = schema::ingest_key(ns, &reference);
            let existing: Option<IngestRecord> = schema::get_json(tx, &key)?;
            let created = existing.is_none();
            let mut record = existing.unwrap_or_else(|| IngestRecord {
                bref: format!("{ns}/{}/{reference}", uuid::Uuid::new_v4().simple()),
                expected: None,
                expire_at: None,
            });
            match &lease {
                Some(lease) => {
                    add_lease_resource(tx, ns, lease, &[INGESTS.into(), reference.clone()])?;
                }
                None => record.expire_at = Some(SystemTime::now() + INGEST_EXPIRY),
            }
            if let Some((digest, _)) = shared {
                record.expected = Some(digest);
            }
            schema::put_json(tx, &key, &record)?;
            Ok(Opened::Ingest {
                bref: record.bref,
                created,
            })
        })?;
        let (bref, created) = match opened {
            Opened::Exists => {
                let expected = opts.expected.map(|d| d.to_string()).unwrap_or_default();
                return Err(Error::AlreadyExists(format!("content {expected}")));
            }
            Opened::Ingest { bref, created } => (bref, created),
        };

        let inner = if shared.is_some() {
            None
        } else {
            // Like containerd, the backend is not told the expected digest:
            // the blob must be committed in this namespace to be seen here.
            match self.db.store.writer(WriterOpts {
                reference: bref.clone(),
                total,
                expected: None,
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    if created {
                        // Undo the record we just made; best effort.
                        let undo = self.db.update(|tx| {
                            tx.delete(&schema::ingest_key(ns, &reference))?;
                            if let Some(lease) = &lease {
                                remove_lease_resource(tx, ns, lease, &[INGESTS, &reference])?;
                            }
                            Ok(())
                        });
                        if let Err(u) = undo {
                            tracing::warn!(namespace = ns, reference = %reference, error = %u, "failed to remove ingest record after writer open failed");
                        }
                    }
                    return Err(Error::content(format!("ingest ref {reference:?}"), e));
                }
            }
        };

        let state = match (inner, shared) {
            (Some(w), _) => WriterState::Ingest(Box::new(w)),
            (None, Some((digest, size))) => WriterState::Shared { digest, size },
            (None, None) => WriterState::Closed,
        };
        Ok(ContentWriter {
            db,
            namespace: ns.to_string(),
            reference,
            bref,
            lease,
            state,
            started_at: SystemTime::now(),
        })
    }
}

/// A namespaced, resumable content writer. Owns a handle on the [`Db`].
///
/// Dropping it releases the ref; the ingest stays (resumable by opening a
/// writer with the same ref) until aborted, committed or collected.
pub struct ContentWriter {
    db: std::sync::Arc<Db>,
    namespace: String,
    reference: String,
    bref: String,
    lease: Option<String>,
    state: WriterState,
    started_at: SystemTime,
}

enum WriterState {
    /// A blob-store ingest.
    Ingest(Box<berth_content::Writer>),
    /// Shared content: the blob exists in the store; nothing written yet.
    Shared { digest: Digest, size: u64 },
    /// Committed (or failed beyond repair).
    Closed,
}

impl std::fmt::Debug for ContentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            WriterState::Ingest(_) => "ingest",
            WriterState::Shared { .. } => "shared",
            WriterState::Closed => "closed",
        };
        f.debug_struct("ContentWriter")
            .field("namespace", &self.namespace)
            .field("reference", &self.reference)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ContentWriter {
    /// The namespace's ingest ref.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The namespace this writer belongs to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn what(&self) -> String {
        format!("ingest ref {:?}", self.reference)
    }

    /// Progress, with the namespace's ref.
    pub fn status(&self) -> Status {
        let (offset, total, expected) = match &self.state {
            WriterState::Ingest(w) => {
                let mut st = w.status();
                st.reference = self.reference.clone();
                return st;
            }
            WriterState::Shared { digest, size } => (*size, *size, Some(*digest)),
            WriterState::Closed => (0, 0, None),
        };
        Status {
            reference: self.reference.clone(),
            offset,
            total,
            expected,
            started_at: self.started_at,
            updated_at: self.started_at,
        }
    }

    /// The digest of what the ingest holds so far.
    pub fn digest(&self) -> Digest {
        match &self.state {
            WriterState::Ingest(w) => w.digest(),
            WriterState::Shared { digest, .. } => *digest,
            WriterState::Closed => Digest::of_bytes(&[]),
        }
    }

    /// Appends data. On a shared-content ingest the existing blob is first
    /// copied into a real ingest (as containerd does).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let what = self.what();
        self.ingest(None)?.write(data).map_err(content_err(what))
    }

    /// The running sha256 of an ingest in progress (`None` for shared content not copied
    /// into an ingest yet): see [`write_hashed`](Self::write_hashed).
    pub fn hash_state(&self) -> Option<HashState> {
        match &self.state {
            WriterState::Ingest(w) => Some(w.hash_state()),
            _ => None,
        }
    }

    /// Appends data whose hash state the caller computed (see
    /// `berth_content::Writer::write_hashed`).
    pub fn write_hashed(&mut self, data: &[u8], after: HashState) -> Result<()> {
        let what = self.what();
        match &mut self.state {
            WriterState::Ingest(w) => w.write_hashed(data, after).map_err(content_err(what)),
            _ => self.write(data),
        }
    }

    /// A handle that writes data into the ingest ahead of the writer (see
    /// `berth_content::Writer::landing`); `None` for shared content not copied yet.
    pub fn landing(&mut self) -> Option<Landing> {
        match &mut self.state {
            WriterState::Ingest(w) => w.landing(),
            _ => None,
        }
    }

    /// Takes `len` bytes a [`Landing`] wrote as written (see
    /// `berth_content::Writer::adopt`).
    pub fn adopt(&mut self, len: u64, after: HashState) -> Result<()> {
        let what = self.what();
        match &mut self.state {
            WriterState::Ingest(w) => w.adopt(len, after).map_err(content_err(what)),
            _ => Err(closed(&what)),
        }
    }

    /// Cuts off data a [`Landing`] wrote that will not be adopted.
    pub fn drop_landed(&mut self) -> Result<()> {
        let what = self.what();
        match &mut self.state {
            WriterState::Ingest(w) => w.drop_landed().map_err(content_err(what)),
            _ => Ok(()),
        }
    }

    /// Stops the writer's [`Landing`]s and cuts off what they wrote and was not adopted.
    pub fn close_landing(&mut self) -> Result<()> {
        let what = self.what();
        match &mut self.state {
            WriterState::Ingest(w) => w.close_landing().map_err(content_err(what)),
            _ => Ok(()),
        }
    }

    /// Cuts the ingest back to `size` bytes.
    pub fn truncate(&mut self, size: u64) -> Result<()> {
        if let WriterState::Shared { .. } = self.state {
            self.ingest(Some(size))?;
            return Ok(());
        }
        let what = self.what();
        self.ingest(None)?.truncate(size).map_err(content_err(what))
    }

    /// Declares the total size (0 = unknown), as a later protocol message may.
    pub fn set_total(&mut self, total: u64) -> Result<()> {
        let what = self.what();
        match &mut self.state {
            WriterState::Ingest(w) => w.set_total(total).map_err(content_err(what)),
            WriterState::Shared { .. } => Ok(()),
            WriterState::Closed => Err(closed(&what)),
        }
    }

    /// Records the expected digest reported by [`status`](Self::status).
    pub fn set_expected(&mut self, expected: Digest) -> Result<()> {
        let what = self.what();
        match &mut self.state {
            WriterState::Ingest(w) => w.set_expected(expected).map_err(content_err(what)),
            WriterState::Shared { .. } => Ok(()),
            WriterState::Closed => Err(closed(&what)),
        }
    }

    /// The blob-store ingest, switching a shared-content ingest to a real one
    /// first by copying the first `upto` bytes (default: all) of the blob.
    fn ingest(&mut self, upto: Option<u64>) -> Result<&mut berth_content::Writer> {
        let what = self.what();
        if let WriterState::Shared { digest, size } = self.state {
            let store = &self.db.store;
            let mut w = store
                .writer(WriterOpts {
                    reference: self.bref.clone(),
                    total: None,
                    expected: None,
                })
                .map_err(content_err(what.clone()))?;
            // Start from scratch: a resumed backend ingest may hold data.
            w.truncate(0).map_err(content_err(what.clone()))?;
            let n = upto.unwrap_or(size).min(size);
            if n > 0 {
                let blob = format!("content digest {digest}");
                let r = store.reader(&digest).map_err(content_err(blob.clone()))?;
                let mut buf = vec![0u8; (1 << 20).min(n as usize)];
                let mut off = 0u64;
                while off < n {
                    let want = ((n - off) as usize).min(buf.len());
                    let got = r
                        .read_at(off, &mut buf[..want])
                        .map_err(content_err(blob.clone()))?;
                    if got == 0 {
                        return Err(Error::FailedPrecondition(format!(
                            "{what}: blob {digest} ended at {off} of {n} bytes while copying"
                        )));
                    }
                    w.write(&buf[..got]).map_err(content_err(what.clone()))?;
                    off += got as u64;
                }
            }
            self.state = WriterState::Ingest(Box::new(w));
        }
        match &mut self.state {
            WriterState::Ingest(w) => Ok(&mut **w),
            _ => Err(closed(&what)),
        }
    }

    /// Commits the ingest as a blob in this namespace with `labels`.
    ///
    /// `size` 0 and `expected` `None` skip those checks; a mismatch is
    /// `FailedPrecondition` and keeps the ingest. If this namespace already
    /// has the blob, the ingest is removed and `AlreadyExists` returned. On
    /// success (and on `AlreadyExists`) the blob is added to the writer's
    /// lease (`NotFound` if the lease is gone).
    pub fn commit(
        &mut self,
        size: u64,
        expected: Option<Digest>,
        labels: Labels,
    ) -> Result<Digest> {
        let what = self.what();
        validate_labels("info.Labels", &labels)?;
        let mut labels = labels;
        normalize_labels(&mut labels);

        let db = std::sync::Arc::clone(&self.db);
        let _shared = db.content_shared();

        // Blob-store commit (fsync + rename) before, and outside, the KV
        // transaction.
        let (digest, size) = match &mut self.state {
            WriterState::Ingest(w) => {
                let offset = w.status().offset;
                if size != 0 && size != offset {
                    return Err(Error::FailedPrecondition(format!(
                        "{what} failed size validation: {offset} != {size}"
                    )));
                }
                let digest = w.digest();
                match w.commit(offset, expected) {
                    Ok(d) => (d, offset),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => (digest, offset),
                    Err(e) => return Err(Error::content(what, e)),
                }
            }
            WriterState::Shared {
                digest,
                size: blob_size,
            } => {
                let (digest, blob_size) = (*digest, *blob_size);
                if size != 0 && size != blob_size {
                    return Err(Error::FailedPrecondition(format!(
                        "{what} failed size validation: {blob_size} != {size}"
                    )));
                }
                if let Some(expected) = expected {
                    if expected != digest {
                        return Err(Error::FailedPrecondition(format!(
                            "{what} unexpected digest {digest}, expected {expected}"
                        )));
                    }
                }
                (digest, blob_size)
            }
            WriterState::Closed => return Err(closed(&what)),
        };
        self.state = WriterState::Closed;

        let ns = self.namespace.clone();
        let reference = self.reference.clone();
        let lease = self.lease.clone();
        let existed = db.update(|tx| {
            schema::ensure_namespace(tx, &ns)?;
            let key = schema::blob_key(&ns, &digest);
            let existed = tx.get(&key)?.is_some();
            if !existed {
                let now = SystemTime::now();
                let record = BlobRecord {
                    size,
                    created_at: now,
                    updated_at: now,
                    labels,
                };
                schema::put_json(tx, &key, &record)?;
            }
            tx.delete(&schema::ingest_key(&ns, &reference))?;
            if let Some(lease) = &lease {
                remove_lease_resource(tx, &ns, lease, &[INGESTS, &reference])?;
                add_lease_resource(tx, &ns, lease, &[CONTENT.into(), digest.to_string()])?;
            }
            Ok(existed)
        })?;
        if existed {
            return Err(Error::AlreadyExists(format!("content {digest}")));
        }
        Ok(digest)
    }

    /// Closes the writer, syncing partial data; the ingest stays resumable.
    pub fn close(mut self) -> Result<()> {
        let what = self.what();
        match std::mem::replace(&mut self.state, WriterState::Closed) {
            WriterState::Ingest(w) => w.close().map_err(content_err(what)),
            _ => Ok(()),
        }
    }
}

fn closed(what: &str) -> Error {
    Error::FailedPrecondition(format!("{what}: writer is closed"))
}
