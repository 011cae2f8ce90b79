//! What the WAL tests share: fake data directories, synthetic segments
//! placed where their names say, and running wal-push and wal-fetch as
//! PostgreSQL does, checking the exit status and the one-line error.

use std::path::{Path, PathBuf};
use std::process::Output;

use super::{Archive, TestDir};

pub const MIB: usize = 1 << 20;

/// A fake data directory: `pg_wal/archive_status/`, optionally a signal file.
pub fn datadir(t: &TestDir, signal: Option<&str>) -> PathBuf {
    let d = t.sub("data");
    std::fs::create_dir_all(d.join("pg_wal/archive_status")).unwrap();
    if let Some(s) = signal {
        std::fs::write(d.join(s), "").unwrap();
    }
    d
}

pub fn seg_name(tli: u32, n: u64, seg_size: usize) -> String {
    let per = 0x1_0000_0000u64 / seg_size as u64;
    format!("{tli:08X}{:08X}{:08X}", n / per, n % per)
}

/// `bytes` with the page address that WAL file `name` has (at the segment
/// size its header declares), as PostgreSQL would have written it.
pub fn placed(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let segment = name.strip_suffix(".partial").unwrap_or(name);
    if segment.len() == 24 && bytes.len() >= 40 {
        let size = u32::from_le_bytes(bytes[32..36].try_into().unwrap()) as u64;
        let log = u64::from_str_radix(&segment[8..16], 16).unwrap();
        let seg = u64::from_str_radix(&segment[16..24], 16).unwrap();
        let addr = (log << 32) + seg * size;
        bytes[8..16].copy_from_slice(&addr.to_le_bytes());
    }
    bytes
}

/// Writes a WAL file into the data directory (a segment [`placed`] where its
/// name says), optionally marked ready for archiving.
pub fn write_seg(data: &Path, name: &str, bytes: &[u8], ready: bool) {
    std::fs::write(data.join("pg_wal").join(name), placed(name, bytes)).unwrap();
    if ready {
        std::fs::write(
            data.join("pg_wal/archive_status")
                .join(format!("{name}.ready")),
            "",
        )
        .unwrap();
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn assert_exit(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit status; stderr: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "stderr lacks {needle:?}: {err}"
    );
    if code != 0 {
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(
            lines.len() == 1 || (code == 1 && err.contains("INFO")),
            "want a one-line error, got: {err}"
        );
    }
}

pub fn push(a: &Archive, data: &Path, name: &str) -> Output {
    a.cairn(&["wal-push", &format!("pg_wal/{name}")], data)
}

pub fn fetch(a: &Archive, data: &Path, name: &str) -> Output {
    a.cairn(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], data)
}

/// The one data directory's spool under the configured `base`; nothing of
/// the prefetch is ever inside the data directory.
pub fn spool_dir(base: &Path) -> PathBuf {
    let spools: Vec<PathBuf> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("spool-"))
        })
        .collect();
    assert_eq!(spools.len(), 1, "one spool per data directory: {spools:?}");
    spools[0].clone()
}

pub fn no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.contains("cairn-tmp") && n != "RECOVERYXLOG",
            "left behind: {n}"
        );
    }
}
