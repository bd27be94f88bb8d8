//! Behaviour of the content store, modelled on containerd's
//! `core/content/testsuite/testsuite.go`, on real temp directories.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::SystemTime;

use berth_content::{Digest, Error, Status, Store, Writer, WriterOpts};
use berth_errdefs::{Classify, ErrorKind};
use bytes::Bytes;

const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("content")).expect("open store");
    (dir, store)
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
fn content(size: usize, seed: u64) -> (Vec<u8>, Digest) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let d = Digest::of_bytes(&data);
    (data, d)
}

fn opts(reference: &str, total: Option<u64>, expected: Option<Digest>) -> WriterOpts {
    WriterOpts {
        reference: reference.to_string(),
        total,
        expected,
    }
}

fn writer(s: &Store, reference: &str) -> Writer {
    s.writer(opts(reference, None, None)).expect("open writer")
}

#[track_caller]
fn assert_kind<T: std::fmt::Debug>(r: Result<T, Error>, kind: ErrorKind) -> Error {
    match r {
        Ok(v) => panic!("expected {kind} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "wrong kind for error: {e}");
            assert_eq!(Classify::kind(&e), kind);
            e
        }
    }
}

fn read_all(s: &Store, d: &Digest) -> Vec<u8> {
    let mut r = s.reader(d).expect("reader");
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("read");
    out
}

/// Writes in small chunks, as a streaming client would.
fn write_chunks(w: &mut Writer, data: &[u8]) {
    for chunk in data.chunks(32) {
        w.write(chunk).expect("write");
    }
}

#[track_caller]
fn check_status(
    st: &Status,
    expected: &Status,
    started: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) {
    assert_eq!(st.reference, expected.reference);
    assert_eq!(st.offset, expected.offset);
    assert_eq!(st.total, expected.total);
    assert_eq!(st.expected, expected.expected);
    assert!(
        st.started_at >= started.0 && st.started_at <= started.1,
        "started_at {:?} not in {started:?}",
        st.started_at
    );
    assert!(
        st.updated_at >= updated.0 && st.updated_at <= updated.1,
        "updated_at {:?} not in {updated:?}",
        st.updated_at
    );
}

#[test]
fn layout_on_open() {
    let (dir, _s) = store();
    assert!(dir.path().join("content/blobs/sha256").is_dir());
    assert!(dir.path().join("content/ingest").is_dir());
    // Reopening an existing store works.
    Store::open(dir.path().join("content")).unwrap();
}

#[test]
fn writer_with_ref_size_and_digest() {
    let (_dir, s) = store();
    let cases: Vec<(WriterOpts, Vec<u8>, Digest)> = (0..5)
        .map(|i| {
            let size = if i == 4 { 3 << 20 } else { 256 };
            let (data, d) = content(size, i);
            let len = data.len() as u64;
            let o = match i {
                0 => opts("c1", None, None),
                1 => opts("c2", Some(len), None),
                2 => opts("c3", None, Some(d)),
                _ => opts(&format!("c{}", i + 1), Some(len), Some(d)),
            };
            (o, data, d)
        })
        .collect();
    // All writers live at once.
    let mut writers: Vec<Writer> = cases
        .iter()
        .map(|(o, _, _)| s.writer(o.clone()).unwrap())
        .collect();
    for (w, (_, data, d)) in writers.iter_mut().zip(&cases) {
        write_chunks(w, data);
        let pre = SystemTime::now();
        let got = w.commit(0, None).unwrap();
        let post = SystemTime::now();
        assert_eq!(got, *d);
        assert_eq!(w.digest(), *d);
        let info = s.info(d).unwrap();
        assert_eq!(info.digest, *d);
        assert_eq!(info.size, data.len() as u64);
        assert!(
            info.created_at >= pre && info.created_at <= post,
            "{info:?}"
        );
        assert!(
            info.updated_at >= pre && info.updated_at <= post,
            "{info:?}"
        );
        assert_eq!(read_all(&s, d), *data);
    }
    // Ingests are gone, blobs are read-only.
    assert!(s.list_statuses().unwrap().is_empty());
    let p = s.root().join("blobs/sha256").join(cases[0].2.hex());
    assert_eq!(
        std::fs::metadata(p).unwrap().permissions().mode() & 0o222,
        0
    );
}

#[test]
fn empty_blob() {
    let (_dir, s) = store();
    let mut w = writer(&s, "empty");
    assert_eq!(w.digest().to_string(), EMPTY);
    let d = w.commit(0, Some(Digest::parse(EMPTY).unwrap())).unwrap();
    assert_eq!(d.to_string(), EMPTY);
    assert_eq!(s.info(&d).unwrap().size, 0);
    let r = s.reader(&d).unwrap();
    assert_eq!(r.size(), 0);
    assert_eq!(r.read_at(0, &mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn update_status() {
    let (_dir, s) = store();
    let (data, d) = content(256, 7);
    let pre_start = SystemTime::now();
    let mut w = s.writer(opts("c1", Some(256), Some(d))).unwrap();
    let post_start = SystemTime::now();
    let mut expected = Status {
        reference: "c1".into(),
        offset: 0,
        total: 256,
        expected: Some(d),
        started_at: pre_start,
        updated_at: pre_start,
    };
    let started = (pre_start, post_start);
    check_status(&w.status(), &expected, started, started);
    assert_eq!(w.digest().to_string(), EMPTY);
    check_status(&s.status("c1").unwrap(), &expected, started, started);

    let mut last_updated = w.status().updated_at;
    for (from, to) in [(0, 64), (64, 192), (192, 256)] {
        let pre = SystemTime::now();
        w.write(&data[from..to]).unwrap();
        let post = SystemTime::now();
        expected.offset = to as u64;
        check_status(&w.status(), &expected, started, (pre, post));
        assert_eq!(w.digest(), Digest::of_bytes(&data[..to]));
        assert!(w.status().updated_at >= last_updated);
        last_updated = w.status().updated_at;
        // The store sees the same progress from disk.
        let disk = s.status("c1").unwrap();
        assert_eq!(disk.offset, to as u64);
        assert_eq!(disk.total, 256);
        assert_eq!(disk.expected, Some(d));
        assert_eq!(disk.started_at, w.status().started_at);
    }
    assert_eq!(w.digest(), d);
    assert_eq!(w.commit(0, None).unwrap(), d);
    assert_kind(s.status("c1"), ErrorKind::NotFound);
}

#[test]
fn resume_keeps_started_at_and_digest() {
    let (_dir, s) = store();
    let (data, d) = content(256, 11);
    let (first, second) = data.split_at(128);

    let pre_start = SystemTime::now();
    let mut w1 = s.writer(opts("cb", Some(256), Some(d))).unwrap();
    let post_start = SystemTime::now();
    let pre_update = SystemTime::now();
    w1.write(first).unwrap();
    let post_update = SystemTime::now();
    let st1 = w1.status();
    assert_eq!(w1.digest(), Digest::of_bytes(first));
    drop(w1);

    let w2 = s.writer(opts("cb", Some(256), Some(d))).unwrap();
    let st2 = w2.status();
    assert_eq!(
        st2, st1,
        "status after resume must match the one before drop"
    );
    check_status(
        &st2,
        &st1,
        (pre_start, post_start),
        (pre_update, post_update),
    );
    assert_eq!(w2.digest(), Digest::of_bytes(first));
    drop(w2);

    // Resuming without declaring total/expected keeps the stored ones.
    let mut w3 = writer(&s, "cb");
    assert_eq!(w3.status().total, 256);
    assert_eq!(w3.status().expected, Some(d));
    assert_eq!(w3.status().started_at, st1.started_at);
    let pre = SystemTime::now();
    w3.write(second).unwrap();
    assert!(w3.status().updated_at >= pre);
    assert_eq!(w3.status().offset, 256);
    assert_eq!(w3.digest(), d);
    assert_eq!(w3.commit(256, Some(d)).unwrap(), d);
    assert_eq!(read_all(&s, &d), data);
}

#[test]
fn explicit_close_then_resume() {
    let (_dir, s) = store();
    let (data, d) = content(1000, 12);
    let mut w = writer(&s, "closed");
    w.write(&data[..400]).unwrap();
    let st = w.status();
    w.close().unwrap();
    let mut w = writer(&s, "closed");
    assert_eq!(w.status(), st);
    w.write(&data[400..]).unwrap();
    assert_eq!(w.commit(1000, Some(d)).unwrap(), d);
}

#[derive(Clone, Copy, Debug)]
enum Resume {
    /// Truncate to 0 and write everything again.
    Truncate,
    /// Write only what is missing.
    Discard,
    /// Truncate to half of what was written, then write the rest.
    TruncateHalf,
}

#[test]
fn resume_then_finish_at_various_points() {
    let (_dir, s) = store();
    let mut seed = 100;
    for size in [500usize, 5000, 50000] {
        for fraction in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0] {
            for how in [Resume::Truncate, Resume::Discard, Resume::TruncateHalf] {
                seed += 1;
                let (data, d) = content(size, seed);
                let limit = (size as f64 * fraction) as usize;
                let reference = format!("ref-{size}-{fraction}-{how:?}");
                let o = opts(&reference, Some(size as u64), Some(d));

                let mut w = s.writer(o.clone()).unwrap();
                w.write(&data[..limit]).unwrap();
                drop(w);

                let mut w = s.writer(o).unwrap();
                let st = w.status();
                assert_eq!(st.offset, limit as u64, "{reference}");
                assert_eq!(st.total, size as u64, "{reference}");
                assert_eq!(w.digest(), Digest::of_bytes(&data[..limit]), "{reference}");

                let from = match how {
                    Resume::Truncate => 0,
                    Resume::Discard => limit,
                    Resume::TruncateHalf => limit / 2,
                };
                if !matches!(how, Resume::Discard) {
                    w.truncate(from as u64).unwrap();
                    assert_eq!(w.status().offset, from as u64);
                    assert_eq!(w.digest(), Digest::of_bytes(&data[..from]), "{reference}");
                }
                write_chunks(&mut w, &data[from..]);
                let got = w.commit(size as u64, Some(d)).unwrap();
                assert_eq!(got, d, "{reference}");
                assert_eq!(s.info(&d).unwrap().size, size as u64);
                assert_eq!(read_all(&s, &d), data, "{reference}");
            }
        }
    }
    assert!(s.list_statuses().unwrap().is_empty());
}

#[test]
fn truncate_rules() {
    let (_dir, s) = store();
    let (data, d) = content(300, 3);
    let mut w = writer(&s, "t");
    w.write(&data[..100]).unwrap();
    assert_kind(w.truncate(101), ErrorKind::OutOfRange);
    w.truncate(100).unwrap();
    assert_eq!(w.digest(), Digest::of_bytes(&data[..100]));
    w.write(b"garbage").unwrap();
    w.truncate(100).unwrap();
    assert_eq!(s.status("t").unwrap().offset, 100);
    w.write(&data[100..]).unwrap();
    assert_eq!(w.commit(300, Some(d)).unwrap(), d);
    assert_eq!(read_all(&s, &d), data);
}

#[test]
fn commit_existing_content_is_already_exists() {
    let (_dir, s) = store();
    let (data, d) = content(256, 21);
    let mut w = writer(&s, "c1");
    w.write(&data).unwrap();
    w.commit(0, Some(d)).unwrap();

    for (i, expected) in [Some(d), None].into_iter().enumerate() {
        let reference = format!("c1-commitexists-{i}");
        let mut w = writer(&s, &reference);
        w.write(&data).unwrap();
        assert_kind(
            w.commit(data.len() as u64, expected),
            ErrorKind::AlreadyExists,
        );
        // Like containerd, the ingest is removed and the ref released.
        assert_kind(s.status(&reference), ErrorKind::NotFound);
        let w2 = writer(&s, &reference);
        assert_eq!(w2.status().offset, 0);
        // The closed writer refuses further use.
        assert_kind(w.write(b"x"), ErrorKind::FailedPrecondition);
    }
    // Opening with an expected digest that exists fails up front.
    assert_kind(
        s.writer(opts("again", None, Some(d))),
        ErrorKind::AlreadyExists,
    );
    // ...and does not leave the ref locked.
    writer(&s, "again");
}

#[test]
fn second_writer_on_same_ref_is_unavailable() {
    let (_dir, s) = store();
    let w = writer(&s, "busy");
    let e = assert_kind(s.writer(opts("busy", None, None)), ErrorKind::Unavailable);
    assert!(e.to_string().contains("ref busy locked"), "{e}");
    // A clone of the store shares the locks.
    assert_kind(
        s.clone().writer(opts("busy", None, None)),
        ErrorKind::Unavailable,
    );
    assert_kind(s.abort("busy"), ErrorKind::Unavailable);
    // Other refs are free.
    writer(&s, "other");
    drop(w);
    writer(&s, "busy");
}

#[test]
fn concurrent_writers_one_wins() {
    let (_dir, s) = store();
    let s = Arc::new(s);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let r = s.writer(opts("race", None, None));
                let ok = r.is_ok();
                // Hold until everyone tried.
                barrier.wait();
                if let Err(e) = &r {
                    assert_eq!(e.kind(), ErrorKind::Unavailable);
                }
                ok
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(wins, 1);
}

#[test]
fn commit_error_state() {
    let (_dir, s) = store();
    let (c1, d1) = content(256, 31);
    let (_, d2) = content(256, 32);
    let mut more = c1.clone();
    more.extend_from_slice(b"more");

    let mut w = writer(&s, "c1-commiterror-state");
    w.write(&more).unwrap();
    assert_kind(
        s.writer(opts("c1-commiterror-state", None, None)),
        ErrorKind::Unavailable,
    );

    // Wrong digest: FailedPrecondition, both digests in the message, ingest kept.
    let e = assert_kind(
        w.commit(more.len() as u64, Some(d2)),
        ErrorKind::FailedPrecondition,
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&d2.to_string()) && msg.contains(&Digest::of_bytes(&more).to_string()),
        "{msg}"
    );
    assert_eq!(s.status("c1-commiterror-state").unwrap().offset, 260);
    // Still locked by the same (still usable) writer.
    assert_kind(
        s.writer(opts("c1-commiterror-state", None, None)),
        ErrorKind::Unavailable,
    );

    // Wrong size: FailedPrecondition, both sizes in the message.
    let e = assert_kind(w.commit(256, None), ErrorKind::FailedPrecondition);
    assert!(
        e.to_string().contains("260") && e.to_string().contains("256"),
        "{e}"
    );
    drop(w);

    // Reopen by ref: the data survived, a correct commit succeeds.
    let mut w = writer(&s, "c1-commiterror-state");
    assert_eq!(w.status().offset, 260);
    let d = w.commit(260, None).unwrap();
    assert_eq!(d, Digest::of_bytes(&more));
    assert_eq!(read_all(&s, &d), more);
    // Ref is released after a successful commit even before drop.
    let mut w2 = writer(&s, "c1-commiterror-state");
    assert_eq!(w2.status().offset, 0);
    w2.write(&c1).unwrap();
    assert_eq!(w2.commit(256, Some(d1)).unwrap(), d1);
    drop(w);
    drop(w2);

    // After a fix-up via truncate, the same writer can commit.
    let (c3, d3) = content(100, 33);
    let mut w = writer(&s, "fixup");
    w.write(&c3).unwrap();
    w.write(b"oops").unwrap();
    assert_kind(w.commit(100, Some(d3)), ErrorKind::FailedPrecondition);
    w.truncate(100).unwrap();
    assert_eq!(w.commit(100, Some(d3)).unwrap(), d3);
}

#[test]
fn write_beyond_total_is_rejected() {
    let (_dir, s) = store();
    let (data, d) = content(100, 41);
    let mut w = s.writer(opts("tot", Some(100), None)).unwrap();
    w.write(&data[..60]).unwrap();
    let e = assert_kind(w.write(&data[..60]), ErrorKind::FailedPrecondition);
    assert!(e.to_string().contains("larger than expected"), "{e}");
    // Nothing was written by the rejected call.
    assert_eq!(w.status().offset, 60);
    assert_eq!(s.status("tot").unwrap().offset, 60);
    // A later, larger total lets it through.
    assert_kind(w.set_total(10), ErrorKind::FailedPrecondition);
    w.set_total(200).unwrap();
    assert_eq!(s.status("tot").unwrap().total, 200);
    w.set_total(100).unwrap();
    w.write(&data[60..]).unwrap();
    assert_eq!(w.commit(100, Some(d)).unwrap(), d);
}

#[test]
fn total_on_resume() {
    let (_dir, s) = store();
    let (data, _) = content(100, 51);

    // Stored total unknown, new total given: recorded.
    let mut w = writer(&s, "a");
    w.write(&data[..10]).unwrap();
    drop(w);
    let w = s.writer(opts("a", Some(100), None)).unwrap();
    assert_eq!(w.status().total, 100);
    assert_eq!(w.status().offset, 10);
    drop(w);
    assert_eq!(s.status("a").unwrap().total, 100);

    // Same total, or none: resumed.
    let w = s.writer(opts("a", None, None)).unwrap();
    assert_eq!((w.status().offset, w.status().total), (10, 100));
    drop(w);

    // A different non-zero total: like containerd, the ingest starts over.
    let started = s.status("a").unwrap().started_at;
    let w = s.writer(opts("a", Some(50), None)).unwrap();
    let st = w.status();
    assert_eq!((st.offset, st.total), (0, 50));
    assert!(st.started_at > started);
    assert_eq!(w.digest().to_string(), EMPTY);
    drop(w);
    assert_eq!(s.status("a").unwrap().offset, 0);
}

#[test]
fn read_at_and_stream() {
    let (_dir, s) = store();
    let (data, d) = content(10_000, 61);
    let mut w = writer(&s, "r");
    w.write(&data).unwrap();
    w.commit(0, None).unwrap();

    let mut r = s.reader(&d).unwrap();
    assert_eq!(r.size(), 10_000);
    let mut buf = [0u8; 100];
    assert_eq!(r.read_at(9_950, &mut buf).unwrap(), 50);
    assert_eq!(&buf[..50], &data[9_950..]);
    assert_eq!(r.read_at(10_000, &mut buf).unwrap(), 0);
    assert_eq!(r.read_at(u64::MAX, &mut buf).unwrap(), 0);
    assert_eq!(r.read_at(1234, &mut buf).unwrap(), 100);
    assert_eq!(&buf[..], &data[1234..1334]);

    r.seek(SeekFrom::Start(5000)).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, &data[5000..]);
    assert_eq!(r.read(&mut buf).unwrap(), 0);
    assert_eq!(r.seek(SeekFrom::End(-10)).unwrap(), 9_990);
    assert!(r.seek(SeekFrom::Current(-20_000)).is_err());

    let missing = Digest::of_bytes(b"missing");
    assert_kind(s.reader(&missing), ErrorKind::NotFound);
    assert_kind(s.info(&missing), ErrorKind::NotFound);
}

fn put(s: &Store, data: &[u8]) -> Digest {
    let mut w = writer(s, &format!("put-{}", Digest::of_bytes(data)));
    w.write(data).unwrap();
    w.commit(data.len() as u64, None).unwrap()
}

#[test]
fn walk_skips_junk() {
    let (_dir, s) = store();
    let mut want: Vec<Digest> = (0..5)
        .map(|i| put(&s, &content(10 + i, i as u64).0))
        .collect();
    want.sort();

    let blobs = s.root().join("blobs");
    std::fs::write(blobs.join("sha256/not-a-digest"), b"junk").unwrap();
    std::fs::write(
        blobs.join("sha256").join(format!("{}.tmp", want[0].hex())),
        b"x",
    )
    .unwrap();
    std::fs::create_dir(blobs.join("sha256").join(Digest::of_bytes(b"dir").hex())).unwrap();
    std::fs::create_dir_all(blobs.join("sha512")).unwrap();
    std::fs::write(blobs.join("sha512/abcd"), b"x").unwrap();

    let mut seen = Vec::new();
    s.walk(|info| {
        assert_eq!(info.size, s.info(&info.digest).unwrap().size);
        seen.push(info.digest);
        Ok(())
    })
    .unwrap();
    seen.sort();
    assert_eq!(seen, want);

    // An error from the callback stops the walk and comes back unchanged.
    let mut calls = 0;
    let e = s
        .walk(|_| {
            calls += 1;
            Err(Error::other(ErrorKind::Aborted, "stop"))
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Aborted);
    assert_eq!(calls, 1);
}

#[test]
fn delete() {
    let (_dir, s) = store();
    let d = put(&s, b"hello");
    let keep = put(&s, b"world");
    s.delete(&d).unwrap();
    assert_kind(s.info(&d), ErrorKind::NotFound);
    assert_kind(s.delete(&d), ErrorKind::NotFound);
    assert_eq!(s.info(&keep).unwrap().size, 5);
    // Content can be written again after deletion.
    assert_eq!(put(&s, b"hello"), d);
}

#[test]
fn abort_and_list_statuses() {
    let (_dir, s) = store();
    for r in ["b", "a", "c"] {
        let mut w = writer(&s, r);
        w.write(r.as_bytes()).unwrap();
    }
    // Junk in ingest/ is ignored.
    let ingest = s.root().join("ingest");
    std::fs::write(ingest.join("stray-file"), b"x").unwrap();
    std::fs::create_dir(ingest.join("empty-dir")).unwrap();
    let refs: Vec<String> = s
        .list_statuses()
        .unwrap()
        .into_iter()
        .map(|st| {
            assert_eq!(st.offset, 1);
            st.reference
        })
        .collect();
    assert_eq!(refs, ["a", "b", "c"]);

    s.abort("b").unwrap();
    assert_kind(s.abort("b"), ErrorKind::NotFound);
    assert_kind(s.status("b"), ErrorKind::NotFound);
    assert_eq!(s.list_statuses().unwrap().len(), 2);
    // An aborted ref starts from scratch.
    assert_eq!(writer(&s, "b").status().offset, 0);
}

#[test]
fn invalid_inputs() {
    let (_dir, s) = store();
    assert_kind(s.writer(opts("", None, None)), ErrorKind::InvalidArgument);
    for bad in [
        "sha256:abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256",
    ] {
        let e = assert_kind(Digest::parse(bad), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn ingest_layout_matches_containerd() {
    let (_dir, s) = store();
    let (data, d) = content(64, 71);
    let mut w = s.writer(opts("layout-ref", Some(64), Some(d))).unwrap();
    w.write(&data).unwrap();
    drop(w);
    // ingest/<sha256("layout-ref")>/
    let dir = s
        .root()
        .join("ingest")
        .join(Digest::of_bytes(b"layout-ref").hex());
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(read("ref"), "layout-ref");
    assert_eq!(read("total"), "64");
    assert_eq!(read("expected"), d.to_string());
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), data);
    for ts in ["startedat", "updatedat"] {
        let t = read(ts);
        assert!(t.ends_with('Z') && t.contains('T'), "{ts}: {t}");
    }
    // A stray temp file does not disturb resuming.
    std::fs::write(dir.join("updatedat.tmp"), b"garbage").unwrap();
    let w = writer(&s, "layout-ref");
    assert_eq!(w.digest(), d);
}

#[test]
fn corrupt_ingest_is_restarted() {
    let (_dir, s) = store();
    let mut w = writer(&s, "corrupt");
    w.write(b"some bytes").unwrap();
    drop(w);
    let dir = s
        .root()
        .join("ingest")
        .join(Digest::of_bytes(b"corrupt").hex());
    std::fs::write(dir.join("startedat"), b"not a time").unwrap();
    assert_kind(s.status("corrupt"), ErrorKind::Internal);
    // Listing skips it rather than failing.
    assert!(s.list_statuses().unwrap().is_empty());
    let w = writer(&s, "corrupt");
    assert_eq!(w.status().offset, 0);
    drop(w);
    assert_eq!(s.status("corrupt").unwrap().offset, 0);
}

#[test]
fn no_partial_blob_is_visible() {
    let (_dir, s) = store();
    let (data, d) = content(4096, 81);
    let mut w = s.writer(opts("partial", Some(4096), Some(d))).unwrap();
    w.write(&data[..2048]).unwrap();
    assert_kind(s.info(&d), ErrorKind::NotFound);
    let mut seen = 0;
    s.walk(|_| {
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 0);
    assert!(!Path::new(&s.root().join("blobs/sha256").join(d.hex())).exists());
    w.write(&data[2048..]).unwrap();
    w.commit(4096, Some(d)).unwrap();
    assert_eq!(s.info(&d).unwrap().size, 4096);
}

#[test]
fn io_write_adapter() {
    let (_dir, s) = store();
    let (data, d) = content(70_000, 91);
    let mut w = writer(&s, "copy");
    std::io::copy(&mut &data[..], &mut w).unwrap();
    assert_eq!(w.commit(70_000, Some(d)).unwrap(), d);
}

#[test]
fn half_created_ingests_are_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // A complete, interrupted ingest...
    let mut w = store
        .writer(WriterOpts {
            reference: "kept".into(),
            ..Default::default()
        })
        .expect("writer");
    w.write(b"partial").expect("write");
    drop(w);
    // ...and one a crash left without its data file.
    let broken = dir.path().join("ingest").join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("ref"), "broken").expect("ref");
    drop(store);

    let store = Store::open(dir.path()).expect("reopen");
    assert!(!broken.exists(), "half-created ingest survived reopen");
    let refs: Vec<String> = store
        .list_statuses()
        .expect("statuses")
        .into_iter()
        .map(|s| s.reference)
        .collect();
    assert_eq!(refs, ["kept"]);
}

/// Writes hashed elsewhere: a state that ends where the write does is taken as it is; one
/// that does not (right bytes hashed from the wrong start) is replaced by hashing here.
#[test]
fn writes_hashed_elsewhere_take_a_fitting_state_and_rehash_otherwise() {
    let (_d, s) = store();
    let (data, d) = content(3 << 20, 11);
    let (a, rest) = data.split_at(1 << 20);
    let (b, c) = rest.split_at(1 << 20);
    let mut w = writer(&s, "hashed");

    let mut good = w.hash_state();
    good.update(a);
    w.write_hashed(a, good).unwrap();
    let mut next = w.hash_state();
    next.update(b);
    w.write_hashed(b, next).unwrap();
    let mut misplaced = berth_content::HashState::default();
    misplaced.update(c);
    w.write_hashed(c, misplaced).unwrap();
    assert_eq!(w.status().offset, data.len() as u64);
    assert_eq!(w.digest(), d);
    assert_eq!(w.commit(data.len() as u64, Some(d)).unwrap(), d);
}

/// Data handed to a landing is in the ingest once adopted (hash state taken, or the bytes
/// re-hashed when the state does not fit), counts in the store's statuses while it lands,
/// can be cut off again, and after `close_landing` nothing more is taken.
#[test]
fn landed_data_is_adopted_cut_off_or_refused_after_close() {
    let (_d, s) = store();
    let (data, d) = content(6 << 20, 12);
    let mut w = writer(&s, "landed");
    let landing = w.landing().expect("landing");

    // 4 MiB in two pieces, adopted as two 2 MiB writes.
    for at in [0, 2 << 20] {
        assert!(landing.write_at(at as u64, Bytes::copy_from_slice(&data[at..at + (2 << 20)])));
    }
    assert_eq!(s.status("landed").unwrap().offset, 4 << 20);
    let mut state = w.hash_state();
    state.update(&data[..2 << 20]);
    w.adopt(2 << 20, state).unwrap();
    // A state that does not end there: the landed bytes are hashed from the file.
    w.adopt(2 << 20, berth_content::HashState::default())
        .unwrap();
    assert_eq!(w.digest(), Digest::of_bytes(&data[..4 << 20]));

    // Landed but not adopted: cut off, and the writer goes on from its own offset.
    assert!(landing.write_at(4 << 20, Bytes::from_static(b"not this")));
    w.drop_landed().unwrap();
    assert_eq!(s.status("landed").unwrap().offset, 4 << 20);
    w.write(&data[4 << 20..5 << 20]).unwrap();

    // Closed: refused, and what was queued but not adopted is cut off.
    assert!(landing.write_at(5 << 20, Bytes::copy_from_slice(&data[5 << 20..])));
    w.close_landing().unwrap();
    assert!(!landing.write_at(5 << 20, Bytes::copy_from_slice(&data[5 << 20..])));
    assert_eq!(s.status("landed").unwrap().offset, 5 << 20);
    w.write(&data[5 << 20..]).unwrap();
    assert_eq!(w.commit(0, Some(d)).unwrap(), d);
    let mut back = Vec::new();
    s.reader(&d).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == data, "blob differs");
}

/// A writer dropped with data still landing: the ref lock is released only after it has
/// landed, so the next writer on the ref finds all of it.
#[test]
fn the_ref_is_free_only_after_queued_data_landed() {
    let (_d, s) = store();
    let (data, d) = content(8 << 20, 13);
    let mut w = writer(&s, "queued");
    let landing = w.landing().expect("landing");
    // As many as the queue takes without waiting.
    for (i, chunk) in data.chunks(2 << 20).enumerate() {
        assert!(landing.write_at((i << 21) as u64, Bytes::copy_from_slice(chunk)));
    }
    drop(w);
    // The landing is closed with its writer.
    assert!(!landing.write_at(8 << 20, Bytes::from_static(b"late")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut w = loop {
        match s.writer(opts("queued", None, None)) {
            Ok(w) => break w,
            Err(e)
                if e.kind() == ErrorKind::Unavailable && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    // Resumed from the file: what landed counts, as after any interrupted write.
    assert_eq!(w.status().offset, data.len() as u64);
    assert_eq!(w.digest(), d);
    assert_eq!(w.commit(0, Some(d)).unwrap(), d);
}

/// Large writes go into the page cache in pieces: odd sizes and offsets, through the writer
/// and through a landing, land byte for byte.
#[test]
fn large_odd_writes_land_exactly() {
    let (_d, s) = store();
    let (data, d) = content((3 << 20) + 12_345, 14);
    let mut w = writer(&s, "odd");
    let first = 700_001;
    w.write(&data[..first]).unwrap();
    let landing = w.landing().expect("landing");
    let rest = Bytes::copy_from_slice(&data[first..]);
    assert!(landing.write_at(first as u64, rest));
    w.adopt(
        (data.len() - first) as u64,
        berth_content::HashState::default(),
    )
    .unwrap();
    assert_eq!(w.commit(0, Some(d)).unwrap(), d);
    assert!(read_all(&s, &d) == data, "blob differs");
}
