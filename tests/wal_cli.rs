//! wal-push / wal-fetch as PostgreSQL calls them: exit codes, bad input, lookahead,
//! prefetch and gap detection. WAL files here are synthetic segments with a valid
//! page header (cairn reads only the header); the recovery tests use real clusters.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::wal::{
    MIB, assert_exit, datadir, fetch, no_temp_files, placed, push, seg_name, spool_dir, stderr,
    write_seg,
};
use common::{AgeKey, Archive, Backend, TestDir, fake_segment};

/// A local directory that does not exist yet is an empty archive to write
/// to, and a configuration error to read from (never "not in the archive").
#[test]
fn a_new_local_directory_is_made_by_the_first_push() {
    let t = TestDir::new();
    let root = t.path().join("new-archive/nested");
    let a = Archive::new(Backend::File)
        .with("CAIRN_STORAGE", &format!("file://{}", root.display()))
        .with("CAIRN_WAL_FETCH_PREFETCH", "0");
    let d = datadir(&t, Some("recovery.signal"));
    let name = seg_name(1, 1, 16 * MIB);
    assert_exit(&fetch(&a, &d, &name), 128, "does not exist");
    write_seg(&d, &name, &fake_segment(16 * MIB, 1, 1), false);
    assert_exit(&push(&a, &d, &name), 0, "");
    assert!(root.join("wal").join(&name).exists());
    assert_exit(&fetch(&a, &d, &name), 0, "");
}

#[test]
fn push_fetch_round_trip_each_backend_and_codec() {
    for (backend, compression, encrypt) in [
        (Backend::File, "lz4", true),
        (Backend::File, "none", false),
        (Backend::S3, "zstd", true),
        (Backend::Gcs, "lz4", false),
    ] {
        let t = TestDir::new();
        let mut a = Archive::new(backend)
            .with("CAIRN_COMPRESSION", compression)
            .with("CAIRN_WAL_FETCH_PREFETCH", "0");
        if encrypt {
            let k = AgeKey::new(t.path());
            a = a.with("CAIRN_AGE_RECIPIENTS", &k.recipient).with(
                "CAIRN_AGE_IDENTITY_FILE",
                &k.identity_file.display().to_string(),
            );
        }
        let d = datadir(&t, Some("recovery.signal"));
        let seg = fake_segment(16 * MIB, 1, 1);
        let name = seg_name(1, 1, 16 * MIB);
        write_seg(&d, &name, &seg, true);
        // Timeline 2 left timeline 1 inside segment 2, which is then read
        // from timeline 2: timeline 1's archive ends with segment 1.
        write_seg(
            &d,
            "00000002.history",
            b"1\t0/2000100\tno recovery target specified\n",
            false,
        );
        assert_exit(&push(&a, &d, &name), 0, "");
        assert_exit(&push(&a, &d, "00000002.history"), 0, "");
        // Pushing the identical file again (an archiver retry) succeeds.
        assert_exit(&push(&a, &d, &name), 0, "");
        assert_exit(&fetch(&a, &d, &name), 0, "");
        assert!(
            std::fs::read(d.join("pg_wal/RECOVERYXLOG")).unwrap() == placed(&name, &seg),
            "{backend:?}: restored bytes differ"
        );
        assert_exit(&fetch(&a, &d, "00000002.history"), 0, "");
        assert_eq!(
            std::fs::read(d.join("pg_wal/RECOVERYXLOG")).unwrap(),
            b"1\t0/2000100\tno recovery target specified\n"
        );
        // The end of the archive and history probes: exactly 1.
        assert_exit(
            &fetch(&a, &d, &seg_name(1, 2, 16 * MIB)),
            1,
            "not in the archive",
        );
        assert_exit(&fetch(&a, &d, "00000003.history"), 1, "not in the archive");
    }
}

#[test]
fn different_contents_under_an_archived_name_fail_loudly() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let d = datadir(&t, None);
    let name = seg_name(1, 5, 16 * MIB);
    write_seg(&d, &name, &fake_segment(16 * MIB, 1, 1), false);
    assert_exit(&push(&a, &d, &name), 0, "");
    let stored = std::fs::read(a.dir.as_ref().unwrap().join("wal").join(&name)).unwrap();
    write_seg(&d, &name, &fake_segment(16 * MIB, 1, 2), false);
    assert_exit(&push(&a, &d, &name), 1, "refusing to overwrite");
    assert_eq!(
        std::fs::read(a.dir.as_ref().unwrap().join("wal").join(&name)).unwrap(),
        stored,
        "archive changed"
    );
}

#[test]
fn bad_names_and_files_are_refused() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let d = datadir(&t, Some("recovery.signal"));
    assert_exit(
        &a.cairn(&["wal-push", "../../etc/passwd"], &d),
        1,
        "not a WAL file name",
    );
    assert_exit(
        &a.cairn(&["wal-push", "pg_wal/foo"], &d),
        1,
        "not a WAL file name",
    );
    let name = seg_name(1, 1, 16 * MIB);
    assert_exit(&push(&a, &d, &name), 1, &name);
    // A directory where the file should be: unreadable.
    std::fs::create_dir(d.join("pg_wal").join(&name)).unwrap();
    assert_exit(&push(&a, &d, &name), 1, &name);
    std::fs::remove_dir(d.join("pg_wal").join(&name)).unwrap();
    // A truncated segment is not archived.
    write_seg(&d, &name, &fake_segment(16 * MIB, 1, 1)[..5 * MIB], false);
    assert_exit(&push(&a, &d, &name), 1, "not a complete WAL segment");
    assert!(!a.dir.as_ref().unwrap().join("wal").join(&name).exists());
    // wal-fetch with a bad name, in archive recovery: fatal, not "not found".
    assert_exit(
        &a.cairn(
            &["wal-fetch", "../../etc/passwd", "pg_wal/RECOVERYXLOG"],
            &d,
        ),
        128,
        "not a WAL file name",
    );
    assert_exit(
        &a.cairn(&["wal-fetch", "foo", "pg_wal/RECOVERYXLOG"], &d),
        128,
        "not a WAL file name",
    );
    no_temp_files(&d.join("pg_wal"));
}

#[test]
fn damaged_objects_and_keys_never_restore() {
    let t = TestDir::new();
    let k = AgeKey::new(t.path());
    let a = Archive::new(Backend::File)
        .with("CAIRN_AGE_RECIPIENTS", &k.recipient)
        .with("CAIRN_WAL_FETCH_PREFETCH", "0");
    let d = datadir(&t, Some("recovery.signal"));
    let names: Vec<String> = (1..=3).map(|i| seg_name(1, i, MIB)).collect();
    for (i, n) in names.iter().enumerate() {
        write_seg(&d, n, &fake_segment(MIB, 1, i as u64), false);
        assert_exit(&push(&a, &d, n), 0, "");
    }
    // No identity configured, then the wrong one: fatal to recovery.
    assert_exit(&fetch(&a, &d, &names[0]), 128, "no identity is configured");
    let other = AgeKey::new(t.path());
    let a_wrong = a.clone_with(
        "CAIRN_AGE_IDENTITY_FILE",
        &other.identity_file.display().to_string(),
    );
    assert_exit(&fetch(&a_wrong, &d, &names[0]), 128, "wrong age key");
    let a = a.with(
        "CAIRN_AGE_IDENTITY_FILE",
        &k.identity_file.display().to_string(),
    );
    let missing_key = a.clone_with("CAIRN_AGE_IDENTITY_FILE", "/nonexistent/key.txt");
    assert_exit(
        &fetch(&missing_key, &d, &names[0]),
        128,
        "/nonexistent/key.txt",
    );
    // One flipped byte, then a truncated object.
    let obj = |n: &str| a.dir.as_ref().unwrap().join("wal").join(n);
    let mut bytes = std::fs::read(obj(&names[1])).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(obj(&names[1]), &bytes).unwrap();
    assert_exit(&fetch(&a, &d, &names[1]), 128, "corrupt");
    let bytes = std::fs::read(obj(&names[2])).unwrap();
    std::fs::write(obj(&names[2]), &bytes[..bytes.len() - 100]).unwrap();
    assert_exit(&fetch(&a, &d, &names[2]), 128, "corrupt or truncated");
    no_temp_files(&d.join("pg_wal"));
    // In standby mode the same failure exits 1: the standby retries.
    std::fs::remove_file(d.join("recovery.signal")).unwrap();
    std::fs::write(d.join("standby.signal"), "").unwrap();
    assert_exit(&fetch(&a, &d, &names[2]), 1, "corrupt");
    // The good one still restores.
    assert_exit(&fetch(&a, &d, &names[0]), 0, "");
}

#[test]
fn a_hole_in_the_archive_is_not_the_end_of_it() {
    let t = TestDir::new();
    for backend in [Backend::File, Backend::S3] {
        let a = Archive::new(backend).with("CAIRN_WAL_FETCH_PREFETCH", "0");
        let d = datadir(&t, Some("recovery.signal"));
        for i in [1u64, 2, 4] {
            let n = seg_name(1, i, MIB);
            write_seg(&d, &n, &fake_segment(MIB, 1, i), false);
            assert_exit(&push(&a, &d, &n), 0, "");
        }
        let hole = seg_name(1, 3, MIB);
        assert_exit(&fetch(&a, &d, &hole), 128, &format!("{hole} is missing"));
        assert_exit(
            &fetch(&a, &d, &seg_name(1, 5, MIB)),
            1,
            "not in the archive",
        );
        // Segments of a timeline before its first archived one are not a gap.
        assert_exit(
            &fetch(&a, &d, &seg_name(2, 3, MIB)),
            1,
            "not in the archive",
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn unreachable_or_misconfigured_storage_is_fatal_to_recovery() {
    let t = TestDir::new();
    let d = datadir(&t, Some("recovery.signal"));
    let name = seg_name(1, 1, 16 * MIB);
    write_seg(&d, &name, &fake_segment(16 * MIB, 1, 1), false);

    // Nothing listening on the endpoint. The elapsed-time checks in this test
    // are hang detectors (seconds against the minutes of a stuck probe or an
    // unbounded retry), not speed measurements.
    let port = common::free_port();
    let refused = Archive::new(Backend::S3)
        .with("CAIRN_S3_ENDPOINT", &format!("http://127.0.0.1:{port}"))
        .with("CAIRN_STORAGE_TIMEOUT", "2");
    let start = Instant::now();
    assert_exit(
        &fetch(&refused, &d, &name),
        128,
        &format!("127.0.0.1:{port}"),
    );
    assert_exit(&push(&refused, &d, &name), 1, "s3://");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );

    // A bucket that does not exist.
    let a = Archive::new(Backend::S3);
    let no_bucket = a.clone_with("CAIRN_STORAGE", "s3://no-such-bucket/x");
    assert_exit(&fetch(&no_bucket, &d, &name), 128, "nosuchbucket");
    // (No wal-push case here: s3s-fs creates a missing bucket on PUT, unlike S3.)

    // Bad credentials.
    let bad = a.clone_with("AWS_SECRET_ACCESS_KEY", "wrong-secret");
    assert_exit(&fetch(&bad, &d, &name), 128, "signature");
    assert_exit(&push(&bad, &d, &name), 1, "signature");

    // A clock two hours ahead of the server's (libfaketime, from Debian's
    // faketime, which scripts/test.sh installs): S3 signatures carry the
    // time, and the server refuses them.
    let skewed = a
        .clone_with(
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        )
        .with("FAKETIME", "+2h");
    let out = push(&skewed, &d, &name);
    assert_exit(&out, 1, "RequestTimeTooSkewed");
    assert!(stderr(&out).contains("clock"), "{}", stderr(&out));
    assert_exit(&fetch(&skewed, &d, &name), 128, "RequestTimeTooSkewed");

    // No credentials at all: a fast, clear failure, no metadata-service hang.
    let mut none = a.clone_with("HOME", t.path().to_str().unwrap());
    none.env.retain(|(k, _)| !k.starts_with("AWS_"));
    let start = Instant::now();
    let out = push(&none, &d, &name);
    assert_exit(&out, 1, "no AWS credentials");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    // One line naming the storage and what to set, no SDK debug dump.
    let err = stderr(&out);
    assert!(err.contains("cannot use s3://cairn-test/"), "{err}");
    assert!(
        err.len() < 400 && !err.contains('{') && !err.contains("Some("),
        "{err}"
    );

    // A config file with an unknown key.
    let cfg = t.path().join("cairn.yaml");
    std::fs::write(&cfg, "storage: file:///tmp/x\nlookahed: 3\n").unwrap();
    let with_cfg = a.clone_with("CAIRN_CONFIG", cfg.to_str().unwrap());
    assert_exit(&push(&with_cfg, &d, &name), 1, "\"lookahed\"");
    assert_exit(&fetch(&with_cfg, &d, &name), 128, "\"lookahed\"");
    assert!(
        a.s3.as_ref()
            .unwrap()
            .bucket_dir()
            .read_dir()
            .unwrap()
            .next()
            .is_none(),
        "archive changed"
    );
    no_temp_files(&d.join("pg_wal"));
}

#[test]
fn lookahead_pushes_ready_segments_once() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_WAL_PUSH_LOOKAHEAD", "3");
    let d = datadir(&t, None);
    let names: Vec<String> = (1..=6).map(|i| seg_name(1, i, 16 * MIB)).collect();
    for (i, n) in names.iter().enumerate() {
        write_seg(&d, n, &fake_segment(16 * MIB, 1, i as u64), true);
    }
    let archived = |n: &str| a.dir.as_ref().unwrap().join("wal").join(n).exists();
    assert_exit(&push(&a, &d, &names[0]), 0, "");
    assert!(
        names[..4].iter().all(|n| archived(n)),
        "lookahead did not push 3 ahead"
    );
    assert!(!archived(&names[4]));
    // cairn never touches PostgreSQL's .ready files.
    assert!(
        names
            .iter()
            .all(|n| d.join(format!("pg_wal/archive_status/{n}.ready")).exists())
    );
    let marker = d.join("pg_wal/.cairn/pushed").join(&names[1]);
    assert!(marker.exists());
    // PostgreSQL's own call for a pushed-ahead segment: answered from the marker.
    let archived_by_pg = |n: &str| {
        let st = d.join("pg_wal/archive_status");
        std::fs::rename(st.join(format!("{n}.ready")), st.join(format!("{n}.done"))).unwrap();
    };
    archived_by_pg(&names[0]);
    assert_exit(&push(&a, &d, &names[1]), 0, "");
    archived_by_pg(&names[1]);
    assert!(!marker.exists(), "marker not consumed");
    // A file that changed since it was pushed ahead is checked, not trusted.
    write_seg(&d, &names[2], &fake_segment(16 * MIB, 1, 99), true);
    assert_exit(&push(&a, &d, &names[2]), 1, "refusing to overwrite");
    // A marker vouches for the storage it was written for: after a change of
    // storage, PostgreSQL's call uploads the segment there.
    let moved = t.sub("moved");
    let b = a.clone_with("CAIRN_STORAGE", &format!("file://{}", moved.display()));
    assert!(d.join("pg_wal/.cairn/pushed").join(&names[3]).exists());
    assert_exit(&push(&b, &d, &names[3]), 0, "");
    assert!(
        moved.join("wal").join(&names[3]).exists(),
        "acknowledged as archived without reaching the new storage"
    );
}

#[test]
fn prefetch_follows_the_segment_size_and_timeline() {
    // 1 MiB segments wrap the name's low part at 0xFFF; 64 MiB ones at 0x3F.
    for seg_size in [MIB, 64 * MIB] {
        let t = TestDir::new();
        let base = t.sub("spool");
        let a = Archive::new(Backend::File)
            .with("CAIRN_WAL_FETCH_PREFETCH", "3")
            .with("CAIRN_WAL_FETCH_SPOOL", &base.display().to_string());
        let d = datadir(&t, Some("recovery.signal"));
        let per = 0x1_0000_0000u64 / seg_size as u64;
        let first = per - 2;
        let segs: Vec<(String, Vec<u8>)> = (first..first + 5)
            .map(|n| (seg_name(1, n, seg_size), fake_segment(seg_size, 1, n)))
            .collect();
        for (n, b) in &segs {
            write_seg(&d, n, b, false);
            assert_exit(&push(&a, &d, n), 0, "");
            std::fs::remove_file(d.join("pg_wal").join(n)).unwrap();
        }
        assert_exit(&fetch(&a, &d, &segs[0].0), 0, "");
        let pre = spool_dir(&base);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !segs[1..4].iter().all(|(n, _)| pre.join(n).exists()) {
            assert!(
                Instant::now() < deadline,
                "prefetch did not arrive: {:?}",
                std::fs::read_dir(&pre).map(|r| r.count())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            segs[2].0.ends_with("00000000"),
            "crossed an xlogid boundary: {}",
            segs[2].0
        );
        // A spool file that is not the segment (another's bytes) is
        // checked and discarded, never handed to PostgreSQL.
        std::fs::copy(pre.join(&segs[2].0), pre.join(&segs[3].0)).unwrap();
        for (n, b) in &segs[1..] {
            assert_exit(&fetch(&a, &d, n), 0, "");
            assert!(
                std::fs::read(d.join("pg_wal/RECOVERYXLOG")).unwrap() == placed(n, b),
                "{n} differs"
            );
            assert!(!pre.join(n).exists(), "{n}: prefetched copy left behind");
        }
        // A fetch on another timeline discards what was prefetched for this one.
        let other = seg_name(2, first + 3, seg_size);
        write_seg(&d, &other, &fake_segment(seg_size, 2, 7), false);
        assert_exit(&push(&a, &d, &other), 0, "");
        std::fs::write(pre.join(seg_name(1, first + 9, seg_size)), b"stale").unwrap();
        assert_exit(&fetch(&a, &d, &other), 0, "");
        assert!(
            !pre.join(seg_name(1, first + 9, seg_size)).exists(),
            "wrong-timeline file kept"
        );
    }
}

/// PostgreSQL runs restore_command through the shell: cairn may be found on
/// PATH or named relative to the data directory. The prefetch worker must start
/// either way.
#[test]
fn prefetch_works_when_cairn_is_called_by_path_or_relative_name() {
    let t = TestDir::new();
    let base = t.sub("spool");
    let a = Archive::new(Backend::File)
        .with("CAIRN_WAL_FETCH_PREFETCH", "2")
        .with("CAIRN_WAL_FETCH_SPOOL", &base.display().to_string());
    let d = datadir(&t, Some("recovery.signal"));
    let bin = d.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(common::cairn_bin(), bin.join("cairn")).unwrap();
    let segs: Vec<String> = (1..=6).map(|n| seg_name(1, n, 16 * MIB)).collect();
    for (i, n) in segs.iter().enumerate() {
        write_seg(&d, n, &fake_segment(16 * MIB, 1, i as u64 + 1), false);
        assert_exit(&push(&a, &d, n), 0, "");
        std::fs::remove_file(d.join("pg_wal").join(n)).unwrap();
    }
    let by_path = bin.display().to_string() + ":/usr/bin:/bin";
    for (program, path, fetched, ahead) in [
        (Path::new("cairn"), by_path.as_str(), 0, 1..3),
        (Path::new("./bin/cairn"), "/usr/bin:/bin", 3, 4..6),
    ] {
        let out = a.cairn_as(
            program,
            path,
            &["wal-fetch", &segs[fetched], "pg_wal/RECOVERYXLOG"],
            &d,
        );
        assert_exit(&out, 0, "");
        let pre = spool_dir(&base);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !segs[ahead.clone()].iter().all(|n| pre.join(n).exists()) {
            assert!(
                Instant::now() < deadline,
                "{}: no prefetch; stderr: {}",
                program.display(),
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// archive_command output lands in PostgreSQL's log: nothing on success unless
/// asked, one line at debug, and machine-readable lines with `--log-format json`.
#[test]
fn logs_are_quiet_on_success_and_json_on_request() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let d = datadir(&t, Some("recovery.signal"));
    let names: Vec<String> = (1..=3).map(|n| seg_name(1, n, 16 * MIB)).collect();
    for (i, n) in names.iter().enumerate() {
        write_seg(&d, n, &fake_segment(16 * MIB, 1, i as u64 + 1), false);
    }

    let quiet = push(&a, &d, &names[0]);
    assert_exit(&quiet, 0, "");
    assert_eq!(stderr(&quiet), "", "wal-push printed on success");
    let quiet = fetch(&a, &d, &names[0]);
    assert_exit(&quiet, 0, "");
    assert_eq!(stderr(&quiet), "", "wal-fetch printed on success");

    let debug = a
        .clone_with("CAIRN_LOG_LEVEL", "debug")
        .cairn(&["wal-push", &format!("pg_wal/{}", names[1])], &d);
    assert_exit(&debug, 0, "");
    let debug = stderr(&debug);
    let lines = debug.lines().filter(|l| l.contains(&names[1])).count();
    assert_eq!(lines, 1, "want one debug line: {debug}");

    let json = a.cairn(
        &[
            "--log-format",
            "json",
            "wal-fetch",
            "../etc/passwd",
            "pg_wal/RECOVERYXLOG",
        ],
        &d,
    );
    assert_eq!(json.status.code(), Some(128), "{}", stderr(&json));
    let err = stderr(&json);
    let line: serde_json::Value = serde_json::from_str(err.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {err}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(
        line["message"]
            .as_str()
            .unwrap_or("")
            .contains("../etc/passwd"),
        "{line}"
    );
}
