//! The clusters that write WAL to the archive: one record each,
//! `meta/clusters/<system identifier>.json`, written by the first `wal-push`
//! of that cluster. A segment of an unrecorded cluster is admitted only where
//! the archive has nothing at or after its position on its timeline (a
//! cluster upgraded with `pg_upgrade` continues the old one's LSNs, and
//! joins); a second live cluster pointed at the same prefix writes where the
//! first already has WAL, and is refused before it stores anything.
//! `wal-fetch` uses the records to tell which clusters' WAL the archive holds
//! when the restoring data directory cannot say.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ArchiveError, keys, manifest::rfc3339, objects};
use crate::Context;
use crate::pg::wal::{Segment, SegmentPos, SystemId, WalFileName};
use crate::storage::{ObjectKey, PutMode, StorageError};

/// Version of the record layout; readers refuse newer ones.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub record_version: u32,
    pub system_identifier: SystemId,
    /// The segment whose push registered the cluster.
    pub first_segment: Segment,
    #[serde(with = "rfc3339")]
    pub registered: OffsetDateTime,
    pub hostname: String,
}

/// Whether the archive has a record of `system`. Read, not just looked at:
/// a refused read says why (a HEAD request's refusal carries no reason).
pub async fn is_registered(ctx: &Context, system: SystemId) -> Result<bool, ArchiveError> {
    let key = keys::cluster_record(system);
    Ok(objects::read_plain(ctx, &key, None).await?.is_some())
}

/// The recorded clusters.
pub async fn registered(ctx: &Context) -> Result<Vec<SystemId>, ArchiveError> {
    let listed = ctx.storage.list(keys::CLUSTERS, None, None).await?;
    Ok(listed
        .iter()
        .filter_map(|o| {
            o.key
                .as_str()
                .strip_prefix(keys::CLUSTERS)?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect())
}

/// Admits a segment of cluster `system` at `segment` (see the module
/// documentation), recording the cluster if it is new.
pub async fn admit(ctx: &Context, system: SystemId, segment: Segment) -> Result<(), ArchiveError> {
    match is_registered(ctx, system).await {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        // A storage that does not exist yet is an empty archive: the first
        // write makes it (a local directory), or says why it cannot.
        Err(ArchiveError::Storage(StorageError::NoStorage { .. })) => {
            return register(ctx, system, segment).await;
        }
        Err(e) => return Err(e),
    }
    let others: Vec<SystemId> = registered(ctx)
        .await?
        .into_iter()
        .filter(|s| *s != system)
        .collect();
    if !others.is_empty()
        && let Some(later) = at_or_after(ctx, segment).await?
    {
        return Err(ArchiveError::ForeignCluster {
            system,
            others: others.iter().map(ToString::to_string).collect(),
            segment: segment.to_string(),
            later,
            location: ctx.storage.location().to_string(),
        });
    }
    register(ctx, system, segment).await
}

/// Writes the record of `system` (create-if-absent: the first writer wins).
async fn register(ctx: &Context, system: SystemId, segment: Segment) -> Result<(), ArchiveError> {
    let record = ClusterRecord {
        record_version: RECORD_VERSION,
        system_identifier: system,
        first_segment: segment,
        registered: OffsetDateTime::now_utc(),
        hostname: super::hostname(),
    };
    let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
    match objects::write_plain(
        ctx,
        &keys::cluster_record(system),
        &json,
        PutMode::CreateIfAbsent,
    )
    .await
    {
        Ok(()) | Err(StorageError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A WAL file of `segment`'s timeline at or after its position, if any.
async fn at_or_after(ctx: &Context, segment: Segment) -> Result<Option<String>, ArchiveError> {
    let prefix = keys::wal_timeline_prefix(segment.timeline);
    let p = segment.pos();
    // A key just below the segment's own: the greatest possible name of
    // the position before it.
    let before: Option<ObjectKey> = match (p.log, p.seg) {
        (0, 0) => None,
        (log, 0) => Some(keys::wal(&WalFileName::Segment(Segment::at(
            segment.timeline,
            SegmentPos {
                log: log - 1,
                seg: u32::MAX,
            },
        )))),
        (log, seg) => Some(keys::wal(&WalFileName::Segment(Segment::at(
            segment.timeline,
            SegmentPos { log, seg: seg - 1 },
        )))),
    };
    let listed = ctx
        .storage
        .list(&prefix, before.as_ref().map(ObjectKey::as_str), Some(4))
        .await?;
    Ok(listed.iter().find_map(|o| match keys::classify(&o.key) {
        keys::Listed::Wal(
            n @ (WalFileName::Segment(s) | WalFileName::Partial(s) | WalFileName::Backup(s, _)),
        ) if s >= segment => Some(n.to_string()),
        _ => None,
    }))
}
