//! Base backups on real PostgreSQL and real storage: the operator's drill
//! (backup, workload, destroy, restore, replay, compare), and what bad input
//! gets.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::drill::{
    archiving_primary, destroy, encrypted, fails, fetch_to, ok, pgbench_checksum, start_restored,
    stderr, wait_archived, with_pg,
};
use common::{AgeKey, Archive, Backend, Cluster, TestDir};

/// A running cluster archiving to `a`, and one backup of it; returns the
/// cluster, `a` with a connection to it, and the backup's name.
fn primary_with_backup(t: &TestDir, a: &Archive) -> (Cluster, Archive, String) {
    let (primary, pg) = archiving_primary(t, a);
    let name = ok(
        &pg.cairn(
            &["backup-push", primary.datadir.to_str().unwrap()],
            t.path(),
        ),
        "backup-push",
    );
    (primary, pg, name)
}

/// The drill: backup-push, a pgbench workload, pg_dumpall, stop and delete the
/// data directory, backup-fetch LATEST with recovery to the end of the archive,
/// start, compare.
fn drill(backend: Backend, compression: &str, encrypt: bool) {
    let t = TestDir::new();
    let mut a = Archive::new(backend)
        .with("CAIRN_COMPRESSION", compression)
        // Small parts, so that a small cluster still makes several.
        .with("CAIRN_BACKUP_PART_SIZE", "4194304");
    if encrypt {
        a = encrypted(a, &t);
    }
    let (mut primary, pg, name) = primary_with_backup(&t, &a);
    assert!(name.starts_with("base_0000000100000000000000"), "{name}");

    primary.pgbench(&["-i", "-s", "10", "-q"]);
    primary.pgbench(&["-c", "4", "-j", "2", "-t", "200"]);
    let dump = primary.dumpall();
    primary.sql("checkpoint");
    wait_archived(&primary);
    primary.stop();
    let data = primary.datadir.clone();
    std::fs::remove_dir_all(&data).unwrap();

    let list = ok(
        &pg.cairn(&["backup-list", "--json"], t.path()),
        "backup-list",
    );
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], name.as_str(), "{list}");
    assert!(list[0]["parts"].as_array().unwrap().len() > 2, "{list}");

    let fetched = ok(
        &pg.cairn(
            &[
                "backup-fetch",
                data.to_str().unwrap(),
                "LATEST",
                "--recovery-target",
                "latest",
            ],
            t.path(),
        ),
        "backup-fetch",
    );
    assert_eq!(fetched, name);
    // restore_command carries cairn's settings itself: PostgreSQL's environment
    // need only provide storage credentials.
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    let restore = auto
        .lines()
        .rfind(|l| l.starts_with("restore_command"))
        .unwrap();
    for needle in ["CAIRN_STORAGE=", "CAIRN_COMPRESSION=", "wal-fetch %f %p"] {
        assert!(restore.contains(needle), "{restore}");
    }
    assert!(data.join("recovery.signal").exists());
    let restored = start_restored(&t, &a, &data);
    common::assert_same_dump(&restored.dumpall(), &dump, &restored.log_text());
}

#[test]
fn drill_local_directory_lz4_age() {
    drill(Backend::File, "lz4", true);
}

#[test]
fn drill_s3_zstd() {
    drill(Backend::S3, "zstd", false);
}

#[test]
fn drill_gcs_uncompressed() {
    drill(Backend::Gcs, "none", false);
}

/// Every bad input backup-push and backup-fetch can get, against one cluster
/// and one good backup: a one-line error naming the problem, a non-zero exit,
/// and nothing left behind that looks restored.
#[test]
fn bad_input_is_refused_and_leaves_nothing_half_restored() {
    let t = TestDir::new();
    // Uncompressed, so that the flipped byte below changes restored bytes: in
    // compressed data a flip can be harmless (a match offset moved within a
    // run of zeros decodes to the same bytes, which the checksum then accepts).
    let a = Archive::new(Backend::File)
        .with("CAIRN_BACKUP_PART_SIZE", "1048576")
        .with("CAIRN_COMPRESSION", "none");
    let mut primary = Cluster::init(&t, "primary", &[]);
    primary.archive_to(&a);
    primary.start();
    primary.sql("create table t as select g from generate_series(1, 100000) g");
    let pg = with_pg(&a, &primary);
    let data = primary.datadir.to_str().unwrap().to_string();

    // The connection.
    let refused = a
        .clone_with("PGHOST", "127.0.0.1")
        .with("PGPORT", &common::free_port().to_string())
        .with("PGUSER", "postgres");
    fails(
        &refused.cairn(&["backup-push", &data], t.path()),
        "cannot connect to PostgreSQL at 127.0.0.1",
    );
    primary.sql("create role alice login superuser password 'right'");
    let hba = primary.datadir.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all alice 127.0.0.1/32 scram-sha-256\n{text}"),
    )
    .unwrap();
    primary.sql("select pg_reload_conf()");
    let alice = pg.clone_with("PGUSER", "alice").with("PGPASSWORD", "wrong");
    fails(
        &alice.cairn(&["backup-push", &data], t.path()),
        "password authentication failed for user \"alice\"",
    );

    // The data directory.
    fails(
        &pg.cairn(&["backup-push", t.path().to_str().unwrap()], t.path()),
        "is not a PostgreSQL data directory",
    );
    let other = Cluster::init(&t, "other", &[]);
    fails(
        &pg.cairn(&["backup-push", other.datadir.to_str().unwrap()], t.path()),
        "belongs to cluster",
    );
    let mut plain = Cluster::init(&t, "plain", &[]);
    plain.start();
    fails(
        &with_pg(&a, &plain).cairn(&["backup-push", plain.datadir.to_str().unwrap()], t.path()),
        "WAL archiving is not enabled",
    );
    plain.stop();
    plain.set(&[("archive_mode", "on")]);
    plain.start();
    fails(
        &with_pg(&a, &plain).cairn(&["backup-push", plain.datadir.to_str().unwrap()], t.path()),
        "archive_command is not set",
    );
    plain.stop();
    assert!(
        !a.dir.as_ref().unwrap().join("basebackups").exists(),
        "a refused backup stored something"
    );

    let name = ok(&pg.cairn(&["backup-push", &data], t.path()), "backup-push");
    let backup_dir = a.dir.as_ref().unwrap().join("basebackups").join(&name);
    let dest = t.path().join("restore");
    let fetch = |a: &Archive, args: &[&str]| {
        let mut all = vec!["backup-fetch", dest.to_str().unwrap()];
        all.extend_from_slice(args);
        a.cairn(&all, t.path())
    };
    let nothing_left = |what: &str| {
        let left: Vec<_> = std::fs::read_dir(&dest)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{what}: left behind {left:?}");
    };

    fails(
        &fetch(&pg, &["base_000000010000000000000099"]),
        "no backup named base_000000010000000000000099",
    );
    nothing_left("unknown name");

    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("precious"), "x").unwrap();
    fails(&fetch(&pg, &["LATEST"]), "is not empty");
    assert_eq!(std::fs::read_to_string(dest.join("precious")).unwrap(), "x");
    std::fs::remove_file(dest.join("precious")).unwrap();

    // A part with one byte flipped, then the same part missing.
    let part = backup_dir.join("part_00002.tar");
    let good = std::fs::read(&part).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&part, &bad).unwrap();
    fails(&fetch(&pg, &["LATEST"]), "part_00002.tar");
    nothing_left("flipped byte");
    std::fs::remove_file(&part).unwrap();
    fails(&fetch(&pg, &["LATEST"]), "part_00002.tar of backup");
    nothing_left("missing part");
    std::fs::write(&part, &good).unwrap();

    // A crafted part whose entry climbs out of the destination.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    // set_path refuses `..`; write the name bytes directly, as an attacker would.
    h.as_old_mut().name[..13].copy_from_slice(b"../escaped-by");
    h.set_cksum();
    tar.append(&h, &b"evil"[..]).unwrap();
    let crafted = tar.into_inner().unwrap();
    let settings = cairn::codec::CodecSettings {
        compression: cairn::codec::Compression::None,
        ..Default::default()
    };
    let (object, _) = cairn::codec::encode_to_vec(&crafted, &settings).unwrap();
    std::fs::write(&part, object).unwrap();
    // Whoever can write parts can write the manifest: make it vouch for them.
    let manifest_path = backup_dir.join("manifest.json");
    let good_manifest = std::fs::read(&manifest_path).unwrap();
    let mut json = Vec::new();
    std::io::Read::read_to_end(
        &mut cairn::codec::Decoder::new(&good_manifest[..], None, "manifest").unwrap(),
        &mut json,
    )
    .unwrap();
    let mut m = cairn::archive::manifest::Manifest::from_json(&json, "manifest", None).unwrap();
    let p = m
        .parts
        .iter_mut()
        .find(|p| p.key == "part_00002.tar")
        .unwrap();
    p.blake3 = cairn::codec::hex(blake3::hash(&crafted).as_bytes());
    p.raw_size = crafted.len() as u64;
    let (forged, _) = cairn::codec::encode_to_vec(&m.to_json(), &settings).unwrap();
    std::fs::write(&manifest_path, forged).unwrap();
    fails(&fetch(&pg, &["LATEST"]), "../escaped-by");
    assert!(!t.path().join("escaped-by").exists(), "the entry escaped");
    nothing_left("crafted entry");
    std::fs::write(&part, &good).unwrap();
    std::fs::write(&manifest_path, good_manifest).unwrap();

    // And the untouched backup restores.
    ok(&fetch(&pg, &[&name]), "backup-fetch after repairs");
    assert!(dest.join("global/pg_control").exists());
    primary.stop();
}

/// An encrypted backup needs the right identity; the wrong one is named.
#[test]
fn encrypted_backup_needs_the_right_identity() {
    let t = TestDir::new();
    let a = encrypted(Archive::new(Backend::File), &t);
    let (mut primary, pg, _) = primary_with_backup(&t, &a);
    primary.stop();
    let dest = t.path().join("restore");
    let wrong = AgeKey::new(t.path());
    let other = pg.clone_with(
        "CAIRN_AGE_IDENTITY_FILE",
        &wrong.identity_file.display().to_string(),
    );
    fails(
        &other.cairn(
            &["backup-fetch", dest.to_str().unwrap(), "LATEST"],
            t.path(),
        ),
        &wrong.identity_file.display().to_string(),
    );
    assert!(!dest.exists(), "a failed restore left {}", dest.display());
    let none = pg.clone_with("CAIRN_AGE_IDENTITY_FILE", "");
    let mut none = none;
    none.env.retain(|(k, _)| k != "CAIRN_AGE_IDENTITY_FILE");
    fails(
        &none.cairn(
            &["backup-fetch", dest.to_str().unwrap(), "LATEST"],
            t.path(),
        ),
        "no identity is configured",
    );
}

/// A key rotation: a full backup and WAL encrypted to the old key, then the
/// writers switched to the new one (a delta and later WAL), the readers given
/// both identities as a list of files. The chain restores and replays across
/// the change; with the new identity alone, the old objects are refused,
/// naming the identity file, and nothing is left half restored.
#[test]
fn a_restore_reads_across_a_key_rotation() {
    let t = TestDir::new();
    let (old, new) = (AgeKey::new(t.path()), AgeKey::new(t.path()));
    let path = |k: &AgeKey| k.identity_file.display().to_string();
    let a = Archive::new(Backend::File)
        .with("CAIRN_AGE_RECIPIENTS", &old.recipient)
        .with("CAIRN_AGE_IDENTITY_FILE", &path(&old));
    let (mut primary, _, _) = primary_with_backup(&t, &a);
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    let rotated = a
        .clone_with("CAIRN_AGE_RECIPIENTS", &new.recipient)
        .clone_with(
            "CAIRN_AGE_IDENTITY_FILE",
            &format!("{},{}", path(&old), path(&new)),
        );
    primary.stop();
    primary.set_env(rotated.env.clone());
    primary.start();
    let pg = with_pg(&rotated, &primary);
    let delta = ok(
        &pg.cairn(
            &["backup-push", primary.datadir.to_str().unwrap(), "--delta"],
            t.path(),
        ),
        "backup-push --delta after the rotation",
    );
    assert!(delta.contains("_D_"), "{delta}");
    primary.sql("create table marker (v text); insert into marker values ('after the rotation')");
    let dump = primary.dumpall();
    wait_archived(&primary);
    destroy(&mut primary);

    let data = primary.datadir.clone();
    let only_new = pg.clone_with("CAIRN_AGE_IDENTITY_FILE", &path(&new));
    fails(&fetch_to(&only_new, &t, &data, &[]), &path(&new));
    assert!(!data.exists(), "a failed restore left {}", data.display());
    ok(
        &fetch_to(&pg, &t, &data, &["--recovery-target", "latest"]),
        "backup-fetch with both identities",
    );
    let restored = start_restored(&t, &rotated, &data);
    assert_eq!(restored.sql("select v from marker"), "after the rotation");
    assert!(
        restored.dumpall() == dump,
        "the restored cluster's dump differs"
    );
}

/// Point in time: row 'first', a moment, row 'second'; recovery to the moment
/// has 'first' only, on a new timeline whose history file reaches the archive.
#[test]
fn point_in_time_recovery_stops_at_the_target_on_a_new_timeline() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg, _) = primary_with_backup(&t, &a);
    primary.sql("create table marks(v text); insert into marks values ('first')");
    let moment = primary.sql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(200));
    primary.sql("insert into marks values ('second')");
    wait_archived(&primary);
    destroy(&mut primary);

    let data = primary.datadir.clone();
    let target = format!("time={moment}");
    ok(
        &fetch_to(&pg, &t, &data, &["--recovery-target", &target]),
        "backup-fetch",
    );
    let restored = start_restored(&t, &a, &data);
    assert_eq!(
        restored.sql("select string_agg(v, ',') from marks"),
        "first"
    );
    assert_eq!(
        restored.sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002",
        "not on a new timeline"
    );
    let history = a.dir.as_ref().unwrap().join("wal/00000002.history");
    restored.wait_until(
        "the .history file to be archived",
        Duration::from_secs(60),
        |_| history.exists(),
    );
}

/// A segment deleted from the middle of the archive: recovery, to the end or
/// to a time after the hole, stops with an error naming it, never opens.
#[test]
fn a_hole_in_the_archive_stops_recovery() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (mut primary, pg, _) = primary_with_backup(&t, &a);
    for i in 0..6 {
        primary.sql(&format!(
            "create table t{i} as select g from generate_series(1, 1000) g; select pg_switch_wal()"
        ));
    }
    let after = primary.sql("select clock_timestamp()");
    primary.sql("create table last as select 1");
    wait_archived(&primary);
    destroy(&mut primary);
    let wal = a.dir.as_ref().unwrap().join("wal");
    let mut segments: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    segments.sort();
    let hole = segments[segments.len() / 2 + 1].clone();
    std::fs::remove_file(wal.join(&hole)).unwrap();

    let data = primary.datadir.clone();
    let time_target = format!("time={after}");
    for target in ["latest", time_target.as_str()] {
        let _ = std::fs::remove_dir_all(&data);
        ok(
            &fetch_to(&pg, &t, &data, &["--recovery-target", target]),
            "backup-fetch",
        );
        common::chown_pg(&data);
        // The log is named after the data directory: the primary's was too.
        std::fs::remove_file(restored_log(&t, &data)).ok();
        let mut restored = Cluster::existing(&t, data.clone());
        restored.set_env(a.env.clone());
        restored.start_no_wait();
        restored.wait_until(
            "PostgreSQL to stop at the hole",
            Duration::from_secs(120),
            |c| c.log_text().contains("database system is shut down") && !c.is_running(),
        );
        let log = restored.log_text();
        assert!(
            !log.contains("database system is ready to accept connections"),
            "{target}: opened with data missing:\n{log}"
        );
        assert!(
            log.contains(&hole) && log.contains("gap"),
            "{target}: the log does not name the hole {hole}:\n{log}"
        );
    }
}

fn restored_log(t: &TestDir, data: &Path) -> std::path::PathBuf {
    t.path().join(format!(
        "{}.log",
        data.file_name().unwrap().to_string_lossy()
    ))
}

/// A tablespace outside PGDATA comes back at its original path, or where
/// --tablespace-map puts it.
#[test]
fn tablespaces_restore_in_place_or_remapped() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let mut primary = Cluster::init(&t, "primary", &[]);
    primary.archive_to(&a);
    primary.start();
    let ts = t.path().join("ts1");
    std::fs::create_dir(&ts).unwrap();
    common::chown_pg(&ts);
    primary.sql(&format!(
        "create tablespace ts1 location '{}'",
        ts.display()
    ));
    primary.sql("create table tt tablespace ts1 as select g from generate_series(1, 5000) g");
    let oid = primary.sql("select oid from pg_tablespace where spcname = 'ts1'");
    let pg = with_pg(&a, &primary);
    ok(
        &pg.cairn(
            &["backup-push", primary.datadir.to_str().unwrap()],
            t.path(),
        ),
        "backup-push",
    );
    primary.sql("insert into tt select g from generate_series(5001, 6000) g");
    wait_archived(&primary);
    destroy(&mut primary);
    std::fs::remove_dir_all(&ts).unwrap();
    let data = primary.datadir.clone();

    let moved = t.path().join("moved-ts1");
    let mapping = format!("{oid}={}", moved.display());
    for (extra, place) in [
        (vec![], &ts),
        (vec!["--tablespace-map", mapping.as_str()], &moved),
    ] {
        let mut args = vec!["--recovery-target", "latest"];
        args.extend(extra);
        ok(&fetch_to(&pg, &t, &data, &args), "backup-fetch");
        common::chown_pg(place);
        let mut restored = start_restored(&t, &a, &data);
        assert_eq!(restored.sql("select count(*) from tt"), "6000");
        assert_eq!(
            std::fs::read_link(data.join("pg_tblspc").join(&oid)).unwrap(),
            *place
        );
        destroy(&mut restored);
        std::fs::remove_dir_all(place).unwrap();
        std::fs::remove_file(restored_log(&t, &data)).ok();
    }
}

/// A second backup of the same cluster while one runs is refused at once,
/// naming the holder; a server that does not archive makes the stop wait only
/// as long as configured, and no backup is recorded.
#[test]
fn concurrent_backups_and_archiving_stalls_are_refused() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_BACKUP_ARCHIVE_TIMEOUT", "3");
    let mut primary = Cluster::init(&t, "primary", &[]);
    primary.archive_to(&a);
    primary.start();
    let pg = with_pg(&a, &primary);
    let data = primary.datadir.to_str().unwrap().to_string();

    let lock_dir = primary.datadir.join("pg_wal/.cairn");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(lock_dir.join("backup.lock"))
        .unwrap();
    lock.lock().unwrap();
    std::fs::write(lock_dir.join("backup.lock"), "pid 4242 on testhost").unwrap();
    fails(
        &pg.cairn(&["backup-push", &data], t.path()),
        "another backup of this cluster is running (pid 4242 on testhost",
    );
    drop(lock);
    common::chown_pg(&lock_dir);

    primary.set(&[("archive_command", "'/bin/false'")]);
    primary.sql("select pg_reload_conf()");
    fails(
        &pg.cairn(&["backup-push", &data], t.path()),
        "was not archived within 3 s",
    );
    let listed = ok(
        &pg.cairn(&["backup-list", "--json"], t.path()),
        "backup-list",
    );
    assert_eq!(listed.trim(), "[]", "a stalled backup was recorded");
    primary.stop();
}

/// `major` as the suite installs it: the machine's own (15, Debian 12's)
/// or one of scripts/test.sh's embedded servers.
fn server_of(major: u32) -> common::Server {
    let system = common::Server::system();
    let version = Command::new(system.bindir.join("postgres"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    if version.contains(&format!(") {major}.")) {
        system
    } else {
        common::Server::embedded(major)
    }
}

/// The recovery drill on a major version, compared by query checksums (the
/// machine's pg_dumpall 15 refuses newer servers): a full backup, changes,
/// a second backup (a delta: from the data directory, or `remote`, over the
/// replication protocol, whose BASE_BACKUP syntax changed in 15, an
/// incremental backup from 17 on, else a full one), more changes archived,
/// the cluster destroyed, the chain restored and replayed.
fn drill_on(major: u32, remote: bool) {
    let t = TestDir::new();
    let a = Archive::new(Backend::File)
        .with("CAIRN_BACKUP_PART_SIZE", "4194304")
        .with("CAIRN_BACKUP_ARCHIVE_TIMEOUT", "60");
    let server = server_of(major);
    let mut primary = Cluster::init_on(server.clone(), &t, "primary", &[]);
    primary.archive_to(&a);
    if major >= 17 {
        primary.set(&[("summarize_wal", "on")]);
    }
    primary.start();
    assert!(
        primary
            .sql("show server_version_num")
            .starts_with(&major.to_string())
    );
    let pg = with_pg(&a, &primary);
    let datadir = primary.datadir.to_str().unwrap().to_string();
    let backup = |delta: bool| {
        let mut args = vec!["backup-push"];
        if remote {
            args.push("--remote");
        } else {
            args.push(&datadir);
        }
        if delta {
            args.push("--delta");
        }
        let pushed = pg.cairn(&args, t.path());
        assert!(
            pushed.status.success(),
            "backup-push: {}\nserver log:\n{}",
            stderr(&pushed),
            primary.log_text()
        );
        String::from_utf8_lossy(&pushed.stdout).trim().to_string()
    };
    backup(false);
    primary.pgbench(&["-i", "-s", "10", "-q"]);
    primary.pgbench(&["-c", "4", "-j", "2", "-t", "200"]);
    let second = backup(true);
    if !remote || major >= 17 {
        assert!(second.contains("_D_"), "not a delta: {second}");
    }
    primary.pgbench(&["-c", "4", "-j", "2", "-t", "200"]);
    let before = pgbench_checksum(&primary);
    primary.sql("checkpoint");
    wait_archived(&primary);
    destroy(&mut primary);

    let data = primary.datadir.clone();
    ok(
        &fetch_to(&pg, &t, &data, &["--recovery-target", "latest"]),
        "backup-fetch",
    );
    common::chown_pg(&data);
    let mut restored = Cluster::existing(&t, data.clone());
    restored.set_server(server);
    restored.set_env(a.env.clone());
    restored.start();
    restored.wait_until("the end of recovery", Duration::from_secs(300), |c| {
        c.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert_eq!(pgbench_checksum(&restored), before);
}

/// pg_start_backup/pg_stop_backup (12-14).
#[test]
fn drill_postgresql_14() {
    drill_on(14, false);
}

/// pg_backup_start/stop (15+).
#[test]
fn drill_postgresql_15() {
    drill_on(15, false);
}

#[test]
fn drill_postgresql_16() {
    drill_on(16, false);
}

/// A newer control file.
#[test]
fn drill_postgresql_17() {
    drill_on(17, false);
}

/// Data checksums on by default.
#[test]
fn drill_postgresql_18() {
    drill_on(18, false);
}

#[test]
fn remote_drill_postgresql_14() {
    drill_on(14, true);
}

#[test]
fn remote_drill_postgresql_15() {
    drill_on(15, true);
}

#[test]
fn remote_drill_postgresql_16() {
    drill_on(16, true);
}

#[test]
fn remote_drill_postgresql_17() {
    drill_on(17, true);
}

#[test]
fn remote_drill_postgresql_18() {
    drill_on(18, true);
}
