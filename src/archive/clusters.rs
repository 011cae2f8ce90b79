//! Clusters in one archive prefix (after `pg_upgrade`, whose new cluster
//! continues the old one's LSN sequence): the backups of one system
//! identifier, and which cluster a WAL file belongs to. WAL names carry no
//! system identifier, so a file is attributed by position: clusters are
//! ordered by the start time of their earliest backup, and a segment belongs
//! to the cluster with the greatest earliest-backup start segment at or below
//! its own (segments below every cluster's first backup belong to the first).
//! This assumes the clusters follow one another; when their first backups
//! are not in the same order by time and by position, or a cluster has a
//! backup at or beyond the next one's first, [`Clusters::ordered`] is false
//! and callers must not trust the attribution.

use super::catalog::BackupInfo;
use crate::pg::wal::{SegmentPos, SystemId};

/// The backups of one system identifier.
pub struct Cluster {
    pub system_identifier: SystemId,
    /// Indexes into the backups the clusters were built from, in order.
    pub members: Vec<usize>,
    /// Position of the earliest backup's start segment.
    pub boundary: SegmentPos,
}

impl Cluster {
    /// The newest member.
    pub fn newest(&self) -> usize {
        *self.members.last().expect("a cluster has a backup")
    }
}

pub struct Clusters {
    /// By the start time of their earliest backup.
    pub list: Vec<Cluster>,
    /// Whether WAL can be attributed by position (see the module doc).
    pub ordered: bool,
}

impl Clusters {
    /// The clusters of `backups`, which must be in the one order.
    pub fn of(backups: &[&BackupInfo]) -> Clusters {
        let mut list: Vec<Cluster> = Vec::new();
        for (i, b) in backups.iter().enumerate() {
            let c = match list
                .iter()
                .position(|c| c.system_identifier == b.system_identifier)
            {
                Some(c) => c,
                None => {
                    list.push(Cluster {
                        system_identifier: b.system_identifier,
                        members: Vec::new(),
                        boundary: b.start_segment().pos(),
                    });
                    list.len() - 1
                }
            };
            list[c].members.push(i);
        }
        let ordered = list.windows(2).all(|w| {
            let (old, new) = (&w[0], &w[1]);
            old.boundary < new.boundary
                && old
                    .members
                    .iter()
                    .all(|&i| backups[i].start_segment().pos() < new.boundary)
                && backups[old.newest()].start_time <= backups[new.members[0]].start_time
        });
        Clusters { list, ordered }
    }

    /// The cluster a WAL position belongs to: the one with the greatest
    /// boundary at or below it, else the first. Callers check `ordered`.
    pub fn attribute(&self, p: SegmentPos) -> usize {
        if self.ordered {
            return self
                .list
                .partition_point(|c| c.boundary <= p)
                .saturating_sub(1);
        }
        // Boundaries out of order: few clusters, look at each.
        (0..self.list.len())
            .filter(|&c| self.list[c].boundary <= p)
            .max_by_key(|&c| self.list[c].boundary)
            .unwrap_or(0)
    }

    /// Where the next cluster's WAL begins above `p`: a backup starting at
    /// `p` is not held to WAL from there on.
    pub fn boundary_above(&self, p: SegmentPos) -> Option<SegmentPos> {
        self.list
            .iter()
            .map(|c| c.boundary)
            .filter(|&b| b > p)
            .min()
    }

    /// The cluster with this system identifier.
    pub fn find(&self, system: SystemId) -> Option<usize> {
        self.list.iter().position(|c| c.system_identifier == system)
    }
}
