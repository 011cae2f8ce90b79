//! Local-directory backend: each object is a file under the root. Writes go to a
//! temporary name in the same directory, are fsynced, then renamed (or hard-linked,
//! which fails atomically if the name exists, for create-if-absent), and the
//! directory is fsynced, so a crash never leaves a partial object under its name.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::TryStreamExt;

use super::{ByteStream, ObjectKey, ObjectMeta, PutBody, PutMode, Storage, StorageError};

use crate::durable::{TMP_MARK, tmp_path};

#[derive(Debug)]
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
            Err(e) => Err(StorageError::Permanent {
                op,
                key: key.to_string(),
                location: self.location.clone(),
                message: format!("storage directory {}: {e}", self.root.display()),
            }),
        }
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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
        let dest = self.path(key);
        let dir = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let err = |e| self.err("put", key.as_str(), e);
        tokio::fs::create_dir_all(&dir).await.map_err(err)?;
        let tmp = tmp_path(&dest);
        let result = async {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            match body {
                PutBody::Bytes(b) => file = write_blocking(file, b).await?,
                PutBody::Stream(mut s) => {
                    while let Some(chunk) = s.try_next().await? {
                        file = write_blocking(file, chunk).await?;
                    }
                }
            }
            let (tmp, dest, dir) = (tmp.clone(), dest.clone(), dir.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                file.sync_all()?;
                drop(file);
                match mode {
                    PutMode::Overwrite => std::fs::rename(&tmp, &dest)?,
                    PutMode::CreateIfAbsent => {
                        // link(2) refuses an existing name atomically; rename would replace it.
                        std::fs::hard_link(&tmp, &dest)?;
                        std::fs::remove_file(&tmp)?;
                    }
                }
                fsync_dir(&dir)
            })
            .await
            .map_err(std::io::Error::other)?
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
    }

    async fn get(&self, key: &ObjectKey) -> Result<ByteStream, StorageError> {
        match tokio::fs::File::open(self.path(key)).await {
            Ok(f) => Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                f,
                1 << 20,
            ))),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.check_root("get", key.as_str())?;
                Err(self.err("get", key.as_str(), e))
            }
            Err(e) => Err(self.err("get", key.as_str(), e)),
        }
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.clone(),
                size: m.len(),
                modified: m.modified().ok(),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.check_root("head", key.as_str())?;
                Ok(None)
            }
            Err(e) => Err(self.err("head", key.as_str(), e)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        self.check_root("list", prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || {
            // Only the directory part of the prefix needs walking.
            let base = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let mut out = Vec::new();
            walk(&root, &root.join(base), &prefix, &mut out).map_err(|e| {
                StorageError::Permanent {
                    op: "list",
                    key: prefix.clone(),
                    location,
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
        .map_err(|e| StorageError::Permanent {
            op: "list",
            key: String::new(),
            location: self.location.clone(),
            message: e.to_string(),
        })?
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError> {
        for key in keys {
            match tokio::fs::remove_file(self.path(key)).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(self.err("delete", key.as_str(), e)),
            }
            // A deleted backup leaves no empty directory behind (its objects
            // are deleted together; other directories stay, as they are
            // shared by every writer).
            if key.as_str().starts_with("basebackups/")
                && let Some(dir) = self.path(key).parent()
            {
                remove_stale_temps(dir);
                let _ = tokio::fs::remove_dir(dir).await;
            }
        }
        Ok(())
    }
}

/// Removes the temporary files in `dir` whose writer is gone (a backup
/// killed mid-upload): their names carry the writer's process id.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.contains(TMP_MARK) {
            continue;
        }
        let pid = crate::durable::tmp_owner(&name);
        // SAFETY: kill with signal 0 only checks whether the process exists
        // (EPERM: it does, as another user).
        let alive = pid.is_some_and(|p| {
            let rc = unsafe { libc::kill(p, 0) };
            rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        });
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

async fn write_blocking(
    mut file: std::fs::File,
    b: bytes::Bytes,
) -> std::io::Result<std::fs::File> {
    // Small writes are cheaper inline than a trip to the blocking pool.
    if b.len() <= 1 << 16 {
        file.write_all(&b)?;
        return Ok(file);
    }
    tokio::task::spawn_blocking(move || file.write_all(&b).map(|()| file))
        .await
        .map_err(std::io::Error::other)?
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
