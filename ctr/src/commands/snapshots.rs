//! `berth snapshots ls|prepare|view|mounts|commit|rm|info|usage|label|tree`

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use berth_proto::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use berth_proto::containerd::types::Mount;
use serde_json::{json, Value};

use crate::error::CallExt;
use crate::output::{self, Format, Table};
use crate::{client, parse, Global};

/// The label that keeps a snapshot from garbage collection.
pub const GC_ROOT_LABEL: &str = "containerd.io/gc.root";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshotter to use (overlayfs, native, aufs, devmapper). Default: the namespace's
    /// `containerd.io/defaults/snapshotter` label, else overlayfs.
    #[arg(long, global = true, env = "BERTH_SNAPSHOTTER", default_value = "")]
    snapshotter: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List snapshots, optionally matching filters (e.g. 'kind==committed', 'parent==base').
    #[command(visible_alias = "list")]
    Ls {
        /// Print keys only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Create an active (writable) snapshot, on top of a committed parent if given.
    Prepare(CreateArgs),
    /// Create a read-only view of a committed snapshot.
    View(CreateArgs),
    /// Print the mount commands that put a snapshot at TARGET.
    #[command(visible_alias = "mount")]
    Mounts { target: String, key: String },
    /// Commit active snapshot KEY as NAME.
    Commit {
        name: String,
        key: String,
        /// Label to set on the committed snapshot (key=value); repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Lease that holds the committed snapshot (instead of a gc.root label).
        #[arg(long)]
        lease: Option<String>,
    },
    /// Remove snapshots (their space is reclaimed by the next garbage collection).
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Show a snapshot's kind, parent, timestamps and labels.
    Info { key: String },
    /// Show the disk usage of snapshots (all if none given).
    Usage {
        /// Sizes in bytes.
        #[arg(short = 'b', long)]
        bytes: bool,
        keys: Vec<String>,
    },
    /// Set (key=value) or remove (key=) labels of a snapshot.
    Label {
        key: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Draw the snapshots as trees of parent chains.
    Tree,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    key: String,
    parent: Option<String>,
    /// Print the commands that mount the new snapshot at this path.
    #[arg(short, long)]
    target: Option<String>,
    /// Label to set (key=value); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Lease that holds the snapshot (instead of a gc.root label).
    #[arg(long)]
    lease: Option<String>,
}

pub async fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let sn = args.snapshotter;
    match args.command {
        Command::Ls { quiet, filters } => {
            let infos = list(g, &sn, filters).await?;
            if quiet {
                for info in &infos {
                    output::line(&info.name)?;
                }
                return Ok(());
            }
            match g.format {
                Format::Json => output::json(&Value::Array(infos.iter().map(info_json).collect()))?,
                Format::Table => {
                    let mut table = Table::new(&["KEY", "PARENT", "KIND", "AGE", "LABELS"]);
                    for info in &infos {
                        table.row(vec![
                            info.name.clone(),
                            dash(&info.parent),
                            kind_name(info.kind).to_string(),
                            output::age(info.created_at.as_ref()),
                            output::labels(&info.labels),
                        ]);
                    }
                    table.print()?;
                }
            }
            Ok(())
        }
        Command::Prepare(a) => create(g, &sn, a, false).await,
        Command::View(a) => create(g, &sn, a, true).await,
        Command::Mounts { target, key } => {
            let conn = client::connect(g).await?;
            let mounts = conn
                .snapshots()
                .mounts(MountsRequest {
                    snapshotter: sn,
                    key: key.clone(),
                })
                .await
                .ctx(format_args!("snapshots mounts {key}"))?
                .into_inner()
                .mounts;
            print_mounts(g, &target, &mounts)
        }
        Command::Commit {
            name,
            key,
            labels,
            lease,
        } => {
            let labels = gc_labels(&labels, lease.as_deref())?;
            let conn = client::connect(g).await?.with_lease(lease.as_deref())?;
            conn.snapshots()
                .commit(CommitSnapshotRequest {
                    snapshotter: sn,
                    name: name.clone(),
                    key: key.clone(),
                    labels,
                    parent: String::new(),
                })
                .await
                .ctx(format_args!("snapshots commit {name} {key}"))?;
            match g.format {
                Format::Json => output::json(&json!({ "name": name, "key": key }))?,
                Format::Table => output::line(&name)?,
            }
            Ok(())
        }
        Command::Rm { keys } => {
            let conn = client::connect(g).await?;
            super::for_each(keys, |key| {
                let mut client = conn.snapshots();
                let sn = sn.clone();
                async move {
                    client
                        .remove(RemoveSnapshotRequest {
                            snapshotter: sn,
                            key: key.clone(),
                        })
                        .await
                        .ctx(format_args!("snapshots rm {key}"))?;
                    output::line(&key)?;
                    Ok(())
                }
            })
            .await
        }
        Command::Info { key } => {
            let info = stat(g, &sn, &key).await?;
            match g.format {
                Format::Json => output::json(&info_json(&info))?,
                Format::Table => {
                    let mut table = Table::new(&["FIELD", "VALUE"]);
                    table.row(vec!["Key".into(), info.name.clone()]);
                    table.row(vec!["Parent".into(), dash(&info.parent)]);
                    table.row(vec!["Kind".into(), kind_name(info.kind).into()]);
                    table.row(vec![
                        "Created".into(),
                        output::timestamp(info.created_at.as_ref()),
                    ]);
                    table.row(vec![
                        "Updated".into(),
                        output::timestamp(info.updated_at.as_ref()),
                    ]);
                    table.row(vec!["Labels".into(), output::labels(&info.labels)]);
                    table.print()?;
                }
            }
            Ok(())
        }
        Command::Usage { bytes, keys } => usage(g, &sn, bytes, keys).await,
        Command::Label { key, labels } => {
            let update = parse::label_update(&labels)?;
            let conn = client::connect(g).await?;
            let info = Info {
                name: key.clone(),
                labels: update.labels,
                ..Default::default()
            };
            let info = conn
                .snapshots()
                .update(UpdateSnapshotRequest {
                    snapshotter: sn,
                    info: Some(info),
                    update_mask: Some(update.mask),
                })
                .await
                .ctx(format_args!("snapshots label {key}"))?
                .into_inner()
                .info
                .unwrap_or_default();
            match g.format {
                Format::Json => output::json(&info_json(&info))?,
                Format::Table => {
                    output::line(format!("{}   {}", info.name, output::labels(&info.labels)))?
                }
            }
            Ok(())
        }
        Command::Tree => {
            let infos = list(g, &sn, Vec::new()).await?;
            let forest = Forest::new(&infos);
            match g.format {
                Format::Json => output::json(&forest.json())?,
                Format::Table => {
                    let text = forest.render();
                    if !text.is_empty() {
                        output::line(text.trim_end())?;
                    }
                }
            }
            Ok(())
        }
    }
}

async fn create(g: &Global, sn: &str, a: CreateArgs, view: bool) -> anyhow::Result<()> {
    let verb = if view { "view" } else { "prepare" };
    let what = format!("snapshots {verb} {}", a.key);
    // As ctr: without a lease, the snapshot is a GC root (else the next
    // collection would take it).
    let labels = gc_labels(&a.labels, a.lease.as_deref())?;
    let parent = a.parent.unwrap_or_default();
    let conn = client::connect(g).await?.with_lease(a.lease.as_deref())?;
    let mut client = conn.snapshots();
    let mounts = if view {
        client
            .view(ViewSnapshotRequest {
                snapshotter: sn.to_string(),
                key: a.key.clone(),
                parent,
                labels,
            })
            .await
            .ctx(&what)?
            .into_inner()
            .mounts
    } else {
        client
            .prepare(PrepareSnapshotRequest {
                snapshotter: sn.to_string(),
                key: a.key.clone(),
                parent,
                labels,
            })
            .await
            .ctx(&what)?
            .into_inner()
            .mounts
    };
    match (&a.target, g.format) {
        (Some(target), _) => print_mounts(g, target, &mounts),
        (None, Format::Json) => output::json(&json!({
            "key": a.key,
            "mounts": mounts.iter().map(mount_json).collect::<Vec<_>>(),
        }))
        .map_err(Into::into),
        (None, Format::Table) => output::line(&a.key).map_err(Into::into),
    }
}

/// The user's labels, plus `containerd.io/gc.root` when no lease holds the snapshot.
fn gc_labels(args: &[String], lease: Option<&str>) -> anyhow::Result<HashMap<String, String>> {
    let mut labels = parse::labels(args)?;
    if lease.is_none() && !labels.contains_key(GC_ROOT_LABEL) {
        labels.insert(GC_ROOT_LABEL.to_string(), rfc3339_now());
    }
    Ok(labels.into_iter().collect())
}

fn rfc3339_now() -> String {
    let now = prost_types::Timestamp::from(SystemTime::now());
    prost_types::Timestamp {
        seconds: now.seconds,
        nanos: 0,
    }
    .to_string()
}

async fn list(g: &Global, sn: &str, filters: Vec<String>) -> anyhow::Result<Vec<Info>> {
    let conn = client::connect(g).await?;
    let mut stream = conn
        .snapshots()
        .list(ListSnapshotsRequest {
            snapshotter: sn.to_string(),
            filters,
        })
        .await
        .ctx("snapshots ls")?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(resp) = stream.message().await.ctx("snapshots ls")? {
        infos.extend(resp.info);
    }
    Ok(infos)
}

async fn stat(g: &Global, sn: &str, key: &str) -> anyhow::Result<Info> {
    let conn = client::connect(g).await?;
    Ok(conn
        .snapshots()
        .stat(StatSnapshotRequest {
            snapshotter: sn.to_string(),
            key: key.to_string(),
        })
        .await
        .ctx(format_args!("snapshots info {key}"))?
        .into_inner()
        .info
        .unwrap_or_default())
}

/// Response header of Usage with the bytes a snapshot shares (berthd's
/// `berth-shared-size`, sent by block-sharing backends).
const SHARED_SIZE_HEADER: &str = "berth-shared-size";

async fn usage(g: &Global, sn: &str, bytes: bool, keys: Vec<String>) -> anyhow::Result<()> {
    let keys = if keys.is_empty() {
        list(g, sn, Vec::new())
            .await?
            .into_iter()
            .map(|i| i.name)
            .collect()
    } else {
        keys
    };
    let conn = client::connect(g).await?;
    let mut rows = Vec::new();
    for key in keys {
        let u = conn
            .snapshots()
            .usage(UsageRequest {
                snapshotter: sn.to_string(),
                key: key.clone(),
            })
            .await
            .ctx(format_args!("snapshots usage {key}"))?;
        // Block-sharing backends (devmapper) also say what is shared.
        let shared = u
            .metadata()
            .get(SHARED_SIZE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let u = u.into_inner();
        rows.push((key, u.size, u.inodes, shared));
    }
    let any_shared = rows.iter().any(|r| r.3.is_some());
    match g.format {
        Format::Json => output::json(&Value::Array(
            rows.iter()
                .map(|(k, s, i, sh)| match sh {
                    Some(sh) => json!({ "key": k, "size": s, "inodes": i, "shared": sh }),
                    None => json!({ "key": k, "size": s, "inodes": i }),
                })
                .collect(),
        ))?,
        Format::Table => {
            let size = |n: i64| {
                if bytes {
                    n.to_string()
                } else {
                    output::human_size(n)
                }
            };
            let mut table = if any_shared {
                Table::new(&["KEY", "OWNED", "SHARED", "INODES"])
            } else {
                Table::new(&["KEY", "SIZE", "INODES"])
            };
            for (key, owned, inodes, shared) in rows {
                let mut row = vec![key, size(owned)];
                if any_shared {
                    row.push(shared.map(size).unwrap_or_else(|| "-".into()));
                }
                row.push(inodes.to_string());
                table.row(row);
            }
            table.print()?;
        }
    }
    Ok(())
}

fn print_mounts(g: &Global, target: &str, mounts: &[Mount]) -> anyhow::Result<()> {
    match g.format {
        Format::Json => output::json(&Value::Array(mounts.iter().map(mount_json).collect()))?,
        Format::Table => {
            for m in mounts {
                output::line(mount_command(target, m))?;
            }
        }
    }
    Ok(())
}

/// `mount -t TYPE SOURCE TARGET -o OPTIONS`, shell-quoted where needed.
fn mount_command(target: &str, m: &Mount) -> String {
    let mut cmd = format!(
        "mount -t {} {} {}",
        shell_quote(&m.r#type),
        shell_quote(&m.source),
        shell_quote(target)
    );
    if !m.options.is_empty() {
        cmd.push_str(" -o ");
        cmd.push_str(&shell_quote(&m.options.join(",")));
    }
    cmd
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-,=:+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::View) => "view",
        Ok(Kind::Active) => "active",
        Ok(Kind::Committed) => "committed",
        _ => "unknown",
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

fn info_json(info: &Info) -> Value {
    json!({
        "key": info.name,
        "parent": info.parent,
        "kind": kind_name(info.kind),
        "created_at": output::timestamp_json(info.created_at.as_ref()),
        "updated_at": output::timestamp_json(info.updated_at.as_ref()),
        "labels": output::labels_json(&info.labels),
    })
}

fn mount_json(m: &Mount) -> Value {
    json!({ "type": m.r#type, "source": m.source, "options": m.options })
}

/// Snapshots arranged by parent: roots are those without a parent (or whose
/// parent is not listed); children in key order.
struct Forest<'a> {
    by_key: BTreeMap<&'a str, &'a Info>,
    children: BTreeMap<&'a str, Vec<&'a str>>,
    roots: Vec<&'a str>,
}

impl<'a> Forest<'a> {
    fn new(infos: &'a [Info]) -> Self {
        let by_key: BTreeMap<&str, &Info> = infos.iter().map(|i| (i.name.as_str(), i)).collect();
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut roots = Vec::new();
        for (key, info) in &by_key {
            if !info.parent.is_empty() && by_key.contains_key(info.parent.as_str()) {
                children.entry(info.parent.as_str()).or_default().push(key);
            } else {
                roots.push(*key);
            }
        }
        Forest {
            by_key,
            children,
            roots,
        }
    }

    fn label(&self, key: &str) -> String {
        match self.by_key.get(key) {
            Some(info) => format!("{key} ({})", kind_name(info.kind)),
            None => key.to_string(),
        }
    }

    /// The trees, drawn with box characters.
    fn render(&self) -> String {
        let mut out = String::new();
        for root in &self.roots {
            out.push_str(&self.label(root));
            if let Some(info) = self.by_key.get(root) {
                if !info.parent.is_empty() {
                    // The parent is not listed (e.g. filtered out): say so.
                    out.push_str(&format!(" <- {}", info.parent));
                }
            }
            out.push('\n');
            self.render_children(root, "", &mut out);
        }
        out
    }

    fn render_children(&self, key: &str, prefix: &str, out: &mut String) {
        let Some(kids) = self.children.get(key) else {
            return;
        };
        for (i, kid) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            out.push_str(prefix);
            out.push_str(if last { "└── " } else { "├── " });
            out.push_str(&self.label(kid));
            out.push('\n');
            let deeper = format!("{prefix}{}", if last { "    " } else { "│   " });
            self.render_children(kid, &deeper, out);
        }
    }

    fn json(&self) -> Value {
        Value::Array(self.roots.iter().map(|r| self.node_json(r)).collect())
    }

    fn node_json(&self, key: &str) -> Value {
        let kids: Vec<Value> = self
            .children
            .get(key)
            .map(|k| k.iter().map(|c| self.node_json(c)).collect())
            .unwrap_or_default();
        let kind = self
            .by_key
            .get(key)
            .map(|i| kind_name(i.kind))
            .unwrap_or("");
        json!({ "key": key, "kind": kind, "children": kids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, parent: &str, kind: Kind) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn tree_draws_parent_chains() {
        let infos = vec![
            info("base", "", Kind::Committed),
            info("l2", "base", Kind::Committed),
            info("work", "l2", Kind::Active),
            info("ro", "base", Kind::View),
            info("other", "", Kind::Active),
            info("orphan", "gone", Kind::Active),
        ];
        let f = Forest::new(&infos);
        assert_eq!(
            f.render(),
            "base (committed)\n\
             ├── l2 (committed)\n\
             │   └── work (active)\n\
             └── ro (view)\n\
             orphan (active) <- gone\n\
             other (active)\n"
        );
        assert_eq!(
            f.json()[0]["children"][0]["children"][0]["key"],
            Value::String("work".into())
        );
    }

    #[test]
    fn mount_commands_are_shell_safe() {
        let m = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec!["lowerdir=/a:/b".into(), "upperdir=/u v".into()],
        };
        assert_eq!(
            mount_command("/mnt/x", &m),
            "mount -t overlay overlay /mnt/x -o 'lowerdir=/a:/b,upperdir=/u v'"
        );
        let bind = Mount {
            r#type: "bind".into(),
            source: "/s".into(),
            target: String::new(),
            options: vec!["rbind".into(), "ro".into()],
        };
        assert_eq!(
            mount_command("/t", &bind),
            "mount -t bind /s /t -o rbind,ro"
        );
    }

    #[test]
    fn gc_root_unless_leased() {
        let l = gc_labels(&["a=1".to_string()], None).unwrap();
        assert!(l.contains_key(GC_ROOT_LABEL));
        assert_eq!(l["a"], "1");
        let l = gc_labels(&[], Some("lease")).unwrap();
        assert!(l.is_empty());
    }
}
