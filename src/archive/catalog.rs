//! The catalog: what the archive holds, as every command sees it. Complete
//! backups (with their manifests' facts), unfinished and running backups,
//! WAL files, timeline histories and the record of intentional holes, from
//! one listing of each prefix. Backups have one order everywhere
//! ([`order_key`]): by start time, then start LSN, then name.
//!
//! Also the manifest readers built on the same rules: one backup by name,
//! `LATEST`, every manifest, and a delta's chain.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;

use super::holes::Holes;
use super::keys::{self, Listed};
use super::manifest::Manifest;
use super::running::{Marker, is_live};
use super::{ArchiveError, objects};
use crate::Context;
use crate::pg::timeline::TimelineHistory;
use crate::pg::wal::{Lsn, SegmentSize, SystemId, TimelineId, WalFileName};
use crate::storage::{ObjectKey, ObjectMeta};

/// One complete backup, as its manifest describes it.
#[derive(Clone, Debug)]
pub struct BackupInfo {
    pub name: String,
    pub system_identifier: SystemId,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_time: OffsetDateTime,
    pub finish_time: OffsetDateTime,
    /// The backup a delta is built on; `None` for a full backup.
    pub parent: Option<String>,
    pub permanent: bool,
    pub wal_segment_size: SegmentSize,
    /// Every object of the backup, its manifest included.
    pub objects: Vec<ObjectKey>,
}

impl BackupInfo {
    pub fn of(m: &Manifest, objects: Vec<ObjectKey>) -> BackupInfo {
        BackupInfo {
            name: m.name.clone(),
            system_identifier: m.system_identifier,
            timeline: m.timeline,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            start_time: m.start_time,
            finish_time: m.finish_time,
            parent: m.parent.clone(),
            permanent: m.permanent,
            wal_segment_size: m.wal_segment_size,
            objects,
        }
    }

    /// The segment holding the start LSN.
    pub fn start_segment(&self) -> crate::pg::wal::Segment {
        crate::pg::wal::Segment::containing(self.timeline, self.start_lsn, self.wal_segment_size)
    }

    /// The segment holding the last byte before the stop LSN.
    pub fn stop_segment(&self) -> crate::pg::wal::Segment {
        super::manifest::stop_segment(self.timeline, self.stop_lsn, self.wal_segment_size)
    }
}

/// The one order of backups: start time, start LSN, name. Time first,
/// because after a point-in-time restore the new timeline reuses lower LSNs,
/// and a new cluster in the same prefix may too.
pub fn order_key(
    start_time: OffsetDateTime,
    start_lsn: Lsn,
    name: &str,
) -> (OffsetDateTime, Lsn, &str) {
    (start_time, start_lsn, name)
}

/// A `basebackups/<name>/` directory without a manifest: a failed backup, or
/// one in progress.
#[derive(Clone, Debug)]
pub struct UnfinishedBackup {
    pub name: String,
    pub objects: Vec<ObjectKey>,
    pub newest_modified: Option<OffsetDateTime>,
    /// The marker of a backup still running (rewritten recently): retention
    /// keeps what it builds on.
    pub running: Option<Marker>,
}

/// One object under `wal/`.
#[derive(Clone, Debug)]
pub struct WalObject {
    pub name: WalFileName,
    pub key: ObjectKey,
}

/// Everything retention and verification look at: the archive as listed.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// In the one order ([`order_key`]).
    pub backups: Vec<BackupInfo>,
    pub unfinished: Vec<UnfinishedBackup>,
    pub wal: Vec<WalObject>,
    /// The parsed `.history` files, by timeline.
    pub histories: BTreeMap<TimelineId, TimelineHistory>,
    pub holes: Holes,
}

impl Catalog {
    /// Lists the archive and reads what the listing cannot tell: every
    /// manifest, the live running markers, every timeline history (which
    /// needs the age identity when the archive is encrypted: without them,
    /// which WAL a backup can reach is unknown) and the hole records.
    pub async fn load(ctx: &Context) -> Result<Catalog, ArchiveError> {
        let now = OffsetDateTime::now_utc();
        let listed = ctx.storage.list(keys::BACKUPS, None, None).await?;
        let mut dirs: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
        for o in listed {
            if let Listed::BackupObject { backup, .. } = keys::classify(&o.key) {
                dirs.entry(backup).or_default().push(o);
            }
        }
        let is = |o: &ObjectMeta, file: &str| matches!(keys::classify(&o.key), Listed::BackupObject { file: f, .. } if f == file);
        let complete: Vec<String> = dirs
            .iter()
            .filter(|(_, objects)| objects.iter().any(|o| is(o, keys::MANIFEST_FILE)))
            .map(|(name, _)| name.clone())
            .collect();
        let manifests = load_all(ctx, &complete).await?;
        let mut backups = Vec::with_capacity(manifests.len());
        for m in &manifests {
            let mut objects: Vec<ObjectKey> = dirs
                .remove(&m.name)
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.key)
                .collect();
            objects.sort();
            backups.push(BackupInfo::of(m, objects));
        }
        let mut unfinished = Vec::with_capacity(dirs.len());
        for (name, objects) in dirs {
            let newest_modified = objects
                .iter()
                .filter_map(|o| o.modified)
                .max()
                .map(OffsetDateTime::from);
            let marker = objects.iter().find(|o| is(o, keys::RUNNING_FILE));
            let running = match marker {
                Some(o) if is_live(o.modified.map(OffsetDateTime::from), now) => {
                    match objects::read_plain(ctx, &o.key, None).await? {
                        Some(bytes) => {
                            let object = keys::object_name(ctx.storage.location(), &o.key);
                            Some(Marker::parse(&bytes, &object)?).filter(|m| !m.writer_gone())
                        }
                        // Finished (or given up) a moment ago.
                        None => None,
                    }
                }
                _ => None,
            };
            let mut keys: Vec<ObjectKey> = objects.into_iter().map(|o| o.key).collect();
            keys.sort();
            unfinished.push(UnfinishedBackup {
                name,
                objects: keys,
                newest_modified,
                running,
            });
        }
        let wal: Vec<WalObject> = ctx
            .storage
            .list(keys::WAL, None, None)
            .await?
            .into_iter()
            .filter_map(|o| match keys::classify(&o.key) {
                Listed::Wal(name) => Some(WalObject { name, key: o.key }),
                _ => None,
            })
            .collect();
        let mut histories = BTreeMap::new();
        for w in &wal {
            let WalFileName::History(tli) = w.name else {
                continue;
            };
            // Listed a moment ago; one that vanished since has nothing to say.
            if let Some(h) = super::timelines::read_history(ctx, tli).await? {
                histories.insert(tli, h);
            }
        }
        let holes = super::holes::load(ctx).await?;
        Ok(Catalog {
            backups,
            unfinished,
            wal,
            histories,
            holes,
        })
    }

    /// Backups in the one order; for catalogs built by hand (tests).
    pub fn sort(&mut self) {
        self.backups.sort_by(|a, b| {
            order_key(a.start_time, a.start_lsn, &a.name).cmp(&order_key(
                b.start_time,
                b.start_lsn,
                &b.name,
            ))
        });
    }
}

/// Reads backup `name`'s manifest.
pub async fn load(ctx: &Context, name: &str) -> Result<Manifest, ArchiveError> {
    let no_such = || ArchiveError::NoSuchBackup {
        name: name.to_string(),
        location: ctx.storage.location().to_string(),
    };
    let key = keys::manifest(name).map_err(|_| no_such())?;
    let Some(json) = objects::read_plain(ctx, &key, None).await? else {
        return Err(no_such());
    };
    let object = keys::object_name(ctx.storage.location(), &key);
    Manifest::from_json(&json, &object, Some(name)).map_err(ArchiveError::BadManifest)
}

/// Every complete backup's manifest, in the one order.
pub async fn list(ctx: &Context) -> Result<Vec<Manifest>, ArchiveError> {
    let objects = ctx.storage.list(keys::BACKUPS, None, None).await?;
    let names: Vec<String> = objects
        .iter()
        .filter_map(|o| match keys::classify(&o.key) {
            Listed::BackupObject { backup, file } if file == keys::MANIFEST_FILE => Some(backup),
            _ => None,
        })
        .collect();
    load_all(ctx, &names).await
}

/// The manifests of the backups `names`, in the one order.
pub async fn load_all(ctx: &Context, names: &[String]) -> Result<Vec<Manifest>, ArchiveError> {
    // A bounded number of reads at once: a catalog may hold thousands.
    let mut manifests: Vec<Manifest> = futures::stream::iter(names.iter().map(|n| load(ctx, n)))
        .buffered(32)
        .try_collect()
        .await?;
    manifests.sort_by(|a, b| {
        order_key(a.start_time, a.start_lsn, &a.name).cmp(&order_key(
            b.start_time,
            b.start_lsn,
            &b.name,
        ))
    });
    Ok(manifests)
}

/// The backups a restore of `backup` needs, its full backup first and
/// `backup` last; a missing or foreign ancestor is an error naming it.
pub async fn chain(ctx: &Context, backup: Manifest) -> Result<Vec<Manifest>, ArchiveError> {
    let mut chain = vec![backup];
    while let Some(parent) = chain.last().and_then(|m| m.parent.clone()) {
        let child = chain.last().map(|m| m.name.clone()).unwrap_or_default();
        let broken = |reason: String| ArchiveError::BrokenChain {
            name: chain[0].name.clone(),
            reason,
        };
        if chain.iter().any(|m| m.name == parent) || chain.len() > 10_000 {
            return Err(broken(format!("its chain loops at {parent}")));
        }
        let m = match load(ctx, &parent).await {
            Ok(m) => m,
            Err(ArchiveError::NoSuchBackup { location, .. }) => {
                return Err(broken(format!(
                    "{child} is a delta of {parent}, which is missing from {location} \
                     (deleted?); restore a backup whose chain is whole"
                )));
            }
            Err(e) => return Err(e),
        };
        if m.system_identifier != chain[0].system_identifier {
            return Err(broken(format!(
                "its ancestor {parent} belongs to another cluster ({})",
                m.system_identifier
            )));
        }
        chain.push(m);
    }
    chain.reverse();
    Ok(chain)
}

/// A backup by name, or the newest one for `LATEST`.
pub async fn resolve(ctx: &Context, name: &str) -> Result<Manifest, ArchiveError> {
    if name.eq_ignore_ascii_case("LATEST") {
        list(ctx)
            .await?
            .pop()
            .ok_or_else(|| ArchiveError::NoBackups {
                location: ctx.storage.location().to_string(),
            })
    } else {
        load(ctx, name).await
    }
}
