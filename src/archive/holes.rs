//! The record of intentional holes: which WAL segments cairn's own retention
//! removed, per cluster and timeline. A segment missing from the archive is a
//! *gap* (recovery must stop, not promote) unless this record covers it; a
//! hole that nobody recorded is always a gap.
//!
//! Retention writes a new record, holding everything recorded before plus
//! what it is about to remove, *before* it removes anything, then retires the
//! records it merged. Records are immutable objects under `meta/holes/`, so
//! two deletes running at once each write their own and readers take the
//! union; a record written by a delete that died before removing anything
//! claims holes where segments still are, which is harmless (a present
//! segment is simply fetched). Format: `docs/FORMAT.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ArchiveError, keys, manifest::rfc3339, objects};
use crate::Context;
use crate::pg::wal::{Segment, SegmentPos, SystemId, TimelineId};
use crate::storage::ObjectKey;

/// Version of the record layout; readers refuse newer ones.
pub const RECORD_VERSION: u32 = 1;

/// A run of segments of one timeline removed on purpose, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hole {
    /// The cluster whose WAL it was, when retention could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<SystemId>,
    pub timeline: TimelineId,
    pub first: Segment,
    pub last: Segment,
}

/// One stored record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    record_version: u32,
    #[serde(with = "rfc3339")]
    written: OffsetDateTime,
    holes: Vec<Hole>,
}

/// Every recorded hole, merged, and the records they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holes {
    /// Per timeline, sorted by first position, not overlapping.
    by_timeline: BTreeMap<TimelineId, Vec<Run>>,
    /// The record objects read (retired once a merged record replaces them).
    pub records: Vec<ObjectKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: SegmentPos,
    last: SegmentPos,
    system: Option<SystemId>,
}

impl Holes {
    /// Adds a hole, merging it with overlapping or directly adjacent ones of
    /// the same timeline and cluster.
    pub fn add(&mut self, h: Hole) {
        if h.first.timeline != h.timeline || h.last.timeline != h.timeline || h.last < h.first {
            return;
        }
        let runs = self.by_timeline.entry(h.timeline).or_default();
        runs.push(Run {
            first: h.first.pos(),
            last: h.last.pos(),
            system: h.system_identifier,
        });
        runs.sort_by_key(|r| (r.first, r.last));
        let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
        for r in runs.drain(..) {
            match merged.last_mut() {
                Some(m)
                    if m.system == r.system
                        && (r.first <= m.last || r.first.directly_follows(m.last)) =>
                {
                    m.last = m.last.max(r.last)
                }
                _ => merged.push(r),
            }
        }
        *runs = merged;
    }

    /// Whether retention removed `segment` on purpose. With `system` known
    /// (the restoring cluster's identifier), a hole recorded for another
    /// cluster does not count.
    pub fn covers(&self, segment: Segment, system: Option<SystemId>) -> bool {
        let p = segment.pos();
        self.by_timeline.get(&segment.timeline).is_some_and(|runs| {
            runs.iter().any(|r| {
                r.first <= p
                    && p <= r.last
                    && (r.system.is_none() || system.is_none() || r.system == system)
            })
        })
    }

    /// The holes, by timeline and position.
    pub fn list(&self) -> Vec<Hole> {
        self.by_timeline
            .iter()
            .flat_map(|(&timeline, runs)| {
                runs.iter().map(move |r| Hole {
                    system_identifier: r.system,
                    timeline,
                    first: Segment::at(timeline, r.first),
                    last: Segment::at(timeline, r.last),
                })
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_timeline.is_empty()
    }
}

/// Reads every record under `meta/holes/`.
pub async fn load(ctx: &Context) -> Result<Holes, ArchiveError> {
    let listed = ctx.storage.list(keys::HOLES, None, None).await?;
    let mut holes = Holes::default();
    for o in listed {
        if keys::classify(&o.key) != keys::Listed::HoleRecord {
            continue;
        }
        // Retired by a concurrent delete a moment ago: its holes are in the
        // record that replaced it.
        let Some(bytes) = objects::read_plain(ctx, &o.key, None).await? else {
            continue;
        };
        let object = keys::object_name(ctx.storage.location(), &o.key);
        let record = parse(&bytes, &object)?;
        for h in record.holes {
            holes.add(h);
        }
        holes.records.push(o.key);
    }
    Ok(holes)
}

fn parse(bytes: &[u8], object: &str) -> Result<Record, ArchiveError> {
    #[derive(Deserialize)]
    struct Version {
        record_version: u32,
    }
    let bad = |e: String| ArchiveError::BadRecord {
        object: object.to_string(),
        detail: e,
    };
    let v: Version = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if v.record_version > RECORD_VERSION {
        return Err(bad(format!(
            "record version {} is newer than this cairn understands; upgrade cairn",
            v.record_version
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))
}

/// Stores `holes` (everything recorded so far plus what is about to be
/// removed) as a new record; the records it merged can be retired after.
pub async fn write(ctx: &Context, holes: &Holes) -> Result<ObjectKey, ArchiveError> {
    let now = OffsetDateTime::now_utc();
    let record = Record {
        record_version: RECORD_VERSION,
        written: now,
        holes: holes.list(),
    };
    // Unique per writer: time, then host and process.
    let id = format!(
        "{}-{}-{}",
        rfc3339::format(now).replace([':', '-'], ""),
        super::hostname(),
        std::process::id()
    );
    let key = keys::hole_record(&id)?;
    let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
    objects::write_plain(ctx, &key, &json, crate::storage::PutMode::CreateIfAbsent).await?;
    Ok(key)
}

/// Deletes records that a newer one (`kept`) has merged.
pub async fn retire(
    ctx: &Context,
    old: &[ObjectKey],
    kept: &ObjectKey,
) -> Result<(), ArchiveError> {
    let old: Vec<ObjectKey> = old.iter().filter(|k| *k != kept).cloned().collect();
    if !old.is_empty() {
        ctx.storage.delete_many(&old).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(s: &str) -> Segment {
        s.parse().unwrap()
    }

    fn hole(first: &str, last: &str, system: Option<u64>) -> Hole {
        let (first, last) = (seg(first), seg(last));
        Hole {
            system_identifier: system.map(SystemId),
            timeline: first.timeline,
            first,
            last,
        }
    }

    #[test]
    fn merges_adjacent_and_overlapping_runs_of_one_cluster() {
        let mut h = Holes::default();
        h.add(hole(
            "000000010000000000000005",
            "00000001000000000000000A",
            Some(7),
        ));
        h.add(hole(
            "00000001000000000000000B",
            "000000010000000000000010",
            Some(7),
        ));
        h.add(hole(
            "000000010000000000000008",
            "00000001000000000000000C",
            Some(7),
        ));
        h.add(hole(
            "000000020000000000000003",
            "000000020000000000000003",
            None,
        ));
        assert_eq!(
            h.list(),
            vec![
                hole(
                    "000000010000000000000005",
                    "000000010000000000000010",
                    Some(7)
                ),
                hole("000000020000000000000003", "000000020000000000000003", None),
            ]
        );
        assert!(h.covers(seg("00000001000000000000000C"), Some(SystemId(7))));
        assert!(h.covers(seg("00000001000000000000000C"), None));
        assert!(!h.covers(seg("00000001000000000000000C"), Some(SystemId(8))));
        assert!(!h.covers(seg("000000010000000000000011"), None));
        assert!(!h.covers(seg("000000030000000000000005"), None));
        assert!(h.covers(seg("000000020000000000000003"), Some(SystemId(8))));
    }

    #[test]
    fn records_round_trip_and_refuse_newer_versions() {
        let r = Record {
            record_version: RECORD_VERSION,
            written: time::macros::datetime!(2026-12-03 12:00 UTC),
            holes: vec![hole(
                "000000010000000000000005",
                "00000001000000000000000A",
                Some(7),
            )],
        };
        let json = serde_json::to_vec(&r).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains("\"first\":\"000000010000000000000005\""),
            "{text}"
        );
        assert_eq!(parse(&json, "x").unwrap().holes, r.holes);
        let newer = text.replace("\"record_version\":1", "\"record_version\":2");
        assert!(
            parse(newer.as_bytes(), "x")
                .unwrap_err()
                .to_string()
                .contains("upgrade cairn")
        );
    }
}
