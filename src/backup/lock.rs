//! One backup of a cluster at a time: a session-level advisory lock per
//! storage (any host, local or remote backups), and a file lock in the data
//! directory (this host).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::BackupError;
use crate::Context;
use crate::archive::manifest::rfc3339;
use crate::pg::client::PgSession;

/// One backup of a cluster into one storage at a time, from any host, local
/// or remote: a session-level advisory lock on the cluster, keyed by the
/// storage location, which the server releases when the holding session ends
/// (so when the holder dies). `session` must stay open for the backup.
pub async fn cluster_lock(ctx: &Context, session: &PgSession) -> Result<(), BackupError> {
    let location = ctx.storage.location();
    let hash = blake3::hash(location.as_bytes());
    let key = i32::from_le_bytes([
        hash.as_bytes()[0],
        hash.as_bytes()[1],
        hash.as_bytes()[2],
        hash.as_bytes()[3],
    ]);
    match session.try_lock(key).await? {
        None => Ok(()),
        Some(holder) => Err(BackupError::Locked {
            path: PathBuf::from(location),
            holder: format!("held by {holder}"),
        }),
    }
}

/// One backup of a cluster at a time from this host: an exclusive lock on a
/// file in the data directory's `pg_wal/.cairn/`, which the kernel releases
/// when the holder exits, however it exits.
pub struct BackupLock {
    _file: File,
}

impl BackupLock {
    pub fn acquire(pgdata: &Path) -> Result<BackupLock, BackupError> {
        let dir = pgdata.join("pg_wal/.cairn");
        std::fs::create_dir_all(&dir).map_err(BackupError::io(&dir))?;
        let path = dir.join("backup.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(BackupError::io(&path))?;
        // Run as root (cron), cairn must not leave root-owned state where
        // wal-push, running as the cluster's owner, keeps its own.
        if let Ok(owner) = std::fs::metadata(pgdata) {
            use std::os::unix::fs::MetadataExt;
            for p in [&dir, &path] {
                let _ = std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid()));
            }
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(BackupError::Locked {
                    path,
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(BackupError::io(&path)(e)),
        }
        let holder = format!(
            "pid {} on {} since {}",
            std::process::id(),
            crate::archive::hostname(),
            rfc3339::format(time::OffsetDateTime::now_utc())
        );
        let _ = file.set_len(0);
        let _ = file.write_all(holder.as_bytes());
        Ok(BackupLock { _file: file })
    }
}
