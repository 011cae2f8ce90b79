//! Base backups: `backup-push` (tar-split parallel upload of a running
//! cluster's data directory), `backup-fetch` (verified parallel restore) and
//! `backup-list`, deltas (`delta`) and `backup-mark`. A backup lives under `basebackups/<name>/`: numbered tar
//! parts, a control part, and the manifest, written last.

pub mod catalog;
pub mod delta;
pub mod fetch;
pub mod manifest;
pub mod mark;
pub mod push;
pub mod rate;
pub mod remote;
pub mod tar_split;

use std::path::PathBuf;

use crate::codec::CodecError;
use crate::pg::client::PgError;
use crate::pg::datadir::DataDirError;
use crate::pg::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};
use crate::storage::{ObjectKey, StorageError};

/// The manifest's key for backup `name`.
pub fn manifest_key(name: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::new(format!("basebackups/{name}/manifest.json"))
}

/// A part's key: `basebackups/<name>/<part key>`.
pub fn part_key(name: &str, part: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::new(format!("basebackups/{name}/{part}"))
}

/// Refuses to start backup `name` when one of that name (so with the same
/// start position) exists: on a standby, saying why that happens there.
pub(crate) async fn check_name_free(
    ctx: &crate::Context,
    name: &str,
    standby: bool,
) -> Result<(), BackupError> {
    if ctx.storage.head(&manifest_key(name)?).await?.is_none() {
        return Ok(());
    }
    let (name, location) = (name.to_string(), ctx.storage.location().to_string());
    Err(if standby {
        BackupError::StandbyStartTaken { name, location }
    } else {
        BackupError::Exists { name, location }
    })
}

/// Why a backup command failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(
        "{pgdata} belongs to cluster {local} but the connection reaches cluster {server}: point \
         PGHOST/PGPORT (or the postgres: config section) at the server of this data directory"
    )]
    OtherCluster {
        pgdata: PathBuf,
        local: u64,
        server: u64,
    },
    #[error("another backup of this cluster is running ({holder}; lock {path})")]
    Locked { path: PathBuf, holder: String },
    #[error("backup {name} already exists in {location}; refusing to overwrite it")]
    Exists { name: String, location: String },
    #[error(
        "backup {name} already exists in {location}: on a standby a backup starts at the last \
         restartpoint, and no checkpoint has come from the primary since that backup started, \
         so it (with the archived WAL) already restores to now; for a new one anyway, run \
         CHECKPOINT on the primary and try again"
    )]
    StandbyStartTaken { name: String, location: String },
    #[error("no backup named {name} in {location} (cairn backup-list shows the backups)")]
    NoSuchBackup { name: String, location: String },
    #[error("no backups in {location}")]
    NoBackups { location: String },
    #[error("{0}")]
    BadManifest(String),
    #[error(
        "part {key} of backup {name} is missing from {location}: the backup cannot be restored; \
         restore another backup"
    )]
    MissingPart {
        name: String,
        key: String,
        location: String,
    },
    #[error("backup {name}, part {part}: {reason}")]
    Damaged {
        name: String,
        part: String,
        reason: String,
    },
    #[error(
        "backup {name}, part {part}: unsafe entry {entry:?}: {reason}; nothing extracted from it"
    )]
    UnsafeEntry {
        name: String,
        part: String,
        entry: String,
        reason: &'static str,
    },
    /// A stage of a pipeline found the next one gone; that one's error is
    /// the cause, reported instead wherever it is known.
    #[error("{0} stopped")]
    StageStopped(&'static str),
    #[error("backup {name} cannot be restored: {reason}")]
    BrokenChain { name: String, reason: String },
    #[error("destination {0} is not empty; restore into an empty or new directory")]
    DestinationNotEmpty(PathBuf),
    #[error("{0}")]
    BadArgument(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl BackupError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.into();
        move |source| BackupError::Io { path, source }
    }

    pub(crate) fn task(e: tokio::task::JoinError) -> BackupError {
        BackupError::Io {
            path: PathBuf::from("(worker)"),
            source: std::io::Error::other(e),
        }
    }
}

/// The WAL file holding `start`, the first a restore of a backup reads.
pub(crate) fn start_wal_file(timeline: TimelineId, start: Lsn, size: SegmentSize) -> String {
    WalFileName::Segment(Segment::containing(timeline, start, size)).to_string()
}

/// The WAL file holding the last byte before `stop`, the last one a backup
/// needs to become consistent (PostgreSQL's `XLByteToPrevSeg`, as
/// pg_backup_stop names it).
pub(crate) fn stop_wal_segment(timeline: TimelineId, stop: Lsn, size: SegmentSize) -> Segment {
    Segment::containing(timeline, Lsn(stop.0.saturating_sub(1)), size)
}

/// The host name, for manifests and lock holders.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success (and we stop at the first NUL or the end regardless).
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    if !ok {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Now, RFC 3339 in UTC.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
