//! Remote incremental backups on real PostgreSQL 17 and 18 servers
//! (`summarize_wal = on`): a chain of a remote full and two incrementals,
//! with relations created, changed, truncated and dropped between them,
//! stores a fraction of the full, restores (compared by query checksums
//! over every table, after replay) with `INCREMENTAL FROM` gone from
//! backup_label;
//! what the server cannot do (summaries off, a new timeline after a
//! restore) is a full backup with the reason; a damaged incremental part
//! fails the restore, naming it.

mod common;

use std::time::Duration;

use common::drill::{
    destroy, differences, fetch_to, list, ok, pgbench_checksum, stderr, tree, wait_archived,
    with_pg,
};
use common::{Archive, Backend, Cluster, TestDir};

/// A PostgreSQL `major` cluster with WAL summaries, archiving to `a`.
fn summarizing(t: &TestDir, a: &Archive, major: u32) -> (Cluster, Archive) {
    let mut c = Cluster::init_on(common::Server::embedded(major), t, "primary", &[]);
    c.archive_to(a);
    c.set(&[("summarize_wal", "on")]);
    c.start();
    let pg = with_pg(a, &c);
    (c, pg)
}

fn remote(pg: &Archive, t: &TestDir, extra: &[&str]) -> (String, String) {
    let mut args = vec!["backup-push", "--remote"];
    args.extend_from_slice(extra);
    let out = pg.cairn(&args, t.path());
    assert!(
        out.status.success(),
        "backup-push --remote: {}",
        stderr(&out)
    );
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr(&out),
    )
}

fn chain_restores(major: u32) {
    let t = TestDir::new();
    let a = Archive::new(Backend::File)
        .with("CAIRN_BACKUP_PART_SIZE", "4194304")
        .with("CAIRN_BACKUP_ARCHIVE_TIMEOUT", "60");
    let (mut c, pg) = summarizing(&t, &a, major);
    c.pgbench(&["-i", "-s", "10", "-q"]);
    c.sql(
        "create table doomed as select g from generate_series(1, 50000) g; \
         create table shrinking as select g, repeat('y', 100) f from generate_series(1, 100000) g",
    );
    let (full, _) = remote(&pg, &t, &[]);

    // 1 % of the accounts, a contiguous range, and more.
    c.sql("update pgbench_accounts set abalance = abalance + 1 where aid <= 10000");
    c.sql("drop table doomed");
    c.sql("delete from shrinking where g > 1000");
    c.sql("vacuum shrinking");
    c.sql("create table newcomer as select g from generate_series(1, 20000) g");
    let (first, log) = remote(&pg, &t, &["--delta"]);
    assert!(first.contains("_D_"), "not incremental: {first}\n{log}");
    c.pgbench(&["-c", "4", "-j", "2", "-t", "300"]);
    let (second, _) = remote(&pg, &t, &["--delta"]);
    assert!(second.contains("_D_"), "not incremental: {second}");

    let backups = list(&pg, &t);
    assert_eq!(backups.len(), 3);
    let (b0, b1, b2) = (&backups[0], &backups[1], &backups[2]);
    assert_eq!(b0["name"], full.as_str());
    assert_eq!(b1["parent"], full.as_str());
    assert_eq!(b2["parent"], first.as_str());
    assert_eq!(b2["chain_depth"], 2);
    assert_eq!(b1["remote"], true);
    let stored = |b: &serde_json::Value| b["stored_size"].as_u64().unwrap();
    assert!(
        stored(b1) * 5 < stored(b0),
        "incremental stored {} of the full's {}",
        stored(b1),
        stored(b0)
    );
    assert!(
        b1["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["stored"]["pages"].is_object()),
        "no page sets in {first}"
    );
    // Nothing of the server's file names leaks into the catalog.
    assert!(!b1.to_string().contains("INCREMENTAL."), "{b1}");

    let before = pgbench_checksum(&c);
    let others = c.sql(
        "select (select count(*) from shrinking) || ' ' || (select sum(g) from newcomer) || ' ' || \
         (select count(*) from pg_class where relname = 'doomed')",
    );
    c.sql("checkpoint");
    wait_archived(&c);
    let server = common::Server::embedded(major);
    destroy(&mut c);

    let data = c.datadir.clone();
    ok(
        &fetch_to(&pg, &t, &data, &["--recovery-target", "latest"]),
        "backup-fetch",
    );
    assert!(
        !std::fs::read_to_string(data.join("backup_label"))
            .unwrap()
            .contains("INCREMENTAL"),
        "backup_label still says INCREMENTAL FROM"
    );
    // The chain restored over the full's restore (--delta) gives the same
    // files, keeping those the incrementals left unchanged.
    let over = t.path().join("over");
    ok(&fetch_to(&pg, &t, &over, &[]), "backup-fetch of the chain");
    let fresh = tree(&over);
    std::fs::remove_dir_all(&over).unwrap();
    ok(
        &pg.cairn(&["backup-fetch", over.to_str().unwrap(), &full], t.path()),
        "backup-fetch of the full",
    );
    let out = fetch_to(&pg, &t, &over, &["--delta"]);
    assert!(
        out.status.success(),
        "backup-fetch --delta: {}",
        stderr(&out)
    );
    let diff = differences(&fresh, &tree(&over));
    assert!(diff.is_empty(), "{diff:#?}");
    let kept: usize = stderr(&out)
        .split("kept_files=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(kept > 500, "only {kept} files kept: {}", stderr(&out));
    common::chown_pg(&data);
    let mut restored = Cluster::existing(&t, data);
    restored.set_server(server);
    restored.set_env(a.env.clone());
    restored.start();
    restored.wait_until("the end of recovery", Duration::from_secs(300), |r| {
        r.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert_eq!(pgbench_checksum(&restored), before);
    assert_eq!(
        restored.sql(
            "select (select count(*) from shrinking) || ' ' || (select sum(g) from newcomer) || ' ' || \
             (select count(*) from pg_class where relname = 'doomed')"
        ),
        others
    );
    // Every page of every relation reads back (amcheck-free: a full scan).
    restored.sql("select count(*) from pgbench_accounts where filler is not null");
}

#[test]
fn an_incremental_chain_restores_on_postgresql_17() {
    chain_restores(17);
}

#[test]
fn an_incremental_chain_restores_on_postgresql_18() {
    chain_restores(18);
}

/// A parent taken from the data directory, summaries turned off between
/// backups: a full backup, and the reason.
/// A damaged incremental part: backup-fetch fails and names it, and
/// backup-verify too. A damaged server manifest of the parent, a parent
/// deleted between backups, and an emptied archive each give a full
/// backup or a delta on what is left, with the reason.
#[test]
fn what_the_server_cannot_do_is_a_full_backup_and_damage_is_named() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut c, pg) = summarizing(&t, &a, 17);
    c.pgbench(&["-i", "-s", "5", "-q"]);
    // The latest backup was taken from the data directory: no server
    // manifest to build on.
    ok(
        &pg.cairn(&["backup-push", c.datadir.to_str().unwrap()], t.path()),
        "local backup-push",
    );
    let (name, log) = remote(&pg, &t, &["--delta"]);
    assert!(!name.contains("_D_"), "{name}");
    assert!(log.contains("no server backup_manifest"), "{log}");
    c.pgbench(&["-c", "2", "-t", "200"]);
    let (incremental, _) = remote(&pg, &t, &["--delta"]);
    assert!(incremental.contains("_D_"), "{incremental}");

    c.sql("alter system set summarize_wal = off");
    c.sql("select pg_reload_conf()");
    let (name, log) = remote(&pg, &t, &["--delta"]);
    assert!(!name.contains("_D_"), "{name}");
    assert!(
        log.contains("taking a full backup") && log.contains("summarize_wal is off"),
        "{log}"
    );
    // Summaries back on, but the server no longer has them back to the
    // parent's start... it has (they are kept for wal_summary_keep_time),
    // so the delta builds on the last full again.
    c.sql("alter system set summarize_wal = on");
    c.sql("select pg_reload_conf()");
    c.pgbench(&["-c", "2", "-t", "100"]);
    let (again, log) = remote(&pg, &t, &["--delta"]);
    assert!(
        again.contains(&format!("_D_{}", &name[5..])),
        "{again}\n{log}"
    );

    // Damage the incremental's first data part in the archive.
    let dir = a.dir.as_ref().unwrap().join("basebackups").join(&again);
    let part = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part_")
        })
        .min()
        .expect("a data part");
    let mut bytes = std::fs::read(&part).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let part_name = part.file_name().unwrap().to_string_lossy().into_owned();
    c.stop();
    let data = t.path().join("restore");
    let out = fetch_to(&pg, &t, &data, &[]);
    let e = stderr(&out);
    assert!(!out.status.success(), "restored a damaged backup: {e}");
    assert!(e.contains(&again) && e.contains(&part_name), "{e}");
    let out = pg.cairn(&["backup-verify", &again], t.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&part_name),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The parent's server manifest damaged in storage: a full backup, with
    // the reason, not a failed one.
    c.start();
    let manifest = dir.join("backup_manifest");
    let mut bytes = std::fs::read(&manifest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&manifest, bytes).unwrap();
    let (full, log) = remote(&pg, &t, &["--delta"]);
    assert!(!full.contains("_D_"), "{full}");
    assert!(
        log.contains(&format!(
            "the server backup_manifest of {again} cannot be read"
        )),
        "{log}"
    );
    // The parent deleted between backups: the next delta builds on what
    // is left.
    c.pgbench(&["-c", "2", "-t", "100"]);
    let (doomed, _) = remote(&pg, &t, &["--delta"]);
    assert!(doomed.contains(&format!("_D_{}", &full[5..])), "{doomed}");
    ok(
        &pg.cairn(&["delete", "target", &doomed, "--confirm"], t.path()),
        "delete target",
    );
    c.pgbench(&["-c", "2", "-t", "100"]);
    let (next, log) = remote(&pg, &t, &["--delta"]);
    assert!(
        next.contains(&format!("_D_{}", &full[5..])),
        "{next}\n{log}"
    );
    // Nothing left to build on: a full backup, and the log says why.
    ok(
        &pg.cairn(&["delete", "everything", "--confirm"], t.path()),
        "delete everything",
    );
    let (name, log) = remote(&pg, &t, &["--delta"]);
    assert!(!name.contains("_D_"), "{name}");
    assert!(log.contains("taking a full backup"), "{log}");
    let out = fetch_to(&pg, &t, &t.path().join("last"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// After a point-in-time restore the cluster is on a new timeline, and its
/// server has no WAL summaries of the old one: the first remote delta on the
/// old timeline's backup cannot be built, so it is a full backup with the
/// server's reason; the next one builds on that full.
#[test]
fn a_new_timeline_without_summaries_gets_a_full_backup_then_deltas() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut c, pg) = summarizing(&t, &a, 17);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    let (full, _) = remote(&pg, &t, &[]);
    c.pgbench(&["-c", "2", "-t", "100"]);
    wait_archived(&c);
    destroy(&mut c);

    let data = c.datadir.clone();
    ok(
        &fetch_to(&pg, &t, &data, &["--recovery-target", "latest"]),
        "backup-fetch",
    );
    common::chown_pg(&data);
    let mut restored = Cluster::existing(&t, data);
    restored.set_server(common::Server::embedded(17));
    restored.set_env(a.env.clone());
    restored.start();
    restored.wait_until("the promotion", Duration::from_secs(120), |r| {
        r.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert_eq!(
        restored.sql("select timeline_id from pg_control_checkpoint()"),
        "2"
    );
    let pg = with_pg(&a, &restored);
    let (name, log) = remote(&pg, &t, &["--delta"]);
    assert!(!name.contains("_D_"), "{name}\n{log}");
    // The server's own words: its summaries do not reach back that far.
    assert!(
        log.contains(&format!("the server cannot build on {full}"))
            && log.contains("WAL summaries"),
        "{log}"
    );
    restored.pgbench(&["-c", "2", "-t", "100"]);
    let (next, log) = remote(&pg, &t, &["--delta"]);
    assert!(
        next.contains(&format!("_D_{}", &name[5..])),
        "{next}\n{log}"
    );
}
