//! Page checksums on real PostgreSQL clusters with data checksums: a page
//! corrupted on disk is found by backup-push (local: cairn's own check;
//! remote: the server's), named by file and block in the log, the manifest
//! (backup-list --json) and backup-verify, and fails the backup with
//! --fail-on-page-corruption, leaving no manifest; a busy cluster's pages,
//! written while the backup reads them, are not reported.

mod common;

use common::drill::{fails, list, ok, stderr, with_pg};
use common::{Archive, Backend, Cluster, TestDir};

/// A cluster with data checksums, archiving to `a`, whose table `victim`
/// has block 1 of its main fork corrupted on disk (while the server was
/// stopped, so no buffer hides it). Returns the cluster, `a` with a
/// connection, and the file's path as the manifest names it.
fn corrupted(t: &TestDir, a: &Archive) -> (Cluster, Archive, String) {
    let mut c = Cluster::init(t, "primary", &["--data-checksums"]);
    c.archive_to(a);
    c.start();
    assert_eq!(c.sql("show data_checksums"), "on");
    c.sql(
        "create table victim (id int, filler text); \
         insert into victim select g, repeat('x', 200) from generate_series(1, 500) g",
    );
    c.sql("create table bystander as select g from generate_series(1, 10000) g");
    c.sql("checkpoint");
    let file = c.sql("select pg_relation_filepath('victim')");
    c.stop();
    let path = c.datadir.join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() >= 3 * 8192, "victim has {} bytes", bytes.len());
    // In the middle of block 1's tuples: the header (and its LSN) stay.
    for b in &mut bytes[8192 + 3000..8192 + 3016] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    common::chown_pg(&c.datadir);
    c.start();
    let pg = with_pg(a, &c);
    (c, pg, file)
}

fn corrupt_pages(manifest: &serde_json::Value) -> Vec<(String, u64)> {
    manifest["corrupt_pages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["file"].as_str().unwrap().to_string(),
                        p["block"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn page_corruption_is_found(remote: bool) {
    let t = TestDir::new();
    let a = Archive::new(Backend::File);
    let (c, pg, file) = corrupted(&t, &a);
    let datadir = c.datadir.to_str().unwrap().to_string();
    let args = |fail: bool| {
        let mut v = vec!["backup-push"];
        if remote {
            v.push("--remote");
        } else {
            v.push(datadir.as_str());
        }
        if fail {
            v.push("--fail-on-page-corruption");
        }
        v
    };

    // Refused with the flag: one line naming the file and block, and no
    // manifest (the backup is not listed).
    let out = pg.cairn(&args(true), t.path());
    fails(&out, &format!("{file} block 1"));
    fails(&out, "fail_on_page_corruption is set");
    assert!(list(&pg, &t).is_empty(), "a manifest was written");

    // Without it: the backup is taken, the page recorded and reported.
    let out = pg.cairn(&args(false), t.path());
    assert!(out.status.success(), "backup-push: {}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains(&file) && log.contains("corrupt"), "{log}");
    let backups = list(&pg, &t);
    assert_eq!(backups.len(), 1);
    assert_eq!(corrupt_pages(&backups[0]), vec![(file.clone(), 1)]);
    let out = pg.cairn(&["backup-verify", "LATEST"], t.path());
    let e = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(!out.status.success(), "backup-verify passed: {e}");
    assert!(
        e.contains(&format!("block 1 of {file}")) && e.contains("page checksum"),
        "{e}"
    );
    // Nothing else of the cluster was reported: the other relations'
    // pages, the catalogs and the busy ones all pass.
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(report.matches("page checksum").count(), 1, "{report}");
}

#[test]
fn a_corrupt_page_is_found_by_a_local_backup() {
    page_corruption_is_found(false);
}

#[test]
fn a_corrupt_page_is_found_by_a_remote_backup() {
    page_corruption_is_found(true);
}

/// Pages written while the backup reads them (pgbench running throughout,
/// small parts read concurrently) are torn reads or newer than the start:
/// no page is reported, from a cluster whose pages are all sound.
#[test]
fn a_busy_cluster_s_pages_are_not_reported() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File)
        .with("CAIRN_BACKUP_PART_SIZE", "1048576")
        .with("CAIRN_FAIL_ON_PAGE_CORRUPTION", "true");
    let mut c = Cluster::init(&t, "primary", &["--data-checksums"]);
    c.archive_to(&a);
    c.start();
    let pg = with_pg(&a, &c);
    c.pgbench(&["-i", "-s", "10", "-q"]);
    let mut load = c.pgbench_spawn(&["-c", "4", "-j", "2", "-T", "60"]);
    for _ in 0..3 {
        ok(
            &pg.cairn(&["backup-push", c.datadir.to_str().unwrap()], t.path()),
            "backup-push while pgbench runs",
        );
        ok(
            &pg.cairn(&["backup-push", "--remote"], t.path()),
            "remote backup-push while pgbench runs",
        );
    }
    let _ = load.kill();
    let _ = load.wait();
    for b in list(&pg, &t) {
        assert!(corrupt_pages(&b).is_empty(), "{b}");
    }
}
