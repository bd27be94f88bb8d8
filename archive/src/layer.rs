//! Whole-blob helpers for the diff service: apply a (compressed) layer blob
//! verifying both digests, and write a diff as a compressed layer with both
//! digests computed on the way.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use berth_content::Digest;

use crate::apply::{apply_layer, ApplyOptions, ApplyStats};
use crate::compression::{CompressWriter, Compression, DecompressReader};
use crate::diff::DiffStats;
use crate::digest::{verify, DigestReader, DigestWriter};
use crate::error::{Error, Result};

/// What [`apply_blob`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLayer {
    pub stats: ApplyStats,
    /// Detected from the blob's magic bytes.
    pub compression: Compression,
    /// sha256 and size of the blob as read.
    pub digest: Digest,
    pub size: u64,
    /// sha256 and size of the uncompressed tar (the diff ID).
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// Applies a layer blob (uncompressed, gzip or zstd, detected from its magic
/// bytes), streaming, then checks the blob's digest and the uncompressed
/// digest against the expected ones when given. A mismatch is an
/// InvalidArgument error after the layer was applied: callers discard the
/// target (as with any apply error).
///
/// Reading, decompressing and hashing run on a helper thread while this
/// thread writes files, so the two overlap.
pub fn apply_blob(
    blob: impl Read + Send,
    root: &Path,
    opts: &ApplyOptions,
    expected_digest: Option<&Digest>,
    expected_diff_id: Option<&Digest>,
) -> Result<AppliedLayer> {
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
    let (applied, produced) = std::thread::scope(|s| {
        let producer = s.spawn(move || produce(blob, tx));
        let applied = apply_layer(ChannelReader::new(rx), root, opts);
        (applied, producer.join())
    });
    let produced = match produced {
        Ok(p) => p,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    // An apply error caused by a read error is better reported as the read
    // error; otherwise the apply error comes first.
    let stats = match (applied, produced) {
        (Ok(stats), Ok(p)) => (stats, p),
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e),
    };
    let (stats, p) = stats;
    if let Some(expected) = expected_digest {
        verify("compressed", expected, &p.digest)?;
    }
    if let Some(expected) = expected_diff_id {
        verify("uncompressed", expected, &p.diff_id)?;
    }
    Ok(AppliedLayer {
        stats,
        compression: p.compression,
        digest: p.digest,
        size: p.size,
        diff_id: p.diff_id,
        uncompressed_size: p.uncompressed_size,
    })
}

const CHUNK: usize = 256 << 10;
const CHUNKS_IN_FLIGHT: usize = 8;

struct Produced {
    compression: Compression,
    digest: Digest,
    size: u64,
    diff_id: Digest,
    uncompressed_size: u64,
}

/// Reads, decompresses and hashes the blob, sending the tar bytes on `tx`.
/// Stops early (without error) when the receiving side is gone.
fn produce(blob: impl Read, tx: mpsc::SyncSender<io::Result<Vec<u8>>>) -> Result<Produced> {
    let corrupt = |context: &str, e: io::Error| Error::Corrupt {
        context: context.into(),
        source: e,
    };
    let mut outer = DigestReader::new(blob);
    let mut stopped = false;
    let (compression, diff_id, uncompressed_size) = {
        let dec = match DecompressReader::new(&mut outer) {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(corrupt("reading its compression header", e));
            }
        };
        let compression = dec.compression();
        let mut inner = DigestReader::new(dec);
        loop {
            let mut buf = vec![0u8; CHUNK];
            match read_full(&mut inner, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        stopped = true; // the applier failed: its error is the one reported
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(corrupt("while decompressing", e));
                }
            }
        }
        (compression, inner.digest(), inner.count())
    };
    drop(tx);
    if !stopped {
        // Bytes after the compressed stream (if any) still belong to the blob.
        io::copy(&mut outer, &mut io::sink())
            .map_err(|e| corrupt("after the compressed stream", e))?;
    }
    Ok(Produced {
        compression,
        digest: outer.digest(),
        size: outer.count(),
        diff_id,
        uncompressed_size,
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The receiving end of the producer's chunks, as a reader.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> ChannelReader {
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // producer done
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What [`write_layer`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenLayer {
    pub stats: DiffStats,
    pub compression: Compression,
    /// sha256 and size of the bytes written to `out`.
    pub digest: Digest,
    pub size: u64,
    /// sha256 and size of the uncompressed tar (the diff ID, containerd's
    /// `containerd.io/uncompressed` label).
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// Runs a tar writer (e.g. `|w| write_diff(lower, upper, w)`) through a
/// compressor into `out`, computing both digests.
pub fn write_layer<W: Write>(
    out: W,
    compression: Compression,
    write: impl FnOnce(&mut dyn Write) -> Result<DiffStats>,
) -> Result<WrittenLayer> {
    let out_err = |e| Error::io("write layer", "<output>", e);
    let outer = DigestWriter::new(out);
    let comp = CompressWriter::new(outer, compression).map_err(out_err)?;
    let mut inner = DigestWriter::new(comp);
    let stats = write(&mut inner)?;
    let diff_id = inner.digest();
    let uncompressed_size = inner.count();
    let mut outer = inner.into_inner().finish().map_err(out_err)?;
    outer.flush().map_err(out_err)?;
    Ok(WrittenLayer {
        stats,
        compression,
        digest: outer.digest(),
        size: outer.count(),
        diff_id,
        uncompressed_size,
    })
}
