//! Resumable ingests (containerd's `plugins/content/local/writer.go`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::landing::{Lander, Landing};
use crate::locks::RefLock;
use crate::store::{
    read_status, Inner, Status, DATA, EXPECTED, REF, STARTED_AT, TOTAL, UPDATED_AT,
};
use crate::timestamp;

const HASH_BUF: usize = 1 << 20;
/// The running sha256 of an ingest, advanced by whoever hashes the next bytes, and how
/// many bytes it covers (a check that a state handed back fits where it is applied).
#[derive(Clone, Default)]
pub struct HashState(Sha256, u64);

impl HashState {
    /// Folds `data` in.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
        self.1 += data.len() as u64;
    }

    /// The digest of what was folded in so far.
    pub fn digest(&self) -> Digest {
        Digest::from_hasher(&self.0)
    }

    /// How many bytes were folded in: the ingest offset the state belongs to.
    pub fn offset(&self) -> u64 {
        self.1
    }
}

impl std::fmt::Debug for HashState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashState(sha256)")
    }
}

/// Writes of at least this much copy and hash on two threads.
const PARALLEL_HASH_MIN: usize = 256 << 10;
/// Written data is handed to the kernel for write-back in pieces of this size, so the
/// disk works while the client still sends and the fsync at commit has little left to do.
const WRITEBACK_CHUNK: u64 = 8 << 20;
/// Ingest data goes into the page cache in writes of at most this size. On a VM that hands
/// free memory back to its host (free page reporting), 1 MiB writes spent ~3 ms per MiB
/// filling fresh page-cache pages for one message in ten or more, writes of up to 512 KiB
/// ~0.2 ms (Linux 6.18, ext4); likely because the large folios picked for large writes
/// come from the high-order blocks the host reclaimed. Smaller writes also bound how long
/// one system call keeps the CPU on a non-preemptible kernel.
const WRITE_PIECE: usize = 256 << 10;

/// What to write: the ingest reference and, when known, the size and digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterOpts {
    /// Names the ingest; the same reference resumes it. Must not be empty.
    pub reference: String,
    /// Expected total size (`None` or 0 = unknown).
    pub total: Option<u64>,
    /// Expected digest; if that blob already exists, opening fails with
    /// `AlreadyExists`.
    pub expected: Option<Digest>,
}

/// An exclusive, resumable write into the ingest for one reference.
///
/// Dropping the writer releases the reference; the ingest stays on disk and a
/// new writer with the same reference resumes it. A failed [`commit`](Writer::commit)
/// leaves the writer usable (and the ingest in place); a successful one, or one
/// that finds the blob already present, removes the ingest and closes the writer.
#[derive(Debug)]
pub struct Writer {
    inner: Arc<Inner>,
    /// `None` once committed.
    file: Option<File>,
    lock: Option<RefLock>,
    dir: PathBuf,
    reference: String,
    offset: u64,
    /// Start of the data not yet handed to write-back.
    writeback_from: u64,
    total: u64,
    expected: Option<Digest>,
    /// The sha256 of the data up to `offset`.
    hasher: Sha256,
    /// The thread that copies data handed to a [`Landing`] into the ingest.
    lander: Option<Lander>,
    started_at: SystemTime,
    updated_at: SystemTime,
}

impl Writer {
    pub(crate) fn open(inner: Arc<Inner>, opts: WriterOpts) -> Result<Writer> {
        let WriterOpts {
            reference,
            total,
            expected,
        } = opts;
        if reference.is_empty() {
            return Err(Error::EmptyRef);
        }
        let lock = inner.locks.try_lock(&reference)?;

        if let Some(expected) = &expected {
            let target = inner.blob_path(expected);
            if target.try_exists().ctx("stat blob", &target)? {
                return Err(Error::BlobExists(*expected));
            }
        }

        let ingest_root = inner.ingest_root();
        fs::create_dir_all(&ingest_root).ctx("create directory", &ingest_root)?;
        let dir = inner.ingest_dir(&reference);
        let total = total.unwrap_or(0);

        let existed = match fs::create_dir(&dir) {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
            Err(e) => return Err(Error::io("create ingest directory", &dir, e)),
        };

        let mut w = Writer {
            inner,
            file: None,
            lock: Some(lock),
            dir,
            reference,
            offset: 0,
            writeback_from: 0,
            total,
            expected,
            hasher: Sha256::new(),
            lander: None,
            started_at: SystemTime::now(),
            updated_at: SystemTime::now(),
        };
        if existed && w.resume()? {
            return Ok(w);
        }
        w.start_fresh()?;
        Ok(w)
    }

    /// Picks up an existing ingest. Returns false when it cannot be resumed and
    /// must be started over (containerd does the same: log and recreate).
    fn resume(&mut self) -> Result<bool> {
        let status = match read_status(&self.dir) {
            Ok(Some(st)) => st,
            Ok(None) => {
                tracing::info!(reference = %self.reference, "ingest incomplete on disk; starting over");
                return Ok(false);
            }
            Err(e) => {
                tracing::info!(reference = %self.reference, error = %e, "cannot resume ingest; starting over");
                return Ok(false);
            }
        };
        if status.reference != self.reference {
            tracing::warn!(
                reference = %self.reference,
                found = %status.reference,
                "ingest directory holds another ref; starting over"
            );
            return Ok(false);
        }
        if self.total > 0 && status.total > 0 && self.total != status.total {
            tracing::info!(
                reference = %self.reference,
                "provided total differs from status: {} != {}; starting over",
                self.total,
                status.total
            );
            return Ok(false);
        }

        let data = self.dir.join(DATA);
        let file = open_data(&data, false)?;
        // Re-hash what is already there so digest() covers it.
        let mut hasher = Sha256::new();
        let offset = hash_range(&file, &data, &mut hasher, 0, None)?;

        if status.total > 0 {
            self.total = status.total;
        } else if self.total > 0 {
            write_small(
                &self.dir.join(TOTAL),
                self.total.to_string().as_bytes(),
                true,
            )?;
        }
        match (&self.expected, status.expected) {
            (Some(new), old) if old.as_ref() != Some(new) => {
                write_small(&self.dir.join(EXPECTED), new.to_string().as_bytes(), true)?;
            }
            (None, old) => self.expected = old,
            _ => {}
        }
        self.file = Some(file);
        self.hasher = hasher;
        self.offset = offset;
        self.writeback_from = offset;
        self.started_at = status.started_at;
        self.updated_at = status.updated_at;
        Ok(true)
    }

    fn start_fresh(&mut self) -> Result<()> {
        let now = SystemTime::now();
        let stamp = timestamp::format(now);
        write_small(&self.dir.join(REF), self.reference.as_bytes(), true)?;
        write_small(&self.dir.join(STARTED_AT), stamp.as_bytes(), true)?;
        write_small(&self.dir.join(UPDATED_AT), stamp.as_bytes(), true)?;
        if self.total > 0 {
            write_small(
                &self.dir.join(TOTAL),
                self.total.to_string().as_bytes(),
                true,
            )?;
        } else {
            remove_if_exists(&self.dir.join(TOTAL))?;
        }
        match &self.expected {
            Some(d) => write_small(&self.dir.join(EXPECTED), d.to_string().as_bytes(), true)?,
            None => remove_if_exists(&self.dir.join(EXPECTED))?,
        }
        self.file = Some(open_data(&self.dir.join(DATA), true)?);
        self.hasher = Sha256::new();
        self.offset = 0;
        self.writeback_from = 0;
        self.started_at = now;
        self.updated_at = now;
        Ok(())
    }

    /// The reference this writer holds.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Progress of the write.
    pub fn status(&self) -> Status {
        Status {
            reference: self.reference.clone(),
            offset: self.offset,
            total: self.total,
            expected: self.expected,
            started_at: self.started_at,
            updated_at: self.updated_at,
        }
    }

    /// The digest of the bytes written so far (sha256 of nothing when empty).
    pub fn digest(&self) -> Digest {
        Digest::from_hasher(&self.hasher)
    }

    fn live_file(&self) -> Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| Error::WriterClosed(self.reference.clone()))
    }

    /// Appends `data` at the current offset. Writing past a declared total
    /// fails with `FailedPrecondition` and writes nothing.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.append(data, true)
    }

    /// The running sha256 of the bytes written so far, for a caller that hashes the next
    /// bytes itself while they arrive (see [`write_hashed`](Self::write_hashed) and
    /// [`adopt`](Self::adopt)).
    pub fn hash_state(&self) -> HashState {
        HashState(self.hasher.clone(), self.offset)
    }

    /// Appends `data`, whose hash the caller computed: `after` is
    /// [`hash_state`](Self::hash_state) updated with exactly `data` (a state that does not
    /// end where this write does is ignored and the data hashed here).
    pub fn write_hashed(&mut self, data: &[u8], after: HashState) -> Result<()> {
        if after.1 != self.offset + data.len() as u64 {
            return self.append(data, true);
        }
        self.append(data, false)?;
        self.hasher = after.0;
        Ok(())
    }

    /// A handle that writes data into this ingest ahead of the writer, at the offsets it
    /// will [`adopt`](Self::adopt), on a thread of the writer's own (started on first use).
    /// `None` when there can be none (the caller then writes through the writer).
    ///
    /// Whoever holds it writes only between the writer's operations, only at and after the
    /// writer's offset, and only data it will hand to `adopt` (else
    /// [`drop_landed`](Self::drop_landed) must cut it off again).
    pub fn landing(&mut self) -> Option<Landing> {
        if self.lander.is_none() {
            let (file, lock) = (self.file.as_ref()?, self.lock.as_ref()?);
            match Lander::start(file, lock.in_flight().clone(), self.offset) {
                Ok(l) => self.lander = Some(l),
                Err(e) => {
                    tracing::debug!(error = %e, "no landing thread; writing in place");
                    return None;
                }
            }
        }
        self.lander.as_ref().map(Lander::landing)
    }

    /// Takes the next `len` bytes, written through a [`Landing`], as written: waits for
    /// them to land. `after` is their hash state as for [`write_hashed`](Self::write_hashed)
    /// (one that does not fit has the bytes re-read and hashed).
    pub fn adopt(&mut self, len: u64, after: HashState) -> Result<()> {
        self.wait_written()?;
        self.check_room(len)?;
        let end = self.offset + len;
        let data = self.dir.join(DATA);
        let file = self.live_file()?;
        let landed = file.metadata().ctx("stat ingest data", &data)?.len();
        if landed < end {
            return Err(Error::corrupt(
                &data,
                format!(
                    "{len} bytes to adopt at {}, ingest ends at {landed}",
                    self.offset
                ),
            ));
        }
        if after.1 == end {
            self.hasher = after.0;
        } else {
            let mut hasher = self.hasher.clone();
            let hashed = hash_range(file, &data, &mut hasher, self.offset, Some(len))?;
            if hashed != len {
                return Err(Error::corrupt(
                    &data,
                    format!("{hashed} of {len} landed bytes at {} readable", self.offset),
                ));
            }
            self.hasher = hasher;
        }
        self.offset = end;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    /// Cuts off data a [`Landing`] wrote that will not be adopted.
    pub fn drop_landed(&mut self) -> Result<()> {
        self.wait_written()?;
        let data = self.dir.join(DATA);
        let file = self.live_file()?;
        if file.metadata().ctx("stat ingest data", &data)?.len() > self.offset {
            file.set_len(self.offset)
                .ctx("truncate ingest data", &data)?;
        }
        Ok(())
    }

    /// Takes no more data from the writer's [`Landing`]s, lets what was queued land and cuts
    /// off what was not adopted.
    pub fn close_landing(&mut self) -> Result<()> {
        if let Some(lander) = &self.lander {
            lander.close();
        }
        self.drop_landed()
    }

    /// Fails with `ExceedsTotal` unless `len` more bytes fit the declared total.
    fn check_room(&self, len: u64) -> Result<()> {
        match self.offset.checked_add(len) {
            Some(end) if self.total == 0 || end <= self.total => Ok(()),
            _ => Err(Error::ExceedsTotal {
                offset: self.offset,
                len,
                total: self.total,
            }),
        }
    }

    /// Waits until data handed to a [`Landing`] has landed in the ingest (every other
    /// operation does this first). After a failed write the ingest is cut back to what the
    /// writer had and the error returned.
    fn wait_written(&mut self) -> Result<()> {
        let Some(lander) = &self.lander else {
            return Ok(());
        };
        let Err(error) = lander.drain() else {
            return Ok(());
        };
        if let Some(lander) = self.lander.take() {
            lander.release(None);
        }
        let data = self.dir.join(DATA);
        tracing::warn!(reference = %self.reference, %error, "landing ingest data failed");
        if let Some(file) = &self.file {
            if let Err(e) = file.set_len(self.offset) {
                tracing::warn!(reference = %self.reference, error = %e, "cannot cut off landed data");
            }
        }
        Err(Error::io(
            "write ingest data",
            data,
            io::Error::other(error),
        ))
    }

    /// Writes `data` at the offset and, if `hash`, advances the hash (on a second thread
    /// for large writes: copying into the page cache and hashing are each a pass over the
    /// data, and clients wait for the running digest before sending more).
    fn append(&mut self, data: &[u8], hash: bool) -> Result<()> {
        self.wait_written()?;
        // The field, not `live_file`: the hasher is borrowed alongside.
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| Error::WriterClosed(self.reference.clone()))?;
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        self.check_room(len)?;
        let end = self.offset + len;
        let unhashed = self.hasher.clone();
        let written = match hash {
            false => write_in_pieces(file, data, self.offset),
            true if data.len() >= PARALLEL_HASH_MIN => {
                let (offset, hasher) = (self.offset, &mut self.hasher);
                std::thread::scope(|scope| {
                    let writing = scope.spawn(|| write_in_pieces(file, data, offset));
                    hasher.update(data);
                    writing
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("write thread panicked")))
                })
            }
            true => {
                self.hasher.update(data);
                write_in_pieces(file, data, self.offset)
            }
        };
        if let Err(e) = written {
            // Keep the file and the hash equal to what was written before.
            self.hasher = unhashed;
            if let Err(e2) = file.set_len(self.offset) {
                tracing::warn!(reference = %self.reference, error = %e2, "cannot roll back partial write");
            }
            return Err(Error::io("write ingest data", self.dir.join(DATA), e));
        }
        write_back_if_due(file, &mut self.writeback_from, end);
        self.offset = end;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    /// Cuts the ingest back to `offset` (at most the current offset) and
    /// re-hashes the remaining prefix; 0 restarts the write.
    pub fn truncate(&mut self, offset: u64) -> Result<()> {
        self.wait_written()?;
        let file = self.live_file()?;
        if offset > self.offset {
            return Err(Error::TruncateBeyondOffset {
                requested: offset,
                offset: self.offset,
            });
        }
        let data = self.dir.join(DATA);
        file.set_len(offset).ctx("truncate ingest data", &data)?;
        let mut hasher = Sha256::new();
        if offset > 0 {
            let hashed = hash_range(file, &data, &mut hasher, 0, Some(offset))?;
            if hashed != offset {
                return Err(Error::corrupt(
                    &data,
                    format!("ingest data ends at {hashed}, expected {offset} bytes"),
                ));
            }
        }
        self.hasher = hasher;
        self.offset = offset;
        self.writeback_from = self.writeback_from.min(offset);
        self.updated_at = SystemTime::now();
        Ok(())
    }

    /// Declares (or corrects) the total size, e.g. when it arrives in a later
    /// protocol message. 0 means unknown. Fails if less than already written.
    pub fn set_total(&mut self, total: u64) -> Result<()> {
        self.live_file()?;
        if total > 0 && total < self.offset {
            return Err(Error::TotalTooSmall {
                total,
                offset: self.offset,
            });
        }
        let path = self.dir.join(TOTAL);
        if total > 0 {
            write_small(&path, total.to_string().as_bytes(), true)?;
        } else {
            remove_if_exists(&path)?;
        }
        self.total = total;
        Ok(())
    }

    /// Records the expected digest reported by [`status`](Writer::status). It
    /// is informational: only the digest passed to [`commit`](Writer::commit)
    /// is verified (as containerd).
    pub fn set_expected(&mut self, expected: Digest) -> Result<()> {
        self.live_file()?;
        write_small(
            &self.dir.join(EXPECTED),
            expected.to_string().as_bytes(),
            true,
        )?;
        self.expected = Some(expected);
        Ok(())
    }

    /// Verifies and publishes the ingest as a blob.
    ///
    /// `size` 0 and `expected` `None` skip the respective check. On a size or
    /// digest mismatch (`FailedPrecondition`) or an I/O error the ingest and
    /// this writer stay usable. If the blob already exists the ingest is
    /// removed and `AlreadyExists` returned. After success, or
    /// `AlreadyExists`, the writer is closed and the reference released.
    pub fn commit(&mut self, size: u64, expected: Option<Digest>) -> Result<Digest> {
        self.wait_written()?;
        let file = self.live_file()?;
        let data = self.dir.join(DATA);
        file.sync_all().ctx("sync ingest data", &data)?;
        let md = file.metadata().ctx("stat ingest data", &data)?;
        if md.len() != self.offset {
            return Err(Error::corrupt(
                &data,
                format!(
                    "ingest data is {} bytes, writer wrote {}",
                    md.len(),
                    self.offset
                ),
            ));
        }
        if size > 0 && size != md.len() {
            return Err(Error::SizeMismatch {
                actual: md.len(),
                expected: size,
            });
        }
        let digest = self.digest();
        if let Some(expected) = expected {
            if expected != digest {
                return Err(Error::DigestMismatch {
                    actual: digest,
                    expected,
                });
            }
        }

        let blobs = self.inner.blobs_dir();
        fs::create_dir_all(&blobs).ctx("create directory", &blobs)?;
        let target = self.inner.blob_path(&digest);
        if target.try_exists().ctx("stat blob", &target)? {
            self.finish();
            return Err(Error::BlobExists(digest));
        }
        fs::rename(&data, &target).ctx("rename ingest into blobs", &target)?;
        sync_dir(&blobs)?;

        // The blob is visible; what follows is best effort (as containerd).
        if let Some(file) = &self.file {
            let now = SystemTime::now();
            let times = fs::FileTimes::new().set_accessed(now).set_modified(now);
            if let Err(e) = file.set_times(times) {
                tracing::warn!(%digest, error = %e, "failed to set blob times to commit time");
            }
            // Read-only, keeping the read bits of the creation mode.
            let mode = md.permissions().mode() & 0o444;
            if let Err(e) = file.set_permissions(fs::Permissions::from_mode(mode)) {
                tracing::warn!(%digest, error = %e, "failed to make blob read-only");
            }
        }
        self.finish();
        Ok(digest)
    }

    /// Closes an unfinished writer: syncs the data and records `updatedat`.
    /// Dropping does the same without the sync and without reporting errors.
    pub fn close(mut self) -> Result<()> {
        self.wait_written()?;
        if let Some(file) = self.file.take() {
            let data = self.dir.join(DATA);
            file.sync_all().ctx("sync ingest data", &data)?;
            let stamp = timestamp::format(self.updated_at);
            write_small(&self.dir.join(UPDATED_AT), stamp.as_bytes(), false)?;
        }
        Ok(())
    }

    /// Removes the ingest directory and releases the reference.
    fn finish(&mut self) {
        self.file = None;
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(reference = %self.reference, path = %self.dir.display(), error = %e, "failed to remove ingest directory");
        }
        match self.lander.take() {
            Some(lander) => lander.release(self.lock.take()),
            None => self.lock = None,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let stamp = timestamp::format(self.updated_at);
            if let Err(e) = write_small(&self.dir.join(UPDATED_AT), stamp.as_bytes(), false) {
                tracing::warn!(reference = %self.reference, error = %e, "failed to record ingest update time");
            }
        }
        // Released after the queued writes land; else when the field drops.
        if let Some(lander) = self.lander.take() {
            lander.release(self.lock.take());
        }
    }
}

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Writer::write(self, buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn open_data(path: &Path, truncate: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
        .ctx("open ingest data", path)
}

/// Hashes the file from `start`, `limit` bytes or to the end; returns how many it read.
fn hash_range(
    file: &File,
    path: &Path,
    hasher: &mut Sha256,
    start: u64,
    limit: Option<u64>,
) -> Result<u64> {
    let mut buf = vec![0u8; HASH_BUF];
    let mut done = 0u64;
    loop {
        let want = match limit {
            Some(limit) => {
                let left = limit - done;
                if left == 0 {
                    break;
                }
                usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()))
            }
            None => buf.len(),
        };
        let n = match file.read_at(&mut buf[..want], start + done) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read ingest data", path, e)),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(done)
}

/// Writes a small metadata file via a temp file and rename, so readers never
/// see it half written.
fn write_small(path: &Path, contents: &[u8], sync: bool) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp).ctx("create", &tmp)?;
        io::Write::write_all(&mut f, contents).ctx("write", &tmp)?;
        if sync {
            f.sync_all().ctx("sync", &tmp)?;
        }
    }
    fs::rename(&tmp, path).ctx("rename", path)
}

/// Writes `data` at `offset` in pieces of at most [`WRITE_PIECE`].
pub(crate) fn write_in_pieces(file: &File, data: &[u8], mut offset: u64) -> io::Result<()> {
    for piece in data.chunks(WRITE_PIECE) {
        file.write_all_at(piece, offset)?;
        offset += piece.len() as u64;
    }
    Ok(())
}

/// Starts write-back of the data written since `*from` once it reaches [`WRITEBACK_CHUNK`]
/// (written data now ends at `end`), and moves `*from` up to `end`.
pub(crate) fn write_back_if_due(file: &File, from: &mut u64, end: u64) {
    if end.saturating_sub(*from) >= WRITEBACK_CHUNK {
        start_writeback(file, *from, end - *from);
        *from = end;
    }
}

/// Starts asynchronous write-back of `len` bytes at `offset` (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`). Only a head start: durability still comes from the fsync at
/// commit, so a failure is merely logged.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(file),
            off,
            n,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range failed");
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync directory", dir)
}
