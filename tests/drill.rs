//! `cairn drill` and `cairn backup-verify` against real PostgreSQL and real
//! storage: drills of full backups and delta chains on each backend pass
//! with their checks, to the latest WAL and to a point in time, and report
//! figures that match the archive; every kind of damage (a corrupt or
//! missing part, a wrong key, missing WAL) is found and named; a drill
//! cleans up its server and directory when a check fails, when it is
//! interrupted, and when its disk fills; and it never writes to the archive.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::drill::{archiving_primary, encrypted, ok, poll_output, push, stderr, wait_archived};
use common::{
    Archive, Backend, Cluster, Pushgateway, Server, TestDir, Tmpfs, chown_pg, http_get, is_root,
    sample,
};

/// Runs `cairn drill` as the PostgreSQL user with `--format json`.
fn drill(pg: &Archive, t: &TestDir, args: &[&str], extra: &[(String, String)]) -> Output {
    let mut all = vec!["drill", "--format", "json"];
    all.extend_from_slice(args);
    pg.cairn_pg(&all, t.path(), extra)
}

/// The JSON report on stdout.
#[track_caller]
fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "the report is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

/// A drill that passed: exit 0, `passed`, no check failed.
#[track_caller]
fn passed(o: &Output) -> serde_json::Value {
    let r = report(o);
    assert!(
        o.status.success() && r["passed"] == true,
        "the drill failed ({}): {r:#}\nstderr: {}",
        o.status,
        stderr(o)
    );
    for c in r["checks"].as_array().unwrap() {
        assert_ne!(c["status"], "failed", "{r:#}");
    }
    r
}

/// The status of check `name` in a report.
fn check<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {r:#}"))
}

/// The number of a segment name (timeline 1, 16 MiB segments).
fn seg_number(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    log * 256 + seg
}

/// Whether any process's command line mentions `needle`.
fn process_mentions(needle: &Path) -> Option<String> {
    let out = Command::new("pgrep")
        .arg("-a")
        .arg("-f")
        .arg(needle.to_str().unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A checks file in `t`.
fn checks_file(t: &TestDir, name: &str, yaml: &str) -> String {
    let p = t.path().join(name);
    std::fs::write(&p, yaml).unwrap();
    chown_pg(&p);
    p.display().to_string()
}

/// A primary with pgbench data and a marker table, a full backup, a delta,
/// three marker rows (one before the delta, two after, a second apart, in
/// different segments), its WAL archived and the primary stopped (so that
/// the archive holds still).
/// Returns the archive with the connection, the backups' names and the time
/// between the second and third markers.
struct Scenario {
    pg: Archive,
    full: String,
    delta: String,
    between: String,
    _primary: Cluster,
}

fn scenario(t: &TestDir, a: &Archive) -> Scenario {
    let (mut primary, pg) = archiving_primary(t, a);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    primary.sql("create table marker (n int, at timestamptz default clock_timestamp())");
    let full = push(&pg, &primary, t, &[]);
    primary.sql("insert into marker (n) values (1)");
    primary.pgbench(&["-t", "100", "-c", "2"]);
    let delta = push(&pg, &primary, t, &["--delta"]);
    primary.sql("insert into marker (n) values (2)");
    primary.sql("select pg_switch_wal()");
    std::thread::sleep(Duration::from_millis(1100));
    // As the report writes times, to the second (the markers are further apart).
    let between = primary.sql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    primary.sql("insert into marker (n) values (3)");
    wait_archived(&primary);
    primary.stop();
    Scenario {
        pg,
        full,
        delta,
        between,
        _primary: primary,
    }
}

const CHECKS: &str = "\
- name: markers
  sql: select count(*) from marker
  expect: \"3\"
- name: accounts
  sql: select count(*) from pgbench_accounts
  expect: \"200000\"
";

/// Drills of the full backup and of the delta chain, to the latest WAL and
/// to a point in time, on one backend.
fn drills_pass(backend: Backend) {
    let t = TestDir::new();
    let a = Archive::new(backend);
    let s = scenario(&t, &a);
    let checks = checks_file(&t, "checks.yaml", CHECKS);

    // The full backup, replaying everything after it.
    let o = drill(&s.pg, &t, &[&s.full, "--check", &checks], &[]);
    let r = passed(&o);
    assert_eq!(r["chain"], serde_json::json!([s.full]));
    for name in [
        "consistent",
        "amcheck",
        "read through",
        "markers",
        "accounts",
    ] {
        assert_eq!(check(&r, name)["status"], "passed", "{name}: {r:#}");
    }
    // It replayed exactly what the archive holds, from the backup's start
    // to the newest segment.
    let newest = r["newest_archived_wal"].as_str().unwrap();
    let start = &s.full["base_".len()..];
    assert_eq!(
        r["wal_files_replayed"].as_u64().unwrap(),
        seg_number(newest) - seg_number(start) + 1,
        "{r:#}"
    );
    assert!(r["wal_bytes_replayed"].as_u64().unwrap() > 0);
    let (fetch, replay, rto) = (
        r["fetch_s"].as_f64().unwrap(),
        r["replay_s"].as_f64().unwrap(),
        r["rto_s"].as_f64().unwrap(),
    );
    assert!(
        fetch > 0.0 && replay > 0.0 && (rto - fetch - replay).abs() < 1e-6,
        "{r:#}"
    );
    assert!(rto < 300.0, "{r:#}");
    let last = r["last_replayed_xact"]
        .as_str()
        .expect("a replayed transaction");
    assert!(
        last > s.between.as_str(),
        "{last} is not after {}",
        s.between
    );
    let rpo = r["rpo_s"].as_f64().unwrap();
    assert!((0.0..600.0).contains(&rpo), "{r:#}");

    // The delta chain (LATEST), with the evidence log.
    let o = s.pg.cairn_pg(&["drill", "--check", &checks], t.path(), &[]);
    let log = ok(&o, "drill LATEST");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "SESSION_START", "{log}");
    assert!(
        lines[1].starts_with("command: cairn drill --check"),
        "{log}"
    );
    assert!(
        lines[2].starts_with("result: restored, replayed ")
            && lines[2].ends_with("consistent, 5 of 5 checks passed"),
        "{log}"
    );
    let evidence = lines
        .iter()
        .find(|l| l.starts_with("KEY_EVIDENCE: "))
        .unwrap();
    assert!(
        evidence.contains(&format!("backup={}, chain=2,", s.delta))
            && evidence.contains("amcheck=passed"),
        "{evidence}"
    );
    assert_eq!(lines.last(), Some(&"SESSION_END"));

    // To a moment between the second and third markers; the report in a file.
    let md = t.path().join("report.json");
    std::fs::write(&md, "").unwrap();
    chown_pg(&md);
    let pitr = checks_file(
        &t,
        "pitr.yaml",
        "- sql: select string_agg(n::text, ',' order by n) from marker\n  expect: \"1,2\"\n",
    );
    let target = format!("time={}", s.between.replace('T', " ").replace('Z', "+00"));
    let o = drill(
        &s.pg,
        &t,
        &[
            "--recovery-target",
            &target,
            "--check",
            &pitr,
            "--report",
            md.to_str().unwrap(),
        ],
        &[],
    );
    let o = Output {
        stdout: std::fs::read(&md).unwrap(),
        ..o
    };
    let r = passed(&o);
    assert_eq!(r["chain"], serde_json::json!([s.full, s.delta]));
    assert_eq!(r["recovery_target"], target);
    assert_eq!(check(&r, "check 1")["status"], "passed", "{r:#}");
    assert!(r["last_replayed_xact"].as_str().unwrap() < s.between.as_str());
}

#[test]
fn drills_of_full_and_delta_backups_pass_on_a_local_directory() {
    drills_pass(Backend::File);
}

#[test]
fn drills_of_full_and_delta_backups_pass_on_s3() {
    drills_pass(Backend::S3);
}

/// The second S3 implementation (moto), as an S3-compatible store is set
/// up: a custom endpoint, path style, checksums only where required.
#[test]
fn drills_of_full_and_delta_backups_pass_on_a_second_s3_server() {
    drills_pass(Backend::Moto);
}

#[test]
fn drills_of_full_and_delta_backups_pass_on_azure() {
    drills_pass(Backend::Azure);
}

#[test]
fn drills_of_full_and_delta_backups_pass_on_gcs() {
    drills_pass(Backend::Gcs);
}

/// A copy of the archive directory of `a` (a local-directory archive), and
/// the archive on it.
fn copy_of(a: &Archive, t: &TestDir, name: &str) -> (Archive, PathBuf) {
    let dir = t.path().join(name);
    let out = Command::new("cp")
        .arg("-a")
        .arg(a.dir.as_ref().unwrap())
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let storage = format!("file://{}", dir.display());
    (a.clone_with("CAIRN_STORAGE", &storage), dir)
}

/// The one ERROR line of a failed command.
#[track_caller]
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "succeeded: {}", stderr(o));
    let err = stderr(o);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "want one ERROR line: {err}");
    errors[0].to_string()
}

#[test]
fn damage_is_found_and_named_by_backup_verify_and_drill() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let s = scenario(&t, &a);
    let dir = a.dir.clone().unwrap();

    // Intact: every backup verifies, to the latest WAL too; nothing written.
    let before = snapshot(&dir);
    let out = ok(
        &s.pg
            .cairn(&["backup-verify", "--all", "--to-latest"], t.path()),
        "backup-verify",
    );
    assert!(out.contains(&format!("{}: ok", s.full)) && out.contains(&format!("{}: ok", s.delta)));
    let json = ok(
        &s.pg.cairn(&["backup-verify", "--json"], t.path()),
        "backup-verify",
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["backups"][0]["chain"],
        serde_json::json!([s.full, s.delta])
    );
    assert!(v["backups"][0]["files"].as_u64().unwrap() > 500);
    // Every segment from the delta's start to its stop was read back.
    let (wal_first, wal_last) = (
        v["backups"][0]["wal_first"].as_str().unwrap(),
        v["backups"][0]["wal_last"].as_str().unwrap(),
    );
    assert_eq!(
        v["backups"][0]["wal_segments"].as_u64().unwrap(),
        seg_number(wal_last) - seg_number(wal_first) + 1
    );
    // A drill neither: no WAL of its new timeline, no history file.
    passed(&drill(&s.pg, &t, &[], &[]));
    assert_eq!(
        snapshot(&dir),
        before,
        "verify or drill wrote to the archive"
    );

    // A corrupt part of the full backup: both name it; so does a drill of
    // the delta, whose chain reads it.
    let (damaged, ddir) = copy_of(&a, &t, "corrupt");
    let part = ddir.join(format!("basebackups/{}/part_00001.tar", s.full));
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&part, bytes).unwrap();
    let e = error_line(&damaged.cairn(&["backup-verify", &s.delta], t.path()));
    let names_part = |e: &str| e.contains(&s.full) && e.contains("part_00001.tar");
    assert!(names_part(&e), "{e}");
    let o = drill(&damaged, &t, &[], &[]);
    let e = error_line(&o);
    assert!(names_part(&e), "{e}");
    assert_eq!(report(&o)["passed"], false);

    // A missing part.
    let (damaged, ddir) = copy_of(&a, &t, "missing-part");
    std::fs::remove_file(ddir.join(format!("basebackups/{}/part_00001.tar", s.delta))).unwrap();
    let e = error_line(&damaged.cairn(&["backup-verify", "--all"], t.path()));
    assert!(
        e.contains(&format!("{}/part_00001", s.delta)) && e.contains("missing"),
        "{e}"
    );

    // A WAL segment the full backup needs (its first).
    let (damaged, ddir) = copy_of(&a, &t, "missing-wal");
    let first = &s.full["base_".len()..];
    std::fs::remove_file(ddir.join("wal").join(first)).unwrap();
    let e = error_line(&damaged.cairn(&["backup-verify", &s.full], t.path()));
    assert!(e.contains(first), "{e}");
    let e = error_line(&drill(&damaged, &t, &[&s.full], &[]));
    assert!(e.contains(first) && e.contains("not in"), "{e}");

    // The same segment damaged in storage: read back, it fails its checksum.
    let (damaged, ddir) = copy_of(&a, &t, "damaged-wal");
    let object = ddir.join("wal").join(first);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let e = error_line(&damaged.cairn(&["backup-verify", &s.full], t.path()));
    assert!(
        e.contains(&format!("WAL segment {first}")) && e.contains("corrupt"),
        "{e}"
    );
    assert!(!e.contains("Error("), "a Debug dump: {e}");
    let e = error_line(&drill(&damaged, &t, &[&s.full], &[]));
    assert!(e.contains(&format!("WAL segment {first}")), "{e}");

    // Another segment's object under its name: whole, but not this WAL.
    let (damaged, ddir) = copy_of(&a, &t, "swapped-wal");
    let next = &s.delta["base_".len().."base_".len() + 24];
    std::fs::copy(ddir.join("wal").join(next), ddir.join("wal").join(first)).unwrap();
    let e = error_line(&damaged.cairn(&["backup-verify", &s.full], t.path()));
    assert!(
        e.contains(&format!("WAL segment {first}")) && e.contains("another segment"),
        "{e}"
    );

    // A segment after the backups' stop: only --to-latest needs it.
    let (damaged, ddir) = copy_of(&a, &t, "gap");
    let mut wal: Vec<String> = std::fs::read_dir(ddir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    wal.sort();
    let later = &wal[wal.len() - 2];
    std::fs::remove_file(ddir.join("wal").join(later)).unwrap();
    ok(
        &damaged.cairn(&["backup-verify"], t.path()),
        "backup-verify",
    );
    let e = error_line(&damaged.cairn(&["backup-verify", "--to-latest"], t.path()));
    assert!(e.contains(later.as_str()), "{e}");

    // ... and there but damaged: --to-latest reads it back.
    let (damaged, ddir) = copy_of(&a, &t, "damaged-later");
    let object = ddir.join("wal").join(later);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    ok(
        &damaged.cairn(&["backup-verify"], t.path()),
        "backup-verify",
    );
    let e = error_line(&damaged.cairn(&["backup-verify", "--to-latest"], t.path()));
    assert!(e.contains(&format!("WAL segment {later}")), "{e}");
}

#[test]
fn a_wrong_key_is_named() {
    let t = TestDir::new();
    let a = encrypted(Archive::new(Backend::File), &t);
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let name = push(&pg, &primary, &t, &[]);
    wait_archived(&primary);
    primary.stop();
    ok(&pg.cairn(&["backup-verify"], t.path()), "backup-verify");
    let other = common::AgeKey::new(t.path());
    let wrong = pg.clone_with(
        "CAIRN_AGE_IDENTITY_FILE",
        &other.identity_file.display().to_string(),
    );
    let e = error_line(&wrong.cairn(&["backup-verify"], t.path()));
    assert!(e.contains(&name) && e.to_lowercase().contains("key"), "{e}");
    let e = error_line(&drill(&wrong, &t, &[], &[]));
    assert!(e.contains(&name) && e.to_lowercase().contains("key"), "{e}");
}

#[test]
fn a_failing_check_fails_the_drill_and_cleans_up() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.sql("create table marker (n int); insert into marker values (1)");
    push(&pg, &primary, &t, &[]);
    wait_archived(&primary);
    primary.stop();
    let checks = checks_file(
        &t,
        "checks.yaml",
        "- name: wrong\n  sql: select count(*) from marker\n  expect: \"2\"\n\
         - name: broken\n  sql: select nonsense\n  expect: x\n",
    );
    // First a drill that passes, and a backup-verify, both pushing their
    // figures to a real Pushgateway.
    let gw = Pushgateway::start();
    let url = gw.url();
    let m = |name: &str, command: &str| {
        let text = http_get(gw.port, "/metrics");
        sample(
            &text,
            name,
            &[&format!("command=\"{command}\""), "job=\"cairn\""],
        )
    };
    let r = passed(&drill(&pg, &t, &["--metrics-push-url", &url], &[]));
    assert_eq!(m("cairn_drill_checks_failed", "drill"), Some(0.0));
    // The same figures as the report (up to the last digit the two
    // formats print).
    let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-6,
        _ => false,
    };
    assert!(
        close(m("cairn_drill_rto_seconds", "drill"), r["rto_s"].as_f64()),
        "{r:#}"
    );
    assert!(
        close(m("cairn_drill_rpo_seconds", "drill"), r["rpo_s"].as_f64()),
        "{r:#}"
    );
    let success = m("cairn_drill_last_success_timestamp_seconds", "drill").unwrap();
    assert_eq!(m("cairn_last_run_success", "drill"), Some(1.0));
    ok(
        &pg.cairn(&["backup-verify", "--metrics-push-url", &url], t.path()),
        "backup-verify",
    );
    assert_eq!(m("cairn_backup_verify_backups", "backup-verify"), Some(1.0));
    assert_eq!(
        m("cairn_backup_verify_problems", "backup-verify"),
        Some(0.0)
    );
    assert!(m("cairn_backup_verify_bytes", "backup-verify").unwrap() > 1e6);

    // Then the failing one: it counts its failed checks and leaves the last
    // success's timestamp.
    let scratch = t.path().join("scratch");
    let o = drill(
        &pg,
        &t,
        &[
            "--check",
            &checks,
            "--dir",
            scratch.to_str().unwrap(),
            "--metrics-push-url",
            &url,
        ],
        &[],
    );
    let e = error_line(&o);
    assert!(e.contains("3 of 5 checks passed"), "{e}");
    assert_eq!(m("cairn_drill_checks_failed", "drill"), Some(2.0));
    assert_eq!(m("cairn_last_run_success", "drill"), Some(0.0));
    assert_eq!(
        m("cairn_drill_last_success_timestamp_seconds", "drill"),
        Some(success)
    );
    let r = report(&o);
    assert_eq!(r["passed"], false);
    assert_eq!(check(&r, "wrong")["status"], "failed");
    assert!(
        check(&r, "wrong")["evidence"]
            .as_str()
            .unwrap()
            .contains("= 1, expected 2")
    );
    assert!(
        check(&r, "broken")["evidence"]
            .as_str()
            .unwrap()
            .contains("nonsense")
    );
    assert!(!scratch.exists(), "the scratch directory was left behind");
    assert_eq!(
        process_mentions(&scratch),
        None,
        "a server was left running"
    );

    // A check file that is not one, and a scratch directory in use.
    let bad = checks_file(&t, "bad.yaml", "- sql: select 1\n  expected: 1\n");
    let e = error_line(&drill(&pg, &t, &["--check", &bad], &[]));
    assert!(e.contains("bad.yaml") && e.contains("expected"), "{e}");
    let used = t.sub("used");
    std::fs::write(used.join("precious"), "x").unwrap();
    let e = error_line(&drill(&pg, &t, &["--dir", used.to_str().unwrap()], &[]));
    assert!(e.contains("not empty"), "{e}");
    assert!(used.join("precious").exists());

    // Kept for inspection when asked, its server stopped; the report as
    // Markdown, for a runbook.
    let kept = t.path().join("kept");
    let o = pg.cairn_pg(
        &[
            "drill",
            "--keep",
            "--dir",
            kept.to_str().unwrap(),
            "--format",
            "markdown",
        ],
        t.path(),
        &[],
    );
    let md = ok(&o, "drill --format markdown");
    assert!(md.starts_with("## Restore drill of base_"), "{md}");
    assert!(md.contains("**Result:** restored, replayed "), "{md}");
    assert!(md.contains("| rto_s | "), "{md}");
    assert!(md.contains("| consistent | passed | "), "{md}");
    assert!(kept.join("data/PG_VERSION").exists());
    assert!(!kept.join("data/postmaster.pid").exists());
    assert_eq!(process_mentions(&kept), None);

    // No backup at all; run as root.
    let empty = Archive::new(Backend::File);
    let e = error_line(&drill(&empty, &t, &[], &[]));
    assert!(e.contains("no backups"), "{e}");
    if is_root() {
        let e = error_line(&pg.cairn(&["drill"], t.path()));
        assert!(e.contains("root"), "{e}");
    }
}

#[test]
fn an_interrupted_drill_leaves_no_server_or_directory() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg) = archiving_primary(&t, &a);
    push(&pg, &primary, &t, &[]);
    wait_archived(&primary);
    primary.stop();
    // A check that holds the drill while its server runs.
    let slow = checks_file(
        &t,
        "slow.yaml",
        "- sql: select pg_sleep(120)\n  expect: \"\"\n",
    );
    let scratch = t.path().join("interrupted");
    let mut child = pg.spawn_cairn_pg(
        &[
            "drill",
            "--check",
            &slow,
            "--dir",
            scratch.to_str().unwrap(),
        ],
        t.path(),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !scratch.join("data/postmaster.pid").exists() {
        assert!(
            Instant::now() < deadline,
            "the drill's server did not start"
        );
        assert!(poll_output(&mut child).is_none(), "the drill ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    // The cairn process itself (not runuser, not the server).
    let pattern = format!("^\\S*cairn drill .*{}", scratch.display());
    let killed = Command::new("pkill")
        .args(["-TERM", "-f", &pattern])
        .status()
        .unwrap();
    assert!(killed.success(), "no cairn drill process to interrupt");
    let deadline = Instant::now() + Duration::from_secs(60);
    let o = loop {
        if let Some(o) = poll_output(&mut child) {
            break o;
        }
        assert!(Instant::now() < deadline, "the drill did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let e = error_line(&o);
    assert!(e.contains("interrupted (SIGTERM)"), "{e}");
    assert!(!scratch.exists(), "the scratch directory was left behind");
    assert_eq!(
        process_mentions(&scratch),
        None,
        "a server was left running"
    );
}

#[test]
fn a_full_scratch_disk_fails_the_drill_cleanly() {
    if !is_root() {
        panic!("this test mounts a tmpfs: run the suite as root (scripts/test.sh does in CI)");
    }
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    push(&pg, &primary, &t, &[]);
    wait_archived(&primary);
    primary.stop();
    let small = Tmpfs::mount(&t.path().join("small"), "16m");
    let scratch = t.path().join("small/drill");
    let o = drill(&pg, &t, &["--dir", scratch.to_str().unwrap()], &[]);
    let e = error_line(&o);
    assert!(e.contains("No space left on device"), "{e}");
    assert!(!scratch.exists(), "the scratch directory was left behind");
    assert_eq!(process_mentions(&scratch), None);
    drop(small);
}

/// PostgreSQL 17 and 14 backups drill with their own binaries (the suite's
/// embedded servers), and not with another major version's.
#[test]
fn drills_use_the_backup_s_major_version() {
    for major in [17, 14] {
        let t = TestDir::new();
        let a = Archive::new(Backend::File);
        let server = Server::embedded(major);
        let mut primary = Cluster::init_on(server.clone(), &t, "primary", &[]);
        primary.archive_to(&a);
        primary.start();
        let pg = common::drill::with_pg(&a, &primary);
        primary.sql("create table marker (n int); insert into marker values (7)");
        push(&pg, &primary, &t, &[]);
        wait_archived(&primary);
        primary.stop();

        // Found on PATH, by pg_config and in /usr/lib/postgresql: none is
        // this major version.
        let e = error_line(&drill(&pg, &t, &[], &[]));
        assert!(
            e.contains(&format!("PostgreSQL {major}")) && e.contains("--pg-bin"),
            "{e}"
        );
        let system = common::pg_bindir();
        let e = error_line(&drill(
            &pg,
            &t,
            &["--pg-bin", system.to_str().unwrap()],
            &[],
        ));
        assert!(e.contains(&format!("PostgreSQL {major}")), "{e}");

        let checks = checks_file(
            &t,
            "checks.yaml",
            "- sql: select n from marker\n  expect: \"7\"\n",
        );
        let bin = server.bindir.display().to_string();
        let o = drill(
            &pg,
            &t,
            &["--pg-bin", &bin, "--check", &checks],
            &server.env,
        );
        let r = passed(&o);
        assert_eq!(r["pg_major"], major);
        assert_eq!(check(&r, "amcheck")["status"], "passed", "{r:#}");
        assert_eq!(check(&r, "check 1")["status"], "passed");
        // The pg_bin config key, as a CAIRN_ variable.
        let env: Vec<(String, String)> = server
            .env
            .iter()
            .cloned()
            .chain([("CAIRN_PG_BIN".to_string(), bin.clone())])
            .collect();
        passed(&drill(&pg, &t, &[], &env));

        // A server installed without amcheck (a copy of this one, the
        // extension removed): that check is skipped, saying why, and the
        // drill still passes on the others.
        let native = server.bindir.parent().unwrap();
        let bare = t.path().join(format!("pg{major}-bare"));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(native)
            .arg(&bare)
            .status()
            .unwrap();
        assert!(copied.success());
        let ext = bare.join("share/postgresql/extension");
        for e in std::fs::read_dir(&ext).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("amcheck")
            {
                std::fs::remove_file(p).unwrap();
            }
        }
        chown_pg(&bare);
        let env = [(
            "LD_LIBRARY_PATH".to_string(),
            bare.join("lib").display().to_string(),
        )];
        let bare_bin = bare.join("bin").display().to_string();
        let r = passed(&drill(&pg, &t, &["--pg-bin", &bare_bin], &env));
        let amcheck = check(&r, "amcheck");
        assert_eq!(amcheck["status"], "skipped", "{r:#}");
        assert!(
            amcheck["evidence"]
                .as_str()
                .unwrap()
                .contains("amcheck extension is not installed"),
            "{r:#}"
        );
        assert_eq!(check(&r, "read through")["status"], "passed", "{r:#}");
    }
}
