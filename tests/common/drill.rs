//! What the backup tests share: running cairn and checking its result, and
//! the steps of the operator's drill.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use super::{AgeKey, Archive, Cluster, TestDir};

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}): {}",
        o.status,
        stderr(o)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[track_caller]
pub fn fails(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "succeeded; stderr: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "stderr lacks {needle:?}: {err}"
    );
    let errors = err.lines().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 1, "want a one-line error: {err}");
}

/// The archive's settings plus a connection to `c`.
pub fn with_pg(a: &Archive, c: &Cluster) -> Archive {
    a.clone_with("PGHOST", "127.0.0.1")
        .with("PGPORT", &c.port.to_string())
        .with("PGUSER", "postgres")
}

pub fn wait_archived(c: &Cluster) {
    // A commit record first, so that the switch is never a no-op (which
    // would name a segment that stays empty and is never archived).
    c.sql("select txid_current()");
    let last = c.sql("select pg_walfile_name(pg_switch_wal())");
    c.wait_until(
        &format!("{last} to be archived"),
        Duration::from_secs(180),
        |c| c.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver") >= last,
    );
}

/// Starts a restored cluster in the primary's environment (its
/// archive_command needs it) and waits for the end of recovery.
pub fn start_restored(t: &TestDir, a: &Archive, dir: &Path) -> Cluster {
    super::chown_pg(dir);
    let mut restored = Cluster::existing(t, dir.to_path_buf());
    restored.set_env(a.env.clone());
    restored.start();
    restored.wait_until("the end of recovery", Duration::from_secs(300), |c| {
        c.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    restored
}

/// `a`, encrypting to a new age key whose identity it also uses to read.
pub fn encrypted(a: Archive, t: &TestDir) -> Archive {
    let k = AgeKey::new(t.path());
    a.with("CAIRN_AGE_RECIPIENTS", &k.recipient).with(
        "CAIRN_AGE_IDENTITY_FILE",
        &k.identity_file.display().to_string(),
    )
}

/// Removes a stopped cluster's data directory.
pub fn destroy(c: &mut Cluster) {
    c.stop();
    std::fs::remove_dir_all(&c.datadir).unwrap();
}

pub fn fetch_to(pg: &Archive, t: &TestDir, dest: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["backup-fetch", dest.to_str().unwrap(), "LATEST"];
    args.extend_from_slice(extra);
    pg.cairn(&args, t.path())
}

/// A new running cluster that archives to `a`, and `a` with a connection to it.
pub fn archiving_primary(t: &TestDir, a: &Archive) -> (Cluster, Archive) {
    let mut primary = Cluster::init(t, "primary", &[]);
    primary.archive_to(a);
    primary.start();
    let pg = with_pg(a, &primary);
    (primary, pg)
}

/// backup-push of `c` with `extra` flags; returns the backup's name.
pub fn push(pg: &Archive, c: &Cluster, t: &TestDir, extra: &[&str]) -> String {
    let mut args = vec!["backup-push", c.datadir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(&pg.cairn(&args, t.path()), "backup-push")
}

/// backup-list --json: every manifest, oldest first.
pub fn list(pg: &Archive, t: &TestDir) -> Vec<serde_json::Value> {
    let out = ok(
        &pg.cairn(&["backup-list", "--json"], t.path()),
        "backup-list",
    );
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The output of a child that has exited, without waiting for one that has not.
pub fn poll_output(child: &mut std::process::Child) -> Option<Output> {
    child.try_wait().unwrap()?;
    // Exited: collecting the (small) output does not block.
    let mut out = Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out.stdout).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut out.stderr).unwrap();
    }
    Some(out)
}

/// The drill's end: dump `primary`, see its WAL archived, destroy it, restore
/// LATEST with recovery to the end of the archive, start it and compare the
/// dumps. Returns the restored cluster and the name of the backup restored.
pub fn restore_latest_and_compare(
    t: &TestDir,
    a: &Archive,
    pg: &Archive,
    primary: &mut Cluster,
    context: &str,
) -> (Cluster, String) {
    let dump = primary.dumpall();
    primary.sql("checkpoint");
    wait_archived(primary);
    destroy(primary);
    let data = primary.datadir.clone();
    let fetched = ok(
        &fetch_to(pg, t, &data, &["--recovery-target", "latest"]),
        "backup-fetch",
    );
    let restored = start_restored(t, a, &data);
    super::assert_same_dump(&restored.dumpall(), &dump, context);
    (restored, fetched)
}

/// A streaming standby of `primary` in `t/<name>`, in `a`'s environment,
/// configured by `configure` before it starts; returned streaming.
pub fn streaming_standby(
    t: &TestDir,
    a: &Archive,
    primary: &Cluster,
    name: &str,
    configure: impl FnOnce(&mut Cluster),
) -> Cluster {
    let dir = t.path().join(name);
    primary.basebackup(&dir);
    let mut standby = Cluster::existing(t, dir.clone());
    standby.set_env(a.env.clone());
    std::fs::write(dir.join("standby.signal"), "").unwrap();
    standby.set(&[(
        "primary_conninfo",
        &format!("'host=127.0.0.1 port={} user=postgres'", primary.port),
    )]);
    configure(&mut standby);
    super::chown_pg(&dir);
    standby.start();
    standby.wait_until("streaming", Duration::from_secs(60), |s| {
        s.try_sql("select status from pg_stat_wal_receiver")
            .as_deref()
            == Some("streaming")
    });
    standby
}

/// A checksum of every pgbench table's rows, for servers newer than the
/// machine's pg_dumpall can dump.
pub fn pgbench_checksum(c: &Cluster) -> String {
    c.sql(
        "select string_agg(t || ':' || n || ':' || h, ' ' order by t) from ( \
           select 'accounts' t, count(*) n, md5(string_agg(a::text, ',' order by aid)) h from pgbench_accounts a \
           union all select 'branches', count(*), md5(string_agg(b::text, ',' order by bid)) from pgbench_branches b \
           union all select 'tellers', count(*), md5(string_agg(t::text, ',' order by tid)) from pgbench_tellers t \
           union all select 'history', count(*), md5(string_agg(h::text, ',' order by tid, bid, aid, mtime, delta)) from pgbench_history h \
         ) s",
    )
}

/// Every file, directory and link under `root`, by relative path: a file's
/// bytes (postgresql.auto.conf's without the time its recovery settings
/// were added), a link's target, a directory as such.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = e.file_type().unwrap();
            if kind.is_symlink() {
                let to = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("-> {}", to.display()).into_bytes());
            } else if kind.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                stack.push(path);
            } else if rel == "postgresql.auto.conf" {
                // The recovery settings' comment says when they were added.
                let text = std::fs::read_to_string(&path).unwrap();
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.starts_with("# Added by cairn backup-fetch"))
                    .collect();
                out.insert(rel, kept.join("\n").into_bytes());
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

pub fn differences(
    a: &std::collections::BTreeMap<String, Vec<u8>>,
    b: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("only in the fresh restore: {k}")),
            Some(w) if w != v => out.push(format!("differs: {k}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("only in the delta restore: {k}"));
    }
    out
}
