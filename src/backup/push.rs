//! `cairn backup-push [PGDATA]`: a base backup of a running cluster, taken with
//! the non-exclusive low-level API on one session. The data directory is walked,
//! split into parts ([`super::tar_split`]) that are built, encoded and uploaded
//! concurrently; after `pg_backup_stop`, the control part (pg_control,
//! backup_label, tablespace_map) and then the manifest are written.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use super::delta::DeltaBase;
use super::manifest::{FULL_MANIFEST_VERSION, FileEntry, MANIFEST_VERSION, Manifest, PartEntry};
use super::rate::{RateLimit, Reads};
use super::tar_split::{ControlFile, plan, write_control_part, write_part};
use super::{BackupError, catalog, manifest_key, part_key};
use crate::Context;
use crate::codec::hex;
use crate::codec::{
    CodecError, CodecSettings, PipeReader, PipeWriter, encode_stream, encode_to_vec, pipe,
};
use crate::pg::client::{PgSession, PgSettings};
use crate::pg::datadir::{self, Entry};
use crate::pg::page::PAGE_SIZE;
use crate::pg::wal::{Lsn, SegmentSize, TimelineId, WalFileName};
use crate::storage::{PutBody, PutMode, StorageError};

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
}

impl PushOptions {
    /// The backup's start time (RFC 3339) and label (the user's, or one naming
    /// the time).
    pub(crate) fn start(&self) -> (String, String) {
        let start_time = super::now_rfc3339();
        let label = self
            .label
            .clone()
            .unwrap_or_else(|| format!("cairn backup {start_time}"));
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
    let pgdata = std::fs::canonicalize(&opts.pgdata)
        .map_err(|_| datadir::DataDirError::NotADataDir(opts.pgdata.clone()))?;
    let local_id = datadir::system_identifier(&pgdata)?;
    let session = PgSession::connect(&opts.postgres).await?;
    let server_id = session.system_identifier().await?;
    if server_id != local_id {
        return Err(BackupError::OtherCluster {
            pgdata,
            local: local_id,
            server: server_id,
        });
    }
    session.check_archiving().await?;
    let _lock = BackupLock::acquire(&pgdata)?;
    cluster_lock(ctx, &session).await?;
    let segment_size = SegmentSize::new(session.wal_segment_size().await?).map_err(|e| {
        BackupError::BadArgument(format!("server reports an invalid wal_segment_size: {e}"))
    })?;

    let (start_time, label) = opts.start();
    let (start_lsn, timeline) = session.backup_start(&label, opts.fast_checkpoint).await?;
    let start_file = super::start_wal_file(timeline, start_lsn, segment_size);
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
    super::check_name_free(ctx, &name, session.in_recovery().await?).await?;

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
    let shared_delta = delta.clone().map(std::sync::Arc::new);
    let limit = RateLimit::new(opts.max_rate).map(std::sync::Arc::new);
    let uploaded: Vec<(PartEntry, Vec<FileEntry>)> =
        futures::stream::iter(planned.into_iter().enumerate())
            .map(|(i, part)| upload_part(ctx, &name, i, part, shared_delta.clone(), limit.clone()))
            .buffered(opts.concurrency.max(1))
            .try_collect()
            .await?;
    ctx.progress.end();
    // An error above drops the session, which aborts the backup on the server.

    let stop = session.backup_stop(opts.archive_timeout).await?;
    let stop_file =
        WalFileName::Segment(super::stop_wal_segment(timeline, stop.lsn, segment_size)).to_string();
    let control_path = pgdata.join("global/pg_control");
    let pg_control = std::fs::read(&control_path).map_err(BackupError::io(&control_path))?;
    let mut control_files = vec![
        ControlFile::new("global/pg_control", pg_control),
        ControlFile::new("backup_label", stop.backup_label.clone().into_bytes()),
    ];
    if let Some(map) = &stop.tablespace_map {
        control_files.push(ControlFile::new("tablespace_map", map.clone().into_bytes()));
    }
    let control = upload_control_part(ctx, &name, data_parts, control_files).await?;

    let mut parts = Vec::with_capacity(uploaded.len() + 1);
    let mut files = Vec::new();
    for (p, f) in uploaded.into_iter().chain(std::iter::once(control)) {
        parts.push(p);
        files.extend(f);
    }
    let settings = ctx.config.codec();
    let manifest = Manifest {
        manifest_version: if delta.is_some() {
            MANIFEST_VERSION
        } else {
            FULL_MANIFEST_VERSION
        },
        name: name.clone(),
        kind: if delta.is_some() { "delta" } else { "full" }.into(),
        parent: delta.as_ref().map(|d| d.parent.clone()),
        delta_from_lsn: delta.as_ref().map(|d| d.from_lsn),
        chain_depth: delta.as_ref().map_or(0, |d| d.chain_depth),
        remote: false,
        start_lsn,
        stop_lsn: stop.lsn,
        timeline,
        start_wal_file: start_file,
        stop_wal_file: stop_file,
        wal_segment_size: segment_size.bytes(),
        start_time,
        finish_time: super::now_rfc3339(),
        system_identifier: server_id.to_string(),
        pg_version: session.version_num,
        hostname: super::hostname(),
        data_directory: pgdata.display().to_string(),
        tablespaces,
        raw_size: files.iter().map(|f| f.size).sum(),
        stored_size: parts.iter().map(|p| p.stored_size).sum(),
        compression: settings.compression.to_string(),
        encrypted: !settings.recipients.is_empty(),
        label,
        permanent: opts.permanent,
        backup_label: stop.backup_label,
        tablespace_map: stop.tablespace_map,
        parts,
        files,
    };
    store_manifest(ctx, &manifest, PutMode::CreateIfAbsent).await?;
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
    if opts.kind == BackupKind::Full || opts.kind == (BackupKind::Auto { max_steps: 0 }) {
        return Ok(None);
    }
    let full = |why: String| {
        tracing::info!("taking a full backup: {why}");
        Ok(None)
    };
    let sysid = system_identifier.to_string();
    let Some(latest) = catalog::list(ctx)
        .await?
        .into_iter()
        .rfind(|m| m.system_identifier == sysid)
    else {
        return full("no earlier backup of this cluster to build a delta on".into());
    };
    if let BackupKind::Auto { max_steps } = opts.kind
        && latest.chain_depth >= max_steps
    {
        return full(format!(
            "{} ends a chain of {} deltas (delta_max_steps {max_steps})",
            latest.name, latest.chain_depth
        ));
    }
    if latest.pg_version / 10000 != session.version_num / 10000 {
        return full(format!(
            "{} was taken from PostgreSQL {}, this server is {}",
            latest.name, latest.pg_version, session.version_num
        ));
    }
    let block_size = session.block_size().await?;
    if block_size != PAGE_SIZE as u64 {
        return full(format!(
            "the server's block_size is {block_size}; deltas need {PAGE_SIZE}"
        ));
    }
    if latest.stop_lsn > start_lsn {
        return full(format!(
            "{} ends at {}, after this backup starts ({start_lsn})",
            latest.name, latest.stop_lsn
        ));
    }
    if latest.timeline != timeline {
        let history = match crate::wal::read_history(ctx, timeline).await {
            Ok(h) => h,
            // A push-only host may lack the identity to read it.
            Err(e) => return full(format!("cannot read timeline {timeline}'s history: {e}")),
        };
        if !history.is_some_and(|h| h.reaches(latest.timeline, latest.stop_lsn)) {
            return full(format!(
                "{} is on timeline {}, which is not in timeline {timeline}'s history at {}",
                latest.name, latest.timeline, latest.stop_lsn
            ));
        }
    }
    Ok(Some(DeltaBase::new(&latest)))
}

/// Stores a manifest: compressed, never encrypted (see `manifest.rs`).
pub async fn store_manifest(
    ctx: &Context,
    manifest: &Manifest,
    mode: PutMode,
) -> Result<(), BackupError> {
    let settings = CodecSettings {
        recipients: Vec::new(),
        ..ctx.config.codec()
    };
    let (bytes, _) = encode_to_vec(&manifest.to_json(), &settings)?;
    let key = manifest_key(&manifest.name)?;
    match ctx
        .storage
        .put(&key, PutBody::Bytes(bytes.into()), mode)
        .await
    {
        Err(StorageError::AlreadyExists { .. }) => Err(BackupError::Exists {
            name: manifest.name.clone(),
            location: ctx.storage.location().to_string(),
        }),
        other => Ok(other?),
    }
}

pub(crate) fn part_name(index: usize) -> String {
    format!("part_{:05}.tar", index + 1)
}

/// Builds one part and uploads it as it is built.
async fn upload_part(
    ctx: &Context,
    backup: &str,
    index: usize,
    entries: Vec<Entry>,
    delta: Option<std::sync::Arc<DeltaBase>>,
    limit: Option<std::sync::Arc<RateLimit>>,
) -> Result<(PartEntry, Vec<FileEntry>), BackupError> {
    let progress = ctx.progress.clone();
    let build = move |w: PipeWriter| {
        let reads = Reads {
            limit: limit.as_deref(),
            progress: &*progress,
        };
        write_part(&entries, index, delta.as_deref(), reads, w)
    };
    let uploaded = upload(ctx, backup, part_name(index), false, build).await?;
    ctx.progress.part_done();
    Ok(uploaded)
}

pub(crate) async fn upload_control_part(
    ctx: &Context,
    backup: &str,
    index: usize,
    files: Vec<ControlFile>,
) -> Result<(PartEntry, Vec<FileEntry>), BackupError> {
    let build = move |w: PipeWriter| write_control_part(&files, index, w);
    upload(ctx, backup, part_name(index), true, build).await
}

/// A three-stage pipeline per part: `build` writes the tar stream (reading and
/// hashing files) on one blocking thread, the encoder compresses and encrypts
/// it on another, and storage uploads it; so even one large part keeps two
/// cores busy.
async fn upload<F>(
    ctx: &Context,
    backup: &str,
    part: String,
    control: bool,
    build: F,
) -> Result<(PartEntry, Vec<FileEntry>), BackupError>
where
    F: FnOnce(PipeWriter) -> std::io::Result<(Vec<FileEntry>, PipeWriter)> + Send + 'static,
{
    let (writer, reader) = pipe();
    let builder = tokio::task::spawn_blocking(move || {
        let (files, writer) = build(writer)?;
        writer.finish()?;
        Ok::<_, std::io::Error>(files)
    });
    let stored = store_part(ctx, backup, part, control, reader).await;
    let built = builder.await.map_err(BackupError::task)?;
    // The earliest stage's error says why; later ones only that input broke.
    let files = built.map_err(|e| BackupError::Codec(CodecError::from_io(e)))?;
    Ok((stored?, files))
}

/// Encodes (compresses, encrypts) a part's tar stream as it is read and
/// uploads it: the encoder on a thread of its own, storage on the runtime.
pub(crate) async fn store_part(
    ctx: &Context,
    backup: &str,
    part: String,
    control: bool,
    tar: PipeReader,
) -> Result<PartEntry, BackupError> {
    let key = part_key(backup, &part)?;
    let encoded = encode_stream(tar, ctx.config.codec(), None, format!("part {key}"));
    let put = ctx
        .storage
        .put(&key, PutBody::Stream(encoded.body), PutMode::Overwrite)
        .await;
    let encoding = encoded.task.await.map_err(BackupError::task)?;
    let (digest, stored) = encoding?;
    put?;
    tracing::debug!(part = %key, raw = digest.len, stored, "part uploaded");
    Ok(PartEntry {
        key: part,
        raw_size: digest.len,
        stored_size: stored,
        blake3: hex(&digest.blake3),
        control,
    })
}

/// One backup of a cluster into one storage at a time, from any host, local
/// or remote: a session-level advisory lock on the cluster, keyed by the
/// storage location, which the server releases when the holding session ends
/// (so when the holder dies). `session` must stay open for the backup.
pub(crate) async fn cluster_lock(ctx: &Context, session: &PgSession) -> Result<(), BackupError> {
    let location = ctx.storage.location();
    let hash = blake3::hash(location.as_bytes());
    let key = i32::from_le_bytes([
        hash.as_bytes()[0],
        hash.as_bytes()[1],
        hash.as_bytes()[2],
        hash.as_bytes()[3],
    ]);
    match session.try_lock(key).await? {
        None => Ok(()),
        Some(holder) => Err(BackupError::Locked {
            path: PathBuf::from(location),
            holder: format!("held by {holder}"),
        }),
    }
}

/// One backup of a cluster at a time from this host: an exclusive lock on a
/// file in the data directory's `pg_wal/.cairn/`, which the kernel releases
/// when the holder exits, however it exits.
struct BackupLock {
    _file: File,
}

impl BackupLock {
    fn acquire(pgdata: &Path) -> Result<BackupLock, BackupError> {
        let dir = pgdata.join("pg_wal/.cairn");
        std::fs::create_dir_all(&dir).map_err(BackupError::io(&dir))?;
        let path = dir.join("backup.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(BackupError::io(&path))?;
        // Run as root (cron), cairn must not leave root-owned state where
        // wal-push, running as the cluster's owner, keeps its own.
        if let Ok(owner) = std::fs::metadata(pgdata) {
            use std::os::unix::fs::MetadataExt;
            for p in [&dir, &path] {
                let _ = std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid()));
            }
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(BackupError::Locked {
                    path,
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(BackupError::io(&path)(e)),
        }
        let holder = format!(
            "pid {} on {} since {}",
            std::process::id(),
            super::hostname(),
            super::now_rfc3339()
        );
        let _ = file.set_len(0);
        let _ = file.write_all(holder.as_bytes());
        Ok(BackupLock { _file: file })
    }
}
