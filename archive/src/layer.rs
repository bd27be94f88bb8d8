//! Whole-blob helpers for the diff service: apply a (compressed) layer blob
//! verifying both digests, and write a diff as a compressed layer with both
//! digests computed on the way.

use std::io::{self, Read, Write};
use std::path::Path;

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
pub fn apply_blob(
    blob: impl Read,
    root: &Path,
    opts: &ApplyOptions,
    expected_digest: Option<&Digest>,
    expected_diff_id: Option<&Digest>,
) -> Result<AppliedLayer> {
    let mut outer = DigestReader::new(blob);
    let (stats, compression, diff_id, uncompressed_size) = {
        let dec = DecompressReader::new(&mut outer).map_err(|e| Error::Corrupt {
            context: "reading its compression header".into(),
            source: e,
        })?;
        let compression = dec.compression();
        let mut inner = DigestReader::new(dec);
        let stats = apply_layer(&mut inner, root, opts)?;
        (stats, compression, inner.digest(), inner.count())
    };
    // Bytes after the compressed stream (if any) still belong to the blob.
    io::copy(&mut outer, &mut io::sink()).map_err(|e| Error::Corrupt {
        context: "after the compressed stream".into(),
        source: e,
    })?;
    let digest = outer.digest();
    if let Some(expected) = expected_digest {
        verify("compressed", expected, &digest)?;
    }
    if let Some(expected) = expected_diff_id {
        verify("uncompressed", expected, &diff_id)?;
    }
    Ok(AppliedLayer {
        stats,
        compression,
        digest,
        size: outer.count(),
        diff_id,
        uncompressed_size,
    })
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
