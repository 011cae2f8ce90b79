//! The backup manifest: everything known about one base backup, written last
//! (a backup without one is not a backup) and read by fetch, list and retention.
//! Stored as JSON in a cairn object, compressed but never encrypted, so that
//! listing and retention need no secret key; it holds names, sizes and
//! checksums, not data. Format: `docs/FORMAT.md`.

use serde::{Deserialize, Serialize};

use crate::pg::datadir::Tablespace;
use crate::pg::wal::{Lsn, TimelineId};

/// Version of the manifest layout; readers refuse newer ones. Full backups are
/// still written as version 1, which older cairns read; deltas need version 2.
pub const MANIFEST_VERSION: u32 = 2;
/// The version of a full backup's manifest.
pub const FULL_MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    /// `base_<start WAL file>`.
    pub name: String,
    /// `full` or `delta`.
    pub kind: String,
    /// For a delta: the backup it is built on (which may be a delta itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For a delta: pages whose LSN is at or after this (the parent's start
    /// LSN) were stored; older ones are the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_from_lsn: Option<Lsn>,
    /// Deltas between this backup and its full backup: 0 for a full.
    #[serde(default)]
    pub chain_depth: u32,
    /// Taken over the replication protocol (`backup-push --remote`), always
    /// full; `data_directory` is then unknown (empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: TimelineId,
    /// WAL file holding `start_lsn`, and the one holding `stop_lsn`: a restore
    /// needs at least this range from the archive.
    pub start_wal_file: String,
    pub stop_wal_file: String,
    pub wal_segment_size: u64,
    /// RFC 3339, UTC.
    pub start_time: String,
    pub finish_time: String,
    /// As a string: JSON readers that use doubles would round a u64.
    pub system_identifier: String,
    /// `server_version_num`, e.g. 150004.
    pub pg_version: u32,
    pub hostname: String,
    pub data_directory: String,
    pub tablespaces: Vec<Tablespace>,
    /// Sum of the file sizes.
    pub raw_size: u64,
    /// Sum of the stored part sizes.
    pub stored_size: u64,
    pub compression: String,
    pub encrypted: bool,
    pub label: String,
    pub permanent: bool,
    /// `backup_label` and `tablespace_map` as pg_backup_stop returned them;
    /// the control part holds the same bytes as files.
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub parts: Vec<PartEntry>,
    pub files: Vec<FileEntry>,
}

/// One stored part: a tar stream, encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEntry {
    /// Object key relative to the backup's directory, e.g. `part_00001.tar`.
    pub key: String,
    /// Bytes of tar.
    pub raw_size: u64,
    /// Bytes stored.
    pub stored_size: u64,
    /// BLAKE3 of the tar bytes, hex.
    pub blake3: String,
    /// The part holding `global/pg_control`, `backup_label` and
    /// `tablespace_map`, restored after all others.
    #[serde(default)]
    pub control: bool,
}

/// One file or directory in the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated; tablespace contents under `pg_tblspc/<oid>/`.
    pub path: String,
    /// `true` for directories (no size or checksum).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    #[serde(default)]
    pub size: u64,
    pub mode: u32,
    /// BLAKE3 of the bytes stored, hex (files only): of the whole file, or of
    /// the page set for `stored: pages`; for `unchanged`, the parent's value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// Index into `parts`; none for a file this backup does not store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<usize>,
    /// How a delta holds this file; `whole` (the default) in full backups.
    #[serde(default, skip_serializing_if = "Stored::is_whole")]
    pub stored: Stored,
}

/// How a backup holds one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stored {
    /// All its bytes, as a tar entry.
    #[default]
    Whole,
    /// Not at all: it is as the parent backup has it.
    Unchanged,
    /// As a page set (`docs/FORMAT.md`) applied to the parent's version: the
    /// tar entry has `bytes` bytes and holds `pages` pages.
    Pages { bytes: u64, pages: u64 },
}

impl Stored {
    pub fn is_whole(&self) -> bool {
        *self == Stored::Whole
    }
}

impl FileEntry {
    /// Bytes of this file's tar entry, when the backup stores it.
    pub fn entry_size(&self) -> u64 {
        match self.stored {
            Stored::Pages { bytes, .. } => bytes,
            _ => self.size,
        }
    }
}

impl Manifest {
    pub fn is_delta(&self) -> bool {
        self.parent.is_some()
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data to a Vec cannot fail.
        serde_json::to_vec_pretty(self).expect("manifest serializes")
    }

    pub fn from_json(bytes: &[u8], object: &str) -> Result<Manifest, String> {
        #[derive(Deserialize)]
        struct Version {
            manifest_version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| format!("{object}: not a cairn manifest: {e}"))?;
        if v.manifest_version > MANIFEST_VERSION {
            return Err(format!(
                "{object}: manifest version {} is newer than this cairn understands; upgrade cairn",
                v.manifest_version
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("{object}: damaged manifest: {e}"))
    }
}
