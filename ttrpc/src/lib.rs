//! A small ttrpc codec, server and client over the project's prost.
//!
//! ttrpc is containerd's RPC protocol for shims: protobuf messages over a unix socket, framed
//! by a 10-byte header (`u32` BE payload length, `u32` BE stream id, `u8` message type, `u8`
//! flags). A request frame carries a [`Request`] (service, method, encoded payload, timeout,
//! metadata); the response frame on the same stream id carries a [`Response`] (a
//! `google.rpc.Status` when the call failed, else the encoded reply). Clients use odd stream
//! ids counting up by two; requests on one connection may be answered out of order.
//!
//! Only unary calls exist here (all that containerd's task and event APIs use).

mod client;
mod server;

pub use client::{Client, EventsClient, TaskClient};
pub use server::{decode, encode, BoxFuture, RequestContext, Server, Service};

use std::fmt;
use std::io;

use berth_errdefs::ErrorKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `google.rpc.Status`: the error of a failed call.
pub use berth_proto::google::rpc::Status;

/// Length of the frame header.
pub const HEADER_LEN: usize = 10;
/// Largest payload accepted or sent (containerd's ttrpc limit).
pub const MAX_MESSAGE_LEN: usize = 4 << 20;
/// Frame type of a request.
pub const MESSAGE_TYPE_REQUEST: u8 = 1;
/// Frame type of a response.
pub const MESSAGE_TYPE_RESPONSE: u8 = 2;

/// `ttrpc.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

/// `ttrpc.Response`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// `ttrpc.KeyValue`: one metadata entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// gRPC status codes (the ones ttrpc peers use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    /// The code of a wire value; unknown values are [`Code::Unknown`].
    pub fn from_i32(v: i32) -> Code {
        use Code::*;
        [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
        ]
        .into_iter()
        .find(|c| *c as i32 == v)
        .unwrap_or(Unknown)
    }

    /// The code containerd uses for an error class (`errdefs.ToGRPC`).
    pub fn from_kind(kind: ErrorKind) -> Code {
        match kind {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::NotImplemented => Code::Unimplemented,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::Internal => Code::Unknown,
        }
    }

    /// The error class of a code (`errdefs.FromGRPC`).
    pub fn kind(self) -> ErrorKind {
        match self {
            Code::InvalidArgument => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::OutOfRange => ErrorKind::OutOfRange,
            Code::Unimplemented => ErrorKind::NotImplemented,
            Code::Aborted | Code::Cancelled | Code::DeadlineExceeded => ErrorKind::Aborted,
            _ => ErrorKind::Internal,
        }
    }
}

/// A status with `code` and `message`.
pub fn status(code: Code, message: impl Into<String>) -> Status {
    Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// Errors of ttrpc calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("ttrpc: {0}")]
    Io(#[from] io::Error),
    /// The connection closed before the response came.
    #[error("ttrpc: connection closed")]
    Closed,
    /// The call did not complete within its timeout.
    #[error("ttrpc: deadline exceeded")]
    Timeout,
    /// A message could not be decoded.
    #[error("ttrpc: decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A message is over [`MAX_MESSAGE_LEN`].
    #[error("ttrpc: message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The server answered with an error status.
    #[error("{}", StatusDisplay(.0))]
    Status(Status),
}

struct StatusDisplay<'a>(&'a Status);

impl fmt::Display for StatusDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = Code::from_i32(self.0.code);
        write!(f, "{}: {}", code.kind(), self.0.message)
    }
}

impl Error {
    /// The gRPC code of the error: the server's, or the one that fits a transport failure.
    pub fn code(&self) -> Code {
        match self {
            Error::Status(s) => Code::from_i32(s.code),
            Error::Io(_) | Error::Closed => Code::Unavailable,
            Error::Timeout => Code::DeadlineExceeded,
            Error::Decode(_) => Code::Internal,
            Error::TooLarge(_) => Code::ResourceExhausted,
        }
    }
}

impl berth_errdefs::Classify for Error {
    fn kind(&self) -> ErrorKind {
        self.code().kind()
    }
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub stream_id: u32,
    pub message_type: u8,
    pub flags: u8,
}

impl FrameHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.length.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8] = self.message_type;
        b[9] = self.flags;
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            length: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            message_type: b[8],
            flags: b[9],
        }
    }
}

/// A frame whose payload was too large and has been skipped.
#[derive(Debug)]
pub(crate) enum Frame {
    Message(FrameHeader, Vec<u8>),
    Oversized(FrameHeader),
}

/// Reads one frame; `None` at a clean end of stream between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut h = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = r.read(&mut h[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    let header = FrameHeader::decode(&h);
    let len = header.length as usize;
    if len > MAX_MESSAGE_LEN {
        let mut rest = (&mut *r).take(len as u64);
        tokio::io::copy(&mut rest, &mut tokio::io::sink()).await?;
        return Ok(Some(Frame::Oversized(header)));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame::Message(header, payload)))
}

/// Writes one frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    stream_id: u32,
    message_type: u8,
    payload: &[u8],
) -> io::Result<()> {
    let header = FrameHeader {
        length: payload.len() as u32,
        stream_id,
        message_type,
        flags: 0,
    };
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&header.encode());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await
}

/// The filesystem path (or `\0`-prefixed abstract name) of a ttrpc address: `unix:///path`,
/// `/path`, or (containerd's convention for addresses without a scheme) an abstract name.
pub fn socket_path(address: &str) -> String {
    if let Some(p) = address.strip_prefix("unix://") {
        p.to_string()
    } else if address.starts_with('/') {
        address.to_string()
    } else if let Some(p) = address.strip_prefix('@') {
        format!("\0{p}")
    } else {
        format!("\0{address}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = FrameHeader {
            length: 0x01020304,
            stream_id: 7,
            message_type: MESSAGE_TYPE_RESPONSE,
            flags: 0,
        };
        let b = h.encode();
        assert_eq!(b, [1, 2, 3, 4, 0, 0, 0, 7, 2, 0]);
        assert_eq!(FrameHeader::decode(&b), h);
    }

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(Code::from_i32(5), Code::NotFound);
        assert_eq!(Code::from_i32(99), Code::Unknown);
        assert_eq!(
            Code::from_kind(ErrorKind::NotFound).kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(socket_path("unix:///run/x"), "/run/x");
        assert_eq!(socket_path("/run/x"), "/run/x");
        assert_eq!(socket_path("@abc"), "\0abc");
    }
}
