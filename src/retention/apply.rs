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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use time::macros::datetime;

    use super::*;
    use crate::archive::fixtures::{catalog, full, permanent, seg, segs};
    use crate::archive::missing::{Absence, explain};
    use crate::pg::wal::WalFileName;
    use crate::storage::faulty::{Fault, FaultyStorage};
    use crate::storage::memory::MemoryStorage;
    use crate::storage::{PutBody, PutMode, Storage};

    /// A delete interrupted half-way through the WAL leaves an archive in
    /// which every missing segment is recorded as removed on purpose, and a
    /// segment lost otherwise is still a gap.
    #[tokio::test]
    async fn an_interrupted_delete_leaves_no_unrecorded_hole() {
        let old = permanent(full(1, 2, datetime!(2024-05-01 0:00 UTC)));
        let new = full(1, 20, datetime!(2024-05-09 0:00 UTC));
        let c = catalog(&[&old, &new], &[segs(1, 1..=30)], &[]);
        let mem = Arc::new(MemoryStorage::new());
        for w in &c.wal {
            mem.put(&w.key, PutBody::Bytes("x".into()), PutMode::CreateIfAbsent)
                .await
                .unwrap();
        }
        for b in [&old, &new] {
            for k in &b.objects {
                mem.put(k, PutBody::Bytes("x".into()), PutMode::CreateIfAbsent)
                    .await
                    .unwrap();
            }
        }
        let plan = crate::retention::plan(
            &c,
            &crate::retention::Policy::Retain(crate::retention::Retain {
                full: Some(1),
                ..Default::default()
            }),
            datetime!(2024-05-10 0:00 UTC),
        )
        .unwrap();
        // The permanent backup keeps 2..=3; 4..=19 go, and 1.
        assert!(
            plan.deletions
                .iter()
                .any(|d| d.key.as_str().ends_with(&seg(1, 10)))
        );
        let faulty = Arc::new(FaultyStorage::new(mem.clone()));
        faulty.inject(Fault::InterruptDeleteAfter(5));
        let ctx = crate::Context::with_storage(crate::config::Config::default(), faulty.clone());
        assert!(
            apply(&ctx, &plan, &c.holes).await.is_err(),
            "the delete was not interrupted"
        );
        let ctx = crate::Context::with_storage(crate::config::Config::default(), mem.clone());
        let missing = |n: u64| WalFileName::Segment(seg(1, n).parse().unwrap());
        let mut deleted = 0;
        for n in (1..=19).filter(|n| !(2..=3).contains(n)) {
            if mem.raw(&crate::archive::keys::wal(&missing(n))).is_none() {
                deleted += 1;
                let why = explain(&ctx, &missing(n), None).await.unwrap();
                assert!(!matches!(why, Absence::Gap { .. }), "{n}: {why:?}");
            }
        }
        assert_eq!(deleted, 5, "the delete stopped after five segments");
        // It is the record that tells them from a gap.
        let records: Vec<_> = mem
            .list(crate::archive::keys::HOLES, None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(records.len(), 1);
        let saved = mem.raw(&records[0]).unwrap();
        mem.delete_many(&records).await.unwrap();
        assert!(matches!(
            explain(&ctx, &missing(5), None).await.unwrap(),
            Absence::Gap { .. }
        ));
        mem.set_raw(&records[0], saved);
        // A segment lost by other means is still a gap.
        mem.delete_many(&[crate::archive::keys::wal(&missing(25))])
            .await
            .unwrap();
        assert!(matches!(
            explain(&ctx, &missing(25), None).await.unwrap(),
            Absence::Gap { .. }
        ));
    }
}
