//! A process's stdio: FIFOs (or files) named by the client, bridged to the process through
//! pipes the shim owns, or a pty whose master the runtime hands over a console socket.
//!
//! Output FIFOs are opened read-write, so opening never blocks, a reader that goes away does
//! not kill the copy with EPIPE, and output written before the reader attaches waits in the
//! FIFO. The stdin FIFO is opened read-only and non-blocking; it reads as ready only once a
//! writer has attached, and ends when the writer closes it (or at `CloseIO`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::unix::pipe;
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Where a process's stdio goes, as the client named it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The ends of the pipes the process gets.
pub struct ChildStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// The shim's side of a process's stdio while it runs.
#[derive(Default)]
pub struct ProcessIo {
    close_stdin: Option<oneshot::Sender<()>>,
    /// The pty master, for resizing.
    console: Option<std::sync::Arc<OwnedFd>>,
    /// Output copies; done once the process and everything holding its output ended.
    copies: Vec<JoinHandle<()>>,
}

impl ProcessIo {
    /// Ends stdin: whatever is already in the FIFO is passed on, then the process sees EOF.
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.close_stdin.take() {
            let _ = tx.send(());
        }
    }

    /// Sets the pty's window size.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(console) = &self.console else {
            return Err(Error::precondition("the process has no terminal"));
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(Error::io("resize pty", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits (at most `limit`) until all output has been copied out.
    pub async fn wait_output(&mut self, limit: Duration) {
        let copies = std::mem::take(&mut self.copies);
        let _ = tokio::time::timeout(limit, async {
            for c in copies {
                let _ = c.await;
            }
        })
        .await;
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for c in &self.copies {
            c.abort();
        }
    }
}

/// Stdio prepared before the runtime runs the process.
pub enum Prepared {
    /// Pipes: the child's ends, and the shim's side with the copies already running.
    Pipes { child: ChildStdio, io: ProcessIo },
    /// A pty: the runtime sends the master over `socket_path`.
    Console {
        socket_path: PathBuf,
        listener: UnixListener,
        paths: StdioPaths,
    },
}

impl Prepared {
    /// What the child gets as stdio.
    pub fn take_child_stdio(&mut self) -> ChildStdio {
        match self {
            Prepared::Pipes { child, .. } => std::mem::replace(child, null_stdio()),
            Prepared::Console { .. } => null_stdio(),
        }
    }

    /// The console socket to pass to the runtime, in terminal mode.
    pub fn console_socket(&self) -> Option<&Path> {
        match self {
            Prepared::Pipes { .. } => None,
            Prepared::Console { socket_path, .. } => Some(socket_path),
        }
    }
}

fn null_stdio() -> ChildStdio {
    ChildStdio {
        stdin: Stdio::null(),
        stdout: Stdio::null(),
        stderr: Stdio::null(),
    }
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("create pipe", e.into()))
}

/// A tokio writer to an output path: a FIFO (read-write) or a regular file (append).
async fn open_output(path: &str) -> Result<Box<dyn AsyncWrite + Unpin + Send>> {
    let path = strip_scheme(path)?;
    let is_fifo = std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if is_fifo {
        let w = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(path)
            .map_err(|e| Error::io(format!("open {path}"), e))?;
        Ok(Box::new(w))
    } else {
        let f = tokio::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .await
            .map_err(|e| Error::io(format!("open {path}"), e))?;
        Ok(Box::new(f))
    }
}

fn strip_scheme(path: &str) -> Result<&str> {
    if let Some(p) = path.strip_prefix("fifo://") {
        return Ok(p);
    }
    if let Some(p) = path.strip_prefix("file://") {
        return Ok(p);
    }
    if path.contains("://") {
        return Err(Error::invalid(format!("unsupported stdio URI {path}")));
    }
    Ok(path)
}

/// Opens the stdin FIFO for reading without waiting for a writer.
fn open_input(path: &str) -> Result<pipe::Receiver> {
    let path = strip_scheme(path)?;
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| Error::io(format!("open {path}"), e))
}

/// Copies `r` to `w` until EOF, then closes `w`.
async fn copy_out<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut r: R, mut w: W) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Copies stdin until EOF or until `close` fires; then passes on what is already buffered.
async fn copy_in<W: AsyncWrite + Unpin>(
    mut r: pipe::Receiver,
    mut w: W,
    mut close: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if w.write_all(&buf[..n]).await.is_err() { return },
            },
            _ = &mut close => {
                while let Ok(n) = r.try_read(&mut buf) {
                    if n == 0 || w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    let _ = w.shutdown().await;
}

/// Prepares stdio for a process: pipes bridged to the client's FIFOs, or a console socket.
/// `console_dir` is where console sockets are created.
pub async fn prepare(paths: &StdioPaths, console_dir: &Path) -> Result<Prepared> {
    if paths.terminal {
        std::fs::create_dir_all(console_dir)
            .map_err(|e| Error::io(format!("create {}", console_dir.display()), e))?;
        let socket_path = console_dir.join(format!(
            "pty-{}-{}.sock",
            std::process::id(),
            next_counter()
        ));
        let _ = std::fs::remove_file(&socket_path);
        let listener = UnixListener::bind(&socket_path)
            .map_err(|e| Error::io(format!("bind {}", socket_path.display()), e))?;
        return Ok(Prepared::Console {
            socket_path,
            listener,
            paths: paths.clone(),
        });
    }
    let mut io = ProcessIo::default();
    let mut child = null_stdio();
    if !paths.stdin.is_empty() {
        let fifo = open_input(&paths.stdin)?;
        let (r, w) = pipe_pair()?;
        let w = pipe::Sender::from_owned_fd(w).map_err(|e| Error::io("stdin pipe", e))?;
        let (tx, rx) = oneshot::channel();
        io.close_stdin = Some(tx);
        // Not tracked in `copies`: stdin may stay open forever.
        tokio::spawn(copy_in(fifo, w, rx));
        child.stdin = Stdio::from(r);
    }
    for (path, slot) in [
        (&paths.stdout, &mut child.stdout),
        (&paths.stderr, &mut child.stderr),
    ] {
        if path.is_empty() {
            continue;
        }
        let out = open_output(path).await?;
        let (r, w) = pipe_pair()?;
        let r = pipe::Receiver::from_owned_fd(r).map_err(|e| Error::io("output pipe", e))?;
        io.copies.push(tokio::spawn(copy_out(r, out)));
        *slot = Stdio::from(w);
    }
    Ok(Prepared::Pipes { child, io })
}

fn next_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Receives the pty master from the runtime over the console socket.
pub async fn receive_console(listener: &UnixListener) -> Result<OwnedFd> {
    let (stream, _) = listener
        .accept()
        .await
        .map_err(|e| Error::io("accept on console socket", e))?;
    loop {
        stream
            .readable()
            .await
            .map_err(|e| Error::io("console socket", e))?;
        let res = stream.try_io(tokio::io::Interest::READABLE, || {
            recv_fd(stream.as_raw_fd()).map_err(io::Error::from)
        });
        match res {
            Ok(Some(fd)) => return Ok(fd),
            Ok(None) => return Err(Error::internal("console socket closed without a pty")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Error::io("receive pty master", e)),
        }
    }
}

fn recv_fd(sock: i32) -> nix::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut owned = fds
                .into_iter()
                // SAFETY: the kernel just installed these descriptors for us.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            if let Some(first) = owned.next() {
                return Ok(Some(first));
            }
        }
    }
    if msg.bytes == 0 {
        return Ok(None);
    }
    Err(nix::Error::EBADMSG)
}

/// Starts copying between a received pty master and the client's stdio.
pub async fn start_console(master: OwnedFd, paths: &StdioPaths) -> Result<ProcessIo> {
    set_nonblocking(&master)?;
    let master = std::sync::Arc::new(master);
    let mut io = ProcessIo::default();
    io.console = Some(master.clone());
    if !paths.stdout.is_empty() {
        let out = open_output(&paths.stdout).await?;
        let reader = FdIo::new(dup(&master)?)?;
        io.copies.push(tokio::spawn(copy_out(reader, out)));
    }
    if !paths.stdin.is_empty() {
        let fifo = open_input(&paths.stdin)?;
        let writer = FdIo::new(dup(&master)?)?;
        let (tx, rx) = oneshot::channel();
        io.close_stdin = Some(tx);
        tokio::spawn(copy_in(fifo, writer, rx));
    }
    Ok(io)
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().map_err(|e| Error::io("dup pty master", e))
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Async reads and writes on a non-blocking descriptor (the pty master). EIO on read, which
/// a pty master returns once the last slave closed, reads as EOF.
struct FdIo(AsyncFd<OwnedFd>);

impl FdIo {
    fn new(fd: OwnedFd) -> Result<FdIo> {
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open, unchanged, as long as it.
        let afd =
            unsafe { AsyncFd::register(fd) }.map_err(|e| Error::io("register pty", e.into()))?;
        Ok(FdIo(afd))
    }
}

impl AsyncRead for FdIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
