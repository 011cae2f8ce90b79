//! A large object read fast over the network: as consecutive windows, each
//! one ranged GET, several in flight, delivered in order. One GET stream is
//! held to what one connection and the server's per-request pipeline give
//! (on S3 about 100 MB/s a stream); parallel ranged GETs are how object
//! stores are read at speed. Backends say how many pay
//! ([`Storage::reads_ahead`]); on a local disk one stream is as fast.

use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::{ByteStream, ObjectKey, Storage, StorageError};

/// Bytes per ranged GET: large enough that a request's latency is small
/// against its transfer, small enough that the windows in flight stay a few
/// MiB of memory.
pub const WINDOW: u64 = 8 << 20;

/// Windows in flight per object on a network store, by default
/// (`storage_parallel_reads`).
pub const READS_AHEAD: usize = 4;

/// Streams the object `key` of `size` bytes (its stored size, from a
/// manifest). As [`Storage::get`]: a missing object is `NotFound` here, and
/// a body that breaks is resumed by the backend; a window that comes back
/// short ends the stream with `UnexpectedEof` (the object is shorter than
/// its manifest says).
pub async fn get(
    storage: Arc<dyn Storage>,
    key: &ObjectKey,
    size: u64,
) -> Result<ByteStream, StorageError> {
    let ahead = storage.reads_ahead();
    if ahead <= 1 || size <= WINDOW {
        return storage.get(key).await;
    }
    // The first window's request is made here, so that a missing object is
    // told apart as with a plain get.
    let first = storage.get_range(key, 0, Some(WINDOW)).await?;
    let first = futures::stream::iter([collect(first, WINDOW).boxed()]);
    let key = key.clone();
    let rest = futures::stream::iter((1..size.div_ceil(WINDOW)).map(move |i| {
        let (storage, key) = (storage.clone(), key.clone());
        let (start, end) = (i * WINDOW, ((i + 1) * WINDOW).min(size));
        async move {
            let body = storage
                .get_range(&key, start, Some(end))
                .await
                .map_err(std::io::Error::other)?;
            collect(body, end - start).await
        }
        .boxed()
    }));
    Ok(first
        .chain(rest)
        .buffered(ahead)
        .map_ok(|pieces| futures::stream::iter(pieces.into_iter().map(Ok)))
        .try_flatten()
        .boxed())
}

/// A window's bytes, which must be `len`, as the body's own pieces: copying
/// them into one window-sized buffer would cost a fresh allocation (which
/// the kernel faults in page by page) and a copy for every window.
async fn collect(body: ByteStream, len: u64) -> std::io::Result<Vec<Bytes>> {
    let (pieces, got) = body
        .try_fold((Vec::new(), 0u64), |(mut pieces, got), chunk| async move {
            let n = chunk.len() as u64;
            pieces.push(chunk);
            Ok((pieces, got + n))
        })
        .await?;
    if got != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("a ranged read gave {got} of {len} bytes"),
        ));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use crate::storage::{PutBody, PutMode};

    async fn all(s: ByteStream) -> std::io::Result<Vec<u8>> {
        s.try_fold(Vec::new(), |mut v, b| async move {
            v.extend_from_slice(&b);
            Ok(v)
        })
        .await
    }

    #[tokio::test]
    async fn windows_come_back_in_order_and_whole() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::reading_ahead(3));
        let key = ObjectKey::new("basebackups/x/part_00001.tar.lz4").unwrap();
        let data: Vec<u8> = (0..(3 * WINDOW + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        s.put(
            &key,
            PutBody::Bytes(data.clone().into()),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        let got = all(get(s.clone(), &key, data.len() as u64).await.unwrap())
            .await
            .unwrap();
        assert!(got == data, "read by windows");
        // An object of one window or less is one plain GET.
        let got = all(get(s.clone(), &key, WINDOW).await.unwrap())
            .await
            .unwrap();
        assert!(got == data, "read whole");
        // A manifest that says more than is stored: the read fails, short.
        let long = get(s.clone(), &key, data.len() as u64 + WINDOW)
            .await
            .unwrap();
        let e = all(long).await.err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        // A missing object is NotFound, as with get.
        let missing = ObjectKey::new("basebackups/x/part_00002.tar.lz4").unwrap();
        let e = get(s, &missing, 4 * WINDOW).await.err().unwrap();
        assert!(e.is_not_found(), "{e}");
    }
}
