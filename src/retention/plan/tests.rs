//! Retention scenarios: each builds a catalog as the archive would list it,
//! plans, and checks the exact backups and WAL files deleted, and (in
//! [`check`]) the apply-order constraints every plan must meet.

use std::collections::{HashMap, HashSet};

use time::macros::datetime;

use super::*;
use crate::archive::fixtures::*;

/// A Friday.
const NOW: OffsetDateTime = datetime!(2024-05-10 12:00 UTC);

fn days(n: i64) -> Duration {
    Duration::days(n)
}

fn retain(full: Option<usize>, within: Option<Duration>) -> Policy {
    Policy::Retain(Retain {
        full,
        within,
        ..Retain::default()
    })
}

fn gfs(daily: usize, weekly: usize, monthly: usize) -> Policy {
    Policy::Retain(Retain {
        daily,
        weekly,
        monthly,
        ..Retain::default()
    })
}

/// Plans and checks the constraints every plan must meet.
fn run(c: &Catalog, policy: Policy) -> Plan {
    let p = plan(c, &policy, NOW).unwrap_or_else(|e| panic!("{policy:?}: {e}"));
    check(c, &p);
    p
}

fn names(bs: &[&BackupInfo]) -> Vec<String> {
    bs.iter().map(|b| b.name.clone()).collect()
}

/// Deleted backups, in apply order.
fn deleted(p: &Plan) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in &p.deletions {
        if let Deleted::Backup(n) = &d.what
            && out.last() != Some(n)
        {
            out.push(n.clone());
        }
    }
    out
}

fn kept(p: &Plan) -> Vec<String> {
    p.kept.iter().map(|k| k.name.clone()).collect()
}

fn deleted_wal(p: &Plan) -> Vec<String> {
    p.deletions
        .iter()
        .filter_map(|d| match &d.what {
            Deleted::Wal(w) => Some(w.to_string()),
            _ => None,
        })
        .collect()
}

fn deleted_unfinished(p: &Plan) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in &p.deletions {
        if let Deleted::Unfinished(n) = &d.what
            && out.last() != Some(n)
        {
            out.push(n.clone());
        }
    }
    out
}

fn reason<'p>(p: &'p Plan, what: &str) -> &'p str {
    if let Some(k) = p.kept.iter().find(|k| k.name == what) {
        return &k.reason;
    }
    p.deletions
        .iter()
        .find(|d| match &d.what {
            Deleted::Backup(n) | Deleted::Unfinished(n) => n == what,
            Deleted::Wal(w) => w.to_string() == what,
        })
        .map(|d| d.reason.as_str())
        .unwrap_or_else(|| panic!("{what} neither kept nor deleted"))
}

/// The order and completeness constraints of every plan.
fn check(c: &Catalog, p: &Plan) {
    let phase = |d: &Deleted| match d {
        Deleted::Backup(_) => 0,
        Deleted::Unfinished(_) => 1,
        Deleted::Wal(_) => 2,
    };
    assert!(
        p.deletions
            .windows(2)
            .all(|w| phase(&w[0].what) <= phase(&w[1].what)),
        "backups, then unfinished backups, then WAL"
    );
    assert!(p.deletions.iter().all(|d| !d.reason.is_empty()));

    let by_name: HashMap<&str, &BackupInfo> =
        c.backups.iter().map(|b| (b.name.as_str(), b)).collect();
    let mut span: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, d) in p.deletions.iter().enumerate() {
        if let Deleted::Backup(n) = &d.what {
            span.entry(n.clone()).or_insert((i, i)).1 = i;
        }
    }
    for (n, &(first, last)) in &span {
        let b = by_name[n.as_str()];
        assert!(!b.permanent, "{n} is permanent");
        assert_eq!(last - first + 1, b.objects.len(), "{n}: objects contiguous");
        assert!(
            p.deletions[first].key.as_str().ends_with("/manifest.json"),
            "{n}: manifest first"
        );
        let planned: HashSet<&ObjectKey> =
            p.deletions[first..=last].iter().map(|d| &d.key).collect();
        assert_eq!(planned, b.objects.iter().collect(), "{n}: every object");
        if let Some(parent) = &b.parent
            && let Some(&(pfirst, _)) = span.get(parent)
        {
            assert!(last < pfirst, "{n} deleted before its parent {parent}");
        }
    }
    let kept: HashSet<&str> = p.kept.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        kept.len() + span.len(),
        c.backups.len(),
        "every backup kept or deleted"
    );
    for k in &kept {
        assert!(!span.contains_key(*k), "{k} both kept and deleted");
        if let Some(parent) = &by_name[k].parent
            && by_name.contains_key(parent.as_str())
        {
            assert!(
                kept.contains(parent.as_str()),
                "{k} kept without its parent"
            );
        }
    }
    let wal: Vec<(SegmentPos, u32)> = p
        .deletions
        .iter()
        .filter_map(|d| match &d.what {
            Deleted::Wal(w) => {
                let (s, ..) = judged_segment(w).expect("no .history deleted");
                Some((s.pos(), s.timeline.0))
            }
            _ => None,
        })
        .collect();
    assert!(wal.is_sorted(), "WAL oldest first");
    // The holes to record cover exactly the deleted segments among those listed.
    let mut recorded = crate::archive::holes::Holes::default();
    for h in &p.holes {
        recorded.add(*h);
    }
    let deleted: HashSet<String> = p
        .deletions
        .iter()
        .filter_map(|d| match &d.what {
            Deleted::Wal(w @ WalFileName::Segment(_)) => Some(w.to_string()),
            _ => None,
        })
        .collect();
    for w in &c.wal {
        if let WalFileName::Segment(s) = w.name {
            assert_eq!(
                recorded.covers(s, None),
                deleted.contains(&w.name.to_string()),
                "{s}: recorded as a hole exactly when deleted"
            );
        }
    }
}

#[test]
fn empty_archive_gives_empty_plan() {
    let c = Catalog::default();
    for policy in [
        retain(Some(2), None),
        retain(None, Some(days(7))),
        gfs(7, 4, 12),
        Policy::Everything,
        Policy::Garbage { grace: days(1) },
    ] {
        let p = run(&c, policy);
        assert_eq!(p, Plan::default());
        assert_eq!(p.to_string(), "Nothing to delete.\n");
    }
    let err = |policy: Policy| plan(&c, &policy, NOW).unwrap_err();
    assert_eq!(
        err(Policy::Target("base_x".into())),
        PlanError::NoSuchBackup {
            name: "base_x".into()
        }
    );
    assert!(matches!(
        err(Policy::Before(BeforeTarget::Name("base_x".into()))),
        PlanError::NoSuchBackup { .. }
    ));
    assert!(matches!(
        err(Policy::Before(BeforeTarget::Time(NOW))),
        PlanError::NoBackupAfter { .. }
    ));
}

#[test]
fn wal_without_any_backup_is_kept_except_by_everything() {
    let c = catalog(&[], &[segs(1, 1..=5)], &[(2, "1\t0/3000000\tx\n")]);
    for policy in [retain(Some(1), None), Policy::Garbage { grace: days(1) }] {
        assert!(run(&c, policy).is_empty());
    }
    let p = run(&c, Policy::Everything);
    assert_eq!(deleted_wal(&p), segs(1, 1..=5), "the .history file stays");
    assert_eq!(reason(&p, &seg(1, 3)), "no backup is kept");
}

/// Three chains: F1 ← D1a ← D1b, F2 ← D2a, F3 ← D3a.
struct Chains {
    f1: BackupInfo,
    d1a: BackupInfo,
    d1b: BackupInfo,
    f2: BackupInfo,
    d2a: BackupInfo,
    f3: BackupInfo,
    d3a: BackupInfo,
}

impl Chains {
    fn new() -> Chains {
        let f1 = full(1, 2, NOW - days(20));
        let d1a = delta(1, 4, NOW - days(19), &f1);
        let d1b = delta(1, 6, NOW - days(18), &d1a);
        let f2 = full(1, 10, NOW - days(10));
        let d2a = delta(1, 12, NOW - days(9), &f2);
        let f3 = full(1, 20, NOW - days(3));
        let d3a = delta(1, 22, NOW - days(2), &f3);
        Chains {
            f1,
            d1a,
            d1b,
            f2,
            d2a,
            f3,
            d3a,
        }
    }

    fn catalog(&self) -> Catalog {
        let Chains {
            f1,
            d1a,
            d1b,
            f2,
            d2a,
            f3,
            d3a,
        } = self;
        catalog(&[f1, d1a, d1b, f2, d2a, f3, d3a], &[segs(1, 1..=25)], &[])
    }
}

#[test]
fn retain_full_keeps_newest_fulls_and_their_deltas() {
    let ch = Chains::new();
    let Chains {
        f1,
        d1a,
        d1b,
        f2,
        d2a,
        f3,
        d3a,
    } = &ch;
    let c = ch.catalog();

    let p = run(&c, retain(Some(2), None));
    assert_eq!(deleted(&p), names(&[d1b, d1a, f1]));
    assert_eq!(kept(&p), names(&[f2, d2a, f3, d3a]));
    assert_eq!(deleted_wal(&p), segs(1, 1..=9));
    assert_eq!(reason(&p, &f1.name), "older than the 2 newest full backups");
    assert_eq!(
        reason(&p, &d1a.name),
        format!("depends on deleted {}", f1.name)
    );
    assert_eq!(
        reason(&p, &d1b.name),
        format!("depends on deleted {}", d1a.name)
    );
    assert_eq!(reason(&p, &f2.name), "one of the 2 newest full backups");
    assert_eq!(
        reason(&p, &d2a.name),
        format!("built on {}, one of the 2 newest full backups", f2.name)
    );
    assert_eq!(reason(&p, &seg(1, 1)), "older than every kept backup");
    assert_eq!(
        p.summary(),
        PlanSummary {
            backups_deleted: 3,
            backups_kept: 4,
            unfinished_deleted: 0,
            wal_deleted: 9,
            objects_deleted: 18,
        }
    );
    let text = p.to_string();
    for line in [
        "Delete 3 backups:\n",
        &format!(
            "  {} (3 objects): depends on deleted {}\n",
            d1b.name, d1a.name
        ),
        "Keep 4 backups:\n",
        &format!("  {}: one of the 2 newest full backups\n", f3.name),
        "Delete 9 WAL files:\n",
        "  000000010000000000000001..000000010000000000000009 (9 objects): older than every kept backup\n",
        "In all: delete 3 backups, 0 unfinished backups and 9 WAL files (18 objects); keep 4 backups.\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }

    // Oldest chain first, dependents before parents.
    let p = run(&c, retain(Some(1), None));
    assert_eq!(deleted(&p), names(&[d1b, d1a, f1, d2a, f2]));
    assert_eq!(kept(&p), names(&[f3, d3a]));
    assert_eq!(deleted_wal(&p), segs(1, 1..=19));
    assert_eq!(reason(&p, &f3.name), "the newest full backup");
}

#[test]
fn permanent_delta_keeps_its_ancestors_and_only_its_own_wal() {
    let mut ch = Chains::new();
    ch.d1a = permanent(ch.d1a);
    let Chains {
        f1,
        d1a,
        d1b,
        f2,
        d2a,
        f3,
        d3a,
    } = &ch;
    let c = ch.catalog();

    let p = run(&c, retain(Some(2), None));
    assert_eq!(deleted(&p), names(&[d1b]));
    assert_eq!(kept(&p), names(&[f1, d1a, f2, d2a, f3, d3a]));
    assert_eq!(reason(&p, &d1a.name), "permanent");
    assert_eq!(reason(&p, &f1.name), format!("base of kept {}", d1a.name));
    assert_eq!(
        reason(&p, &d1b.name),
        "older than the 2 newest full backups"
    );
    // F1 keeps 2..3 and D1a 4..5 (start to stop), F2 everything from 10.
    let mut want = segs(1, 1..=1);
    want.extend(segs(1, 6..=9));
    assert_eq!(deleted_wal(&p), want);
    let text = p.to_string();
    assert!(text.contains("  000000010000000000000001: older than every kept backup\n"));
    assert!(text.contains(
        "  000000010000000000000006..000000010000000000000009 (4 objects): not needed by any kept backup\n"
    ));

    let p = run(&c, Policy::Everything);
    assert_eq!(deleted(&p), names(&[d1b, d2a, f2, d3a, f3]));
    assert_eq!(kept(&p), names(&[f1, d1a]));
    let mut want = segs(1, 1..=1);
    want.extend(segs(1, 6..=25));
    assert_eq!(deleted_wal(&p), want);
}

/// Timeline 1 with backups at segments 2, 10 and 20; a point-in-time restore
/// to a moment in segment 15 (after the second backup, before the third) made
/// timeline 2, backed up at segment 17.
struct Branch {
    f1: BackupInfo,
    f2: BackupInfo,
    f3: BackupInfo,
    f4: BackupInfo,
}

const TL2_HISTORY: &str = "1\t0/F000000\tbefore 2024-05-08 09:00:00+00\n";

impl Branch {
    fn new() -> Branch {
        Branch {
            f1: full(1, 2, NOW - days(10)),
            f2: full(1, 10, NOW - days(5)),
            f3: full(1, 20, NOW - days(3)),
            f4: full(2, 17, NOW - days(1)),
        }
    }

    fn catalog(&self) -> Catalog {
        let mut tl1 = segs(1, 1..=24);
        tl1.push(format!("{}.00000028.backup", seg(1, 10)));
        tl1.push(format!("{}.partial", seg(1, 15)));
        catalog(
            &[&self.f1, &self.f2, &self.f3, &self.f4],
            &[tl1, segs(2, 15..=19)],
            &[(2, TL2_HISTORY)],
        )
    }
}

#[test]
fn pitr_branch_before_newest_timeline_1_backup() {
    let br = Branch::new();
    let Branch { f1, f2, f3, f4 } = &br;
    let c = br.catalog();

    // F3 (timeline 1, after the branch point) cannot reach timeline 2; F4 needs
    // timeline 2 from 17; the guard keeps every timeline from F4's start (17).
    let p = run(&c, retain(Some(2), None));
    assert_eq!(deleted(&p), names(&[f1, f2]));
    assert_eq!(kept(&p), names(&[f3, f4]));
    let mut want = segs(1, 1..=10);
    want.push(format!("{}.00000028.backup", seg(1, 10)));
    want.extend(segs(1, 11..=15));
    want.push(format!("{}.partial", seg(1, 15)));
    want.push(seg(2, 15));
    want.push(seg(1, 16));
    want.push(seg(2, 16));
    assert_eq!(deleted_wal(&p), want);

    // F2 started before the branch point: it needs timeline 2 from its start too.
    let p = run(&c, retain(Some(3), None));
    assert_eq!(deleted(&p), names(&[f1]));
    assert_eq!(deleted_wal(&p), segs(1, 1..=9));
}

#[test]
fn window_straddling_a_timeline_switch_keeps_a_backup_for_each_timeline() {
    // Timeline 2 branched at segment 15, three days ago: between F1 and F2.
    let f0 = full(1, 1, NOW - days(12));
    let f1 = full(1, 5, NOW - days(9));
    let f2 = full(1, 20, NOW - days(5));
    let tl2 = segs(2, 15..=18);
    let c = catalog(
        &[&f0, &f1, &f2],
        &[segs(1, 1..=24), tl2.clone()],
        &[(2, TL2_HISTORY)],
    );

    // The window holds moments on timeline 1 (before the restore) and on
    // timeline 2 (after it): F2 restores the former, only F1 the latter.
    let p = run(&c, retain(None, Some(days(4))));
    assert_eq!(deleted(&p), names(&[&f0]));
    assert_eq!(kept(&p), names(&[&f1, &f2]));
    assert!(reason(&p, &f1.name).contains("restores into timeline 00000002"));
    assert!(reason(&p, &f2.name).contains("restores into timeline 00000001"));
    assert_eq!(deleted_wal(&p), segs(1, 1..=4));
    assert_eq!(
        reason(&p, &f0.name),
        "not needed to recover to any moment of the last 4 days"
    );

    // A backup on timeline 2 inside the window does not change that: the
    // switch may still have happened inside the window.
    let f3 = full(2, 17, NOW - Duration::hours(36));
    let c = catalog(
        &[&f0, &f1, &f2, &f3],
        &[segs(1, 1..=24), tl2.clone()],
        &[(2, TL2_HISTORY)],
    );
    let p = run(&c, retain(None, Some(days(4))));
    assert_eq!(deleted(&p), names(&[&f0]));
    assert_eq!(kept(&p), names(&[&f1, &f2, &f3]));
    assert_eq!(deleted_wal(&p), segs(1, 1..=4));

    // A window that starts after timeline 2's first backup needs only that one.
    let p = run(&c, retain(None, Some(days(1))));
    assert_eq!(deleted(&p), names(&[&f0, &f1, &f2]));
    assert_eq!(kept(&p), names(&[&f3]));
    let mut want: Vec<String> = Vec::new();
    for n in 1..=16 {
        want.push(seg(1, n));
        if n >= 15 {
            want.push(seg(2, n));
        }
    }
    assert_eq!(deleted_wal(&p), want);
}

#[test]
fn window_keeps_full_backup_outside_it_for_a_delta_inside() {
    let f0 = full(1, 1, NOW - days(20));
    let f1 = full(1, 2, NOW - days(10));
    let d1 = delta(1, 8, NOW - days(5), &f1);
    let d2 = delta(1, 12, NOW - days(1), &d1);
    let c = catalog(&[&f0, &f1, &d1, &d2], &[segs(1, 1..=14)], &[]);

    let p = run(&c, retain(None, Some(days(3))));
    assert_eq!(deleted(&p), names(&[&f0]));
    assert_eq!(kept(&p), names(&[&f1, &d1, &d2]));
    assert_eq!(reason(&p, &f1.name), format!("base of kept {}", d1.name));
    assert!(reason(&p, &d1.name).starts_with("the newest backup finished before the last 3 days"));
    assert_eq!(reason(&p, &d2.name), "finished within the last 3 days");
    // F1 is kept as the base of a backup the policy keeps: like it, with all
    // WAL from its start on (so every kept backup reaches the newest segment).
    assert_eq!(deleted_wal(&p), segs(1, 1..=1));
}

#[test]
fn two_clusters_in_one_prefix_are_judged_separately() {
    // Cluster A, then pg_upgrade to cluster B, which continues the LSNs.
    let fa1 = of_cluster(full(1, 2, datetime!(2024-04-28 10:00 UTC)), 1);
    let fa2 = of_cluster(full(1, 0x10, datetime!(2024-05-01 10:00 UTC)), 1);
    let fb1 = of_cluster(full(1, 0x20, datetime!(2024-05-02 01:00 UTC)), 2);
    let fb2 = of_cluster(full(1, 0x24, datetime!(2024-05-02 02:00 UTC)), 2);
    let fb3 = of_cluster(full(1, 0x30, datetime!(2024-05-09 10:00 UTC)), 2);
    let c = catalog(&[&fa1, &fa2, &fb1, &fb2, &fb3], &[segs(1, 1..=0x35)], &[]);

    // FA2 "needs all WAL after it", but 0x20.. belongs to B, which needs it
    // only from FB2 on.
    let p = run(&c, gfs(10, 0, 0));
    assert_eq!(deleted(&p), names(&[&fa1, &fb1]));
    assert_eq!(kept(&p), names(&[&fa2, &fb2, &fb3]));
    let mut want = segs(1, 1..=0xF);
    want.extend(segs(1, 0x20..=0x23));
    assert_eq!(deleted_wal(&p), want);
    assert_eq!(
        reason(&p, &seg(1, 0x21)),
        "older than every kept backup of its cluster (system identifier 2)"
    );

    // Counting full backups spans the prefix: cluster A ages out, WAL and all.
    let p = run(&c, retain(Some(2), None));
    assert_eq!(deleted(&p), names(&[&fa1, &fa2, &fb1]));
    assert_eq!(kept(&p), names(&[&fb2, &fb3]));
    assert_eq!(deleted_wal(&p), segs(1, 1..=0x23));
    assert_eq!(
        reason(&p, &seg(1, 0x1F)),
        "no backup of its cluster (system identifier 1) is kept"
    );
}

#[test]
fn interleaved_clusters_delete_only_wal_no_cluster_needs() {
    // B started at 0x20 while A went on to 0x30: positions cannot tell them
    // apart. Attributing 0x30.. to B (which needs only 0x40..) would break FA2.
    let fa1 = of_cluster(full(1, 2, NOW - days(10)), 1);
    let fb1 = of_cluster(full(1, 0x20, NOW - days(8)), 2);
    let fb2 = of_cluster(full(1, 0x40, NOW - days(5)), 2);
    let fa2 = of_cluster(full(1, 0x30, NOW - days(2)), 1);
    let c = catalog(&[&fa1, &fb1, &fb2, &fa2], &[segs(1, 1..=0x45)], &[]);
    let p = run(&c, retain(Some(2), None));
    assert_eq!(deleted(&p), names(&[&fa1, &fb1]));
    assert_eq!(kept(&p), names(&[&fb2, &fa2]));
    assert_eq!(deleted_wal(&p), segs(1, 1..=0x2F));
}

/// Full backups, newest last; NOW is Friday 2024-05-10 (ISO week 19).
fn calendar_backups() -> Vec<BackupInfo> {
    [
        datetime!(2024-03-15 10:00 UTC),
        // March in UTC, April where it was taken.
        datetime!(2024-04-01 01:00 +02:00),
        datetime!(2024-04-20 10:00 UTC),
        datetime!(2024-04-30 10:00 UTC),
        datetime!(2024-05-03 10:00 UTC),
        datetime!(2024-05-06 08:00 UTC),
        datetime!(2024-05-08 08:00 UTC),
        datetime!(2024-05-08 20:00 UTC),
        datetime!(2024-05-10 06:00 UTC),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, t)| full(1, 10 * (i as u64 + 1), t))
    .collect()
}

#[test]
fn grandfather_father_son() {
    let b = calendar_backups();
    let all: Vec<&BackupInfo> = b.iter().collect();
    let c = catalog(&all, &[segs(1, 1..=95)], &[]);

    let p = run(&c, gfs(3, 2, 2));
    // Days 05-08..05-10: b8 and b9 (none on 05-09); weeks 18 and 19: b5, b9;
    // months April and May: b4, b9.
    assert_eq!(kept(&p), names(&[&b[3], &b[4], &b[7], &b[8]]));
    assert_eq!(deleted(&p), names(&[&b[0], &b[1], &b[2], &b[5], &b[6]]));
    assert_eq!(deleted_wal(&p), segs(1, 1..=39));
    assert_eq!(
        reason(&p, &b[8].name),
        "the newest backup of 2024-05-10; the newest backup of ISO week 2024-W19; \
         the newest backup of 2024-05"
    );
    assert_eq!(
        reason(&p, &b[4].name),
        "the newest backup of ISO week 2024-W18"
    );
    assert_eq!(
        reason(&p, &b[5].name),
        "not the newest backup of any of the last 3 days, 2 ISO weeks, 2 months"
    );

    let p = run(&c, gfs(3, 2, 3));
    assert_eq!(kept(&p), names(&[&b[1], &b[3], &b[4], &b[7], &b[8]]));
    assert_eq!(reason(&p, &b[1].name), "the newest backup of 2024-03");
    assert_eq!(deleted_wal(&p), segs(1, 1..=19));

    // Combined with other options: a union.
    let p = run(
        &c,
        Policy::Retain(Retain {
            full: Some(3),
            weekly: 1,
            ..Retain::default()
        }),
    );
    assert_eq!(kept(&p), names(&[&b[6], &b[7], &b[8]]));

    // No backup today: the daily rule alone would delete them all.
    let c = catalog(&all[..8], &[segs(1, 1..=85)], &[]);
    let p = run(&c, gfs(1, 0, 0));
    assert_eq!(kept(&p), names(&[&b[7]]));
    assert_eq!(
        reason(&p, &b[7].name),
        "the newest backup (retention always keeps it)"
    );
}

/// F1 ← D1 ← D2, F1 ← E1, F2.
fn tree() -> [BackupInfo; 5] {
    let f1 = full(1, 2, NOW - days(10));
    let d1 = delta(1, 4, NOW - days(9), &f1);
    let d2 = delta(1, 6, NOW - days(8), &d1);
    let e1 = delta(1, 8, NOW - days(7), &f1);
    let f2 = full(1, 10, NOW - days(5));
    [f1, d1, d2, e1, f2]
}

#[test]
fn target_deletes_backup_and_dependents_only() {
    let [f1, d1, d2, e1, f2] = tree();
    let c = catalog(&[&f1, &d1, &d2, &e1, &f2], &[segs(1, 1..=12)], &[]);

    let p = run(&c, Policy::Target(d1.name.clone()));
    assert_eq!(deleted(&p), names(&[&d2, &d1]));
    assert_eq!(kept(&p), names(&[&f1, &e1, &f2]));
    assert!(deleted_wal(&p).is_empty());
    assert_eq!(reason(&p, &d1.name), format!("the target, {}", d1.name));
    assert_eq!(
        reason(&p, &d2.name),
        format!("depends on deleted {}", d1.name)
    );

    let p = run(&c, Policy::Target(f1.name.clone()));
    assert_eq!(deleted(&p), names(&[&d2, &e1, &d1, &f1]));
    assert_eq!(kept(&p), names(&[&f2]));

    let c = catalog(&[&f1, &d1, &permanent(d2.clone()), &e1, &f2], &[], &[]);
    let err = plan(&c, &Policy::Target(f1.name.clone()), NOW).unwrap_err();
    assert_eq!(
        err,
        PlanError::TargetPermanent {
            target: f1.name.clone(),
            permanent: vec![d2.name.clone()]
        }
    );
    assert!(err.to_string().contains(&d2.name));
    assert!(plan(&c, &Policy::Target(e1.name.clone()), NOW).is_ok());
    assert_eq!(
        plan(&c, &Policy::Target("base_nope".into()), NOW).unwrap_err(),
        PlanError::NoSuchBackup {
            name: "base_nope".into()
        }
    );
}

#[test]
fn before_a_name_or_a_time() {
    let f1 = full(1, 2, NOW - days(10));
    let d1 = delta(1, 4, NOW - days(9), &f1);
    let f2 = full(1, 10, NOW - days(5));
    let d2 = delta(1, 12, NOW - days(4), &f2);
    let f3 = full(1, 20, NOW - days(1));
    let c = catalog(&[&f1, &d1, &f2, &d2, &f3], &[segs(1, 1..=22)], &[]);

    for policy in [
        Policy::Before(BeforeTarget::Name(d2.name.clone())),
        Policy::Before(BeforeTarget::Time(NOW - days(4) - Duration::hours(1))),
    ] {
        let p = run(&c, policy);
        assert_eq!(deleted(&p), names(&[&d1, &f1]));
        // F2 stays: D2 is built on it.
        assert_eq!(kept(&p), names(&[&f2, &d2, &f3]));
        assert_eq!(reason(&p, &f2.name), format!("base of kept {}", d2.name));
        assert_eq!(deleted_wal(&p), segs(1, 1..=9));
    }
    let p = run(&c, Policy::Before(BeforeTarget::Name(d2.name.clone())));
    assert_eq!(reason(&p, &f1.name), format!("ordered before {}", d2.name));
    let p = run(
        &c,
        Policy::Before(BeforeTarget::Time(datetime!(2024-05-06 00:00 UTC))),
    );
    assert_eq!(reason(&p, &f1.name), "started before 2024-05-06T00:00:00Z");

    // Permanent backups stay, with their own WAL.
    let c = catalog(
        &[&permanent(f1.clone()), &d1, &f2, &d2, &f3],
        &[segs(1, 1..=22)],
        &[],
    );
    let p = run(&c, Policy::Before(BeforeTarget::Name(d2.name.clone())));
    assert_eq!(deleted(&p), names(&[&d1]));
    let mut want = segs(1, 1..=1);
    want.extend(segs(1, 4..=9));
    assert_eq!(deleted_wal(&p), want);

    let err = |policy| plan(&c, &policy, NOW).unwrap_err();
    assert_eq!(
        err(Policy::Before(BeforeTarget::Name("base_nope".into()))),
        PlanError::NoSuchBackup {
            name: "base_nope".into()
        }
    );
    assert_eq!(
        err(Policy::Before(BeforeTarget::Time(NOW))),
        PlanError::NoBackupAfter {
            time: "2024-05-10T12:00:00Z".into()
        }
    );
}

fn unfinished(name: &str, modified: Option<OffsetDateTime>, parts: usize) -> UnfinishedBackup {
    UnfinishedBackup {
        name: name.to_string(),
        objects: (1..=parts)
            .map(|i| key(&format!("basebackups/{name}/part_{i:05}.tar")))
            .collect(),
        newest_modified: modified,
        running: None,
    }
}

#[test]
fn garbage_deletes_old_unfinished_backups_and_unneeded_wal() {
    let f1 = full(1, 5, NOW - days(10));
    let f2 = full(1, 10, NOW - days(5));
    let mut c = catalog(&[&f1, &f2], &[segs(1, 1..=0x16)], &[]);
    let u_old = format!("base_{}", seg(1, 7));
    let u_new = format!("base_{}", seg(1, 0x14));
    let u_unknown = format!("base_{}", seg(1, 3));
    c.unfinished = vec![
        unfinished(&u_old, Some(NOW - days(3)), 2),
        unfinished(&u_new, Some(NOW - Duration::hours(1)), 1),
        unfinished(&u_unknown, None, 1),
    ];

    let p = run(&c, Policy::Garbage { grace: days(1) });
    assert!(deleted(&p).is_empty());
    assert_eq!(kept(&p), names(&[&f1, &f2]));
    assert_eq!(
        deleted_unfinished(&p),
        vec![u_unknown.clone(), u_old.clone()]
    );
    assert_eq!(
        reason(&p, &u_old),
        "unfinished backup, last written 3 days ago"
    );
    assert_eq!(
        reason(&p, &u_unknown),
        "unfinished backup, time of last write unknown"
    );
    assert_eq!(deleted_wal(&p), segs(1, 1..=4));
    assert_eq!(p.summary().unfinished_deleted, 2);
    assert_eq!(p.summary().objects_deleted, 3 + 4);

    // A longer grace keeps the three-day-old one.
    let p = run(&c, Policy::Garbage { grace: days(4) });
    assert_eq!(deleted_unfinished(&p), vec![u_unknown]);

    // Other policies leave unfinished backups alone.
    assert!(deleted_unfinished(&run(&c, Policy::Everything)).is_empty());
}

#[test]
fn unfinished_backup_in_progress_keeps_its_wal() {
    let f1 = full(1, 5, NOW - days(10));
    let mut c = catalog(&[&f1], &[segs(1, 1..=0x10)], &[]);
    c.unfinished = vec![unfinished(
        &format!("base_{}", seg(1, 0xC)),
        Some(NOW - Duration::minutes(10)),
        1,
    )];
    let p = run(&c, Policy::Everything);
    assert_eq!(deleted(&p), names(&[&f1]));
    assert_eq!(deleted_wal(&p), segs(1, 1..=0xB));
}

#[test]
fn everything_without_permanent_backups_deletes_all_but_histories() {
    let br = Branch::new();
    let c = br.catalog();
    let p = run(&c, Policy::Everything);
    assert_eq!(deleted(&p), names(&[&br.f1, &br.f2, &br.f3, &br.f4]));
    assert!(p.kept.is_empty());
    assert_eq!(deleted_wal(&p).len(), c.wal.len() - 1);
    assert!(!deleted_wal(&p).contains(&"00000002.history".to_string()));
}

#[test]
fn rejects_policies_that_say_nothing_or_too_much() {
    let ch = Chains::new();
    let c = ch.catalog();
    let err = |policy| plan(&c, &policy, NOW).unwrap_err();
    assert_eq!(err(gfs(0, 0, 0)), PlanError::NothingToRetain);
    assert_eq!(err(retain(Some(0), None)), PlanError::ZeroFull);
    assert!(matches!(
        err(retain(None, Some(days(-1)))),
        PlanError::NegativeWindow(_)
    ));
    assert!(matches!(
        err(Policy::Garbage { grace: days(-1) }),
        PlanError::NegativeGrace(_)
    ));
}

#[test]
fn refuses_broken_catalogs() {
    let f1 = full(1, 2, NOW - days(3));
    let orphan = delta(1, 4, NOW - days(2), &full(1, 1, NOW - days(9)));
    let c = catalog(&[&f1, &orphan], &[segs(1, 1..=5)], &[]);
    let err = plan(&c, &retain(Some(1), None), NOW).unwrap_err();
    assert!(err.to_string().contains("is not in the archive"), "{err}");
    assert!(err.to_string().contains(&orphan.name), "{err}");
    // Garbage keeps it and Target can remove it.
    run(&c, Policy::Garbage { grace: days(1) });
    let p = run(&c, Policy::Target(orphan.name.clone()));
    assert_eq!(deleted(&p), names(&[&orphan]));

    let foreign = of_cluster(delta(1, 4, NOW - days(2), &f1), 3);
    let c = catalog(&[&f1, &foreign], &[], &[]);
    let err = plan(&c, &retain(Some(1), None), NOW).unwrap_err();
    assert!(err.to_string().contains("another cluster"), "{err}");

    let c = catalog(&[&f1, &f1], &[], &[]);
    assert_eq!(
        plan(&c, &Policy::Everything, NOW).unwrap_err(),
        PlanError::DuplicateBackup {
            name: f1.name.clone()
        }
    );

    let mut a = full(1, 2, NOW - days(3));
    let mut b = full(1, 4, NOW - days(2));
    a.parent = Some(b.name.clone());
    b.parent = Some(a.name.clone());
    let c = catalog(&[&a, &b], &[], &[]);
    let err = plan(&c, &Policy::Garbage { grace: days(1) }, NOW).unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
}

#[test]
fn wal_runs_break_at_kept_files_and_timelines() {
    let br = Branch::new();
    let p = run(&br.catalog(), retain(Some(2), None));
    let text = p.to_string();
    for line in [
        "  000000010000000000000001..000000010000000000000010 (18 objects): older than every kept backup\n",
        "  00000002000000000000000F..000000020000000000000010 (2 objects): older than every kept backup\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
}

/// 1,000 backups (a full and nine deltas per chain, one per 100 segments,
/// one a day) and 100,000 WAL files; prints how long planning takes.
#[test]
#[ignore = "prints a timing: cargo test --release --lib plan_time -- --ignored --nocapture"]
fn plan_time_for_1000_backups_and_100000_wal() {
    let mut backups: Vec<BackupInfo> = Vec::with_capacity(1000);
    for i in 0..1000u64 {
        let start = NOW - days(1000) + days(i as i64);
        let b = if i % 10 == 0 {
            full(1, 100 * i + 1, start)
        } else {
            delta(1, 100 * i + 1, start, &backups[i as usize - 1])
        };
        backups.push(b);
    }
    let all: Vec<&BackupInfo> = backups.iter().collect();
    let c = catalog(&all, &[segs(1, 1..=100_000)], &[]);
    let policy = Policy::Retain(Retain {
        full: Some(7),
        within: Some(days(30)),
        daily: 7,
        weekly: 4,
        monthly: 12,
    });
    let started = std::time::Instant::now();
    let p = plan(&c, &policy, NOW).unwrap();
    let elapsed = started.elapsed();
    let text_started = std::time::Instant::now();
    let text = p.to_string();
    let text_elapsed = text_started.elapsed();
    println!(
        "plan: {elapsed:?} for {} backups and {} WAL files ({}); printing it: {text_elapsed:?}, {} lines",
        c.backups.len(),
        c.wal.len(),
        p.summary(),
        text.lines().count()
    );
    check(&c, &p);
}
