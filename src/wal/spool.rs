//! The prefetch spool: where `wal-fetch`'s background worker puts segments
//! downloaded ahead of PostgreSQL's requests. It lies outside the data
//! directory, because other tools walk that directory while recovery runs
//! (`pg_rewind --restore-target-wal` fails when a file it listed vanishes
//! before it reads it), and nothing cairn does in the background may appear
//! there as a transient file.
//!
//! Location: `wal_fetch_spool` when configured (best on the data directory's
//! filesystem: a prefetched segment is then renamed into place), else
//! `$TMPDIR/cairn-<uid>/spool-<hash of the canonical pg_wal path>` (copied
//! into place across filesystems). One spool per data directory, created
//! 0700 and refused when another user owns it or others can reach it (so is
//! the default base, which lies in a directory everyone can write).
//!
//! In it: `<segment>` is a downloaded and verified segment, renamed there
//! only once whole; `<segment>.part` is one being downloaded, under an
//! exclusive `flock` that a waiting `wal-fetch` takes shared. Segments are
//! not fsynced (recovery would then be bound by the disk's write speed);
//! instead a segment written before the machine last booted is never handed
//! out ([`Spool::trusted`]): only an operating-system crash can tear a file
//! that was renamed whole, and after one, everything older than the boot is
//! discarded. A segment taken is checked again (size, page header).

use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::pg::wal::{Segment, WalFileName};

/// The spool of the data directory whose `pg_wal` is `pg_wal`.
#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
}

impl Spool {
    /// The spool for `pg_wal`, created if missing. `configured`: the
    /// `wal_fetch_spool` setting (the data directory's own subdirectory of it
    /// is used, so that one setting serves several clusters).
    pub fn open(pg_wal: &Path, configured: Option<&Path>) -> io::Result<Spool> {
        let canonical = std::fs::canonicalize(pg_wal)?;
        let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes());
        let leaf = format!("spool-{}", &hash.to_hex()[..16]);
        let dir = match configured {
            // The operator's choice: created if missing, trusted as it is.
            Some(base) => {
                std::fs::create_dir_all(base).map_err(|e| {
                    io::Error::new(e.kind(), format!("prefetch spool {}: {e}", base.display()))
                })?;
                base.join(leaf)
            }
            None => {
                // SAFETY: geteuid has no preconditions.
                let uid = unsafe { libc::geteuid() };
                let base = std::env::temp_dir().join(format!("cairn-{uid}"));
                private_dir(&base)?;
                base.join(leaf)
            }
        };
        private_dir(&dir)?;
        Ok(Spool { dir })
    }

    /// The spool if it exists already (for tidying up), without creating it.
    pub fn existing(pg_wal: &Path, configured: Option<&Path>) -> Option<Spool> {
        let canonical = std::fs::canonicalize(pg_wal).ok()?;
        let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes());
        let leaf = format!("spool-{}", &hash.to_hex()[..16]);
        let base = match configured {
            Some(b) => b.to_path_buf(),
            None => {
                // SAFETY: geteuid has no preconditions.
                let uid = unsafe { libc::geteuid() };
                std::env::temp_dir().join(format!("cairn-{uid}"))
            }
        };
        let dir = base.join(leaf);
        dir.is_dir().then_some(Spool { dir })
    }

    /// Where a finished segment lies.
    pub fn done(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    /// Where a segment is being downloaded.
    pub fn part(&self, name: &WalFileName) -> PathBuf {
        part_path(&self.done(name))
    }

    /// Whether the file at `path` was written since the machine booted:
    /// a file that survived an operating-system crash may be torn.
    pub fn trusted(path: &Path) -> bool {
        let Some(boot) = boot_time() else {
            return false;
        };
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= boot)
    }

    /// Whether a download of `name` is under way or finished.
    pub fn has(&self, name: &WalFileName) -> bool {
        self.done(name).exists() || in_flight(&self.part(name))
    }

    /// Removes segments that recovery has passed or that belong to another
    /// timeline than the one it is now reading.
    pub fn discard_stale(&self, current: Segment) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = match name
                .strip_suffix(".part")
                .unwrap_or(name)
                .parse::<WalFileName>()
            {
                Ok(WalFileName::Segment(s)) => s.timeline != current.timeline || s <= current,
                _ => true,
            };
            if stale && (!name.ends_with(".part") || !in_flight(&e.path())) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Empties the spool (recovery is over) and removes it.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// When the machine booted (Linux: `btime` in /proc/stat); `None` where it
/// cannot tell, and then nothing in the spool is trusted.
fn boot_time() -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn part_path(done: &Path) -> PathBuf {
    let mut p = done.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// Whether someone holds the download lock of `part`.
pub fn in_flight(part: &Path) -> bool {
    File::open(part).is_ok_and(|f| matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock)))
}

/// Creates `dir` (mode 0700) or checks an existing one: a directory (not a
/// link), ours, and closed to others; anything else could let another user
/// hand PostgreSQL a WAL file.
fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("prefetch spool {}: {e}", dir.display()),
            ));
        }
    }
    let m = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let problem = if !m.is_dir() {
        Some("is not a directory")
    } else if m.uid() != uid {
        Some("belongs to another user")
    } else if m.permissions().mode() & 0o077 != 0 {
        Some("is open to other users (it must be mode 0700)")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("prefetch spool {} {p}", dir.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spools_are_private_and_one_per_data_directory() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a/pg_wal"), t.path().join("b/pg_wal"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let base = t.path().join("spool");
        let sa = Spool::open(&a, Some(&base)).unwrap();
        let sb = Spool::open(&b, Some(&base)).unwrap();
        assert_ne!(sa.dir, sb.dir);
        assert_eq!(Spool::open(&a, Some(&base)).unwrap().dir, sa.dir);
        assert!(!sa.dir.starts_with(t.path().join("a")));
        let mode = std::fs::metadata(&sa.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&sa.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Spool::open(&a, Some(&base)).unwrap_err().to_string();
        assert!(e.contains("mode 0700"), "{e}");
        assert_eq!(
            Spool::existing(&b, Some(&base)).map(|s| s.dir),
            Some(sb.dir.clone())
        );
    }

    #[test]
    fn only_files_written_since_the_boot_are_trusted() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("000000010000000000000001");
        std::fs::write(&f, b"x").unwrap();
        assert!(Spool::trusted(&f));
        let before_boot = boot_time().unwrap() - std::time::Duration::from_secs(60);
        let file = std::fs::File::options().write(true).open(&f).unwrap();
        file.set_modified(before_boot).unwrap();
        assert!(!Spool::trusted(&f));
    }
}
