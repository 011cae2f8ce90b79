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
//! - a backup kept only as a base (permanent, or an ancestor of a kept backup)
//!   needs the segments from its start to its stop on its timeline, no more, so
//!   it stays consistent on its own without holding all later WAL;
//! - as a guard, when a cluster has a backup kept by the policy, no segment at
//!   or after the start of that cluster's newest backup is deleted, on any
//!   timeline;
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
//! oldest first (an interrupted run leaves no hole in the middle).

pub mod plan;

pub use plan::{
    BackupInfo, BeforeTarget, Catalog, Deleted, Deletion, KeptBackup, Plan, PlanError, PlanSummary,
    Policy, Retain, UnfinishedBackup, WalObject, plan,
};
