//! Why a WAL file is not in the archive: the archive ends before it (normal
//! at the end of recovery), retention removed it on purpose (recorded in
//! [`super::holes`]), or it is a gap: later WAL on the way to the archive's
//! newest WAL exists, so recovery must stop rather than promote without it.
//!
//! Evidence of later WAL: a segment, `.partial` or `.backup` file of the same
//! timeline at a later position, or a newer timeline whose history leaves
//! this one after this segment (the newer timelines are found as PostgreSQL
//! finds them, probing `.history` files upward until one is missing). A
//! timeline begins part-way through the WAL, so on the same timeline only a
//! missing segment with an archived one before it counts.

use super::{ArchiveError, keys, timelines};
use crate::Context;
use crate::pg::wal::{Segment, SegmentSize, SystemId, TimelineId, WalFileName};

/// Why the archive lacks a WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Absence {
    /// Nothing later: the end of the archive (or a `.history` probe).
    End,
    /// Retention removed it on purpose.
    Removed,
    /// Later WAL exists on the path to the newest: `later` names it.
    Gap { later: String },
}

/// How many objects after the missing one a listing looks at.
const LOOK_AHEAD: usize = 64;

/// Explains why `name` is missing. `system`: the restoring cluster's
/// identifier, when known, so that a hole recorded for another cluster in
/// the same prefix does not excuse this one's.
pub async fn explain(
    ctx: &Context,
    name: &WalFileName,
    system: Option<SystemId>,
) -> Result<Absence, ArchiveError> {
    let Some(segment) = name.segment() else {
        return Ok(Absence::End);
    };
    let later = match later_on_timeline(ctx, segment).await? {
        Some(l) => Some(l),
        None => later_timeline(ctx, segment, system).await?,
    };
    let Some(later) = later else {
        return Ok(Absence::End);
    };
    if super::holes::load(ctx).await?.covers(segment, system) {
        return Ok(Absence::Removed);
    }
    Ok(Absence::Gap { later })
}

/// A later WAL file of `segment`'s timeline, when an earlier segment is
/// archived too (listing also proves the bucket or directory exists: "not
/// found" must mean the object, never a misconfigured archive).
async fn later_on_timeline(
    ctx: &Context,
    segment: Segment,
) -> Result<Option<String>, ArchiveError> {
    let prefix = keys::wal_timeline_prefix(segment.timeline);
    let after = keys::wal(&WalFileName::Segment(segment));
    let position = |o: &crate::storage::ObjectMeta| match keys::classify(&o.key) {
        keys::Listed::Wal(n) => match n {
            WalFileName::Segment(s) | WalFileName::Partial(s) | WalFileName::Backup(s, _) => {
                Some((s, n))
            }
            WalFileName::History(_) => None,
        },
        _ => None,
    };
    let listed = ctx
        .storage
        .list(&prefix, Some(after.as_str()), Some(LOOK_AHEAD))
        .await?;
    // A `.partial` of this very segment is where its timeline ended.
    let Some((_, later)) = listed
        .iter()
        .filter_map(position)
        .find(|(s, _)| *s > segment)
    else {
        return Ok(None);
    };
    let earlier = ctx
        .storage
        .list(&prefix, None, Some(LOOK_AHEAD))
        .await?
        .iter()
        .filter_map(position)
        .any(|(s, n)| s < segment && matches!(n, WalFileName::Segment(_)));
    Ok(earlier.then(|| later.to_string()))
}

/// A newer timeline whose history says this segment's timeline went on past
/// it, before the segment holding the switch (that one is read from the
/// newer timeline, as PostgreSQL does).
async fn later_timeline(
    ctx: &Context,
    segment: Segment,
    system: Option<SystemId>,
) -> Result<Option<String>, ArchiveError> {
    let mut newest = None;
    let mut probe = segment.timeline.0;
    while let Some(next) = probe.checked_add(1) {
        let tli = TimelineId(next);
        let key = keys::wal(&WalFileName::History(tli));
        if ctx.storage.head(&key).await?.is_none() {
            break;
        }
        newest = Some(tli);
        probe = next;
    }
    let Some(newest) = newest else {
        return Ok(None);
    };
    // The newest history lists every ancestor on its path.
    for tli in (segment.timeline.0 + 1..=newest.0).rev().map(TimelineId) {
        let Some(h) = timelines::read_history(ctx, tli).await? else {
            continue;
        };
        if let Some(sp) = h.switchpoint(segment.timeline) {
            // Below the switchpoint's 4 GiB unit the segment size does not
            // matter; within it, it is the cluster's (from its backups).
            let before = if u64::from(segment.log) != sp.0 >> 32 {
                u64::from(segment.log) < sp.0 >> 32
            } else {
                let size = cluster_segment_size(ctx, system).await?;
                segment.pos() < Segment::containing(segment.timeline, sp, size).pos()
            };
            return Ok(before.then(|| WalFileName::History(tli).to_string()));
        }
    }
    Ok(None)
}

/// The WAL segment size of the cluster `system` (or of any cluster in the
/// archive), from its backups' manifests; PostgreSQL's default without any.
async fn cluster_segment_size(
    ctx: &Context,
    system: Option<SystemId>,
) -> Result<SegmentSize, ArchiveError> {
    let manifests = super::catalog::list(ctx).await?;
    Ok(manifests
        .iter()
        .rev()
        .find(|m| system.is_none_or(|s| s == m.system_identifier))
        .map_or(SegmentSize::DEFAULT, |m| m.wal_segment_size))
}
