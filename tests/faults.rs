//! The exit-status contract under faults, with real storage servers behind a
//! fault proxy and a real full disk: a mistyped restore_command, a
//! substituted or foreign segment, gaps before a timeline switch or a
//! `.partial`, a damaged archived copy, stalled and reset connections, a
//! slow link, a malformed endpoint, a killed writer's leftovers, and errors
//! that name their real cause. Elapsed-time checks here are hang detectors
//! (seconds against minutes), not speed measurements.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultProxy};
use common::wal::{MIB, assert_exit, datadir, fetch, placed, push, seg_name, stderr, write_seg};
use common::{Archive, Backend, TestDir, Tmpfs, fake_segment};

/// A fake `pg_control` (and `PG_VERSION`) naming cluster `system`.
fn fake_control(data: &Path, system: u64) {
    std::fs::create_dir_all(data.join("global")).unwrap();
    std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
    let mut control = vec![0u8; 8192];
    control[..8].copy_from_slice(&system.to_le_bytes());
    std::fs::write(data.join("global/pg_control"), control).unwrap();
}

/// A synthetic segment of cluster `system`.
fn segment_of(size: usize, tli: u32, seed: u64, system: u64) -> Vec<u8> {
    let mut b = fake_segment(size, tli, seed);
    b[24..32].copy_from_slice(&system.to_le_bytes());
    b
}

#[test]
fn usage_errors_never_read_as_not_found() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let d = datadir(&t, Some("recovery.signal"));
    let name = seg_name(1, 1, 16 * MIB);
    let run = |args: &[&str]| a.cairn(args, &d);
    // A typo and a missing %p in restore_command: fatal in archive recovery.
    let typo = run(&["wal-fetch", "--prefech", "4", &name, "pg_wal/RECOVERYXLOG"]);
    assert_exit(&typo, 128, "invalid arguments");
    assert!(stderr(&typo).contains("--prefech"), "{}", stderr(&typo));
    assert_exit(&run(&["wal-fetch", &name]), 128, "invalid arguments");
    // A bad configuration, too.
    let bad = a.clone_with("CAIRN_COMPRESSION", "brotli");
    assert_exit(
        &bad.cairn(&["wal-fetch", &name, "pg_wal/RECOVERYXLOG"], &d),
        128,
        "brotli",
    );
    // In standby mode every failure is a retry.
    std::fs::remove_file(d.join("recovery.signal")).unwrap();
    std::fs::write(d.join("standby.signal"), "").unwrap();
    assert_exit(&run(&["wal-fetch", &name]), 1, "invalid arguments");
    // archive_command: never 0, never above 125.
    assert_exit(
        &run(&["wal-push", "--lookahaed", "2", "x"]),
        1,
        "invalid arguments",
    );
    assert_exit(&run(&["wal-push"]), 1, "invalid arguments");
    assert_exit(
        &bad.cairn(&["wal-push", &format!("pg_wal/{name}")], &d),
        1,
        "brotli",
    );
    // Help is an answer, not a failure.
    let help = run(&["wal-fetch", "--help"]);
    assert_eq!(help.status.code(), Some(0));
}

#[test]
fn a_substituted_or_foreign_segment_never_restores() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_WAL_FETCH_PREFETCH", "0");
    let d = datadir(&t, Some("recovery.signal"));
    fake_control(&d, 7);
    let names: Vec<String> = (1..=3).map(|n| seg_name(1, n, 16 * MIB)).collect();
    for (i, n) in names[..2].iter().enumerate() {
        write_seg(&d, n, &segment_of(16 * MIB, 1, i as u64, 7), false);
        assert_exit(&push(&a, &d, n), 0, "");
    }
    // Another segment's object copied under a name: decodes, is not it.
    let wal = a.dir.clone().unwrap().join("wal");
    std::fs::copy(wal.join(&names[0]), wal.join(&names[2])).unwrap();
    assert_exit(&fetch(&a, &d, &names[2]), 128, "is not WAL file");
    assert!(
        !d.join("pg_wal/RECOVERYXLOG").exists(),
        "a wrong file was restored"
    );
    // The archive's own segments of this cluster restore.
    assert_exit(&fetch(&a, &d, &names[1]), 0, "");
    // A data directory of another cluster gets none of them.
    let other = t.sub("other");
    std::fs::create_dir_all(other.join("pg_wal")).unwrap();
    std::fs::write(other.join("recovery.signal"), "").unwrap();
    fake_control(&other, 8);
    assert_exit(&fetch(&a, &other, &names[1]), 128, "not 8");
    // Nor may it archive a segment that is not its own.
    write_seg(&other, &names[2], &segment_of(16 * MIB, 1, 9, 7), false);
    assert_exit(&push(&a, &other, &names[2]), 1, "not 8");

    // A second live cluster on the same prefix writes where the first
    // already has WAL: refused before anything is stored.
    let second = t.sub("second");
    std::fs::create_dir_all(second.join("pg_wal")).unwrap();
    fake_control(&second, 9);
    let low = seg_name(1, 1, 16 * MIB);
    write_seg(&second, &low, &segment_of(16 * MIB, 1, 1, 9), false);
    let refused = push(&a, &second, &low);
    assert_exit(
        &refused,
        1,
        "two clusters may be archiving to the same storage prefix",
    );
    // One that continues after it (pg_upgrade keeps the LSNs going) joins.
    let high = seg_name(1, 40, 16 * MIB);
    write_seg(&second, &high, &segment_of(16 * MIB, 1, 2, 9), false);
    assert_exit(&push(&a, &second, &high), 0, "");
}

#[test]
fn gaps_before_a_timeline_switch_or_a_partial_are_gaps() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_WAL_FETCH_PREFETCH", "0");
    let d = datadir(&t, Some("recovery.signal"));
    let size = 16 * MIB;
    for n in [1u64, 2] {
        let name = seg_name(1, n, size);
        write_seg(&d, &name, &fake_segment(size, 1, n), false);
        assert_exit(&push(&a, &d, &name), 0, "");
    }
    // Timeline 1's segment 3 is lost; timeline 2 left it in segment 5.
    write_seg(&d, "00000002.history", b"1\t0/5000100\tpromoted\n", false);
    assert_exit(&push(&a, &d, "00000002.history"), 0, "");
    for n in [5u64, 6] {
        let name = seg_name(2, n, size);
        write_seg(&d, &name, &fake_segment(size, 2, n), false);
        assert_exit(&push(&a, &d, &name), 0, "");
    }
    let lost = seg_name(1, 3, size);
    assert_exit(&fetch(&a, &d, &lost), 128, "00000002.history");
    // The switch segment is read from timeline 2: timeline 1 may end before it.
    assert_exit(
        &fetch(&a, &d, &seg_name(1, 5, size)),
        1,
        "not in the archive",
    );

    // A hole before a .partial (written at a promotion).
    let t2 = TestDir::new();
    let t3 = datadir(&t2, Some("recovery.signal"));
    let b = Archive::new(Backend::File).with("CAIRN_WAL_FETCH_PREFETCH", "0");
    for n in [1u64, 2] {
        let name = seg_name(1, n, size);
        write_seg(&t3, &name, &fake_segment(size, 1, n), false);
        assert_exit(&push(&b, &t3, &name), 0, "");
    }
    let partial = format!("{}.partial", seg_name(1, 4, size));
    write_seg(&t3, &partial, &fake_segment(size, 1, 4), false);
    assert_exit(&push(&b, &t3, &partial), 0, "");
    assert_exit(&fetch(&b, &t3, &seg_name(1, 3, size)), 128, ".partial");
    // The .partial's own segment, at the end of the archive: its bytes
    // are restored as the segment (that timeline ended in it; recovery
    // replays up to its end).
    assert_exit(
        &fetch(&b, &t3, &seg_name(1, 4, size)),
        0,
        "restoring this segment's received part",
    );
}

#[test]
fn a_damaged_archived_copy_is_replaced_by_the_good_one() {
    let t = TestDir::new();
    let prom = t.path().join("cairn.prom");
    let a = Archive::new(Backend::File)
        .with("CAIRN_WAL_FETCH_PREFETCH", "0")
        .with("CAIRN_METRICS_TEXTFILE", &prom.display().to_string());
    let d = datadir(&t, Some("recovery.signal"));
    let object = |n: &str| a.dir.clone().unwrap().join("wal").join(n);
    for (i, damage) in ["flip", "truncate"].iter().enumerate() {
        let name = seg_name(1, i as u64 + 1, 16 * MIB);
        let seg = fake_segment(16 * MIB, 1, i as u64);
        write_seg(&d, &name, &seg, false);
        assert_exit(&push(&a, &d, &name), 0, "");
        let mut stored = std::fs::read(object(&name)).unwrap();
        match *damage {
            "flip" => {
                let mid = stored.len() / 2;
                stored[mid] ^= 0x10;
            }
            _ => stored.truncate(stored.len() - 1000),
        }
        std::fs::write(object(&name), &stored).unwrap();
        assert_exit(&fetch(&a, &d, &name), 128, "corrupt");
        // PostgreSQL archives the segment again: the good copy replaces the
        // damaged one, loudly, instead of being taken for it.
        let again = push(&a, &d, &name);
        assert_exit(&again, 0, "");
        assert!(
            stderr(&again).contains("damaged"),
            "{damage}: {}",
            stderr(&again)
        );
        assert_exit(&fetch(&a, &d, &name), 0, "");
        assert_eq!(
            std::fs::read(d.join("pg_wal/RECOVERYXLOG")).unwrap(),
            placed(&name, &seg)
        );
    }
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cairn_wal_push_replaced_total{") && l.ends_with(" 2")),
        "{metrics}"
    );
}

/// The same archive reached through a fault proxy.
/// A data directory in recovery (`recovery.signal`) with one 16 MiB
/// segment of timeline 1 in pg_wal, and its name.
fn recovering_with_one_segment(t: &TestDir) -> (std::path::PathBuf, String) {
    let d = datadir(t, Some("recovery.signal"));
    let name = seg_name(1, 1, 16 * MIB);
    write_seg(&d, &name, &fake_segment(16 * MIB, 1, 1), false);
    (d, name)
}

fn behind_proxy(a: &Archive) -> (FaultProxy, Archive) {
    let (port, var, path) = match a.backend {
        Backend::S3 => (a.s3.as_ref().unwrap().port, "CAIRN_S3_ENDPOINT", ""),
        Backend::Moto => (a.moto.as_ref().unwrap().port, "CAIRN_S3_ENDPOINT", ""),
        Backend::Gcs => (a.gcs.as_ref().unwrap().port, "CAIRN_GCS_ENDPOINT", ""),
        Backend::Azure => (
            a.azure.as_ref().unwrap().port,
            "CAIRN_AZURE_ENDPOINT",
            "/devstoreaccount1",
        ),
        Backend::File => unreachable!("a directory has no network"),
    };
    let proxy = FaultProxy::start(port);
    let through = a
        .clone_with(var, &format!("{}{path}", proxy.url()))
        .with("CAIRN_STORAGE_TIMEOUT", "4")
        .with("CAIRN_STORAGE_IDLE_TIMEOUT", "2")
        .with("CAIRN_COMPRESSION", "none")
        .with("CAIRN_WAL_FETCH_PREFETCH", "0");
    (proxy, through)
}

#[track_caller]
fn within(started: Instant, limit: u64, what: &str) {
    assert!(
        started.elapsed() < Duration::from_secs(limit),
        "{what} took {:?}",
        started.elapsed()
    );
}

fn stalled_and_broken_connections(backend: Backend) {
    let t = TestDir::new();
    let a = Archive::new(backend);
    let (proxy, s) = behind_proxy(&a);
    let d = datadir(&t, Some("recovery.signal"));
    let name = seg_name(1, 1, 16 * MIB);
    let seg = fake_segment(16 * MIB, 1, 1);
    write_seg(&d, &name, &seg, false);

    // A server that stops answering: the exit status within the deadline.
    proxy.inject(Fault::StallResponseAfter(0), 10_000);
    let started = Instant::now();
    assert_exit(&push(&s, &d, &name), 1, "no progress");
    within(started, 15, "wal-push against a stalled server");
    let started = Instant::now();
    assert_exit(&fetch(&s, &d, &name), 128, "no progress");
    within(started, 15, "wal-fetch against a stalled server");
    // A server that stops reading an upload.
    proxy.inject(Fault::StallRequestAfter(64 << 10), 10_000);
    let started = Instant::now();
    assert_exit(&push(&s, &d, &name), 1, "no progress");
    within(started, 15, "wal-push whose upload stalls");
    proxy.heal();

    assert_exit(&push(&s, &d, &name), 0, "");
    // A connection reset part-way through the body is resumed.
    proxy.inject(Fault::ResetResponseAfter(3 * MIB as u64), 1);
    assert_exit(&fetch(&s, &d, &name), 0, "");
    assert_eq!(
        std::fs::read(d.join("pg_wal/RECOVERYXLOG")).unwrap(),
        placed(&name, &seg),
        "the resumed download differs"
    );
    // One that breaks, after which the server cannot be reached: a
    // storage error, not a "corrupt" object.
    proxy.inject(Fault::ResetResponseAfter(MIB as u64), 1);
    proxy.inject(Fault::Refuse, 10_000);
    let started = Instant::now();
    let broken = fetch(&s, &d, &name);
    assert_exit(&broken, 128, &name);
    assert!(!stderr(&broken).contains("corrupt"), "{}", stderr(&broken));
    within(started, 20, "wal-fetch over connections that keep breaking");
    proxy.heal();

    // A slow link that keeps moving is waited for, past the deadline.
    let slow = seg_name(1, 2, 16 * MIB);
    write_seg(&d, &slow, &fake_segment(16 * MIB, 1, 2), false);
    proxy.inject(Fault::Throttle(2 << 20), 10_000);
    // An idle timeout with room for the server's answer after the last
    // byte (a loaded machine's s3s-fs took over 2 s to write 16 MB once);
    // still shorter than the upload, which outlasts the 4 s deadline.
    let patient = s.clone_with("CAIRN_STORAGE_IDLE_TIMEOUT", "5");
    let started = Instant::now();
    assert_exit(&push(&patient, &d, &slow), 0, "");
    assert!(
        started.elapsed() > Duration::from_secs(4),
        "the throttle did not slow the upload ({:?})",
        started.elapsed()
    );
}

#[test]
fn stalled_and_broken_connections_s3() {
    stalled_and_broken_connections(Backend::S3);
}

#[test]
fn stalled_and_broken_connections_second_s3() {
    stalled_and_broken_connections(Backend::Moto);
}

#[test]
fn stalled_and_broken_connections_gcs() {
    stalled_and_broken_connections(Backend::Gcs);
}

#[test]
fn stalled_and_broken_connections_azure() {
    stalled_and_broken_connections(Backend::Azure);
}

#[test]
fn a_malformed_endpoint_is_a_configuration_error_at_once() {
    let t = TestDir::new();
    let (d, name) = recovering_with_one_segment(&t);
    let a = Archive::new(Backend::S3);
    let port = a.s3.as_ref().unwrap().port;
    let bad = a.clone_with("CAIRN_S3_ENDPOINT", &format!("127.0.0.1:{port}"));
    let started = Instant::now();
    assert_exit(&push(&bad, &d, &name), 1, "not an endpoint url");
    assert_exit(&fetch(&bad, &d, &name), 128, "not an endpoint url");
    within(started, 5, "a malformed endpoint");
}

#[test]
fn a_killed_writers_leftovers_are_garbage_a_live_ones_are_not() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let wal = a.dir.clone().unwrap().join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    let name = seg_name(1, 1, 16 * MIB);
    // A process that has exited: its pid names a dead writer.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let dead_tmp = wal.join(format!(".{name}.cairn-tmp.{dead}.0"));
    let live_tmp = wal.join(format!(".{name}.cairn-tmp.{}.0", std::process::id()));
    for f in [&dead_tmp, &live_tmp] {
        std::fs::write(f, vec![0u8; MIB]).unwrap();
    }
    let out = a.cairn(
        &["delete", "garbage", "--grace", "0s", "--confirm"],
        t.path(),
    );
    assert_exit(&out, 0, "");
    assert!(!dead_tmp.exists(), "a dead writer's temporary file is left");
    assert!(
        live_tmp.exists(),
        "a live writer's temporary file was removed"
    );
    // A fresh one is kept until the grace period has passed.
    let fresh = wal.join(format!(".{name}.cairn-tmp.{dead}.1"));
    std::fs::write(&fresh, b"x").unwrap();
    assert_exit(
        &a.cairn(&["delete", "garbage", "--confirm"], t.path()),
        0,
        "",
    );
    assert!(fresh.exists(), "a fresh temporary file was removed");
}

#[test]
fn errors_name_the_storage_s_real_cause() {
    let t = TestDir::new();
    let (d, name) = recovering_with_one_segment(&t);
    // A full disk.
    let full = Tmpfs::mount(&t.path().join("full"), "4m");
    let a = Archive::new(Backend::File)
        .with(
            "CAIRN_STORAGE",
            &format!("file://{}", full.path().display()),
        )
        .with("CAIRN_COMPRESSION", "none");
    let out = push(&a, &d, &name);
    assert_exit(&out, 1, "No space left on device");
    let err = stderr(&out);
    assert!(
        !err.contains("stopped reading"),
        "an echo, not the cause: {err}"
    );
    assert_eq!(err.matches("os error 28").count(), 1, "said twice: {err}");
    assert!(
        std::fs::read_dir(full.path().join("wal"))
            .unwrap()
            .next()
            .is_none(),
        "a partial object was left"
    );
    // A directory the archiver may not write.
    let locked = t.sub("locked");
    std::fs::create_dir_all(locked.join("wal")).unwrap();
    let mut perms = std::fs::metadata(locked.join("wal")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(locked.join("wal"), perms).unwrap();
    let b =
        Archive::new(Backend::File).with("CAIRN_STORAGE", &format!("file://{}", locked.display()));
    let mut cmd = common::as_pg(&common::cairn_bin(), &b.env);
    cmd.args(["wal-push", &format!("pg_wal/{name}")])
        .current_dir(&d);
    common::chown_pg(&d);
    let out = cmd.output().unwrap();
    assert_exit(&out, 1, "Permission denied");
    assert!(
        !stderr(&out).contains("stopped reading"),
        "{}",
        stderr(&out)
    );

    // A GCS bucket that does not exist is not a missing object.
    let g = Archive::new(Backend::Gcs);
    let missing = g.clone_with("CAIRN_STORAGE", "gs://no-such-bucket/x");
    let out = fetch(&missing, &d, &name);
    assert_exit(&out, 128, "no-such-bucket");
    assert!(
        !stderr(&out).contains("is not in the archive"),
        "{}",
        stderr(&out)
    );
}

/// Two archivers racing to store different files under one name (two
/// clusters on one prefix, a split brain): exactly one wins, the other
/// fails loudly, and the stored object is whole. Shown on the local
/// directory backend, whose create-if-absent is atomic (link(2)); s3s-fs and
/// the GCS emulator accept two racing conditional creates, so they cannot
/// show it (AWS and GCS enforce `If-None-Match: *` / `ifGenerationMatch=0`).
#[test]
fn two_racing_writers_of_one_name_never_both_succeed() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_WAL_FETCH_PREFETCH", "0");
    for round in 0..5u64 {
        let name = seg_name(1, 10 + round, 16 * MIB);
        let dirs: Vec<_> = (0..2)
            .map(|i| {
                let d = t.sub(&format!("racer-{round}-{i}"));
                std::fs::create_dir_all(d.join("pg_wal")).unwrap();
                write_seg(
                    &d,
                    &name,
                    &fake_segment(16 * MIB, 1, 100 * round + i),
                    false,
                );
                d
            })
            .collect();
        let racers: Vec<_> = dirs
            .iter()
            .map(|d| a.spawn_cairn(&["wal-push", &format!("pg_wal/{name}")], d))
            .collect();
        let outs: Vec<_> = racers
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: {} winners", won);
        let lost = outs.iter().find(|o| !o.status.success()).unwrap();
        assert_exit(lost, 1, "refusing to overwrite");
        // The stored object is the winner's, whole.
        let winner = outs.iter().position(|o| o.status.success()).unwrap();
        let d = datadir(&t, Some("recovery.signal"));
        assert_exit(&fetch(&a, &d, &name), 0, "");
        assert_eq!(
            std::fs::read(d.join("pg_wal/RECOVERYXLOG")).unwrap(),
            std::fs::read(dirs[winner].join("pg_wal").join(&name)).unwrap()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// Azure's bad input, each a one-line error naming the store and the
/// cause, with wal-push's and wal-fetch's exit statuses, nothing written.
#[test]
fn azure_bad_credentials_and_containers_are_named() {
    let t = TestDir::new();
    let (d, name) = recovering_with_one_segment(&t);
    let a = Archive::new(Backend::Azure);
    let server = a.azure.as_ref().unwrap();
    let nothing_written = || {
        let out = a.cairn(&["wal-verify"], t.path());
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&name),
            "something was written"
        );
        let listing = common::azure_signed_request(
            server.port,
            "GET",
            &server.container,
            "restype=container&comp=list",
        );
        assert!(
            listing.starts_with("HTTP/1.1 200") && !listing.contains("<Name>"),
            "{listing}"
        );
    };
    let one_line = |out: &std::process::Output| {
        let e = stderr(out);
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    };

    // A container that does not exist.
    let missing = a.clone_with(
        "CAIRN_STORAGE",
        &format!("az://{}/no-such-container/x", common::AZURITE_ACCOUNT),
    );
    let out = push(&missing, &d, &name);
    assert_exit(&out, 1, "no-such-container");
    one_line(&out);
    assert_exit(&fetch(&missing, &d, &name), 128, "no-such-container");

    // A wrong account key.
    let wrong = a.clone_with("AZURE_STORAGE_KEY", &common::AZURITE_KEY.replace('E', "F"));
    let out = push(&wrong, &d, &name);
    assert_exit(&out, 1, "AZURE_STORAGE_KEY");
    one_line(&out);
    assert_exit(&fetch(&wrong, &d, &name), 128, "refused");

    // A SAS that may read and list, not write.
    let read_only = a
        .clone_with("AZURE_STORAGE_SAS_TOKEN", &server.container_sas("rl"))
        .without("AZURE_STORAGE_KEY");
    let out = push(&read_only, &d, &name);
    assert_exit(&out, 1, "permission to put");
    one_line(&out);

    // A connection string for another account.
    let other = a
        .clone_with(
            "AZURE_STORAGE_CONNECTION_STRING",
            "AccountName=someoneelse;AccountKey=a2V5",
        )
        .without("AZURE_STORAGE_KEY");
    assert_exit(&push(&other, &d, &name), 1, "\"someoneelse\"");

    // Workload identity whose token file is missing, or half configured.
    let token = t.path().join("no-token");
    let wi = a
        .clone_with("AZURE_FEDERATED_TOKEN_FILE", &token.display().to_string())
        .without("AZURE_STORAGE_KEY")
        .with("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
        .with("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000002");
    assert_exit(&push(&wi, &d, &name), 1, "AZURE_FEDERATED_TOKEN_FILE");
    std::fs::write(&token, "a.b.c").unwrap();
    let half = wi.clone_with("AZURE_TENANT_ID", "");
    assert_exit(&push(&half, &d, &name), 1, "AZURE_TENANT_ID");
    nothing_written();
}

/// A server without conditional writes (501 on If-None-Match): by default
/// each process meets the 501 once and warns; with s3_conditional_create:
/// false it asks first at once, silently. Either way an archived segment is
/// never replaced.
#[test]
fn a_server_without_conditional_writes_is_named_or_asked_first_by_setting() {
    let t = TestDir::new();
    let d = datadir(&t, None);
    let a = Archive::new(Backend::Moto);
    let (proxy, s) = behind_proxy(&a);
    proxy.inject(Fault::NotImplemented("if-none-match"), 10_000);
    let warning = "does not support conditional writes";

    let first = seg_name(1, 1, 16 * MIB);
    write_seg(&d, &first, &fake_segment(16 * MIB, 1, 1), false);
    let out = push(&s, &d, &first);
    assert_exit(&out, 0, "");
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("s3_conditional_create"),
        "{}",
        stderr(&out)
    );

    let asks = s.clone_with("CAIRN_S3_CONDITIONAL_CREATE", "false");
    let second = seg_name(1, 2, 16 * MIB);
    write_seg(&d, &second, &fake_segment(16 * MIB, 1, 2), false);
    let out = push(&asks, &d, &second);
    assert_exit(&out, 0, "");
    assert!(!stderr(&out).contains(warning), "{}", stderr(&out));
    // A different file under an archived name: refused, the archive's kept.
    write_seg(&d, &second, &fake_segment(16 * MIB, 1, 3), false);
    assert_exit(&push(&asks, &d, &second), 1, "");
    write_seg(&d, &second, &fake_segment(16 * MIB, 1, 2), false);
    assert_exit(&push(&asks, &d, &second), 0, "");
}

/// A bucket in another region than the one cairn signs for: AWS answers
/// `301 PermanentRedirect` with the bucket's region in `x-amz-bucket-region`
/// (no local S3 server checks regions, so the proxy answers as AWS does for
/// requests signed for any other region). Every command names the bucket's
/// region and the setting, with the contract's exit status and nothing
/// written; with `s3_region` set right the same endpoint works.
#[test]
fn a_bucket_in_another_region_is_named_with_its_region() {
    let t = TestDir::new();
    let (d, name) = recovering_with_one_segment(&t);
    let a = Archive::new(Backend::S3);
    let (proxy, s) = behind_proxy(&a);
    proxy.inject(Fault::BucketInRegion("eu-west-1"), usize::MAX);
    let cause = "bucket cairn-test is in region eu-west-1, not us-east-1";

    let started = Instant::now();
    let out = push(&s, &d, &name);
    assert_exit(&out, 1, cause);
    assert!(
        stderr(&out).contains("s3_region: eu-west-1"),
        "{}",
        stderr(&out)
    );
    within(started, 3, "a wrong region (permanent, not retried)");
    assert_exit(&fetch(&s, &d, &name), 128, cause);
    assert_exit(&s.cairn(&["backup-list"], t.path()), 1, cause);
    let bucket = a.s3.as_ref().unwrap().bucket_dir().join("cluster-a");
    assert!(!bucket.exists() || std::fs::read_dir(&bucket).unwrap().next().is_none());

    let right = s.clone_with("CAIRN_S3_REGION", "eu-west-1");
    assert_exit(&push(&right, &d, &name), 0, "");
    assert_exit(&fetch(&right, &d, &name), 0, "");
    assert_eq!(
        std::fs::read(d.join("pg_wal/RECOVERYXLOG")).unwrap(),
        std::fs::read(d.join("pg_wal").join(&name)).unwrap()
    );
}

/// A machine whose clock is off by more than Azure's 15 minutes: Azure
/// refuses its Shared Key requests (403 AuthenticationFailed with its own
/// `Date`); Azurite does not check the date, so the proxy answers as Azure
/// does. cairn (under libfaketime, two hours ahead) names the clock and by
/// how much, with wal-push's and wal-fetch's exit statuses; with the right
/// time the same proxy passes it.
#[test]
fn azure_refusing_a_skewed_clock_is_named() {
    let t = TestDir::new();
    let (d, name) = recovering_with_one_segment(&t);
    let a = Archive::new(Backend::Azure);
    let (proxy, s) = behind_proxy(&a);
    proxy.inject(Fault::AzureDateWindow, usize::MAX);
    let skewed = s
        .clone_with(
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        )
        .with("FAKETIME", "+2h");
    let cause = "this machine's clock is 120 minutes ahead of the store's";
    assert_exit(&push(&skewed, &d, &name), 1, cause);
    assert_exit(&fetch(&skewed, &d, &name), 128, cause);
    assert!(a.azure.as_ref().unwrap().blob_names().is_empty());
    assert_exit(&push(&s, &d, &name), 0, "");
}

/// An upload damaged on the way (one bit of its body flipped between cairn
/// and the server) is refused by the server and sent again, never stored
/// damaged: on plain HTTP without checksums by the SHA-256 the signature
/// carries, with checksums (when_supported, where cairn leaves the payload
/// out of the signature) by the CRC32 each upload carries.
#[test]
fn an_upload_damaged_on_the_way_is_never_stored() {
    for checksum in ["when_required", "when_supported"] {
        let t = TestDir::new();
        let (d, name) = recovering_with_one_segment(&t);
        let a = Archive::new(Backend::S3).with("CAIRN_S3_CHECKSUM", checksum);
        let (proxy, s) = behind_proxy(&a);
        // Every connection: whichever carries the upload gets the flip.
        proxy.inject(Fault::FlipRequestByte(MIB as u64), usize::MAX);
        let out = push(&s.clone_with("CAIRN_LOG_LEVEL", "debug"), &d, &name);
        assert_exit(&out, 0, "");
        // AWS answers a SHA-256 mismatch with XAmzContentSHA256Mismatch,
        // s3s-fs with a 500; a CRC32 mismatch with BadDigest, as AWS.
        let refusal = match checksum {
            "when_required" => "InternalError",
            _ => "BadDigest",
        };
        assert!(
            stderr(&out).contains(refusal) && stderr(&out).contains("retrying"),
            "{checksum}: the damaged upload was not refused and sent again: {}",
            stderr(&out)
        );
        assert_exit(&fetch(&a, &d, &name), 0, "");
        assert!(
            std::fs::read(d.join("pg_wal/RECOVERYXLOG")).unwrap()
                == std::fs::read(d.join("pg_wal").join(&name)).unwrap(),
            "{checksum}: the archived copy is not the segment"
        );
    }
}
