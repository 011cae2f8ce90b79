//! The operator's drill for WAL archiving, on real PostgreSQL and real storage:
//! archive with cairn while a workload runs, restore a base backup taken before
//! the workload with cairn as restore_command, and compare pg_dumpall output.

mod common;

use std::time::Duration;

use common::{AgeKey, Archive, Backend, Cluster, TestDir};

/// A primary archiving to `archive`; returns it with a base backup (taken before
/// any workload) in `<dir>/restored`, after a workload that filled at least 40
/// segments, all archived. Returns the primary's pg_dumpall output.
fn archive_workload(t: &TestDir, archive: &Archive, initdb_opts: &[&str]) -> (Cluster, String) {
    let mut primary = Cluster::init(t, "primary", initdb_opts);
    primary.archive_to(archive);
    primary.start();
    primary.basebackup(&t.path().join("restored"));
    primary.pgbench(&["-i", "-s", "4", "-q"]);
    primary.pgbench(&["-c", "4", "-j", "2", "-t", "200"]);
    for i in 0..40 {
        primary.sql(&format!(
            "create table t{i} as select g, md5(g::text) from generate_series(1, 500) g; select pg_switch_wal()"
        ));
    }
    let last = primary.sql("select pg_walfile_name(pg_current_wal_lsn())");
    primary.sql("select pg_switch_wal()");
    primary.wait_until(
        "the last segment to be archived",
        Duration::from_secs(180),
        |c| c.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver") >= last,
    );
    let stats = primary.sql("select archived_count, failed_count from pg_stat_archiver");
    let (archived, failed) = stats.split_once('|').unwrap();
    assert!(
        archived.parse::<u32>().unwrap() >= 40,
        "only {archived} files archived"
    );
    assert_eq!(
        failed,
        "0",
        "archive_command failed; log:\n{}",
        primary.log_text()
    );
    let dump = primary.dumpall();
    primary.stop();
    (primary, dump)
}

fn restore_and_compare(t: &TestDir, archive: &Archive, dump: &str) {
    let mut restored = Cluster::existing(t, t.path().join("restored"));
    restored.restore_from(archive);
    std::fs::write(restored.datadir.join("recovery.signal"), "").unwrap();
    common::chown_pg(&restored.datadir);
    restored.start();
    restored.wait_until("the end of recovery", Duration::from_secs(300), |c| {
        c.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    common::assert_same_dump(&restored.dumpall(), dump, &restored.log_text());
    assert!(
        restored.log_text().contains("archive recovery complete"),
        "{}",
        restored.log_text()
    );
    restored.stop();
}

fn drill(backend: Backend, compression: &str, encrypt: bool, initdb_opts: &[&str]) {
    let t = TestDir::new();
    let mut archive = Archive::new(backend).with("CAIRN_COMPRESSION", compression);
    if encrypt {
        let k = AgeKey::new(t.path());
        archive = archive.with("CAIRN_AGE_RECIPIENTS", &k.recipient).with(
            "CAIRN_AGE_IDENTITY_FILE",
            &k.identity_file.display().to_string(),
        );
    }
    let (_primary, dump) = archive_workload(&t, &archive, initdb_opts);
    restore_and_compare(&t, &archive, &dump);
}

#[test]
fn drill_local_directory_lz4_age() {
    drill(Backend::File, "lz4", true, &[]);
}

#[test]
fn drill_s3_zstd() {
    drill(Backend::S3, "zstd", false, &[]);
}

/// The second S3 implementation, encrypted, with the SDK's checksums on
/// every request.
#[test]
fn drill_second_s3_server_lz4_age_checksummed() {
    let t = TestDir::new();
    let k = AgeKey::new(t.path());
    let archive = Archive::new(Backend::Moto)
        .with("CAIRN_S3_CHECKSUM", "when_supported")
        .with("CAIRN_AGE_RECIPIENTS", &k.recipient)
        .with(
            "CAIRN_AGE_IDENTITY_FILE",
            &k.identity_file.display().to_string(),
        );
    let (_primary, dump) = archive_workload(&t, &archive, &[]);
    restore_and_compare(&t, &archive, &dump);
}

/// PostgreSQL's recovery with cairn on Azure Blob Storage (Azurite),
/// zstd and encrypted.
#[test]
fn drill_azure_zstd_age() {
    drill(Backend::Azure, "zstd", true, &[]);
}

#[test]
fn drill_gcs_uncompressed_small_segments() {
    drill(Backend::Gcs, "none", false, &["--wal-segsize=1"]);
}

/// Storage going away mid-recovery must stop PostgreSQL, not promote it with
/// data missing; once storage is back, the same recovery completes.
#[test]
fn recovery_stops_when_storage_is_unreachable() {
    let t = TestDir::new();
    let mut archive = Archive::new(Backend::S3).with("CAIRN_STORAGE_TIMEOUT", "2");
    let (_primary, dump) = archive_workload(&t, &archive, &["--wal-segsize=4"]);
    archive.s3.as_mut().unwrap().stop();

    let mut restored = Cluster::existing(&t, t.path().join("restored"));
    restored.restore_from(&archive);
    std::fs::write(restored.datadir.join("recovery.signal"), "").unwrap();
    common::chown_pg(&restored.datadir);
    restored.start_no_wait();
    restored.wait_until(
        "PostgreSQL to stop on the restore_command failure",
        Duration::from_secs(120),
        // pg_ctl -W returns before the postmaster writes its pid file: wait
        // for the shutdown line, then for the process to be gone.
        |c| c.log_text().contains("database system is shut down") && !c.is_running(),
    );
    let log = restored.log_text();
    assert!(
        !log.contains("archive recovery complete") && !log.contains("selected new timeline"),
        "promoted early:\n{log}"
    );
    assert!(log.contains("could not restore file"), "{log}");

    archive.s3.as_mut().unwrap().restart();
    restored.start();
    restored.wait_until("the end of recovery", Duration::from_secs(300), |c| {
        c.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    common::assert_same_dump(&restored.dumpall(), &dump, &restored.log_text());
    restored.stop();
}
