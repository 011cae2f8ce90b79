//! Object keys: the one place that spells the archive's layout (`wal/…`,
//! `basebackups/…`, `meta/…`), in both directions: from what is stored to a
//! key, and from a listed key back to what it holds. `docs/FORMAT.md` has the
//! layout.

use crate::pg::wal::WalFileName;
use crate::storage::{ObjectKey, StorageError};

/// Prefix of the WAL files.
pub const WAL: &str = "wal/";
/// Prefix of the base backups, one directory each.
pub const BACKUPS: &str = "basebackups/";
/// Prefix of the records of intentional holes (see [`super::holes`]).
pub const HOLES: &str = "meta/holes/";
/// Prefix of the records of the clusters that write to the archive.
pub const CLUSTERS: &str = "meta/clusters/";

/// A backup's manifest, written last: the backup exists once it does.
pub const MANIFEST_FILE: &str = "manifest.json";
/// A backup's marker while it runs, written first (see [`super::running`]).
pub const RUNNING_FILE: &str = "running.json";
/// See [`server_manifest`].
pub const SERVER_MANIFEST_FILE: &str = "backup_manifest";

/// The object key of a WAL file.
pub fn wal(name: &WalFileName) -> ObjectKey {
    // A parsed WAL name is always one valid key segment.
    ObjectKey::new(format!("{WAL}{name}")).expect("WAL names are valid keys")
}

/// The key prefix of every WAL file of a timeline, and of its history file
/// (`wal/00000002` lists `00000002.history` first: `.` sorts before digits).
pub fn wal_timeline_prefix(timeline: crate::pg::wal::TimelineId) -> String {
    format!("{WAL}{timeline}")
}

/// An object in backup `backup`'s directory. Fails unless both names are one
/// key segment each, so that no name reaches outside the backup.
fn in_backup(backup: &str, file: &str) -> Result<ObjectKey, StorageError> {
    if backup.contains('/') || file.contains('/') {
        return Err(StorageError::InvalidKey {
            key: format!("{BACKUPS}{backup}/{file}"),
        });
    }
    ObjectKey::new(format!("{BACKUPS}{backup}/{file}"))
}

/// A backup's manifest.
pub fn manifest(backup: &str) -> Result<ObjectKey, StorageError> {
    in_backup(backup, MANIFEST_FILE)
}

/// A remote backup's `backup_manifest` as the server wrote it, stored plain
/// (never encrypted, like the manifest) so that a push-only host can upload
/// it for the next incremental backup.
pub fn server_manifest(backup: &str) -> Result<ObjectKey, StorageError> {
    in_backup(backup, SERVER_MANIFEST_FILE)
}

/// A backup's running marker.
pub fn running(backup: &str) -> Result<ObjectKey, StorageError> {
    in_backup(backup, RUNNING_FILE)
}

/// One part of a backup: `basebackups/<backup>/<part>`.
pub fn part(backup: &str, part: &str) -> Result<ObjectKey, StorageError> {
    in_backup(backup, part)
}

/// A record of intentional holes.
pub fn hole_record(id: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::new(format!("{HOLES}{id}.json"))
}

/// The record of one cluster writing to the archive.
pub fn cluster_record(system_identifier: crate::pg::wal::SystemId) -> ObjectKey {
    ObjectKey::new(format!("{CLUSTERS}{system_identifier}.json"))
        .expect("a number is a valid key segment")
}

/// What a listed key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Wal(WalFileName),
    /// An object in a backup's directory (`file` is its name there).
    BackupObject {
        backup: String,
        file: String,
    },
    HoleRecord,
    ClusterRecord,
    /// Something cairn did not write (or a newer cairn's): ignored.
    Other,
}

/// Classifies a listed key.
pub fn classify(key: &ObjectKey) -> Listed {
    let k = key.as_str();
    if let Some(name) = k.strip_prefix(WAL) {
        return name.parse().map_or(Listed::Other, Listed::Wal);
    }
    if let Some((backup, file)) = k.strip_prefix(BACKUPS).and_then(|r| r.split_once('/')) {
        return Listed::BackupObject {
            backup: backup.to_string(),
            file: file.to_string(),
        };
    }
    if k.starts_with(HOLES) && k.ends_with(".json") {
        return Listed::HoleRecord;
    }
    if k.starts_with(CLUSTERS) && k.ends_with(".json") {
        return Listed::ClusterRecord;
    }
    Listed::Other
}

/// `storage/key` as errors name an object.
pub fn object_name(location: &str, key: &ObjectKey) -> String {
    format!("{}/{key}", location.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_classify() {
        let seg: WalFileName = "000000010000000000000003".parse().unwrap();
        assert_eq!(classify(&wal(&seg)), Listed::Wal(seg));
        assert_eq!(
            classify(&manifest("base_000000010000000000000002").unwrap()),
            Listed::BackupObject {
                backup: "base_000000010000000000000002".into(),
                file: MANIFEST_FILE.into()
            }
        );
        assert_eq!(
            classify(&hole_record("20261203T120000Z-1").unwrap()),
            Listed::HoleRecord
        );
        assert_eq!(
            classify(&ObjectKey::new("wal/notes.txt").unwrap()),
            Listed::Other
        );
        assert!(manifest("a/b").is_err());
        assert!(manifest("..").is_err());
        // A history file lists first under its timeline's prefix.
        assert!("wal/00000002.history" < "wal/000000020000000000000001");
        assert!(
            wal(&WalFileName::History(crate::pg::wal::TimelineId(2)))
                .as_str()
                .starts_with(&wal_timeline_prefix(crate::pg::wal::TimelineId(2)))
        );
    }
}
