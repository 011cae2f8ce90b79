//! Delta backups on real PostgreSQL and real storage: chains restored with the
//! drill, deltas that are small when little changed, files truncated and
//! dropped between backups, `delta_max_steps`, and damaged chains.

mod common;

use common::drill::{
    archiving_primary, destroy, encrypted, fails, fetch_to, list, ok, push,
    restore_latest_and_compare, start_restored, stderr,
};
use common::{Archive, Backend, TestDir};

fn find<'a>(list: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list:?}"))
}

/// full → workload → delta → workload with a truncated and a dropped table →
/// delta of the delta → workload; then the drill restores the last delta and
/// recovers to the end of the archive: the dumps must match.
fn delta_drill(backend: Backend, compression: &str, encrypt: bool) {
    let t = TestDir::new();
    // Paced reads (max_rate) change nothing in what is stored.
    let mut a = Archive::new(backend)
        .with("CAIRN_COMPRESSION", compression)
        .with("CAIRN_BACKUP_PART_SIZE", "4194304")
        .with("CAIRN_MAX_RATE", "209715200");
    if encrypt {
        a = encrypted(a, &t);
    }
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    primary.sql(
        "create table doomed as select g, repeat('x', 200) pad from generate_series(1, 20000) g",
    );
    primary.sql(
        "create table emptied as select g, repeat('y', 200) pad from generate_series(1, 20000) g",
    );
    let full = push(&pg, &primary, &t, &[]);

    primary.pgbench(&["-c", "4", "-j", "2", "-t", "200"]);
    let first = push(&pg, &primary, &t, &["--delta"]);

    primary.sql("truncate emptied");
    primary.sql("insert into emptied select g, 'after' from generate_series(1, 10) g");
    primary.sql("drop table doomed");
    primary.sql("create table born as select g from generate_series(1, 50000) g");
    primary.pgbench(&["-c", "4", "-j", "2", "-t", "200"]);
    let second = push(&pg, &primary, &t, &["--delta"]);
    primary.pgbench(&["-c", "2", "-j", "2", "-t", "100"]);

    let backups = list(&pg, &t);
    let names: Vec<&str> = backups
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [full.as_str(), &first, &second]);
    assert_eq!(find(&backups, &full)["kind"], "full");
    assert_eq!(find(&backups, &first)["kind"], "delta");
    assert_eq!(find(&backups, &first)["parent"], full.as_str());
    assert_eq!(find(&backups, &first)["chain_depth"], 1);
    assert_eq!(find(&backups, &second)["parent"], first.as_str());
    assert_eq!(find(&backups, &second)["chain_depth"], 2);

    let (restored, fetched) =
        restore_latest_and_compare(&t, &a, &pg, &mut primary, "delta chain restore");
    assert_eq!(fetched, second);
    assert_eq!(restored.sql("select count(*) from emptied"), "10");
    assert_eq!(
        restored.sql("select count(*) from pg_class where relname = 'doomed'"),
        "0"
    );
}

#[test]
fn delta_drill_local_directory_lz4_age() {
    delta_drill(Backend::File, "lz4", true);
}

#[test]
fn delta_drill_s3_zstd() {
    delta_drill(Backend::S3, "zstd", false);
}

#[test]
fn delta_drill_gcs_uncompressed() {
    delta_drill(Backend::Gcs, "none", false);
}

/// A few changed rows in a large table: the delta stores a few pages of it,
/// and is a small fraction of the full backup. Also the delta's own restore
/// (without recovery settings) holds the whole table.
#[test]
fn a_delta_of_a_few_changed_pages_is_small() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_COMPRESSION", "none");
    let (mut primary, pg) = archiving_primary(&t, &a);
    primary.pgbench(&["-i", "-s", "10", "-q"]);
    primary.sql("vacuum analyze");
    let full = push(&pg, &primary, &t, &[]);
    primary.sql("update pgbench_accounts set abalance = abalance + 1 where aid % 50000 = 0");
    let delta = push(&pg, &primary, &t, &["--delta"]);

    let backups = list(&pg, &t);
    let (f, d) = (find(&backups, &full), find(&backups, &delta));
    let stored = |b: &serde_json::Value| b["stored_size"].as_u64().unwrap();
    assert!(
        stored(d) * 20 < stored(f),
        "delta {} bytes is not far smaller than the full {} bytes",
        stored(d),
        stored(f)
    );
    let accounts = primary.sql("select pg_relation_filepath('pgbench_accounts')");
    let entry = d["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == accounts.as_str())
        .unwrap_or_else(|| panic!("{accounts} not in the delta's manifest"));
    let pages = entry["stored"]["pages"]["pages"]
        .as_u64()
        .unwrap_or_else(|| {
            panic!("{accounts} is not stored as pages: {entry}");
        });
    assert!(
        (1..100).contains(&pages),
        "{pages} pages stored for 20 rows"
    );
    // Unchanged configuration files are not stored again.
    let conf = d["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "postgresql.conf")
        .unwrap();
    assert_eq!(conf["stored"], "unchanged", "{conf}");

    let sum = "select sum(abalance), count(*) from pgbench_accounts";
    let expected = primary.sql(sum);
    primary.sql("select pg_switch_wal()");
    common::drill::wait_archived(&primary);
    destroy(&mut primary);
    let data = primary.datadir.clone();
    ok(
        &fetch_to(&pg, &t, &data, &["--recovery-target", "latest"]),
        "backup-fetch",
    );
    let restored = start_restored(&t, &a, &data);
    assert_eq!(restored.sql(sum), expected);
    // The update cleared visibility-map bits without changing the map page's
    // LSN: an index-only scan trusts the map, and would count the old row
    // versions too if the delta had kept the parent's map.
    let index_only = "set enable_seqscan = off; set enable_bitmapscan = off; \
                      select count(*) from pgbench_accounts where aid > 0";
    assert_eq!(restored.sql(index_only), "1000000");
}

/// `delta_max_steps: 1`: full, delta, full; `--full` overrides it. A delta
/// needs an earlier backup of the same cluster: the first backup is a full.
#[test]
fn delta_max_steps_bounds_the_chain() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_DELTA_MAX_STEPS", "1");
    let (primary, pg) = archiving_primary(&t, &a);
    // No backup to build on: a full one, and the log says why.
    let first = pg.cairn(
        &["backup-push", primary.datadir.to_str().unwrap(), "--delta"],
        t.path(),
    );
    let b1 = ok(&first, "backup-push");
    assert!(
        stderr(&first).contains("taking a full backup: no earlier backup of this cluster"),
        "{}",
        stderr(&first)
    );
    primary.sql("create table t as select g from generate_series(1, 1000) g");
    let b2 = push(&pg, &primary, &t, &[]);
    let b3 = push(&pg, &primary, &t, &[]);
    let b4 = push(&pg, &primary, &t, &[]);
    let b5 = push(&pg, &primary, &t, &["--full"]);
    let backups = list(&pg, &t);
    let kinds: Vec<&str> = [&b1, &b2, &b3, &b4, &b5]
        .iter()
        .map(|n| find(&backups, n)["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["full", "delta", "full", "delta", "full"]);
    assert_eq!(find(&backups, &b4)["parent"], b3.as_str());
}

/// A chain with a deleted or damaged ancestor cannot be restored: the error
/// names the ancestor, and nothing is left in the destination.
#[test]
fn a_broken_chain_is_a_clear_error() {
    let t = TestDir::new();
    let a = Archive::new(Backend::File).with("CAIRN_COMPRESSION", "none");
    let (primary, pg) = archiving_primary(&t, &a);
    primary.sql("create table t as select g from generate_series(1, 100000) g");
    let full = push(&pg, &primary, &t, &[]);
    primary.sql("update t set g = g + 1 where g % 1000 = 0");
    let delta = push(&pg, &primary, &t, &["--delta"]);
    let root = a.dir.clone().unwrap();
    let dest = t.sub("restore");

    // A flipped byte in the full backup's part that holds table t.
    let table = primary.sql("select pg_relation_filepath('t')");
    let backups = list(&pg, &t);
    let f = find(&backups, &full);
    let part_no = f["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == table.as_str())
        .unwrap()["part"]
        .as_u64()
        .unwrap() as usize;
    let part_key = f["parts"][part_no]["key"].as_str().unwrap();
    let part = root.join("basebackups").join(&full).join(part_key);
    let good = std::fs::read(&part).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x55;
    std::fs::write(&part, &bad).unwrap();
    fails(&fetch_to(&pg, &t, &dest, &[]), &full);
    assert!(
        std::fs::read_dir(&dest).map_or(true, |mut d| d.next().is_none()),
        "a failed restore left files behind"
    );
    std::fs::write(&part, &good).unwrap();

    // The full backup deleted.
    let moved = t.path().join("moved-manifest.json");
    std::fs::rename(
        root.join("basebackups").join(&full).join("manifest.json"),
        &moved,
    )
    .unwrap();
    let out = pg.cairn(&["backup-fetch", dest.to_str().unwrap(), &delta], t.path());
    fails(
        &out,
        &format!("{delta} is a delta of {full}, which is missing"),
    );
    assert!(!dest.exists() || std::fs::read_dir(&dest).unwrap().next().is_none());
}
