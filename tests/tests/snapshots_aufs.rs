//! The snapshotter conformance suite against the aufs backend directly
//! (kernel aufs where the host has it, else the `berth-aufs` FUSE union
//! through `mount.fuse3`, as stock tools mount it). Root, real mounts.

use std::path::Path;

use berth_snapshotter::{AufsSnapshotter, Snapshotter};

fn aufs(root: &Path) -> Box<dyn Snapshotter> {
    berth_tests::helpers_on_path();
    match AufsSnapshotter::new(root) {
        Ok(s) => Box::new(s),
        Err(e) => panic!("aufs snapshotter in {}: {e}", root.display()),
    }
}

berth_snapshotter::snapshotter_suite_tests!(berth_snapshotter::aufs::NAME, aufs);
