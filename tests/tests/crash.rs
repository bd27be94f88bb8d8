//! kill -9 of berthd under concurrent writes, for both metadata backends: everything the
//! daemon acknowledged survives, nothing half-written is visible, and interrupted ingests can
//! be resumed or aborted after the restart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::containerd::services::content::v1::{
    content_client::ContentClient, AbortRequest, Info, InfoRequest, ListContentRequest,
    ListStatusesRequest, StatusRequest, UpdateRequest,
};
use berth_proto::containerd::services::leases::v1::{CreateRequest, DeleteRequest};
use berth_tests::{
    digest_of, expect_code, random_bytes, read_blob, write_blob, Backend, Daemon, Opts, Svc, Writer,
};
use sha2::{Digest as _, Sha256};
use tonic::Code;

const NAMESPACES: [&str; 2] = ["crash-a", "crash-b"];
const CLIENTS: usize = 6;
const SIZES: [usize; 7] = [1, 100, 4096, 65_543, 300_000, 700_001, 1 << 20];
const CHUNK: usize = 64 << 10;
const GC_ROOT: &str = "containerd.io/gc.root";

/// What the daemon acknowledged, and what was in flight.
#[derive(Default)]
struct Ledger {
    /// Committed blobs: (namespace, digest) -> size.
    blobs: BTreeMap<(String, String), usize>,
    /// Acknowledged labels per (namespace, digest).
    labels: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// Ingests begun and not acknowledged as committed: (namespace, ref) -> bytes.
    started: BTreeMap<(String, String), Vec<u8>>,
    /// Acknowledged label updates after commit.
    label_updates: usize,
    /// Ingests deliberately left open after an acknowledged WRITE: (namespace, ref) -> offset.
    left_open: BTreeMap<(String, String), usize>,
}

type Shared = Arc<Mutex<Ledger>>;

/// One client: ingests blobs, labels them, and now and then leaves an ingest half done.
/// Returns when the daemon goes away.
async fn client(d_socket: std::path::PathBuf, id: usize, ledger: Shared) -> usize {
    let Ok(channel) = berth_tests::connect(&d_socket).await else {
        return 0;
    };
    let ns = NAMESPACES[id % NAMESPACES.len()].to_string();
    let mut c: ContentClient<Svc> =
        ContentClient::with_interceptor(channel, berth_tests::Ctx::ns(&ns));
    let mut done = 0;
    for n in 0.. {
        let size = SIZES[(id + n) % SIZES.len()];
        let data = random_bytes(size);
        let digest = digest_of(&data);
        let reference = format!("client-{id}-{n}");
        let key = (ns.clone(), reference.clone());
        ledger
            .lock()
            .unwrap()
            .started
            .insert(key.clone(), data.clone());

        let Ok((mut w, _)) = Writer::open(&mut c, &reference, size as i64, &digest).await else {
            return done;
        };
        if n % 5 == 4 {
            // Leave this one half written, on purpose.
            let half = size / 2;
            if w.write_all(0, &data[..half], CHUNK).await.is_err() || w.close().await.is_err() {
                return done;
            }
            ledger.lock().unwrap().left_open.insert(key, half);
            continue;
        }
        let Ok(end) = w.write_all(0, &data, CHUNK).await else {
            return done;
        };
        // Rooted, so garbage collection keeps it (containerd collects unreferenced content).
        let labels = [
            (GC_ROOT, "2024-01-01T00:00:00Z".to_string()),
            ("client", id.to_string()),
            ("seq", n.to_string()),
        ];
        let label_refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if w.commit(end, size as i64, &digest, &label_refs)
            .await
            .is_err()
        {
            return done;
        }
        {
            let mut l = ledger.lock().unwrap();
            l.started.remove(&key);
            let blob = (ns.clone(), digest.clone());
            l.blobs.insert(blob.clone(), size);
            l.labels.insert(
                blob,
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            );
        }
        done += 1;

        // Label it afterwards too.
        let update = UpdateRequest {
            info: Some(Info {
                digest: digest.clone(),
                labels: [("checked".to_string(), n.to_string())].into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.checked".into()],
            }),
        };
        if c.update(update).await.is_err() {
            return done;
        }
        ledger
            .lock()
            .unwrap()
            .labels
            .entry((ns.clone(), digest))
            .or_default()
            .insert("checked".into(), n.to_string());
        ledger.lock().unwrap().label_updates += 1;
    }
    done
}

async fn info(c: &mut ContentClient<Svc>, digest: &str) -> Result<Info, tonic::Status> {
    Ok(c.info(InfoRequest {
        digest: digest.to_string(),
    })
    .await?
    .into_inner()
    .info
    .expect("info is set"))
}

async fn crash_and_recover(backend: Backend) {
    let name = backend.name();
    // berthd's own GC schedule: the start-up collection after the crash is part of the test.
    let mut d = Daemon::start_with(Opts {
        gc_delay_ms: None,
        ..Opts::backend(backend)
    })
    .await;
    let ledger: Shared = Arc::default();

    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(d.socket(), id, ledger.clone())))
        .collect();

    // Let the clients get going: at least 1.5 s and 20 acknowledged commits (bounded).
    let deadline = started + Duration::from_secs(30);
    loop {
        let acked = ledger.lock().unwrap().blobs.len();
        if started.elapsed() >= Duration::from_millis(1500) && acked >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{name}] only {acked} commits acknowledged in 30 s; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.kill9();
    let killed_after = started.elapsed();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("client task ends once the daemon is gone")
            .expect("client task panicked");
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());

    let restart = Instant::now();
    d.restart().await;
    let restart_time = restart.elapsed();
    d.assert_serving().await;
    // A full garbage collection now (a sync lease delete runs one), so what follows also
    // shows that collection keeps everything acknowledged.
    let mut leases = d.leases(NAMESPACES[0]).await;
    let lease = leases
        .create(CreateRequest::default())
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    leases
        .delete(DeleteRequest {
            id: lease.id,
            sync: true,
        })
        .await
        .unwrap();

    // 1. Every acknowledged blob is there, with its size, its bytes and its labels.
    for ((ns, digest), size) in &ledger.blobs {
        let mut c = d.content(ns.as_str()).await;
        let i = info(&mut c, digest)
            .await
            .unwrap_or_else(|e| panic!("[{name}] acknowledged blob {ns}/{digest} lost: {e}"));
        assert_eq!(i.size as usize, *size, "[{name}] size of {digest}");
        let bytes = read_blob(&mut c, digest).await.unwrap_or_else(|e| {
            let file = d.blobs_dir().join(digest.trim_start_matches("sha256:"));
            panic!(
                "[{name}] read of acknowledged blob {ns}/{digest} failed: {e}; blob file {} exists: {}",
                file.display(),
                file.exists()
            )
        });
        assert_eq!(bytes.len(), *size);
        assert_eq!(digest_of(&bytes), *digest, "[{name}] bytes of {digest}");
        for (k, v) in &ledger.labels[&(ns.clone(), digest.clone())] {
            assert_eq!(
                i.labels.get(k),
                Some(v),
                "[{name}] acknowledged label {k}={v} of {ns}/{digest} lost; labels: {:?}",
                i.labels
            );
        }
    }

    // 2. No half-written blob: every file in the blob store hashes to its name, and every
    //    listed blob reads back whole.
    let mut on_disk = 0;
    for entry in std::fs::read_dir(d.blobs_dir()).expect("blob dir exists") {
        let entry = entry.unwrap();
        let fname = entry.file_name().into_string().unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            fname,
            "[{name}] blob file {} does not hash to its name",
            entry.path().display()
        );
        on_disk += 1;
    }
    let mut visible = 0;
    for ns in NAMESPACES {
        let mut c = d.content(ns).await;
        let mut stream = c
            .list(ListContentRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut digests = Vec::new();
        while let Some(batch) = stream.message().await.unwrap() {
            digests.extend(batch.info.into_iter().map(|i| (i.digest, i.size)));
        }
        for (digest, size) in digests {
            let bytes = read_blob(&mut c, &digest).await.unwrap();
            assert_eq!(bytes.len() as i64, size, "[{name}] listed size of {digest}");
            assert_eq!(digest_of(&bytes), digest, "[{name}] listed blob {digest}");
            visible += 1;
        }
    }
    assert!(
        visible >= ledger.blobs.len(),
        "[{name}] fewer visible than acknowledged"
    );

    // 3. Interrupted ingests: the ones left open on purpose are all listed at their offset;
    //    every listed one resumes (even) or aborts (odd).
    let mut interrupted = 0;
    let (mut resumed, mut aborted, mut already) = (0, 0, 0);
    let mut listed_keys = BTreeSet::new();
    for ns in NAMESPACES {
        let mut c = d.content(ns).await;
        let statuses = c
            .list_statuses(ListStatusesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .statuses;
        for (i, st) in statuses.into_iter().enumerate() {
            interrupted += 1;
            let key = (ns.to_string(), st.r#ref.clone());
            listed_keys.insert(key.clone());
            let data = ledger.started.get(&key).unwrap_or_else(|| {
                panic!(
                    "[{name}] ingest {ns}/{} was never started or was acknowledged",
                    st.r#ref
                )
            });
            assert!(
                st.offset as usize <= data.len(),
                "[{name}] ingest {} offset {} past its {} bytes",
                st.r#ref,
                st.offset,
                data.len()
            );
            if let Some(&half) = ledger.left_open.get(&key) {
                assert_eq!(
                    st.offset as usize, half,
                    "[{name}] acknowledged WRITEs of {}",
                    st.r#ref
                );
            }
            let digest = digest_of(data);
            if i % 2 == 0 {
                let (mut w, first) =
                    match Writer::open(&mut c, &st.r#ref, data.len() as i64, &digest).await {
                        Ok(x) => x,
                        // A commit that completed unacknowledged: the blob is already there.
                        Err(e) if e.code() == Code::AlreadyExists => {
                            already += 1;
                            continue;
                        }
                        Err(e) => panic!("[{name}] resume {}: {e}", st.r#ref),
                    };
                assert_eq!(
                    first.offset, st.offset,
                    "[{name}] resume offset of {}",
                    st.r#ref
                );
                let end = w
                    .write_all(first.offset, &data[first.offset as usize..], CHUNK)
                    .await
                    .unwrap();
                w.commit(end, data.len() as i64, &digest, &[(GC_ROOT, "x")])
                    .await
                    .unwrap_or_else(|e| {
                        panic!("[{name}] commit of resumed {} failed: {e}", st.r#ref)
                    });
                let got = read_blob(&mut c, &digest).await.unwrap();
                assert!(got == *data, "[{name}] resumed blob {} differs", st.r#ref);
                resumed += 1;
            } else {
                c.abort(AbortRequest {
                    r#ref: st.r#ref.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("[{name}] abort {}: {e}", st.r#ref));
                expect_code(
                    c.status(StatusRequest {
                        r#ref: st.r#ref.clone(),
                    })
                    .await,
                    Code::NotFound,
                    &[],
                );
                aborted += 1;
            }
        }
    }
    for key in ledger.left_open.keys() {
        assert!(
            listed_keys.contains(key),
            "[{name}] ingest {key:?} left open after acknowledged WRITEs is not listed"
        );
    }

    // 4. The daemon serves normally.
    let mut c = d.content("after-crash").await;
    let data = random_bytes(12345);
    let dg = write_blob(&mut c, "after", &data, &[(GC_ROOT, "x")])
        .await
        .unwrap();
    assert!(read_blob(&mut c, &dg).await.unwrap() == data);
    d.assert_serving().await;
    assert!(
        !d.log().contains("panicked"),
        "[{name}] berthd panicked; log:\n{}",
        d.log()
    );

    let labels: usize = ledger.labels.values().map(BTreeMap::len).sum();
    let updates = ledger.label_updates;
    println!(
        "crash test [{name}]: killed after {killed_after:.2?} with {} acknowledged commits \
         ({} MiB) and {updates} acknowledged label updates ({labels} labels checked) from \
         {CLIENTS} clients; restart took \
         {restart_time:.2?}; {visible} blobs visible, {on_disk} blob files on disk, all verified; \
         {interrupted} interrupted ingests ({} left open on purpose): {resumed} resumed, \
         {aborted} aborted, {already} already committed",
        ledger.blobs.len(),
        ledger.blobs.values().sum::<usize>() >> 20,
        ledger.left_open.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_flight_redb() {
    crash_and_recover(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_flight_sled() {
    crash_and_recover(Backend::Sled).await;
}

/// The orderly path: SIGTERM, a clean exit that removes the socket, and a restart on the
/// same root that keeps content, labels and ingests.
async fn stop_and_restart(backend: Backend) {
    let name = backend.name();
    let mut d = Daemon::start_with(Opts::backend(backend)).await;
    let mut c = d.content("orderly").await;
    let data = random_bytes(300_000);
    let dg = write_blob(&mut c, "kept", &data, &[(GC_ROOT, "x"), ("k", "v")])
        .await
        .unwrap();
    let (mut w, _) = Writer::open(&mut c, "open-ingest", 0, "").await.unwrap();
    w.write(0, b"half").await.unwrap();
    w.close().await.unwrap();

    let status = d.stop().await;
    assert!(
        status.success(),
        "[{name}] berthd exit after SIGTERM: {status}"
    );
    assert!(
        !d.socket().exists(),
        "[{name}] socket left behind after a clean exit"
    );

    d.restart().await;
    let mut c = d.content("orderly").await;
    let i = info(&mut c, &dg).await.unwrap();
    assert_eq!(i.labels.get("k").map(String::as_str), Some("v"));
    assert!(read_blob(&mut c, &dg).await.unwrap() == data);
    let st = c
        .status(StatusRequest {
            r#ref: "open-ingest".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.offset, 4, "[{name}] ingest offset after restart");
}

#[tokio::test]
async fn sigterm_and_restart_redb() {
    stop_and_restart(Backend::Redb).await;
}

#[tokio::test]
async fn sigterm_and_restart_sled() {
    stop_and_restart(Backend::Sled).await;
}
