//! The conformance suite against the overlay backend (root, real mounts).

use std::path::Path;

use berth_snapshotter::{OverlaySnapshotter, Snapshotter};

fn overlay(root: &Path) -> Box<dyn Snapshotter> {
    match OverlaySnapshotter::new(root) {
        Ok(s) => Box::new(s),
        Err(e) => panic!("overlay snapshotter in {}: {e}", root.display()),
    }
}

berth_snapshotter::snapshotter_suite_tests!(berth_snapshotter::overlay::NAME, overlay);
