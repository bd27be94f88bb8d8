//! Compressed layers: gzip and zstd written by `write_layer`, applied by
//! `apply_blob` with both digests verified.

mod common;

use std::io::Read;

use berth_archive::compression::Compression;
use berth_archive::corpus::LayerBuilder;
use berth_archive::{
    apply_blob, write_layer, write_tree, ApplyOptions, DecompressReader, WhiteoutMode,
};
use berth_content::Digest;
use berth_errdefs::ErrorKind;
use common::{apply, mkdir, snapshot};

fn source_layer() -> Vec<u8> {
    let big: Vec<u8> = (0..(2u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    LayerBuilder::new()
        .dir("bin/")
        .file("bin/tool", &big)
        .file("bin/small", b"small")
        .symlink("sh", "bin/tool")
        .finish()
}

#[test]
fn compressed_layers_apply_with_verified_digests() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = mkdir(tmp.path(), "src");
    apply(&source_layer(), &src, WhiteoutMode::Remove);
    let want = snapshot(&src, false);

    for compression in [
        Compression::Uncompressed,
        Compression::Gzip,
        Compression::Zstd,
    ] {
        let mut blob = Vec::new();
        let written = write_layer(&mut blob, compression, |w| write_tree(&src, w)).unwrap();
        assert_eq!(written.digest, Digest::of_bytes(&blob));
        assert_eq!(written.size, blob.len() as u64);
        assert_eq!(Compression::detect(&blob), compression);
        let mut tar = Vec::new();
        DecompressReader::new(&blob[..])
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(written.diff_id, Digest::of_bytes(&tar));
        assert_eq!(written.uncompressed_size, tar.len() as u64);
        if compression != Compression::Uncompressed {
            assert!(blob.len() < tar.len());
        }

        let dst = mkdir(tmp.path(), &format!("dst-{}", compression.as_str()));
        let applied = apply_blob(
            &blob[..],
            &dst,
            &ApplyOptions::default(),
            Some(&written.digest),
            Some(&written.diff_id),
        )
        .unwrap();
        assert_eq!(applied.compression, compression);
        assert_eq!(applied.digest, written.digest);
        assert_eq!(applied.diff_id, written.diff_id);
        assert_eq!(applied.size, blob.len() as u64);
        assert_eq!(applied.uncompressed_size, tar.len() as u64);
        assert_eq!(snapshot(&dst, false), want);

        // A wrong expected digest is InvalidArgument.
        let wrong = Digest::of_bytes(b"something else");
        for (d, id) in [(Some(&wrong), None), (None, Some(&wrong))] {
            let dst = tempfile::tempdir().unwrap();
            let err =
                apply_blob(&blob[..], dst.path(), &ApplyOptions::default(), d, id).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
            assert!(err.to_string().contains("digest mismatch"), "{err}");
        }
    }
}

#[test]
fn corrupt_compressed_stream_is_invalid() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = mkdir(tmp.path(), "src");
    apply(&source_layer(), &src, WhiteoutMode::Remove);
    for compression in [Compression::Gzip, Compression::Zstd] {
        let mut blob = Vec::new();
        write_layer(&mut blob, compression, |w| write_tree(&src, w)).unwrap();
        blob.truncate(blob.len() / 2);
        let dst = tempfile::tempdir().unwrap();
        let err =
            apply_blob(&blob[..], dst.path(), &ApplyOptions::default(), None, None).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "{compression:?}: {err}"
        );
    }
}
