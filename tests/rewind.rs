//! `pg_rewind --restore-target-wal` with cairn as restore_command, at default
//! settings (prefetch on), as PostgreSQL's own `001_basic.pl` runs it in
//! archive mode: the target's WAL since the divergence comes from the
//! archive while pg_rewind walks the data directory. Nothing cairn does in
//! the background may appear there; run repeatedly, it never fails.

mod common;

use std::process::Command;
use std::time::Duration;

use common::drill::{archiving_primary, wait_archived};
use common::{Cluster, TestDir, as_pg};

/// Copies a stopped data directory, keeping modes and owners.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pg_rewind_with_cairn_as_restore_command_never_trips_over_prefetch() {
    let t = TestDir::new();
    let a = common::Archive::new(common::Backend::File);
    let (mut primary, _pg) = archiving_primary(&t, &a);
    primary.set(&[("wal_log_hints", "on")]);
    primary.restore_from(&a);
    primary.stop();
    primary.start();
    primary.sql("create table t(v int); insert into t select generate_series(1, 1000)");

    // A streaming standby, promoted: the timelines diverge.
    let standby = common::drill::streaming_standby(&t, &a, &primary, "standby", |s| {
        s.set(&[("archive_mode", "off")]);
    });
    let standby_dir = standby.datadir.clone();
    let out = as_pg(&standby.bin("pg_ctl"), &[])
        .arg("-D")
        .arg(&standby_dir)
        .args(["-w", "promote"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    standby.sql("insert into t values (-1)");

    // The old primary goes on alone for several segments, all archived,
    // then stops; its pg_wal loses them, so pg_rewind must fetch them.
    for _ in 0..6 {
        primary.sql("insert into t select generate_series(1, 20000); select pg_switch_wal()");
    }
    wait_archived(&primary);
    primary.stop();
    // Checkpoints removed the archived segments from pg_wal: pg_rewind has
    // to fetch the old primary's WAL since the divergence from the archive.
    let pg_wal = primary.datadir.join("pg_wal");
    let archived: Vec<String> = std::fs::read_dir(a.dir.clone().unwrap().join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.as_str() >= "000000010000000000000005")
        .collect();
    let to_fetch = archived.iter().filter(|n| !pg_wal.join(n).exists()).count();
    assert!(to_fetch >= 3, "too little WAL to fetch: {archived:?}");
    let saved = t.path().join("diverged");
    copy_dir(&primary.datadir, &saved);

    let source = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        standby.port
    );
    for round in 0..5 {
        let target = t.path().join(format!("target-{round}"));
        copy_dir(&saved, &target);
        let out = as_pg(&primary.bin("pg_rewind"), &a.env)
            .arg("--target-pgdata")
            .arg(&target)
            .arg("--source-server")
            .arg(&source)
            .arg("--restore-target-wal")
            .current_dir(t.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pg_rewind, round {round}: {err}");
        assert!(
            !target.join("pg_wal/.cairn/prefetch").exists(),
            "round {round}: prefetch wrote into the data directory"
        );
        // The rewound directory starts as a standby of the new primary.
        if round == 0 {
            std::fs::write(target.join("standby.signal"), "").unwrap();
            let mut rewound = Cluster::existing(&t, target.clone());
            rewound.set(&[
                ("archive_mode", "off"),
                ("primary_conninfo", &format!("'{source}'")),
            ]);
            rewound.set_env(a.env.clone());
            common::chown_pg(&target);
            rewound.start();
            rewound.wait_until("the new primary's row", Duration::from_secs(60), |c| {
                c.try_sql("select count(*) from t where v = -1").as_deref() == Some("1")
            });
        }
    }
}
