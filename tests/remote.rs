//! Remote backups (`backup-push --remote`, over the replication protocol) on
//! real PostgreSQL and real storage: the drill from a primary and from a
//! streaming standby, a role without REPLICATION, and what `backup-list`
//! says of them.

mod common;

use std::time::Duration;

use common::drill::{
    archiving_primary, destroy, fails, list, ok, push, restore_latest_and_compare, start_restored,
    stderr, wait_archived,
};
use common::{Archive, Backend, TestDir};

/// backup-push --remote against `c` (no data directory anywhere in sight).
fn push_remote(pg: &Archive, t: &TestDir) -> std::process::Output {
    pg.cairn(&["backup-push", "--remote"], t.path())
}

/// The drill with a remote backup of the primary: backup over the network,
/// pgbench, a local delta on it, pgbench, dump, destroy, restore the chain,
/// replay, compare.
fn remote_drill(backend: Backend, compression: &str) {
    let t = TestDir::new();
    let a = Archive::new(backend)
        .with("CAIRN_COMPRESSION", compression)
        .with("CAIRN_BACKUP_PART_SIZE", "4194304");
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    // The server paces what it sends (MAX_RATE); the backup is the same.
    let name = ok(
        &pg.cairn(
            &["backup-push", "--remote", "--max-rate", "209715200"],
            t.path(),
        ),
        "backup-push --remote",
    );
    let backups = list(&pg, &t);
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0]["name"], name.as_str());
    assert_eq!(backups[0]["remote"], true);
    assert!(
        backups[0]["parts"].as_array().unwrap().len() > 2,
        "{:?}",
        backups[0]["parts"]
    );
    // The server's own manifest came along, in the control part.
    assert!(
        backups[0]["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "backup_manifest"),
        "no backup_manifest"
    );
    let table = ok(&pg.cairn(&["backup-list"], t.path()), "backup-list");
    assert!(table.contains("full (remote)"), "{table}");

    primary.pgbench(&["-c", "4", "-j", "2", "-t", "200"]);
    // A local delta builds on the remote full like on any other.
    let delta = push(&pg, &primary, &t, &["--delta"]);
    assert_eq!(list(&pg, &t)[1]["parent"], name.as_str());
    primary.pgbench(&["-c", "2", "-j", "2", "-t", "100"]);
    let (_, fetched) =
        restore_latest_and_compare(&t, &a, &pg, &mut primary, "remote backup restore");
    assert_eq!(fetched, delta);
}

#[test]
fn remote_drill_local_directory_lz4() {
    remote_drill(Backend::File, "lz4");
}

#[test]
fn remote_drill_s3_zstd() {
    remote_drill(Backend::S3, "zstd");
}

/// A role that may log in but not replicate gets the server's refusal, and
/// nothing is stored; `--remote --delta` on PostgreSQL 15 is a full backup.
#[test]
fn a_role_without_replication_is_refused() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (primary, pg) = archiving_primary(&t, &a);
    primary.sql("create role reader login");
    let reader = pg.clone_with("PGUSER", "reader");
    let out = push_remote(&reader, &t);
    let err = stderr(&out);
    assert!(!out.status.success(), "succeeded: {err}");
    assert!(
        err.contains("replication role") || err.contains("WAL sender"),
        "{err}"
    );
    assert!(err.contains("as reader"), "{err}");
    assert!(list(&pg, &t).is_empty());
    fails(
        &pg.cairn(&["backup-push", "--remote", "--max-rate", "1000"], t.path()),
        "at least 32768 bytes per second",
    );
    // A remote delta of a server before 17: a full backup, saying why.
    let both = pg.cairn(&["backup-push", "--remote", "--delta"], t.path());
    let log = stderr(&both);
    assert!(both.status.success(), "{log}");
    assert!(
        log.contains("taking a full backup") && log.contains("from 17 on"),
        "{log}"
    );
    assert_eq!(list(&pg, &t)[0]["kind"], "full");
}

/// A streaming standby (archive_mode = always), backed up remotely and
/// locally: each backup's end is archived once the primary moves on; the
/// drill restores each, replays the primary's later pgbench workload, and
/// compares dumps.
#[test]
fn remote_and_local_backups_of_a_standby() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_BACKUP_PART_SIZE", "4194304");
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    // WAL from the archive, then streamed; archive_command as on the primary.
    let mut standby = common::drill::streaming_standby(&t, &a, &primary, "standby", |s| {
        s.restore_from(&a);
        s.archive_to(&a);
        s.set(&[("archive_mode", "always")]);
    });
    let standby_dir = standby.datadir.clone();
    let on_standby = pg.clone_with("PGPORT", &standby.port.to_string());

    // The standby cannot end a segment itself: the primary switches until
    // each backup has seen its end archived.
    let backup = |args: &[&str], what: &str| {
        let mut push = on_standby.spawn_cairn(args, t.path());
        let out = loop {
            if let Some(out) = common::drill::poll_output(&mut push) {
                break out;
            }
            primary.sql("select pg_switch_wal()");
            std::thread::sleep(Duration::from_millis(300));
        };
        ok(&out, what)
    };
    let remote = backup(
        &["backup-push", "--remote"],
        "backup-push --remote of the standby",
    );
    // No checkpoint from the primary since: a backup would start where that
    // one did, under its name. Refused, saying why and what to do.
    let local_args = ["backup-push", standby_dir.to_str().unwrap()];
    fails(
        &on_standby.cairn(&local_args, t.path()),
        "run CHECKPOINT on the primary",
    );
    primary.sql("checkpoint");
    let checkpointed = primary.sql("select pg_current_wal_lsn()");
    standby.wait_until("the checkpoint's replay", Duration::from_secs(60), |s| {
        s.sql(&format!(
            "select pg_last_wal_replay_lsn() >= '{checkpointed}'::pg_lsn"
        )) == "t"
    });
    let local = backup(&local_args, "backup-push of the standby's data directory");
    let backups = list(&pg, &t);
    assert_eq!(backups.len(), 2);
    assert_eq!(backups[0]["remote"], true);
    assert_ne!(backups[1]["remote"], true);

    primary.pgbench(&["-c", "2", "-t", "200"]);
    let dump = primary.dumpall();
    primary.sql("checkpoint");
    wait_archived(&primary);
    standby.stop();
    destroy(&mut primary);
    let data = primary.datadir.clone();
    for name in [remote, local] {
        let fetched = ok(
            &pg.cairn(
                &[
                    "backup-fetch",
                    data.to_str().unwrap(),
                    &name,
                    "--recovery-target",
                    "latest",
                ],
                t.path(),
            ),
            "backup-fetch",
        );
        assert_eq!(fetched, name);
        let mut restored = start_restored(&t, &a, &data);
        common::assert_same_dump(&restored.dumpall(), &dump, &name);
        destroy(&mut restored);
    }
}

/// Waits for `what` (`seen`) while `backup` runs: fails if it ends first
/// or two minutes pass.
fn while_running(backup: &mut std::process::Child, what: &str, mut seen: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !seen() {
        assert!(
            common::drill::poll_output(backup).is_none(),
            "the backup ended before {what}"
        );
        assert!(std::time::Instant::now() < deadline, "no {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A remote backup killed midway leaves parts but no manifest: it does not
/// exist for backup-list or restores, and `delete garbage` removes its parts.
#[test]
fn a_killed_remote_backup_is_garbage() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File)
        .with("CAIRN_BACKUP_PART_SIZE", "1048576")
        .with("CAIRN_COMPRESSION", "none");
    let (primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "10", "-q"]);
    let backups = a.dir.clone().unwrap().join("basebackups");
    let mut push = pg.spawn_cairn(&["backup-push", "--remote"], t.path());
    let part_written = || {
        std::fs::read_dir(&backups).ok().is_some_and(|dirs| {
            dirs.flatten()
                .any(|d| d.path().join("part_00002.tar").exists())
        })
    };
    while_running(&mut push, "a second part", part_written);
    push.kill().unwrap();
    push.wait().unwrap();
    assert!(list(&pg, &t).is_empty(), "a killed backup is listed");
    let dir = std::fs::read_dir(&backups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(!dir.join("manifest.json").exists());
    ok(
        &pg.cairn(
            &["delete", "garbage", "--grace", "0s", "--confirm"],
            t.path(),
        ),
        "delete garbage",
    );
    assert!(!dir.exists(), "the killed backup's parts are still there");
    // The next backup is whole.
    ok(
        &pg.cairn(&["backup-push", "--remote"], t.path()),
        "backup-push --remote",
    );
    assert_eq!(list(&pg, &t).len(), 1);
}

/// Two backups of one cluster into one storage never overlap, whichever host
/// runs them: the second stops at once, naming the holder; the lock goes with
/// the holder's session.
#[test]
fn concurrent_remote_backups_are_refused() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File)
        .with("CAIRN_BACKUP_PART_SIZE", "1048576")
        .with("CAIRN_COMPRESSION", "zstd");
    let (primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "10", "-q"]);
    let mut first = pg.spawn_cairn(&["backup-push", "--remote"], t.path());
    let held = "select count(*) from pg_locks where locktype = 'advisory' and granted";
    while_running(&mut first, "the first backup's lock", || {
        primary.sql(held) != "0"
    });
    let second = push_remote(&pg, &t);
    let err = stderr(&second);
    assert!(!second.status.success(), "the second backup ran: {err}");
    assert!(
        err.contains("another backup of this cluster is running") && err.contains("cairn pid"),
        "{err}"
    );
    ok(&first.wait_with_output().unwrap(), "the first backup");
    assert_eq!(list(&pg, &t).len(), 1);
    // Released with the session: the next one runs.
    ok(&push_remote(&pg, &t), "a later backup");
}
