//! Proving that the archive restores: `cairn backup-verify` reads every part
//! of a backup and checks it against its manifest, with the WAL a restore
//! needs ([`verify`]); `cairn drill` restores a backup into a scratch
//! directory, replays, starts a throwaway server, checks the data and
//! reports how long it took and how much would be lost ([`run`], with the
//! server in [`server`], the checks in [`checks`] and the evidence report in
//! [`report`]).

pub mod checks;
pub mod report;
pub mod run;
pub mod server;
pub mod verify;

use std::io;
use std::path::{Path, PathBuf};

use crate::archive::ArchiveError;
use crate::backup::BackupError;
use crate::pg::client::PgError;
use crate::storage::StorageError;

pub use report::Report;
pub use run::{DrillOptions, drill};

/// Why a drill or a verification could not run (a check that fails is not
/// an error: the report says so).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(
        "cairn drill starts a PostgreSQL server, which refuses to run as root: run it as the \
         PostgreSQL OS user (e.g. sudo -u postgres cairn drill …)"
    )]
    AsRoot,
    #[error(
        "the backup is of PostgreSQL {major}, whose server binaries were not found ({seen}): \
         install them, or name their directory with --pg-bin or the pg_bin config key"
    )]
    NoBinaries { major: u32, seen: String },
    #[error("the drill's server failed: {0}")]
    Server(String),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("check file {path}: {message}")]
    CheckFile { path: PathBuf, message: String },
    #[error(
        "scratch directory {0} is not empty: a drill restores into an empty directory (give \
         another --dir, or leave it out for a new temporary one)"
    )]
    ScratchNotEmpty(PathBuf),
    #[error("{0}")]
    Unrestorable(String),
    #[error("the drill was interrupted ({0}); its server was stopped and its directory removed")]
    Interrupted(&'static str),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("a worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl DrillError {
    pub(crate) fn io(path: &Path, source: io::Error) -> DrillError {
        DrillError::File {
            path: path.to_path_buf(),
            source,
        }
    }
}
