//! What the people on call see: metrics pushed to a real Pushgateway by
//! backup-push, backup-fetch, delete and wal-verify; wal-push's counters in
//! a textfile read by a real node_exporter; and progress, as a bar on a
//! terminal, as log lines elsewhere, and not at all with JSON logs.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::drill::{archiving_primary, fails, list, ok, push, stderr, wait_archived};
use common::{Archive, Backend, NodeExporter, Pushgateway, TestDir, http_get, sample};

/// The gateway's series of `name` for `command`.
fn pushed(gw: &Pushgateway, name: &str, command: &str) -> Option<f64> {
    let text = http_get(gw.port, "/metrics");
    sample(
        &text,
        name,
        &[&format!("command=\"{command}\""), "job=\"cairn\""],
    )
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn metrics_reach_the_pushgateway_and_node_exporter() {
    let t = TestDir::new();
    let gw = Pushgateway::start();
    let url = gw.url();
    let textfiles = t.sub("textfile");
    let textfile = textfiles.join("cairn.prom");
    let a =
        Archive::new(Backend::File).with("CAIRN_METRICS_TEXTFILE", &textfile.display().to_string());
    let (primary, pg) = archiving_primary(&t, &a);
    let storage = a
        .env
        .iter()
        .find(|(k, _)| k == "CAIRN_STORAGE")
        .unwrap()
        .1
        .clone();
    primary.pgbench(&["-i", "-s", "2", "-q"]);

    // backup-push: success, its bytes as the manifest says, no failures.
    let name = push(&pg, &primary, &t, &["--metrics-push-url", &url]);
    let backups = list(&pg, &t);
    assert_eq!(backups[0]["name"], name.as_str());
    let m = |n: &str, c: &str| pushed(&gw, n, c);
    assert_eq!(m("cairn_last_run_success", "backup-push"), Some(1.0));
    assert_eq!(m("cairn_failures_total", "backup-push"), Some(0.0));
    assert_eq!(
        m("cairn_last_bytes_raw", "backup-push"),
        backups[0]["raw_size"].as_f64()
    );
    assert_eq!(
        m("cairn_last_bytes_stored", "backup-push"),
        backups[0]["stored_size"].as_f64()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let success = m("cairn_last_success_timestamp_seconds", "backup-push").unwrap();
    assert!((now - success).abs() < 120.0, "{success} vs {now}");
    assert!(m("cairn_last_run_duration_seconds", "backup-push").unwrap() > 0.0);
    // The group is labelled with the storage, so clusters stay apart.
    let text = http_get(gw.port, "/metrics");
    assert!(
        text.contains(&format!("storage=\"{storage}\"")),
        "no storage label: {text}"
    );

    // backup-fetch: a failure counts, and keeps the last success.
    let busy = t.sub("busy");
    std::fs::write(busy.join("x"), b"x").unwrap();
    let fetch = |dest: &Path| {
        pg.cairn(
            &[
                "backup-fetch",
                dest.to_str().unwrap(),
                "LATEST",
                "--metrics-push-url",
                &url,
            ],
            t.path(),
        )
    };
    fails(&fetch(&busy), "not empty");
    assert_eq!(m("cairn_last_run_success", "backup-fetch"), Some(0.0));
    assert_eq!(m("cairn_failures_total", "backup-fetch"), Some(1.0));
    assert_eq!(
        m("cairn_last_success_timestamp_seconds", "backup-fetch"),
        None
    );
    ok(&fetch(&t.path().join("restored")), "backup-fetch");
    assert_eq!(m("cairn_last_run_success", "backup-fetch"), Some(1.0));
    assert_eq!(m("cairn_failures_total", "backup-fetch"), Some(1.0));
    assert!(m("cairn_last_failure_timestamp_seconds", "backup-fetch").is_some());
    assert!(m("cairn_last_success_timestamp_seconds", "backup-fetch").is_some());
    assert_eq!(
        m("cairn_last_bytes_raw", "backup-fetch"),
        backups[0]["raw_size"].as_f64()
    );

    // delete: a dry run is not retention running; --confirm is.
    primary.pgbench(&["-t", "100"]);
    push(&pg, &primary, &t, &[]);
    let delete = |extra: &[&str]| {
        let mut args = vec!["delete", "retain", "1", "--metrics-push-url", &url];
        args.extend_from_slice(extra);
        ok(&pg.cairn(&args, t.path()), "delete")
    };
    delete(&[]);
    assert_eq!(
        m("cairn_last_run_success", "delete"),
        None,
        "{}",
        http_get(gw.port, "/metrics")
    );
    delete(&["--confirm"]);
    assert_eq!(m("cairn_last_run_success", "delete"), Some(1.0));
    assert_eq!(m("cairn_last_deleted_backups", "delete"), Some(1.0));
    assert!(m("cairn_last_deleted_wal_files", "delete").unwrap() >= 1.0);

    // wal-verify, configured by the environment: clean, then with a gap.
    wait_archived(&primary);
    let verify = pg.clone_with("CAIRN_METRICS_PUSH_URL", &url);
    ok(&verify.cairn(&["wal-verify"], t.path()), "wal-verify");
    assert_eq!(
        m("cairn_wal_verify_missing_segments", "wal-verify"),
        Some(0.0)
    );
    assert_eq!(m("cairn_wal_verify_backups", "wal-verify"), Some(1.0));
    let wal_dir = a.dir.as_ref().unwrap().join("wal");
    let kept = list(&pg, &t);
    let start = kept[0]["start_wal_file"].as_str().unwrap();
    std::fs::remove_file(wal_dir.join(start)).unwrap();
    let out = verify.cairn(&["wal-verify"], t.path());
    assert!(!out.status.success(), "wal-verify passed with a gap");
    assert_eq!(
        m("cairn_wal_verify_missing_segments", "wal-verify"),
        Some(1.0)
    );
    assert_eq!(m("cairn_last_run_success", "wal-verify"), Some(0.0));
    assert_eq!(m("cairn_failures_total", "wal-verify"), Some(1.0));

    // A Pushgateway that is down costs a warning, not the backup; its
    // password is not in the log.
    let down = format!("http://cairn:s3cret@127.0.0.1:{}", common::free_port());
    let out = pg.cairn(
        &[
            "backup-push",
            primary.datadir.to_str().unwrap(),
            "--metrics-push-url",
            &down,
        ],
        t.path(),
    );
    let err = stderr(&out);
    ok(&out, "backup-push with the Pushgateway down");
    assert!(err.contains("WARN") && err.contains("Pushgateway"), "{err}");
    assert!(!err.contains("s3cret"), "password in the log: {err}");
    // A bad URL is refused before anything runs, naming the flag.
    fails(
        &pg.cairn(
            &["wal-verify", "--metrics-push-url", "pushgateway:9091"],
            t.path(),
        ),
        "--metrics-push-url",
    );

    // wal-push's counters, as node_exporter exposes them: one upload per
    // archived file, no failures yet.
    let exporter = NodeExporter::start(&textfiles);
    let scraped = http_get(exporter.port, "/metrics");
    assert_eq!(
        sample(&scraped, "node_textfile_scrape_error", &[]),
        Some(0.0),
        "{scraped}"
    );
    let storage_label = format!("storage=\"{storage}\"");
    // One segment was deleted by hand above, after it was counted.
    let uploaded = sample(&scraped, "cairn_wal_push_files_total", &[&storage_label]).unwrap();
    assert!(
        uploaded >= files_in(&wal_dir) as f64 + 1.0 && uploaded > 2.0,
        "{uploaded} uploads for {} files: {scraped}",
        files_in(&wal_dir)
    );
    let raw = sample(
        &scraped,
        "cairn_wal_push_bytes_raw_total",
        &[&storage_label],
    )
    .unwrap();
    let stored = sample(
        &scraped,
        "cairn_wal_push_bytes_stored_total",
        &[&storage_label],
    )
    .unwrap();
    assert!(raw >= 3.0 * 16.0 * 1024.0 * 1024.0, "{scraped}");
    // lz4 shrinks WAL.
    assert!(stored > 0.0 && stored < raw, "{scraped}");
    // Written under archive_command's umask 0077, read by node_exporter's own user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&textfile).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "textfile mode {mode:o}");
    assert_eq!(
        sample(&scraped, "cairn_wal_push_failures_total", &[&storage_label]),
        Some(0.0)
    );
    // A failed push (a torn segment) is counted too.
    let pg_wal = t.sub("pg_wal");
    let torn = pg_wal.join("000000010000000000000099");
    std::fs::write(&torn, vec![0u8; 1000]).unwrap();
    let out = a.cairn(&["wal-push", torn.to_str().unwrap()], t.path());
    assert!(!out.status.success(), "a torn segment was archived");
    let scraped = http_get(exporter.port, "/metrics");
    assert_eq!(
        sample(&scraped, "cairn_wal_push_failures_total", &[&storage_label]),
        Some(1.0),
        "{scraped}"
    );
    assert!(
        sample(
            &scraped,
            "cairn_wal_push_last_failure_timestamp_seconds",
            &[&storage_label]
        )
        .is_some()
    );
}

/// A command run on a pseudo-terminal (`script`), as a person at a shell
/// runs it; returns everything it wrote there.
fn on_terminal(a: &Archive, args: &[&str], cwd: &Path) -> (bool, String) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(common::cairn_bin().display().to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .map(|s| quote(&s))
        .collect();
    let out: Output = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .envs(a.env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("script (util-linux) runs a command on a terminal");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn progress_is_a_bar_on_a_terminal_lines_elsewhere_and_nothing_in_json() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_BACKUP_PART_SIZE", "8388608");
    let (primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "5", "-q"]);

    // Not a terminal: a line a second, paced to last a few seconds.
    let lines = pg.clone_with("CAIRN_PROGRESS_INTERVAL", "1");
    let out = lines.cairn(
        &[
            "backup-push",
            primary.datadir.to_str().unwrap(),
            "--max-rate",
            "33554432",
        ],
        t.path(),
    );
    let err = stderr(&out);
    ok(&out, "backup-push");
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("backup progress:"))
        .collect();
    assert!(progress.len() >= 2, "{err}");
    assert!(
        progress[0].contains(" of ")
            && progress[0].contains("/s")
            && progress[0].contains(" parts"),
        "{err}"
    );
    assert!(progress.last().unwrap().contains("(100%)"), "{err}");
    // Remote: the server's size estimate gives the total.
    let out = lines.cairn(
        &["backup-push", "--remote", "--max-rate", "33554432"],
        t.path(),
    );
    let err = stderr(&out);
    ok(&out, "backup-push --remote");
    assert!(
        err.lines()
            .any(|l| l.contains("backup progress:") && l.contains(" of ")),
        "{err}"
    );

    // JSON logs: events only.
    let json = lines.clone_with("CAIRN_LOG_FORMAT", "json");
    let out = json.cairn(
        &[
            "backup-fetch",
            t.path().join("json").to_str().unwrap(),
            "LATEST",
        ],
        t.path(),
    );
    let err = stderr(&out);
    ok(&out, "backup-fetch with JSON logs");
    assert!(!err.contains("progress"), "{err}");
    assert!(err.lines().all(|l| l.starts_with('{')), "{err}");

    // A terminal: a bar with bytes, rate, ETA and parts, then the result.
    let dest = t.path().join("terminal");
    let (success, screen) = on_terminal(
        &pg.clone_with("CAIRN_PROGRESS_INTERVAL", "0"),
        &["backup-fetch", dest.to_str().unwrap(), "LATEST"],
        t.path(),
    );
    assert!(success, "{screen}");
    assert!(
        screen.contains("ETA") && screen.contains("parts") && screen.contains("MiB"),
        "{screen}"
    );
    assert!(screen.contains("restore complete"), "{screen}");
    assert!(
        !screen.contains("restore progress:"),
        "log lines on a terminal: {screen}"
    );
}
