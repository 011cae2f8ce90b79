//! Archiving and restoring WAL files: `wal-push` (with lookahead) and `wal-fetch`
//! (with prefetch). Each WAL file is one object, `wal/<name>`, in the format of
//! `docs/FORMAT.md`. cairn's own state in the data directory lives under
//! `pg_wal/.cairn/`, which PostgreSQL ignores.

pub mod fetch;
pub mod push;
pub mod verify;

use std::io;
use std::path::{Path, PathBuf};

use crate::Context;
use crate::codec::{CodecError, decode_to_vec};
use crate::pg::timeline::{TimelineError, TimelineHistory};
use crate::pg::wal::{TimelineId, WalFileName, WalNameError};
use crate::storage::{ObjectKey, StorageError, get_bytes};

/// The object key of a WAL file.
pub fn wal_key(name: &WalFileName) -> ObjectKey {
    // A parsed WAL name is always a valid key segment.
    ObjectKey::new(format!("wal/{name}")).expect("WAL names are valid keys")
}

/// The archived history of timeline `tli`, parsed; `None` when the archive
/// does not have it. Encrypted archives need the identity.
pub async fn read_history(
    ctx: &Context,
    tli: TimelineId,
) -> Result<Option<TimelineHistory>, WalError> {
    let key = wal_key(&WalFileName::History(tli));
    let bytes = match get_bytes(ctx.storage.as_ref(), &key).await {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let object = format!("{}/{key}", ctx.storage.location().trim_end_matches('/'));
    let text = decode_to_vec(&bytes, ctx.keyring()?.as_ref(), &object)?;
    Ok(Some(TimelineHistory::parse(
        tli,
        &String::from_utf8_lossy(&text),
    )?))
}

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
    #[error("{name} is not in the archive at {location}")]
    NotInArchive { name: String, location: String },
    #[error(
        "{name} is missing from the archive at {location}, but later segment {later} of the same \
         timeline is there: the archive has a gap, so recovery must not stop here. Restore the \
         missing segment or recover to a target before it"
    )]
    Gap {
        name: String,
        later: String,
        location: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
}

impl WalError {
    pub(crate) fn file(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
        move |source| WalError::File {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` through a temporary name in the same directory, so
/// readers see the whole file or nothing.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

pub(crate) fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.cairn-tmp.{}", std::process::id()))
}
