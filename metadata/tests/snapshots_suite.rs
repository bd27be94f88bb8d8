//! The snapshotter conformance suite (`berth_snapshotter::testsuite`) run
//! through the metadata layer: an adapter implements `Snapshotter` over
//! `Db::snapshots(..)` for one namespace, on top of the real overlay and
//! native backends (root, real mounts), as containerd runs its suite over
//! `metadata/snapshot.go`.

use std::path::Path;
use std::sync::Arc;

use berth_content::Store;
use berth_errdefs::ErrorKind;
use berth_metadata::{Backend, Db, DbOptions};
use berth_snapshotter::{Error, Info, Labels, Mount, Result, Snapshotter, Usage};

const NS: &str = "testsuite";

/// A metadata-layer snapshotter for namespace [`NS`]; owns its `Db` (so the
/// suite's reopen opens the store again and runs recovery).
struct Namespaced {
    db: Arc<Db>,
    name: &'static str,
}

fn open(root: &Path, name: &'static str, backend: Box<dyn Snapshotter>) -> Box<dyn Snapshotter> {
    let store = Arc::new(Store::open(root.join("content")).expect("content store"));
    let db = Db::open(
        DbOptions {
            path: root.join("metadata"),
            backend: Backend::Redb,
        },
        store,
    )
    .expect("metadata store");
    db.register_snapshotter(name, Arc::from(backend))
        .expect("register snapshotter");
    Box::new(Namespaced { db, name })
}

/// Back to the snapshotter crate's vocabulary, by kind.
fn err(e: berth_metadata::Error) -> Error {
    let m = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => Error::NotFound(m),
        ErrorKind::AlreadyExists => Error::AlreadyExists(m),
        ErrorKind::InvalidArgument => Error::InvalidArgument(m),
        ErrorKind::FailedPrecondition => Error::FailedPrecondition(m),
        ErrorKind::NotImplemented => Error::Unsupported(m),
        _ => Error::Storage(m),
    }
}

impl Namespaced {
    fn s(&self) -> Result<berth_metadata::Snapshots<'_>> {
        self.db.snapshots(self.name).map_err(err)
    }
}

impl Snapshotter for Namespaced {
    fn stat(&self, key: &str) -> Result<Info> {
        self.s()?.stat(NS, key).map_err(err)
    }
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.s()?.update(NS, info, fieldpaths).map_err(err)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.s()?.usage(NS, key).map_err(err)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.s()?.mounts(NS, key).map_err(err)
    }
    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.s()?
            .prepare(NS, key, parent, labels, None)
            .map_err(err)
    }
    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.s()?.view(NS, key, parent, labels, None).map_err(err)
    }
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.s()?.commit(NS, name, key, labels, None).map_err(err)
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.s()?.remove(NS, key, None).map_err(err)
    }
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        // The callback's errors travel through the metadata error and back.
        let mut inner: Option<Error> = None;
        let r = self.s()?.walk(NS, filters, &mut |info| {
            f(info).map_err(|e| {
                let m = berth_metadata::Error::InvalidArgument(e.to_string());
                inner = Some(e);
                m
            })
        });
        match (r, inner) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(err(e)),
        }
    }
    fn cleanup(&self) -> Result<()> {
        self.s()?.cleanup().map_err(err)
    }
}

mod native {
    use super::*;

    fn factory(root: &Path) -> Box<dyn Snapshotter> {
        let backend = berth_snapshotter::NativeSnapshotter::new(root.join("native"))
            .unwrap_or_else(|e| panic!("native snapshotter in {}: {e}", root.display()));
        open(root, berth_snapshotter::native::NAME, Box::new(backend))
    }

    berth_snapshotter::snapshotter_suite_tests!(berth_snapshotter::native::NAME, factory);
}

mod overlay {
    use super::*;

    fn factory(root: &Path) -> Box<dyn Snapshotter> {
        let backend = berth_snapshotter::OverlaySnapshotter::new(root.join("overlay"))
            .unwrap_or_else(|e| panic!("overlay snapshotter in {}: {e}", root.display()));
        open(root, berth_snapshotter::overlay::NAME, Box::new(backend))
    }

    berth_snapshotter::snapshotter_suite_tests!(berth_snapshotter::overlay::NAME, factory);
}
