//! `berth`: the Berth command-line client, like containerd's `ctr` but friendlier.
//!
//! Architecture invariant: the CLI reaches `berthd` only over the wire (containerd's v1 gRPC
//! API on a unix socket). Each command group lives in `commands/<group>.rs` and stays thin:
//! parse arguments, make calls through [`client::Conn`], print through [`output`].

mod client;
mod commands;
mod error;
mod event_types;
mod ingest;
mod lazy;
mod output;
mod parse;
mod progress;
#[cfg(test)]
mod testing;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::commands::Command;
use crate::output::Format;

/// Global options shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Address of berthd's unix socket.
    #[arg(
        short,
        long,
        global = true,
        env = "BERTH_ADDRESS",
        default_value = "/run/berth/berthd.sock"
    )]
    pub address: PathBuf,

    /// Namespace to work in.
    #[arg(
        short,
        long,
        global = true,
        env = "BERTH_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// How long to wait for the connection to berthd (e.g. 10s, 500ms; 0 waits forever).
    #[arg(long, global = true, default_value = "10s", value_parser = parse::duration)]
    pub timeout: Duration,
}

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Command-line client for berthd (containerd-compatible API)"
)]
struct Cli {
    #[command(flatten)]
    global: Global,

    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::run(&cli.global, cli.command));
    // Don't wait for blocked stdin readers and the like.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => error::report(&e),
    }
}
