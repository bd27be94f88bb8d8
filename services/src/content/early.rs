//! Hashing Content.Write data while it is still arriving.
//!
//! Clients wait for each WRITE's reply, which carries the digest of everything so far, before
//! they send the next message; hashing a whole message after it arrived would put sha256 on
//! that round trip. [`EarlyDataLayer`] copies (by reference) every body chunk of a
//! Content.Write call to an [`EarlyHasher`] thread that splits the raw stream into gRPC
//! messages and hashes their `data` field (field 6 of `WriteContentRequest`) frame by frame,
//! from the ingest's hash state the session hands it before each message.
//!
//! The session's step for each message runs on the same thread, right after the message's
//! hash ([`EarlyHasher::run`]), so the hash is there when the step needs it, without a
//! thread waking for it on every round trip (the step sends its reply from there too).
//! Meanwhile the message's data is already being copied into the ingest: the session hands
//! an append to the writer's landing as soon as the message is decoded. The reply carries
//! the digest so far (as containerd's does). Anything else (a truncation, a compressed
//! message, a parse surprise, a slow thread) falls back to hashing in the step.

use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

use berth_content::HashState;
use bytes::Bytes;
use http_body::{Body, Frame};
use tower::{Layer, Service};

/// The method whose request bodies are teed.
const WRITE_PATH: &str = "/containerd.services.content.v1.Content/Write";
/// `WriteContentRequest.data`.
const DATA_FIELD: u64 = 6;
/// How long a step waits for the thread's verdict on a message whose bytes all arrived.
const RESULT_WAIT: Duration = Duration::from_secs(5);

/// The receiving end of a Content.Write body's chunks, left in the request's extensions
/// (which want `Clone + Sync`: the first to take it has it).
#[derive(Clone)]
pub struct EarlyData(Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>);

#[derive(Clone, Copy, Default)]
pub struct EarlyDataLayer;

impl<S> Layer<S> for EarlyDataLayer {
    type Service = EarlyDataService<S>;
    fn layer(&self, inner: S) -> EarlyDataService<S> {
        EarlyDataService(inner)
    }
}

#[derive(Clone)]
pub struct EarlyDataService<S>(S);

impl<S> Service<http::Request<tonic::body::Body>> for EarlyDataService<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != WRITE_PATH {
            return self.0.call(req);
        }
        let (tx, rx) = mpsc::channel();
        let (mut parts, body) = req.into_parts();
        parts
            .extensions
            .insert(EarlyData(Arc::new(Mutex::new(Some(rx)))));
        let body = tonic::body::Body::new(TeeBody { inner: body, tx });
        self.0.call(http::Request::from_parts(parts, body))
    }
}

/// Passes the body through, sending each data chunk to the hasher too.
struct TeeBody {
    inner: tonic::body::Body,
    tx: mpsc::Sender<Bytes>,
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                // A hasher that is gone only means no early hashing.
                let _ = self.tx.send(data.clone());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The session's side of the hashing thread: per message, in stream order, one start in, one
/// result out, and one step run.
pub struct EarlyHasher {
    starts: mpsc::Sender<Start>,
    results: Mutex<mpsc::Receiver<Option<Hashed>>>,
    steps: mpsc::Sender<Step>,
}

/// A session's step, run on the hashing thread after its message's hash.
type Step = Box<dyn FnOnce() + Send>;

/// Where the hash of a message's data starts: the ingest's state before it (`None`: the
/// message's result is of no use).
pub type Start = Option<HashState>;

/// A message's `data` hashed onto the start state it was given.
pub struct Hashed {
    pub state: HashState,
    pub len: u64,
}

impl EarlyHasher {
    /// Starts the thread on the chunks of `data`; the first message gets no start state
    /// (the ingest is not open yet).
    pub fn start(data: EarlyData) -> Option<Arc<EarlyHasher>> {
        let chunks = data.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        let (starts, starts_rx) = mpsc::channel();
        let (results_tx, results) = mpsc::channel();
        let (steps, steps_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("content-hash".into())
            .spawn(move || hash_messages(Feed::new(chunks), starts_rx, results_tx, steps_rx))
            .ok()?;
        let me = EarlyHasher {
            starts,
            results: Mutex::new(results),
            steps,
        };
        me.next_start(None);
        Some(Arc::new(me))
    }

    /// Where the next message's hash starts.
    pub fn next_start(&self, start: Start) {
        let _ = self.starts.send(start);
    }

    /// Runs `step`, the session's step for the oldest message not stepped yet (all of whose
    /// bytes have arrived), on the hashing thread once that message is hashed (on the
    /// blocking pool if the thread is gone); its result comes back through the receiver.
    pub fn run<T: Send + 'static>(
        &self,
        step: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let job: Step = Box::new(move || {
            let _ = tx.send(step());
        });
        if let Err(mpsc::SendError(job)) = self.steps.send(job) {
            tokio::task::spawn_blocking(job);
        }
        rx
    }

    /// The result for the oldest message not taken yet (all of whose bytes have arrived).
    /// `Err` when the thread is gone or late: stop using it.
    pub fn take(&self) -> Result<Option<Hashed>, ()> {
        let results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        results.recv_timeout(RESULT_WAIT).map_err(drop)
    }
}

/// Blocking reads over the chunks of the request body.
struct Feed {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Feed {
    fn new(rx: mpsc::Receiver<Bytes>) -> Feed {
        Feed {
            rx,
            cur: Bytes::new(),
        }
    }

    /// The next non-empty chunk of at most `max` bytes; `None` at the end of the body.
    fn chunk(&mut self, max: u64) -> Option<Bytes> {
        while self.cur.is_empty() {
            self.cur = self.rx.recv().ok()?;
        }
        let n = usize::try_from(max).map_or(self.cur.len(), |m| m.min(self.cur.len()));
        Some(self.cur.split_to(n))
    }

    fn byte(&mut self) -> Option<u8> {
        self.chunk(1).map(|b| b[0])
    }

    /// Passes `n` bytes to `f` as they come.
    fn stream(&mut self, mut n: u64, mut f: impl FnMut(&[u8])) -> Option<()> {
        while n > 0 {
            let c = self.chunk(n)?;
            f(&c);
            n -= c.len() as u64;
        }
        Some(())
    }
}

/// The thread: per gRPC message, wait for its start, hash its `data` field, then run the
/// session's step for it (which gives the next start). Every message the session reads gets
/// a step, and its bytes all arrived before, so the thread never waits for a step while a
/// message is still coming, nor for bytes while a step is due.
fn hash_messages(
    mut feed: Feed,
    starts: mpsc::Receiver<Start>,
    results: mpsc::Sender<Option<Hashed>>,
    steps: mpsc::Receiver<Step>,
) {
    while let Ok(start) = starts.recv() {
        let mut header = [0u8; 5];
        for b in &mut header {
            match feed.byte() {
                Some(v) => *b = v,
                None => return,
            }
        }
        let len = u64::from(u32::from_be_bytes([
            header[1], header[2], header[3], header[4],
        ]));
        let result = if header[0] != 0 {
            // Compressed: the step hashes the decompressed data.
            feed.stream(len, |_| {}).map(|()| None)
        } else {
            hash_message(&mut feed, len, start)
        };
        let Some(result) = result else {
            return;
        };
        if results.send(result).is_err() {
            return;
        }
        match steps.recv() {
            Ok(step) => step(),
            Err(_) => return,
        }
    }
}

/// Walks one protobuf message of `len` bytes, hashing field 6 onto `start`: its result,
/// `None` when the message gives no usable one. `None` at the end of the body.
fn hash_message(feed: &mut Feed, len: u64, start: Start) -> Option<Option<Hashed>> {
    let mut left = len;
    let mut state = start;
    let mut data_len: Option<u64> = None;
    let mut usable = true;
    while left > 0 {
        let Some(key) = varint(feed, &mut left)? else {
            usable = false;
            break;
        };
        let skip = match key & 7 {
            0 => match varint(feed, &mut left)? {
                Some(_) => 0,
                None => {
                    usable = false;
                    break;
                }
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some(n) = varint(feed, &mut left)? else {
                    usable = false;
                    break;
                };
                if n > left {
                    usable = false;
                    break;
                }
                if key >> 3 == DATA_FIELD {
                    if data_len.is_some() {
                        // Repeated: the last one wins; leave it to the step.
                        usable = false;
                    }
                    data_len = Some(n);
                    feed.stream(n, |c| {
                        if let Some(s) = state.as_mut() {
                            s.update(c);
                        }
                    })?;
                    left -= n;
                    0
                } else {
                    n
                }
            }
            _ => {
                usable = false;
                break;
            }
        };
        if skip > left {
            usable = false;
            break;
        }
        feed.stream(skip, |_| {})?;
        left -= skip;
    }
    // Whatever is left of a message we could not follow.
    feed.stream(left, |_| {})?;
    Some(match (state.filter(|_| usable), data_len) {
        (Some(state), Some(len)) => Some(Hashed { state, len }),
        _ => None,
    })
}

/// A varint within the message's `left` bytes: `None` at the end of the body, `Some(None)`
/// when malformed.
fn varint(feed: &mut Feed, left: &mut u64) -> Option<Option<u64>> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if *left == 0 {
            return Some(None);
        }
        let b = feed.byte()?;
        *left -= 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(Some(v));
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_content::HashState;
    use berth_proto::containerd::services::content::v1::{WriteAction, WriteContentRequest};
    use prost::Message as _;

    fn grpc_frame(msg: &WriteContentRequest, compressed: bool) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = vec![u8::from(compressed)];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Feeds `stream` to the thread in chunks of `chunk` bytes; returns each message's
    /// (digest of start + data, data length) or None. Every message after the first starts
    /// from the empty state.
    fn run(stream: &[u8], chunk: usize, messages: usize) -> Vec<Option<(String, u64)>> {
        run_with(stream, chunk, messages, |_| Some(HashState::default()))
    }

    /// As [`run`], with message `i` (from 1) starting at `start(i)`. As in a session, each
    /// message's step runs on the thread and takes the message's result there (at once: the
    /// hash is done before the step runs) and gives the next start.
    fn run_with(
        stream: &[u8],
        chunk: usize,
        messages: usize,
        start: impl Fn(usize) -> Start + Send + Sync + 'static,
    ) -> Vec<Option<(String, u64)>> {
        let (tx, rx) = mpsc::channel();
        for c in stream.chunks(chunk) {
            tx.send(Bytes::copy_from_slice(c)).unwrap();
        }
        drop(tx);
        let hasher = EarlyHasher::start(EarlyData(Arc::new(Mutex::new(Some(rx))))).unwrap();
        let start = Arc::new(start);
        let mut out = Vec::new();
        for i in 0..messages {
            let (h, start) = (hasher.clone(), start.clone());
            let step = hasher.run(move || {
                let waited = std::time::Instant::now();
                let r = h.take().expect("result");
                assert!(
                    waited.elapsed() < Duration::from_millis(100),
                    "step waited for its hash"
                );
                if i + 1 < messages {
                    h.next_start(start(i + 1));
                }
                r.map(|h| (h.state.digest().to_string(), h.len))
            });
            out.push(step.blocking_recv().expect("step ran"));
        }
        out
    }

    fn sha(data: &[u8]) -> String {
        berth_content::Digest::of_bytes(data).to_string()
    }

    #[test]
    fn hashes_the_data_field_of_each_message_at_any_chunking() {
        let a: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let b = b"second".to_vec();
        let msgs = [
            WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: "r".into(),
                ..Default::default()
            },
            WriteContentRequest {
                action: WriteAction::Write as i32,
                offset: 0,
                data: a.clone().into(),
                ..Default::default()
            },
            WriteContentRequest {
                action: WriteAction::Commit as i32,
                total: 70_006,
                expected: "sha256:00".into(),
                offset: 70_000,
                data: b.clone().into(),
                labels: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            },
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(grpc_frame(m, false));
        }
        for chunk in [1, 7, 4096, 65_536, stream.len()] {
            let got = run(&stream, chunk, 3);
            // The first message has no start state.
            assert!(got[0].is_none(), "chunk {chunk}");
            assert_eq!(got[1], Some((sha(&a), a.len() as u64)), "chunk {chunk}");
            assert_eq!(got[2], Some((sha(&b), b.len() as u64)), "chunk {chunk}");
        }
    }

    #[test]
    fn each_message_hashes_from_the_state_it_is_given() {
        let (a, b) = (vec![1u8; 100_000], b"tail".to_vec());
        let msgs = [
            WriteContentRequest {
                action: WriteAction::Write as i32,
                data: a.clone().into(),
                ..Default::default()
            },
            WriteContentRequest {
                action: WriteAction::Stat as i32,
                ..Default::default()
            },
            WriteContentRequest {
                action: WriteAction::Write as i32,
                offset: a.len() as i64,
                data: b.clone().into(),
                ..Default::default()
            },
        ];
        let mut stream = Vec::new();
        // A message before them all, which has no start state.
        stream.extend(grpc_frame(&msgs[1], false));
        for m in &msgs {
            stream.extend(grpc_frame(m, false));
        }
        let mut after_a = HashState::default();
        after_a.update(&a);
        for chunk in [3, 65_536] {
            let after_a = after_a.clone();
            let got = run_with(&stream, chunk, 4, move |i| match i {
                1 => Some(HashState::default()),
                _ => Some(after_a.clone()),
            });
            assert_eq!(got[0], None, "chunk {chunk}");
            assert_eq!(got[1], Some((sha(&a), a.len() as u64)), "chunk {chunk}");
            // No data: nothing to report.
            assert_eq!(got[2], None, "chunk {chunk}");
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            assert_eq!(got[3], Some((sha(&whole), b.len() as u64)), "chunk {chunk}");
        }
    }

    #[test]
    fn compressed_or_malformed_messages_give_no_result_and_keep_sync() {
        let data = b"payload".to_vec();
        let write = WriteContentRequest {
            action: WriteAction::Write as i32,
            data: data.clone().into(),
            ..Default::default()
        };
        let mut stream = grpc_frame(&WriteContentRequest::default(), false);
        stream.extend(grpc_frame(&write, true));
        // A length-delimited field whose length runs past the message.
        stream.extend([0, 0, 0, 0, 3, 0x32, 0x7f, 0x00]);
        stream.extend(grpc_frame(&write, false));
        let got = run(&stream, 3, 4);
        assert!(got[1].is_none());
        assert!(got[2].is_none());
        assert_eq!(got[3], Some((sha(&data), data.len() as u64)));
    }
}
