//! `cairn backup-fetch <dest> <NAME|LATEST>`: restores a base backup (with
//! its delta chain) into an empty directory, or with `--delta` over an
//! existing data directory of the same cluster, keeping what matches. The pure [`plan`] says which
//! parts to read and what to do with each file; [`extract`] downloads,
//! decodes, verifies and extracts parts concurrently; [`dest`] owns the
//! destination; [`recovery`] the settings it starts with. The control part
//! (pg_control, backup_label) goes last, so a directory that misses anything
//! cannot start; on any failure, what was extracted is removed again.

pub mod dest;
pub mod extract;
pub mod plan;
pub mod recovery;
pub mod reuse;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use super::BackupError;
use crate::Context;
use crate::archive::catalog;
use crate::archive::manifest::Manifest;
use dest::Layout;
use extract::{Job, extract_part};
pub use recovery::RecoveryTarget;

/// What a backup-fetch does.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub dest: PathBuf,
    /// A backup name or `LATEST`.
    pub name: String,
    /// Tablespace OID → where to put it instead of its original location.
    pub tablespace_map: Vec<(u32, PathBuf)>,
    pub recovery_target: Option<RecoveryTarget>,
    /// The shell command for `restore_command` (cairn itself with this
    /// configuration, then `wal-fetch %f %p`).
    pub restore_command: String,
    /// Parts downloaded and extracted at once.
    pub concurrency: usize,
    /// Restore over an existing data directory of the same cluster, keeping
    /// what already matches (`--delta`).
    pub delta: bool,
}

/// Restores a backup; returns its manifest.
pub async fn fetch(ctx: &Context, opts: &FetchOptions) -> Result<Manifest, BackupError> {
    let manifest = catalog::resolve(ctx, &opts.name).await?;
    let chain = catalog::chain(ctx, manifest).await?;
    let Some(manifest) = chain.last().cloned() else {
        return Err(BackupError::BadArgument("empty backup chain".into()));
    };
    let layout = Layout::new(&manifest, &opts.dest, &opts.tablespace_map)?;
    if opts.delta {
        return fetch_delta(ctx, chain, layout, opts)
            .await
            .map(|()| manifest);
    }
    let planned = plan::plan(&chain)?;
    let created = {
        let layout = layout.clone();
        crate::blocking(move || layout.prepare()).await?
    };
    let stats = Arc::new(dest::WriteStats::default());
    let result = restore(ctx, &chain, planned, &layout, opts, stats).await;
    if result.is_err() {
        let _ = tokio::task::spawn_blocking(move || created.undo()).await;
    }
    result.map(|()| manifest)
}

/// `--delta`: the restore over an existing data directory of the same
/// cluster. Files that already hold what the restore would write are kept
/// (and parts holding nothing else not read); the others are rewritten
/// where they differ; what the backup does not have is removed. The result
/// is the directory a restore into an empty one gives. A failure leaves the
/// directory unable to start (pg_control goes first, comes back last): run
/// the same command again to finish.
async fn fetch_delta(
    ctx: &Context,
    chain: Vec<Manifest>,
    layout: Layout,
    opts: &FetchOptions,
) -> Result<(), BackupError> {
    let Some(last) = chain.last().cloned() else {
        return Ok(());
    };
    let candidates = plan::reusable(&chain)?;
    let keyring = if chain.iter().any(|m| m.encrypted) {
        ctx.keyring()?
    } else {
        None
    };
    // Files of indexed parts are compared unit by unit and fetched by frame;
    // the others whole, and their parts read whole.
    let indexed = reuse::load(ctx, &chain, &candidates, &layout, keyring.as_ref()).await?;
    let by_index = indexed.paths();
    let rest: Vec<_> = candidates
        .into_iter()
        .filter(|c| !by_index.contains(&c.path))
        .collect();
    let stats = Arc::new(dest::WriteStats::default());
    let (kept, kept_bytes, indexed) = {
        let (layout, threads, stats) = (layout.clone(), opts.concurrency, stats.clone());
        let mut indexed = indexed;
        crate::blocking(move || {
            layout.prepare_delta(&last)?;
            let (mut kept, mut kept_bytes) = layout.matching(&rest, threads);
            let found = indexed.compare(threads, &stats);
            kept.extend(found.kept);
            kept_bytes += found.kept_bytes;
            Ok::<_, BackupError>((kept, kept_bytes, indexed))
        })
        .await?
    };
    let mut elsewhere = kept.clone();
    elsewhere.extend(by_index);
    let planned = plan::plan_keeping(&chain, &elsewhere)?;
    let result = async {
        indexed
            .fetch(ctx, keyring, opts.concurrency, stats.clone())
            .await?;
        restore(ctx, &chain, planned, &layout, opts, stats.clone()).await
    }
    .await;
    if let Err(e) = result {
        return Err(BackupError::BadArgument(format!(
            "{e}; {} is partly restored and cannot start (no global/pg_control): run \
             backup-fetch --delta again to finish",
            opts.dest.display()
        )));
    }
    {
        let layout = layout.clone();
        crate::blocking(move || {
            layout.finish_delta()?;
            layout.sync()
        })
        .await?;
    }
    let (written, unchanged) = stats.totals();
    tracing::info!(
        kept_files = kept.len(),
        kept_bytes,
        rewritten_bytes_found_unchanged = unchanged,
        written_bytes = written,
        "delta restore: {} files ({:.1} MB) kept as they were; of the rest, {:.1} MB \
         already matched and {:.1} MB were written",
        kept.len(),
        kept_bytes as f64 / 1e6,
        unchanged as f64 / 1e6,
        written as f64 / 1e6
    );
    Ok(())
}

async fn restore(
    ctx: &Context,
    chain: &[Manifest],
    planned: plan::RestorePlan,
    layout: &Layout,
    opts: &FetchOptions,
    stats: Arc<dest::WriteStats>,
) -> Result<(), BackupError> {
    let Some(last) = chain.last() else {
        return Ok(());
    };
    let keyring = if chain.iter().any(|m| m.encrypted) {
        ctx.keyring()?
    } else {
        None
    };
    {
        let (layout, last) = (layout.clone(), last.clone());
        crate::blocking(move || layout.make_dirs(&last)).await?;
    }
    let job = Arc::new(Job {
        layout: layout.clone(),
        keyring,
        rewrite_tablespace_map: last
            .tablespaces
            .iter()
            .any(|t| layout.tablespaces.get(&t.oid) != Some(&t.location)),
        dirs: last
            .files
            .iter()
            .filter(|f| f.dir)
            .map(|f| f.path.clone())
            .collect(),
        // After a failure no new part starts and running ones stop at their
        // next entry; all are waited for, so that nothing writes into the
        // destination while a failed restore is being removed.
        stop: AtomicBool::new(false),
        progress: ctx.progress.clone(),
        delta: opts.delta,
        stats,
    });
    ctx.progress
        .begin(planned.bytes, Some(planned.parts as u64));
    for stage in planned.stages {
        let results: Vec<Result<(), BackupError>> = futures::stream::iter(stage.data)
            .map(|work| {
                let job = &job;
                let backup = chain[work.backup].name.as_str();
                async move {
                    if job.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let r = extract_part(ctx, backup, work, job).await;
                    if r.is_err() {
                        job.stop.store(true, Ordering::Relaxed);
                    }
                    r
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        // In completion order: the first error is the cause, later ones its echo.
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        for work in stage.control {
            let backup = chain[work.backup].name.as_str();
            extract_part(ctx, backup, work, &job).await?;
        }
    }
    ctx.progress.end();
    let (layout, last) = (layout.clone(), last.clone());
    let (target, command) = (opts.recovery_target.clone(), opts.restore_command.clone());
    crate::blocking(move || {
        layout.finish(&last)?;
        if let Some(target) = &target {
            recovery::write_recovery_settings(&layout.dest, target, &command, &last.name)?;
        }
        layout.sync()
    })
    .await
}
