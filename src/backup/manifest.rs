//! The backup manifest: everything known about one base backup, written last
//! (a backup without one is not a backup) and read by fetch, list and retention.
//! Stored as JSON in a cairn object, compressed but never encrypted, so that
//! listing and retention need no secret key; it holds names, sizes and
//! checksums, not data. Format: `docs/FORMAT.md`.

use serde::{Deserialize, Serialize};

use crate::pg::datadir::Tablespace;
use crate::pg::wal::{Lsn, TimelineId};

/// Version of the manifest layout; readers refuse newer ones.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    /// `base_<start WAL file>`.
    pub name: String,
    /// `full` (deltas come later).
    pub kind: String,
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
    /// BLAKE3 of the bytes stored, hex (files only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// Index into `parts`.
    pub part: usize,
}

impl Manifest {
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
