//! The backups in storage: every complete backup (one with a manifest), in WAL
//! order. Names sort by start WAL file only within one timeline and one
//! cluster, so order comes from the manifests: start LSN, then finish time.

use std::io::Read;

use super::manifest::Manifest;
use super::{BackupError, manifest_key};
use crate::Context;
use crate::codec::{CodecError, Decoder};
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
    let mut decoder = Decoder::new(&bytes[..], None, &object)?;
    let mut json = Vec::new();
    decoder
        .read_to_end(&mut json)
        .map_err(CodecError::from_io)?;
    Manifest::from_json(&json, &object).map_err(BackupError::BadManifest)
}

/// Every complete backup, oldest first by position in the WAL stream.
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
    let manifests: Vec<Manifest> =
        futures::future::try_join_all(names.iter().map(|n| load(ctx, n))).await?;
    let mut manifests = manifests;
    manifests.sort_by(|a, b| (a.start_lsn, &a.finish_time).cmp(&(b.start_lsn, &b.finish_time)));
    Ok(manifests)
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
