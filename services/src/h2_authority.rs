//! Accepts gRPC clients that send a unix socket's path as the HTTP/2 `:authority`.
//!
//! grpc-go (containerd's clients) sends `localhost` over a unix socket, but grpc-core (Python,
//! C++, Ruby…) sends the socket path, percent-encoded since 1.57, and grpc-java the bare path.
//! containerd's Go server ignores the authority; the `h2` crate under tonic refuses any request
//! whose authority is not a valid URI authority (RST_STREAM PROTOCOL_ERROR), so those clients
//! could not make a single call. [`SanitizedAuthority`] sits between the socket and `h2` and
//! rewrites such an authority in the client's header blocks to a valid one.
//!
//! The rewrite keeps the value's length, so the entry the client's HPACK encoder may have added to
//! its dynamic table has the same size in `h2`'s table: both tables evict alike, every index the
//! client sends later still means the same entry, and no other header is touched. Frames other
//! than HEADERS and CONTINUATION (all request bodies) are read straight into `h2`'s buffer and
//! only their 9-byte frame headers are looked at.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 §3.4), passed on unchanged.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer accepts frames of this size (SETTINGS_MAX_FRAME_SIZE's minimum).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// A header block larger than this is refused: `h2` would refuse its decoded list anyway, and the
/// bound keeps a client from growing the buffer without end with CONTINUATION frames.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// HPACK's initial dynamic table size (RFC 7541 §4.2, SETTINGS_HEADER_TABLE_SIZE's default).
const INITIAL_TABLE_SIZE: usize = 4096;

/// A connection whose requests reach `h2` with a valid `:authority`; see the module docs.
pub struct SanitizedAuthority<S> {
    inner: S,
    /// Rewritten frames (and bytes read past them) waiting to be handed to `h2`.
    out: BytesMut,
    /// Bytes read that start a frame header or a header block not yet complete.
    raw: BytesMut,
    /// Bytes of the current frame's payload (or of the preface) still to pass through.
    skip: usize,
    /// The header block being gathered from a HEADERS frame and its CONTINUATIONs.
    block: Option<PendingBlock>,
    table: DynamicTable,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// To h2 as it is.
    PassThrough,
    /// Into the header block being gathered.
    Gather,
    /// A protocol error that closes the connection.
    Refuse,
}

struct PendingBlock {
    stream: u32,
    /// HEADERS' flags other than PADDED and END_HEADERS (END_STREAM, PRIORITY).
    flags: u8,
    /// The 5 priority bytes, when PRIORITY is set.
    priority: Vec<u8>,
    fragment: Vec<u8>,
}

impl<S> SanitizedAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            out: BytesMut::new(),
            raw: BytesMut::new(),
            skip: PREFACE_LEN,
            block: None,
            table: DynamicTable::new(),
        }
    }

    /// What becomes of the next frame, of type `kind`: only a header block's frames are
    /// gathered, and nothing may come between them.
    fn route(&self, kind: u8) -> Route {
        match (kind, &self.block) {
            (TYPE_HEADERS, None) | (TYPE_CONTINUATION, Some(_)) => Route::Gather,
            (_, Some(_)) => Route::Refuse,
            // A CONTINUATION without a block is h2's protocol error to report.
            (_, None) => Route::PassThrough,
        }
    }

    /// How many leading bytes of `data`, read straight into `h2`'s buffer, can stay there: all
    /// of them unless a frame not to pass through (or a frame header cut short) starts among
    /// them.
    fn pass_through_len(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        loop {
            let n = self.skip.min(data.len() - at);
            self.skip -= n;
            at += n;
            let rest = &data[at..];
            if rest.len() < FRAME_HEADER_LEN || self.route(rest[3]) != Route::PassThrough {
                return at;
            }
            self.skip = FRAME_HEADER_LEN + frame_len(rest);
        }
    }

    /// Moves what `raw` holds to `out`, rewriting every complete header block.
    fn process_raw(&mut self) -> io::Result<()> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.raw.len());
                if n == 0 {
                    return Ok(());
                }
                self.out.extend_from_slice(&self.raw[..n]);
                self.raw.advance(n);
                self.skip -= n;
                continue;
            }
            if self.raw.len() < FRAME_HEADER_LEN {
                return Ok(());
            }
            let len = frame_len(&self.raw);
            let (kind, flags) = (self.raw[3], self.raw[4]);
            let stream = u32::from_be_bytes([self.raw[5], self.raw[6], self.raw[7], self.raw[8]])
                & 0x7fff_ffff;
            match self.route(kind) {
                Route::Gather => {}
                Route::Refuse => return Err(protocol_error("frame inside a header block")),
                Route::PassThrough => {
                    self.skip = FRAME_HEADER_LEN + len;
                    continue;
                }
            }
            if len > MAX_HEADER_BLOCK {
                return Err(protocol_error("header frame larger than 1 MiB"));
            }
            if self.raw.len() < FRAME_HEADER_LEN + len {
                return Ok(());
            }
            let payload = self
                .raw
                .split_to(FRAME_HEADER_LEN + len)
                .split_off(FRAME_HEADER_LEN);
            self.gather(kind, flags, stream, &payload)?;
        }
    }

    /// Adds one HEADERS or CONTINUATION frame to the block; at END_HEADERS, writes the block
    /// out again with its authority made valid.
    fn gather(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
        let mut fragment = payload;
        if kind == TYPE_HEADERS {
            let mut priority = Vec::new();
            if flags & FLAG_PADDED != 0 {
                let (&pad, rest) = fragment
                    .split_first()
                    .ok_or_else(|| protocol_error("HEADERS frame too short for its padding"))?;
                let unpadded = rest.len().checked_sub(usize::from(pad));
                let unpadded = unpadded
                    .ok_or_else(|| protocol_error("HEADERS padding longer than the frame"))?;
                fragment = &rest[..unpadded];
            }
            if flags & FLAG_PRIORITY != 0 {
                if fragment.len() < 5 {
                    return Err(protocol_error("HEADERS frame too short for its priority"));
                }
                priority = fragment[..5].to_vec();
                fragment = &fragment[5..];
            }
            self.block = Some(PendingBlock {
                stream,
                flags: flags & !(FLAG_PADDED | FLAG_END_HEADERS),
                priority,
                fragment: Vec::new(),
            });
        }
        let Some(block) = self.block.as_mut() else {
            return Ok(());
        };
        if block.fragment.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(protocol_error("header block larger than 1 MiB"));
        }
        block.fragment.extend_from_slice(fragment);
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let rewritten = self.table.sanitize(&block.fragment)?;
        write_block(&mut self.out, &block, &rewritten);
        Ok(())
    }
}

fn frame_len(header: &[u8]) -> usize {
    usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2])
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2: {what}"))
}

/// Writes `fragment` as a HEADERS frame and as many CONTINUATIONs as it needs.
fn write_block(out: &mut BytesMut, block: &PendingBlock, fragment: &[u8]) {
    let first = MAX_FRAME_PAYLOAD - block.priority.len();
    let (head, mut rest) = fragment.split_at(first.min(fragment.len()));
    let mut flags = block.flags;
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    put_frame_header(
        out,
        block.priority.len() + head.len(),
        TYPE_HEADERS,
        flags,
        block.stream,
    );
    out.extend_from_slice(&block.priority);
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(MAX_FRAME_PAYLOAD.min(rest.len()));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_header(out, piece.len(), TYPE_CONTINUATION, flags, block.stream);
        out.extend_from_slice(piece);
        rest = tail;
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// HPACK's static table names (RFC 7541 Appendix A), for the size of an entry whose name is
/// given by index. Index 1 is `:authority`.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// What this side needs to know of the client's HPACK dynamic table: each entry's size and
/// whether its name is `:authority`, newest first.
struct DynamicTable {
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

#[derive(Clone, Copy)]
struct Entry {
    name_len: usize,
    size: usize,
    authority: bool,
}

impl DynamicTable {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: INITIAL_TABLE_SIZE,
        }
    }

    /// The name of header-table index `index`: its length and whether it is `:authority`.
    fn name(&self, index: usize) -> io::Result<(usize, bool)> {
        match index {
            0 => Err(protocol_error("HPACK index 0")),
            1..=61 => Ok((STATIC_NAMES[index - 1].len(), index == 1)),
            _ => self
                .entries
                .get(index - 62)
                .map(|e| (e.name_len, e.authority))
                .ok_or_else(|| protocol_error("HPACK index past the dynamic table")),
        }
    }

    fn insert(&mut self, entry: Entry) {
        self.size += entry.size;
        self.entries.push_front(entry);
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }

    /// Walks a header block (RFC 7541 §6), tracking the client's table, and returns it with
    /// every invalid `:authority` literal replaced by a valid value of the same length.
    fn sanitize(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len());
        let mut at = 0;
        while at < block.len() {
            let start = at;
            let first = block[at];
            if first & 0x80 != 0 {
                // Indexed field: its entry was sanitised when it was added.
                let index = read_int(block, &mut at, 7)?;
                self.name(index)?;
            } else if first & 0xe0 == 0x20 {
                self.max_size = read_int(block, &mut at, 5)?;
                self.evict();
            } else {
                // Literal, with incremental indexing (01), without (0000) or never (0001).
                let indexing = first & 0xc0 == 0x40;
                let index = read_int(block, &mut at, if indexing { 6 } else { 4 })?;
                let (name_len, authority) = if index == 0 {
                    let name = read_string(block, &mut at)?;
                    (name.len(), name == b":authority")
                } else {
                    self.name(index)?
                };
                let value_start = at;
                let value = read_string(block, &mut at)?;
                if indexing {
                    self.insert(Entry {
                        name_len,
                        size: name_len + value.len() + 32,
                        authority,
                    });
                }
                if authority {
                    if let Some(valid) = replacement_authority(&value) {
                        out.extend_from_slice(&block[start..value_start]);
                        write_raw_string(&mut out, &valid);
                        continue;
                    }
                }
            }
            out.extend_from_slice(&block[start..at]);
        }
        Ok(out)
    }
}

/// A valid authority of `value`'s length to stand for it: the same bytes with everything
/// outside `[A-Za-z0-9.-]` made `-`, so `/run/berth/berthd.sock` becomes
/// `-run-berth-berthd.sock`. `None` when `value` already parses as an authority, or is empty
/// (no value of that length would).
fn replacement_authority(value: &[u8]) -> Option<Vec<u8>> {
    if value.is_empty() || http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    Some(
        value
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b == b'.' {
                    b
                } else {
                    b'-'
                }
            })
            .collect(),
    )
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1), bounded well inside `usize`.
fn read_int(block: &[u8], at: &mut usize, prefix: u8) -> io::Result<usize> {
    let truncated = || protocol_error("HPACK integer cut short");
    let mask = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(*at).ok_or_else(truncated)?) & mask;
    *at += 1;
    if value < mask {
        return Ok(value);
    }
    for shift in (0..28).step_by(7) {
        let byte = *block.get(*at).ok_or_else(truncated)?;
        *at += 1;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(protocol_error("HPACK integer too large"))
}

/// An HPACK string literal (RFC 7541 §5.2), Huffman-decoded when it is coded.
fn read_string(block: &[u8], at: &mut usize) -> io::Result<Vec<u8>> {
    let huffman = block.get(*at).is_some_and(|b| b & 0x80 != 0);
    let len = read_int(block, at, 7)?;
    let bytes = block
        .get(*at..*at + len)
        .ok_or_else(|| protocol_error("HPACK string cut short"))?;
    *at += len;
    if huffman {
        fluke_hpack::huffman::HuffmanDecoder::new()
            .decode(bytes)
            .map_err(|e| protocol_error(&format!("HPACK Huffman code: {e:?}")))
    } else {
        Ok(bytes.to_vec())
    }
}

fn write_raw_string(out: &mut Vec<u8>, value: &[u8]) {
    write_int(out, value.len(), 7, 0);
    out.extend_from_slice(value);
}

fn write_int(out: &mut Vec<u8>, mut value: usize, prefix: u8, high_bits: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(high_bits | value as u8);
        return;
    }
    out.push(high_bits | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl<S: AsyncRead + Unpin> AsyncRead for SanitizedAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            // Nothing fits; an empty read below would look like the end of the stream.
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.raw.is_empty() {
                // Straight into h2's buffer; header frames are taken back out.
                let before = buf.filled().len();
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let got = &buf.filled()[before..];
                if got.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let keep = this.pass_through_len(got);
                if keep == got.len() {
                    return Poll::Ready(Ok(()));
                }
                this.raw.extend_from_slice(&got[keep..]);
                buf.set_filled(before + keep);
                this.process_raw()?;
                if keep > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                // A frame header or header block is incomplete: read the rest here.
                let mut scratch = [0u8; 8192];
                let mut more = ReadBuf::new(&mut scratch);
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut more))?;
                if more.filled().is_empty() {
                    // The client went away mid-frame: h2 sees what there was, then the end.
                    let rest = this.raw.split();
                    this.out.extend_from_slice(&rest);
                    if this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                this.raw.extend_from_slice(more.filled());
                this.process_raw()?;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SanitizedAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for SanitizedAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Literal with incremental indexing, name `:authority` (static index 1), raw value.
    fn indexed_authority(value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x41];
        write_raw_string(&mut out, value);
        out
    }

    #[test]
    fn socket_path_authority_becomes_valid_with_the_same_length() {
        let mut table = DynamicTable::new();
        let mut block = indexed_authority(b"/run/berth/berthd.sock");
        block.push(0x80 | 62); // the entry just added
        let out = table.sanitize(&block).unwrap();
        let mut expected = indexed_authority(b"-run-berth-berthd.sock");
        expected.push(0x80 | 62);
        assert_eq!(out, expected);
        assert_eq!(table.size, ":authority".len() + 22 + 32);
        // The next block's reference to that entry passes unchanged.
        assert_eq!(table.sanitize(&[0x80 | 62]).unwrap(), [0x80 | 62]);
    }

    #[test]
    fn valid_authorities_and_other_headers_pass_unchanged() {
        let mut table = DynamicTable::new();
        let mut block = indexed_authority(b"localhost");
        block.extend_from_slice(&[0x83, 0x86]); // :method POST, :scheme http
                                                // Literal without indexing, literal name "te", value "trailers".
        block.extend_from_slice(&[0x00, 0x02, b't', b'e', 0x08]);
        block.extend_from_slice(b"trailers");
        // RFC 7541 C.4.1: "www.example.com", Huffman-coded, never indexed.
        block.extend_from_slice(&[0x11, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a]);
        block.extend_from_slice(&[0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff]);
        assert_eq!(table.sanitize(&block).unwrap(), block);
    }

    #[test]
    fn huffman_coded_and_percent_encoded_paths_are_rewritten() {
        let mut table = DynamicTable::new();
        // "/a" in HPACK's Huffman code: '/' 011000, 'a' 00011, then EOS-prefix padding.
        let coded = [0x82, 0x60, 0x7f];
        let mut block = vec![0x01]; // without indexing, name :authority
        block.extend_from_slice(&coded);
        assert_eq!(table.sanitize(&block).unwrap(), [0x01, 0x02, b'-', b'a']);
        // grpc-core since 1.57: the path percent-encoded; never indexed.
        let mut block = vec![0x11];
        write_raw_string(&mut block, b"%2Frun%2Fs.sock");
        let mut expected = vec![0x11];
        write_raw_string(&mut expected, b"-2Frun-2Fs.sock");
        assert_eq!(table.sanitize(&block).unwrap(), expected);
        assert_eq!(table.entries.len(), 0);
    }

    #[test]
    fn table_evicts_like_the_clients() {
        let mut table = DynamicTable::new();
        let mut block = vec![0x3f, 0x19]; // size update to 56 (31 + 25)
        block.extend(indexed_authority(b"/x")); // 10 + 2 + 32 = 44: fits
        block.extend(indexed_authority(b"/yy")); // 45: evicts the first
        let out = table.sanitize(&block).unwrap();
        assert_eq!(table.entries.len(), 1);
        assert_eq!(table.size, 45);
        assert!(out.ends_with(b"-yy"));
        assert!(
            table.sanitize(&[0x80 | 63]).is_err(),
            "index past the table"
        );
        assert!(table.sanitize(&[0x80]).is_err(), "index 0");
        assert!(
            table.sanitize(&[0x41, 0x85, b'a']).is_err(),
            "string cut short"
        );
        assert!(table
            .sanitize(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
            .is_err());
    }

    /// Yields its chunks one `poll_read` at a time, as a socket might.
    struct Chunks(VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    async fn read_all(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let chunks = input.chunks(chunk).map(<[u8]>::to_vec).collect();
        let mut conn = SanitizedAuthority::new(Chunks(chunks));
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn frames_pass_through_and_header_blocks_are_rewritten_whatever_the_reads() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let block = indexed_authority(b"/s.sock");
        // HEADERS with padding and priority, the block split over a CONTINUATION.
        let mut headers_payload = vec![3]; // pad length
        headers_payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        headers_payload.extend_from_slice(&block[..4]);
        headers_payload.extend_from_slice(&[0, 0, 0]);
        let headers = frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            1,
            &headers_payload,
        );
        let continuation = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[4..]);
        let data = frame(0x0, 0x1, 1, &[0, 0, 0, 0, 2, 8, 1]);
        let input = [
            preface.clone(),
            settings.clone(),
            headers,
            continuation,
            data.clone(),
        ]
        .concat();

        let mut rewritten = vec![0, 0, 0, 0, 16];
        rewritten.extend(indexed_authority(b"-s.sock"));
        let expected = [
            preface,
            settings,
            frame(
                TYPE_HEADERS,
                FLAG_PRIORITY | FLAG_END_HEADERS,
                1,
                &rewritten,
            ),
            data,
        ]
        .concat();
        for chunk in [1, 2, 5, 9, 10, 24, 33, 1000] {
            assert_eq!(
                read_all(input.clone(), chunk).await,
                expected,
                "reads of {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn large_header_blocks_are_split_into_continuations() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut block = indexed_authority(b"localhost");
        for _ in 0..3000 {
            // Literal without indexing, name "x-a", a 10-byte value: 16 bytes each.
            block.extend_from_slice(&[0x00, 0x03, b'x', b'-', b'a', 0x0a]);
            block.extend_from_slice(b"0123456789");
        }
        // In: frames of 10,000 bytes; out: of the 16 KiB every peer accepts.
        let mut input = preface.clone();
        input.extend(header_frames(&block, 10_000, 3));
        let out = read_all(input, 4096).await;
        let mut expected = preface;
        expected.extend(header_frames(&block, MAX_FRAME_PAYLOAD, 3));
        assert_eq!(out.len(), expected.len());
        assert!(out == expected);
    }

    /// `block` as a HEADERS frame and CONTINUATIONs of `size` bytes at most.
    fn header_frames(block: &[u8], size: usize, stream: u32) -> Vec<u8> {
        let pieces: Vec<&[u8]> = block.chunks(size).collect();
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let kind = if i == 0 {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            let flags = if i + 1 == pieces.len() {
                FLAG_END_HEADERS
            } else {
                0
            };
            out.extend(frame(kind, flags, stream, piece));
        }
        out
    }
    #[tokio::test]
    async fn malformed_header_frames_close_the_connection() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for bad in [
            frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[9, 0x82]),
            frame(TYPE_HEADERS, FLAG_PRIORITY | FLAG_END_HEADERS, 1, &[0, 0]),
            [frame(TYPE_HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, b"x")].concat(),
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70]),
        ] {
            let input = [preface.clone(), bad].concat();
            let mut conn = SanitizedAuthority::new(Chunks(VecDeque::from([input])));
            let err = conn.read_to_end(&mut Vec::new()).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        }
    }
}
