//! Archiving and restoring WAL files: `wal-push` (with lookahead) and `wal-fetch`
//! (with prefetch). Each WAL file is one object, `wal/<name>`, in the format of
//! `docs/FORMAT.md`. cairn's own state in the data directory lives under
//! `pg_wal/.cairn/`, which PostgreSQL ignores.

pub mod check;
pub mod fetch;
pub mod push;
pub mod receive;
pub mod spool;
pub mod verify;

use std::io;
use std::path::{Path, PathBuf};

use crate::archive::ArchiveError;
use crate::codec::CodecError;
use crate::pg::timeline::TimelineError;
use crate::pg::wal::WalNameError;
use crate::storage::StorageError;

/// `pg_wal/.cairn`: markers of segments pushed ahead, and prefetched segments.
pub(crate) fn state_dir(pg_wal: &Path) -> PathBuf {
    pg_wal.join(".cairn")
}

/// Why a WAL command failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    Name(#[from] WalNameError),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("{path} is not a complete WAL segment: {reason}")]
    BadSegment { path: PathBuf, reason: String },
    #[error(
        "{name} is already archived in {location} with different contents (archive: {archived}; \
         local file: {local}); refusing to overwrite it. Two clusters may be archiving to the same \
         storage prefix: give each its own"
    )]
    Conflict {
        name: String,
        location: String,
        archived: String,
        local: String,
    },
    #[error(
        "{object} is not WAL file {name} of this cluster: {reason}; refusing to restore it \
         (another file's object may have been copied under this name)"
    )]
    NotThisFile {
        name: String,
        object: String,
        reason: String,
    },
    #[error("{name} is not in the archive at {location}")]
    NotInArchive { name: String, location: String },
    #[error(
        "{name} is missing from the archive at {location}, but later WAL ({later}) is there: \
         the archive has a gap, so recovery must not stop here. Restore the missing segment or \
         recover to a target before it"
    )]
    Gap {
        name: String,
        later: String,
        location: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Codec(CodecError),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("a worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// A codec error that is really storage's (a download that could not be
/// resumed) is reported as storage's.
impl From<CodecError> for WalError {
    fn from(e: CodecError) -> WalError {
        match e {
            CodecError::Storage(e) => WalError::Storage(e),
            other => WalError::Codec(other),
        }
    }
}

impl WalError {
    pub(crate) fn file(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
        move |source| WalError::File {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A failed read of a decoded stream: the codec's own errors (damage, keys)
/// as themselves, anything else as the I/O error it is.
pub(crate) fn read_error(e: io::Error) -> WalError {
    CodecError::from_io(e).into()
}

#[cfg(test)]
mod tests;
