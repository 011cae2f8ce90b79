//! The backups in storage: every complete backup (one with a manifest), in the
//! order they were taken, and the chains of deltas. Names sort by start WAL
//! file only within one timeline and one cluster, so order comes from the
//! manifests (see [`order`]).

use futures::{StreamExt, TryStreamExt};

use super::manifest::Manifest;
use super::{BackupError, manifest_key};
use crate::Context;
use crate::codec::decode_to_vec;
use crate::storage::{StorageError, get_bytes};

/// Reads backup `name`'s manifest.
pub async fn load(ctx: &Context, name: &str) -> Result<Manifest, BackupError> {
    let key = manifest_key(name).map_err(|_| BackupError::NoSuchBackup {
        name: name.to_string(),
        location: ctx.storage.location().to_string(),
    })?;
    let bytes = match get_bytes(ctx.storage.as_ref(), &key).await {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => {
            return Err(BackupError::NoSuchBackup {
                name: name.to_string(),
                location: ctx.storage.location().to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let object = format!("{}/{key}", ctx.storage.location().trim_end_matches('/'));
    // Manifests are never encrypted: no keyring needed.
    let json = decode_to_vec(&bytes, None, &object)?;
    Manifest::from_json(&json, &object).map_err(BackupError::BadManifest)
}

/// Every complete backup, oldest first (see [`order`]).
pub async fn list(ctx: &Context) -> Result<Vec<Manifest>, BackupError> {
    let objects = ctx.storage.list("basebackups/", None, None).await?;
    let names: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            let rest = o.key.as_str().strip_prefix("basebackups/")?;
            let (name, file) = rest.split_once('/')?;
            (file == "manifest.json").then(|| name.to_string())
        })
        .collect();
    load_all(ctx, &names).await
}

/// The manifests of the backups `names`, oldest first (see [`order`]).
pub async fn load_all(ctx: &Context, names: &[String]) -> Result<Vec<Manifest>, BackupError> {
    // A bounded number of reads at once: a catalog may hold thousands.
    let mut manifests: Vec<Manifest> = futures::stream::iter(names.iter().map(|n| load(ctx, n)))
        .buffered(32)
        .try_collect()
        .await?;
    manifests.sort_by(order);
    Ok(manifests)
}

/// Backups in the order they were taken: by start time (RFC 3339 UTC, whole
/// seconds, so text order is time order), then start LSN. Time first, because
/// after a point-in-time restore the new timeline reuses lower LSNs, and a new
/// cluster in the same prefix may too.
pub fn order(a: &Manifest, b: &Manifest) -> std::cmp::Ordering {
    (&a.start_time, a.start_lsn, &a.finish_time).cmp(&(&b.start_time, b.start_lsn, &b.finish_time))
}

/// The backups a restore of `backup` needs, its full backup first and
/// `backup` last; a missing or foreign ancestor is an error naming it.
pub async fn chain(ctx: &Context, backup: Manifest) -> Result<Vec<Manifest>, BackupError> {
    let mut chain = vec![backup];
    while let Some(parent) = chain.last().and_then(|m| m.parent.clone()) {
        let child = chain.last().map(|m| m.name.clone()).unwrap_or_default();
        let broken = |reason: String| BackupError::BrokenChain {
            name: chain[0].name.clone(),
            reason,
        };
        if chain.iter().any(|m| m.name == parent) || chain.len() > 10_000 {
            return Err(broken(format!("its chain loops at {parent}")));
        }
        let m = match load(ctx, &parent).await {
            Ok(m) => m,
            Err(BackupError::NoSuchBackup { location, .. }) => {
                return Err(broken(format!(
                    "{child} is a delta of {parent}, which is missing from {location}                      (deleted?); restore a backup whose chain is whole"
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
pub async fn resolve(ctx: &Context, name: &str) -> Result<Manifest, BackupError> {
    if name.eq_ignore_ascii_case("LATEST") {
        list(ctx)
            .await?
            .pop()
            .ok_or_else(|| BackupError::NoBackups {
                location: ctx.storage.location().to_string(),
            })
    } else {
        load(ctx, name).await
    }
}
