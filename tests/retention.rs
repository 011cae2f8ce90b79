//! Retention on real PostgreSQL and real storage: `delete` by lineage followed
//! by the drill, permanent backups, targets, garbage, and `wal-verify` with a
//! gap and across a timeline switch.

mod common;

use std::time::Duration;

use common::drill::{
    archiving_primary, destroy, fails, fetch_to, list, ok, push, restore_latest_and_compare,
    start_restored, stderr, wait_archived,
};
use common::{Archive, Backend, Cluster, TestDir};

fn names(pg: &Archive, t: &TestDir) -> Vec<String> {
    list(pg, t)
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

fn wal_verify(pg: &Archive, t: &TestDir) -> (bool, serde_json::Value, String) {
    let out = pg.cairn(&["wal-verify", "--json"], t.path());
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("wal-verify --json: {e}: {}", stderr(&out)));
    (out.status.success(), report, stderr(&out))
}

/// Full, delta, full, delta, delta of a delta, with workload between; `delete
/// retain 1` (first as a dry run, then confirmed) keeps the newest full and
/// its chain and the WAL from its start; the drill then restores the newest
/// backup to the latest transaction, and every kept backup still restores.
fn retention_drill(backend: Backend) {
    let t = TestDir::new();
    let a = Archive::new(backend).with("CAIRN_BACKUP_PART_SIZE", "4194304");
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    let work = |c: &Cluster| c.pgbench(&["-c", "2", "-j", "2", "-t", "100"]);
    let full1 = push(&pg, &primary, &t, &[]);
    work(&primary);
    let delta1 = push(&pg, &primary, &t, &["--delta"]);
    work(&primary);
    wait_archived(&primary);
    let full2 = push(&pg, &primary, &t, &["--full"]);
    work(&primary);
    let delta2 = push(&pg, &primary, &t, &["--delta"]);
    work(&primary);
    let delta3 = push(&pg, &primary, &t, &["--delta"]);
    work(&primary);
    wait_archived(&primary);
    let all = [full1.as_str(), &delta1, &full2, &delta2, &delta3];
    assert_eq!(names(&pg, &t), all);

    let dry = ok(&pg.cairn(&["delete", "retain", "1"], t.path()), "dry run");
    assert!(dry.contains(&full1) && dry.contains(&delta1), "{dry}");
    assert!(dry.contains("--confirm"), "{dry}");
    assert_eq!(names(&pg, &t), all, "a dry run deleted something");

    let full2_start = list(&pg, &t)[2]["start_wal_file"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        &pg.cairn(&["delete", "retain", "1", "--confirm"], t.path()),
        "delete retain 1",
    );
    assert_eq!(
        names(&pg, &t),
        [full2.as_str(), delta2.as_str(), delta3.as_str()]
    );
    let (verified, report, err) = wal_verify(&pg, &t);
    assert!(verified, "wal-verify after retention: {err}\n{report}");
    if let Some(dir) = &a.dir {
        let mut wal: Vec<String> = std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24)
            .collect();
        wal.sort();
        assert_eq!(
            wal[0], full2_start,
            "WAL before the kept full was not deleted"
        );
    }
    // Nothing left to delete.
    let again = ok(
        &pg.cairn(&["delete", "retain", "1", "--confirm"], t.path()),
        "delete retain 1 again",
    );
    assert!(!again.contains("delete "), "{again}");

    let (_, fetched) =
        restore_latest_and_compare(&t, &a, &pg, &mut primary, "restore after retention");
    assert_eq!(fetched, delta3);
    for kept in [&full2, &delta2] {
        let dest = t.sub(&format!("kept-{kept}"));
        let out = pg.cairn(
            &["backup-fetch", dest.to_str().unwrap(), kept.as_str()],
            t.path(),
        );
        assert_eq!(ok(&out, "backup-fetch of a kept backup"), *kept);
    }
}

#[test]
fn retention_drill_local_directory() {
    retention_drill(Backend::File);
}

#[test]
fn retention_drill_s3() {
    retention_drill(Backend::S3);
}

#[test]
fn retention_drill_gcs() {
    retention_drill(Backend::Gcs);
}

/// backup-mark on a delta marks its chain; permanent backups survive every
/// policy, `delete target` refuses them, `--impermanent` lets them go;
/// `delete garbage` removes an unfinished backup once its grace has passed.
#[test]
fn permanent_backups_targets_and_garbage() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (primary, pg) = archiving_primary(&t, &a);
    primary.sql("create table t as select g from generate_series(1, 10000) g");
    let full1 = push(&pg, &primary, &t, &[]);
    primary.sql("update t set g = g + 1 where g < 100");
    let delta1 = push(&pg, &primary, &t, &["--delta"]);
    let full2 = push(&pg, &primary, &t, &["--full"]);
    let delta2 = push(&pg, &primary, &t, &["--delta"]);

    ok(
        &pg.cairn(&["backup-mark", &delta1], t.path()),
        "backup-mark",
    );
    let marked: Vec<bool> = list(&pg, &t)
        .iter()
        .map(|b| b["permanent"].as_bool().unwrap())
        .collect();
    assert_eq!(
        marked,
        [true, true, false, false],
        "the delta's parent was not marked"
    );
    fails(
        &pg.cairn(&["backup-mark", "base_000000010000000000000099"], t.path()),
        "no backup named base_000000010000000000000099",
    );

    ok(
        &pg.cairn(&["delete", "retain", "1", "--confirm"], t.path()),
        "delete retain 1",
    );
    assert_eq!(
        names(&pg, &t),
        [
            full1.as_str(),
            delta1.as_str(),
            full2.as_str(),
            delta2.as_str()
        ]
    );
    fails(
        &pg.cairn(&["delete", "target", &full1, "--confirm"], t.path()),
        "permanent",
    );
    fails(
        &pg.cairn(
            &["delete", "retain", "--within", "7y", "--confirm"],
            t.path(),
        ),
        "not a duration",
    );
    // Deleting a full takes its deltas with it.
    ok(
        &pg.cairn(&["delete", "target", &full2, "--confirm"], t.path()),
        "delete target",
    );
    assert_eq!(names(&pg, &t), [full1.as_str(), delta1.as_str()]);
    let (verified, report, err) = wal_verify(&pg, &t);
    assert!(verified, "{err}\n{report}");

    ok(
        &pg.cairn(&["backup-mark", &delta1, "--impermanent"], t.path()),
        "backup-mark --impermanent",
    );
    ok(
        &pg.cairn(&["backup-mark", &full1, "--impermanent"], t.path()),
        "backup-mark --impermanent",
    );
    // An unfinished backup: parts without a manifest.
    let root = a.dir.clone().unwrap();
    let stray = root.join("basebackups/base_0000000100000000000000FF");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::copy(
        root.join("basebackups").join(&full1).join("part_00001.tar"),
        stray.join("part_00001.tar"),
    )
    .unwrap();
    let kept = ok(
        &pg.cairn(&["delete", "garbage", "--confirm"], t.path()),
        "garbage",
    );
    assert!(
        stray.exists(),
        "a fresh unfinished backup was deleted: {kept}"
    );
    ok(
        &pg.cairn(
            &["delete", "garbage", "--grace", "0s", "--confirm"],
            t.path(),
        ),
        "garbage --grace 0s",
    );
    assert!(!stray.exists(), "the unfinished backup is still there");
    assert_eq!(names(&pg, &t), [full1.as_str(), delta1.as_str()]);

    ok(
        &pg.cairn(&["delete", "everything", "--confirm"], t.path()),
        "delete everything",
    );
    assert!(names(&pg, &t).is_empty());
}

/// wal-verify: continuous WAL passes; a segment deleted from the middle is a
/// gap that names it (non-zero exit); after a point-in-time restore to a new
/// timeline, the check follows the switch through the .history file.
#[test]
fn wal_verify_reports_gaps_and_follows_timeline_switches() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg) = archiving_primary(&t, &a);
    let wal_dir = a.dir.clone().unwrap().join("wal");
    push(&pg, &primary, &t, &[]);
    primary.sql("create table marks(v text); insert into marks values ('first')");
    wait_archived(&primary);
    let moment = primary.sql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        primary.sql("insert into marks values ('later'); select pg_switch_wal()");
    }
    wait_archived(&primary);
    let (verified, report, err) = wal_verify(&pg, &t);
    assert!(verified, "{err}\n{report}");

    // A hole in the middle.
    let mut segments: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    segments.sort();
    let victim = segments[segments.len() - 2].clone();
    let saved = std::fs::read(wal_dir.join(&victim)).unwrap();
    std::fs::remove_file(wal_dir.join(&victim)).unwrap();
    let (verified, report, err) = wal_verify(&pg, &t);
    assert!(!verified, "a gap passed: {report}");
    assert!(
        err.contains(&victim),
        "the error does not name {victim}: {err}"
    );
    assert_eq!(report["gaps"][0]["first"], victim.as_str(), "{report}");
    assert_eq!(report["gaps"][0]["last"], victim.as_str(), "{report}");
    std::fs::write(wal_dir.join(&victim), saved).unwrap();

    // A point-in-time restore opens timeline 2.
    destroy(&mut primary);
    let data = primary.datadir.clone();
    ok(
        &fetch_to(
            &pg,
            &t,
            &data,
            &["--recovery-target", &format!("time={moment}")],
        ),
        "backup-fetch",
    );
    let restored = start_restored(&t, &a, &data);
    restored.sql("insert into marks values ('on timeline 2')");
    wait_archived(&restored);
    assert!(wal_dir.join("00000002.history").exists());
    let (verified, report, err) = wal_verify(&pg, &t);
    assert!(verified, "after the switch: {err}\n{report}");
    let text = report.to_string();
    assert!(
        text.contains("00000002"),
        "timeline 2 not checked: {report}"
    );
}
