//! berthd: the Berth daemon. Serves containerd's v1 gRPC API on a unix socket.

mod config;
mod containers;
mod content;
mod daemon;
mod diff;
mod error;
mod events;
mod gc;
mod h2_authority;
mod health;
mod images;
mod introspection;
mod leases;
mod namespace;
mod namespaces;
mod oversize;
mod runtime;
mod snapshots;
mod tasks;
mod version;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

const DEFAULT_CONFIG: &str = "/etc/berth/config.toml";

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "Berth container daemon (containerd-compatible API)"
)]
struct Cli {
    /// Path to the TOML configuration file.
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Persistent root directory.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Runtime state directory.
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// Unix socket to serve on.
    #[arg(short, long, global = true)]
    address: Option<PathBuf>,
    /// Log level or tracing filter (trace, debug, info, warn, error).
    #[arg(short, long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration.
    Default,
    /// Print the configuration in effect (file plus flags).
    Dump,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Config {
        command: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{}", Config::default_toml());
        return Ok(());
    }
    let config = effective_config(&cli)?;
    if let Some(Command::Config {
        command: ConfigCommand::Dump,
    }) = cli.command
    {
        print!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }

    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A plain level (the usual case) needs no directive matching: a static level filter
    // keeps EnvFilter's per-callsite machinery out of start-up and out of memory.
    match config.debug.level.parse::<LevelFilter>() {
        Ok(level) => logs.with_max_level(level).init(),
        Err(_) => {
            let filter = EnvFilter::try_new(&config.debug.level)
                .map_err(|e| anyhow::anyhow!("invalid log level {:?}: {e}", config.debug.level))?;
            logs.with_env_filter(filter).init();
        }
    }

    path_with_own_dir();
    let stores = daemon::open_stores(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(config, stores))
}

/// Puts berthd's own directory first on `PATH`: Berth's helper binaries
/// ship next to it, and some are found by name by other programs, e.g.
/// `berth-aufs` by the FUSE mount helper, here and in the shims berthd
/// starts (which inherit the environment). Runs before any thread exists.
fn path_with_own_dir() {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
    else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == dir) {
        return;
    }
    if let Ok(joined) =
        std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path)))
    {
        std::env::set_var("PATH", joined);
    }
}

fn effective_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path, true)?,
        None => Config::load(DEFAULT_CONFIG.as_ref(), false)?,
    };
    // Paths given on the command line may be relative to the caller.
    if let Some(root) = &cli.root {
        config.root = std::path::absolute(root)?;
    }
    if let Some(state) = &cli.state {
        config.state = std::path::absolute(state)?;
    }
    if let Some(address) = &cli.address {
        config.grpc.address = std::path::absolute(address)?;
    }
    if let Some(level) = &cli.log_level {
        config.debug.level = level.clone();
    }
    config.validate()?;
    Ok(config)
}
