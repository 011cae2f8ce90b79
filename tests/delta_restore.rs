//! `backup-fetch --delta` over an existing data directory of the same
//! cluster: the result is, file by file, what a restore into an empty
//! directory gives; what matched is kept and reported; a directory of
//! another cluster, or one a server runs in, is refused and left alone.

mod common;

use std::time::Duration;

use common::drill::{
    archiving_primary, differences, fetch_to, ok, push, stderr, tree, wait_archived,
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
