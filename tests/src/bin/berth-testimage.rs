//! Writes the bundled test image: a busybox root filesystem from the host's
//! `/bin/busybox` (Debian `busybox-static`), several layers with a whiteout
//! and an opaque directory, as an OCI image layout tar (default) or a
//! docker-archive tar.
//!
//! `berth-testimage [--docker] [--name NAME] OUT.tar`

use anyhow::{bail, Context};
use berth_archive::compression::Compression;
use berth_image::testimage;

const DEFAULT_NAME: &str = "docker.io/berth/busybox:latest";

fn main() -> anyhow::Result<()> {
    let mut docker = false;
    let mut name = DEFAULT_NAME.to_string();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--docker" => docker = true,
            "--name" => name = args.next().context("--name needs a value")?,
            "-h" | "--help" => {
                println!("usage: berth-testimage [--docker] [--name NAME] OUT.tar");
                return Ok(());
            }
            other if out.is_none() && !other.starts_with('-') => out = Some(other.to_string()),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let out = out.context("usage: berth-testimage [--docker] [--name NAME] OUT.tar")?;
    if !std::path::Path::new("/bin/busybox").exists() {
        bail!("/bin/busybox not found: install busybox-static");
    }
    let layers = testimage::layers();
    let tar = if docker {
        testimage::docker_archive_tar(&layers, &name)
    } else {
        testimage::oci_layout_tar(&testimage::build(&layers, Compression::Gzip), &name)
    };
    std::fs::write(&out, tar).with_context(|| format!("write {out}"))?;
    println!("{name}");
    Ok(())
}
