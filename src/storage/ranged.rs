//! An object as a blocking `Read + Seek`, read by ranged GETs: for readers
//! that jump around an object (the frames of a part that a delta restore
//! needs) instead of streaming it. Each GET asks for a window from the
//! position on, growing while reads continue in order, so skipping costs
//! nothing and reading on costs few requests. Runs on a blocking thread.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{ByteStream, ObjectKey, Storage};

/// The first window after a jump, and the largest.
const FIRST_WINDOW: u64 = 1 << 20;
const MAX_WINDOW: u64 = 32 << 20;
/// A jump forward of at most this much reads on instead of asking again.
const SKIP_MAX: u64 = 256 << 10;

/// A stored object of known size, read by ranges.
pub struct RangedReader {
    storage: Arc<dyn Storage>,
    key: ObjectKey,
    size: u64,
    runtime: tokio::runtime::Handle,
    pos: u64,
    open: Option<Window>,
    next_window: u64,
    requests: u64,
    fetched: u64,
}

/// One ranged GET in progress: its stream delivers bytes from `at` to `end`.
struct Window {
    stream: ByteStream,
    at: u64,
    end: u64,
    chunk: Bytes,
}

impl RangedReader {
    /// A reader of `key`, `size` bytes long; call from a blocking thread of
    /// the runtime `runtime`.
    pub fn new(
        storage: Arc<dyn Storage>,
        key: ObjectKey,
        size: u64,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        RangedReader {
            storage,
            key,
            size,
            runtime,
            pos: 0,
            open: None,
            next_window: FIRST_WINDOW,
            requests: 0,
            fetched: 0,
        }
    }

    /// Ranged GETs made so far, and the bytes they delivered.
    pub fn traffic(&self) -> (u64, u64) {
        (self.requests, self.fetched)
    }

    /// Makes the open window deliver from `pos`, or opens one there.
    fn position(&mut self) -> io::Result<()> {
        if let Some(w) = &mut self.open
            && w.at <= self.pos
            && self.pos < w.end
            && self.pos - w.at <= SKIP_MAX
        {
            while w.at < self.pos {
                if w.chunk.is_empty() {
                    w.chunk = next_chunk(&self.runtime, &mut w.stream, &self.key)?;
                    self.fetched += w.chunk.len() as u64;
                }
                let n = (self.pos - w.at).min(w.chunk.len() as u64) as usize;
                let _ = w.chunk.split_to(n);
                w.at += n as u64;
            }
            return Ok(());
        }
        let sequential = self.open.as_ref().is_some_and(|w| w.end == self.pos);
        self.next_window = if sequential {
            (self.next_window * 2).min(MAX_WINDOW)
        } else {
            FIRST_WINDOW
        };
        let end = (self.pos + self.next_window).min(self.size);
        let (storage, key, start) = (self.storage.clone(), self.key.clone(), self.pos);
        let stream = self
            .runtime
            .block_on(async move { storage.get_range(&key, start, Some(end)).await })
            .map_err(io::Error::other)?;
        self.requests += 1;
        self.open = Some(Window {
            stream,
            at: self.pos,
            end,
            chunk: Bytes::new(),
        });
        Ok(())
    }
}

fn next_chunk(
    runtime: &tokio::runtime::Handle,
    stream: &mut ByteStream,
    key: &ObjectKey,
) -> io::Result<Bytes> {
    match runtime.block_on(stream.next()) {
        Some(Ok(chunk)) if !chunk.is_empty() => Ok(chunk),
        Some(Ok(_)) => next_chunk(runtime, stream, key),
        Some(Err(e)) => Err(e),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{key}: a ranged read ended before the bytes it asked for"),
        )),
    }
}

impl Read for RangedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        self.position()?;
        let Some(w) = self.open.as_mut() else {
            return Ok(0);
        };
        if w.chunk.is_empty() {
            w.chunk = next_chunk(&self.runtime, &mut w.stream, &self.key)?;
            self.fetched += w.chunk.len() as u64;
        }
        let n = buf.len().min(w.chunk.len()).min((w.end - w.at) as usize);
        buf[..n].copy_from_slice(&w.chunk[..n]);
        let _ = w.chunk.split_to(n);
        w.at += n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangedReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the object's start",
            )
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use crate::storage::{PutBody, PutMode};

    #[test]
    fn reads_what_it_is_asked_with_few_requests() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mem = Arc::new(MemoryStorage::new());
        let key = ObjectKey::new("basebackups/x/part").unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        rt.block_on(mem.put(
            &key,
            PutBody::Bytes(data.clone().into()),
            PutMode::Overwrite,
        ))
        .unwrap();
        let handle = rt.handle().clone();
        let d = data.clone();
        rt.block_on(async move {
            tokio::task::spawn_blocking(move || {
                let mut r = RangedReader::new(mem, key, d.len() as u64, handle);
                let mut all = Vec::new();
                r.read_to_end(&mut all).unwrap();
                assert_eq!(all, d);
                // Windows of 1, 2 and 4 MiB: three requests for 5 MB.
                assert_eq!(r.traffic().0, 3);
                for (at, len) in [
                    (4_999_990u64, 10usize),
                    (10, 100),
                    (200, 1000),
                    (3_000_000, 70_000),
                ] {
                    r.seek(SeekFrom::Start(at)).unwrap();
                    let mut got = vec![0; len];
                    r.read_exact(&mut got).unwrap();
                    assert_eq!(got, d[at as usize..at as usize + len]);
                }
                r.seek(SeekFrom::End(-3)).unwrap();
                let mut tail = Vec::new();
                r.read_to_end(&mut tail).unwrap();
                assert_eq!(tail, d[d.len() - 3..]);
            })
            .await
            .unwrap();
        });
    }
}
