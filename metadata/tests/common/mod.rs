//! Shared helpers: a Db over a real blob store in a temp dir, per backend.
#![allow(dead_code)]

use std::sync::Arc;

use berth_content::{Digest, Store};
use berth_metadata::{Backend, ContentWriterOpts, Db, DbOptions, Labels};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub db: Arc<Db>,
    pub backend: Backend,
}

pub fn backends() -> Vec<Backend> {
    #[allow(unused_mut)]
    let mut b = vec![Backend::Redb];
    #[cfg(feature = "sled")]
    b.push(Backend::Sled);
    b
}

pub fn env(backend: Backend) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("content")).unwrap());
    let db = Db::open(
        DbOptions {
            path: dir.path().join("metadata"),
            backend,
        },
        Arc::clone(&store),
    )
    .unwrap();
    Env {
        dir,
        store,
        db,
        backend,
    }
}

/// Runs `f` once per enabled backend, each with a fresh environment.
pub fn each_backend(f: impl Fn(&Env)) {
    for b in backends() {
        eprintln!("backend: {}", b.as_str());
        f(&env(b));
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes and commits `data` in `ns` under ref `reference`.
pub fn write_blob(
    env: &Env,
    ns: &str,
    reference: &str,
    data: &[u8],
    lease: Option<&str>,
    l: Labels,
) -> Digest {
    let mut w = env
        .db
        .content()
        .writer(
            ns,
            ContentWriterOpts {
                reference: reference.to_string(),
                total: Some(data.len() as u64),
                expected: None,
                lease: lease.map(str::to_string),
            },
        )
        .unwrap();
    w.write(data).unwrap();
    w.commit(data.len() as u64, Some(Digest::of_bytes(data)), l)
        .unwrap()
}

pub fn read_all(env: &Env, ns: &str, d: &Digest) -> Vec<u8> {
    let r = env.db.content().reader(ns, d).unwrap();
    let mut buf = vec![0u8; r.size() as usize];
    let mut off = 0;
    while off < buf.len() {
        let n = r.read_at(off as u64, &mut buf[off..]).unwrap();
        assert!(n > 0);
        off += n;
    }
    buf
}

pub fn on_disk(env: &Env, d: &Digest) -> bool {
    env.store.info(d).is_ok()
}
