//! One conformance suite for every storage backend, against real servers: the
//! local directory, two independent S3 implementations (s3s-fs and moto),
//! gcp-storage-emulator (GCS) and Azurite (Azure Blob Storage). Create-if-absent
//! is proven against racing writers on Azurite, which enforces `If-None-Match:
//! *` atomically (moto checks it without a lock, so racing writers can both
//! pass there: only sequential creates are checked on it); a server without
//! it (501) gets the documented fallback.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::storage::{
    self, AzureSecrets, ObjectKey, PutBody, PutMode, RetryPolicy, Storage, StorageError,
    StorageOptions, StorageUrl,
};
use common::{AzuriteServer, GcsServer, MotoServer, S3Server, TestDir};
use futures::{StreamExt, TryStreamExt};

const PART: usize = 5 << 20;

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

fn opts() -> StorageOptions {
    StorageOptions {
        retry: RetryPolicy {
            deadline: Duration::from_secs(3),
            ..RetryPolicy::default()
        },
        part_size: PART,
        ..StorageOptions::default()
    }
}

fn s3_opts(port: u16) -> StorageOptions {
    StorageOptions {
        s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
        s3_region: Some("us-east-1".into()),
        s3_force_path_style: true,
        ..opts()
    }
}

fn gcs_opts(port: u16) -> StorageOptions {
    StorageOptions {
        gcs_endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..opts()
    }
}

fn azure_opts(server: &AzuriteServer) -> StorageOptions {
    StorageOptions {
        azure_endpoint: Some(server.endpoint()),
        azure_secrets: AzureSecrets {
            key: Some(common::AZURITE_KEY.into()),
            ..AzureSecrets::default()
        },
        ..opts()
    }
}

/// Options for Azurite with a container SAS of `permissions` instead of the key.
fn azure_sas_opts(server: &AzuriteServer, permissions: &str) -> StorageOptions {
    StorageOptions {
        azure_secrets: AzureSecrets {
            sas: Some(server.container_sas(permissions)),
            ..AzureSecrets::default()
        },
        ..azure_opts(server)
    }
}

fn azure_url(server: &AzuriteServer, prefix: &str) -> StorageUrl {
    StorageUrl::Azure {
        account: common::AZURITE_ACCOUNT.into(),
        container: server.container.clone(),
        prefix: prefix.into(),
    }
}

fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

async fn get_all(s: &dyn Storage, k: &ObjectKey) -> Result<Vec<u8>, StorageError> {
    Ok(storage::get_bytes(s, k).await?.to_vec())
}

fn stream_of(data: Vec<u8>, chunk: usize) -> PutBody {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    PutBody::Stream(Box::pin(futures::stream::iter(chunks)))
}

/// Eight writers create `k` at once, each with a body of its own (`size`
/// bytes, seeded from `seed`): one wins, the others are told the object
/// exists, and the object is the winner's, whole.
async fn eight_racing_creates(s: &Arc<dyn Storage>, k: &ObjectKey, size: usize, seed: u8) {
    let outcomes = futures::future::join_all((0..8u8).map(|w| {
        let (s, k) = (s.clone(), k.clone());
        async move {
            let data = body(size, w.wrapping_add(seed));
            let r = s
                .put(&k, stream_of(data, 1 << 20), PutMode::CreateIfAbsent)
                .await;
            (w, r)
        }
    }))
    .await;
    let winners: Vec<u8> = outcomes
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(w, _)| *w)
        .collect();
    assert_eq!(winners.len(), 1, "{k}: {outcomes:?}");
    for (w, r) in &outcomes {
        if let Err(e) = r {
            assert!(
                matches!(e, StorageError::AlreadyExists { .. }),
                "{k}: writer {w}: {e}"
            );
        }
    }
    let stored = get_all(&**s, k).await.unwrap();
    assert!(
        stored == body(size, winners[0].wrapping_add(seed)),
        "{k}: the object is not the winner's"
    );
}

/// The contract every backend must keep.
async fn conformance(s: Arc<dyn Storage>) {
    let name = s.location().to_string();
    // Missing objects.
    let e = s
        .get(&key("wal/missing"))
        .await
        .err()
        .expect("get of a missing key must fail");
    assert!(e.is_not_found(), "{name}: {e}");
    assert!(
        s.head(&key("wal/missing")).await.unwrap().is_none(),
        "{name}"
    );

    // Whole-bytes put, get, head; empty objects.
    let a = body(1000, 1);
    s.put(
        &key("wal/a"),
        PutBody::Bytes(a.clone().into()),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(get_all(&*s, &key("wal/a")).await.unwrap(), a, "{name}");
    assert_eq!(
        s.head(&key("wal/a")).await.unwrap().unwrap().size,
        1000,
        "{name}"
    );
    s.put(
        &key("empty"),
        PutBody::Bytes(Bytes::new()),
        PutMode::CreateIfAbsent,
    )
    .await
    .unwrap();
    assert!(
        get_all(&*s, &key("empty")).await.unwrap().is_empty(),
        "{name}"
    );

    // Create-if-absent never replaces.
    s.put(
        &key("wal/once"),
        PutBody::Bytes(body(10, 2).into()),
        PutMode::CreateIfAbsent,
    )
    .await
    .unwrap();
    let e = s
        .put(
            &key("wal/once"),
            PutBody::Bytes(body(10, 3).into()),
            PutMode::CreateIfAbsent,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::AlreadyExists { .. }),
        "{name}: {e}"
    );
    assert_eq!(
        get_all(&*s, &key("wal/once")).await.unwrap(),
        body(10, 2),
        "{name}"
    );
    // Overwrite does.
    s.put(
        &key("wal/once"),
        PutBody::Bytes(body(10, 4).into()),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(
        get_all(&*s, &key("wal/once")).await.unwrap(),
        body(10, 4),
        "{name}"
    );

    // Streams of unknown length, larger than a part (multipart / resumable).
    let big = body(2 * PART + 12345, 5);
    s.put(
        &key("big/object"),
        stream_of(big.clone(), 300_000),
        PutMode::CreateIfAbsent,
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut st = s.get(&key("big/object")).await.unwrap();
    while let Some(c) = st.try_next().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert!(
        got == big,
        "{name}: multipart object differs ({} vs {} bytes)",
        got.len(),
        big.len()
    );
    let e = s
        .put(
            &key("big/object"),
            stream_of(body(PART + 1, 6), 1 << 20),
            PutMode::CreateIfAbsent,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::AlreadyExists { .. }),
        "{name}: {e}"
    );
    // A stream shorter than a part goes up whole.
    s.put(
        &key("small/stream"),
        stream_of(body(4000, 7), 1000),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(
        get_all(&*s, &key("small/stream")).await.unwrap(),
        body(4000, 7),
        "{name}"
    );

    // Listing past one page (1,000 keys), in key order, with start-after and limit.
    let keys: Vec<ObjectKey> = (0..1100).map(|i| key(&format!("many/{i:05}"))).collect();
    futures::stream::iter(keys.clone())
        .map(|k| {
            let s = s.clone();
            async move {
                s.put(
                    &k,
                    PutBody::Bytes(Bytes::from_static(b"x")),
                    PutMode::Overwrite,
                )
                .await
            }
        })
        // The GCS emulator serves one request at a time; more would only queue.
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let listed = s.list("many/", None, None).await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.key.clone()).collect::<Vec<_>>(),
        keys,
        "{name}: full listing"
    );
    assert!(listed.iter().all(|m| m.size == 1), "{name}");
    let page = s.list("many/", Some("many/00999"), Some(5)).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
        [
            "many/01000",
            "many/01001",
            "many/01002",
            "many/01003",
            "many/01004"
        ],
        "{name}"
    );
    let prefixed = s.list("many/0105", None, None).await.unwrap();
    assert_eq!(prefixed.len(), 10, "{name}: prefix inside a file name");
    assert_eq!(s.list("wal/", None, None).await.unwrap().len(), 2, "{name}");

    // Deleting many, including keys that do not exist.
    let mut doomed = keys.clone();
    doomed.push(key("many/not-there"));
    s.delete_many(&doomed).await.unwrap();
    assert!(
        s.list("many/", None, None).await.unwrap().is_empty(),
        "{name}"
    );
    s.delete_many(&[key("wal/a")]).await.unwrap();
    assert!(s.head(&key("wal/a")).await.unwrap().is_none(), "{name}");
}

fn run(name: &str, f: impl std::future::Future<Output = ()>, results: &mut Vec<(String, bool)>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(f))).is_ok();
    println!(
        "test {name} ... {} ({:.1}s)",
        if ok { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    results.push((name.to_string(), ok));
}

fn main() {
    // SAFETY: no other thread exists yet.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", common::S3_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", common::S3_SECRET);
    }
    // Name filters as libtest takes them; the values of libtest's own options
    // (`--test-threads 2`, which `cargo test -- …` passes) are not filters.
    let mut filter: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if matches!(
            a.as_str(),
            "--test-threads" | "--format" | "--color" | "--skip" | "--logfile" | "-Z"
        ) {
            args.next();
        } else if !a.starts_with('-') {
            filter.push(a);
        }
    }
    let wanted = |n: &str| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()));
    let mut results = Vec::new();

    if wanted("file_conformance") {
        run(
            "file_conformance",
            async {
                let dir = TestDir::new();
                let url = StorageUrl::File(dir.sub("store"));
                conformance(storage::open(&url, &opts()).await.unwrap()).await;
            },
            &mut results,
        );
    }
    if wanted("file_missing_root_is_not_not_found") {
        run(
            "file_missing_root_is_not_not_found",
            async {
                let url = StorageUrl::File("/nonexistent/cairn-archive".into());
                let s = storage::open(&url, &opts()).await.unwrap();
                let e = s
                    .get(&key("wal/000000010000000000000001"))
                    .await
                    .err()
                    .unwrap();
                assert!(
                    !e.is_not_found() && e.to_string().contains("/nonexistent/cairn-archive"),
                    "{e}"
                );
            },
            &mut results,
        );
    }
    if wanted("s3_conformance") {
        run(
            "s3_conformance",
            async {
                let server = S3Server::start();
                let url = StorageUrl::S3 {
                    bucket: server.bucket.clone(),
                    prefix: "conf/".into(),
                };
                conformance(storage::open(&url, &s3_opts(server.port)).await.unwrap()).await;
            },
            &mut results,
        );
    }
    if wanted("s3_failures_are_classified") {
        run(
            "s3_failures_are_classified",
            async {
                let server = S3Server::start();
                // A bucket that does not exist is a permanent error when listing (some
                // servers answer a GET in it with NoSuchKey, so callers list to tell).
                let url = StorageUrl::S3 {
                    bucket: "no-such-bucket".into(),
                    prefix: String::new(),
                };
                let s = storage::open(&url, &s3_opts(server.port)).await.unwrap();
                let e = s.list("wal/", None, None).await.err().unwrap();
                assert!(
                    !e.is_not_found()
                        && !e.is_transient()
                        && e.to_string().contains("NoSuchBucket"),
                    "missing bucket: {e}"
                );
                // Nothing listening: transient, given up at the deadline.
                let port = common::free_port();
                let url = StorageUrl::S3 {
                    bucket: "b".into(),
                    prefix: String::new(),
                };
                let s = storage::open(&url, &s3_opts(port)).await.unwrap();
                let t = Instant::now();
                let e = s.get(&key("wal/x")).await.err().unwrap();
                assert!(
                    e.is_transient() && e.to_string().contains("gave up"),
                    "refused: {e}"
                );
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "took {:?}",
                    t.elapsed()
                );
            },
            &mut results,
        );
    }
    if wanted("gcs_conformance") {
        run(
            "gcs_conformance",
            async {
                let server = GcsServer::start();
                let url = StorageUrl::Gcs {
                    bucket: server.bucket.clone(),
                    prefix: "conf/".into(),
                };
                conformance(storage::open(&url, &gcs_opts(server.port)).await.unwrap()).await;
            },
            &mut results,
        );
    }
    if wanted("gcs_missing_bucket_is_not_not_found") {
        run(
            "gcs_missing_bucket_is_not_not_found",
            async {
                let server = GcsServer::start();
                let url = StorageUrl::Gcs {
                    bucket: "no-such-bucket".into(),
                    prefix: String::new(),
                };
                let s = storage::open(&url, &gcs_opts(server.port)).await.unwrap();
                let e = s.list("wal/", None, None).await.err().unwrap();
                assert!(
                    !e.is_not_found() && e.to_string().contains("no-such-bucket"),
                    "{e}"
                );
            },
            &mut results,
        );
    }

    if wanted("second_s3_conformance") {
        run(
            "second_s3_conformance",
            async {
                let server = MotoServer::start();
                let url = StorageUrl::S3 {
                    bucket: server.bucket.clone(),
                    prefix: "conf/".into(),
                };
                let opts = StorageOptions {
                    // What config/s3-compatible.yaml documents.
                    s3_checksum: Some(storage::S3Checksum::WhenRequired),
                    ..s3_opts(server.port)
                };
                conformance(storage::open(&url, &opts).await.unwrap()).await;
                // And with the SDK's checksums on every request.
                let opts = StorageOptions {
                    s3_checksum: Some(storage::S3Checksum::WhenSupported),
                    ..s3_opts(server.port)
                };
                let url = StorageUrl::S3 {
                    bucket: server.bucket.clone(),
                    prefix: "checksummed/".into(),
                };
                conformance(storage::open(&url, &opts).await.unwrap()).await;
            },
            &mut results,
        );
    }
    if wanted("azure_conformance") {
        run(
            "azure_conformance",
            async {
                let server = AzuriteServer::start();
                // With the account key, then with a connection string
                // holding a SAS (all permissions) instead.
                let url = azure_url(&server, "conf/");
                conformance(storage::open(&url, &azure_opts(&server)).await.unwrap()).await;
                let opts = StorageOptions {
                    azure_endpoint: None,
                    azure_secrets: AzureSecrets {
                        connection_string: Some(format!(
                            "BlobEndpoint={}/;SharedAccessSignature={}",
                            server.endpoint(),
                            server.container_sas("racwdl")
                        )),
                        ..AzureSecrets::default()
                    },
                    ..opts()
                };
                let url = azure_url(&server, "sas/");
                conformance(storage::open(&url, &opts).await.unwrap()).await;
            },
            &mut results,
        );
    }
    if wanted("azure_racing_creates_store_one_object") {
        run(
            "azure_racing_creates_store_one_object",
            async {
                let server = AzuriteServer::start();
                let s = storage::open(&azure_url(&server, "race/"), &azure_opts(&server))
                    .await
                    .unwrap();
                eight_racing_creates(&s, &key("wal/contested"), 100_000, 0).await;
                // In blocks: the condition rides on the committing Put Block
                // List (signed anew with the key), so racing commits leave
                // one winner too; and so with a SAS, which signs no headers.
                eight_racing_creates(&s, &key("wal/contested-blocks"), 3 * PART + 1, 8).await;
                let sas = azure_sas_opts(&server, "racwl");
                let s = storage::open(&azure_url(&server, "race-sas/"), &sas)
                    .await
                    .unwrap();
                eight_racing_creates(&s, &key("wal/contested-blocks"), 3 * PART + 1, 16).await;
            },
            &mut results,
        );
    }
    if wanted("azure_failures_are_classified") {
        run(
            "azure_failures_are_classified",
            async {
                let server = AzuriteServer::start();
                // A container that does not exist: not "not found".
                let url = StorageUrl::Azure {
                    account: common::AZURITE_ACCOUNT.into(),
                    container: "no-such-container".into(),
                    prefix: String::new(),
                };
                let s = storage::open(&url, &azure_opts(&server)).await.unwrap();
                let e = s.list("wal/", None, None).await.err().unwrap();
                assert!(
                    matches!(e, StorageError::NoStorage { .. })
                        && e.to_string().contains("no-such-container"),
                    "missing container: {e}"
                );
                let e = s.get(&key("wal/x")).await.err().unwrap();
                assert!(!e.is_not_found(), "missing container on get: {e}");
                // A wrong key: permanent, named, quickly.
                let wrong = StorageOptions {
                    azure_secrets: AzureSecrets {
                        key: Some(common::AZURITE_KEY.replace('E', "F")),
                        ..AzureSecrets::default()
                    },
                    ..azure_opts(&server)
                };
                let s = storage::open(&azure_url(&server, "x/"), &wrong)
                    .await
                    .unwrap();
                let t = Instant::now();
                let e = s
                    .put(
                        &key("wal/a"),
                        PutBody::Bytes(Bytes::from_static(b"a")),
                        PutMode::CreateIfAbsent,
                    )
                    .await
                    .err()
                    .unwrap();
                assert!(
                    !e.is_transient()
                        && e.to_string().contains("refused")
                        && e.to_string().contains("AZURE_STORAGE_KEY"),
                    "wrong key: {e}"
                );
                assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "took {:?}",
                    t.elapsed()
                );
                // A SAS that may read and list, not write: refused by name,
                // nothing stored.
                let read_only = azure_sas_opts(&server, "rl");
                let s = storage::open(&azure_url(&server, "ro/"), &read_only)
                    .await
                    .unwrap();
                let e = s
                    .put(
                        &key("wal/a"),
                        PutBody::Bytes(Bytes::from_static(b"a")),
                        PutMode::CreateIfAbsent,
                    )
                    .await
                    .err()
                    .unwrap();
                assert!(
                    !e.is_transient() && e.to_string().contains("permission to put"),
                    "read-only SAS: {e}"
                );
                assert!(s.list("", None, None).await.unwrap().is_empty());
            },
            &mut results,
        );
    }
    if wanted("a_server_without_conditional_writes_is_asked_first") {
        run(
            "a_server_without_conditional_writes_is_asked_first",
            async {
                let server = MotoServer::start();
                let proxy = common::proxy::FaultProxy::start(server.port);
                proxy.inject(common::proxy::Fault::NotImplemented("if-none-match"), 1000);
                let url = StorageUrl::S3 {
                    bucket: server.bucket.clone(),
                    prefix: "no-conditional/".into(),
                };
                let opts = StorageOptions {
                    s3_endpoint: Some(proxy.url()),
                    ..s3_opts(server.port)
                };
                let s = storage::open(&url, &opts).await.unwrap();
                // The first create meets the 501 and is stored without the
                // header; later ones ask first and never overwrite.
                for (k, size) in [("wal/single", 1000), ("big/multi", 2 * PART + 1)] {
                    s.put(
                        &key(k),
                        stream_of(body(size, 1), 1 << 20),
                        PutMode::CreateIfAbsent,
                    )
                    .await
                    .unwrap();
                    let e = s
                        .put(
                            &key(k),
                            stream_of(body(size, 2), 1 << 20),
                            PutMode::CreateIfAbsent,
                        )
                        .await
                        .unwrap_err();
                    assert!(matches!(e, StorageError::AlreadyExists { .. }), "{k}: {e}");
                    assert!(get_all(&*s, &key(k)).await.unwrap() == body(size, 1), "{k}");
                }
            },
            &mut results,
        );
    }

    let failed = results.iter().filter(|(_, ok)| !ok).count();
    println!("\n{} passed, {} failed", results.len() - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
