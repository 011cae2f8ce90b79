//! Downloads that survive a broken connection: wraps a backend so that a
//! body which fails or stalls after its headers (a reset mid-body, a link
//! that stops delivering) is requested again from the byte where it broke,
//! with backoff, within the retry deadline, instead of failing the read. The
//! readers verify the whole object's checksum at its end, as always, so a
//! resumed object is accepted only if it is exactly the one stored.
//!
//! What cannot be resumed ends the stream with an `io::Error` carrying a
//! [`StorageError`]: a network failure stays a network failure, never taken
//! for a damaged object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;

use super::retry::{gave_up, jitter};
use super::{
    ByteStream, ObjectKey, ObjectMeta, PutBody, PutMode, RetryPolicy, Storage, StorageError,
    StorageOptions,
};

/// A backend whose downloads resume.
#[derive(Debug)]
pub struct Resuming {
    inner: Arc<dyn Storage>,
    retry: RetryPolicy,
    idle: Duration,
}

impl Resuming {
    pub fn new(inner: Arc<dyn Storage>, opts: &StorageOptions) -> Resuming {
        Resuming {
            inner,
            retry: opts.retry,
            idle: opts.idle_timeout,
        }
    }
}

#[async_trait]
impl Storage for Resuming {
    fn location(&self) -> &str {
        self.inner.location()
    }

    fn put_buffering(&self, size: u64) -> u64 {
        self.inner.put_buffering(size)
    }

    fn reads_ahead(&self) -> usize {
        self.inner.reads_ahead()
    }

    async fn put(&self, key: &ObjectKey, body: PutBody, mode: PutMode) -> Result<(), StorageError> {
        self.inner.put(key, body, mode).await
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let first = self.inner.get_range(key, start, end).await?;
        let state = Body {
            inner: self.inner.clone(),
            key: key.clone(),
            retry: self.retry,
            idle: self.idle,
            stream: Some(first),
            at: start,
            end,
            failing_since: None,
            backoff: self.retry.initial_backoff,
            tries: 0,
        };
        Ok(Box::pin(futures::stream::unfold(state, Body::next)))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        self.inner.head(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        self.inner.list(prefix, start_after, limit).await
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError> {
        self.inner.delete_many(keys).await
    }

    async fn remove_leftovers(&self, older_than: Duration) -> Result<usize, StorageError> {
        self.inner.remove_leftovers(older_than).await
    }
}

/// A download in progress.
struct Body {
    inner: Arc<dyn Storage>,
    key: ObjectKey,
    retry: RetryPolicy,
    idle: Duration,
    /// `None` once the stream ended (or failed for good).
    stream: Option<ByteStream>,
    /// Bytes delivered so far (from the object's start).
    at: u64,
    /// Where the requested range ends, if not at the object's end.
    end: Option<u64>,
    /// When the current run of failures began (progress resets it).
    failing_since: Option<Instant>,
    backoff: Duration,
    tries: u32,
}

type Item = std::io::Result<bytes::Bytes>;

impl Body {
    async fn next(mut self) -> Option<(Item, Body)> {
        loop {
            let stream = self.stream.as_mut()?;
            let idle = self.retry.idle(self.idle);
            let failure = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.at += chunk.len() as u64;
                    self.failing_since = None;
                    self.backoff = self.retry.initial_backoff;
                    self.tries = 0;
                    return Some((Ok(chunk), self));
                }
                Ok(None) => {
                    self.stream = None;
                    return None;
                }
                // A backend's own storage error (not a broken body) is final.
                Ok(Some(Err(e))) if StorageError::is_in(&e) => {
                    self.stream = None;
                    return Some((Err(e), self));
                }
                Ok(Some(Err(e))) => format!("the download broke after {} bytes: {e}", self.at),
                Err(_) => format!(
                    "the download stalled after {} bytes: no data for {} s",
                    self.at,
                    idle.as_secs()
                ),
            };
            match self.resume(failure).await {
                Ok(stream) => self.stream = Some(stream),
                Err(e) => {
                    self.stream = None;
                    return Some((Err(std::io::Error::other(e)), self));
                }
            }
        }
    }

    /// Requests the object again from where it broke, after a backoff,
    /// while the deadline allows.
    async fn resume(&mut self, failure: String) -> Result<ByteStream, StorageError> {
        if self.end.is_some_and(|end| self.at >= end) {
            // Every byte asked for came; only the end of the body broke.
            return Ok(Box::pin(futures::stream::empty()));
        }
        let started = *self.failing_since.get_or_insert_with(Instant::now);
        loop {
            self.tries += 1;
            let error = StorageError::Transient {
                op: "read",
                key: self.key.to_string(),
                location: self.inner.location().to_string(),
                message: failure.clone(),
            };
            if Instant::now() + self.backoff >= self.retry.end(started) {
                return Err(gave_up(error, self.tries, started.elapsed()));
            }
            tracing::debug!(key = %self.key, at = self.at, tries = self.tries, "{failure}; resuming");
            tokio::time::sleep(jitter(self.backoff)).await;
            self.backoff = (self.backoff * 2).min(self.retry.max_backoff);
            match self.inner.get_range(&self.key, self.at, self.end).await {
                Ok(s) => return Ok(s),
                Err(e) if e.is_transient() => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::faulty::{Fault, FaultyStorage};
    use crate::storage::memory::MemoryStorage;
    use futures::TryStreamExt;

    fn opts() -> StorageOptions {
        StorageOptions {
            retry: RetryPolicy {
                deadline: Duration::from_secs(5),
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                until: None,
            },
            idle_timeout: Duration::from_millis(200),
            ..StorageOptions::default()
        }
    }

    async fn stored(bytes: &[u8]) -> (Arc<MemoryStorage>, ObjectKey) {
        let mem = Arc::new(MemoryStorage::new());
        let key = ObjectKey::new("wal/x").unwrap();
        mem.put(
            &key,
            PutBody::Bytes(bytes::Bytes::copy_from_slice(bytes)),
            PutMode::CreateIfAbsent,
        )
        .await
        .unwrap();
        (mem, key)
    }

    async fn read_all(s: &dyn Storage, key: &ObjectKey) -> std::io::Result<Vec<u8>> {
        let chunks: Vec<bytes::Bytes> = s.get(key).await.unwrap().try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test]
    async fn a_body_that_breaks_or_stalls_is_resumed_where_it_broke() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mem, key) = stored(&data).await;
        let faulty = Arc::new(FaultyStorage::new(mem.clone()));
        faulty.inject(Fault::BreakBodyAfter(100_000));
        faulty.inject(Fault::StallBodyAfter(150_000));
        faulty.inject(Fault::BreakBodyAfter(7));
        let s = Resuming::new(faulty.clone(), &opts());
        assert_eq!(read_all(&s, &key).await.unwrap(), data);
        assert_eq!(faulty.gets(), 4, "one request, then a resume per fault");
    }

    #[tokio::test]
    async fn a_body_that_keeps_breaking_ends_as_a_storage_error_in_time() {
        let (mem, key) = stored(&[7u8; 200_000]).await;
        let faulty = Arc::new(FaultyStorage::new(mem));
        for _ in 0..1000 {
            faulty.inject(Fault::BreakBodyAfter(10));
        }
        // Each resume delivers a little, so only a command's deadline ends it.
        let mut o = opts();
        o.retry.until = Some(Instant::now() + Duration::from_millis(100));
        let s = Resuming::new(faulty, &o);
        let started = Instant::now();
        let e = read_all(&s, &key).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        let e = StorageError::from_io(e).expect("a storage error, not a codec one");
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("broke after"), "{e}");
    }
}
