//! `backup-fetch --delta` over an existing data directory of the same
//! cluster: the result is, file by file, what a restore into an empty
//! directory gives; what matched is kept and reported; a directory of
//! another cluster, or one a server runs in, is refused and left alone.
//! Over indexed parts, only the 1 MiB units that differ are fetched; a
//! damaged part fails the restore by name, a damaged index only costs speed.

mod common;

use std::time::Duration;

use common::drill::{
    archiving_primary, differences, encrypted, fetch_to, ok, push, stderr, tree, wait_archived,
};
use common::{Archive, Backend, Cluster, TestDir};

#[test]
fn a_delta_restore_equals_a_fresh_one_and_reuses_what_matches() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_BACKUP_PART_SIZE", "2097152");
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    push(&pg, &primary, &t, &[]);
    primary.pgbench(&["-c", "2", "-t", "300"]);
    primary.sql("create table marker (v text); insert into marker values ('in the delta')");
    push(&pg, &primary, &t, &["--delta"]);
    // The directory drifts on after the backup: more changes, a table
    // dropped, WAL written.
    primary.pgbench(&["-c", "2", "-t", "300"]);
    primary.sql("drop table pgbench_history; create table later (g int); insert into later select generate_series(1, 50000)");
    wait_archived(&primary);

    // A server runs in it: refused, nothing touched.
    let before = tree(&primary.datadir);
    let out = fetch_to(&pg, &t, &primary.datadir, &["--delta"]);
    assert!(
        !out.status.success(),
        "a running server's directory was restored over"
    );
    assert!(
        stderr(&out).contains("a server runs in it"),
        "{}",
        stderr(&out)
    );
    primary.stop();
    let stopped = tree(&primary.datadir);
    assert!(before.len() > 100 && stopped.contains_key("global/pg_control"));

    // Extra damage: a stray file, a relation file cut short.
    std::fs::write(primary.datadir.join("base/stray"), b"not the backup's").unwrap();
    let rel = primary.datadir.join("global/1262");
    let len = std::fs::metadata(&rel).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&rel)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let fresh = t.path().join("fresh");
    ok(
        &fetch_to(&pg, &t, &fresh, &["--recovery-target", "latest"]),
        "backup-fetch",
    );
    let out = fetch_to(
        &pg,
        &t,
        &primary.datadir,
        &["--delta", "--recovery-target", "latest"],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "backup-fetch --delta: {log}");
    assert!(log.contains("kept as they were"), "{log}");
    let diff = differences(&tree(&fresh), &tree(&primary.datadir));
    assert!(diff.is_empty(), "{diff:#?}");
    // Most files were reused.
    let kept: u64 = log
        .split("kept_files=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(kept > 500, "only {kept} files kept: {log}");

    // A run cut short leaves its marker and no pg_control (it cannot
    // start); the next run takes it up. Again, everything matches.
    let control = std::fs::read(primary.datadir.join("global/pg_control")).unwrap();
    let sysid = u64::from_le_bytes(control[..8].try_into().unwrap());
    std::fs::write(
        primary.datadir.join(".cairn-delta-restore"),
        sysid.to_string(),
    )
    .unwrap();
    std::fs::remove_file(primary.datadir.join("global/pg_control")).unwrap();
    let out = fetch_to(
        &pg,
        &t,
        &primary.datadir,
        &["--delta", "--recovery-target", "latest"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let diff = differences(&tree(&fresh), &tree(&primary.datadir));
    assert!(diff.is_empty(), "{diff:#?}");

    // It starts, recovers and has the backup's data.
    common::chown_pg(&primary.datadir);
    let mut restored = Cluster::existing(&t, primary.datadir.clone());
    restored.set_env(a.env.clone());
    restored.start();
    restored.wait_until("the end of recovery", Duration::from_secs(120), |c| {
        c.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert_eq!(restored.sql("select v from marker"), "in the delta");
    restored.stop();
}

#[test]
fn a_directory_of_another_cluster_is_refused_and_left_alone() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (primary, pg) = archiving_primary(&t, &a);
    push(&pg, &primary, &t, &[]);
    let other = Cluster::init(&t, "other", &[]);
    let before = tree(&other.datadir);
    let out = fetch_to(&pg, &t, &other.datadir, &["--delta"]);
    let e = stderr(&out);
    assert!(!out.status.success());
    assert!(
        e.contains("belongs to cluster") && e.contains("same cluster"),
        "{e}"
    );
    assert!(differences(&before, &tree(&other.datadir)).is_empty());
    // Not a data directory at all.
    let junk = t.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("x"), b"x").unwrap();
    let e = stderr(&fetch_to(&pg, &t, &junk, &["--delta"]));
    assert!(e.contains("not a data directory"), "{e}");
    assert!(junk.join("x").exists());
}

/// A number the delta restore's summary line logs, e.g. `written_bytes=…`.
fn logged(log: &str, field: &str) -> u64 {
    log.split(&format!("{field}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {log}"))
}

/// A directory restored from an older backup, then the newer backup
/// restored over it with `--delta`: compared with a fresh restore, file by
/// file, and with how little was written.
fn units_that_differ_are_all_that_is_fetched(t: &TestDir, a: Archive) {
    let a = a.with("CAIRN_BACKUP_PART_SIZE", "16777216");
    let (mut primary, pg) = archiving_primary(t, &a);
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    primary.sql("checkpoint");
    push(&pg, &primary, t, &[]);
    let old = t.path().join("old");
    ok(&fetch_to(&pg, t, &old, &[]), "backup-fetch");
    // 1 % of the accounts, a contiguous range: a few units of a 64 MB file.
    primary.sql(
        "update pgbench_accounts set abalance = abalance + 1 where aid between 200000 and 205000",
    );
    primary.sql("checkpoint");
    push(&pg, &primary, t, &[]);
    wait_archived(&primary);
    let fresh = t.path().join("fresh");
    ok(&fetch_to(&pg, t, &fresh, &[]), "backup-fetch");
    let want = tree(&fresh);
    let accounts = primary.sql("select pg_relation_filepath('pgbench_accounts')");
    let index = primary.sql("select pg_relation_filepath('pgbench_accounts_pkey')");
    primary.stop();

    let delta = |why: &str| {
        let out = fetch_to(&pg, t, &old, &["--delta"]);
        let log = stderr(&out);
        assert!(out.status.success(), "{why}: {log}");
        let diff = differences(&want, &tree(&old));
        assert!(diff.is_empty(), "{why}: {diff:#?}");
        log
    };
    let log = delta("over the older backup");
    let total: u64 = want.values().map(|v| v.len() as u64).sum();
    let written = logged(&log, "written_bytes");
    assert!(
        written * 5 < total,
        "{written} of {total} bytes written: the parts were not read by unit: {log}"
    );

    // Cut short, grown, and gone: each comes back whole.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(old.join(&accounts))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 3).unwrap();
    let mut grown = std::fs::read(old.join(&index)).unwrap();
    grown.extend_from_slice(&[7u8; 300_000]);
    std::fs::write(old.join(&index), grown).unwrap();
    std::fs::remove_file(old.join("global/1262")).unwrap();
    delta("cut, grown and removed files");
}

#[test]
fn indexed_parts_fetch_only_what_differs_encrypted_zstd() {
    let t = TestDir::new();
    let a = encrypted(
        Archive::new(Backend::File).with("CAIRN_COMPRESSION", "zstd"),
        &t,
    );
    units_that_differ_are_all_that_is_fetched(&t, a);
}

#[test]
fn indexed_parts_fetch_only_what_differs_on_s3() {
    units_that_differ_are_all_that_is_fetched(&TestDir::new(), Archive::new(Backend::S3));
}

#[test]
fn a_damaged_part_fails_by_name_and_a_damaged_index_only_costs_speed() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_BACKUP_PART_SIZE", "16777216");
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    primary.sql("checkpoint");
    push(&pg, &primary, &t, &[]);
    let accounts = primary.sql("select pg_relation_filepath('pgbench_accounts')");
    primary.stop();
    let fresh = t.path().join("fresh");
    ok(&fetch_to(&pg, &t, &fresh, &[]), "backup-fetch");
    let want = tree(&fresh);
    let old = t.path().join("old");
    ok(&fetch_to(&pg, &t, &old, &[]), "backup-fetch");
    let zero = |path: &std::path::Path| {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::write(path, vec![0u8; len as usize]).unwrap();
    };

    let backup_dir = std::fs::read_dir(a.dir.as_ref().unwrap().join("basebackups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let objects: Vec<std::path::PathBuf> = std::fs::read_dir(&backup_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let indexes: Vec<_> = objects
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".index"))
        .cloned()
        .collect();
    assert!(indexes.len() >= 2, "{objects:?}");

    // Damaged indexes: the parts are read whole, with a warning; the result
    // is the same.
    let saved: Vec<Vec<u8>> = indexes.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for p in &indexes {
        std::fs::write(p, b"not an index").unwrap();
    }
    zero(&old.join(&accounts));
    let out = fetch_to(&pg, &t, &old, &["--delta"]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("index is not usable"), "{log}");
    assert!(differences(&want, &tree(&old)).is_empty());
    // backup-verify reports them, by part.
    let out = pg.cairn(&["backup-verify"], t.path());
    let e = stderr(&out);
    assert!(!out.status.success(), "damaged indexes verified: {e}");
    assert!(e.contains("its index is not usable"), "{e}");
    for (p, bytes) in indexes.iter().zip(saved) {
        std::fs::write(p, bytes).unwrap();
    }
    ok(&pg.cairn(&["backup-verify"], t.path()), "backup-verify");

    // Damaged parts (each in its middle): the restore fails and names the
    // first it read from.
    let parts: Vec<_> = objects
        .iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with("part_") && !name.ends_with(".index")
        })
        .collect();
    for part in &parts {
        let mut bytes = std::fs::read(part).unwrap();
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 64] {
            *b ^= 0x5a;
        }
        std::fs::write(part, bytes).unwrap();
    }
    zero(&old.join(&accounts));
    let out = fetch_to(&pg, &t, &old, &["--delta"]);
    let e = stderr(&out);
    assert!(
        !out.status.success(),
        "a damaged part was restored from: {e}"
    );
    assert!(
        parts.iter().any(|p| e.contains(&format!(
            "part {}",
            p.file_name().unwrap().to_string_lossy()
        ))),
        "{e}"
    );
    assert!(e.contains("run backup-fetch --delta again"), "{e}");
}
