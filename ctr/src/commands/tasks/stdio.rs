//! A task's stdio as ctr does it: FIFOs in a fresh directory whose paths go to the daemon (the
//! shim opens the other ends), copied to and from this process's stdin/stdout/stderr on
//! threads; and the local terminal in raw mode for `-t`.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

/// Where FIFOs go (ctr: `/run/containerd/fifo`); the temp directory if that is not writable.
pub const FIFO_ROOT: &str = "/run/berth/fifo";

/// The stdio paths of a process: FIFOs (created by us or by whoever started the task), or
/// empty for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// FIFOs this command created, in a directory of their own.
#[derive(Debug)]
pub struct Fifos {
    pub paths: Paths,
    dir: PathBuf,
}

fn mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o700) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new directory `<root>/<id>-<random>`, mode 0700.
pub fn unique_dir(root: &Path, id: &str) -> io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        ^ u128::from(std::process::id()) << 64;
    for n in 0u128..100 {
        let dir = root.join(format!(
            "{id}-{:x}",
            (seed.wrapping_add(n)) & 0xffff_ffff_ffff
        ));
        match std::fs::DirBuilder::new().create(&dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(io::ErrorKind::AlreadyExists))
}

impl Fifos {
    /// New FIFOs `<id>-stdin`, `<id>-stdout` and (without a terminal) `<id>-stderr`.
    pub fn create(id: &str, terminal: bool) -> anyhow::Result<Fifos> {
        let dir = unique_dir(Path::new(FIFO_ROOT), id)
            .or_else(|_| unique_dir(&std::env::temp_dir().join("berth-fifo"), id))
            .context("creating a directory for the stdio FIFOs")?;
        let path = |name: &str| dir.join(format!("{id}-{name}"));
        let mut paths = Paths {
            terminal,
            ..Paths::default()
        };
        let mut names = vec![("stdin", &mut paths.stdin), ("stdout", &mut paths.stdout)];
        if !terminal {
            names.push(("stderr", &mut paths.stderr));
        }
        for (name, slot) in names {
            let p = path(name);
            if let Err(e) = mkfifo(&p) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("mkfifo {}", p.display()));
            }
            *slot = p.to_string_lossy().into_owned();
        }
        Ok(Fifos { paths, dir })
    }

    /// Removes the FIFOs' directory.
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directory of FIFOs that `berth` created for a (detached) task, given the
/// task's stdio paths; paths elsewhere are left alone.
pub fn remove_fifo_dir(paths: &[&str]) {
    let roots = [
        PathBuf::from(FIFO_ROOT),
        std::env::temp_dir().join("berth-fifo"),
    ];
    for p in paths.iter().filter(|p| !p.is_empty()) {
        let Some(dir) = Path::new(p).parent() else {
            continue;
        };
        if roots.iter().any(|r| dir.parent() == Some(r.as_path())) {
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
    }
}

/// The copies between a process's FIFOs and our stdio.
pub struct Copies {
    outputs: Vec<JoinHandle<()>>,
    /// Resolves when our stdin reached EOF and the stdin FIFO was closed.
    pub stdin_closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

fn copy_out(fifo: PathBuf, mut to: impl Write) {
    // Blocks until the shim opens the write end; EOF once every writer closed it.
    let Ok(mut from) = File::open(&fifo) else {
        return;
    };
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn copy_in(fifo: PathBuf, done: tokio::sync::oneshot::Sender<()>) {
    // Blocks until the shim opens the read end.
    let Ok(mut to) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&fifo)
    else {
        return;
    };
    let mut from = io::stdin().lock();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    drop(to);
    let _ = done.send(());
}

/// Starts copying: FIFO stdout/stderr to ours, our stdin to the stdin FIFO. Call before the
/// task is created, so that the shim's opens of the FIFOs find their other ends.
pub fn copy(paths: &Paths) -> Copies {
    let mut outputs = Vec::new();
    if !paths.stdout.is_empty() {
        let p = PathBuf::from(&paths.stdout);
        outputs.push(std::thread::spawn(move || copy_out(p, io::stdout())));
    }
    if !paths.stderr.is_empty() && !paths.terminal {
        let p = PathBuf::from(&paths.stderr);
        outputs.push(std::thread::spawn(move || copy_out(p, io::stderr())));
    }
    let mut stdin_closed = None;
    if !paths.stdin.is_empty() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let p = PathBuf::from(&paths.stdin);
        // Never joined: it may sit in a read of our stdin until the process ends.
        std::thread::spawn(move || copy_in(p, tx));
        stdin_closed = Some(rx);
    }
    Copies {
        outputs,
        stdin_closed,
    }
}

impl Copies {
    /// Waits (at most `limit`) for the output copies to reach EOF, i.e. for the shim to have
    /// flushed everything the process wrote.
    pub async fn wait(self, limit: Duration) {
        let outputs = self.outputs;
        let join = tokio::task::spawn_blocking(move || {
            for h in outputs {
                let _ = h.join();
            }
        });
        let _ = tokio::time::timeout(limit, join).await;
    }
}

/// Output FIFO ends held open while a detached process is created and started: a shim that
/// opens its output FIFOs write-only (the stock runc shim does, and keeps a read end of its own
/// from then on) finds a reader. Opened read-write, so opening never blocks.
pub struct Held(#[allow(dead_code)] Vec<File>);

pub fn hold(paths: &Paths) -> Held {
    Held(
        [&paths.stdout, &paths.stderr]
            .into_iter()
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(p)
                    .ok()
            })
            .collect(),
    )
}

/// Unblocks copy threads still waiting in `open` of FIFOs that no shim will open (e.g. after
/// a failed create), by opening the other ends once.
pub fn unblock(paths: &Paths) {
    for p in [&paths.stdout, &paths.stderr] {
        if !p.is_empty() {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(p);
        }
    }
    if !paths.stdin.is_empty() {
        let _ = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&paths.stdin);
    }
}

/// The local terminal in raw mode; restored when dropped.
pub struct RawTerminal {
    fd: libc::c_int,
    saved: libc::termios,
}

fn tty_fd() -> Option<libc::c_int> {
    // SAFETY: isatty only inspects the descriptor.
    [0, 1, 2]
        .into_iter()
        .find(|&fd| unsafe { libc::isatty(fd) } == 1)
}

impl RawTerminal {
    /// Puts our terminal (stdin, else stdout or stderr) in raw mode; `None` if we have none.
    pub fn enter() -> io::Result<Option<RawTerminal>> {
        let Some(fd) = tty_fd() else {
            return Ok(None);
        };
        // SAFETY: termios is plain data; tcgetattr fills it for a valid tty fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct in place; tcsetattr on the same valid fd.
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawTerminal { fd, saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Our terminal's size as (width, height), if we have a terminal.
pub fn terminal_size() -> Option<(u32, u32)> {
    let fd = tty_fd()?;
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it for a tty fd.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != 0 {
        return None;
    }
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((u32::from(ws.ws_col), u32::from(ws.ws_row)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_are_created_and_removed() {
        let f = Fifos::create("t1", false).unwrap();
        for p in [&f.paths.stdin, &f.paths.stdout, &f.paths.stderr] {
            use std::os::unix::fs::FileTypeExt;
            let m = std::fs::metadata(p).unwrap();
            assert!(m.file_type().is_fifo(), "{p}");
            assert!(p.ends_with(&format!("t1-{}", p.rsplit('-').next().unwrap())));
        }
        let dir = Path::new(&f.paths.stdout).parent().unwrap().to_path_buf();
        f.remove();
        assert!(!dir.exists());

        let f = Fifos::create("t2", true).unwrap();
        assert!(f.paths.stderr.is_empty());
        let dir = Path::new(&f.paths.stdout).parent().unwrap().to_path_buf();
        remove_fifo_dir(&[&f.paths.stdin, &f.paths.stdout]);
        assert!(!dir.exists());
    }

    #[test]
    fn foreign_fifo_dirs_are_kept() {
        let d = std::env::temp_dir().join(format!("berth-keep-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("x-stdout");
        remove_fifo_dir(&[p.to_str().unwrap()]);
        assert!(d.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn output_is_copied_until_eof() {
        let f = Fifos::create("t3", true).unwrap();
        let out = PathBuf::from(&f.paths.stdout);
        let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let s = Sink(sink.clone());
        let reader = std::thread::spawn(move || copy_out(out, s));
        // The "shim": open the write end, write, close.
        let mut w = OpenOptions::new()
            .write(true)
            .open(&f.paths.stdout)
            .unwrap();
        w.write_all(b"hello\n").unwrap();
        drop(w);
        reader.join().unwrap();
        assert_eq!(&*sink.lock().unwrap(), b"hello\n");

        // A reader that nobody writes to is released by `unblock`.
        let out = PathBuf::from(&f.paths.stdout);
        let reader = std::thread::spawn(move || copy_out(out, io::sink()));
        // Until the thread is inside its open, there is nothing to release: try again.
        while !reader.is_finished() {
            unblock(&f.paths);
            std::thread::sleep(Duration::from_millis(5));
        }
        reader.join().unwrap();
        f.remove();
    }
}
