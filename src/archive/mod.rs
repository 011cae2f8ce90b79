//! The one model of what is stored: object keys, typed manifests, the catalog
//! and its single ordering of backups, clusters and timelines, the record of
//! intentional holes and running-backup markers. Every command reads the
//! archive through this module; `wal/`, `backup/` and `retention/` stand on
//! it and never ask each other what the archive holds.

pub mod catalog;
pub mod clusters;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod holes;
pub mod keys;
pub mod manifest;
pub mod missing;
pub mod objects;
pub mod part_index;
pub mod registry;
pub mod running;
pub mod timelines;

pub use catalog::{BackupInfo, Catalog, UnfinishedBackup, WalObject};

use crate::codec::CodecError;
use crate::pg::timeline::TimelineError;
use crate::storage::StorageError;

/// Why the archive could not be read as cairn writes it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("{0}")]
    BadManifest(String),
    #[error("{object}: damaged record: {detail}")]
    BadRecord { object: String, detail: String },
    #[error("no backup named {name} in {location} (cairn backup-list shows the backups)")]
    NoSuchBackup { name: String, location: String },
    #[error("no backups in {location}")]
    NoBackups { location: String },
    #[error("backup {name} cannot be restored: {reason}")]
    BrokenChain { name: String, reason: String },
    #[error(
        "{segment} belongs to the cluster with system identifier {system}, but {location} holds \
         the WAL of cluster {} and already has {later} at or after it: two clusters may be \
         archiving to the same storage prefix; give each its own",
        .others.join(", ")
    )]
    ForeignCluster {
        system: crate::pg::wal::SystemId,
        others: Vec<String>,
        segment: String,
        later: String,
        location: String,
    },
}

/// The host name, for manifests, markers, records and lock holders.
pub fn hostname() -> String {
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
