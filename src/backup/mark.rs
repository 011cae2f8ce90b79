//! `cairn backup-mark NAME [--impermanent]`: the permanent flag that
//! retention never deletes past. Marking a delta marks the backups it is built
//! on too, since it cannot be restored without them; unmarking touches only
//! the named backup.

use super::BackupError;
use super::store::store_manifest;
use crate::Context;
use crate::archive::catalog;
use crate::storage::PutMode;

/// Sets (or clears) the permanent flag; returns the backups whose manifest
/// changed, ancestors first.
pub async fn mark(ctx: &Context, name: &str, permanent: bool) -> Result<Vec<String>, BackupError> {
    let manifest = catalog::load(ctx, name).await?;
    let targets = if permanent {
        // Ancestors first: an interrupted run leaves no permanent delta on an
        // ordinary parent.
        catalog::chain(ctx, manifest).await?
    } else {
        vec![manifest]
    };
    let mut changed = Vec::new();
    for mut m in targets {
        if m.permanent == permanent {
            continue;
        }
        m.permanent = permanent;
        store_manifest(ctx, &m, PutMode::Overwrite).await?;
        changed.push(m.name);
    }
    Ok(changed)
}
