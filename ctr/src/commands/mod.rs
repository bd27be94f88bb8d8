//! One module per command group; each has a clap enum (or args struct) and a `run`.
//! Later groups (images, containers, tasks, run) add a variant here and a file.

mod containers;
mod content;
mod events;
mod images;
mod leases;
mod namespaces;
mod plugins;
mod run;
mod snapshots;
mod tasks;
mod version;

use crate::lazy::Lazy;
use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the client and server versions.
    Version,
    /// Manage namespaces.
    #[command(subcommand, visible_alias = "ns", alias = "namespace")]
    Namespaces(Lazy<namespaces::Command>),
    /// Manage content (blobs) in the content store.
    #[command(subcommand)]
    Content(Lazy<content::Command>),
    /// Manage leases (which keep resources from garbage collection).
    #[command(subcommand, alias = "lease")]
    Leases(Lazy<leases::Command>),
    /// Print events as they happen.
    #[command(visible_alias = "event")]
    Events(Lazy<events::Args>),
    /// Inspect the daemon's plugins.
    #[command(subcommand, alias = "plugin")]
    Plugins(Lazy<plugins::Command>),
    /// Manage images: import, export, unpack, list, remove, check, tag, mount.
    #[command(subcommand, visible_alias = "i", alias = "image")]
    Images(Lazy<images::Command>),
    /// Manage snapshots (container filesystems) of a snapshotter.
    #[command(alias = "snapshot")]
    Snapshots(Lazy<snapshots::Args>),
    /// Run a container from an unpacked image: create it, start its task, wait for the exit.
    Run(Lazy<Box<run::Args>>),
    /// Manage containers (metadata records; see `tasks` for what runs).
    #[command(subcommand, visible_alias = "c", alias = "container")]
    Containers(Lazy<containers::Command>),
    /// Manage tasks: the running processes of containers.
    #[command(subcommand, visible_alias = "t", alias = "task")]
    Tasks(Lazy<tasks::Command>),
}

pub async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Version => version::run(g).await,
        Command::Namespaces(Lazy(c)) => namespaces::run(g, c).await,
        Command::Content(Lazy(c)) => content::run(g, c).await,
        Command::Leases(Lazy(c)) => leases::run(g, c).await,
        Command::Events(Lazy(a)) => events::run(g, a).await,
        Command::Plugins(Lazy(c)) => plugins::run(g, c).await,
        Command::Images(Lazy(c)) => images::run(g, c).await,
        Command::Snapshots(Lazy(a)) => snapshots::run(g, a).await,
        Command::Run(Lazy(a)) => run::run(g, *a).await,
        Command::Containers(Lazy(c)) => containers::run(g, c).await,
        Command::Tasks(Lazy(c)) => tasks::run(g, c).await,
    }
}

/// Runs `f` for each argument, printing failures as they happen and going on with the rest;
/// fails (quietly, as all was printed) if any argument failed.
pub async fn for_each<T, F, Fut>(items: Vec<T>, mut f: F) -> anyhow::Result<()>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut failed = false;
    for item in items {
        if let Err(e) = f(item).await {
            if crate::error::is_broken_pipe(&e) {
                return Err(e);
            }
            crate::error::print(&e);
            failed = true;
        }
    }
    if failed {
        Err(crate::error::Reported.into())
    } else {
        Ok(())
    }
}
