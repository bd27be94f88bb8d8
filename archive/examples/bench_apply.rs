//! Rough throughput of apply/diff on a generated layer:
//! `cargo run --release -p berth-archive --example bench_apply -- <MiB> <dir>`
use std::time::Instant;

use berth_archive::corpus::LayerBuilder;
use berth_archive::{apply_blob, write_layer, write_tree, ApplyOptions, Compression};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let base = std::path::PathBuf::from(args.get(2).cloned().unwrap_or("/tmp/berth-bench".into()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    // Mixed files: many small, some medium, a few large; half compressible.
    let mut b = LayerBuilder::new();
    let mut total = 0usize;
    let mut i = 0u64;
    let mut x: u64 = 88172645463325252;
    while total < mib << 20 {
        let size = match i % 100 {
            0 => 4 << 20,
            1..=10 => 256 << 10,
            _ => 4 << 10,
        };
        if i.is_multiple_of(50) {
            b = b.dir(&format!("d{}/", i / 50));
        }
        let data: Vec<u8> = (0..size)
            .map(|k| {
                if k % 2 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                } else {
                    b'a'
                }
            })
            .collect();
        b = b.file(&format!("d{}/f{i}", i / 50), &data);
        total += size;
        i += 1;
    }
    let tar = b.finish();
    println!("layer: {} files, {} MiB tar", i, tar.len() >> 20);
    let src = base.join("src");
    std::fs::create_dir_all(&src).unwrap();
    berth_archive::apply_layer(&tar[..], &src, &ApplyOptions::default()).unwrap();
    let dst = base.join("plain");
    std::fs::create_dir_all(&dst).unwrap();
    let t = Instant::now();
    berth_archive::apply_layer(&tar[..], &dst, &ApplyOptions::default()).unwrap();
    println!(
        "apply_layer alone: {:.0} MiB/s",
        (tar.len() >> 20) as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut d = berth_archive::DigestReader::new(&tar[..]);
    d.finish().unwrap();
    println!(
        "sha256: {:.0} MiB/s",
        (tar.len() >> 20) as f64 / t.elapsed().as_secs_f64()
    );
    for c in [
        Compression::Uncompressed,
        Compression::Gzip,
        Compression::Zstd,
    ] {
        let t = Instant::now();
        let mut blob = Vec::new();
        let w = write_layer(&mut blob, c, |w| write_tree(&src, w)).unwrap();
        let wt = t.elapsed();
        let t = Instant::now();
        let mut d = berth_archive::DigestReader::new(
            berth_archive::DecompressReader::new(berth_archive::DigestReader::new(&blob[..]))
                .unwrap(),
        );
        d.finish().unwrap();
        println!(
            "  decompress+2 digests: {:.0} MiB/s",
            w.uncompressed_size as f64 / 1048576.0 / t.elapsed().as_secs_f64()
        );
        let dst = base.join(format!("dst-{}", c.as_str()));
        std::fs::create_dir_all(&dst).unwrap();
        let t = Instant::now();
        apply_blob(
            &blob[..],
            &dst,
            &ApplyOptions::default(),
            Some(&w.digest),
            Some(&w.diff_id),
        )
        .unwrap();
        let at = t.elapsed();
        let mb = w.uncompressed_size as f64 / 1048576.0;
        println!(
            "{:12} blob {:5} MiB  write {:6.0} MiB/s  apply {:6.0} MiB/s",
            c.as_str(),
            blob.len() >> 20,
            mb / wt.as_secs_f64(),
            mb / at.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}
