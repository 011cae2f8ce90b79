//! Synthetic catalogs for the tests of everything that reads the archive
//! (retention plans, wal-verify): backups, WAL and histories as a listing
//! would give them, deliberately out of order.

use time::{Duration, OffsetDateTime};

use super::{BackupInfo, Catalog, WalObject};
use crate::pg::timeline::TimelineHistory;
use crate::pg::wal::{Lsn, Segment, SegmentSize, SystemId, TimelineId};
use crate::storage::ObjectKey;

pub(crate) const SYS: SystemId = SystemId(7350389358112474135);
pub(crate) const SEG: u64 = 16 << 20;

pub(crate) fn seg(tl: u32, n: u64) -> String {
    Segment::from_number(TimelineId(tl), n, SegmentSize::DEFAULT).to_string()
}

pub(crate) fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

/// Parts listed before the manifest, as a key-ordered listing might give them.
pub(crate) fn objects(name: &str) -> Vec<ObjectKey> {
    ["control.tar", "manifest.json", "part_00001.tar"]
        .iter()
        .map(|f| key(&format!("basebackups/{name}/{f}")))
        .collect()
}

/// A full backup starting in segment `n` and stopping in segment `n + 1`.
pub(crate) fn full(tl: u32, n: u64, start: OffsetDateTime) -> BackupInfo {
    let name = format!("base_{}", seg(tl, n));
    BackupInfo {
        objects: objects(&name),
        name,
        system_identifier: SYS,
        timeline: TimelineId(tl),
        start_lsn: Lsn(n * SEG + 0x28),
        stop_lsn: Lsn((n + 1) * SEG + 0x100),
        start_time: start,
        finish_time: start + Duration::minutes(30),
        parent: None,
        permanent: false,
        wal_segment_size: SegmentSize::DEFAULT,
    }
}

pub(crate) fn delta(tl: u32, n: u64, start: OffsetDateTime, parent: &BackupInfo) -> BackupInfo {
    let mut b = full(tl, n, start);
    b.name = format!("base_{}_D_{}", seg(tl, n), &parent.name[5..29]);
    b.objects = objects(&b.name);
    b.parent = Some(parent.name.clone());
    b
}

pub(crate) fn permanent(mut b: BackupInfo) -> BackupInfo {
    b.permanent = true;
    b
}

pub(crate) fn of_cluster(mut b: BackupInfo, sys: u64) -> BackupInfo {
    b.system_identifier = SystemId(sys);
    b
}

pub(crate) fn segs(tl: u32, r: impl IntoIterator<Item = u64>) -> Vec<String> {
    r.into_iter().map(|n| seg(tl, n)).collect()
}

pub(crate) fn catalog(
    backups: &[&BackupInfo],
    wal: &[Vec<String>],
    histories: &[(u32, &str)],
) -> Catalog {
    let mut names: Vec<String> = wal.concat();
    for (tl, _) in histories {
        names.push(format!("{tl:08X}.history"));
    }
    // The planner must not rely on the order it is given things in.
    names.reverse();
    let mut backups: Vec<BackupInfo> = backups.iter().map(|b| (*b).clone()).collect();
    backups.reverse();
    Catalog {
        backups,
        unfinished: Vec::new(),
        wal: names
            .iter()
            .map(|n| WalObject {
                name: n.parse().unwrap(),
                key: key(&format!("wal/{n}")),
            })
            .collect(),
        histories: histories
            .iter()
            .map(|(tl, text)| {
                let h = TimelineHistory::parse(TimelineId(*tl), text).unwrap();
                (TimelineId(*tl), h)
            })
            .collect(),
        holes: Default::default(),
    }
}
