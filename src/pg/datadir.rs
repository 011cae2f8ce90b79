//! Walking a data directory for a base backup: what goes in, what stays out
//! (PostgreSQL docs, "Backing Up the Data Directory"), and where tablespaces are.
//!
//! Paths in a backup are relative and `/`-separated. Tablespace contents appear
//! under `pg_tblspc/<oid>/`, where PostgreSQL's link points, so that a restore
//! can put them anywhere; the links themselves are recorded as [`Tablespace`]s.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directories whose contents a backup leaves out; the directories themselves
/// are kept (restores recreate them empty).
pub const EXCLUDED_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_replslot",
];

/// Files left out wherever they are (top level only for most, see [`excluded_file`]).
const EXCLUDED_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    // Written fresh from pg_backup_stop, never copied from the directory.
    "backup_label",
    "tablespace_map",
    "backup_label.old",
    "backup_manifest",
    "recovery.signal",
    "standby.signal",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// What kind of thing an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File { size: u64 },
}

/// One thing to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated path in the backup.
    pub path: String,
    /// Where it is on disk now.
    pub source: PathBuf,
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    pub mtime: i64,
}

impl Entry {
    /// Bytes of file data (0 for a directory), as of the walk.
    pub fn size(&self) -> u64 {
        match self.kind {
            EntryKind::File { size } => size,
            EntryKind::Dir => 0,
        }
    }
}

/// A tablespace: `pg_tblspc/<oid>` links to `location`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub location: PathBuf,
}

/// Why a data directory cannot be walked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{0} is not a PostgreSQL data directory (no PG_VERSION or global/pg_control); pass the \
         cluster's data directory"
    )]
    NotADataDir(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("pg_tblspc/{name}: not a tablespace link (expected a symbolic link named by an OID)")]
    BadTablespace { name: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The system identifier recorded in `global/pg_control` (its first field).
pub fn system_identifier(pgdata: &Path) -> Result<u64, DataDirError> {
    check_data_dir(pgdata)?;
    let path = pgdata.join("global/pg_control");
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DataDirError::NotADataDir(pgdata.to_path_buf()))?;
    Ok(u64::from_le_bytes(first))
}

fn check_data_dir(pgdata: &Path) -> Result<(), DataDirError> {
    if pgdata.join("PG_VERSION").is_file() && pgdata.join("global/pg_control").is_file() {
        Ok(())
    } else {
        Err(DataDirError::NotADataDir(pgdata.to_path_buf()))
    }
}

/// Lists what a base backup of `pgdata` contains, directories before their
/// contents, in a stable order. `global/pg_control` is left out: it goes last,
/// in its own part. Files that vanish while walking are skipped: WAL replay
/// recreates whatever they held.
pub fn walk(pgdata: &Path) -> Result<(Vec<Entry>, Vec<Tablespace>), DataDirError> {
    check_data_dir(pgdata)?;
    let mut entries = Vec::new();
    let mut tablespaces = Vec::new();
    walk_dir(pgdata, "", true, &mut entries, &mut tablespaces)?;
    Ok((entries, tablespaces))
}

fn walk_dir(
    dir: &Path,
    rel: &str,
    top: bool,
    entries: &mut Vec<Entry>,
    tablespaces: &mut Vec<Tablespace>,
) -> Result<(), DataDirError> {
    let mut names: Vec<_> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !top => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    names.sort();
    let unlogged: HashSet<String> = unlogged_relations(&names, rel)
        .into_iter()
        .map(String::from)
        .collect();
    for name in &names {
        let name = name.clone();
        let path = rel_join(rel, &name);
        let source = dir.join(&name);
        let unlogged_fork = unlogged.contains(relation_of(&name)) && !is_init_fork(&name);
        if excluded_file(top, rel, &name) || unlogged_fork {
            continue;
        }
        let meta = match fs::symlink_metadata(&source) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&source)(e)),
        };
        if rel == "pg_tblspc" {
            if !meta.file_type().is_symlink() && !meta.is_dir() {
                continue;
            }
            let oid: u32 = name
                .parse()
                .map_err(|_| DataDirError::BadTablespace { name: name.clone() })?;
            let location = if meta.file_type().is_symlink() {
                fs::read_link(&source).map_err(io_err(&source))?
            } else {
                // An in-place tablespace (allow_in_place_tablespaces, tests only).
                source.clone()
            };
            tablespaces.push(Tablespace { oid, location });
            let target = fs::metadata(&source).map_err(io_err(&source))?;
            push(entries, &path, &source, EntryKind::Dir, &target);
            walk_dir(&source, &path, false, entries, tablespaces)?;
            continue;
        }
        let meta = if meta.file_type().is_symlink() {
            // pg_wal may be a link (initdb --waldir); other links are followed:
            // a restore recreates what they point to as plain files.
            match fs::metadata(&source) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&source)(e)),
            }
        } else {
            meta
        };
        if meta.is_dir() {
            push(entries, &path, &source, EntryKind::Dir, &meta);
            let skip_contents = (top && EXCLUDED_CONTENTS.contains(&name.as_str()))
                || name.starts_with("pgsql_tmp");
            if !skip_contents {
                walk_dir(&source, &path, false, entries, tablespaces)?;
            }
        } else if meta.is_file() {
            let kind = EntryKind::File { size: meta.len() };
            push(entries, &path, &source, kind, &meta);
        }
        // Sockets, FIFOs and devices have no place in a data directory backup.
    }
    Ok(())
}

fn push(entries: &mut Vec<Entry>, path: &str, source: &Path, kind: EntryKind, meta: &fs::Metadata) {
    entries.push(Entry {
        path: path.to_string(),
        source: source.to_path_buf(),
        kind,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
    });
}

fn rel_join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

fn excluded_file(top: bool, rel: &str, name: &str) -> bool {
    (top && EXCLUDED_TOP_FILES.contains(&name))
        || (rel == "global" && name == "pg_control")
        || name.starts_with("pg_internal.init")
        || name.starts_with("pgsql_tmp")
        || is_temp_relation(name)
}

/// Temporary relations (`t<backend>_<relfilenode>`) vanish at restart.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, file)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && relation_of(file).bytes().all(|b| b.is_ascii_digit())
        && !relation_of(file).is_empty()
}

/// The relfilenode a relation file belongs to: `16384` for `16384`, `16384.2`,
/// `16384_fsm`, `16384_vm.1` or `16384_init`; the name itself for other files.
pub fn relation_of(name: &str) -> &str {
    let base = name.split(['.', '_']).next().unwrap_or(name);
    if !base.is_empty() && base.bytes().all(|b| b.is_ascii_digit()) {
        base
    } else {
        name
    }
}

/// Whether `name` is a relation data file (main, fsm, vm or init fork, any
/// segment), as found in database directories.
pub fn is_relation_file(name: &str) -> bool {
    let base = relation_of(name);
    if base == name {
        return !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
    }
    let rest = &name[base.len()..];
    let (fork, segment) = match rest.split_once('.') {
        Some((f, s)) => (f, Some(s)),
        None => (rest, None),
    };
    matches!(fork, "" | "_fsm" | "_vm" | "_init")
        && segment.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

/// In a database directory, relations with an init fork are unlogged: only the
/// init fork is backed up (the server resets the rest from it at startup).
fn unlogged_relations<'a>(names: &'a [String], rel: &str) -> HashSet<&'a str> {
    if !in_database_dir(rel) {
        return HashSet::new();
    }
    names
        .iter()
        .filter(|n| n.ends_with("_init") && is_relation_file(n))
        .map(|n| relation_of(n))
        .collect()
}

/// `base/<db>` or `pg_tblspc/<oid>/<version dir>/<db>`.
fn in_database_dir(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    matches!(parts.as_slice(), ["base", _] | ["pg_tblspc", _, _, _])
}

/// `16384_init` or one of its segments: what an unlogged relation keeps.
fn is_init_fork(name: &str) -> bool {
    is_relation_file(name) && name[relation_of(name).len()..].starts_with("_init")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_names() {
        for n in [
            "16384",
            "16384.1",
            "16384_fsm",
            "16384_vm",
            "16384_init",
            "16384_init.3",
        ] {
            assert!(is_relation_file(n), "{n}");
            assert_eq!(relation_of(n), "16384");
        }
        for n in [
            "PG_VERSION",
            "pg_filenode.map",
            "16384_foo",
            "16384.",
            "x16384",
            "",
        ] {
            assert!(!is_relation_file(n), "{n}");
        }
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t3_16384_fsm"));
        assert!(!is_temp_relation("tablespace"));
        assert!(!is_temp_relation("t_1"));
    }

    #[test]
    fn walk_leaves_out_what_the_docs_say() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let files = [
            "PG_VERSION",
            "global/pg_control",
            "global/1262",
            "global/pg_internal.init",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label.old",
            "recovery.signal",
            "standby.signal",
            "postgresql.conf",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.ready",
            "pg_stat_tmp/x",
            "pg_subtrans/0000",
            "pg_replslot/slot/state",
            "pg_notify/0000",
            "base/1/1259",
            "base/1/16384",
            "base/1/16384.1",
            "base/1/16384_fsm",
            "base/1/16384_init",
            "base/1/16390",
            "base/1/t3_16400",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "pg_xact/0000",
        ];
        for f in files {
            let path = p.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, f).unwrap();
        }
        fs::create_dir(p.join("pg_tblspc")).unwrap();
        let ts = tempfile::tempdir().unwrap();
        fs::create_dir_all(ts.path().join("PG_15_202209061/1")).unwrap();
        fs::write(ts.path().join("PG_15_202209061/1/16500"), "ts data").unwrap();
        fs::write(ts.path().join("PG_15_202209061/1/16501_init"), "i").unwrap();
        fs::write(ts.path().join("PG_15_202209061/1/16501"), "u").unwrap();
        std::os::unix::fs::symlink(ts.path(), p.join("pg_tblspc/16400")).unwrap();

        let (entries, tablespaces) = walk(p).unwrap();
        let files: Vec<&str> = entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(
            files,
            [
                "PG_VERSION",
                "base/1/1259",
                "base/1/16384_init",
                "base/1/16390",
                "global/1262",
                "pg_tblspc/16400/PG_15_202209061/1/16500",
                "pg_tblspc/16400/PG_15_202209061/1/16501_init",
                "pg_xact/0000",
                "postgresql.conf",
            ]
        );
        let dirs: Vec<&str> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Dir)
            .map(|e| e.path.as_str())
            .collect();
        for kept in [
            "pg_wal",
            "pg_stat_tmp",
            "pg_replslot",
            "pg_tblspc/16400",
            "base/1",
        ] {
            assert!(dirs.contains(&kept), "{kept} missing from {dirs:?}");
        }
        for gone in [
            "pg_wal/archive_status",
            "pg_replslot/slot",
            "base/pgsql_tmp",
        ] {
            assert!(!dirs.contains(&gone), "{gone} kept");
        }
        assert_eq!(
            tablespaces,
            [Tablespace {
                oid: 16400,
                location: ts.path().to_path_buf()
            }]
        );
        assert!(matches!(
            walk(&p.join("base")),
            Err(DataDirError::NotADataDir(_))
        ));
    }
}
