//! The storage side of retention: reading the catalog the planner works on
//! (every manifest, unfinished backup, WAL object and timeline history), and
//! carrying out a plan in an order that an interruption cannot hurt.

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use super::plan::{BackupInfo, Catalog, Deleted, Plan, UnfinishedBackup, WalObject};
use crate::Context;
use crate::backup::manifest::Manifest;
use crate::backup::{BackupError, catalog};
use crate::codec::CodecError;
use crate::pg::timeline::TimelineHistory;
use crate::pg::wal::{SegmentSize, WalFileName};
use crate::storage::{ObjectKey, StorageError};

/// Why retention could not read the archive or apply a plan.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error(transparent)]
    Plan(#[from] super::plan::PlanError),
    #[error("backup {name}: {what} in its manifest is not valid ({detail})")]
    BadManifest {
        name: String,
        what: &'static str,
        detail: String,
    },
}

/// The archive as the planner sees it, and the manifests it came from (oldest
/// first).
pub struct Loaded {
    pub catalog: Catalog,
    pub manifests: Vec<Manifest>,
}

/// Reads everything the planner needs: one listing of `basebackups/` and of
/// `wal/`, every manifest, and every timeline history (which needs the age
/// identity when the archive is encrypted: without the histories, which WAL a
/// backup can reach is unknown).
pub async fn load(ctx: &Context) -> Result<Loaded, RetentionError> {
    let listed = ctx.storage.list("basebackups/", None, None).await?;
    let mut dirs: BTreeMap<String, Vec<crate::storage::ObjectMeta>> = BTreeMap::new();
    for o in listed {
        let Some((name, _)) = o
            .key
            .as_str()
            .strip_prefix("basebackups/")
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        dirs.entry(name.to_string()).or_default().push(o);
    }
    let complete: Vec<String> = dirs
        .iter()
        .filter(|(_, objects)| {
            objects
                .iter()
                .any(|o| o.key.as_str().ends_with("/manifest.json"))
        })
        .map(|(name, _)| name.clone())
        .collect();
    let manifests = catalog::load_all(ctx, &complete).await?;

    let mut backups = Vec::with_capacity(manifests.len());
    for m in &manifests {
        let objects = dirs.remove(&m.name).unwrap_or_default();
        backups.push(backup_info(m, objects)?);
    }
    let unfinished = dirs
        .into_iter()
        .map(|(name, objects)| UnfinishedBackup {
            name,
            newest_modified: objects
                .iter()
                .filter_map(|o| o.modified)
                .max()
                .map(OffsetDateTime::from),
            objects: objects.into_iter().map(|o| o.key).collect(),
        })
        .collect();

    let wal: Vec<WalObject> = ctx
        .storage
        .list("wal/", None, None)
        .await?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.as_str().strip_prefix("wal/")?.parse().ok()?;
            Some(WalObject { name, key: o.key })
        })
        .collect();
    let histories = read_histories(ctx, &wal).await?;
    Ok(Loaded {
        catalog: Catalog {
            backups,
            unfinished,
            wal,
            histories,
        },
        manifests,
    })
}

fn backup_info(
    m: &Manifest,
    objects: Vec<crate::storage::ObjectMeta>,
) -> Result<BackupInfo, RetentionError> {
    let bad = |what: &'static str, detail: String| RetentionError::BadManifest {
        name: m.name.clone(),
        what,
        detail,
    };
    let time = |what: &'static str, t: &str| {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| bad(what, format!("{t:?}: {e}")))
    };
    // The manifest first: deleting it makes the backup invisible.
    let mut keys: Vec<ObjectKey> = objects.into_iter().map(|o| o.key).collect();
    keys.sort_by_key(|k| !k.as_str().ends_with("/manifest.json"));
    Ok(BackupInfo {
        name: m.name.clone(),
        system_identifier: m.system_identifier.clone(),
        timeline: m.timeline,
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        start_time: time("start_time", &m.start_time)?,
        finish_time: time("finish_time", &m.finish_time)?,
        parent: m.parent.clone(),
        permanent: m.permanent,
        wal_segment_size: SegmentSize::new(m.wal_segment_size)
            .map_err(|e| bad("wal_segment_size", e.to_string()))?,
        objects: keys,
    })
}

/// Every `.history` file in the archive, parsed.
pub async fn read_histories(
    ctx: &Context,
    wal: &[WalObject],
) -> Result<BTreeMap<crate::pg::wal::TimelineId, TimelineHistory>, RetentionError> {
    let mut out = BTreeMap::new();
    for w in wal {
        let WalFileName::History(tli) = w.name else {
            continue;
        };
        // Listed a moment ago; one that vanished since has nothing to say.
        if let Some(h) = crate::wal::read_history(ctx, tli).await? {
            out.insert(tli, h);
        }
    }
    Ok(out)
}

/// Objects per delete request (S3's DeleteObjects takes at most 1,000).
const BATCH: usize = 1000;

/// Carries out `plan`: first the manifests of the doomed backups, deepest
/// deltas first, level by level (each level in one batch: no delta ever loses
/// its parent while it is still visible), then their other objects, then the
/// unfinished backups', then the WAL oldest first. Returns the number of
/// objects deleted.
pub async fn apply(
    ctx: &Context,
    plan: &Plan,
    manifests: &[Manifest],
) -> Result<usize, RetentionError> {
    let depth: HashMap<&str, u32> = manifests
        .iter()
        .map(|m| (m.name.as_str(), m.chain_depth))
        .collect();
    let mut levels: BTreeMap<std::cmp::Reverse<u32>, Vec<ObjectKey>> = BTreeMap::new();
    let mut rest = Vec::new();
    let mut wal = Vec::new();
    for d in &plan.deletions {
        match &d.what {
            Deleted::Backup(name) if d.key.as_str().ends_with("/manifest.json") => {
                let level = depth.get(name.as_str()).copied().unwrap_or(0);
                levels
                    .entry(std::cmp::Reverse(level))
                    .or_default()
                    .push(d.key.clone());
            }
            Deleted::Backup(_) | Deleted::Unfinished(_) => rest.push(d.key.clone()),
            Deleted::Wal(_) => wal.push(d.key.clone()),
        }
    }
    let mut deleted = 0;
    for keys in levels.values().chain([&rest, &wal]) {
        for batch in keys.chunks(BATCH) {
            ctx.storage.delete_many(batch).await?;
            deleted += batch.len();
            tracing::debug!(objects = batch.len(), first = %batch[0], "deleted");
        }
    }
    Ok(deleted)
}
