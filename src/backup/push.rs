//! `cairn backup-push [PGDATA]`: a base backup of a running cluster, taken with
//! the non-exclusive low-level API on one session. The data directory is walked,
//! split into parts ([`super::tar_split`]) that are built, encoded and uploaded
//! concurrently; after `pg_backup_stop`, the control part (pg_control,
//! backup_label, tablespace_map) and then the manifest are written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;

use super::BackupError;
use super::delta::DeltaBase;
use super::lock::{BackupLock, cluster_lock};
use super::page_check::PageCheck;
use super::rate::{RateLimit, Reads};
use super::store::{self, Lineage, Taken, part_name};
use super::tar_split::{ControlFile, plan, write_part};
use crate::Context;
use crate::archive::catalog;
use crate::archive::manifest::{CorruptPage, FileEntry, Manifest, PartEntry, rfc3339};
use crate::codec::PipeWriter;
use crate::pg::client::{PgSession, PgSettings};
use crate::pg::datadir::{self, Entry};
use crate::pg::page::PAGE_SIZE;
use crate::pg::wal::{Lsn, SegmentSize, SystemId, TimelineId};

/// What a backup-push does, from configuration and flags.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub pgdata: PathBuf,
    pub postgres: PgSettings,
    pub label: Option<String>,
    pub permanent: bool,
    /// Fast (immediate) checkpoint instead of a spread one.
    pub fast_checkpoint: bool,
    /// How long pg_backup_stop may wait for the WAL to be archived.
    pub archive_timeout: Duration,
    /// Bytes of file data per part.
    pub part_size: u64,
    /// Parts built and uploaded at once.
    pub concurrency: usize,
    /// Full or delta.
    pub kind: BackupKind,
    /// Bytes per second read from the data directory (remote: sent by the
    /// server), 0 for no limit.
    pub max_rate: u64,
    /// A page whose checksum fails fails the backup.
    pub fail_on_page_corruption: bool,
}

impl PushOptions {
    /// The backup's start time and label (the user's, or one naming the time).
    pub(crate) fn start(&self) -> (OffsetDateTime, String) {
        let start_time = OffsetDateTime::now_utc();
        let label = self
            .label
            .clone()
            .unwrap_or_else(|| format!("cairn backup {}", rfc3339::format(start_time)));
        (start_time, label)
    }
}

/// Which kind of backup to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    /// `--full`, or `delta_max_steps: 0`.
    Full,
    /// `--delta`: built on the latest backup when it can be.
    Delta,
    /// `delta_max_steps: N`: a delta while the latest backup's chain has
    /// fewer than N deltas, else a full.
    Auto { max_steps: u32 },
}

/// Takes a base backup; returns its manifest once stored.
pub async fn push(ctx: &Context, opts: &PushOptions) -> Result<Manifest, BackupError> {
    let given = opts.pgdata.clone();
    let (pgdata, local_id, _lock) = tokio::task::spawn_blocking(move || {
        let pgdata = std::fs::canonicalize(&given)
            .map_err(|_| datadir::DataDirError::NotADataDir(given.clone()))?;
        let local_id = datadir::system_identifier(&pgdata)?;
        let lock = BackupLock::acquire(&pgdata)?;
        Ok::<_, BackupError>((pgdata, local_id, lock))
    })
    .await
    .map_err(BackupError::task)??;
    let session = PgSession::connect(&opts.postgres).await?;
    let server_id = session.system_identifier().await?;
    if server_id != local_id {
        return Err(BackupError::OtherCluster {
            pgdata,
            local: local_id,
            server: server_id,
        });
    }
    session
        .check_archiving(&ctx.config.wal_receive_slot)
        .await?;
    cluster_lock(ctx, &session).await?;
    let segment_size = SegmentSize::new(session.wal_segment_size().await?).map_err(|e| {
        BackupError::BadArgument(format!("server reports an invalid wal_segment_size: {e}"))
    })?;

    let (start_time, label) = opts.start();
    let (start_lsn, timeline) = session.backup_start(&label, opts.fast_checkpoint).await?;
    let start_file = crate::pg::wal::Segment::containing(timeline, start_lsn, segment_size);
    let delta = choose_parent(ctx, opts, &session, server_id, start_lsn, timeline).await?;
    // As wal-g names them: a delta also names the WAL file its parent started in.
    let name = match &delta {
        Some(d) => format!("base_{start_file}_D_{}", d.parent_start_wal_file),
        None => format!("base_{start_file}"),
    };
    match &delta {
        Some(d) => {
            tracing::info!(backup = %name, lsn = %start_lsn, parent = %d.parent, depth = d.chain_depth, "delta backup started")
        }
        None => tracing::info!(backup = %name, lsn = %start_lsn, "backup started"),
    }
    store::check_name_free(ctx, &name, session.in_recovery().await?).await?;
    let running = store::begin(
        ctx,
        &name,
        SystemId(server_id),
        timeline,
        start_lsn,
        segment_size,
        delta.as_ref().map(|d| d.parent.as_str()),
        start_time,
    )
    .await?;

    let walked = {
        let pgdata = pgdata.clone();
        tokio::task::spawn_blocking(move || datadir::walk(&pgdata))
            .await
            .map_err(BackupError::task)??
    };
    let (entries, tablespaces) = walked;
    let planned = plan(&entries, opts.part_size);
    let data_parts = planned.len();
    ctx.progress.begin(
        entries.iter().map(Entry::size).sum(),
        Some(data_parts as u64),
    );
    let shared_delta = delta.clone().map(Arc::new);
    let limit = RateLimit::new(opts.max_rate).map(Arc::new);
    let pages = page_check(&session, start_lsn).await?.map(Arc::new);
    let uploaded: Vec<(PartEntry, Vec<FileEntry>)> =
        futures::stream::iter(planned.into_iter().enumerate())
            .map(|(i, part)| {
                let (delta, limit, pages) = (shared_delta.clone(), limit.clone(), pages.clone());
                upload_part(ctx, &name, i, part, delta, pages, limit)
            })
            .buffered(opts.concurrency.max(1))
            .try_collect()
            .await?;
    ctx.progress.end();
    let corrupt_pages = pages.map(|p| p.take_found()).unwrap_or_default();
    check_pages(&name, &corrupt_pages, opts.fail_on_page_corruption)?;
    // An error above drops the session, which aborts the backup on the server.

    let stop = session.backup_stop(opts.archive_timeout).await?;
    let control_path = pgdata.join("global/pg_control");
    let pg_control = tokio::fs::read(&control_path)
        .await
        .map_err(BackupError::io(&control_path))?;
    let mut control_files = vec![
        ControlFile::new("global/pg_control", pg_control),
        ControlFile::new("backup_label", stop.backup_label.clone().into_bytes()),
    ];
    if let Some(map) = &stop.tablespace_map {
        control_files.push(ControlFile::new("tablespace_map", map.clone().into_bytes()));
    }
    let control = store::upload_control_part(ctx, &name, data_parts, control_files).await?;

    let mut parts = Vec::with_capacity(uploaded.len() + 1);
    let mut files = Vec::new();
    for (p, f) in uploaded.into_iter().chain(std::iter::once(control)) {
        parts.push(p);
        files.extend(f);
    }
    let taken = Taken {
        name,
        lineage: delta.as_ref().map(|d| Lineage {
            parent: d.parent.clone(),
            from_lsn: d.from_lsn,
            chain_depth: d.chain_depth,
        }),
        remote: false,
        start_lsn,
        stop_lsn: stop.lsn,
        timeline,
        segment_size,
        start_time,
        system_identifier: SystemId(server_id),
        pg_version: session.version_num,
        data_directory: pgdata.display().to_string(),
        tablespaces,
        label,
        permanent: opts.permanent,
        backup_label: stop.backup_label,
        tablespace_map: stop.tablespace_map,
        corrupt_pages,
    };
    let manifest = taken.manifest(ctx, parts, files);
    store::publish(ctx, &manifest, running, opts.archive_timeout).await?;
    Ok(manifest)
}

/// The backup a delta is built on, or `None` for a full backup (the log says
/// why when a delta was wanted). The parent must be the latest backup of this
/// cluster, taken by a server of the same major version and page size, ended
/// before this backup started, and on this timeline's history: else its pages
/// would not be this cluster's past.
async fn choose_parent(
    ctx: &Context,
    opts: &PushOptions,
    session: &PgSession,
    system_identifier: u64,
    start_lsn: Lsn,
    timeline: TimelineId,
) -> Result<Option<DeltaBase>, BackupError> {
    if !opts.kind.wants_delta() {
        return Ok(None);
    }
    let sysid = SystemId(system_identifier);
    let latest = match latest_parent(
        ctx,
        opts.kind,
        sysid,
        session.version_num,
        timeline,
        Some(start_lsn),
    )
    .await?
    {
        Ok(m) => m,
        Err(why) => return full_because(why),
    };
    let block_size = session.block_size().await?;
    if block_size != PAGE_SIZE as u64 {
        return full_because(format!(
            "the server's block_size is {block_size}; deltas need {PAGE_SIZE}"
        ));
    }
    Ok(Some(DeltaBase::new(&latest)))
}

/// Logs why a wanted delta is a full backup.
pub(crate) fn full_because<T>(why: String) -> Result<Option<T>, BackupError> {
    tracing::info!("taking a full backup: {why}");
    Ok(None)
}

impl BackupKind {
    /// Whether a delta may be taken at all.
    pub fn wants_delta(self) -> bool {
        !matches!(self, BackupKind::Full | BackupKind::Auto { max_steps: 0 })
    }
}

/// The latest backup of cluster `sysid`, if a delta of a server of
/// `version_num` on `timeline` (starting at `start_lsn`, when known) can be
/// built on it; else why not.
pub(crate) async fn latest_parent(
    ctx: &Context,
    kind: BackupKind,
    sysid: SystemId,
    version_num: u32,
    timeline: TimelineId,
    start_lsn: Option<Lsn>,
) -> Result<Result<Manifest, String>, BackupError> {
    let Some(latest) = catalog::list(ctx)
        .await?
        .into_iter()
        .rfind(|m| m.system_identifier == sysid)
    else {
        return Ok(Err(
            "no earlier backup of this cluster to build a delta on".into()
        ));
    };
    if let BackupKind::Auto { max_steps } = kind
        && latest.chain_depth >= max_steps
    {
        return Ok(Err(format!(
            "{} ends a chain of {} deltas (delta_max_steps {max_steps})",
            latest.name, latest.chain_depth
        )));
    }
    if latest.pg_version / 10000 != version_num / 10000 {
        return Ok(Err(format!(
            "{} was taken from PostgreSQL {}, this server is {}",
            latest.name, latest.pg_version, version_num
        )));
    }
    if let Some(start_lsn) = start_lsn
        && latest.stop_lsn > start_lsn
    {
        return Ok(Err(format!(
            "{} ends at {}, after this backup starts ({start_lsn})",
            latest.name, latest.stop_lsn
        )));
    }
    if latest.timeline != timeline {
        let history = match crate::archive::timelines::read_history(ctx, timeline).await {
            Ok(h) => h,
            // A push-only host may lack the identity to read it.
            Err(e) => {
                return Ok(Err(format!(
                    "cannot read timeline {timeline}'s history: {e}"
                )));
            }
        };
        if !history.is_some_and(|h| h.reaches(latest.timeline, latest.stop_lsn)) {
            return Ok(Err(format!(
                "{} is on timeline {}, which is not in timeline {timeline}'s history at {}",
                latest.name, latest.timeline, latest.stop_lsn
            )));
        }
    }
    Ok(Ok(latest))
}

/// The page checks of a backup starting at `start_lsn`, when the cluster
/// has data checksums (with 8 KiB pages, the only size cairn computes
/// checksums for).
async fn page_check(session: &PgSession, start_lsn: Lsn) -> Result<Option<PageCheck>, BackupError> {
    if !session.data_checksums().await? {
        return Ok(None);
    }
    let block_size = session.block_size().await?;
    if block_size != PAGE_SIZE as u64 {
        tracing::info!("not checking page checksums: the server's block_size is {block_size}");
        return Ok(None);
    }
    Ok(Some(PageCheck::new(start_lsn)))
}

/// Says what the page checks found: a warning and the manifest's record,
/// or with `fail` the backup's failure.
pub(crate) fn check_pages(
    name: &str,
    found: &[CorruptPage],
    fail: bool,
) -> Result<(), BackupError> {
    let Some(first) = found.first() else {
        return Ok(());
    };
    if fail {
        return Err(BackupError::PageCorruption {
            name: name.to_string(),
            count: found.len(),
            first: format!("{} block {}", first.file, first.block),
        });
    }
    tracing::warn!(
        backup = %name,
        pages = found.len(),
        first = %format!("{} block {}", first.file, first.block),
        "corrupt pages backed up as they are on disk (recorded in the manifest;          backup-verify lists them)"
    );
    Ok(())
}

/// Builds one part and uploads it as it is built.
async fn upload_part(
    ctx: &Context,
    backup: &str,
    index: usize,
    entries: Vec<Entry>,
    delta: Option<Arc<DeltaBase>>,
    pages: Option<Arc<PageCheck>>,
    limit: Option<Arc<RateLimit>>,
) -> Result<(PartEntry, Vec<FileEntry>), BackupError> {
    let progress = ctx.progress.clone();
    let build = move |w: PipeWriter, placements| {
        let reads = Reads {
            limit: limit.as_deref(),
            progress: &*progress,
        };
        write_part(
            &entries,
            index,
            delta.as_deref(),
            pages.as_deref(),
            reads,
            w,
            placements,
        )
    };
    let uploaded = store::upload(ctx, backup, part_name(index), false, build).await?;
    ctx.progress.part_done();
    Ok(uploaded)
}
