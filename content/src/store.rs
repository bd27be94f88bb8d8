//! The store: blobs under `blobs/sha256/<hex>`, ingests under
//! `ingest/<sha256 of ref>/` (containerd's `plugins/content/local/store.go`).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, ALGORITHM};
use crate::error::{Error, IoContext, Result};
use crate::locks::Locks;
use crate::reader::Reader;
use crate::timestamp;
use crate::writer::{Writer, WriterOpts};

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// Commit time (the blob file's mtime).
    pub created_at: SystemTime,
    /// Last access or label update (the blob file's atime), as containerd.
    pub updated_at: SystemTime,
}

/// The state of an ingest (an unfinished write keyed by a reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// Declared total size, 0 when unknown.
    pub total: u64,
    /// Declared digest, if any.
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// The local content store. Cheap to clone; all clones share the ref locks.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    root: PathBuf,
    pub(crate) locks: Arc<Locks>,
}

pub(crate) const DATA: &str = "data";
pub(crate) const REF: &str = "ref";
pub(crate) const STARTED_AT: &str = "startedat";
pub(crate) const UPDATED_AT: &str = "updatedat";
pub(crate) const TOTAL: &str = "total";
pub(crate) const EXPECTED: &str = "expected";

impl Store {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let inner = Inner {
            root: root.into(),
            locks: Arc::default(),
        };
        for dir in [inner.blobs_dir(), inner.ingest_root()] {
            fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        }
        remove_broken_ingests(&inner.ingest_root());
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Size and times of a committed blob; `NotFound` when absent.
    pub fn info(&self, digest: &Digest) -> Result<BlobInfo> {
        let path = self.inner.blob_path(digest);
        match fs::metadata(&path) {
            Ok(md) if md.is_file() => Ok(blob_info(*digest, &md)),
            Ok(_) => Err(Error::BlobNotFound(*digest)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobNotFound(*digest)),
            Err(e) => Err(Error::io("stat blob", &path, e)),
        }
    }

    /// Opens a committed blob for reading; `NotFound` when absent.
    pub fn reader(&self, digest: &Digest) -> Result<Reader> {
        let path = self.inner.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::BlobNotFound(*digest))
            }
            Err(e) => return Err(Error::io("open blob", &path, e)),
        };
        let md = file.metadata().ctx("stat blob", &path)?;
        if !md.is_file() {
            return Err(Error::BlobNotFound(*digest));
        }
        Ok(Reader::new(file, path, md.len()))
    }

    /// Calls `f` for every committed blob. Files that are not blobs (wrong
    /// names, other algorithms, temp files) are skipped. An error from `f`
    /// stops the walk and is returned.
    pub fn walk(&self, mut f: impl FnMut(BlobInfo) -> Result<()>) -> Result<()> {
        let dir = self.inner.blobs_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read directory", &dir, e)),
        };
        for entry in entries {
            let entry = entry.ctx("read directory", &dir)?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| Digest::parse(&format!("{ALGORITHM}:{n}")).ok())
            else {
                tracing::debug!(path = %entry.path().display(), "skipping non-blob file in content store");
                continue;
            };
            // Not following symlinks: a blob is a regular file.
            let md = match entry.metadata() {
                Ok(md) => md,
                // Deleted while walking.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat blob", entry.path(), e)),
            };
            if !md.is_file() {
                continue;
            }
            f(blob_info(digest, &md))?;
        }
        Ok(())
    }

    /// Removes a committed blob; `NotFound` when absent.
    pub fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.inner.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobNotFound(*digest)),
            Err(e) => Err(Error::io("remove blob", &path, e)),
        }
    }

    /// Starts or resumes the ingest named by `opts.reference`. See [`Writer`].
    pub fn writer(&self, opts: WriterOpts) -> Result<Writer> {
        Writer::open(Arc::clone(&self.inner), opts)
    }

    /// The status of the ingest for `reference`; `NotFound` when absent.
    pub fn status(&self, reference: &str) -> Result<Status> {
        // An active writer's queued chunks count as written.
        self.inner.locks.wait_idle(Some(reference));
        let dir = self.inner.ingest_dir(reference);
        match read_status(&dir)? {
            Some(st) if st.reference == reference => Ok(st),
            Some(st) => Err(Error::corrupt(
                &dir,
                format!("ingest holds ref {:?}, not {reference:?}", st.reference),
            )),
            None => Err(Error::IngestNotFound(reference.to_string())),
        }
    }

    /// The statuses of all ingests. Ingests that vanish or are unreadable
    /// while listing are skipped.
    pub fn list_statuses(&self) -> Result<Vec<Status>> {
        self.inner.locks.wait_idle(None);
        let root = self.inner.ingest_root();
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", &root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.ctx("read directory", &root)?;
            match read_status(&entry.path()) {
                Ok(Some(st)) => out.push(st),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping unreadable ingest"),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Removes the ingest for `reference`. `NotFound` when absent;
    /// `Unavailable` while a live writer holds it.
    pub fn abort(&self, reference: &str) -> Result<()> {
        let _lock = self.inner.locks.try_lock(reference)?;
        let dir = self.inner.ingest_dir(reference);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::IngestNotFound(reference.to_string()))
            }
            Err(e) => Err(Error::io("remove ingest", &dir, e)),
        }
    }
}

impl Inner {
    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join(ALGORITHM)
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub(crate) fn ingest_root(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// The ingest directory is named by the sha256 of the ref, so its length
    /// is fixed whatever the ref holds (same as containerd).
    pub(crate) fn ingest_dir(&self, reference: &str) -> PathBuf {
        self.ingest_root()
            .join(hex::encode(Sha256::digest(reference.as_bytes())))
    }
}

fn blob_info(digest: Digest, md: &fs::Metadata) -> BlobInfo {
    let created_at = md.modified().unwrap_or(UNIX_EPOCH);
    BlobInfo {
        digest,
        size: md.len(),
        created_at,
        updated_at: atime(md).unwrap_or(created_at),
    }
}

fn atime(md: &fs::Metadata) -> Option<SystemTime> {
    let secs = md.atime();
    let nanos = u32::try_from(md.atime_nsec()).ok()?;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

/// Reads a small file; `None` when it does not exist.
pub(crate) fn read_small(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| Error::corrupt(path, "not UTF-8")),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn read_timestamp(path: &Path) -> Result<SystemTime> {
    let s = read_small(path)?.ok_or_else(|| Error::corrupt(path, "missing timestamp file"))?;
    timestamp::parse(&s).ok_or_else(|| Error::corrupt(path, format!("bad timestamp {s:?}")))
}

/// Reads the status of the ingest in `dir` from disk. `None` when there is no
/// ingest there (no directory, no `data` or no `ref`).
pub(crate) fn read_status(dir: &Path) -> Result<Option<Status>> {
    let data = dir.join(DATA);
    let md = match fs::metadata(&data) {
        Ok(md) if md.is_file() => md,
        Ok(_) => return Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(Error::io("stat ingest data", &data, e)),
    };
    let Some(reference) = read_small(&dir.join(REF))? else {
        return Ok(None);
    };
    let started_at = read_timestamp(&dir.join(STARTED_AT))?;
    let mut updated_at = read_timestamp(&dir.join(UPDATED_AT))?;
    // `updatedat` is written when a writer closes; the data may be newer.
    if let Ok(mtime) = md.modified() {
        updated_at = updated_at.max(mtime);
    }
    let total = read_small(&dir.join(TOTAL))?
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let expected = read_small(&dir.join(EXPECTED))?.and_then(|s| Digest::parse(s.trim()).ok());
    Ok(Some(Status {
        reference,
        offset: md.len(),
        total,
        expected,
        started_at,
        updated_at,
    }))
}

/// Removes ingest directories a crash left half-created (no `ref` or no
/// `data`): nothing can resume them and no status lists them, so nothing
/// else would ever clean them up. Runs at open, before any writer exists.
fn remove_broken_ingests(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        // Only what is certainly incomplete; a read error is left alone.
        if !dir.is_dir() || !matches!(read_status(&dir), Ok(None)) {
            continue;
        }
        tracing::info!(dir = %dir.display(), "removing half-created ingest");
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove half-created ingest");
        }
    }
}
