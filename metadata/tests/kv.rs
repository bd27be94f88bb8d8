//! The KV contract, written once and run against every backend, plus a crash
//! test (a child process committing in a loop, killed with SIGKILL).

use std::io::{BufRead, BufReader, Write};
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use berth_metadata::kv::{self, Backend, KvStore, ReadTxn};

type Factory<'a> = &'a dyn Fn(&Path) -> Box<dyn KvStore>;

fn backends() -> Vec<Backend> {
    #[allow(unused_mut)]
    let mut b = vec![Backend::Redb];
    #[cfg(feature = "sled")]
    b.push(Backend::Sled);
    b
}

fn store_path(dir: &Path, backend: Backend) -> PathBuf {
    dir.join(format!("store.{}", backend.as_str()))
}

fn open(dir: &Path, backend: Backend) -> Box<dyn KvStore> {
    kv::open(&store_path(dir, backend), backend).expect("open store")
}

fn get(kv: &dyn KvStore, key: &str) -> Option<String> {
    let tx = kv.begin_read().unwrap();
    tx.get(key.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

fn put(kv: &dyn KvStore, pairs: &[(&str, &str)]) {
    let mut tx = kv.begin_write().unwrap();
    for (k, v) in pairs {
        tx.put(k.as_bytes(), v.as_bytes()).unwrap();
    }
    tx.commit().unwrap();
}

fn keys_in(tx: &dyn ReadTxn, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Vec<String> {
    let mut out = Vec::new();
    tx.range(start, end, &mut |k, _| {
        out.push(String::from_utf8(k.to_vec()).unwrap());
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    out
}

fn prefix_keys(tx: &dyn ReadTxn, prefix: &str) -> Vec<String> {
    tx.collect_prefix(prefix.as_bytes())
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect()
}

/// The contract every backend must meet. `factory` opens (or reopens) the
/// store in the given directory.
fn kv_suite(factory: Factory<'_>) {
    commit_and_rollback(factory);
    own_writes_and_overlay_scans(factory);
    ranges_and_prefixes(factory);
    snapshot_isolation(factory);
    writers_serialize(factory);
    readers_never_see_half_a_commit(factory);
    durable_across_reopen(factory);
}

fn commit_and_rollback(factory: Factory<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let kv = factory(dir.path());
    assert_eq!(get(&*kv, "a"), None);
    put(&*kv, &[("a", "1")]);
    assert_eq!(get(&*kv, "a").as_deref(), Some("1"));

    // Dropped write transaction: rolled back.
    {
        let mut tx = kv.begin_write().unwrap();
        tx.put(b"a", b"2").unwrap();
        tx.put(b"b", b"2").unwrap();
        assert!(tx.delete(b"a").unwrap());
    }
    assert_eq!(get(&*kv, "a").as_deref(), Some("1"));
    assert_eq!(get(&*kv, "b"), None);

    // Error inside `update`: rolled back, error returned.
    let r: berth_metadata::Result<()> = kv::update(&*kv, |tx| {
        tx.put(b"c", b"3")?;
        Err(berth_metadata::Error::InvalidArgument("boom".into()))
    });
    assert!(r.is_err());
    assert_eq!(get(&*kv, "c"), None);

    // Delete reports existence.
    let mut tx = kv.begin_write().unwrap();
    assert!(tx.delete(b"a").unwrap());
    assert!(!tx.delete(b"a").unwrap());
    assert!(!tx.delete(b"zz").unwrap());
    tx.commit().unwrap();
    assert_eq!(get(&*kv, "a"), None);

    // An empty commit is fine.
    kv.begin_write().unwrap().commit().unwrap();
}

fn own_writes_and_overlay_scans(factory: Factory<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let kv = factory(dir.path());
    put(
        &*kv,
        &[("p/1", "t1"), ("p/3", "t3"), ("p/5", "t5"), ("q/1", "x")],
    );
    let mut tx = kv.begin_write().unwrap();
    tx.put(b"p/2", b"w2").unwrap();
    tx.put(b"p/3", b"w3").unwrap(); // shadows the tree
    tx.delete(b"p/5").unwrap();
    tx.put(b"p/6", b"w6").unwrap();
    tx.delete(b"p/6").unwrap(); // put then delete
    tx.put(b"p/0", b"w0").unwrap();
    assert_eq!(tx.get(b"p/3").unwrap().as_deref(), Some(&b"w3"[..]));
    assert_eq!(tx.get(b"p/5").unwrap(), None);
    let got: Vec<(String, String)> = tx
        .collect_prefix(b"p/")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("p/0".to_string(), "w0".to_string()),
            ("p/1".into(), "t1".into()),
            ("p/2".into(), "w2".into()),
            ("p/3".into(), "w3".into()),
        ]
    );
    // Early stop works over the merge too.
    let mut n = 0;
    tx.scan_prefix(b"p/", &mut |_, _| {
        n += 1;
        Ok(if n == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })
    .unwrap();
    assert_eq!(n, 2);
    // delete_prefix sees both tree and overlay keys.
    assert_eq!(tx.delete_prefix(b"p/").unwrap(), 4);
    assert!(!tx.has_prefix(b"p/").unwrap());
    assert!(tx.has_prefix(b"q/").unwrap());
    // Nothing visible to readers before commit.
    assert_eq!(get(&*kv, "p/0"), None);
    assert_eq!(get(&*kv, "p/1").as_deref(), Some("t1"));
    tx.commit().unwrap();
    let r = kv.begin_read().unwrap();
    assert!(prefix_keys(&*r, "p/").is_empty());
    assert_eq!(prefix_keys(&*r, "q/"), vec!["q/1"]);
}

fn ranges_and_prefixes(factory: Factory<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let kv = factory(dir.path());
    put(
        &*kv,
        &[
            ("a", "1"),
            ("b", "2"),
            ("b\u{0}", "x"),
            ("ba", "3"),
            ("c", "4"),
        ],
    );
    put(&*kv, &[("\u{ff}", "hi")]);
    let tx = kv.begin_read().unwrap();
    let b = |s: &'static str| s.as_bytes();
    assert_eq!(
        keys_in(&*tx, Bound::Included(b("b")), Bound::Excluded(b("c"))),
        vec!["b", "b\u{0}", "ba"]
    );
    assert_eq!(
        keys_in(&*tx, Bound::Excluded(b("b")), Bound::Included(b("c"))),
        vec!["b\u{0}", "ba", "c"]
    );
    assert_eq!(
        keys_in(&*tx, Bound::Unbounded, Bound::Excluded(b("b"))),
        vec!["a"]
    );
    // Empty and inverted ranges are empty, not a panic.
    assert!(keys_in(&*tx, Bound::Included(b("c")), Bound::Excluded(b("a"))).is_empty());
    assert!(keys_in(&*tx, Bound::Excluded(b("b")), Bound::Excluded(b("b"))).is_empty());
    assert_eq!(prefix_keys(&*tx, "b"), vec!["b", "b\u{0}", "ba"]);
    assert_eq!(prefix_keys(&*tx, "\u{ff}"), vec!["\u{ff}"]);
    assert_eq!(prefix_keys(&*tx, "").len(), 6);
    let first = tx
        .first_in(Bound::Excluded(b("b")), Bound::Unbounded)
        .unwrap()
        .unwrap();
    assert_eq!(first.0, b"b\0");
}

fn snapshot_isolation(factory: Factory<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn KvStore> = Arc::from(factory(dir.path()));
    put(&*kv, &[("k", "old"), ("j", "old")]);
    let reader = kv.begin_read().unwrap();
    let committed = Arc::new(AtomicBool::new(false));
    let writer = {
        let kv = Arc::clone(&kv);
        let committed = Arc::clone(&committed);
        std::thread::spawn(move || {
            put(&*kv, &[("k", "new"), ("n", "new")]);
            committed.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    // Whether or not the commit went through already (redb: yes; sled: it
    // waits for this reader), the snapshot is unchanged.
    assert_eq!(reader.get(b"k").unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(reader.get(b"n").unwrap(), None);
    assert_eq!(prefix_keys(&*reader, ""), vec!["j", "k"]);
    drop(reader);
    writer.join().unwrap();
    assert!(committed.load(Ordering::SeqCst));
    assert_eq!(get(&*kv, "k").as_deref(), Some("new"));
}

fn writers_serialize(factory: Factory<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn KvStore> = Arc::from(factory(dir.path()));
    put(&*kv, &[("counter", "0")]);
    let threads = 4;
    let per = 25;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let kv = Arc::clone(&kv);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per {
                    kv::update(&*kv, |tx| {
                        let v: u64 = String::from_utf8(tx.get(b"counter")?.unwrap())
                            .unwrap()
                            .parse()
                            .unwrap();
                        tx.put(b"counter", (v + 1).to_string().as_bytes())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(get(&*kv, "counter"), Some((threads * per).to_string()));
}

fn readers_never_see_half_a_commit(factory: Factory<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn KvStore> = Arc::from(factory(dir.path()));
    put(&*kv, &[("x", "0"), ("y", "0")]);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let kv = Arc::clone(&kv);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let tx = kv.begin_read().unwrap();
                    let x = tx.get(b"x").unwrap();
                    let y = tx.get(b"y").unwrap();
                    assert_eq!(x, y, "torn read");
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    for i in 1..=40 {
        let v = i.to_string();
        put(&*kv, &[("x", &v), ("y", &v)]);
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

fn durable_across_reopen(factory: Factory<'_>) {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = factory(dir.path());
        put(&*kv, &[("persist", "yes"), ("gone", "soon")]);
        let mut tx = kv.begin_write().unwrap();
        tx.delete(b"gone").unwrap();
        tx.commit().unwrap();
        let mut tx = kv.begin_write().unwrap();
        tx.put(b"uncommitted", b"x").unwrap();
        drop(tx);
    }
    let kv = factory(dir.path());
    assert_eq!(get(&*kv, "persist").as_deref(), Some("yes"));
    assert_eq!(get(&*kv, "gone"), None);
    assert_eq!(get(&*kv, "uncommitted"), None);
}

#[test]
fn kv_suite_all_backends() {
    for backend in backends() {
        eprintln!("kv suite: {}", backend.as_str());
        kv_suite(&|dir: &Path| open(dir, backend));
    }
}

#[cfg(not(feature = "sled"))]
#[test]
fn sled_without_feature_is_not_implemented() {
    let dir = tempfile::tempdir().unwrap();
    let err = kv::open(&dir.path().join("x"), Backend::Sled)
        .err()
        .expect("sled must be refused without the feature");
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::NotImplemented);
}

// ---------------------------------------------------------------------------
// Crash test.

const CHILD_ENV: &str = "BERTH_KV_CRASH_CHILD";

fn backend_from_name(name: &str) -> Backend {
    match name {
        "redb" => Backend::Redb,
        "sled" => Backend::Sled,
        other => panic!("unknown backend {other}"),
    }
}

fn crash_key(i: u64, part: &str) -> String {
    format!("crash/{i:010}/{part}")
}

/// In the child (only when `BERTH_KV_CRASH_CHILD=<backend>:<dir>:<start>` is
/// set): commit transactions in a loop, printing `COMMITTED <i>` after each
/// commit returns, until killed.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    let backend = backend_from_name(parts.next().unwrap());
    let dir = PathBuf::from(parts.next().unwrap());
    let start: u64 = parts.next().unwrap().parse().unwrap();
    let kv = open(&dir, backend);
    let mut out = std::io::stdout().lock();
    for i in start.. {
        let v = i.to_string();
        let mut tx = kv.begin_write().unwrap();
        // Several keys per transaction, one of them 4 KiB, to check atomicity.
        tx.put(crash_key(i, "a").as_bytes(), v.as_bytes()).unwrap();
        tx.put(
            crash_key(i, "b").as_bytes(),
            v.repeat(4096 / v.len().max(1)).as_bytes(),
        )
        .unwrap();
        tx.put(crash_key(i, "c").as_bytes(), v.as_bytes()).unwrap();
        tx.put(b"crash/last", v.as_bytes()).unwrap();
        tx.commit().unwrap();
        writeln!(out, "COMMITTED {i}").unwrap();
        out.flush().unwrap();
    }
}

struct Round {
    reported: usize,
    found: usize,
    unreported_found: usize,
    kill_after_ms: u64,
    reopen_ms: u128,
}

fn crash_rounds(backend: Backend, rounds: usize) -> Vec<Round> {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut next: u64 = 0;
    let mut all_reported: Vec<u64> = Vec::new();
    let mut results = Vec::new();
    // Deterministic spread of kill times.
    let delays = [150u64, 420, 60, 700, 260, 35, 510, 330];
    for round in 0..rounds {
        let kill_after_ms = delays[round % delays.len()];
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_ENV,
                format!("{}:{}:{next}", backend.as_str(), dir.path().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test crash_child ... " on the same line.
                if let Some(pos) = line.find("COMMITTED ") {
                    let n = line[pos + "COMMITTED ".len()..].trim();
                    got.push(n.parse::<u64>().expect("a whole number"));
                    let _ = first_tx.send(());
                }
            }
            got
        });
        // Kill a while after the child's first commit (a loaded machine may take long to
        // get it going).
        if first_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("round {round}: crash child committed nothing within 60 s");
        }
        if child.try_wait().unwrap().is_some() {
            panic!("crash child exited on its own");
        }
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let reported = reader.join().unwrap();
        assert!(
            !reported.is_empty(),
            "round {round}: child committed nothing"
        );

        // Reopen and check.
        let t1 = Instant::now();
        let kv = open(dir.path(), backend);
        let reopen_ms = t1.elapsed().as_millis();
        let tx = kv.begin_read().unwrap();
        for &i in &reported {
            let v = i.to_string();
            let a = tx.get(crash_key(i, "a").as_bytes()).unwrap();
            assert_eq!(
                a.as_deref(),
                Some(v.as_bytes()),
                "round {round}: lost commit {i}"
            );
            assert!(tx.get(crash_key(i, "b").as_bytes()).unwrap().is_some());
            assert!(tx.get(crash_key(i, "c").as_bytes()).unwrap().is_some());
        }
        all_reported.extend(&reported);
        // Atomicity: every transaction is all there or not at all.
        let mut found = 0usize;
        let mut max_found = 0u64;
        let mut per_txn: std::collections::BTreeMap<u64, usize> = Default::default();
        tx.scan_prefix(b"crash/0", &mut |k, _| {
            let k = std::str::from_utf8(k).unwrap();
            let i: u64 = k[6..16].parse().unwrap();
            *per_txn.entry(i).or_default() += 1;
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        for (&i, &n) in &per_txn {
            assert_eq!(
                n, 3,
                "round {round}: transaction {i} is torn ({n} of 3 keys)"
            );
            found += 1;
            max_found = max_found.max(i);
        }
        for &i in &all_reported {
            assert!(
                per_txn.contains_key(&i),
                "lost commit {i} from an earlier round"
            );
        }
        let last: u64 = String::from_utf8(tx.get(b"crash/last").unwrap().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(last, max_found, "round {round}: crash/last disagrees");
        let round_found = per_txn.range(next..).count();
        let unreported_found = round_found - reported.len();
        // At most the one transaction in flight at the kill is present
        // without having been reported.
        assert!(
            unreported_found <= 1,
            "round {round}: {unreported_found} unreported: reported {:?}..{:?}, found {:?}",
            reported.first(),
            reported.last(),
            per_txn.range(next..).map(|(i, _)| *i).collect::<Vec<_>>()
        );
        drop(tx);
        // The reopened store takes writes.
        put(&*kv, &[("crash-check", "ok")]);
        drop(kv);
        results.push(Round {
            reported: reported.len(),
            found: round_found,
            unreported_found,
            kill_after_ms,
            reopen_ms,
        });
        let _ = found;
        next = max_found + 1;
    }
    results
}

#[test]
fn crash_test_all_backends() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for backend in backends() {
        let rounds = crash_rounds(backend, 6);
        let total: usize = rounds.iter().map(|r| r.reported).sum();
        for (i, r) in rounds.iter().enumerate() {
            eprintln!(
                "crash {} round {i}: killed after ~{}ms, {} commits reported, {} present after reopen ({} unreported), reopen {}ms",
                backend.as_str(),
                r.kill_after_ms + 200,
                r.reported,
                r.found,
                r.unreported_found,
                r.reopen_ms
            );
        }
        eprintln!(
            "crash {}: {} rounds, {total} reported commits, 0 lost, 0 torn",
            backend.as_str(),
            rounds.len()
        );
    }
}
