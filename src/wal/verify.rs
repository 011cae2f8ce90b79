//! `wal-verify`: whether every backup in the archive can be restored and rolled
//! forward to the newest archived WAL without running into a hole. [`check`] is
//! pure (catalog in, [`Report`] out); [`verify`] lists the archive first.
//!
//! # What is checked
//!
//! Every complete backup counts, each to the newest segment, except a
//! permanent backup that a newer backup of its cluster follows: retention keeps
//! only its own WAL (start to stop) for it, and so only that is checked. For a
//! backup B, recovery with `recovery_target_timeline = 'latest'`
//! follows the newest timeline T whose history reaches B (B's own timeline, or a
//! descendant whose history leaves B's timeline at or after B's start LSN, see
//! [`TimelineHistory::reaches`]), even when an older timeline went on further,
//! as PostgreSQL would. Timelines that branched off before B started are not
//! B's to follow (PostgreSQL refuses them: restoring B then needs
//! `recovery_target_timeline = 'current'`). Along T's history, the *path*, B
//! needs every segment number from the one holding its start LSN up to the
//! newest segment archived on the path (or up to the one holding its stop LSN, if that is later: without
//! those the backup never becomes consistent). Segment `n` is looked for on the
//! timeline of the path in effect at `n`.
//!
//! **Switch segments.** The segment holding a switchpoint exists on both
//! timelines: the old timeline's copy (usually only a `.partial`, which never
//! counts) holds the old history, the new timeline's copy holds the WAL up to the
//! switchpoint *and the new timeline's first records*. PostgreSQL's
//! `XLogFileReadAnyTLI` reads a segment from the newest timeline of the history
//! whose start is at or before it, so it reads a switch segment from the new
//! timeline, and only falls back to the old one when the new one is missing. That
//! fallback cannot succeed: the old copy lacks the new timeline's records (and
//! holds the old timeline's instead, if that went on), so the switch segment is
//! required on the new timeline, and the old timeline counts only up to the
//! segment before it. As a consequence, right after a promotion (the new
//! timeline's history archived, its first segment still being written) the path
//! simply ends at the old timeline's last whole segment: that is the head of the
//! archive, not a gap.
//!
//! **Histories.** PostgreSQL finds the newest timeline by probing `.history`
//! files upward from the backup's timeline, stopping at the first missing one,
//! and follows the switches by the newest one's history. So the history of
//! every timeline of the path after B's own is needed, and so is every one
//! between B's timeline and the newest timeline B could reach, counting
//! timelines that have segments after B's start but no history at all (their
//! history is lost, so whether they descend from B is unknown); the missing
//! ones on the path, and the first missing one of the probe, are reported. The
//! history of B's own timeline is not needed: without it PostgreSQL takes the
//! timeline to have no parents, which is all a restore of B needs.
//!
//! **Several clusters in one prefix** (after `pg_upgrade`): as in retention,
//! WAL names carry no system identifier, so a segment is attributed by position
//! to the cluster whose earliest backup starts at or below it. A backup's
//! checks stop below the next cluster's first backup, so an old cluster's
//! backups are not held to the new cluster's WAL.
//!
//! **Gaps** are maximal runs of missing segments on one timeline, merged over all
//! backups, each naming the backups that need some of it.
//!
//! Cost: O(WAL log WAL) to index the archive once (per segment size in use),
//! then O(histories + timelines log WAL + gaps) per backup.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::archive::catalog::order_key;
use crate::archive::clusters::Clusters;
use crate::archive::holes::Holes;
use crate::archive::{ArchiveError, BackupInfo, Catalog};
use crate::pg::timeline::TimelineHistory;
use crate::pg::wal::{Lsn, Segment, SegmentPos, SegmentSize, TimelineId, WalFileName};

/// The outcome of a verification: per backup, then the archive's problems.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// No gaps and no missing history files (also when there is no backup).
    pub ok: bool,
    /// Oldest first (by start time, start LSN, name).
    pub backups: Vec<BackupCheck>,
    /// Ordered by position in the WAL stream, then timeline.
    pub gaps: Vec<Gap>,
    /// By timeline.
    pub missing_histories: Vec<MissingHistory>,
}

/// How one backup fares.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackupCheck {
    pub name: String,
    /// The timelines recovery follows, the backup's own first.
    pub timelines: Vec<TimelineId>,
    /// The segment holding the start LSN.
    #[serde(serialize_with = "as_text")]
    pub first: Segment,
    /// The last segment a restore needs: the newest archived one on the path,
    /// or the one holding the stop LSN if that is later (then it is missing).
    #[serde(serialize_with = "as_text")]
    pub newest: Segment,
    pub status: Status,
    /// Segments from `first` to `newest` that the archive lacks.
    pub missing_segments: u64,
    /// Where restores of this backup end because retention removed the WAL
    /// after it on purpose (recorded as an intentional hole): the first
    /// removed segment.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_as_text"
    )]
    pub removed_from: Option<Segment>,
    /// Timelines whose `.history` file this backup needs and the archive lacks.
    pub missing_histories: Vec<TimelineId>,
    /// The segments a restore reads, up to `newest`: runs of one timeline,
    /// first and last (what backup-verify --to-latest reads back).
    #[serde(skip)]
    pub path: Vec<(Segment, Segment)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Segments are missing (whatever else is).
    Gap,
    /// No segment is missing, but a history file is.
    MissingHistory,
}

/// A run of consecutive segments of one timeline that the archive lacks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub timeline: TimelineId,
    #[serde(serialize_with = "as_text")]
    pub first: Segment,
    #[serde(serialize_with = "as_text")]
    pub last: Segment,
    pub segments: u64,
    /// Backups whose restore needs part of the run, oldest first.
    pub needed_by: Vec<String>,
}

/// A `.history` file that backups need and the archive lacks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MissingHistory {
    pub timeline: TimelineId,
    /// `0000000N.history`
    pub file: String,
    pub needed_by: Vec<String>,
}

fn as_text<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn opt_as_text<T: fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// Lists the archive (manifests, WAL, histories, hole records) and checks it.
pub async fn verify(ctx: &crate::Context) -> Result<Report, ArchiveError> {
    Ok(check(&Catalog::load(ctx).await?))
}

/// Checks `catalog` (see the module documentation). Pure.
pub fn check(catalog: &Catalog) -> Report {
    let mut order: Vec<&BackupInfo> = catalog.backups.iter().collect();
    order.sort_by(|x, y| {
        order_key(x.start_time, x.start_lsn, &x.name).cmp(&order_key(
            y.start_time,
            y.start_lsn,
            &y.name,
        ))
    });
    let archive = Archive::index(catalog);
    let clusters = Clusters::of(&order);
    let mut runs_by_size: HashMap<u64, Runs> = HashMap::new();

    let mut backups = Vec::with_capacity(order.len());
    // (segment size, timeline, first, last, backup index)
    let mut holes: Vec<(u64, TimelineId, u64, u64, usize)> = Vec::new();
    let mut missing: BTreeMap<TimelineId, BTreeSet<usize>> = BTreeMap::new();
    for (i, b) in order.iter().enumerate() {
        let size = b.wal_segment_size;
        let runs = runs_by_size
            .entry(size.bytes())
            .or_insert_with(|| archive.runs(size));
        let start = b.start_segment().pos();
        let limit = clusters.boundary_above(start).map(|p| p.number(size));
        let mut one = check_backup(b, &catalog.histories, runs, limit, &catalog.holes);
        // Retention keeps a permanent backup's WAL from its start to its stop
        // only, once a newer backup of its cluster exists, and records what
        // it removes; archives of a cairn that kept no record are held to the
        // same rule, from its start to its stop.
        let newer = order[i + 1..]
            .iter()
            .any(|n| n.system_identifier == b.system_identifier);
        if b.permanent && newer && !one.holes.is_empty() {
            let stop = Segment::containing(b.timeline, b.stop_lsn, size).number(size) + 1;
            one = check_backup(b, &catalog.histories, runs, Some(stop), &catalog.holes);
        }
        for &(tl, lo, hi) in &one.holes {
            holes.push((size.bytes(), tl, lo, hi, i));
        }
        for &tl in &one.check.missing_histories {
            missing.entry(tl).or_default().insert(i);
        }
        backups.push(one.check);
    }

    let names = |ix: BTreeSet<usize>| -> Vec<String> {
        ix.into_iter().map(|i| order[i].name.clone()).collect()
    };
    let gaps = merge(holes)
        .into_iter()
        .map(|(bytes, tl, lo, hi, needed)| {
            let size = SegmentSize::new(bytes).expect("a size that was valid");
            Gap {
                timeline: tl,
                first: Segment::from_number(tl, lo, size),
                last: Segment::from_number(tl, hi, size),
                segments: hi - lo + 1,
                needed_by: names(needed),
            }
        })
        .collect::<Vec<_>>();
    let missing_histories: Vec<MissingHistory> = missing
        .into_iter()
        .map(|(tl, needed)| MissingHistory {
            timeline: tl,
            file: WalFileName::History(tl).to_string(),
            needed_by: names(needed),
        })
        .collect();
    Report {
        ok: gaps.is_empty() && missing_histories.is_empty(),
        backups,
        gaps,
        missing_histories,
    }
}

/// The whole segments of the archive (not `.partial`s), per timeline, as
/// sorted positions.
struct Archive {
    by_timeline: BTreeMap<TimelineId, Vec<SegmentPos>>,
}

impl Archive {
    fn index(catalog: &Catalog) -> Archive {
        let mut by_timeline: BTreeMap<TimelineId, Vec<SegmentPos>> = BTreeMap::new();
        for w in &catalog.wal {
            if let WalFileName::Segment(s) = w.name {
                by_timeline.entry(s.timeline).or_default().push(s.pos());
            }
        }
        for v in by_timeline.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        Archive { by_timeline }
    }

    /// The runs of present segment numbers for one segment size. Names that
    /// cannot exist at this size (segment field too large) are left out.
    fn runs(&self, size: SegmentSize) -> Runs {
        let by_timeline = self
            .by_timeline
            .iter()
            .map(|(&tl, positions)| {
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for &p in positions.iter().filter(|p| p.fits(size)) {
                    let n = p.number(size);
                    match runs.last_mut() {
                        Some(r) if r.1 + 1 == n => r.1 = n,
                        _ => runs.push((n, n)),
                    }
                }
                (tl, runs)
            })
            .collect();
        Runs { by_timeline }
    }
}

/// Maximal runs `(first, last)` of consecutive segment numbers present, per
/// timeline, sorted.
struct Runs {
    by_timeline: BTreeMap<TimelineId, Vec<(u64, u64)>>,
}

impl Runs {
    fn of(&self, tl: TimelineId) -> &[(u64, u64)] {
        self.by_timeline.get(&tl).map_or(&[], Vec::as_slice)
    }

    /// The highest segment number of `tl` present in `lo..=hi`.
    fn newest_in(&self, tl: TimelineId, lo: u64, hi: u64) -> Option<u64> {
        let r = self.of(tl);
        let k = r.partition_point(|&(first, _)| first <= hi);
        let (_, last) = *r.get(k.checked_sub(1)?)?;
        (last >= lo).then_some(last.min(hi))
    }

    /// The runs of `lo..=hi` missing on `tl`, appended to `out`.
    fn holes_in(&self, tl: TimelineId, lo: u64, hi: u64, out: &mut Vec<(TimelineId, u64, u64)>) {
        let r = self.of(tl);
        let mut cursor = lo;
        for &(first, last) in &r[r.partition_point(|&(_, last)| last < lo)..] {
            if first > hi || cursor > hi {
                break;
            }
            if first > cursor {
                out.push((tl, cursor, first - 1));
            }
            cursor = cursor.max(last + 1);
        }
        if cursor <= hi {
            out.push((tl, cursor, hi));
        }
    }
}

/// One timeline of a backup's path and the number of the segment holding the
/// switchpoint where the path leaves it (`None` on the last).
struct Leg {
    tl: TimelineId,
    leave: Option<u64>,
}

struct BackupOutcome {
    check: BackupCheck,
    holes: Vec<(TimelineId, u64, u64)>,
}

/// `limit`: the first segment number of the next cluster's WAL, if any.
fn check_backup(
    b: &BackupInfo,
    histories: &BTreeMap<TimelineId, TimelineHistory>,
    runs: &Runs,
    limit: Option<u64>,
    recorded: &Holes,
) -> BackupOutcome {
    let size = b.wal_segment_size;
    let number = |lsn: Lsn| Segment::containing(b.timeline, lsn, size).number(size);
    let start = number(b.start_lsn);
    // The segment holding the last byte before the stop LSN (PostgreSQL's
    // XLByteToPrevSeg, as pg_backup_stop waits for).
    let stop = number(Lsn(b.stop_lsn.0.saturating_sub(1))).max(start);
    let cap = limit.map_or(u64::MAX, |l| l.saturating_sub(1)).max(stop);

    // The newest timeline that reaches the backup, branching inside its cluster's WAL.
    let mut target: Option<&TimelineHistory> = None;
    if let Some(above) = b.timeline.0.checked_add(1) {
        for h in histories.range(TimelineId(above)..).map(|(_, h)| h) {
            if h.reaches(b.timeline, b.start_lsn)
                && h.switchpoint(b.timeline)
                    .is_some_and(|sp| number(sp) <= cap)
            {
                target = Some(h);
            }
        }
    }
    let legs: Vec<Leg> = match target {
        None => vec![Leg {
            tl: b.timeline,
            leave: None,
        }],
        Some(h) => {
            let from = h
                .entries
                .iter()
                .position(|e| e.parent == b.timeline)
                .expect("a history that reaches the backup lists its timeline");
            h.entries[from..]
                .iter()
                .map(|e| Leg {
                    tl: e.parent,
                    leave: Some(number(e.switchpoint)),
                })
                .chain([Leg {
                    tl: h.timeline,
                    leave: None,
                }])
                .collect()
        }
    };
    let newest_tl = legs.last().expect("a path has a timeline").tl;

    // Which timeline serves which segment numbers: each up to the segment before
    // the one holding its switchpoint (the switch segment is the new timeline's).
    let mut ranges: Vec<(TimelineId, u64, u64)> = Vec::new();
    let mut cursor = start;
    for leg in &legs {
        let hi = match leg.leave {
            Some(s) => s.checked_sub(1).map(|h| h.min(cap)),
            None => Some(cap),
        };
        if let Some(hi) = hi
            && cursor <= hi
        {
            ranges.push((leg.tl, cursor, hi));
        }
        if let Some(s) = leg.leave {
            cursor = cursor.max(s);
        }
    }
    if ranges.is_empty() {
        // Only with switchpoints that go backwards, which PostgreSQL never writes.
        ranges.push((b.timeline, start, cap));
    }

    let end = ranges
        .iter()
        .filter_map(|&(tl, lo, hi)| runs.newest_in(tl, lo, hi))
        .max()
        .unwrap_or(stop)
        .max(stop);
    let mut holes = Vec::new();
    for &(tl, lo, hi) in &ranges {
        let hi = hi.min(end);
        if lo <= hi {
            runs.holes_in(tl, lo, hi, &mut holes);
        }
    }
    // A restore stops at the first missing segment. After the stop LSN, one
    // that retention recorded as removed on purpose is where this backup's
    // restores end, not a gap (a permanent backup kept with its own WAL
    // only); before it, nothing excuses a missing segment.
    let mut end = end;
    let mut removed_from = None;
    if let Some(k) = holes.iter().position(|&(tl, lo, _)| {
        lo > stop
            && recorded.covers(
                Segment::from_number(tl, lo, size),
                Some(b.system_identifier),
            )
    }) {
        let (tl, lo, _) = holes[k];
        removed_from = Some(Segment::from_number(tl, lo, size));
        end = lo - 1;
        holes.truncate(k);
    }
    let missing_segments = holes.iter().map(|&(_, lo, hi)| hi - lo + 1).sum();

    // The backup's own history is not needed: without it PostgreSQL assumes
    // the timeline has no parents, which is all a restore from here needs.
    let mut missing_histories: BTreeSet<TimelineId> = legs[1..]
        .iter()
        .map(|l| l.tl)
        .filter(|tl| !histories.contains_key(tl))
        .collect();
    // PostgreSQL's probe for the newest timeline stops at the first missing
    // history, so every one up to the newest timeline this backup could reach
    // is needed; a timeline with WAL after the backup's start but no history
    // at all may be such a descendant.
    let lost = runs
        .by_timeline
        .keys()
        .copied()
        .filter(|tl| *tl > newest_tl && !histories.contains_key(tl))
        .filter(|&tl| runs.newest_in(tl, start, cap).is_some())
        .max();
    let reach = lost.unwrap_or(newest_tl).max(newest_tl);
    let mut probe = b.timeline.0;
    while probe < reach.0 {
        probe += 1;
        if !histories.contains_key(&TimelineId(probe)) {
            missing_histories.insert(TimelineId(probe));
            break;
        }
    }

    let at = |n: u64| {
        let tl = ranges
            .iter()
            .find(|&&(_, lo, hi)| lo <= n && n <= hi)
            .or(ranges.last())
            .map_or(b.timeline, |r| r.0);
        Segment::from_number(tl, n, size)
    };
    let status = if !holes.is_empty() {
        Status::Gap
    } else if !missing_histories.is_empty() {
        Status::MissingHistory
    } else {
        Status::Ok
    };
    BackupOutcome {
        check: BackupCheck {
            name: b.name.clone(),
            timelines: legs.iter().map(|l| l.tl).collect(),
            first: at(ranges[0].1),
            newest: at(end),
            status,
            missing_segments,
            removed_from,
            missing_histories: missing_histories.into_iter().collect(),
            path: ranges
                .iter()
                .filter(|&&(_, lo, _)| lo <= end)
                .map(|&(tl, lo, hi)| {
                    (
                        Segment::from_number(tl, lo, size),
                        Segment::from_number(tl, hi.min(end), size),
                    )
                })
                .collect(),
        },
        holes,
    }
}

type MergedGap = (u64, TimelineId, u64, u64, BTreeSet<usize>);

/// Merges the backups' missing runs into maximal runs per segment size and
/// timeline, ordered by position, then timeline.
fn merge(mut holes: Vec<(u64, TimelineId, u64, u64, usize)>) -> Vec<MergedGap> {
    holes.sort_unstable_by_key(|&(size, tl, lo, hi, i)| (size, tl, lo, hi, i));
    let mut out: Vec<MergedGap> = Vec::new();
    for (size, tl, lo, hi, i) in holes {
        match out.last_mut() {
            Some(g) if g.0 == size && g.1 == tl && lo <= g.3.saturating_add(1) => {
                g.3 = g.3.max(hi);
                g.4.insert(i);
            }
            _ => out.push((size, tl, lo, hi, BTreeSet::from([i]))),
        }
    }
    out.sort_by_key(|g| {
        let size = SegmentSize::new(g.0).expect("a size that was valid");
        (Segment::from_number(g.1, g.2, size).pos(), g.1)
    });
    out
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.ok
    }

    /// A one-line summary of what is wrong, for the error exit; `None` when
    /// nothing is.
    pub fn problem(&self) -> Option<String> {
        if self.is_ok() {
            return None;
        }
        let mut parts = Vec::new();
        if !self.gaps.is_empty() {
            let listed: Vec<String> = self
                .gaps
                .iter()
                .take(SHOWN)
                .map(|g| {
                    format!(
                        "timeline {} {} (needed by {})",
                        g.timeline.0,
                        span(g.first, g.last),
                        some_names(&g.needed_by)
                    )
                })
                .collect();
            parts.push(format!(
                "the archive has {}: {}{}",
                plural(self.gaps.len(), "gap", "gaps"),
                listed.join(", "),
                more(self.gaps.len())
            ));
        }
        if !self.missing_histories.is_empty() {
            let listed: Vec<String> = self
                .missing_histories
                .iter()
                .take(SHOWN)
                .map(|m| format!("{} (needed by {})", m.file, some_names(&m.needed_by)))
                .collect();
            let subject = if parts.is_empty() {
                "the archive lacks"
            } else {
                "it lacks"
            };
            parts.push(format!(
                "{subject} {}{}",
                listed.join(", "),
                more(self.missing_histories.len())
            ));
        }
        parts.push("restores from these backups cannot reach the newest WAL".to_string());
        Some(parts.join("; "))
    }
}

/// Items listed in full in a one-line summary.
const SHOWN: usize = 3;

fn more(n: usize) -> String {
    if n > SHOWN {
        format!(" and {} more", n - SHOWN)
    } else {
        String::new()
    }
}

fn some_names(names: &[String]) -> String {
    let shown = names[..names.len().min(SHOWN)].join(", ");
    format!("{shown}{}", more(names.len()))
}

fn span(first: Segment, last: Segment) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}..{last}")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backups.is_empty() {
            return writeln!(f, "No complete backup in the archive: nothing to verify.");
        }
        for b in &self.backups {
            let path: Vec<String> = b.timelines.iter().map(|t| t.0.to_string()).collect();
            let mut status = match b.status {
                Status::Ok => "ok".to_string(),
                Status::Gap => format!(
                    "gap ({} missing)",
                    plural(b.missing_segments as usize, "segment", "segments")
                ),
                Status::MissingHistory => String::new(),
            };
            for tl in &b.missing_histories {
                if !status.is_empty() {
                    status.push_str(", ");
                }
                status.push_str(&format!("missing {}", WalFileName::History(*tl)));
            }
            if let Some(r) = b.removed_from {
                status.push_str(&format!(" (retention removed the WAL from {r} on)"));
            }
            writeln!(
                f,
                "{} timeline {}: {} .. {} {status}",
                b.name,
                path.join("→"),
                b.first,
                b.newest
            )?;
        }
        for g in &self.gaps {
            writeln!(
                f,
                "gap on timeline {}: {} ({}), needed by {}",
                g.timeline.0,
                span(g.first, g.last),
                plural(g.segments as usize, "segment", "segments"),
                g.needed_by.join(", ")
            )?;
        }
        for m in &self.missing_histories {
            writeln!(
                f,
                "missing {} (timeline {}), needed by {}",
                m.file,
                m.timeline.0,
                m.needed_by.join(", ")
            )?;
        }
        // What is wrong is summed up by `problem`, for the error exit.
        if self.is_ok() {
            writeln!(
                f,
                "OK: {} can be restored and rolled forward to the newest archived WAL.",
                if self.backups.len() == 1 {
                    "the backup".to_string()
                } else {
                    format!("all {} backups", self.backups.len())
                }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    // The planner's fixtures: the same synthetic archives.
    use crate::archive::fixtures::{catalog, full, seg, segs};

    /// A full backup starting in segment `n` and stopping in segment `n + 1`,
    /// `n` hours after a fixed time (so later segments mean later backups).
    fn backup(tl: u32, n: u64) -> BackupInfo {
        full(
            tl,
            n,
            datetime!(2024-05-10 00:00 UTC) + Duration::hours(n as i64),
        )
    }

    /// (timeline, first, last, segments, needed_by) of each gap.
    fn gaps(r: &Report) -> Vec<(u32, String, String, u64, Vec<String>)> {
        r.gaps
            .iter()
            .map(|g| {
                (
                    g.timeline.0,
                    g.first.to_string(),
                    g.last.to_string(),
                    g.segments,
                    g.needed_by.clone(),
                )
            })
            .collect()
    }

    fn tls(v: &[u32]) -> Vec<TimelineId> {
        v.iter().map(|&t| TimelineId(t)).collect()
    }

    /// Timeline 2 branches off timeline 1 inside segment 5.
    const TL2_AT_5: &str = "1\t0/5000100\tno recovery target specified\n";

    #[test]
    fn continuous_archive_is_ok() {
        let b = backup(1, 3);
        let r = check(&catalog(&[&b], &[segs(1, 1..=9)], &[]));
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.problem(), None);
        assert!(r.gaps.is_empty() && r.missing_histories.is_empty());
        let c = &r.backups[0];
        assert_eq!(c.name, b.name);
        assert_eq!(c.timelines, tls(&[1]));
        assert_eq!(c.first.to_string(), seg(1, 3));
        assert_eq!(c.newest.to_string(), seg(1, 9));
        assert_eq!((c.status, c.missing_segments), (Status::Ok, 0));
        assert_eq!(
            r.to_string().lines().next().unwrap(),
            format!("{} timeline 1: {} .. {} ok", b.name, seg(1, 3), seg(1, 9))
        );
    }

    #[test]
    fn one_deleted_segment_is_one_gap() {
        let b = backup(1, 3);
        let wal = segs(1, (3..=9).filter(|&n| n != 6));
        let r = check(&catalog(&[&b], &[wal], &[]));
        assert!(!r.is_ok());
        assert_eq!(
            gaps(&r),
            vec![(1, seg(1, 6), seg(1, 6), 1, vec![b.name.clone()])]
        );
        assert_eq!(r.backups[0].status, Status::Gap);
        assert_eq!(r.backups[0].missing_segments, 1);
        let p = r.problem().unwrap();
        assert_eq!(
            p,
            format!(
                "the archive has 1 gap: timeline 1 {} (needed by {}); restores from these backups cannot reach the newest WAL",
                seg(1, 6),
                b.name
            )
        );
        assert!(!p.contains('\n'));

        // A run of three, and the backup's first segment.
        let wal = segs(1, [4, 8, 9]);
        let r = check(&catalog(&[&b], &[wal], &[]));
        assert_eq!(
            gaps(&r),
            vec![
                (1, seg(1, 3), seg(1, 3), 1, vec![b.name.clone()]),
                (1, seg(1, 5), seg(1, 7), 3, vec![b.name.clone()]),
            ]
        );
        assert_eq!(r.backups[0].missing_segments, 4);
        assert!(r.to_string().contains(&format!(
            "gap on timeline 1: {}..{} (3 segments), needed by {}",
            seg(1, 5),
            seg(1, 7),
            b.name
        )));
    }

    #[test]
    fn follows_a_timeline_switch() {
        let b = backup(1, 3);
        let h = [(2, TL2_AT_5)];
        let r = check(&catalog(&[&b], &[segs(1, 3..=5), segs(2, 5..=8)], &h));
        assert!(r.is_ok(), "{r}");
        let c = &r.backups[0];
        assert_eq!(c.timelines, tls(&[1, 2]));
        assert_eq!(c.first.to_string(), seg(1, 3));
        assert_eq!(c.newest.to_string(), seg(2, 8));
        assert_eq!(
            r.to_string().lines().next().unwrap(),
            format!("{} timeline 1→2: {} .. {} ok", b.name, seg(1, 3), seg(2, 8))
        );

        // Segment 6 exists only on timeline 1, which recovery has left.
        let r = check(&catalog(&[&b], &[segs(1, 3..=9), segs(2, [5, 7, 8])], &h));
        assert_eq!(
            gaps(&r),
            vec![(2, seg(2, 6), seg(2, 6), 1, vec![b.name.clone()])]
        );

        // The switch segment is read from the new timeline: the old one's copy
        // is not needed...
        let r = check(&catalog(&[&b], &[segs(1, 3..=4), segs(2, 5..=8)], &h));
        assert!(r.is_ok(), "{r}");
        // ...nor enough, whole or partial: the new timeline's first records are
        // only in the new timeline's copy.
        for old in [seg(1, 5), format!("{}.partial", seg(1, 5))] {
            let wal = [segs(1, 3..=4), vec![old], segs(2, 6..=8)];
            let r = check(&catalog(&[&b], &wal, &h));
            assert_eq!(
                gaps(&r),
                vec![(2, seg(2, 5), seg(2, 5), 1, vec![b.name.clone()])],
                "{r}"
            );
        }
    }

    #[test]
    fn right_after_a_promotion_the_old_timeline_is_the_head() {
        // The new timeline's first segment is still being written.
        let b = backup(1, 3);
        let wal = [segs(1, 3..=4), vec![format!("{}.partial", seg(1, 5))]];
        let r = check(&catalog(&[&b], &wal, &[(2, TL2_AT_5)]));
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.backups[0].timelines, tls(&[1, 2]));
        assert_eq!(r.backups[0].newest.to_string(), seg(1, 4));
    }

    #[test]
    fn backup_on_the_new_timeline_is_checked_only_there() {
        let old = backup(1, 3);
        let new = backup(2, 6);
        // Timeline 1 has lost segment 4 and went on past the switch; neither
        // matters to the backup taken on timeline 2.
        let wal = [segs(1, [3, 5, 6, 7]), segs(2, 5..=8)];
        let r = check(&catalog(&[&old, &new], &wal, &[(2, TL2_AT_5)]));
        let c = &r.backups[1];
        assert_eq!(c.name, new.name);
        assert_eq!(c.timelines, tls(&[2]));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(c.first.to_string(), seg(2, 6));
        assert_eq!(c.newest.to_string(), seg(2, 8));
        assert_eq!(
            gaps(&r),
            vec![(1, seg(1, 4), seg(1, 4), 1, vec![old.name.clone()])]
        );
    }

    #[test]
    fn timelines_that_branched_before_the_backup_are_not_followed() {
        // Timeline 2 is a restore to a point in segment 5; the backup started
        // on timeline 1 later.
        let b = backup(1, 7);
        let wal = [segs(1, 3..=10), segs(2, 5..=20)];
        let r = check(&catalog(&[&b], &wal, &[(2, TL2_AT_5)]));
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.backups[0].timelines, tls(&[1]));
        assert_eq!(r.backups[0].newest.to_string(), seg(1, 10));
    }

    #[test]
    fn missing_histories_are_reported() {
        let b1 = backup(1, 3);
        // Timeline 2's segments are there, its history is not: recovery from
        // timeline 1 cannot find it.
        let wal = [segs(1, 3..=5), segs(2, 5..=8)];
        let r = check(&catalog(&[&b1], &wal, &[]));
        assert!(!r.is_ok());
        assert!(r.gaps.is_empty());
        assert_eq!(
            r.missing_histories,
            vec![MissingHistory {
                timeline: TimelineId(2),
                file: "00000002.history".to_string(),
                needed_by: vec![b1.name.clone()],
            }]
        );
        assert_eq!(r.backups[0].status, Status::MissingHistory);
        assert_eq!(r.backups[0].missing_histories, tls(&[2]));
        let p = r.problem().unwrap();
        assert!(
            p.starts_with(&format!(
                "the archive lacks 00000002.history (needed by {})",
                b1.name
            )),
            "{p}"
        );

        // Together with a gap.
        let wal = [segs(1, [3, 5]), segs(2, 5..=8)];
        assert_eq!(
            check(&catalog(&[&b1], &wal, &[])).problem().unwrap(),
            format!(
                "the archive has 1 gap: timeline 1 {} (needed by {n}); it lacks \
                 00000002.history (needed by {n}); restores from these backups cannot \
                 reach the newest WAL",
                seg(1, 4),
                n = b1.name
            )
        );
        let wal = [segs(1, 3..=5), segs(2, 5..=8)];

        // With a backup taken on timeline 2 too: the history is needed by the
        // older backup only.
        let b2 = backup(2, 6);
        let r = check(&catalog(&[&b1, &b2], &wal, &[]));
        assert_eq!(r.missing_histories.len(), 1);
        assert_eq!(r.missing_histories[0].needed_by, vec![b1.name.clone()]);
        assert_eq!(r.backups[1].status, Status::Ok);
        let r = check(&catalog(&[&b2], &[segs(2, 6..=8)], &[]));
        assert!(r.is_ok(), "{r}");

        // Timeline 2 between 1 and 3 on the path.
        let tl3 = "1\t0/5000100\tx\n2\t0/7000100\ty\n";
        let wal = [segs(1, 3..=4), segs(2, 5..=6), segs(3, 7..=9)];
        let r = check(&catalog(&[&b1], &wal, &[(3, tl3)]));
        assert!(r.gaps.is_empty(), "{r}");
        assert_eq!(r.backups[0].timelines, tls(&[1, 2, 3]));
        assert_eq!(r.missing_histories.len(), 1);
        assert_eq!(r.missing_histories[0].timeline, TimelineId(2));

        // Timeline 2 abandoned, 3 branched from 1: PostgreSQL's probe for the
        // newest timeline still stops at the missing 00000002.history.
        let wal = [segs(1, 3..=4), segs(3, 5..=9)];
        let r = check(&catalog(&[&b1], &wal, &[(3, "1\t0/5000100\tx\n")]));
        assert!(r.gaps.is_empty(), "{r}");
        assert_eq!(r.backups[0].timelines, tls(&[1, 3]));
        assert_eq!(r.missing_histories[0].timeline, TimelineId(2));
        assert!(r.to_string().contains(&format!(
            "{} timeline 1→3: {} .. {} missing 00000002.history",
            b1.name,
            seg(1, 3),
            seg(3, 9)
        )));
    }

    #[test]
    fn no_backups_is_ok() {
        let r = check(&catalog(&[], &[segs(1, [1, 2, 5])], &[]));
        assert!(r.is_ok());
        assert!(r.backups.is_empty() && r.gaps.is_empty());
        assert_eq!(r.problem(), None);
        assert_eq!(
            r.to_string(),
            "No complete backup in the archive: nothing to verify.\n"
        );
        assert!(check(&Catalog::default()).is_ok());
    }

    #[test]
    fn backups_sharing_a_gap_get_one_gap() {
        let b1 = backup(1, 3);
        let b2 = backup(1, 5);
        let wal = segs(1, (3..=9).filter(|&n| n != 7));
        let r = check(&catalog(&[&b2, &b1], &[wal], &[]));
        let both = vec![b1.name.clone(), b2.name.clone()];
        assert_eq!(gaps(&r), vec![(1, seg(1, 7), seg(1, 7), 1, both.clone())]);

        // The later backup needs only part of the hole: still one gap.
        let wal = segs(1, [3, 7, 8]);
        let r = check(&catalog(&[&b1, &b2], &[wal], &[]));
        assert_eq!(gaps(&r), vec![(1, seg(1, 4), seg(1, 6), 3, both)]);
        assert_eq!(r.backups[0].missing_segments, 3);
        assert_eq!(r.backups[1].missing_segments, 2);
    }

    #[test]
    fn backup_without_its_wal_cannot_become_consistent() {
        let b = backup(1, 3);
        let r = check(&catalog(&[&b], &[segs(1, 1..=2)], &[]));
        assert_eq!(
            gaps(&r),
            vec![(1, seg(1, 3), seg(1, 4), 2, vec![b.name.clone()])]
        );
        assert_eq!(r.backups[0].newest.to_string(), seg(1, 4));
    }

    #[test]
    fn each_cluster_is_held_to_its_own_wal() {
        // pg_upgrade: the new cluster continues the LSN sequence, after a hole.
        let old = backup(1, 3);
        let mut new = backup(1, 20);
        new.system_identifier = crate::pg::wal::SystemId(7400000000000000000);
        let wal = [segs(1, 3..=10), segs(1, 20..=25)];
        let r = check(&catalog(&[&old, &new], &wal, &[]));
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.backups[0].newest.to_string(), seg(1, 10));
        assert_eq!(r.backups[1].newest.to_string(), seg(1, 25));
    }

    #[test]
    fn json_shape() {
        let b = backup(1, 3);
        let wal = segs(1, (3..=9).filter(|&n| n != 4));
        let r = check(&catalog(&[&b], &[wal], &[(2, TL2_AT_5)]));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["backups"][0]["name"], b.name.as_str());
        assert_eq!(v["backups"][0]["timelines"], serde_json::json!([1, 2]));
        assert_eq!(v["backups"][0]["first"], seg(1, 3).as_str());
        assert_eq!(v["backups"][0]["status"], "gap");
        assert_eq!(
            v["gaps"],
            serde_json::json!([{
                "timeline": 1,
                "first": seg(1, 4).as_str(),
                "last": seg(1, 4).as_str(),
                "segments": 1,
                "needed_by": [b.name.as_str()],
            }])
        );
        assert_eq!(v["missing_histories"], serde_json::json!([]));
    }

    #[test]
    fn large_archive() {
        // 100,000 segments across a segment-number wrap of the name's middle
        // field, 200 backups, one hole.
        let backups: Vec<BackupInfo> = (0..200).map(|k| backup(1, 10 + k * 400)).collect();
        let wal = segs(1, (10..100_010).filter(|&n| n != 99_000));
        let refs: Vec<&BackupInfo> = backups.iter().collect();
        let c = catalog(&refs, &[wal], &[]);
        let started = std::time::Instant::now();
        let r = check(&c);
        let took = started.elapsed();
        eprintln!("checked 100,000 segments and 200 backups in {took:?}");
        assert_eq!(r.gaps.len(), 1);
        assert_eq!(r.gaps[0].first.to_string(), seg(1, 99_000));
        assert_eq!(r.gaps[0].needed_by.len(), 200);
        assert!(
            r.backups
                .iter()
                .all(|b| b.newest.to_string() == seg(1, 100_009))
        );
    }
}
