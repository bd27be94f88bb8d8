//! Exporting images as an OCI image layout tar that also carries a
//! docker-archive `manifest.json` (as containerd's `archive.Export` does by
//! default), so both `docker load` and OCI tools read it.

use std::collections::BTreeSet;
use std::io::Write;

use berth_archive::writer::{TarEntry, TarWriter};

use crate::error::{Error, Result};
use crate::oci::{
    is_manifest, to_json, Descriptor, DockerArchiveEntry, Index, Platform, ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_INDEX,
};
use crate::store::ContentStore;
use crate::walk::{children, resolve, Platforms};

/// What [`export`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    pub blobs: usize,
    pub bytes: u64,
}

/// The tag of a name (`a/b:tag` -> `tag`), for `ref.name`.
fn tag_of(name: &str) -> Option<&str> {
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, t)| t)
}

/// Docker's familiar form of a name for `RepoTags`.
fn familiar(name: &str) -> String {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
        .to_string()
}

fn io_err(e: std::io::Error) -> Error {
    Error::io("write export", "<tar>", e)
}

/// Writes `images` (name, target) with every blob they reach for
/// `platforms` (blobs of other platforms an index lists are left out, as
/// containerd does) to `out`.
pub fn export(
    content: &dyn ContentStore,
    images: &[(String, Descriptor)],
    platforms: &Platforms,
    out: impl Write,
) -> Result<Exported> {
    // Which blobs, in a stable order.
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for (_, target) in images {
        let mut stack = vec![target.clone()];
        while let Some(d) = stack.pop() {
            if !seen.insert(d.digest.clone()) {
                continue;
            }
            let dg = d.digest()?;
            if content.info(&dg)?.is_none() {
                return Err(Error::NotFound(format!(
                    "content {dg} of the image (run unpack/pull first?)"
                )));
            }
            order.push(d.clone());
            let mut kids = children(content, &d, platforms)?;
            kids.reverse();
            stack.extend(kids);
        }
    }

    let mut tw = TarWriter::new(out);
    let mut ex = Exported::default();
    let small = |tw: &mut TarWriter<_>, name: &str, data: &[u8]| {
        tw.append(&TarEntry::file(name, data.len() as u64).mode(0o444), data)
            .map_err(io_err)
    };
    small(&mut tw, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tw.append(&TarEntry::dir("blobs/").mode(0o755), &b""[..])
        .map_err(io_err)?;
    tw.append(&TarEntry::dir("blobs/sha256/").mode(0o755), &b""[..])
        .map_err(io_err)?;
    for d in &order {
        let dg = d.digest()?;
        let info = content
            .info(&dg)?
            .ok_or_else(|| Error::NotFound(format!("content {dg}")))?;
        let reader = content.reader(&dg)?;
        tw.append(
            &TarEntry::file(format!("blobs/sha256/{}", dg.hex()), info.size).mode(0o444),
            reader,
        )
        .map_err(io_err)?;
        ex.blobs += 1;
        ex.bytes += info.size;
    }

    let mut index = Index {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_INDEX.into(),
        manifests: Vec::new(),
        annotations: Default::default(),
    };
    let mut docker = Vec::new();
    for (name, target) in images {
        let mut m = target.clone();
        m.annotations
            .insert(ANNOTATION_IMAGE_NAME.into(), name.clone());
        if let Some(tag) = tag_of(name) {
            m.annotations.insert(ANNOTATION_REF_NAME.into(), tag.into());
        }
        index.manifests.push(m);
        // Docker's manifest.json lists one manifest per image.
        let platform = match platforms {
            Platforms::One(p) => p.clone(),
            Platforms::All => Platform::host(),
        };
        let manifest = if is_manifest(&target.media_type) {
            Some(target.clone())
        } else {
            resolve(content, target, &platform).ok().map(|(d, _, _)| d)
        };
        if let Some(md) = manifest {
            if let Ok((_, mf, _)) = resolve(content, &md, &platform) {
                docker.push(DockerArchiveEntry {
                    config: format!("blobs/sha256/{}", mf.config.digest()?.hex()),
                    repo_tags: Some(vec![familiar(name)]),
                    layers: mf
                        .layers
                        .iter()
                        .map(|l| Ok(format!("blobs/sha256/{}", l.digest()?.hex())))
                        .collect::<Result<_>>()?,
                });
            }
        }
    }
    small(&mut tw, "index.json", &to_json(&index))?;
    if !docker.is_empty() {
        small(&mut tw, "manifest.json", &to_json(&docker))?;
    }
    let mut out = tw.finish().map_err(io_err)?;
    out.flush().map_err(io_err)?;
    Ok(ex)
}
