//! `berth images import|export|ls|rm|check|unpack|tag|mount|unmount|usage`
//!
//! The image logic is `berth_image` (import, export, unpack, walk); this file
//! gives it the daemon's stores over gRPC ([`Remote`]), running the library
//! on a blocking thread that drives calls on the runtime.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use berth_content::Digest;
use berth_image::oci::{Descriptor, Platform};
use berth_image::store::{BlobInfo, ContentStore, ImageStore, Labels, LayerApplier, SnapshotStore};
use berth_image::walk::Platforms;
use berth_proto::containerd::services::content::v1::{
    InfoRequest, ReadContentRequest, UpdateRequest,
};
use berth_proto::containerd::services::diff::v1::ApplyRequest;
use berth_proto::containerd::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
    UpdateImageRequest,
};
use berth_proto::containerd::services::leases::v1::{CreateRequest, DeleteRequest};
use berth_proto::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    UsageRequest, ViewSnapshotRequest,
};
use berth_proto::containerd::types;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;
use tonic::Code;

use crate::client::Conn;
use crate::error::CallExt;
use crate::ingest::{self, Source, Upload};
use crate::output::{self, Format, Table};
use crate::{client, Global};

const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Import images from an OCI layout or docker-archive tar ("-" for stdin) and unpack them.
    Import {
        file: String,
        /// Name bare tags `<base>:<tag>`; only import full names under it.
        #[arg(long)]
        base_name: Option<String>,
        /// Snapshotter to unpack into.
        #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
        snapshotter: String,
        /// Do not unpack.
        #[arg(long)]
        no_unpack: bool,
        /// Platform to unpack (os/arch[/variant]); the host's by default.
        #[arg(long)]
        platform: Option<String>,
    },
    /// Export images as an OCI layout tar (with a docker manifest.json) to a file ("-" for stdout).
    Export {
        file: String,
        #[arg(required = true)]
        names: Vec<String>,
        /// Include every platform an index lists (all must be present).
        #[arg(long)]
        all_platforms: bool,
        #[arg(long)]
        platform: Option<String>,
    },
    /// List images, optionally matching filters (e.g. 'name~=busybox').
    #[command(visible_alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Remove images.
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        /// Wait for the garbage collection.
        #[arg(long)]
        sync: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Check that every blob of the images (host platform) is present.
    Check { filters: Vec<String> },
    /// Unpack an image into a snapshotter.
    Unpack {
        name: String,
        #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
        snapshotter: String,
        #[arg(long)]
        platform: Option<String>,
    },
    /// Give an image more names.
    Tag {
        source: String,
        #[arg(required = true)]
        targets: Vec<String>,
        /// Replace existing names.
        #[arg(long)]
        force: bool,
    },
    /// Mount an image's root filesystem (read-only unless --rw) on a directory.
    Mount {
        name: String,
        target: PathBuf,
        #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
        snapshotter: String,
        #[arg(long)]
        rw: bool,
    },
    /// Unmount what `mount` mounted and release it.
    Unmount {
        target: PathBuf,
        #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
        snapshotter: String,
    },
    /// Disk usage of an image: its blobs and its unpacked snapshots.
    Usage {
        name: String,
        #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
        snapshotter: String,
    },
}

/// The daemon's stores over gRPC, for the image library (which blocks: it
/// runs on a blocking thread and drives calls with `handle.block_on`).
struct Remote {
    conn: Conn,
    lease: Option<String>,
    handle: Handle,
    snapshotter: String,
}

fn status_err(context: impl Into<String>, s: tonic::Status) -> berth_image::Error {
    let kind = match s.code() {
        Code::NotFound => berth_errdefs::ErrorKind::NotFound,
        Code::AlreadyExists => berth_errdefs::ErrorKind::AlreadyExists,
        Code::InvalidArgument => berth_errdefs::ErrorKind::InvalidArgument,
        Code::FailedPrecondition => berth_errdefs::ErrorKind::FailedPrecondition,
        Code::Unavailable => berth_errdefs::ErrorKind::Unavailable,
        Code::Unimplemented => berth_errdefs::ErrorKind::NotImplemented,
        _ => berth_errdefs::ErrorKind::Internal,
    };
    berth_image::Error::Store {
        context: context.into(),
        kind,
        message: s.message().to_string(),
    }
}

fn desc_to_proto(d: &Descriptor) -> types::Descriptor {
    types::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

fn desc_from_proto(d: types::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
        ..Descriptor::default()
    }
}

fn to_mounts(m: Vec<types::Mount>) -> Vec<berth_snapshotter::Mount> {
    m.into_iter()
        .map(|m| berth_snapshotter::Mount {
            kind: m.r#type,
            source: m.source,
            options: m.options,
        })
        .collect()
}

fn from_mounts(m: &[berth_snapshotter::Mount]) -> Vec<types::Mount> {
    m.iter()
        .map(|m| types::Mount {
            r#type: m.kind.clone(),
            source: m.source.clone(),
            target: String::new(),
            options: m.options.clone(),
        })
        .collect()
}

/// Streams a blob as `Read`.
struct BlobReader {
    handle: Handle,
    stream: tonic::Streaming<berth_proto::containerd::services::content::v1::ReadContentResponse>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.handle.block_on(self.stream.message()) {
                Ok(Some(m)) => {
                    self.buf = m.data;
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                Err(s) => return Err(std::io::Error::other(s.message().to_string())),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ContentStore for Remote {
    fn info(&self, digest: &Digest) -> berth_image::Result<Option<BlobInfo>> {
        let r = self.handle.block_on(self.conn.content().info(InfoRequest {
            digest: digest.to_string(),
        }));
        match r {
            Ok(r) => {
                let info = r.into_inner().info.unwrap_or_default();
                Ok(Some(BlobInfo {
                    size: info.size as u64,
                    labels: info.labels.into_iter().collect(),
                }))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_err(format!("content info {digest}"), s)),
        }
    }

    fn reader(&self, digest: &Digest) -> berth_image::Result<Box<dyn Read + Send + '_>> {
        let stream = self
            .handle
            .block_on(self.conn.content().read(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .map_err(|s| status_err(format!("read content {digest}"), s))?
            .into_inner();
        Ok(Box::new(BlobReader {
            handle: self.handle.clone(),
            stream,
            buf: Vec::new(),
            pos: 0,
        }))
    }

    fn write(
        &self,
        reference: &str,
        expected: Option<(&Digest, u64)>,
        data: &mut dyn Read,
        labels: &Labels,
    ) -> berth_image::Result<(Digest, u64)> {
        let conn = self
            .conn
            .with_lease(self.lease.as_deref())
            .map_err(|e| berth_image::Error::InvalidArgument(e.to_string()))?;
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let up = Upload {
            reference: reference.to_string(),
            total: expected.map(|e| e.1),
            expected: expected.map(|e| e.0.to_string()),
            labels: labels.clone().into_iter().collect(),
            context: format!("write {reference}"),
        };
        let task = self
            .handle
            .spawn(async move { ingest::upload(&conn, up, Source::Stream(Box::new(r))).await });
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = data
                .read(&mut buf)
                .map_err(|e| berth_image::Error::InvalidArgument(format!("{reference}: {e}")))?;
            if n == 0 {
                break;
            }
            if self.handle.block_on(w.write_all(&buf[..n])).is_err() {
                // The upload ended early (the blob exists, or it failed).
                break;
            }
        }
        let _ = self.handle.block_on(w.shutdown());
        drop(w);
        let done = self
            .handle
            .block_on(task)
            .map_err(|e| berth_image::Error::InvalidArgument(e.to_string()))?
            .map_err(|e| berth_image::Error::Store {
                context: format!("write {reference}"),
                kind: berth_errdefs::ErrorKind::Internal,
                message: format!("{e:#}"),
            })?;
        let digest = Digest::parse(&done.digest)
            .map_err(|e| berth_image::Error::InvalidArgument(e.to_string()))?;
        Ok((digest, done.size))
    }

    fn set_labels(&self, digest: &Digest, labels: &Labels) -> berth_image::Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.handle
            .block_on(self.conn.content().update(UpdateRequest {
                info: Some(berth_proto::containerd::services::content::v1::Info {
                    digest: digest.to_string(),
                    labels: labels.clone().into_iter().collect(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .map_err(|s| status_err(format!("label content {digest}"), s))?;
        Ok(())
    }
}

impl SnapshotStore for Remote {
    fn name(&self) -> &str {
        &self.snapshotter
    }

    fn exists(&self, key: &str) -> berth_image::Result<bool> {
        match self
            .handle
            .block_on(self.conn.snapshots().stat(StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            })) {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status_err(format!("stat snapshot {key}"), s)),
        }
    }

    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: &Labels,
    ) -> berth_image::Result<Vec<berth_snapshotter::Mount>> {
        let conn = self.leased()?;
        let m = self
            .handle
            .block_on(conn.snapshots().prepare(PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels: labels.clone().into_iter().collect(),
            }))
            .map_err(|s| status_err(format!("prepare snapshot {key}"), s))?
            .into_inner()
            .mounts;
        Ok(to_mounts(m))
    }

    fn commit(&self, name: &str, key: &str, labels: &Labels) -> berth_image::Result<()> {
        let conn = self.leased()?;
        self.handle
            .block_on(conn.snapshots().commit(CommitSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                name: name.to_string(),
                key: key.to_string(),
                labels: labels.clone().into_iter().collect(),
                parent: String::new(),
            }))
            .map_err(|s| status_err(format!("commit snapshot {key}"), s))?;
        Ok(())
    }

    fn remove(&self, key: &str) -> berth_image::Result<()> {
        let conn = self.leased()?;
        self.handle
            .block_on(conn.snapshots().remove(RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .map_err(|s| status_err(format!("remove snapshot {key}"), s))?;
        Ok(())
    }
}

impl LayerApplier for Remote {
    fn apply(
        &self,
        layer: &Descriptor,
        mounts: &[berth_snapshotter::Mount],
    ) -> berth_image::Result<Digest> {
        let applied = self
            .handle
            .block_on(self.conn.diff().apply(ApplyRequest {
                diff: Some(desc_to_proto(layer)),
                mounts: from_mounts(mounts),
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .map_err(|s| status_err(format!("apply layer {}", layer.digest), s))?
            .into_inner()
            .applied
            .unwrap_or_default();
        Digest::parse(&applied.digest)
            .map_err(|e| berth_image::Error::InvalidArgument(format!("applied digest: {e}")))
    }
}

impl ImageStore for Remote {
    fn get(&self, name: &str) -> berth_image::Result<Option<Descriptor>> {
        match self
            .handle
            .block_on(self.conn.images().get(GetImageRequest {
                name: name.to_string(),
            })) {
            Ok(r) => Ok(r
                .into_inner()
                .image
                .and_then(|i| i.target)
                .map(desc_from_proto)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_err(format!("get image {name}"), s)),
        }
    }

    fn put(&self, name: &str, target: &Descriptor) -> berth_image::Result<()> {
        let image = Image {
            name: name.to_string(),
            target: Some(desc_to_proto(target)),
            ..Default::default()
        };
        let conn = self.leased()?;
        match self
            .handle
            .block_on(conn.images().create(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            })) {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                self.handle
                    .block_on(conn.images().update(UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                        source_date_epoch: None,
                    }))
                    .map_err(|s| status_err(format!("update image {name}"), s))?;
                Ok(())
            }
            Err(s) => Err(status_err(format!("create image {name}"), s)),
        }
    }
}

impl Remote {
    fn leased(&self) -> berth_image::Result<Conn> {
        self.conn
            .with_lease(self.lease.as_deref())
            .map_err(|e| berth_image::Error::InvalidArgument(e.to_string()))
    }
}

/// A lease for the duration of a command (expiring after a day, like
/// ctr's), deleted at the end.
async fn temp_lease(conn: &Conn, id: Option<String>) -> anyhow::Result<String> {
    let expire = crate::commands::leases::expiry(SystemTime::now(), Duration::from_secs(24 * 3600));
    let lease = conn
        .leases()
        .create(CreateRequest {
            id: id.unwrap_or_default(),
            labels: HashMap::from([(crate::commands::leases::EXPIRE_LABEL.to_string(), expire)]),
        })
        .await
        .ctx("create lease")?
        .into_inner()
        .lease
        .ok_or_else(|| anyhow!("create lease: no lease in the response"))?;
    Ok(lease.id)
}

async fn drop_lease(conn: &Conn, id: &str) {
    let _ = conn
        .leases()
        .delete(DeleteRequest {
            id: id.to_string(),
            sync: false,
        })
        .await;
}

fn platform_of(p: &Option<String>) -> anyhow::Result<Platform> {
    match p {
        Some(p) => Ok(Platform::parse(p)?),
        None => Ok(Platform::host()),
    }
}

/// Runs library work on a blocking thread with the remote stores.
async fn with_remote<T: Send + 'static>(
    g: &Global,
    snapshotter: &str,
    lease: bool,
    f: impl FnOnce(&Remote) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let conn = client::connect(g).await?;
    let lease_id = if lease {
        Some(temp_lease(&conn, None).await?)
    } else {
        None
    };
    let remote = Remote {
        conn: client::connect(g).await?,
        lease: lease_id.clone(),
        handle: Handle::current(),
        snapshotter: snapshotter.to_string(),
    };
    let r = tokio::task::spawn_blocking(move || f(&remote))
        .await
        .context("image task")?;
    if let Some(id) = lease_id {
        drop_lease(&conn, &id).await;
    }
    r
}

async fn list(conn: &Conn, filters: Vec<String>) -> anyhow::Result<Vec<Image>> {
    Ok(conn
        .images()
        .list(ListImagesRequest { filters })
        .await
        .ctx("images ls")?
        .into_inner()
        .images)
}

pub async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Import {
            file,
            base_name,
            snapshotter,
            no_unpack,
            platform,
        } => {
            let platform = platform_of(&platform)?;
            let imported = with_remote(g, &snapshotter, true, move |r| {
                let input: Box<dyn Read + Send> = if file == "-" {
                    Box::new(std::io::stdin())
                } else {
                    Box::new(std::io::BufReader::new(
                        std::fs::File::open(&file).with_context(|| format!("open {file}"))?,
                    ))
                };
                let opts = berth_image::import::ImportOptions { base_name };
                let imported = berth_image::import::import(input, r, r, &opts)?;
                let mut out = Vec::new();
                for img in imported {
                    let unpacked = if no_unpack {
                        None
                    } else {
                        let u = berth_image::unpack::unpack(
                            r,
                            r,
                            r,
                            &img.target,
                            &platform,
                            &mut |i, n| eprintln!("unpacking {}: layer {i}/{n}", img.name),
                        )?;
                        u.chain.last().map(|c| c.to_string())
                    };
                    out.push((img.name, img.target.digest, unpacked));
                }
                Ok(out)
            })
            .await?;
            for (name, digest, top) in imported {
                match top {
                    Some(top) => output::line(format!("{name} {digest} (unpacked: {top})"))?,
                    None => output::line(format!("{name} {digest}"))?,
                }
            }
            Ok(())
        }
        Command::Export {
            file,
            names,
            all_platforms,
            platform,
        } => {
            let platforms = if all_platforms {
                Platforms::All
            } else {
                Platforms::One(platform_of(&platform)?)
            };
            let ex = with_remote(g, DEFAULT_SNAPSHOTTER, false, move |r| {
                let mut images = Vec::new();
                for n in &names {
                    let t = r.get(n)?.ok_or_else(|| anyhow!("image {n:?}: not found"))?;
                    images.push((n.clone(), t));
                }
                let out: Box<dyn std::io::Write> = if file == "-" {
                    Box::new(std::io::stdout().lock())
                } else {
                    Box::new(std::io::BufWriter::new(
                        std::fs::File::create(&file).with_context(|| format!("create {file}"))?,
                    ))
                };
                Ok(berth_image::export::export(r, &images, &platforms, out)?)
            })
            .await?;
            eprintln!(
                "exported {} blobs, {}",
                ex.blobs,
                output::human_size(ex.bytes as i64)
            );
            Ok(())
        }
        Command::Ls { quiet, filters } => {
            let conn = client::connect(g).await?;
            let images = list(&conn, filters).await?;
            if quiet {
                for i in &images {
                    output::line(&i.name)?;
                }
                return Ok(());
            }
            match g.format {
                Format::Json => output::json(&Value::Array(
                    images
                        .iter()
                        .map(|i| {
                            let t = i.target.clone().unwrap_or_default();
                            json!({
                                "name": i.name,
                                "target": {"mediaType": t.media_type, "digest": t.digest, "size": t.size},
                                "labels": output::labels_json(&i.labels),
                                "created_at": output::timestamp_json(i.created_at.as_ref()),
                                "updated_at": output::timestamp_json(i.updated_at.as_ref()),
                            })
                        })
                        .collect(),
                ))?,
                Format::Table => {
                    let mut table = Table::new(&["NAME", "TYPE", "DIGEST", "SIZE", "CREATED"]);
                    for i in &images {
                        let t = i.target.clone().unwrap_or_default();
                        table.row(vec![
                            i.name.clone(),
                            t.media_type,
                            t.digest,
                            output::human_size(t.size),
                            output::age(i.created_at.as_ref()),
                        ]);
                    }
                    table.print()?;
                }
            }
            Ok(())
        }
        Command::Rm { sync, names } => {
            let conn = client::connect(g).await?;
            crate::commands::for_each(names, |name| {
                let conn = &conn;
                async move {
                    conn.images()
                        .delete(DeleteImageRequest {
                            name: name.clone(),
                            sync,
                            target: None,
                        })
                        .await
                        .ctx(format!("images rm {name}"))?;
                    output::line(&name)?;
                    Ok(())
                }
            })
            .await
        }
        Command::Check { filters } => {
            let conn = client::connect(g).await?;
            let images = list(&conn, filters).await?;
            let rows = with_remote(g, DEFAULT_SNAPSHOTTER, false, move |r| {
                let mut rows = Vec::new();
                for i in images {
                    let t = desc_from_proto(i.target.unwrap_or_default());
                    let c = berth_image::walk::check(r, &t, &Platforms::host())?;
                    rows.push((i.name, c));
                }
                Ok(rows)
            })
            .await?;
            let mut table = Table::new(&["NAME", "STATUS", "BLOBS", "SIZE"]);
            for (name, c) in &rows {
                table.row(vec![
                    name.clone(),
                    if c.complete() {
                        "complete".into()
                    } else {
                        format!("incomplete ({} missing)", c.missing.len())
                    },
                    format!("{}/{}", c.present, c.present + c.missing.len()),
                    format!(
                        "{}/{}",
                        output::human_size(c.present_size as i64),
                        output::human_size(c.total_size as i64)
                    ),
                ]);
            }
            table.print()?;
            Ok(())
        }
        Command::Unpack {
            name,
            snapshotter,
            platform,
        } => {
            let platform = platform_of(&platform)?;
            let u = with_remote(g, &snapshotter, true, move |r| {
                let t = r
                    .get(&name)?
                    .ok_or_else(|| anyhow!("image {name:?}: not found"))?;
                Ok(berth_image::unpack::unpack(
                    r,
                    r,
                    r,
                    &t,
                    &platform,
                    &mut |i, n| eprintln!("layer {i}/{n}"),
                )?)
            })
            .await?;
            output::line(format!(
                "unpacked {} (applied {} of {} layers): {}",
                u.manifest.digest,
                u.applied,
                u.chain.len(),
                u.chain.last().map(|c| c.to_string()).unwrap_or_default()
            ))?;
            Ok(())
        }
        Command::Tag {
            source,
            targets,
            force,
        } => {
            let conn = client::connect(g).await?;
            let img = conn
                .images()
                .get(GetImageRequest {
                    name: source.clone(),
                })
                .await
                .ctx(format!("images tag {source}"))?
                .into_inner()
                .image
                .ok_or_else(|| anyhow!("no image in the response"))?;
            for t in targets {
                let new = Image {
                    name: t.clone(),
                    labels: img.labels.clone(),
                    target: img.target.clone(),
                    ..Default::default()
                };
                let created = conn
                    .images()
                    .create(CreateImageRequest {
                        image: Some(new.clone()),
                        source_date_epoch: None,
                    })
                    .await;
                match created {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::AlreadyExists && force => {
                        conn.images()
                            .update(UpdateImageRequest {
                                image: Some(new),
                                update_mask: None,
                                source_date_epoch: None,
                            })
                            .await
                            .ctx(format!("images tag {t}"))?;
                    }
                    Err(s) => return Err(s).ctx(format!("images tag {t}")),
                }
                output::line(&t)?;
            }
            Ok(())
        }
        Command::Mount {
            name,
            target,
            snapshotter,
            rw,
        } => {
            let target = std::fs::canonicalize(&target)
                .with_context(|| format!("target {}", target.display()))?;
            let key = target.display().to_string();
            let conn = client::connect(g).await?;
            let lease = temp_lease(&conn, Some(mount_lease(&key))).await?;
            let top = {
                let (n, sn) = (name.clone(), snapshotter.clone());
                with_remote(g, &snapshotter, false, move |r| {
                    let t = r
                        .get(&n)?
                        .ok_or_else(|| anyhow!("image {n:?}: not found"))?;
                    let (_, _, config) = berth_image::walk::resolve(r, &t, &Platform::host())?;
                    let chain = berth_image::oci::chain_ids(&config.diff_ids()?);
                    let top = chain.last().ok_or_else(|| anyhow!("image has no layers"))?;
                    if !r.exists(&top.to_string())? {
                        bail!("image {n:?} is not unpacked in {sn}: run `berth images unpack`");
                    }
                    Ok(top.to_string())
                })
                .await?
            };
            let leased = conn.with_lease(Some(&lease))?;
            let mounts = if rw {
                leased
                    .snapshots()
                    .prepare(PrepareSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        key: key.clone(),
                        parent: top,
                        labels: HashMap::new(),
                    })
                    .await
                    .ctx("prepare snapshot")?
                    .into_inner()
                    .mounts
            } else {
                leased
                    .snapshots()
                    .view(ViewSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        key: key.clone(),
                        parent: top,
                        labels: HashMap::new(),
                    })
                    .await
                    .ctx("view snapshot")?
                    .into_inner()
                    .mounts
            };
            berth_snapshotter::mount_all(&to_mounts(mounts), &target)
                .with_context(|| format!("mount on {}", target.display()))?;
            output::line(target.display())?;
            Ok(())
        }
        Command::Unmount {
            target,
            snapshotter,
        } => {
            let target = std::fs::canonicalize(&target)
                .with_context(|| format!("target {}", target.display()))?;
            berth_snapshotter::unmount_all(&target)
                .with_context(|| format!("unmount {}", target.display()))?;
            let key = target.display().to_string();
            let conn = client::connect(g).await?;
            conn.snapshots()
                .remove(RemoveSnapshotRequest {
                    snapshotter,
                    key: key.clone(),
                })
                .await
                .ctx(format!("remove snapshot {key}"))?;
            let _ = conn
                .leases()
                .delete(DeleteRequest {
                    id: mount_lease(&key),
                    sync: false,
                })
                .await;
            output::line(target.display())?;
            Ok(())
        }
        Command::Usage { name, snapshotter } => {
            let conn = client::connect(g).await?;
            let (blobs, chain) = {
                let (n, sn) = (name.clone(), snapshotter.clone());
                with_remote(g, &sn, false, move |r| {
                    let t = r
                        .get(&n)?
                        .ok_or_else(|| anyhow!("image {n:?}: not found"))?;
                    let c = berth_image::walk::check(r, &t, &Platforms::host())?;
                    let chain = match berth_image::walk::resolve(r, &t, &Platform::host()) {
                        Ok((_, _, config)) => berth_image::oci::chain_ids(&config.diff_ids()?),
                        Err(_) => Vec::new(),
                    };
                    Ok((c.present_size, chain))
                })
                .await?
            };
            let mut snap = 0i64;
            for c in chain {
                if let Ok(u) = conn
                    .snapshots()
                    .usage(UsageRequest {
                        snapshotter: snapshotter.clone(),
                        key: c.to_string(),
                    })
                    .await
                {
                    snap += u.into_inner().size;
                }
            }
            match g.format {
                Format::Json => output::json(&json!({
                    "name": name, "content_size": blobs, "snapshot_size": snap,
                }))?,
                Format::Table => {
                    let mut table = Table::new(&["NAME", "CONTENT", "SNAPSHOTS"]);
                    table.row(vec![
                        name,
                        output::human_size(blobs as i64),
                        output::human_size(snap),
                    ]);
                    table.print()?;
                }
            }
            Ok(())
        }
    }
}

/// The lease a mount holds its snapshot with (lease ids cannot hold `/`).
fn mount_lease(key: &str) -> String {
    format!(
        "berth-mount-{}",
        &Digest::of_bytes(key.as_bytes()).hex()[..16]
    )
}
