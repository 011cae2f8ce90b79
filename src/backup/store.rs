//! Storing a backup, for both ways of taking one (from the data directory,
//! over the replication protocol): the running marker first, so that
//! retention sees the backup from its first moment; parts as they are built,
//! encoded and uploaded concurrently; the control part; and the manifest,
//! built in one place, written only once the backup's parent and its WAL
//! are known to be in the archive, so that nothing listed cannot be restored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;

use super::BackupError;
use super::tar_split::{ControlFile, Placements, write_control_part};
use crate::Context;
use crate::archive::keys;
use crate::archive::manifest::{
    CorruptPage, FULL_MANIFEST_VERSION, FileEntry, Kind, MANIFEST_VERSION, Manifest, PartEntry,
};
use crate::archive::part_index::{self, IndexRef, PartIndex};
use crate::archive::running::{Marker, Running};
use crate::codec::{
    CodecError, PipeReader, PipeWriter, encode_framed_stream, encode_to_vec, hex, pipe,
};
use crate::pg::datadir::Tablespace;
use crate::pg::wal::{Lsn, Segment, SegmentSize, SystemId, TimelineId, WalFileName};
use crate::storage::{PutBody, PutMode, StorageError};

/// A part's object name within its backup.
pub fn part_name(index: usize) -> String {
    format!("part_{:05}.tar", index + 1)
}

/// What a delta is built on, as its manifest records it.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub parent: String,
    /// The parent's start LSN: pages at or after it were stored.
    pub from_lsn: Lsn,
    pub chain_depth: u32,
}

/// Everything known about a backup once it is taken, before its manifest.
#[derive(Debug, Clone)]
pub struct Taken {
    pub name: String,
    pub lineage: Option<Lineage>,
    pub remote: bool,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: TimelineId,
    pub segment_size: SegmentSize,
    pub start_time: OffsetDateTime,
    pub system_identifier: SystemId,
    pub pg_version: u32,
    pub data_directory: String,
    pub tablespaces: Vec<Tablespace>,
    pub label: String,
    pub permanent: bool,
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    /// Pages found corrupt while reading (see `backup::page_check`).
    pub corrupt_pages: Vec<CorruptPage>,
}

impl Taken {
    /// The manifest: the taken facts, the parts and files, and what follows
    /// from them (sizes, WAL files, codec, host, finish time).
    pub fn manifest(self, ctx: &Context, parts: Vec<PartEntry>, files: Vec<FileEntry>) -> Manifest {
        let settings = ctx.config.codec();
        let start = Segment::containing(self.timeline, self.start_lsn, self.segment_size);
        let stop =
            crate::archive::manifest::stop_segment(self.timeline, self.stop_lsn, self.segment_size);
        Manifest {
            manifest_version: if self.lineage.is_some() {
                MANIFEST_VERSION
            } else {
                FULL_MANIFEST_VERSION
            },
            name: self.name,
            kind: if self.lineage.is_some() {
                Kind::Delta
            } else {
                Kind::Full
            },
            parent: self.lineage.as_ref().map(|l| l.parent.clone()),
            delta_from_lsn: self.lineage.as_ref().map(|l| l.from_lsn),
            chain_depth: self.lineage.as_ref().map_or(0, |l| l.chain_depth),
            remote: self.remote,
            start_lsn: self.start_lsn,
            stop_lsn: self.stop_lsn,
            timeline: self.timeline,
            start_wal_file: start,
            stop_wal_file: stop.max(start),
            wal_segment_size: self.segment_size,
            start_time: self.start_time,
            finish_time: OffsetDateTime::now_utc(),
            system_identifier: self.system_identifier,
            pg_version: self.pg_version,
            hostname: crate::archive::hostname(),
            data_directory: self.data_directory,
            tablespaces: self.tablespaces,
            raw_size: files.iter().map(|f| f.size).sum(),
            stored_size: parts.iter().map(|p| p.stored_size).sum(),
            compression: settings.compression.to_string(),
            encrypted: !settings.recipients.is_empty(),
            label: self.label,
            permanent: self.permanent,
            backup_label: self.backup_label,
            tablespace_map: self.tablespace_map,
            parts,
            files,
            corrupt_pages: self.corrupt_pages,
        }
    }
}

/// Refuses to start backup `name` when one of that name (so with the same
/// start position) exists: on a standby, saying why that happens there.
pub async fn check_name_free(ctx: &Context, name: &str, standby: bool) -> Result<(), BackupError> {
    if ctx.storage.head(&keys::manifest(name)?).await?.is_none() {
        return Ok(());
    }
    let (name, location) = (name.to_string(), ctx.storage.location().to_string());
    Err(if standby {
        BackupError::StandbyStartTaken { name, location }
    } else {
        BackupError::Exists { name, location }
    })
}

/// Announces a backup that has just started: its marker keeps its WAL and
/// its parent from retention until the manifest is written.
#[allow(clippy::too_many_arguments)]
pub async fn begin(
    ctx: &Context,
    name: &str,
    system_identifier: SystemId,
    timeline: TimelineId,
    start_lsn: Lsn,
    segment_size: SegmentSize,
    parent: Option<&str>,
    started: OffsetDateTime,
) -> Result<Running, BackupError> {
    let marker = Marker {
        marker_version: crate::archive::running::MARKER_VERSION,
        name: name.to_string(),
        system_identifier,
        timeline,
        start_lsn,
        start_wal_file: Segment::containing(timeline, start_lsn, segment_size),
        parent: parent.map(str::to_string),
        hostname: crate::archive::hostname(),
        pid: std::process::id(),
        started,
    };
    Ok(Running::start(ctx, &marker).await?)
}

/// Writes the manifest, once the backup can be restored: its parent still
/// exists, and every WAL segment from its start to its stop is in the
/// archive (waiting up to `wal_timeout` for archiving to catch up, failing at
/// once when a delete removed one). Then removes the running marker.
pub async fn publish(
    ctx: &Context,
    manifest: &Manifest,
    running: Running,
    wal_timeout: Duration,
) -> Result<(), BackupError> {
    let refuse = |reason: String| BackupError::NotPublished {
        name: manifest.name.clone(),
        reason,
    };
    wait_for_wal(ctx, manifest, wal_timeout)
        .await
        .map_err(|e| match e {
            BackupError::NotPublished { reason, .. } => refuse(reason),
            other => other,
        })?;
    if let Some(parent) = &manifest.parent
        && ctx.storage.head(&keys::manifest(parent)?).await?.is_none()
    {
        return Err(refuse(format!(
            "its parent {parent} was deleted while it ran; take a new backup"
        )));
    }
    store_manifest(ctx, manifest, PutMode::CreateIfAbsent).await?;
    if let Err(e) = running.finish().await {
        // The backup is complete; a stale marker is only garbage.
        tracing::warn!(backup = %manifest.name, error = %e, "could not remove the running-backup marker");
    }
    Ok(())
}

/// Stores a manifest: compressed, never encrypted (see `archive::manifest`).
pub async fn store_manifest(
    ctx: &Context,
    manifest: &Manifest,
    mode: PutMode,
) -> Result<(), BackupError> {
    let key = keys::manifest(&manifest.name)?;
    match crate::archive::objects::write_plain(ctx, &key, &manifest.to_json(), mode).await {
        Err(StorageError::AlreadyExists { .. }) => Err(BackupError::Exists {
            name: manifest.name.clone(),
            location: ctx.storage.location().to_string(),
        }),
        other => Ok(other?),
    }
}

/// Segments checked at once.
const WAL_CHECKS: usize = 16;

/// Waits until every WAL segment from the backup's start to its stop is in
/// the archive: without them the backup cannot become consistent.
async fn wait_for_wal(ctx: &Context, m: &Manifest, timeout: Duration) -> Result<(), BackupError> {
    let size = m.wal_segment_size;
    let (first, last) = (m.start_segment(), m.stop_segment().max(m.start_segment()));
    let deadline = Instant::now() + timeout;
    let mut from = first.number(size);
    let end = last.number(size);
    loop {
        let numbers: Vec<u64> = (from..=end).collect();
        let present: Vec<bool> = futures::stream::iter(numbers.iter().map(|&n| async move {
            let key = keys::wal(&WalFileName::Segment(Segment::from_number(
                m.timeline, n, size,
            )));
            ctx.storage.head(&key).await.map(|h| h.is_some())
        }))
        .buffered(WAL_CHECKS)
        .try_collect()
        .await?;
        match present.iter().position(|p| !p) {
            None => return Ok(()),
            Some(k) => from = numbers[k],
        }
        let missing = Segment::from_number(m.timeline, from, size);
        let holes = crate::archive::holes::load(ctx).await?;
        if holes.covers(missing, Some(m.system_identifier)) {
            return Err(BackupError::NotPublished {
                name: m.name.clone(),
                reason: format!(
                    "a delete removed WAL segment {missing}, which it needs, while it ran \
                     (retention recorded it); take a new backup"
                ),
            });
        }
        if Instant::now() >= deadline {
            return Err(BackupError::NotPublished {
                name: m.name.clone(),
                reason: format!(
                    "WAL segment {missing} (needed from the backup's start to its end, {last}) \
                     did not reach {} within {} s: archiving is failing or lagging (see \
                     pg_stat_archiver on the server), archive_command writes to another \
                     storage, or a delete removed it",
                    ctx.storage.location(),
                    timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Builds a part with `build` (writing the tar stream, reading and hashing
/// files) on one blocking thread, while [`store_part`] encodes and uploads
/// it: a three-stage pipeline, so even one large part keeps two cores busy.
/// Data parts are framed and indexed (`build` places its files); the
/// control part, always restored whole, is not.
pub async fn upload<F>(
    ctx: &Context,
    backup: &str,
    part: String,
    control: bool,
    build: F,
) -> Result<(PartEntry, Vec<FileEntry>), BackupError>
where
    F: FnOnce(PipeWriter, Option<Arc<Placements>>) -> std::io::Result<(Vec<FileEntry>, PipeWriter)>
        + Send
        + 'static,
{
    let (writer, reader) = pipe();
    let placements = (!control).then(Placements::new);
    let placing = placements.clone();
    let builder = tokio::task::spawn_blocking(move || {
        let (files, writer) = build(writer, placing)?;
        writer.finish()?;
        Ok::<_, std::io::Error>(files)
    });
    let stored = store_part(ctx, backup, part, control, reader, placements).await;
    let built = builder.await.map_err(BackupError::task)?;
    match (built, stored) {
        (Ok(files), Ok(part)) => Ok((part, files)),
        // A builder that found its reader gone did not cause the failure:
        // the storage side did, and its error says why.
        (Err(e), Err(stored)) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(stored),
        (Err(e), _) => Err(BackupError::Codec(CodecError::from_io(e))),
        (Ok(_), Err(stored)) => Err(stored),
    }
}

/// The control part: pg_control, backup_label, tablespace_map (and a remote
/// backup's server manifest), restored after everything else.
pub async fn upload_control_part(
    ctx: &Context,
    backup: &str,
    index: usize,
    files: Vec<ControlFile>,
) -> Result<(PartEntry, Vec<FileEntry>), BackupError> {
    let build = move |w: PipeWriter, _| write_control_part(&files, index, w);
    upload(ctx, backup, part_name(index), true, build).await
}

/// Encodes (compresses, encrypts) a part's tar stream as it is read and
/// uploads it: the encoder on a thread of its own, storage on the runtime.
/// With `placements` (filled by the tar stream's writer), the part is
/// framed and its index stored beside it.
pub async fn store_part(
    ctx: &Context,
    backup: &str,
    part: String,
    control: bool,
    tar: PipeReader,
    placements: Option<Arc<Placements>>,
) -> Result<PartEntry, BackupError> {
    let key = keys::part(backup, &part)?;
    let what = format!("part {key}");
    let cuts = placements.as_ref().map(|p| p.cuts.clone());
    let encoded = encode_framed_stream(tar, ctx.config.codec(), cuts, what);
    let (body, task) = (encoded.body, encoded.task);
    let put = ctx
        .storage
        .put(&key, PutBody::Stream(body), PutMode::Overwrite)
        .await;
    let encoding = task.await.map_err(BackupError::task)?;
    let (digest, stored, frames) = match (encoding, put) {
        (Ok(done), Ok(())) => done,
        // The cause, not its echo: an encoder that saw the upload stop
        // reading reports the upload's failure; an upload whose body broke
        // reports the encoder's (or its source's) failure.
        (Err(e), Err(put)) if e.is_stage_stopped() => return Err(put.into()),
        (Err(e), _) => return Err(e.into()),
        (Ok(_), Err(put)) => return Err(put.into()),
    };
    tracing::debug!(part = %key, raw = digest.len, stored, "part uploaded");
    let mut entry = PartEntry {
        key: part,
        raw_size: digest.len,
        stored_size: stored,
        blake3: hex(&digest.blake3),
        control,
        index: None,
    };
    if let Some(p) = placements {
        // The encoder saw the end of the tar stream: every file is placed.
        let index = PartIndex {
            version: part_index::VERSION,
            unit: crate::codec::units::UNIT,
            frames,
            files: p.take_files(),
        };
        entry.index = Some(store_index(ctx, backup, &entry.key, &index).await?);
    }
    Ok(entry)
}

/// Stores a part's index beside it, encoded like the part.
async fn store_index(
    ctx: &Context,
    backup: &str,
    part: &str,
    index: &PartIndex,
) -> Result<IndexRef, BackupError> {
    let name = format!("{part}.index");
    let key = keys::part(backup, &name)?;
    let plain = serde_json::to_vec(index)
        .map_err(|e| BackupError::BadArgument(format!("index of part {part}: {e}")))?;
    let (stored, digest) = encode_to_vec(&plain, &ctx.config.codec())?;
    ctx.storage
        .put(&key, PutBody::Bytes(stored.into()), PutMode::Overwrite)
        .await?;
    Ok(IndexRef {
        key: name,
        blake3: hex(&digest.blake3),
    })
}
