//! `berth-aufs <source> <mountpoint> -o br=... [-o opts]... [--foreground]`: the FUSE mount
//! helper that `mount.fuse3 -t berth-aufs` runs. It forks before any thread exists; the parent
//! waits on a pipe until the child has mounted (exit 0) or failed (message, exit 1), while the
//! child detaches and serves until the filesystem is unmounted.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use anyhow::Context;
use berth_unionfs::mount::{fork_single_threaded, mount_union};
use berth_unionfs::Options;

const READY: &[u8] = b"ok";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("berth-aufs: {e}");
            return ExitCode::FAILURE;
        }
    };
    for o in &opts.ignored {
        eprintln!("berth-aufs: ignoring unknown option {o:?}");
    }
    // Files and directories are created with exactly the mode the kernel asks for.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    if opts.foreground {
        init_logging(true);
        return match serve(&opts, None) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth-aufs: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match daemonize(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-aufs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr in the foreground; a daemon logs only if BERTH_AUFS_LOG names a file.
fn init_logging(foreground: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_AUFS_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if let Some(path) = std::env::var_os("BERTH_AUFS_LOG") {
        if let Ok(file) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init();
            return;
        }
    }
    if foreground {
        let _ = builder.with_writer(std::io::stderr).try_init();
    }
}

fn daemonize(opts: &Options) -> anyhow::Result<ExitCode> {
    let (read_end, write_end) = nix::unistd::pipe().context("pipe")?;
    match fork_single_threaded().context("fork")? {
        Some(_child) => {
            drop(write_end);
            let mut msg = Vec::new();
            File::from(read_end)
                .read_to_end(&mut msg)
                .context("waiting for the mount")?;
            if msg == READY {
                Ok(ExitCode::SUCCESS)
            } else if msg.is_empty() {
                anyhow::bail!("the filesystem process exited before mounting")
            } else {
                anyhow::bail!("{}", String::from_utf8_lossy(&msg))
            }
        }
        None => {
            drop(read_end);
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            init_logging(false);
            let code = match serve(opts, Some(write_end)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            };
            Ok(code)
        }
    }
}

/// Mounts, reports readiness on `ready` (then detaches stdio), and serves until unmounted.
fn serve(opts: &Options, ready: Option<OwnedFd>) -> anyhow::Result<()> {
    let mounted = match mount_union(opts) {
        Ok(m) => m,
        Err(e) => {
            if let Some(fd) = ready {
                let _ = File::from(fd).write_all(e.to_string().as_bytes());
            }
            return Err(e.into());
        }
    };
    if let Some(fd) = ready {
        detach_stdio().context("redirecting stdio")?;
        File::from(fd)
            .write_all(READY)
            .context("reporting the mount")?;
    }
    mounted.run().context("serving")
}

fn detach_stdio() -> std::io::Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}
