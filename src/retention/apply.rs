//! Carrying out a retention plan in an order that an interruption cannot
//! hurt: the record of the holes the plan makes first, then the manifests of
//! doomed backups (deepest deltas first, one level at a time), their other
//! objects, unfinished backups' objects, and the WAL oldest first.

use std::collections::BTreeMap;

use super::plan::{Plan, Step};
use crate::Context;
use crate::archive::{ArchiveError, holes};
use crate::storage::ObjectKey;

/// Objects per delete request (S3's DeleteObjects takes at most 1,000).
const BATCH: usize = 1000;

/// Carries out `plan` over the archive whose recorded holes are `recorded`
/// (from the catalog the plan was made from). Returns the number of objects
/// deleted.
pub async fn apply(
    ctx: &Context,
    plan: &Plan,
    recorded: &holes::Holes,
) -> Result<usize, ArchiveError> {
    let mut steps: BTreeMap<Step, Vec<ObjectKey>> = BTreeMap::new();
    for d in &plan.deletions {
        steps.entry(d.step).or_default().push(d.key.clone());
    }
    // Recorded before anything goes: from here on, whatever part of the WAL
    // removal is done, every missing segment is either recorded or a gap.
    let mut new_record = None;
    if !plan.holes.is_empty() {
        let mut all = recorded.clone();
        for h in &plan.holes {
            all.add(*h);
        }
        new_record = Some(holes::write(ctx, &all).await?);
    }
    let mut deleted = 0;
    for (step, keys) in &steps {
        // Steps are sequential; within one, a storage may delete a batch in
        // any order, which no step's guarantee depends on.
        for batch in keys.chunks(BATCH) {
            ctx.storage.delete_many(batch).await?;
            deleted += batch.len();
            tracing::debug!(?step, objects = batch.len(), first = %batch[0], "deleted");
        }
    }
    if let Some(kept) = new_record {
        holes::retire(ctx, &recorded.records, &kept).await?;
    }
    Ok(deleted)
}
