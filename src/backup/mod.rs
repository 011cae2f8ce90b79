//! Base backups: `backup-push` of a data directory ([`push`]) or over the
//! replication protocol ([`remote`]), both storing parts, the control part
//! and the manifest through [`store`]; deltas ([`delta`]); `backup-fetch`
//! ([`restore`]) and `backup-mark` ([`mark`]). A backup lives under
//! `basebackups/<name>/` (see `archive::keys`): numbered tar parts, a control
//! part, and the manifest, written last.

pub mod delta;
pub mod incremental;
pub mod lock;
pub mod mark;
pub mod page_check;
pub mod push;
pub mod rate;
pub mod remote;
pub mod restore;
pub mod store;
pub mod tar_split;

use std::path::PathBuf;

use crate::archive::ArchiveError;
use crate::codec::CodecError;
use crate::pg::client::PgError;
use crate::pg::datadir::DataDirError;
use crate::storage::StorageError;

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
    Codec(CodecError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
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
    #[error(
        "backup {name} failed: {count} page(s) failed their checksum, the first {first}, and \
         fail_on_page_corruption is set: the data directory's storage returned corrupt data; \
         repair or restore those relations (the log and pg_checksums name them), or take the \
         backup without --fail-on-page-corruption to keep the pages as they are"
    )]
    PageCorruption {
        name: String,
        count: usize,
        first: String,
    },
    #[error("backup {name} was not published: {reason}")]
    NotPublished { name: String, reason: String },
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
    #[error("destination {0} is not empty; restore into an empty or new directory")]
    DestinationNotEmpty(PathBuf),
    #[error("{0}")]
    BadArgument(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// A codec error that is really storage's (a download that could not be
/// resumed) is reported as storage's.
impl From<CodecError> for BackupError {
    fn from(e: CodecError) -> BackupError {
        match e {
            CodecError::Storage(e) => BackupError::Storage(e),
            other => BackupError::Codec(other),
        }
    }
}

impl BackupError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.into();
        move |source| BackupError::Io { path, source }
    }

    pub(crate) fn task(e: tokio::task::JoinError) -> BackupError {
        BackupError::Worker(e)
    }
}
