//! Retention: which backups and WAL files to delete. Planning is pure
//! ([`plan::plan`]: catalog + policy + now → ordered deletions with reasons,
//! printable and testable without storage); applying the plan is separate.
//!
//! # Rules
//!
//! **Backups and chains.** Backups are ordered by their manifests, never by
//! name: by (start time, start LSN, name). A full backup has no parent; a delta
//! names the backup it is built on. A chain is never broken: a kept delta keeps
//! all its ancestors, a delta whose ancestor is deleted is deleted too, and
//! deletions run dependents first. Permanent backups are never deleted, nor
//! their ancestors. A backup is *kept by the policy* when the policy itself
//! selects it; it is *kept as a base* when it is only kept because it is
//! permanent or an ancestor of a kept backup.
//!
//! **Policies** ([`plan::Policy`]):
//! - `Retain`: the union of what each given option keeps, plus always the
//!   newest backup of the prefix (so that a lapse in backups never lets a
//!   calendar rule delete the last one):
//!   - `full: N`: the N newest full backups across the whole prefix (so an old
//!     cluster's backups age out) and every delta built (transitively) on them;
//!   - `within: D`: everything needed to recover to any moment of `[now-D, now]`
//!     (see *Windows and timelines*);
//!   - `daily/weekly/monthly`: the newest backup (by start time, UTC) of each of
//!     the last D calendar days (today is one), W ISO weeks (this week is one),
//!     M calendar months (this month is one). Slots without a backup stay
//!     empty; they do not reach further back. A start time in the future counts
//!     as today.
//! - `Before(name)`: deletes every backup ordered before `name`; `Before(time)`:
//!   every backup that started before `time`, and there must be a backup that
//!   started at or after it (as wal-g requires), so a typo cannot delete every
//!   backup. Ancestors of kept backups and permanent backups stay.
//! - `Target(name)`: deletes `name` and every delta built on it, and refuses
//!   if any of them is permanent. It deletes no WAL (a later `Garbage` does).
//! - `Everything`: every backup except permanent ones and their ancestors, and
//!   all WAL they do not need. Unfinished backups are left to `Garbage`: one may
//!   be a backup in progress, which would then publish a manifest over parts
//!   deleted under it.
//! - `Garbage { grace }`: keeps every complete backup; deletes unfinished
//!   backups (no manifest) last written before `now - grace` (or of unknown
//!   age) and the WAL no backup needs.
//!
//! **Windows and timelines.** A moment in the window may lie on any timeline
//! that was current during the window, and a backup taken on timeline 1 after a
//! point-in-time restore branched off to timeline 2 cannot reach timeline 2. So
//! `within` keeps every backup that finished after `now - D`, and, per cluster
//! and per timeline that may have been current during the window, the newest
//! backup that finished at or before `now - D` and can restore into that
//! timeline (its own timeline, or an ancestor that the timeline's history
//! leaves at or after the backup's stop LSN). The timelines that may have been
//! current during the window: those of the backups that finished in it, the
//! newest timeline of a cluster that was still running after `now - D` (the
//! newest cluster, or one whose successor's first backup finished after
//! `now - D`), and, going back along their histories, each parent whose child
//! timeline has no backup that finished at or before `now - D` (without such a
//! backup the switch may have happened inside the window).
//!
//! **WAL.** A WAL file is deleted only when no kept backup needs it:
//! - a backup kept by the policy needs every segment from its start segment on
//!   (up to the newest) on its own timeline and on every timeline whose history
//!   reaches it from its start LSN;
//! - an ancestor of a backup kept by the policy is kept like it, with all WAL
//!   from its start on: every kept backup that is not permanent stays
//!   restorable to the newest segment, which is what `wal-verify` checks;
//! - a backup kept only as a base (permanent, or an ancestor of a permanent
//!   backup) needs the segments from its start to its stop on its timeline, no
//!   more, so it stays consistent on its own without holding all later WAL;
//! - as a guard, when a cluster has a backup kept by the policy, no segment at
//!   or after the start of that cluster's newest backup is deleted, on any
//!   timeline;
//! - a running backup (one whose marker its writer still refreshes, see
//!   `archive::running`) needs every segment from its start on, on any
//!   timeline, and keeps its parent's chain as a base; `Target` refuses to
//!   delete what a running backup is built on, and no policy deletes a running
//!   backup's objects;
//! - an unfinished backup that is not being deleted and is newer than every
//!   complete backup of its cluster (or any one, under `Garbage`) may be in
//!   progress: segments from its start (read from its `base_<WAL file>` name) on
//!   are kept, on any timeline.
//!
//! `.partial` and `.backup` files are judged by their segment. `.history`
//! files are never deleted: they are tiny, PostgreSQL picks a new timeline ID
//! as one above the newest history file it finds, and its search stops at the
//! first missing one, so deleting any of them could let a later promotion reuse
//! a timeline ID whose segments are still archived. With no complete backup at
//! all, `Retain` and `Garbage` delete no WAL (a first backup may be starting).
//!
//! **Several clusters in one prefix** (for example after `pg_upgrade`, whose
//! new cluster continues the old one's LSN sequence). A cluster is the set of
//! backups with one system identifier; WAL names carry none, so each WAL file
//! is attributed to a cluster by position: clusters are ordered by the start
//! time of their earliest backup, and a segment belongs to the cluster with the
//! greatest earliest-backup start segment at or below its own (segments below
//! every cluster's first backup belong to the first). The file is then judged
//! by the needs of that cluster alone, so the old cluster's kept backups do not
//! hold the new cluster's WAL. This assumes the clusters follow one another:
//! when their first backups are not in the same order by time and by position,
//! or a cluster has a backup at or beyond the next one's first, the attribution
//! cannot be trusted and a WAL file is then deleted only when no cluster needs
//! it. (A cluster that keeps writing WAL without backups after a newer cluster
//! started cannot be told apart; do not share a prefix between live clusters.)
//!
//! **Apply order.** Backups first, dependents before their parents (an
//! interrupted run never leaves a delta without its parent), oldest chain
//! first, and within a backup its manifest first (that makes the backup
//! invisible before its parts go); then unfinished backups' objects; then WAL,
//! oldest first. Before any WAL file goes, the runs of segments the plan
//! removes are written to the record of intentional holes (`archive::holes`):
//! whatever prefix of the removal an interruption leaves done, and in
//! whatever order a storage carries out one batch, every segment missing from
//! the archive is then either recorded as removed on purpose or a real gap,
//! so `wal-fetch` and `wal-verify` never take one for the other.

pub mod apply;
pub mod plan;

pub use plan::{
    BeforeTarget, Deleted, Deletion, KeptBackup, Plan, PlanError, PlanSummary, Policy, Retain,
    Step, plan,
};

use time::{Duration, OffsetDateTime};

/// A duration as operators write it: a whole number and a unit, `s`, `m`,
/// `h`, `d` or `w` (`90m`, `12h`, `7d`, `2w`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (like 30m, 12h, 7d or 2w)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: i64 = s[..split].parse().map_err(|_| bad())?;
    let unit = match &s[split..] {
        "s" => Duration::SECOND,
        "m" => Duration::MINUTE,
        "h" => Duration::HOUR,
        "d" => Duration::DAY,
        "w" => Duration::WEEK,
        _ => return Err(bad()),
    };
    unit.checked_mul(i32::try_from(n).map_err(|_| bad())?)
        .ok_or_else(bad)
}

/// A moment: RFC 3339 (`2026-11-20T06:00:00Z`) or a UTC date (`2026-11-20`,
/// its midnight).
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let date = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &date)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| format!("{s:?} is not a time (use 2026-11-20T06:00:00Z or 2026-11-20)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_times() {
        assert_eq!(parse_duration("7d"), Ok(Duration::days(7)));
        assert_eq!(parse_duration("90m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_duration("2w"), Ok(Duration::weeks(2)));
        for bad in ["", "7", "d", "7y", "-1d", "1.5h", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_time("2026-11-20").unwrap(),
            time::macros::datetime!(2026-11-20 0:00 UTC)
        );
        assert_eq!(
            parse_time("2026-11-20T06:30:00+01:00").unwrap(),
            time::macros::datetime!(2026-11-20 5:30 UTC)
        );
        assert!(parse_time("yesterday").is_err());
    }
}
