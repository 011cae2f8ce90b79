//! Failure paths of wal-push and wal-fetch against the in-memory storage
//! behind the fault-injecting wrapper: fast, and exact about what storage
//! did. The same contract is tested end to end against real servers in
//! tests/wal_cli.rs and tests/faults.rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::WalError;
use crate::Context;
use crate::archive::keys;
use crate::config::Config;
use crate::pg::wal::WalFileName;
use crate::storage::faulty::{Failure, Fault, FaultyStorage, Op};
use crate::storage::memory::MemoryStorage;
use crate::storage::resume::Resuming;
use crate::storage::{RetryPolicy, Storage, StorageError, StorageOptions};

const SIZE: usize = 1 << 20;

/// A 1 MiB segment named `name`, placed where its name says.
fn segment(name: &str, seed: u8) -> Vec<u8> {
    let mut b = vec![seed; SIZE];
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let n = u64::from_str_radix(&name[16..24], 16).unwrap();
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    b[8..16].copy_from_slice(&((log << 32) + n * SIZE as u64).to_le_bytes());
    b[16..24].fill(0);
    b[24..32].copy_from_slice(&7u64.to_le_bytes());
    b[32..36].copy_from_slice(&(SIZE as u32).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

struct Setup {
    _dir: tempfile::TempDir,
    pg_wal: PathBuf,
    mem: Arc<MemoryStorage>,
    faulty: Arc<FaultyStorage>,
    ctx: Context,
}

fn setup(until: Option<Duration>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pg_wal = dir.path().join("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let mem = Arc::new(MemoryStorage::new());
    let faulty = Arc::new(FaultyStorage::new(mem.clone()));
    let opts = StorageOptions {
        retry: RetryPolicy {
            deadline: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
            until: until.map(|d| Instant::now() + d),
        },
        idle_timeout: Duration::from_millis(300),
        ..StorageOptions::default()
    };
    let storage: Arc<dyn Storage> = Arc::new(Resuming::new(faulty.clone(), &opts));
    let config = Config {
        wal_fetch_spool: Some(dir.path().join("spool")),
        ..Config::default()
    };
    let ctx = Context::with_storage(config, storage);
    Setup {
        _dir: dir,
        pg_wal,
        mem,
        faulty,
        ctx,
    }
}

fn write(pg_wal: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = pg_wal.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

const NAME: &str = "000000010000000000000003";

#[tokio::test]
async fn a_failed_upload_is_a_failure_and_stores_nothing() {
    let s = setup(None);
    let path = write(&s.pg_wal, NAME, &segment(NAME, 1));
    let key = keys::wal(&NAME.parse().unwrap());
    // The backend's retries gave up: PostgreSQL retries the command.
    s.faulty.inject(Fault::Fail(Op::Put, Failure::Transient));
    let e = super::push::push(&s.ctx, &path, 0).await.unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    super::push::push(&s.ctx, &path, 0).await.unwrap();
    assert!(s.mem.raw(&key).is_some());

    let other = "000000010000000000000004";
    let path = write(&s.pg_wal, other, &segment(other, 2));
    s.faulty.inject(Fault::Fail(Op::Put, Failure::Permanent));
    let e = super::push::push(&s.ctx, &path, 0).await.unwrap_err();
    assert!(
        matches!(e, WalError::Storage(StorageError::Permanent { .. })),
        "{e}"
    );
    assert!(s.mem.raw(&keys::wal(&other.parse().unwrap())).is_none());
}

#[tokio::test]
async fn a_damaged_copy_is_replaced_a_different_one_refused() {
    let s = setup(None);
    let bytes = segment(NAME, 1);
    let path = write(&s.pg_wal, NAME, &bytes);
    super::push::push(&s.ctx, &path, 0).await.unwrap();
    let key = keys::wal(&NAME.parse().unwrap());
    let good = s.mem.raw(&key).unwrap();
    let mut bad = good.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    s.mem.set_raw(&key, bad.into());
    let report = super::push::push(&s.ctx, &path, 0).await.unwrap();
    assert_eq!(report.outcome, super::push::Outcome::Replaced);
    assert_eq!(report.uploaded.replaced, 1);
    // Whole again: a retry finds it identical.
    let again = super::push::push(&s.ctx, &path, 0).await.unwrap();
    assert_eq!(again.outcome, super::push::Outcome::AlreadyArchived);
    // Another file's contents under the name: never replaced.
    let path = write(&s.pg_wal, NAME, &segment(NAME, 9));
    let e = super::push::push(&s.ctx, &path, 0).await.unwrap_err();
    assert!(matches!(e, WalError::Conflict { .. }), "{e}");
}

#[tokio::test]
async fn a_download_that_breaks_is_resumed_and_verified() {
    let s = setup(None);
    let bytes = segment(NAME, 3);
    let path = write(&s.pg_wal, NAME, &bytes);
    super::push::push(&s.ctx, &path, 0).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    s.faulty.inject(Fault::BreakBodyAfter(1000));
    s.faulty.inject(Fault::StallBodyAfter(200_000));
    let dest = s.pg_wal.join("RECOVERYXLOG");
    super::fetch::fetch(&s.ctx, NAME, &dest, 0).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(s.faulty.gets(), 3);
}

#[tokio::test]
async fn storage_that_stalls_ends_a_fetch_by_its_deadline_as_a_storage_error() {
    let s = setup(Some(Duration::from_millis(700)));
    let bytes = segment(NAME, 4);
    let path = write(&s.pg_wal, NAME, &bytes);
    super::push::push(&s.ctx, &path, 0).await.unwrap();
    for _ in 0..100 {
        s.faulty.inject(Fault::StallBodyAfter(10));
    }
    let dest = s.pg_wal.join("RECOVERYXLOG");
    let started = Instant::now();
    let e = super::fetch::fetch(&s.ctx, NAME, &dest, 0)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(e, WalError::Storage(_)),
        "not a storage error: {e}"
    );
    assert!(!dest.exists(), "a partial file was left");
}

#[tokio::test]
async fn a_missing_segment_is_the_end_a_gap_or_storage_trouble() {
    let s = setup(None);
    for n in ["000000010000000000000001", "000000010000000000000003"] {
        let path = write(&s.pg_wal, n, &segment(n, 5));
        super::push::push(&s.ctx, &path, 0).await.unwrap();
    }
    let dest = s.pg_wal.join("RECOVERYXLOG");
    let gap = super::fetch::fetch(&s.ctx, "000000010000000000000002", &dest, 0).await;
    assert!(matches!(gap, Err(WalError::Gap { .. })), "{gap:?}");
    let end = super::fetch::fetch(&s.ctx, "000000010000000000000004", &dest, 0).await;
    assert!(matches!(end, Err(WalError::NotInArchive { .. })), "{end:?}");
    // A listing that fails must not read as "the end of the archive".
    s.faulty.inject(Fault::Fail(Op::List, Failure::Permanent));
    let trouble = super::fetch::fetch(&s.ctx, "000000010000000000000004", &dest, 0).await;
    assert!(
        matches!(trouble, Err(WalError::Archive(_) | WalError::Storage(_))),
        "{trouble:?}"
    );
    let name: WalFileName = "000000010000000000000004".parse().unwrap();
    assert!(s.mem.raw(&keys::wal(&name)).is_none());
}
