//! A fault-injecting wrapper around any [`Storage`], for tests of what the
//! code above storage does when storage misbehaves: a request that fails
//! (transiently, for good, or with "not found"), a body that breaks or stalls
//! part-way, a call that never answers, a delete interrupted half-way. Each
//! injected fault applies once, to the next call it fits, in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use super::{ByteStream, ObjectKey, ObjectMeta, PutBody, PutMode, Storage, StorageError};

/// The kind of call a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
}

/// How a failing call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Transient,
    Permanent,
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next call of this kind fails.
    Fail(Op, Failure),
    /// The next call of this kind never answers.
    Stall(Op),
    /// The next download's body breaks (a reset) after this many bytes.
    BreakBodyAfter(u64),
    /// The next download's body stops delivering after this many bytes.
    StallBodyAfter(u64),
    /// The next delete removes this many of its keys, then fails.
    InterruptDeleteAfter(usize),
}

impl Fault {
    fn op(&self) -> Op {
        match self {
            Fault::Fail(op, _) | Fault::Stall(op) => *op,
            Fault::BreakBodyAfter(_) | Fault::StallBodyAfter(_) => Op::Get,
            Fault::InterruptDeleteAfter(_) => Op::Delete,
        }
    }
}

#[derive(Debug)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    faults: Mutex<VecDeque<Fault>>,
    gets: AtomicUsize,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>) -> FaultyStorage {
        FaultyStorage {
            inner,
            faults: Mutex::new(VecDeque::new()),
            gets: AtomicUsize::new(0),
        }
    }

    pub fn inject(&self, fault: Fault) {
        self.lock().push_back(fault);
    }

    /// Downloads requested so far (resumes included).
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Fault>> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, op: Op) -> Option<Fault> {
        let mut faults = self.lock();
        let i = faults.iter().position(|f| f.op() == op)?;
        faults.remove(i)
    }

    fn error(&self, op: Op, key: &str, failure: Failure) -> StorageError {
        let (key, location) = (key.to_string(), self.inner.location().to_string());
        let message = format!("injected {failure:?} failure");
        let op = match op {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
        };
        match failure {
            Failure::Transient => StorageError::Transient {
                op,
                key,
                location,
                message,
            },
            Failure::Permanent => StorageError::Permanent {
                op,
                key,
                location,
                message,
            },
            Failure::NotFound => StorageError::NotFound { key, location },
        }
    }

    /// Applies a call-level fault, if one is due.
    async fn call(&self, op: Op, key: &str) -> Result<(), StorageError> {
        match self.take(op) {
            Some(Fault::Fail(_, failure)) => Err(self.error(op, key, failure)),
            Some(Fault::Stall(_)) => {
                std::future::pending::<()>().await;
                Ok(())
            }
            Some(other) => {
                // A body fault: put back for the body.
                self.lock().push_front(other);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// A body that delivers `limit` bytes of `inner`, then breaks or stalls.
fn cut(inner: ByteStream, limit: u64, stall: bool) -> ByteStream {
    let state = (inner, 0u64, false);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut s, sent, done)| async move {
            if done {
                return None;
            }
            if sent >= limit {
                if stall {
                    std::future::pending::<()>().await;
                }
                let reset = std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer (injected)",
                );
                return Some((Err(reset), (s, sent, true)));
            }
            match s.next().await {
                Some(Ok(mut chunk)) => {
                    let room = (limit - sent) as usize;
                    if chunk.len() > room {
                        chunk.truncate(room);
                    }
                    let n = chunk.len() as u64;
                    Some((Ok(chunk), (s, sent + n, false)))
                }
                other => other.map(|item| (item, (s, sent, true))),
            }
        },
    ))
}

#[async_trait]
impl Storage for FaultyStorage {
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
        self.call(Op::Put, key.as_str()).await?;
        self.inner.put(key, body, mode).await
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.call(Op::Get, key.as_str()).await?;
        let body = self.inner.get_range(key, start, end).await?;
        Ok(match self.take(Op::Get) {
            Some(Fault::BreakBodyAfter(n)) => cut(body, n, false),
            Some(Fault::StallBodyAfter(n)) => cut(body, n, true),
            Some(other) => {
                self.lock().push_front(other);
                body
            }
            None => body,
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        self.call(Op::Head, key.as_str()).await?;
        self.inner.head(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        self.call(Op::List, prefix).await?;
        self.inner.list(prefix, start_after, limit).await
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError> {
        let first = keys.first().map(ObjectKey::as_str).unwrap_or_default();
        self.call(Op::Delete, first).await?;
        if let Some(Fault::InterruptDeleteAfter(n)) = self.take(Op::Delete) {
            self.inner.delete_many(&keys[..n.min(keys.len())]).await?;
            return Err(self.error(Op::Delete, first, Failure::Permanent));
        }
        self.inner.delete_many(keys).await
    }

    async fn remove_leftovers(&self, older_than: Duration) -> Result<usize, StorageError> {
        self.inner.remove_leftovers(older_than).await
    }
}
