//! Test support: images made offline from the host's static `busybox`,
//! packed as OCI image layout tars and docker-archive (`docker save`) tars.
//!
//! The image has three layers:
//! 1. a busybox rootfs (`bin/busybox` and applet symlinks, `etc/passwd`,
//!    `etc/group`, `tmp/`), plus `data/keep`, `data/gone`, `gone-top`,
//!    `opq/old` and `opq/sub/deep`;
//! 2. whiteouts of `data/gone` and `gone-top`, `opq/` made opaque with a new
//!    `opq/new`, and `etc/motd` ("layer2");
//! 3. `etc/motd` replaced ("layer3"), `usr/share/berth/a` and its hard
//!    link `usr/share/berth/b`.
//!
//! [`PRESENT`] and [`ABSENT`] list what the unpacked image must and must
//! not contain. Everything is deterministic: the same calls give the same
//! digests.

use std::io::Write;

use berth_archive::corpus::LayerBuilder;
use berth_archive::writer::{TarEntry, TarWriter};
use berth_archive::{CompressWriter, Compression};
use berth_content::Digest;

use crate::oci::{
    to_json, Descriptor, DockerArchiveEntry, Index, Manifest, Platform, ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};

/// The static busybox of Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// Paths (relative to the rootfs) the unpacked test image has.
pub const PRESENT: &[&str] = &[
    "bin/busybox",
    "bin/sh",
    "etc/passwd",
    "data/keep",
    "opq/new",
    "etc/motd",
    "usr/share/berth/a",
    "usr/share/berth/b",
];
/// Paths the unpacked test image must not have (whiteouts, opaque dirs).
pub const ABSENT: &[&str] = &[
    "data/gone",
    "gone-top",
    "opq/old",
    "opq/sub",
    "opq/.wh..wh..opq",
    "data/.wh.gone",
    ".wh.gone-top",
];
/// Content of `etc/motd` in the unpacked image.
pub const MOTD: &[u8] = b"layer3\n";

const MTIME: i64 = 1_700_000_000;
const APPLETS: &[&str] = &["sh", "ls", "cat", "echo", "true", "sleep", "test"];

fn dir(b: LayerBuilder, name: &str, mode: u32) -> LayerBuilder {
    b.entry(
        TarEntry::dir(format!("{name}/")).mode(mode).mtime(MTIME),
        b"",
    )
}

fn file(b: LayerBuilder, name: &str, data: &[u8], mode: u32) -> LayerBuilder {
    b.entry(
        TarEntry::file(name, data.len() as u64)
            .mode(mode)
            .mtime(MTIME),
        data,
    )
}

/// The three uncompressed layer tars of the test image (with `busybox`
/// the bytes of the binary; see [`busybox`]).
pub fn layers_with(busybox: &[u8]) -> Vec<Vec<u8>> {
    let mut l1 = LayerBuilder::new();
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("data", 0o755),
        ("opq", 0o755),
        ("opq/sub", 0o755),
    ] {
        l1 = dir(l1, d, mode);
    }
    l1 = file(l1, "bin/busybox", busybox, 0o755);
    for a in APPLETS {
        l1 = l1.entry(
            TarEntry::symlink(format!("bin/{a}"), "busybox").mtime(MTIME),
            b"",
        );
    }
    l1 = file(l1, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
    l1 = file(l1, "etc/group", b"root:x:0:\n", 0o644);
    l1 = file(l1, "data/keep", b"keep\n", 0o644);
    l1 = file(l1, "data/gone", b"gone\n", 0o644);
    l1 = file(l1, "gone-top", b"gone\n", 0o600);
    l1 = file(l1, "opq/old", b"old\n", 0o644);
    l1 = file(l1, "opq/sub/deep", b"deep\n", 0o644);

    let mut l2 = LayerBuilder::new();
    l2 = l2.whiteout("gone-top");
    l2 = dir(l2, "data", 0o755);
    l2 = l2.whiteout("data/gone");
    l2 = dir(l2, "opq", 0o755);
    l2 = l2.opaque("opq");
    l2 = file(l2, "opq/new", b"new\n", 0o644);
    l2 = dir(l2, "etc", 0o755);
    l2 = file(l2, "etc/motd", b"layer2\n", 0o644);

    let mut l3 = LayerBuilder::new();
    l3 = dir(l3, "etc", 0o755);
    l3 = file(l3, "etc/motd", MOTD, 0o644);
    for d in ["usr", "usr/share", "usr/share/berth"] {
        l3 = dir(l3, d, 0o755);
    }
    l3 = file(l3, "usr/share/berth/a", b"linked\n", 0o644);
    l3 = l3.entry(
        TarEntry::hardlink("usr/share/berth/b", "usr/share/berth/a").mtime(MTIME),
        b"",
    );

    vec![l1.finish(), l2.finish(), l3.finish()]
}

/// The host's busybox binary. Panics with a clear message if it is missing.
pub fn busybox() -> Vec<u8> {
    std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("test images need {BUSYBOX} (Debian package busybox-static): {e}")
    })
}

/// The test image's uncompressed layers.
pub fn layers() -> Vec<Vec<u8>> {
    layers_with(&busybox())
}

/// Compresses `data` (deterministically: gzip without a timestamp).
pub fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    let mut w = CompressWriter::new(Vec::new(), compression).expect("compressor");
    w.write_all(data).expect("compress to memory");
    w.finish().expect("compress to memory")
}

/// The blobs of an image built from `layers`: every blob by digest, the
/// manifest's descriptor, and the diff IDs.
#[derive(Debug, Clone)]
pub struct Built {
    /// (descriptor, bytes) of the config, the layers and the manifest.
    pub blobs: Vec<(Descriptor, Vec<u8>)>,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
}

/// Builds an OCI manifest, config and layer blobs (layers compressed with
/// `compression`).
pub fn build(layers: &[Vec<u8>], compression: Compression) -> Built {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of_bytes(l)).collect();
    let platform = Platform::host();
    let config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        },
        "history": layers.iter().enumerate().map(|(i, _)| serde_json::json!({
            "created_by": format!("berth test image layer {}", i + 1),
        })).collect::<Vec<_>>(),
    });
    let config = to_json(&config);
    let config_desc = Descriptor::of(MEDIA_TYPE_OCI_CONFIG, &config);
    let mut blobs = vec![(config_desc.clone(), config)];
    let mut layer_descs = Vec::new();
    for l in layers {
        let data = compress(l, compression);
        let d = Descriptor::of(compression.oci_media_type(), &data);
        layer_descs.push(d.clone());
        blobs.push((d, data));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
        config: config_desc.clone(),
        layers: layer_descs.clone(),
        annotations: Default::default(),
    };
    let manifest = to_json(&manifest);
    let mut manifest_desc = Descriptor::of(MEDIA_TYPE_OCI_MANIFEST, &manifest);
    blobs.push((manifest_desc.clone(), manifest));
    manifest_desc.platform = Some(platform);
    Built {
        blobs,
        manifest: manifest_desc,
        config: config_desc,
        layers: layer_descs,
        diff_ids,
    }
}

fn append(tw: &mut TarWriter<Vec<u8>>, name: &str, data: &[u8]) {
    tw.append(
        &TarEntry::file(name, data.len() as u64)
            .mode(0o644)
            .mtime(MTIME),
        data,
    )
    .expect("write tar to memory");
}

/// An OCI image layout tar of `built`, its manifest named `name` in
/// `index.json` (`io.containerd.image.name`, and the tag as
/// `org.opencontainers.image.ref.name`).
pub fn oci_layout_tar(built: &Built, name: &str) -> Vec<u8> {
    let mut tw = TarWriter::new(Vec::new());
    append(&mut tw, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut m = built.manifest.clone();
    m.annotations
        .insert(ANNOTATION_IMAGE_NAME.into(), name.to_string());
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    m.annotations
        .insert(ANNOTATION_REF_NAME.into(), tag.to_string());
    let index = Index {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_INDEX.into(),
        manifests: vec![m],
        annotations: Default::default(),
    };
    append(&mut tw, "index.json", &to_json(&index));
    tw.append(&TarEntry::dir("blobs/").mtime(MTIME), &b""[..])
        .expect("write tar to memory");
    tw.append(&TarEntry::dir("blobs/sha256/").mtime(MTIME), &b""[..])
        .expect("write tar to memory");
    let mut seen = std::collections::HashSet::new();
    for (d, data) in &built.blobs {
        if seen.insert(d.digest.clone()) {
            let hex = d.digest.trim_start_matches("sha256:");
            append(&mut tw, &format!("blobs/sha256/{hex}"), data);
        }
    }
    tw.finish().expect("write tar to memory")
}

/// A docker-archive tar (`docker save` format: `manifest.json`, the config
/// as `<hex>.json`, uncompressed layers as `<hex>/layer.tar`) of `layers`,
/// tagged `repo_tag` (e.g. `berth-test:docker`).
pub fn docker_archive_tar(layers: &[Vec<u8>], repo_tag: &str) -> Vec<u8> {
    let built = build(layers, Compression::Uncompressed);
    let mut tw = TarWriter::new(Vec::new());
    let config_hex = built
        .config
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    let config_name = format!("{config_hex}.json");
    let config = &built
        .blobs
        .iter()
        .find(|(d, _)| d.digest == built.config.digest)
        .expect("config blob")
        .1;
    append(&mut tw, &config_name, config);
    let mut layer_names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = Digest::of_bytes(format!("layer {i} {}", built.diff_ids[i]).as_bytes());
        let dir = id.hex();
        tw.append(&TarEntry::dir(format!("{dir}/")).mtime(MTIME), &b""[..])
            .expect("write tar to memory");
        append(&mut tw, &format!("{dir}/VERSION"), b"1.0");
        append(&mut tw, &format!("{dir}/layer.tar"), l);
        layer_names.push(format!("{dir}/layer.tar"));
    }
    let manifest = vec![DockerArchiveEntry {
        config: config_name,
        repo_tags: Some(vec![repo_tag.to_string()]),
        layers: layer_names,
    }];
    append(&mut tw, "manifest.json", &to_json(&manifest));
    tw.finish().expect("write tar to memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_three_layers() {
        let l = layers_with(b"#!fake busybox\n");
        assert_eq!(l.len(), 3);
        let a = oci_layout_tar(&build(&l, Compression::Gzip), "x:1");
        let b = oci_layout_tar(&build(&l, Compression::Gzip), "x:1");
        assert_eq!(a, b);
        let d = docker_archive_tar(&l, "x:1");
        assert!(!d.is_empty());
    }
}
