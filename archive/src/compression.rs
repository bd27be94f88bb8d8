//! Layer compression: detection by magic bytes (as containerd's
//! `compression.DetectCompression`), media types, and streaming
//! decompression and compression.

use std::io::{self, BufReader, Chain, Cursor, Read, Write};

/// The compressions a layer can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    Uncompressed,
    Gzip,
    Zstd,
}

pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MEDIA_TYPE_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// Detects the compression from the first bytes of a stream (4 are
    /// enough); anything unrecognised is taken as uncompressed.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(head) {
            Compression::Zstd
        } else {
            Compression::Uncompressed
        }
    }

    /// The compression a layer media type declares; `None` when the media
    /// type is not a layer tar (or an unknown compression such as `+bzip2`).
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            MEDIA_TYPE_OCI_LAYER
            | MEDIA_TYPE_DOCKER_LAYER
            | MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER => Some(Compression::Uncompressed),
            MEDIA_TYPE_OCI_LAYER_GZIP
            | MEDIA_TYPE_DOCKER_LAYER_GZIP
            | MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP
            | MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_GZIP => Some(Compression::Gzip),
            MEDIA_TYPE_OCI_LAYER_ZSTD
            | MEDIA_TYPE_DOCKER_LAYER_ZSTD
            | MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Whether the media type is one of the layer media types above.
    pub fn is_layer_media_type(media_type: &str) -> bool {
        Compression::from_media_type(media_type).is_some()
    }

    /// The OCI layer media type with this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::Uncompressed => MEDIA_TYPE_OCI_LAYER,
            Compression::Gzip => MEDIA_TYPE_OCI_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
        }
    }

    /// The Docker schema 2 layer media type with this compression.
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::Uncompressed => MEDIA_TYPE_DOCKER_LAYER,
            Compression::Gzip => MEDIA_TYPE_DOCKER_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_DOCKER_LAYER_ZSTD,
        }
    }

    /// Short name as containerd prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

fn is_zstd_skippable(head: &[u8]) -> bool {
    // Skippable frames: magic 0x184D2A50..=0x184D2A5F, little endian.
    head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]
}

type Peeked<R> = BufReader<Chain<Cursor<Vec<u8>>, R>>;

enum Inner<R: Read> {
    Plain(Peeked<R>),
    Gzip(Box<flate2::bufread::MultiGzDecoder<Peeked<R>>>),
    Zstd(zstd::stream::read::Decoder<'static, Peeked<R>>),
}

/// A streaming reader of the uncompressed bytes of a layer, whatever its
/// compression (detected from its magic bytes).
pub struct DecompressReader<R: Read> {
    inner: Inner<R>,
    compression: Compression,
}

const BUF: usize = 128 << 10;

impl<R: Read> DecompressReader<R> {
    /// Peeks at the first bytes of `reader` and sets up the decompressor.
    pub fn new(mut reader: R) -> io::Result<DecompressReader<R>> {
        let mut head = Vec::with_capacity(4);
        (&mut reader).take(4).read_to_end(&mut head)?;
        let compression = Compression::detect(&head);
        let input = BufReader::with_capacity(BUF, Cursor::new(head).chain(reader));
        let inner = match compression {
            Compression::Uncompressed => Inner::Plain(input),
            Compression::Gzip => Inner::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(input))),
            Compression::Zstd => Inner::Zstd(zstd::stream::read::Decoder::with_buffer(input)?),
        };
        Ok(DecompressReader { inner, compression })
    }

    /// The detected compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The underlying reader (bytes it had buffered are lost).
    pub fn into_inner(self) -> R {
        let peeked = match self.inner {
            Inner::Plain(r) => r,
            Inner::Gzip(r) => (*r).into_inner(),
            Inner::Zstd(r) => r.finish(),
        };
        peeked.into_inner().into_inner().1
    }
}

impl<R: Read> Read for DecompressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(r) => r.read(buf),
            Inner::Gzip(r) => r.read(buf),
            Inner::Zstd(r) => r.read(buf),
        }
    }
}

/// A streaming compressor for writing layers; call [`CompressWriter::finish`]
/// to write the trailer.
pub enum CompressWriter<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> CompressWriter<W> {
    /// A compressor with the default level (gzip 6, zstd 3).
    pub fn new(out: W, compression: Compression) -> io::Result<CompressWriter<W>> {
        Ok(match compression {
            Compression::Uncompressed => CompressWriter::Plain(out),
            Compression::Gzip => CompressWriter::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::Zstd => CompressWriter::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
        })
    }

    /// A compressor with an explicit level (gzip 0-9, zstd 1-22).
    pub fn with_level(
        out: W,
        compression: Compression,
        level: u32,
    ) -> io::Result<CompressWriter<W>> {
        Ok(match compression {
            Compression::Uncompressed => CompressWriter::Plain(out),
            Compression::Gzip => CompressWriter::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(level.min(9)),
            )),
            Compression::Zstd => CompressWriter::Zstd(zstd::stream::write::Encoder::new(
                out,
                i32::try_from(level.min(22)).unwrap_or(3),
            )?),
        })
    }

    /// Finishes the stream and returns the underlying writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            CompressWriter::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            CompressWriter::Gzip(w) => w.finish(),
            CompressWriter::Zstd(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CompressWriter::Plain(w) => w.write(buf),
            CompressWriter::Gzip(w) => w.write(buf),
            CompressWriter::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            CompressWriter::Plain(w) => w.flush(),
            CompressWriter::Gzip(w) => w.flush(),
            CompressWriter::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_and_round_trips() {
        assert_eq!(Compression::detect(b"hello"), Compression::Uncompressed);
        assert_eq!(Compression::detect(&[]), Compression::Uncompressed);
        for c in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zstd,
        ] {
            let mut w = CompressWriter::new(Vec::new(), c).unwrap();
            let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            w.write_all(&data).unwrap();
            let bytes = w.finish().unwrap();
            assert_eq!(Compression::detect(&bytes), c);
            let mut r = DecompressReader::new(&bytes[..]).unwrap();
            assert_eq!(r.compression(), c);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
        assert_eq!(
            Compression::from_media_type(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("application/json"), None);
    }

    #[test]
    fn short_streams() {
        let mut r = DecompressReader::new(&b"ab"[..]).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
    }
}
