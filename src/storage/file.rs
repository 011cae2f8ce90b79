//! Local-directory backend: each object is a file under the root. Writes go to a
//! temporary name in the same directory, are fsynced, then renamed (or hard-linked,
//! which fails atomically if the name exists, for create-if-absent), and the
//! directory is fsynced, so a crash never leaves a partial object under its name.
//! Every filesystem call runs on a blocking thread; the errors name the file
//! and the operating system's cause (a full disk, a permission).

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::TryStreamExt;

use super::{ByteStream, ObjectKey, ObjectMeta, PutBody, PutMode, Storage, StorageError};
use crate::durable::{TMP_MARK, tmp_owner, tmp_path};

#[derive(Debug, Clone)]
pub struct FileStorage {
    root: PathBuf,
    location: String,
}

impl FileStorage {
    /// `location`: the storage URL, for messages.
    pub fn new(root: PathBuf, location: String) -> Self {
        FileStorage { root, location }
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn err(&self, op: &'static str, key: &str, e: std::io::Error) -> StorageError {
        match e.kind() {
            ErrorKind::NotFound => StorageError::NotFound {
                key: key.to_string(),
                location: self.location.clone(),
            },
            ErrorKind::AlreadyExists => StorageError::AlreadyExists {
                key: key.to_string(),
                location: self.location.clone(),
            },
            _ => StorageError::Permanent {
                op,
                key: key.to_string(),
                location: self.location.clone(),
                message: e.to_string(),
            },
        }
    }

    /// Reading from a root that does not exist is a configuration error, not a
    /// missing object (a typo in the URL must not look like the end of the archive).
    fn check_root(&self, op: &'static str, key: &str) -> Result<(), StorageError> {
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StorageError::Permanent {
                op,
                key: key.to_string(),
                location: self.location.clone(),
                message: "the storage path is not a directory".into(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StorageError::NoStorage {
                location: self.location.clone(),
                message: format!("no directory {} (for {op} {key})", self.root.display()),
            }),
            Err(e) => Err(StorageError::Permanent {
                op,
                key: key.to_string(),
                location: self.location.clone(),
                message: format!("storage directory {}: {e}", self.root.display()),
            }),
        }
    }

    /// Runs `f` on a blocking thread with a copy of this backend.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &str,
        f: impl FnOnce(FileStorage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| StorageError::Permanent {
                op,
                key: key.to_string(),
                location: self.location.clone(),
                message: e.to_string(),
            })?
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Whether the process that wrote temporary file `name` is certainly gone.
fn writer_gone(name: &str) -> bool {
    let Some(pid) = tmp_owner(name) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists
    // (EPERM: it does, as another user).
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[async_trait]
impl Storage for FileStorage {
    fn location(&self) -> &str {
        &self.location
    }

    fn put_buffering(&self, _size: u64) -> u64 {
        // Chunks go to the temporary file as they arrive.
        0
    }

    async fn put(&self, key: &ObjectKey, body: PutBody, mode: PutMode) -> Result<(), StorageError> {
        let runtime = tokio::runtime::Handle::current();
        let k = key.clone();
        self.blocking("put", key.as_str(), move |me| {
            let dest = me.path(&k);
            let dir = dest
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| me.root.clone());
            let err = |e| me.err("put", k.as_str(), e);
            std::fs::create_dir_all(&dir).map_err(err)?;
            let tmp = tmp_path(&dest);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(err)?;
            // The body's own failure (its producer's) is not the storage's.
            let body_failed = |e: std::io::Error| StorageError::Permanent {
                op: "read body for",
                key: k.to_string(),
                location: me.location.clone(),
                message: e.to_string(),
            };
            let written = (|| {
                match body {
                    PutBody::Bytes(b) => file.write_all(&b).map_err(err)?,
                    PutBody::Stream(mut s) => {
                        while let Some(chunk) =
                            runtime.block_on(s.try_next()).map_err(body_failed)?
                        {
                            file.write_all(&chunk).map_err(err)?;
                        }
                    }
                }
                file.sync_all().map_err(err)?;
                match mode {
                    PutMode::Overwrite => std::fs::rename(&tmp, &dest).map_err(err)?,
                    PutMode::CreateIfAbsent => {
                        // link(2) refuses an existing name atomically; rename would replace it.
                        std::fs::hard_link(&tmp, &dest).map_err(err)?;
                        let _ = std::fs::remove_file(&tmp);
                    }
                }
                fsync_dir(&dir).map_err(err)
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written
        })
        .await
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path(key);
        match tokio::fs::File::open(&path).await {
            Ok(mut f) => {
                if start > 0 {
                    f.seek(std::io::SeekFrom::Start(start))
                        .await
                        .map_err(|e| self.err("get", key.as_str(), e))?;
                }
                let len = end.map_or(u64::MAX, |end| end.saturating_sub(start));
                let capacity = len.clamp(8 << 10, 1 << 20) as usize;
                Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    f.take(len),
                    capacity,
                )))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let k = key.clone();
                self.blocking("get", key.as_str(), move |me| {
                    me.check_root("get", k.as_str())?;
                    Err(me.err("get", k.as_str(), e))
                })
                .await
            }
            Err(e) => Err(self.err("get", key.as_str(), e)),
        }
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let k = key.clone();
        self.blocking("head", key.as_str(), move |me| {
            match std::fs::metadata(me.path(&k)) {
                Ok(m) => Ok(Some(ObjectMeta {
                    key: k.clone(),
                    size: m.len(),
                    modified: m.modified().ok(),
                })),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    me.check_root("head", k.as_str())?;
                    Ok(None)
                }
                Err(e) => Err(me.err("head", k.as_str(), e)),
            }
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        self.blocking("list", &prefix.clone(), move |me| {
            me.check_root("list", &prefix)?;
            // Only the directory part of the prefix needs walking.
            let base = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let mut out = Vec::new();
            walk(&me.root, &me.root.join(base), &prefix, &mut out).map_err(|e| {
                StorageError::Permanent {
                    op: "list",
                    key: prefix.clone(),
                    location: me.location.clone(),
                    message: e.to_string(),
                }
            })?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            if let Some(after) = start_after {
                out.retain(|m| m.key.as_str() > after.as_str());
            }
            if let Some(limit) = limit {
                out.truncate(limit);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError> {
        let keys = keys.to_vec();
        let first = keys.first().map(ObjectKey::to_string).unwrap_or_default();
        self.blocking("delete", &first, move |me| {
            // In the order given: an interruption leaves a prefix done.
            for key in &keys {
                let path = me.path(key);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(me.err("delete", key.as_str(), e)),
                }
                // A deleted backup leaves no empty directory behind (its objects
                // are deleted together; other directories stay, as they are
                // shared by every writer).
                if key.as_str().starts_with("basebackups/")
                    && let Some(dir) = path.parent()
                {
                    remove_stale_temps(dir, None);
                    let _ = std::fs::remove_dir(dir);
                }
            }
            Ok(())
        })
        .await
    }

    async fn remove_leftovers(&self, older_than: Duration) -> Result<usize, StorageError> {
        self.blocking("clean up", "", move |me| {
            let cutoff = SystemTime::now()
                .checked_sub(older_than)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut removed = 0;
            let mut dirs = vec![me.root.clone()];
            while let Some(dir) = dirs.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    match e.file_type() {
                        Ok(t) if t.is_dir() => dirs.push(e.path()),
                        Ok(t) if t.is_file() => {}
                        _ => continue,
                    }
                }
                removed += remove_stale_temps(&dir, Some(cutoff));
                // A killed backup's directory that only held temporary files.
                if dir != me.root && dir.starts_with(me.root.join("basebackups")) {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// Removes the temporary files in `dir` whose writer is gone (a process
/// killed mid-write: their names carry its id), when last written before
/// `cutoff` (if given). Returns how many.
fn remove_stale_temps(dir: &Path, cutoff: Option<SystemTime>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.contains(TMP_MARK) || !writer_gone(&name) {
            continue;
        }
        let old =
            cutoff.is_none_or(|c| e.metadata().and_then(|m| m.modified()).is_ok_and(|m| m < c));
        if old && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let Some(rel) = rel.to_str() else { continue };
        let ft = entry.file_type()?;
        if ft.is_dir() {
            // Descend only where keys below could still match the prefix.
            let as_dir = format!("{rel}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(root, &path, prefix, out)?;
            }
        } else if ft.is_file()
            && rel.starts_with(prefix)
            && !rel.contains(TMP_MARK)
            && let Ok(key) = ObjectKey::new(rel)
        {
            let meta = entry.metadata()?;
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                modified: meta.modified().ok(),
            });
        }
    }
    Ok(())
}
