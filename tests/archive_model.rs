//! One model of the archive, on real PostgreSQL: a permanent backup still
//! restores (to its consistency point and to the end of what retention left)
//! after retention removed the WAL between it and newer backups, while a
//! hole nobody recorded stays fatal to recovery; retention cannot pull the
//! ground from under a running backup; backup-list says when backups started
//! and finished; and a closed stdout is not a failure.

mod common;

use std::path::Path;
use std::time::Duration;

use common::drill::{archiving_primary, fails, list, ok, poll_output, push, stderr, wait_archived};
use common::{Archive, Backend, Cluster, TestDir};

/// Restores `backup` into a new directory with `target`, starts it without
/// archiving (a test restore must not write into the archive) and waits
/// for the end of recovery.
fn restore(
    t: &TestDir,
    pg: &Archive,
    a: &Archive,
    backup: &str,
    target: &str,
    dir: &str,
) -> Cluster {
    let dest = t.path().join(dir);
    ok(
        &pg.cairn(
            &[
                "backup-fetch",
                dest.to_str().unwrap(),
                backup,
                "--recovery-target",
                target,
            ],
            t.path(),
        ),
        "backup-fetch",
    );
    common::chown_pg(&dest);
    let mut c = Cluster::existing(t, dest);
    c.set(&[("archive_mode", "off")]);
    c.set_env(a.env.clone());
    c.start();
    c.wait_until("the end of recovery", Duration::from_secs(300), |c| {
        c.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    c
}

fn segments(wal: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

#[test]
fn a_permanent_backup_restores_after_retention_and_a_real_hole_stays_fatal() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (primary, pg) = archiving_primary(&t, &a);
    let wal = a.dir.clone().unwrap().join("wal");
    primary.sql("create table marks(v int); insert into marks values (1)");
    let old = push(&pg, &primary, &t, &[]);
    primary.sql("insert into marks values (2)");
    for _ in 0..4 {
        primary.sql("insert into marks values (2); select pg_switch_wal()");
    }
    let newer = push(&pg, &primary, &t, &[]);
    primary.sql("insert into marks values (3)");
    for _ in 0..3 {
        primary.sql("insert into marks values (3); select pg_switch_wal()");
    }
    wait_archived(&primary);
    ok(&pg.cairn(&["backup-mark", &old], t.path()), "backup-mark");
    let before = segments(&wal);
    ok(
        &pg.cairn(&["delete", "retain", "1", "--confirm"], t.path()),
        "delete retain 1",
    );
    let after = segments(&wal);
    assert!(after.len() < before.len(), "retention removed no WAL");
    let backups = list(&pg, &t);
    let stop = backups[0]["stop_wal_file"].as_str().unwrap().to_string();
    assert!(
        after.contains(&stop),
        "the permanent backup lost its own WAL"
    );
    assert!(
        std::fs::read_dir(a.dir.clone().unwrap().join("meta/holes"))
            .unwrap()
            .count()
            == 1,
        "no record of what retention removed"
    );
    // wal-verify: the permanent backup's restores end where retention removed WAL.
    let verify = pg.cairn(&["wal-verify", "--json"], t.path());
    assert!(verify.status.success(), "wal-verify: {}", stderr(&verify));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert!(report["backups"][0]["removed_from"].is_string(), "{report}");

    // To its consistency point, and to the end of what is left of its WAL:
    // both promote, with the rows the backup holds.
    let immediate = restore(&t, &pg, &a, &old, "immediate", "immediate");
    assert_eq!(immediate.sql("select count(*) from marks where v = 1"), "1");
    assert_eq!(immediate.sql("select count(*) from marks where v = 3"), "0");
    drop(immediate);
    let latest = restore(&t, &pg, &a, &old, "latest", "latest");
    assert_eq!(latest.sql("select count(*) from marks where v = 1"), "1");
    assert_eq!(latest.sql("select count(*) from marks where v = 3"), "0");
    assert!(
        latest.log_text().contains("retention removed"),
        "restore_command did not say why the archive ended:\n{}",
        latest.log_text()
    );
    drop(latest);

    // A segment deleted by hand from the newer backup's WAL is a gap: the
    // restore stops instead of promoting without it.
    let start = backups[1]["start_wal_file"].as_str().unwrap();
    let victim = after
        .iter()
        .filter(|s| s.as_str() > start)
        .nth(1)
        .expect("WAL after the newer backup")
        .clone();
    std::fs::remove_file(wal.join(&victim)).unwrap();
    let dest = t.path().join("gap");
    ok(
        &pg.cairn(
            &[
                "backup-fetch",
                dest.to_str().unwrap(),
                &newer,
                "--recovery-target",
                "latest",
            ],
            t.path(),
        ),
        "backup-fetch",
    );
    common::chown_pg(&dest);
    let mut gap = Cluster::existing(&t, dest);
    gap.set(&[("archive_mode", "off")]);
    gap.set_env(a.env.clone());
    gap.start_no_wait();
    gap.wait_until("recovery to end", Duration::from_secs(120), |c| {
        let log = c.log_text();
        log.contains("FATAL") || log.contains("ready to accept connections")
    });
    let log = gap.log_text();
    assert!(log.contains(&victim) && log.contains("gap"), "{log}");
    assert!(
        !log.contains("database system is ready to accept connections"),
        "recovery promoted over a gap:\n{log}"
    );
}

#[test]
fn retention_cannot_pull_the_ground_from_under_a_running_backup() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_BACKUP_PART_SIZE", "4194304");
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "3", "-q"]);
    let base = push(&pg, &primary, &t, &[]);
    primary.pgbench(&["-c", "2", "-j", "2", "-t", "200"]);
    let backups = a.dir.clone().unwrap().join("basebackups");
    // A delta taken slowly, so that retention runs while it does.
    let slow = |extra: &[&str]| {
        let mut args = vec![
            "backup-push",
            primary.datadir.to_str().unwrap(),
            "--delta",
            "--max-rate",
            "4194304",
        ];
        args.extend_from_slice(extra);
        pg.spawn_cairn(&args, t.path())
    };
    let wait_for_marker = |child: &mut std::process::Child| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let running = std::fs::read_dir(&backups).unwrap().flatten().any(|d| {
                d.path().join("running.json").exists() && !d.path().join("manifest.json").exists()
            });
            if running {
                return;
            }
            assert!(
                poll_output(child).is_none(),
                "the backup ended before it was seen running"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no running-backup marker"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut delta = slow(&[]);
    wait_for_marker(&mut delta);
    fails(
        &pg.cairn(&["delete", "target", &base, "--confirm"], t.path()),
        "a running backup is being built on it",
    );
    // Everything: the running backup keeps its parent and its WAL.
    ok(
        &pg.cairn(&["delete", "everything", "--confirm"], t.path()),
        "delete everything",
    );
    let out = delta.wait_with_output().unwrap();
    let name = ok(&out, "the running delta");
    let listed: Vec<String> = list(&pg, &t)
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, [base.clone(), name.clone()]);
    assert!(
        !backups.join(&name).join("running.json").exists(),
        "the marker outlived the backup"
    );
    // It restores, to the end of the archive.
    let (mut restored, fetched) = common::drill::restore_latest_and_compare(
        &t,
        &a,
        &pg,
        &mut primary,
        "a delta taken while retention ran",
    );
    assert_eq!(fetched, name);

    // A parent deleted under a running delta (by hand): nothing is published.
    restored.pgbench(&["-c", "2", "-j", "2", "-t", "100"]);
    let on_restored = pg.clone_with("PGPORT", &restored.port.to_string());
    let mut child = on_restored.spawn_cairn(
        &[
            "backup-push",
            restored.datadir.to_str().unwrap(),
            "--delta",
            "--max-rate",
            "4194304",
        ],
        t.path(),
    );
    wait_for_marker(&mut child);
    std::fs::remove_file(backups.join(&name).join("manifest.json")).unwrap();
    let out = child.wait_with_output().unwrap();
    restored.stop();
    assert!(!out.status.success(), "published over a deleted parent");
    assert!(
        stderr(&out).contains(&format!("its parent {name} was deleted")),
        "{}",
        stderr(&out)
    );
    let published: Vec<String> = list(&pg, &t)
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(published, [base], "a backup without its parent was listed");
}

#[test]
fn backup_list_says_when_backups_started_and_delete_before_takes_it() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (primary, pg) = archiving_primary(&t, &a);
    let first = push(&pg, &primary, &t, &[]);
    std::thread::sleep(Duration::from_millis(1100));
    let second = push(&pg, &primary, &t, &[]);
    let table = ok(&pg.cairn(&["backup-list"], t.path()), "backup-list");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let started = header.iter().position(|c| *c == "started").unwrap();
    assert!(header.contains(&"finished"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&second)).unwrap();
    let second_started = row.split_whitespace().nth(started).unwrap();
    // A time copied from the list: the backups that started before it go.
    let plan = ok(
        &pg.cairn(&["delete", "before", second_started], t.path()),
        "delete before a listed start time",
    );
    assert!(
        plan.contains(&first) && plan.contains("started before"),
        "{plan}"
    );
    let help = ok(&pg.cairn(&["delete", "before", "--help"], t.path()), "help");
    assert!(help.contains("started"), "{help}");
    let help = ok(&pg.cairn(&["delete", "retain", "--help"], t.path()), "help");
    assert!(help.contains("finished"), "{help}");
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (primary, pg) = archiving_primary(&t, &a);
    push(&pg, &primary, &t, &[]);
    push(&pg, &primary, &t, &[]);
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "set -o pipefail; {} backup-list --json | head -c 1 >/dev/null",
            common::cairn_bin().display()
        ))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(pg.env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(&out)
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}
