//! `cairn wal-receive` against real servers: the recovery drill that
//! archive_command alone fails (a crash mid-segment, no WAL switch) passes
//! with the receiver streaming synchronously beside archive_command.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::drill::{archiving_primary, fetch_to, ok, push, start_restored};
use common::{Archive, Backend, Cluster, TestDir};

/// A receiver process, killed if a test ends without stopping it.
struct Receiver(Option<Child>);

impl Receiver {
    fn take(mut self) -> Child {
        self.0.take().expect("a running receiver")
    }

    /// SIGKILL, then its output.
    fn kill_9(self) -> std::process::Output {
        let mut c = self.take();
        c.kill().unwrap();
        c.wait_with_output().unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends SIGTERM and waits for the exit, returning its output.
fn terminate(receiver: Receiver) -> std::process::Output {
    let mut child = receiver.take();
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "wal-receive did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// The primary's data directory removed, and the latest backup restored
/// there and recovered to the end of the archive.
fn restore_latest(t: &TestDir, a: &Archive, pg: &Archive, primary: &Cluster) -> Cluster {
    std::fs::remove_dir_all(&primary.datadir).unwrap();
    let data = primary.datadir.clone();
    ok(
        &fetch_to(pg, t, &data, &["--recovery-target", "latest"]),
        "backup-fetch",
    );
    start_restored(t, a, &data)
}

/// `cairn wal-receive --create-slot` into `spool`, as a child process.
fn start_receiver(on: &Archive, t: &TestDir, spool: &std::path::Path) -> Receiver {
    Receiver(Some(on.spawn_cairn_as_pg(
        &[
            "wal-receive",
            "--create-slot",
            "--spool",
            spool.to_str().unwrap(),
        ],
        t.path(),
    )))
}

/// The receiver as the cluster's synchronous standby.
fn synchronous(c: &Cluster) {
    c.sql("alter system set synchronous_standby_names = 'cairn'");
    c.sql("select pg_reload_conf()");
    c.wait_until(
        "the receiver to be the synchronous standby",
        Duration::from_secs(60),
        |c| {
            c.try_sql("select sync_state from pg_stat_replication where application_name = 'cairn'")
                .as_deref()
                == Some("sync")
        },
    );
}

/// What the drill compares: every pgbench table's rows and the marker (a
/// query, since the machine's pg_dumpall refuses newer servers).
fn contents(c: &Cluster) -> String {
    c.sql(
        "select string_agg(t || ':' || n || ':' || h, ' ' order by t) from ( \
           select 'accounts' t, count(*) n, md5(string_agg(a::text, ',' order by aid)) h from pgbench_accounts a \
           union all select 'history', count(*), md5(string_agg(h::text, ',' order by tid, bid, aid, mtime, delta)) from pgbench_history h \
           union all select 'marker', count(*), md5(string_agg(m::text, ',')) from marker m \
         ) s",
    )
}

/// The restored data directory started on the machine's server or on the
/// suite's PostgreSQL `major`, recovered to its end.
fn restored_on(t: &TestDir, a: &Archive, data: &std::path::Path, major: Option<u32>) -> Cluster {
    let Some(m) = major else {
        return start_restored(t, a, data);
    };
    common::chown_pg(data);
    let mut r = Cluster::existing(t, data.to_path_buf());
    r.set_server(common::Server::embedded(m));
    r.set_env(a.env.clone());
    r.start();
    r.wait_until("the end of recovery", Duration::from_secs(300), |c| {
        c.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    r
}

fn the_drill_loses_nothing(backend: Backend) {
    the_drill_loses_nothing_on(backend, None);
}

fn the_drill_loses_nothing_on(backend: Backend, major: Option<u32>) {
    let t = TestDir::new();
    let a = Archive::new(backend);
    let (mut primary, pg) = match major {
        None => archiving_primary(&t, &a),
        Some(m) => {
            let mut c = Cluster::init_on(common::Server::embedded(m), &t, "primary", &[]);
            c.archive_to(&a);
            c.start();
            let pg = common::drill::with_pg(&a, &c);
            (c, pg)
        }
    };
    let spool = t.path().join("spool");
    let receiver = start_receiver(&pg, &t, &spool);
    synchronous(&primary);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    push(&pg, &primary, &t, &[]);
    primary.pgbench(&["-c", "2", "-t", "300"]);
    primary.sql("create table marker (v text); insert into marker values ('the last commit')");
    let dump = match major {
        None => primary.dumpall(),
        Some(_) => contents(&primary),
    };
    // A crash: the segment being written was never switched, so
    // archive_command never saw it.
    primary.crash();
    let out = terminate(receiver);
    assert!(
        out.status.success(),
        "wal-receive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&primary.datadir).unwrap();
    let data = primary.datadir.clone();

    // The control, where the archive is a directory: without the
    // receiver's .partial, the archive ends before the marker.
    if let Some(dir) = &a.dir {
        let partials: Vec<String> = std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert_eq!(partials.len(), 1, "{partials:?}");
        let control = t.path().join("control");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(dir)
            .arg(&control)
            .status()
            .unwrap();
        assert!(copied.success());
        std::fs::remove_file(control.join("wal").join(&partials[0])).unwrap();
        let without = a.clone_with("CAIRN_STORAGE", &format!("file://{}", control.display()));
        let pg_without = common::drill::with_pg(&without, &primary);
        ok(
            &fetch_to(&pg_without, &t, &data, &["--recovery-target", "latest"]),
            "backup-fetch from the control",
        );
        let mut lost = restored_on(&t, &without, &data, major);
        assert_eq!(
            lost.try_sql("select count(*) from marker"),
            None,
            "archive_command alone reached the marker: the drill proves nothing"
        );
        lost.stop();
        std::fs::remove_dir_all(&data).unwrap();
    }

    ok(
        &fetch_to(&pg, &t, &data, &["--recovery-target", "latest"]),
        "backup-fetch",
    );
    let restored = restored_on(&t, &a, &data, major);
    assert_eq!(
        restored.sql("select v from marker"),
        "the last commit",
        "the last commit was lost"
    );
    let again = match major {
        None => restored.dumpall(),
        Some(_) => contents(&restored),
    };
    assert!(again == dump, "the restored cluster's contents differ");
}

/// PostgreSQL 14 has no READ_REPLICATION_SLOT: the slot is checked by
/// START_REPLICATION itself.
#[test]
fn the_drill_loses_nothing_on_postgresql_14() {
    the_drill_loses_nothing_on(Backend::File, Some(14));
}

#[test]
fn the_drill_loses_nothing_on_postgresql_16() {
    the_drill_loses_nothing_on(Backend::File, Some(16));
}

/// 18: data checksums on by default.
#[test]
fn the_drill_loses_nothing_on_postgresql_18() {
    the_drill_loses_nothing_on(Backend::File, Some(18));
}

#[test]
fn the_drill_loses_nothing_on_postgresql_17() {
    the_drill_loses_nothing_on(Backend::File, Some(17));
}

#[test]
fn the_drill_loses_nothing_on_a_local_directory() {
    the_drill_loses_nothing(Backend::File);
}

#[test]
fn the_drill_loses_nothing_on_s3() {
    the_drill_loses_nothing(Backend::S3);
}

#[test]
fn the_drill_loses_nothing_on_gcs() {
    the_drill_loses_nothing(Backend::Gcs);
}

/// A one-line error on stderr, and a non-zero exit, within a minute.
fn refused(receiver: Receiver) -> String {
    let mut child = receiver.take();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "wal-receive kept running: {:?}",
                child.wait_with_output().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "wal-receive exited 0");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    errors[0].to_string()
}

/// Bad input gets one line and an exit; a server restart and a receiver
/// killed with SIGKILL mid-segment cost nothing: the drill still restores
/// every commit, and no segment conflicts with archive_command's copy.
#[test]
fn faults_cost_nothing_and_bad_input_is_named() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg) = archiving_primary(&t, &a);
    let spool = t.path().join("spool");
    let spool_arg = spool.to_str().unwrap().to_string();
    let receive = |extra: &[&str], on: &Archive| {
        let mut args = vec!["wal-receive"];
        args.extend_from_slice(extra);
        Receiver(Some(on.spawn_cairn_as_pg(&args, t.path())))
    };

    // A slot name PostgreSQL would refuse; a slot that does not exist.
    let e = refused(receive(&["--slot", "Bad-Name", "--spool", &spool_arg], &pg));
    assert!(e.contains("Bad-Name") && e.contains("slot"), "{e}");
    let e = refused(receive(&["--spool", &spool_arg], &pg));
    assert!(e.contains("cairn") && e.contains("--create-slot"), "{e}");
    // A role without REPLICATION.
    primary.sql("create role plain login");
    let e = refused(receive(
        &["--create-slot", "--spool", &spool_arg],
        &pg.clone_with("PGUSER", "plain"),
    ));
    assert!(
        e.contains("replication role") || e.contains("WAL sender"),
        "{e}"
    );

    // The receiver, and a second one: on its spool, then on its slot.
    let first = receive(&["--create-slot", "--spool", &spool_arg], &pg);
    synchronous(&primary);
    let e = refused(receive(&["--spool", &spool_arg], &pg));
    assert!(e.contains("in use by another wal-receive"), "{e}");
    let other = t.path().join("other-spool");
    let e = refused(receive(&["--spool", other.to_str().unwrap()], &pg));
    assert!(e.contains("cairn") && e.contains("active"), "{e}");

    primary.pgbench(&["-i", "-s", "2", "-q"]);
    push(&pg, &primary, &t, &[]);
    primary.pgbench(&["-c", "2", "-t", "200"]);
    // The server restarts: the receiver reconnects.
    primary.stop();
    primary.start();
    synchronous(&primary);
    primary.pgbench(&["-c", "2", "-t", "200"]);
    // Killed mid-segment; started again, it resumes without a hole.
    let killed = first.kill_9();
    let second = receive(&["--spool", &spool_arg], &pg);
    synchronous(&primary);
    primary.pgbench(&["-c", "2", "-t", "200"]);
    primary.sql("create table marker (v text); insert into marker values ('after the kill')");
    let dump = primary.dumpall();
    primary.crash();
    let out = terminate(second);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&killed.stderr),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reconnecting"),
        "no reconnect after the restart: {log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    let restored = restore_latest(&t, &a, &pg, &primary);
    assert_eq!(restored.sql("select v from marker"), "after the kill");
    assert!(
        restored.dumpall() == dump,
        "the restored cluster's dump differs"
    );
    drop(restored);

    // Another cluster, streamed into this archive: refused.
    let mut stranger = Cluster::init(&t, "stranger", &[]);
    stranger.set(&[("wal_level", "replica")]);
    stranger.start();
    let spg = common::drill::with_pg(&a, &stranger);
    let e = refused(start_receiver(&spg, &t, &t.path().join("s3")));
    assert!(
        e.contains("system identifier") || e.contains("another cluster"),
        "{e}"
    );
    stranger.stop();
}

/// Streaming from a standby that is then promoted: the receiver follows
/// the switch (the old timeline up to its end, the history file, the new
/// timeline), and the drill restores the commits made after the promotion.
#[test]
fn a_promotion_is_followed_onto_the_new_timeline() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    push(&pg, &primary, &t, &[]);
    let standby = common::drill::streaming_standby(&t, &a, &primary, "standby", |s| {
        s.restore_from(&a);
    });
    let on_standby = pg.clone_with("PGPORT", &standby.port.to_string());
    let spool = t.path().join("spool");
    let receiver = start_receiver(&on_standby, &t, &spool);
    primary.pgbench(&["-c", "2", "-t", "200"]);
    let caught_up = primary.sql("select pg_current_wal_lsn()");
    standby.wait_until("the receiver to catch up", Duration::from_secs(60), |s| {
        s.try_sql(&format!(
            "select flush_lsn >= '{caught_up}' from pg_stat_replication where application_name = 'cairn'"
        ))
        .as_deref()
            == Some("t")
    });
    // Failover: the primary goes, the standby is promoted.
    primary.crash();
    standby.sql("select pg_promote()");
    standby.wait_until("the promotion", Duration::from_secs(60), |s| {
        s.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    synchronous(&standby);
    standby.pgbench(&["-c", "2", "-t", "100"]);
    standby.sql("create table marker (v text); insert into marker values ('on timeline 2')");
    let dump = standby.dumpall();
    let mut standby = standby;
    standby.crash();
    let out = terminate(receiver);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("following a timeline switch"), "{log}");
    let dir = a.dir.clone().unwrap();
    assert!(dir.join("wal/00000002.history").exists());

    let restored = restore_latest(&t, &a, &pg, &primary);
    assert_eq!(restored.sql("select v from marker"), "on timeline 2");
    assert_eq!(
        restored.sql("select timeline_id from pg_control_checkpoint()"),
        "3"
    );
    assert!(
        restored.dumpall() == dump,
        "the restored cluster's dump differs"
    );
}

/// Completed segments in the spool (waiting to be stored).
fn completed_in(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool)
        .unwrap()
        .filter(|e| {
            let n = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit())
        })
        .count()
}

/// Storage gone for a while, and the server restarted meanwhile: commits go
/// on (the spool is durable), the receiver reconnects, the spool grows, and
/// once storage is back the uploads catch up; progress is logged, pushed to
/// a real Pushgateway and written for node_exporter throughout.
#[test]
fn storage_outages_are_ridden_out_by_the_spool() {
    let t = TestDir::new();
    let gw = common::Pushgateway::start();
    let mut a = Archive::new(Backend::S3)
        .with("CAIRN_STORAGE_TIMEOUT", "5")
        .with("CAIRN_PROGRESS_INTERVAL", "1");
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    push(&pg, &primary, &t, &[]);
    let spool = t.path().join("spool");
    let textfiles = t.sub("textfiles");
    let exporter = common::NodeExporter::start(&textfiles);
    let receiver = start_receiver(
        &pg.clone_with("CAIRN_METRICS_PUSH_URL", &gw.url())
            .clone_with(
                "CAIRN_METRICS_TEXTFILE",
                textfiles.join("cairn.prom").to_str().unwrap(),
            ),
        &t,
        &spool,
    );
    synchronous(&primary);

    a.s3.as_mut().unwrap().stop();
    primary.pgbench(&["-i", "-s", "3", "-q"]);
    // The server restarts meanwhile: the receiver reconnects (and checks
    // the archive's cluster record, which it cannot read now) and goes on.
    primary.stop();
    primary.start();
    primary.sql("select pg_switch_wal()");
    primary.wait_until(
        "segments to pile up in the spool",
        Duration::from_secs(60),
        |_| completed_in(&spool) >= 2,
    );
    // Longer than a store may take (CAIRN_STORAGE_TIMEOUT): the uploader
    // gives up on one attempt and tries again later.
    std::thread::sleep(Duration::from_secs(8));
    assert!(completed_in(&spool) >= 2);
    a.s3.as_mut().unwrap().restart();
    primary.wait_until("the uploads to catch up", Duration::from_secs(120), |_| {
        completed_in(&spool) == 0
    });
    let metric = |name: &str| {
        common::sample(
            &common::http_get(gw.port, "/metrics"),
            name,
            &["command=\"wal-receive\""],
        )
    };
    primary.wait_until(
        "figures at the Pushgateway",
        Duration::from_secs(30),
        |_| metric("cairn_wal_receive_archived_lsn").unwrap_or(0.0) > 0.0,
    );
    assert!(
        metric("cairn_wal_receive_flushed_lsn").unwrap()
            >= metric("cairn_wal_receive_archived_lsn").unwrap()
    );
    // The same figures in the receiver's own textfile, as node_exporter
    // serves them (beside wal-push's `cairn.prom`).
    assert!(textfiles.join("cairn-wal-receive.prom").exists());
    let exported = |name: &str| {
        common::sample(
            &common::http_get(exporter.port, "/metrics"),
            name,
            &["command=\"wal-receive\""],
        )
    };
    primary.wait_until("figures at node_exporter", Duration::from_secs(30), |_| {
        exported("cairn_wal_receive_archived_lsn").unwrap_or(0.0) > 0.0
    });
    assert_eq!(exported("cairn_last_run_success"), Some(1.0));
    assert!(exported("cairn_wal_receive_lag_bytes").is_some());
    primary.sql("create table marker (v text); insert into marker values ('after the outage')");
    let dump = primary.dumpall();
    primary.crash();
    let out = terminate(receiver);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("it stays in the spool"), "{log}");
    assert!(log.contains("receiving"), "no progress lines: {log}");
    assert!(log.contains("reconnecting"), "no reconnect: {log}");

    let restored = restore_latest(&t, &a, &pg, &primary);
    assert_eq!(restored.sql("select v from marker"), "after the outage");
    assert!(
        restored.dumpall() == dump,
        "the restored cluster's dump differs"
    );
}

/// A spool that fills up (the storage unreachable, so segments pile up in
/// a small tmpfs): a clear error naming it, and the server was never told
/// more was flushed than the spool holds. Segments are zero-filled when
/// created, so the disk fills at a segment's creation, before any of it
/// is acknowledged.
#[test]
fn a_full_spool_stops_the_receiver_without_overstating_what_it_holds() {
    if !common::is_root() {
        panic!("this test mounts a tmpfs: run the suite as root (scripts/test.sh does)");
    }
    let t = TestDir::new();
    let mut a = Archive::new(Backend::S3).with("CAIRN_STORAGE_TIMEOUT", "5");
    let (primary, pg) = archiving_primary(&t, &a);
    // Room for two segments and a half.
    let small = common::Tmpfs::mount(&t.path().join("small"), "40m");
    let spool = small.path().join("spool");
    let receiver = start_receiver(&pg, &t, &spool);
    primary.wait_until("the receiver to stream", Duration::from_secs(60), |c| {
        // Streaming, not only connected: the archive has admitted the
        // cluster before the storage goes away.
        c.try_sql(
            "select count(*) from pg_stat_replication \
             where application_name = 'cairn' and state = 'streaming'",
        )
        .as_deref()
            == Some("1")
    });
    a.s3.as_mut().unwrap().stop();
    primary.pgbench(&["-i", "-s", "4", "-q"]);
    primary.sql("select pg_switch_wal()");
    let e = refused(receiver);
    assert!(
        e.contains("No space left on device") && e.contains(spool.to_str().unwrap()),
        "{e}"
    );
    // What the slot was told against where the spool's WAL ends.
    let held_end = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let seg = name.strip_suffix(".partial").unwrap_or(&name).to_string();
            (seg.len() == 24 && seg.chars().all(|c| c.is_ascii_hexdigit())).then(|| {
                let log = u64::from_str_radix(&seg[8..16], 16).unwrap();
                let n = u64::from_str_radix(&seg[16..24], 16).unwrap();
                ((log << 32) + (n + 1) * 16 * 1024 * 1024, name)
            })
        })
        .max()
        .expect("segments in the spool");
    let ok_held = primary.sql(&format!(
        "select coalesce(restart_lsn <= pg_lsn('{:X}/{:X}'), true) \
         from pg_replication_slots where slot_name = 'cairn'",
        held_end.0 >> 32,
        held_end.0 & 0xffff_ffff
    ));
    assert_eq!(ok_held, "t", "the slot moved past what the spool holds");
}

#[test]
fn every_acknowledged_commit_survives_a_kill_9() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg) = archiving_primary(&t, &a);
    let spool = t.path().join("spool");
    let receiver = start_receiver(&pg, &t, &spool);
    synchronous(&primary);
    primary.sql("create table acked (n int primary key, pad text)");
    push(&pg, &primary, &t, &[]);
    // One commit per statement, each acknowledged before the next; the
    // postmaster is killed while they run.
    let pid: i32 = std::fs::read_to_string(primary.datadir.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    });
    let mut acked = 0;
    for n in 1.. {
        let sql = format!("insert into acked values ({n}, repeat('x', 2000))");
        if primary.try_sql(&sql).is_none() {
            break;
        }
        acked = n;
    }
    killer.join().unwrap();
    assert!(acked > 10, "only {acked} commits before the kill");
    let out = terminate(receiver);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The killed server's children die with their postmaster; the directory goes.
    primary.forget_running();
    std::thread::sleep(Duration::from_secs(1));
    let restored = restore_latest(&t, &a, &pg, &primary);
    let kept: i64 = restored.sql("select count(*) from acked").parse().unwrap();
    let max: i64 = restored
        .sql("select coalesce(max(n), 0) from acked")
        .parse()
        .unwrap();
    assert!(
        kept >= acked && max >= acked && kept == max,
        "{acked} commits acknowledged, {kept} restored (up to {max})"
    );
}

/// A standby fed only by restore_command from an archive that only the
/// receiver fills (no archive_command) catches up, past the last completed
/// segment, and promotes.
#[test]
fn a_standby_fed_by_the_receiver_s_archive_catches_up_and_promotes() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_WAL_RECEIVE_PARTIAL_INTERVAL", "1");
    let mut primary = Cluster::init(&t, "primary", &[]);
    primary.set(&[("wal_level", "replica")]);
    primary.start();
    let pg = common::drill::with_pg(&a, &primary);
    let spool = t.path().join("spool");
    let receiver = start_receiver(&pg, &t, &spool);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    push(&pg, &primary, &t, &[]);
    primary.pgbench(&["-c", "2", "-t", "200"]);

    let dir = t.path().join("standby");
    ok(
        &pg.cairn(&["backup-fetch", dir.to_str().unwrap(), "LATEST"], t.path()),
        "backup-fetch",
    );
    std::fs::write(dir.join("standby.signal"), "").unwrap();
    common::chown_pg(&dir);
    let mut standby = Cluster::existing(&t, dir);
    standby.restore_from(&a);
    standby.start();
    primary
        .sql("create table marker (v text); insert into marker values ('streamed, not switched')");
    standby.wait_until(
        "the standby to replay the marker",
        Duration::from_secs(120),
        |s| s.try_sql("select v from marker").as_deref() == Some("streamed, not switched"),
    );
    standby.sql("select pg_promote()");
    standby.wait_until("the promotion", Duration::from_secs(60), |s| {
        s.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert_eq!(
        standby.sql("select v from marker"),
        "streamed, not switched"
    );
    let out = terminate(receiver);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
