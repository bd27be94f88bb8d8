//! The conformance suite against the native backend (root, real mounts).

use std::path::Path;

use berth_snapshotter::{NativeSnapshotter, Snapshotter};

fn native(root: &Path) -> Box<dyn Snapshotter> {
    match NativeSnapshotter::new(root) {
        Ok(s) => Box::new(s),
        Err(e) => panic!("native snapshotter in {}: {e}", root.display()),
    }
}

berth_snapshotter::snapshotter_suite_tests!(berth_snapshotter::native::NAME, native);
