//! An in-memory [`Storage`], for fast tests of the code above storage: same
//! contract as the real backends (create-if-absent is atomic, listings are in
//! key order, deletes of missing keys succeed), nothing persisted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;

use super::{ByteStream, ObjectKey, ObjectMeta, PutBody, PutMode, Storage, StorageError};

#[derive(Debug, Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<ObjectKey, (Bytes, SystemTime)>>,
    /// What [`Storage::reads_ahead`] says (0: the default, 1).
    reads_ahead: usize,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// A store that asks for `n` ranged reads in flight, as network
    /// backends do, for tests of [`super::windowed`].
    pub fn reading_ahead(n: usize) -> MemoryStorage {
        MemoryStorage {
            reads_ahead: n,
            ..MemoryStorage::default()
        }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectKey, (Bytes, SystemTime)>> {
        // A test that panicked while holding the lock has failed already.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored bytes of `key`, for tests that inspect or damage objects.
    pub fn raw(&self, key: &ObjectKey) -> Option<Bytes> {
        self.objects().get(key).map(|(b, _)| b.clone())
    }

    /// Replaces the stored bytes of `key` (tests that damage objects).
    pub fn set_raw(&self, key: &ObjectKey, bytes: Bytes) {
        self.objects()
            .insert(key.clone(), (bytes, SystemTime::now()));
    }
}

const LOCATION: &str = "mem://";

#[async_trait]
impl Storage for MemoryStorage {
    fn location(&self) -> &str {
        LOCATION
    }

    fn put_buffering(&self, size: u64) -> u64 {
        size
    }

    fn reads_ahead(&self) -> usize {
        self.reads_ahead.max(1)
    }

    async fn put(&self, key: &ObjectKey, body: PutBody, mode: PutMode) -> Result<(), StorageError> {
        let bytes = match body {
            PutBody::Bytes(b) => b,
            PutBody::Stream(mut s) => {
                let mut buf = BytesMut::new();
                while let Some(chunk) = s.try_next().await.map_err(|e| StorageError::Permanent {
                    op: "read body for",
                    key: key.to_string(),
                    location: LOCATION.into(),
                    message: e.to_string(),
                })? {
                    buf.extend_from_slice(&chunk);
                }
                buf.freeze()
            }
        };
        let mut objects = self.objects();
        if mode == PutMode::CreateIfAbsent && objects.contains_key(key) {
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
                location: LOCATION.into(),
            });
        }
        objects.insert(key.clone(), (bytes, SystemTime::now()));
        Ok(())
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let Some(bytes) = self.raw(key) else {
            return Err(StorageError::NotFound {
                key: key.to_string(),
                location: LOCATION.into(),
            });
        };
        let from = (start as usize).min(bytes.len());
        let to = end.map_or(bytes.len(), |e| (e as usize).clamp(from, bytes.len()));
        let rest = bytes.slice(from..to);
        // In several chunks, as a network body arrives.
        let chunks: Vec<std::io::Result<Bytes>> = rest
            .chunks(64 << 10)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        Ok(self.objects().get(key).map(|(b, t)| ObjectMeta {
            key: key.clone(),
            size: b.len() as u64,
            modified: Some(*t),
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        Ok(self
            .objects()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|a| k.as_str() > a))
            .take(limit.unwrap_or(usize::MAX))
            .map(|(k, (b, t))| ObjectMeta {
                key: k.clone(),
                size: b.len() as u64,
                modified: Some(*t),
            })
            .collect())
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError> {
        let mut objects = self.objects();
        for k in keys {
            objects.remove(k);
        }
        Ok(())
    }
}
