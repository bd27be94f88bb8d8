//! Compiles the `.proto` files under this crate with protox (no system `protoc`) and generates
//! prost messages for every package, plus tonic clients and servers for the gRPC services.
//! Services of packages that run over ttrpc get messages only.

use std::path::{Path, PathBuf};

use prost::Message as _;

/// Packages whose services are served over ttrpc, not gRPC: no tonic code for them.
const TTRPC_PACKAGES: &[&str] = &["containerd.task.v2", "containerd.services.events.ttrpc.v1"];

/// Delegates to tonic's generator except for services in [`TTRPC_PACKAGES`].
struct GrpcOnly(Box<dyn prost_build::ServiceGenerator>);

impl prost_build::ServiceGenerator for GrpcOnly {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        if !TTRPC_PACKAGES.contains(&service.package.as_str()) {
            self.0.generate(service, buf);
        }
    }

    fn finalize(&mut self, buf: &mut String) {
        self.0.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        if !TTRPC_PACKAGES.contains(&package) {
            self.0.finalize_package(package, buf);
        }
    }
}

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut files = Vec::new();
    for top in ["containerd", "google", "grpc", "io"] {
        let dir = root.join(top);
        println!("cargo:rerun-if-changed={}", dir.display());
        proto_files(&dir, &mut files)?;
    }
    files.sort();
    let files: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(&root).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;

    let fds = protox::compile(&files, [&root])?;
    std::fs::write(out_dir.join("file_descriptor_set.bin"), fds.encode_to_vec())?;

    let services = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .service_generator();

    let mut config = prost_build::Config::new();
    config
        .out_dir(&out_dir)
        .service_generator(Box::new(GrpcOnly(services)))
        // `Name` impls: `full_name()` is the bare proto name that containerd uses as type URL.
        .enable_type_names()
        // Decoded without a copy: every ingested byte passes through this field.
        .bytes([".containerd.services.content.v1.WriteContentRequest.data"]);
    config.compile_fds(fds)?;
    Ok(())
}
