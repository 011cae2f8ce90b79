//! The retention plan: catalog + policy + now → what to delete, in apply order,
//! each with a reason, and what is kept and why. Pure and synchronous; the
//! rules are in the [module documentation](super).
//!
//! Cost: O((backups + WAL) log) — WAL needs are reduced per cluster and
//! timeline to a threshold, a few ranges and a guard, then each WAL file is
//! judged once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, UtcOffset};

use crate::archive::catalog::order_key;
use crate::archive::clusters::Clusters;
use crate::archive::holes::Hole;
use crate::archive::{BackupInfo, Catalog, UnfinishedBackup};
use crate::pg::timeline::TimelineHistory;
use crate::pg::wal::{Segment, SegmentPos, TimelineId, WalFileName};
use crate::storage::ObjectKey;

/// What to keep (`Retain`) or what to delete (the others).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    Retain(Retain),
    Before(BeforeTarget),
    Target(String),
    Everything,
    Garbage { grace: Duration },
}

/// The options of [`Policy::Retain`]; their union is kept. At least one must be
/// given (`full`, `within`, or a non-zero calendar count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retain {
    pub full: Option<usize>,
    pub within: Option<Duration>,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeforeTarget {
    Name(String),
    Time(OffsetDateTime),
}

/// The plan: deletions in the order to apply them, and the backups kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub deletions: Vec<Deletion>,
    /// In backup order, oldest first.
    pub kept: Vec<KeptBackup>,
    /// The runs of WAL segments the plan removes, to record as intentional
    /// holes before removing them.
    pub holes: Vec<Hole>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptBackup {
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub key: ObjectKey,
    pub what: Deleted,
    pub reason: String,
    /// When apply may delete it.
    pub step: Step,
}

/// The stages of applying a plan, in order; an interruption between any two
/// deletions leaves no visible backup without its parts or its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// A doomed backup's manifest, deepest deltas first (`Reverse(depth)`):
    /// deleting it makes the backup invisible.
    Manifest(Reverse<usize>),
    /// The rest of a doomed backup, once no manifest names it.
    BackupObject,
    /// An unfinished backup's objects.
    Unfinished,
    /// A WAL file, oldest first, after the plan's holes are recorded.
    Wal,
}

/// What a deleted object belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deleted {
    Backup(String),
    Unfinished(String),
    Wal(WalFileName),
}

/// Counts of a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanSummary {
    pub backups_deleted: usize,
    pub backups_kept: usize,
    pub unfinished_deleted: usize,
    pub wal_deleted: usize,
    /// All objects to delete (backup parts and manifests, unfinished backups'
    /// objects, WAL files).
    pub objects_deleted: usize,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "nothing to retain: give a number of full backups, a time window, or daily, weekly or monthly counts"
    )]
    NothingToRetain,
    #[error(
        "retaining 0 full backups would delete every backup; use `delete everything` if that is meant"
    )]
    ZeroFull,
    #[error("the retention window {0} is negative")]
    NegativeWindow(Duration),
    #[error("the grace period {0} is negative")]
    NegativeGrace(Duration),
    #[error("no backup named {name} in the archive")]
    NoSuchBackup { name: String },
    #[error(
        "no backup started at or after {time}: deleting the backups before it would delete all of them; use `delete everything` if that is meant"
    )]
    NoBackupAfter { time: String },
    #[error(
        "refusing to delete {target}: permanent backups would go with it: {} (unmark them first)",
        .permanent.join(", ")
    )]
    TargetPermanent {
        target: String,
        permanent: Vec<String>,
    },
    #[error(
        "refusing to delete {target}: a running backup is being built on it: {} (wait until it \
         finishes, then delete both)",
        .running.join(", ")
    )]
    TargetRunning {
        target: String,
        running: Vec<String>,
    },
    #[error("two backups in the archive are named {name}")]
    DuplicateBackup { name: String },
    #[error("backup {name} is built on {parent}, which {problem}")]
    BrokenChain {
        name: String,
        parent: String,
        problem: String,
    },
}

/// Makes the plan for `policy` over `catalog` at time `now`.
pub fn plan(catalog: &Catalog, policy: &Policy, now: OffsetDateTime) -> Result<Plan, PlanError> {
    check_policy(policy)?;
    let (g, broken) = Graph::build(&catalog.backups)?;
    // Backups being taken now: what they build on must outlive them.
    let running: Vec<&UnfinishedBackup> = catalog
        .unfinished
        .iter()
        .filter(|u| u.running.is_some())
        .collect();
    if let Policy::Target(name) = policy {
        return target(&g, name, &running);
    }
    // A delta without its chain cannot be restored, and a plan that counted it as
    // a kept backup would keep less than the policy promises: refuse, loudly.
    // Garbage keeps every backup and Everything counts none, so they go ahead.
    if let (Some(e), Policy::Retain(_) | Policy::Before(_)) = (broken, policy) {
        return Err(e);
    }
    let clusters = Clusters::of(&g.b);
    let mut keep = Keep::new(g.len());
    let reason_for_deletion: String = match policy {
        Policy::Retain(r) => retain(&g, &clusters, catalog, r, now, &mut keep),
        Policy::Before(t) => before(&g, t, &mut keep)?,
        Policy::Everything => "not permanent, nor the base of a permanent backup".to_string(),
        Policy::Garbage { .. } => {
            for i in 0..g.len() {
                keep.add(
                    i,
                    true,
                    "complete backup (garbage collection keeps them all)",
                );
            }
            String::new()
        }
        Policy::Target(_) => unreachable!("handled above"),
    };
    for i in 0..g.len() {
        if g.b[i].permanent {
            keep.add(i, false, "permanent");
        }
    }
    for u in &running {
        if let Some(&p) = running_parent(u).and_then(|p| g.by_name.get(p)) {
            keep.add(p, false, format!("base of {}, which is running", u.name));
        }
    }
    keep.close_over_ancestors(&g);

    let mut out = Plan::default();
    backup_deletions(&g, &keep, &reason_for_deletion, &mut out);

    let grace = match policy {
        Policy::Garbage { grace } => Some(*grace),
        _ => None,
    };
    let mut surviving_unfinished = Vec::new();
    let mut unfinished: Vec<&UnfinishedBackup> = catalog.unfinished.iter().collect();
    unfinished.sort_by(|a, b| a.name.cmp(&b.name));
    for u in unfinished {
        let old = grace.map(|grace| u.newest_modified.is_none_or(|m| m < now - grace));
        if old != Some(true) || u.running.is_some() {
            surviving_unfinished.push(u);
            continue;
        }
        let reason = match u.newest_modified {
            Some(m) => format!("unfinished backup, last written {} ago", human(now - m)),
            None => "unfinished backup, time of last write unknown".to_string(),
        };
        for key in &u.objects {
            out.deletions.push(Deletion {
                key: key.clone(),
                what: Deleted::Unfinished(u.name.clone()),
                reason: reason.clone(),
                step: Step::Unfinished,
            });
        }
    }

    // Without any complete backup there is nothing to measure WAL against, and a
    // first backup may be starting; only Everything goes ahead.
    if !g.b.is_empty() || matches!(policy, Policy::Everything) {
        let needs = WalNeeds::build(
            &g,
            &clusters,
            &keep,
            catalog,
            &surviving_unfinished,
            grace.is_some(),
        );
        wal_deletions(catalog, &needs, &mut out);
    }

    out.kept = kept_list(&g, &keep);
    Ok(out)
}

/// The backup a running delta is being built on.
fn running_parent(u: &UnfinishedBackup) -> Option<&str> {
    u.running.as_ref()?.parent.as_deref()
}

fn check_policy(policy: &Policy) -> Result<(), PlanError> {
    match policy {
        Policy::Retain(r) => {
            if r.full.is_none() && r.within.is_none() && r.daily + r.weekly + r.monthly == 0 {
                return Err(PlanError::NothingToRetain);
            }
            if r.full == Some(0) {
                return Err(PlanError::ZeroFull);
            }
            if let Some(d) = r.within
                && d.is_negative()
            {
                return Err(PlanError::NegativeWindow(d));
            }
        }
        Policy::Garbage { grace } if grace.is_negative() => {
            return Err(PlanError::NegativeGrace(*grace));
        }
        _ => {}
    }
    Ok(())
}

/// Backups in order, with their chains.
struct Graph<'a> {
    /// Sorted by (start time, start LSN, name).
    b: Vec<&'a BackupInfo>,
    by_name: HashMap<&'a str, usize>,
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    /// Steps to the chain's root (0 for a full backup).
    depth: Vec<usize>,
    /// The chain's full backup (or the first backup whose parent is missing).
    root: Vec<usize>,
}

impl<'a> Graph<'a> {
    /// The graph, and the first broken chain (missing or foreign parent), if any.
    fn build(backups: &'a [BackupInfo]) -> Result<(Graph<'a>, Option<PlanError>), PlanError> {
        let mut b: Vec<&BackupInfo> = backups.iter().collect();
        b.sort_by(|x, y| {
            order_key(x.start_time, x.start_lsn, &x.name).cmp(&order_key(
                y.start_time,
                y.start_lsn,
                &y.name,
            ))
        });
        let n = b.len();
        let mut by_name = HashMap::with_capacity(n);
        for (i, x) in b.iter().enumerate() {
            if by_name.insert(x.name.as_str(), i).is_some() {
                return Err(PlanError::DuplicateBackup {
                    name: x.name.clone(),
                });
            }
        }
        let mut parent = vec![None; n];
        let mut broken = None;
        for (i, x) in b.iter().enumerate() {
            let Some(p) = &x.parent else { continue };
            let problem = match by_name.get(p.as_str()) {
                Some(&pi) if b[pi].system_identifier == x.system_identifier => {
                    parent[i] = Some(pi);
                    continue;
                }
                Some(&pi) => format!(
                    "belongs to another cluster (system identifier {}, not {})",
                    b[pi].system_identifier, x.system_identifier
                ),
                None => "is not in the archive".to_string(),
            };
            broken.get_or_insert(PlanError::BrokenChain {
                name: x.name.clone(),
                parent: p.clone(),
                problem,
            });
        }
        let mut children = vec![Vec::new(); n];
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(i);
            }
        }
        let mut depth = vec![usize::MAX; n];
        let mut root = vec![0; n];
        let mut path = Vec::new();
        for (i, x) in b.iter().enumerate() {
            let mut cur = i;
            while depth[cur] == usize::MAX {
                if path.len() > n {
                    return Err(PlanError::BrokenChain {
                        name: x.name.clone(),
                        parent: x.parent.clone().unwrap_or_default(),
                        problem: "is built on it in turn (a cycle of parents)".to_string(),
                    });
                }
                match parent[cur] {
                    Some(p) => {
                        path.push(cur);
                        cur = p;
                    }
                    None => {
                        depth[cur] = 0;
                        root[cur] = cur;
                    }
                }
            }
            while let Some(x) = path.pop() {
                let p = parent[x].expect("on the path only with a parent");
                depth[x] = depth[p] + 1;
                root[x] = root[p];
            }
        }
        let g = Graph {
            b,
            by_name,
            parent,
            children,
            depth,
            root,
        };
        Ok((g, broken))
    }

    fn len(&self) -> usize {
        self.b.len()
    }

    /// `i` and every backup built on it, transitively.
    fn with_descendants(&self, i: usize) -> Vec<usize> {
        let mut out = vec![i];
        let mut k = 0;
        while k < out.len() {
            out.extend_from_slice(&self.children[out[k]]);
            k += 1;
        }
        out
    }
}

fn start_pos(b: &BackupInfo) -> SegmentPos {
    b.start_segment().pos()
}

/// The segment holding the stop LSN itself (one more than a restore needs
/// when the stop LSN begins a segment: retention keeps the wider range).
fn stop_pos(b: &BackupInfo) -> SegmentPos {
    Segment::containing(b.timeline, b.stop_lsn, b.wal_segment_size).pos()
}

/// Which backups are kept, why, and whether by the policy itself.
struct Keep {
    reasons: Vec<Vec<String>>,
    /// Kept by the policy (needs WAL from its start on), not only as a base.
    own: Vec<bool>,
}

impl Keep {
    fn new(n: usize) -> Keep {
        Keep {
            reasons: vec![Vec::new(); n],
            own: vec![false; n],
        }
    }

    fn kept(&self, i: usize) -> bool {
        !self.reasons[i].is_empty()
    }

    fn add(&mut self, i: usize, own: bool, reason: impl Into<String>) {
        let reason = reason.into();
        if !self.reasons[i].contains(&reason) {
            self.reasons[i].push(reason);
        }
        self.own[i] |= own;
    }

    /// Keeps every ancestor of a kept backup. The ancestors of a backup kept
    /// by the policy are kept as it is (with WAL from their start on, so that
    /// wal-verify finds every kept non-permanent backup restorable to the
    /// newest segment); those of a backup kept only as a base (permanent) are
    /// bases too.
    fn close_over_ancestors(&mut self, g: &Graph) {
        for own in [true, false] {
            let kept: Vec<usize> = (0..g.len())
                .rev()
                .filter(|&i| self.kept(i) && self.own[i] == own)
                .collect();
            for i in kept {
                let mut child = i;
                while let Some(p) = g.parent[child] {
                    if self.kept(p) && (self.own[p] || !own) {
                        break; // walked already
                    }
                    self.add(p, own, format!("base of kept {}", g.b[child].name));
                    child = p;
                }
            }
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `2 days`, `5 hours`: the largest unit with at least two of it, rounded down.
fn human(d: Duration) -> String {
    let s = d.whole_seconds().max(0);
    let s = s as usize;
    if s >= 2 * 86_400 {
        plural(s / 86_400, "day", "days")
    } else if s >= 2 * 3_600 {
        plural(s / 3_600, "hour", "hours")
    } else if s >= 120 {
        plural(s / 60, "minute", "minutes")
    } else {
        plural(s, "second", "seconds")
    }
}

/// A window length, exactly: `7 days`, `1 day 12 hours`.
fn span(d: Duration) -> String {
    let s = d.whole_seconds().max(0) as usize;
    let parts: Vec<String> = [
        (s / 86_400, "day", "days"),
        (s % 86_400 / 3_600, "hour", "hours"),
        (s % 3_600 / 60, "minute", "minutes"),
        (s % 60, "second", "seconds"),
    ]
    .into_iter()
    .filter(|(n, ..)| *n > 0)
    .map(|(n, one, many)| plural(n, one, many))
    .collect();
    if parts.is_empty() {
        "0 seconds".to_string()
    } else {
        parts.join(" ")
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn utc_date(t: OffsetDateTime) -> Date {
    t.to_offset(UtcOffset::UTC).date()
}

/// Applies `Retain`; returns the reason for the backups it does not keep.
fn retain(
    g: &Graph,
    clusters: &Clusters,
    catalog: &Catalog,
    r: &Retain,
    now: OffsetDateTime,
    keep: &mut Keep,
) -> String {
    let mut why_not = Vec::new();
    if let Some(n) = r.full {
        let (newest, one_of) = if n == 1 {
            ("the newest full backup".to_string(), "")
        } else {
            (format!("the {n} newest full backups"), "one of ")
        };
        let fulls: Vec<usize> = (0..g.len()).filter(|&i| g.b[i].parent.is_none()).collect();
        for &f in fulls.iter().rev().take(n) {
            keep.add(f, true, format!("{one_of}{newest}"));
            for d in g.with_descendants(f).into_iter().skip(1) {
                keep.add(
                    d,
                    true,
                    format!("built on {}, {one_of}{newest}", g.b[f].name),
                );
            }
        }
        why_not.push(format!("older than {newest}"));
    }
    if let Some(d) = r.within {
        within(g, clusters, catalog, d, now, keep);
        why_not.push(format!(
            "not needed to recover to any moment of the last {}",
            span(d)
        ));
    }
    if r.daily + r.weekly + r.monthly > 0 {
        calendar(g, r, now, keep);
        let slots: Vec<String> = [
            (r.daily, "day", "days"),
            (r.weekly, "ISO week", "ISO weeks"),
            (r.monthly, "month", "months"),
        ]
        .into_iter()
        .filter(|(n, ..)| *n > 0)
        .map(|(n, one, many)| plural(n, one, many))
        .collect();
        why_not.push(format!(
            "not the newest backup of any of the last {}",
            slots.join(", ")
        ));
    }
    if let Some(last) = g.len().checked_sub(1)
        && !keep.kept(last)
    {
        keep.add(last, true, "the newest backup (retention always keeps it)");
    }
    why_not.join("; ")
}

/// Whether backup `b` can be restored into timeline `t`: consistent (at its
/// stop LSN) on `t` or on an ancestor that `t`'s history leaves later.
fn restores_into(
    b: &BackupInfo,
    t: TimelineId,
    histories: &BTreeMap<TimelineId, TimelineHistory>,
) -> bool {
    b.timeline == t
        || histories
            .get(&t)
            .is_some_and(|h| h.reaches(b.timeline, b.stop_lsn))
}

fn within(
    g: &Graph,
    clusters: &Clusters,
    catalog: &Catalog,
    d: Duration,
    now: OffsetDateTime,
    keep: &mut Keep,
) {
    let cutoff = now - d;
    let span = span(d);
    for i in 0..g.len() {
        if g.b[i].finish_time > cutoff {
            keep.add(i, true, format!("finished within the last {span}"));
        }
    }
    // The newest timeline the archive knows, for the newest cluster.
    let newest_known = catalog
        .histories
        .keys()
        .copied()
        .chain(catalog.wal.iter().map(|w| w.name.timeline()))
        .max();
    for (ci, c) in clusters.list.iter().enumerate() {
        let members = || c.members.iter().map(|&i| g.b[i]);
        let mut seeds: BTreeSet<TimelineId> = members()
            .filter(|b| b.finish_time > cutoff)
            .map(|b| b.timeline)
            .collect();
        let newest_cluster = ci + 1 == clusters.list.len();
        let running_after_cutoff =
            newest_cluster || g.b[clusters.list[ci + 1].members[0]].finish_time > cutoff;
        if running_after_cutoff {
            let mut newest = members().map(|b| b.timeline).max();
            if newest_cluster {
                newest = newest.max(newest_known);
            }
            seeds.extend(newest);
        }
        // A timeline with a backup finished before the window existed before it,
        // so its parent was left before the window.
        let older: HashSet<TimelineId> = members()
            .filter(|b| b.finish_time <= cutoff)
            .map(|b| b.timeline)
            .collect();
        let mut current = seeds.clone();
        for t in seeds {
            let Some(h) = catalog.histories.get(&t) else {
                continue;
            };
            let mut child = t;
            for e in h.entries.iter().rev() {
                if older.contains(&child) {
                    break;
                }
                current.insert(e.parent);
                child = e.parent;
            }
        }
        for t in current {
            let anchor = c.members.iter().rev().copied().find(|&i| {
                g.b[i].finish_time <= cutoff && restores_into(g.b[i], t, &catalog.histories)
            });
            if let Some(a) = anchor {
                keep.add(
                    a,
                    true,
                    format!(
                        "the newest backup finished before the last {span} that restores into timeline {t}"
                    ),
                );
            }
        }
    }
}

/// Grandfather-father-son: the newest backup of each recent day, week, month.
fn calendar(g: &Graph, r: &Retain, now: OffsetDateTime, keep: &mut Keep) {
    let today = utc_date(now);
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let week = |d: Date| {
        (i64::from(d.to_julian_day()) - i64::from(d.weekday().number_days_from_monday())) / 7
    };
    let month = |d: Date| i64::from(d.year()) * 12 + i64::from(u8::from(d.month())) - 1;
    let (mut days, mut weeks, mut months) = (HashSet::new(), HashSet::new(), HashSet::new());
    for i in (0..g.len()).rev() {
        let d = utc_date(g.b[i].start_time).min(today);
        if i64::from(today.to_julian_day() - d.to_julian_day()) < count(r.daily) && days.insert(d) {
            keep.add(i, true, format!("the newest backup of {d}"));
        }
        if week(today) - week(d) < count(r.weekly) && weeks.insert(week(d)) {
            let (y, w, _) = d.to_iso_week_date();
            keep.add(
                i,
                true,
                format!("the newest backup of ISO week {y}-W{w:02}"),
            );
        }
        if month(today) - month(d) < count(r.monthly) && months.insert(month(d)) {
            keep.add(
                i,
                true,
                format!(
                    "the newest backup of {}-{:02}",
                    d.year(),
                    u8::from(d.month())
                ),
            );
        }
    }
}

/// Applies `Before`; returns the reason for the backups it deletes.
fn before(g: &Graph, t: &BeforeTarget, keep: &mut Keep) -> Result<String, PlanError> {
    match t {
        BeforeTarget::Name(name) => {
            let &first = g
                .by_name
                .get(name.as_str())
                .ok_or_else(|| PlanError::NoSuchBackup { name: name.clone() })?;
            for i in first..g.len() {
                keep.add(i, true, format!("not ordered before {name}"));
            }
            Ok(format!("ordered before {name}"))
        }
        BeforeTarget::Time(time) => {
            let when = rfc3339(*time);
            if !g.b.iter().any(|b| b.start_time >= *time) {
                return Err(PlanError::NoBackupAfter { time: when });
            }
            for i in 0..g.len() {
                if g.b[i].start_time >= *time {
                    keep.add(i, true, format!("started at or after {when}"));
                }
            }
            Ok(format!("started before {when}"))
        }
    }
}

/// `Target`: the backup and its dependents, nothing else.
fn target(g: &Graph, name: &str, running: &[&UnfinishedBackup]) -> Result<Plan, PlanError> {
    let &t = g.by_name.get(name).ok_or_else(|| PlanError::NoSuchBackup {
        name: name.to_string(),
    })?;
    let mut doomed = g.with_descendants(t);
    doomed.sort_unstable();
    let permanent: Vec<String> = doomed
        .iter()
        .filter(|&&i| g.b[i].permanent)
        .map(|&i| g.b[i].name.clone())
        .collect();
    if !permanent.is_empty() {
        return Err(PlanError::TargetPermanent {
            target: name.to_string(),
            permanent,
        });
    }
    let building: Vec<String> = running
        .iter()
        .filter(|u| {
            running_parent(u)
                .and_then(|p| g.by_name.get(p))
                .is_some_and(|p| doomed.binary_search(p).is_ok())
        })
        .map(|u| u.name.clone())
        .collect();
    if !building.is_empty() {
        return Err(PlanError::TargetRunning {
            target: name.to_string(),
            running: building,
        });
    }
    let mut keep = Keep::new(g.len());
    for i in 0..g.len() {
        if doomed.binary_search(&i).is_err() {
            keep.add(i, false, format!("neither {name} nor built on it"));
        }
    }
    let mut out = Plan::default();
    backup_deletions(g, &keep, &format!("the target, {name}"), &mut out);
    out.kept = kept_list(g, &keep);
    Ok(out)
}

/// The kept backups, oldest first, with why each is kept.
fn kept_list(g: &Graph, keep: &Keep) -> Vec<KeptBackup> {
    (0..g.len())
        .filter(|&i| keep.kept(i))
        .map(|i| KeptBackup {
            name: g.b[i].name.clone(),
            reason: keep.reasons[i].join("; "),
        })
        .collect()
}

/// The deleted backups' objects: oldest chain first, within a chain dependents
/// before their parents, within a backup the manifest first.
fn backup_deletions(g: &Graph, keep: &Keep, policy_reason: &str, out: &mut Plan) {
    let mut doomed: Vec<usize> = (0..g.len()).filter(|&i| !keep.kept(i)).collect();
    doomed.sort_by_key(|&i| (g.root[i], Reverse(g.depth[i]), Reverse(i)));
    for i in doomed {
        let b = g.b[i];
        let reason = match g.parent[i] {
            Some(p) if !keep.kept(p) => format!("depends on deleted {}", g.b[p].name),
            _ => policy_reason.to_string(),
        };
        let is_manifest = |k: &ObjectKey| {
            matches!(crate::archive::keys::classify(k),
                crate::archive::keys::Listed::BackupObject { file, .. }
                    if file == crate::archive::keys::MANIFEST_FILE)
        };
        // A backup listed without its manifest's key (tests, races): its
        // first object stands in, so that something hides it first.
        let manifest = b.objects.iter().position(is_manifest).unwrap_or(0);
        let ordered = b.objects.get(manifest).into_iter().chain(
            b.objects
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != manifest)
                .map(|(_, o)| o),
        );
        for (k, key) in ordered.enumerate() {
            out.deletions.push(Deletion {
                key: key.clone(),
                what: Deleted::Backup(b.name.clone()),
                reason: reason.clone(),
                step: if k == 0 {
                    Step::Manifest(Reverse(g.depth[i]))
                } else {
                    Step::BackupObject
                },
            });
        }
    }
}

/// What one cluster's kept backups need of the WAL.
#[derive(Default)]
struct Needs {
    /// Every segment of the timeline from this position on.
    onward: HashMap<TimelineId, SegmentPos>,
    /// These inclusive position ranges of the timeline (sorted, merged).
    ranges: HashMap<TimelineId, Vec<(SegmentPos, SegmentPos)>>,
    /// Every segment of any timeline from this position on.
    from_any: Option<SegmentPos>,
    /// The lowest position anything above needs.
    oldest: Option<SegmentPos>,
    any_kept: bool,
}

impl Needs {
    fn needs(&self, tl: TimelineId, p: SegmentPos) -> bool {
        self.from_any.is_some_and(|f| p >= f)
            || self.onward.get(&tl).is_some_and(|&m| p >= m)
            || self.ranges.get(&tl).is_some_and(|r| {
                let k = r.partition_point(|&(start, _)| start <= p);
                k > 0 && r[k - 1].1 >= p
            })
    }

    fn need_from_any(&mut self, p: SegmentPos) {
        self.from_any = Some(self.from_any.map_or(p, |f| f.min(p)));
    }

    fn need_onward(&mut self, tl: TimelineId, p: SegmentPos) {
        let m = self.onward.entry(tl).or_insert(p);
        *m = (*m).min(p);
    }

    fn finish(&mut self) {
        for r in self.ranges.values_mut() {
            r.sort_unstable();
            let mut merged: Vec<(SegmentPos, SegmentPos)> = Vec::with_capacity(r.len());
            for &(s, e) in r.iter() {
                match merged.last_mut() {
                    Some(last) if s <= last.1 || s.directly_follows(last.1) => {
                        last.1 = last.1.max(e)
                    }
                    _ => merged.push((s, e)),
                }
            }
            *r = merged;
        }
        self.oldest = self
            .onward
            .values()
            .copied()
            .chain(self.ranges.values().filter_map(|r| r.first().map(|x| x.0)))
            .chain(self.from_any)
            .min();
    }
}

struct WalNeeds<'a> {
    clusters: &'a Clusters,
    /// Parallel to `clusters.list`.
    per_cluster: Vec<Needs>,
    /// When there are no complete backups at all.
    without_cluster: Needs,
}

impl<'a> WalNeeds<'a> {
    fn build(
        g: &Graph,
        clusters: &'a Clusters,
        keep: &Keep,
        catalog: &Catalog,
        surviving_unfinished: &[&UnfinishedBackup],
        garbage: bool,
    ) -> WalNeeds<'a> {
        let mut per_cluster = Vec::with_capacity(clusters.list.len());
        for c in &clusters.list {
            let mut n = Needs::default();
            // Per timeline, the policy-kept backup that starts earliest: it needs
            // the most, and reaches every timeline a later one reaches.
            let mut earliest: BTreeMap<TimelineId, &BackupInfo> = BTreeMap::new();
            for &i in &c.members {
                if !keep.kept(i) {
                    continue;
                }
                n.any_kept = true;
                let b = g.b[i];
                if keep.own[i] {
                    let e = earliest.entry(b.timeline).or_insert(b);
                    if b.start_lsn < e.start_lsn {
                        *e = b;
                    }
                } else {
                    n.ranges
                        .entry(b.timeline)
                        .or_default()
                        .push((start_pos(b), stop_pos(b)));
                }
            }
            for (&tl, b) in &earliest {
                let p = start_pos(b);
                n.need_onward(tl, p);
                for (&t, h) in &catalog.histories {
                    if t != tl && h.reaches(tl, b.start_lsn) {
                        n.need_onward(t, p);
                    }
                }
            }
            if !earliest.is_empty() {
                n.need_from_any(start_pos(g.b[c.newest()]));
            }
            per_cluster.push(n);
        }
        let mut without_cluster = Needs::default();
        for u in surviving_unfinished {
            let start = match &u.running {
                Some(m) => Some(m.start_wal_file.pos()),
                None => unfinished_start(&u.name),
            };
            let Some(p) = start else {
                continue;
            };
            if clusters.list.is_empty() {
                without_cluster.need_from_any(p);
                continue;
            }
            let ci = match &u.running {
                Some(m) => clusters
                    .find(m.system_identifier)
                    .unwrap_or_else(|| clusters.attribute(p)),
                None => clusters.attribute(p),
            };
            // A running backup needs its WAL whatever else: it will publish
            // a manifest that says so.
            if u.running.is_some() || garbage || p > start_pos(g.b[clusters.list[ci].newest()]) {
                per_cluster[ci].need_from_any(p);
            }
        }
        for n in &mut per_cluster {
            n.finish();
        }
        without_cluster.finish();
        WalNeeds {
            clusters,
            per_cluster,
            without_cluster,
        }
    }

    /// Why the WAL file at `p` on `tl` may go, or `None` when it is needed.
    fn deletion_reason(&self, tl: TimelineId, p: SegmentPos) -> Option<String> {
        if self.per_cluster.is_empty() {
            return (!self.without_cluster.needs(tl, p)).then(|| "no backup is kept".to_string());
        }
        if !self.clusters.ordered {
            if self.per_cluster.iter().any(|n| n.needs(tl, p)) {
                return None;
            }
            let oldest = self.per_cluster.iter().filter_map(|n| n.oldest).min();
            return Some(match oldest {
                None => "no backup is kept".to_string(),
                Some(o) if p < o => "older than every kept backup".to_string(),
                Some(_) => "not needed by any kept backup".to_string(),
            });
        }
        let ci = self.clusters.attribute(p);
        let n = &self.per_cluster[ci];
        if n.needs(tl, p) {
            return None;
        }
        let of_cluster = if self.per_cluster.len() > 1 {
            format!(
                " of its cluster (system identifier {})",
                self.clusters.list[ci].system_identifier
            )
        } else {
            String::new()
        };
        Some(match n.oldest {
            _ if !n.any_kept => format!("no backup{of_cluster} is kept"),
            Some(o) if p < o => format!("older than every kept backup{of_cluster}"),
            _ => format!("not needed by any kept backup{of_cluster}"),
        })
    }

    /// The cluster a WAL position belongs to, when that can be told.
    fn owner(&self, p: SegmentPos) -> Option<crate::pg::wal::SystemId> {
        (self.clusters.ordered && !self.clusters.list.is_empty())
            .then(|| self.clusters.list[self.clusters.attribute(p)].system_identifier)
    }
}

/// The start position of an unfinished backup, from its `base_<WAL file>` name.
fn unfinished_start(name: &str) -> Option<SegmentPos> {
    let seg = name.strip_prefix("base_")?.get(..24)?;
    seg.parse::<WalFileName>().ok()?.segment().map(Segment::pos)
}

/// The WAL segment a WAL file is judged by; `None` for `.history` files.
fn judged_segment(name: &WalFileName) -> Option<(Segment, u8, u32)> {
    match *name {
        WalFileName::Segment(s) => Some((s, 0, 0)),
        WalFileName::Partial(s) => Some((s, 1, 0)),
        WalFileName::Backup(s, off) => Some((s, 2, off)),
        WalFileName::History(_) => None,
    }
}

/// The WAL deletions, oldest first, and the holes they make: per timeline,
/// each run of deleted segments with no kept segment between them.
fn wal_deletions(catalog: &Catalog, needs: &WalNeeds, out: &mut Plan) {
    type Order = (SegmentPos, u32, u8, u32);
    let mut doomed: Vec<(Order, Deletion)> = Vec::new();
    // Whole segments by timeline and position: whether each goes.
    let mut segments: BTreeMap<(TimelineId, SegmentPos), bool> = BTreeMap::new();
    for w in &catalog.wal {
        let Some((s, rank, off)) = judged_segment(&w.name) else {
            continue;
        };
        let p = s.pos();
        let reason = needs.deletion_reason(s.timeline, p);
        if rank == 0 {
            segments.insert((s.timeline, p), reason.is_some());
        }
        if let Some(reason) = reason {
            doomed.push((
                (p, s.timeline.0, rank, off),
                Deletion {
                    key: w.key.clone(),
                    what: Deleted::Wal(w.name),
                    reason,
                    step: Step::Wal,
                },
            ));
        }
    }
    doomed.sort_unstable_by_key(|(k, _)| *k);
    out.deletions.extend(doomed.into_iter().map(|(_, d)| d));

    let mut open: Option<Hole> = None;
    for (&(tl, p), &goes) in &segments {
        let owner = needs.owner(p);
        let continues = open.is_some_and(|h| h.timeline == tl && h.system_identifier == owner);
        if !goes || !continues {
            out.holes.extend(open.take());
        }
        if goes {
            let here = Segment::at(tl, p);
            match &mut open {
                Some(h) => h.last = here,
                None => {
                    open = Some(Hole {
                        system_identifier: owner,
                        timeline: tl,
                        first: here,
                        last: here,
                    })
                }
            }
        }
    }
    out.holes.extend(open);
}

impl Plan {
    pub fn summary(&self) -> PlanSummary {
        let mut s = PlanSummary {
            backups_kept: self.kept.len(),
            objects_deleted: self.deletions.len(),
            ..PlanSummary::default()
        };
        let mut previous: Option<&Deleted> = None;
        for d in &self.deletions {
            if previous != Some(&d.what) {
                match d.what {
                    Deleted::Backup(_) => s.backups_deleted += 1,
                    Deleted::Unfinished(_) => s.unfinished_deleted += 1,
                    Deleted::Wal(_) => s.wal_deleted += 1,
                }
            }
            previous = Some(&d.what);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.deletions.is_empty()
    }
}

impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delete {}, {} and {} ({}); keep {}",
            plural(self.backups_deleted, "backup", "backups"),
            plural(
                self.unfinished_deleted,
                "unfinished backup",
                "unfinished backups"
            ),
            plural(self.wal_deleted, "WAL file", "WAL files"),
            plural(self.objects_deleted, "object", "objects"),
            plural(self.backups_kept, "backup", "backups"),
        )
    }
}

/// A line of the printed plan: consecutive deletions of one backup, or a run
/// of WAL files of one timeline, contiguous, with one reason.
struct Line<'a> {
    first: &'a Deleted,
    last: &'a Deleted,
    count: usize,
    reason: &'a str,
    /// For WAL runs: position of the last file.
    pos: SegmentPos,
}

impl Plan {
    fn lines(&self) -> Vec<Line<'_>> {
        let mut lines: Vec<Line> = Vec::new();
        // Open WAL run per (timeline, reason).
        let mut open: HashMap<(TimelineId, &str), usize> = HashMap::new();
        for d in &self.deletions {
            if let Deleted::Wal(name) = &d.what {
                let Some((s, ..)) = judged_segment(name) else {
                    continue;
                };
                let p = s.pos();
                let key = (s.timeline, d.reason.as_str());
                if let Some(&k) = open.get(&key) {
                    let run = &mut lines[k];
                    // Across a 4 GiB unit only the segment size could tell;
                    // its first segment is taken to follow.
                    let follows = p == run.pos
                        || p.directly_follows(run.pos)
                        || (p.seg == 0 && run.pos.log.checked_add(1) == Some(p.log));
                    if follows {
                        run.last = &d.what;
                        run.count += 1;
                        run.pos = p;
                        continue;
                    }
                }
                open.insert(key, lines.len());
                lines.push(Line {
                    first: &d.what,
                    last: &d.what,
                    count: 1,
                    reason: &d.reason,
                    pos: p,
                });
                continue;
            }
            match lines.last_mut() {
                Some(l) if l.first == &d.what => l.count += 1,
                _ => lines.push(Line {
                    first: &d.what,
                    last: &d.what,
                    count: 1,
                    reason: &d.reason,
                    pos: SegmentPos { log: 0, seg: 0 },
                }),
            }
        }
        lines
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.summary();
        let lines = self.lines();
        let objects = |n: usize| plural(n, "object", "objects");
        let section = |f: &mut fmt::Formatter<'_>,
                       title: String,
                       pick: fn(&Deleted) -> bool|
         -> fmt::Result {
            if lines.iter().any(|l| pick(l.first)) {
                writeln!(f, "{title}:")?;
            }
            for l in lines.iter().filter(|l| pick(l.first)) {
                match (l.first, l.last) {
                    (Deleted::Backup(n) | Deleted::Unfinished(n), _) => {
                        writeln!(f, "  {n} ({}): {}", objects(l.count), l.reason)?
                    }
                    (Deleted::Wal(a), Deleted::Wal(b)) if l.count > 1 => {
                        writeln!(f, "  {a}..{b} ({}): {}", objects(l.count), l.reason)?
                    }
                    (Deleted::Wal(a), _) => writeln!(f, "  {a}: {}", l.reason)?,
                }
            }
            Ok(())
        };
        section(
            f,
            format!("Delete {}", plural(s.backups_deleted, "backup", "backups")),
            |d| matches!(d, Deleted::Backup(_)),
        )?;
        if !self.kept.is_empty() {
            writeln!(f, "Keep {}:", plural(s.backups_kept, "backup", "backups"))?;
            for k in &self.kept {
                writeln!(f, "  {}: {}", k.name, k.reason)?;
            }
        }
        section(
            f,
            format!(
                "Delete {}",
                plural(
                    s.unfinished_deleted,
                    "unfinished backup",
                    "unfinished backups"
                )
            ),
            |d| matches!(d, Deleted::Unfinished(_)),
        )?;
        section(
            f,
            format!("Delete {}", plural(s.wal_deleted, "WAL file", "WAL files")),
            |d| matches!(d, Deleted::Wal(_)),
        )?;
        if self.is_empty() {
            writeln!(f, "Nothing to delete.")
        } else {
            writeln!(f, "In all: {s}.")
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
