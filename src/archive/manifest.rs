//! The backup manifest: everything known about one base backup, written last
//! (a backup without one is not a backup) and read by fetch, list, retention
//! and verification. Stored as JSON in a cairn object, compressed but never
//! encrypted, so that listing and retention need no secret key; it holds
//! names, sizes and checksums, not data. Format: `docs/FORMAT.md`.
//!
//! Typed: times, LSNs, the timeline, WAL files, the segment size and the
//! system identifier are parsed once, when the manifest is read, and a
//! manifest whose values PostgreSQL could not have produced (or that
//! contradict each other) is refused there, naming the field.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pg::datadir::Tablespace;
use crate::pg::wal::{Lsn, Segment, SegmentSize, SystemId, TimelineId};

/// Version of the manifest layout; readers refuse newer ones. Full backups are
/// still written as version 1, which older cairns read; deltas need version 2.
pub const MANIFEST_VERSION: u32 = 2;
/// The version of a full backup's manifest.
pub const FULL_MANIFEST_VERSION: u32 = 1;

/// Whether a backup stands alone or is built on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Delta,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Full => "full",
            Kind::Delta => "delta",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    /// `base_<start WAL file>` (deltas `…_D_<parent start WAL file>`).
    pub name: String,
    pub kind: Kind,
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
    /// WAL file holding `start_lsn`, and the one holding the last byte before
    /// `stop_lsn`: a restore needs at least this range from the archive.
    pub start_wal_file: Segment,
    pub stop_wal_file: Segment,
    pub wal_segment_size: SegmentSize,
    /// RFC 3339, UTC, whole seconds.
    #[serde(with = "rfc3339")]
    pub start_time: OffsetDateTime,
    #[serde(with = "rfc3339")]
    pub finish_time: OffsetDateTime,
    /// As a string: JSON readers that use doubles would round a u64.
    pub system_identifier: SystemId,
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
    /// Pages whose checksum failed when the backup read them (the cluster
    /// has data checksums; the page was not written since the backup
    /// started, and failed again when read again): corrupt on disk, stored
    /// as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupt_pages: Vec<CorruptPage>,
}

/// A page found corrupt on disk when a backup read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptPage {
    /// The relation file, as in `files` (`base/5/16384.1`).
    pub file: String,
    /// The block number in its relation fork (counted across segment
    /// files, as PostgreSQL's own messages count it).
    pub block: u32,
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
    /// The part's index (see [`super::part_index`]): parts stored framed
    /// have one, older ones and the control part none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<super::part_index::IndexRef>,
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
        self.kind == Kind::Delta
    }

    /// The segment holding the start LSN: the first WAL file a restore reads.
    pub fn start_segment(&self) -> Segment {
        Segment::containing(self.timeline, self.start_lsn, self.wal_segment_size)
    }

    /// The segment holding the last byte before the stop LSN: the last one a
    /// restore needs to become consistent.
    pub fn stop_segment(&self) -> Segment {
        stop_segment(self.timeline, self.stop_lsn, self.wal_segment_size)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data to a Vec cannot fail.
        serde_json::to_vec_pretty(self).expect("manifest serializes")
    }

    /// Parses and checks a manifest read from `object`, which should be the
    /// manifest of backup `name` (when known).
    pub fn from_json(bytes: &[u8], object: &str, name: Option<&str>) -> Result<Manifest, String> {
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
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("{object}: damaged manifest: {e}"))?;
        m.check(name)
            .map_err(|e| format!("{object}: damaged manifest: {e}"))?;
        Ok(m)
    }

    /// Refuses values that contradict each other.
    fn check(&self, name: Option<&str>) -> Result<(), String> {
        if let Some(n) = name
            && n != self.name
        {
            return Err(format!("it names backup {}, not {n}", self.name));
        }
        if self.name.is_empty() || self.name.contains('/') {
            return Err(format!("name {:?} is not a backup name", self.name));
        }
        if self.timeline.0 == 0 {
            return Err("timeline 0 does not exist".into());
        }
        if self.stop_lsn < self.start_lsn {
            return Err(format!(
                "stop_lsn {} is before start_lsn {}",
                self.stop_lsn, self.start_lsn
            ));
        }
        if self.start_wal_file != self.start_segment() {
            return Err(format!(
                "start_wal_file {} does not hold start_lsn {} (that is {})",
                self.start_wal_file,
                self.start_lsn,
                self.start_segment()
            ));
        }
        match (self.kind, &self.parent, self.chain_depth) {
            (Kind::Full, None, 0) | (Kind::Delta, Some(_), 1..) => {}
            (kind, parent, depth) => {
                return Err(format!(
                    "kind {kind} with parent {parent:?} and chain_depth {depth} do not fit together"
                ));
            }
        }
        if let Some(i) = self
            .files
            .iter()
            .filter_map(|f| f.part)
            .find(|&i| i >= self.parts.len())
        {
            return Err(format!(
                "a file is in part {i}, but there are {} parts",
                self.parts.len()
            ));
        }
        Ok(())
    }
}

/// The segment holding the last byte before `stop` (PostgreSQL's
/// `XLByteToPrevSeg`, as pg_backup_stop names it).
pub fn stop_segment(timeline: TimelineId, stop: Lsn, size: SegmentSize) -> Segment {
    Segment::containing(timeline, Lsn(stop.0.saturating_sub(1)), size)
}

/// Times as the manifest stores them: RFC 3339, UTC, whole seconds.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    /// `t` as the manifest (and `backup-list`) prints it.
    pub fn format(t: OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        t.replace_nanosecond(0)
            .unwrap_or(t)
            .format(&Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    }

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time: {e}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A manifest as cairn writes it, for tests.
    pub(crate) fn sample() -> Manifest {
        Manifest {
            manifest_version: FULL_MANIFEST_VERSION,
            name: "base_000000010000000000000002".into(),
            kind: Kind::Full,
            parent: None,
            delta_from_lsn: None,
            chain_depth: 0,
            remote: false,
            start_lsn: "0/2000028".parse().unwrap(),
            stop_lsn: "0/2000100".parse().unwrap(),
            timeline: TimelineId(1),
            start_wal_file: "000000010000000000000002".parse().unwrap(),
            stop_wal_file: "000000010000000000000002".parse().unwrap(),
            wal_segment_size: SegmentSize::DEFAULT,
            start_time: time::macros::datetime!(2026-11-20 6:00 UTC),
            finish_time: time::macros::datetime!(2026-11-20 6:01 UTC),
            system_identifier: SystemId(7_300_000_000_000_000_001),
            pg_version: 150_004,
            hostname: "db1".into(),
            data_directory: "/var/lib/postgresql/15/main".into(),
            tablespaces: Vec::new(),
            raw_size: 10,
            stored_size: 8,
            compression: "lz4".into(),
            encrypted: false,
            label: "l".into(),
            permanent: false,
            backup_label: String::new(),
            tablespace_map: None,
            parts: Vec::new(),
            files: Vec::new(),
            corrupt_pages: Vec::new(),
        }
    }

    #[test]
    fn round_trips_in_the_documented_form() {
        let m = sample();
        let json = m.to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["start_time"], "2026-11-20T06:00:00Z");
        assert_eq!(v["system_identifier"], "7300000000000000001");
        assert_eq!(v["start_wal_file"], "000000010000000000000002");
        assert_eq!(v["wal_segment_size"], 16777216);
        assert_eq!(v["start_lsn"], "0/2000028");
        assert_eq!(v["kind"], "full");
        assert_eq!(Manifest::from_json(&json, "m", Some(&m.name)).unwrap(), m);
    }

    #[test]
    fn bad_values_are_refused_at_load_naming_the_field() {
        let json = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
            f(&mut v);
            Manifest::from_json(&serde_json::to_vec(&v).unwrap(), "m", None).unwrap_err()
        };
        let e = json(&|v| v["start_time"] = "yesterday".into());
        assert!(e.contains("yesterday"), "{e}");
        let e = json(&|v| v["system_identifier"] = "x1".into());
        assert!(e.contains("system identifier"), "{e}");
        let e = json(&|v| v["wal_segment_size"] = 3.into());
        assert!(e.contains("segment size"), "{e}");
        let e = json(&|v| v["stop_lsn"] = "0/1000000".into());
        assert!(e.contains("before start_lsn"), "{e}");
        let e = json(&|v| v["start_wal_file"] = "000000010000000000000009".into());
        assert!(e.contains("does not hold"), "{e}");
        let e = json(&|v| v["kind"] = "delta".into());
        assert!(e.contains("do not fit"), "{e}");
        let e = Manifest::from_json(&sample().to_json(), "m", Some("base_other")).unwrap_err();
        assert!(e.contains("not base_other"), "{e}");
        let mut newer: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        newer["manifest_version"] = 9.into();
        let e = Manifest::from_json(&serde_json::to_vec(&newer).unwrap(), "m", None).unwrap_err();
        assert!(e.contains("upgrade cairn"), "{e}");
    }
}
