//! Time out on no progress, never on duration: a slow link that keeps
//! moving bytes is waited for however long a transfer takes, and a stalled
//! one is abandoned after the idle timeout. Request bodies are handed to the
//! HTTP client in small slices, each marking progress as it is taken, so
//! that a stall while sending shows as surely as one while receiving.
//!
//! The network stack buffers what it is handed (up to a few MiB per
//! connection): once a whole body has been taken, the bytes still on their
//! way are invisible, so the wait for the response gets, on top of the idle
//! time, the time to drain them at [`DRAIN_FLOOR`] ([`drain_allowance`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// When a request last moved a byte, and how much of its body the network
/// stack may still hold.
#[derive(Debug)]
pub struct Progress {
    base: Instant,
    last_ms: AtomicU64,
    /// Bytes of request body handed over in full (0 until then).
    handed: AtomicU64,
}

/// What the network stack may hold of a body it has taken: socket buffers
/// on both ends of a connection.
pub const DRAIN_SLACK: u64 = 8 << 20;
/// The slowest drain rate assumed of a link that still counts as moving.
pub const DRAIN_FLOOR: u64 = 1 << 20;

/// The time the network may take to deliver what it holds of a `len`-byte
/// body it has taken whole.
pub fn drain_allowance(len: u64) -> Duration {
    Duration::from_secs_f64(len.min(DRAIN_SLACK) as f64 / DRAIN_FLOOR as f64)
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            handed: AtomicU64::new(0),
        })
    }

    /// The whole body (`len` bytes) has been taken by the client.
    pub fn body_handed(&self, len: u64) {
        self.handed.store(len, Ordering::Relaxed);
        self.touch();
    }

    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last progress.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// A request that made no progress for `idle`.
#[derive(Debug, thiserror::Error)]
#[error("no progress for {} s (the connection stalled)", .0.as_secs())]
pub struct Stalled(pub Duration);

/// Runs `fut` until it completes, or until it has made no progress for
/// `idle` (waiting for a response counts as no progress, beyond the time
/// to drain a body the network took whole).
pub async fn watch<F: Future>(
    fut: F,
    progress: &Progress,
    idle: Duration,
) -> Result<F::Output, Stalled> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let allowed = idle + drain_allowance(progress.handed.load(Ordering::Relaxed));
        let left = allowed.saturating_sub(progress.idle());
        if left.is_zero() {
            return Err(Stalled(allowed));
        }
        tokio::select! {
            out = &mut fut => return Ok(out),
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// Runs one storage request under the watchdog (`idle` as the retry policy
/// allows it): a request abandoned for want of progress is a transient
/// error, for the retry policy to judge, never followed by a probe.
pub async fn request<F: Future>(
    op: &'static str,
    key: &str,
    location: &str,
    retry: &super::RetryPolicy,
    idle: Duration,
    progress: &Progress,
    fut: F,
) -> Result<F::Output, super::StorageError> {
    progress.touch();
    watch(fut, progress, retry.idle(idle))
        .await
        .map_err(|stalled| super::StorageError::Transient {
            op,
            key: key.to_string(),
            location: location.to_string(),
            message: stalled.to_string(),
        })
}

/// How much of a body one step sends: small enough that progress shows
/// every few milliseconds on a fast link, and within seconds on a slow one.
pub const SLICE: usize = 64 << 10;

/// `bytes` as a stream of [`SLICE`]-sized pieces, each marking progress as
/// it is taken (for clients that take a stream body).
pub fn sliced(
    bytes: Bytes,
    progress: Arc<Progress>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    let mut at = 0;
    futures::stream::poll_fn(move |_| {
        if at >= bytes.len() {
            progress.body_handed(bytes.len() as u64);
            return Poll::Ready(None);
        }
        let end = (at + SLICE).min(bytes.len());
        let piece = bytes.slice(at..end);
        at = end;
        progress.touch();
        Poll::Ready(Some(Ok(piece)))
    })
}

/// An HTTP body (for the S3 SDK) that hands its inner body's data on in
/// [`SLICE`]-sized frames, marking progress as each is taken.
pub struct Sliced<B> {
    inner: B,
    pending: Bytes,
    progress: Arc<Progress>,
    taken: u64,
}

impl<B> Sliced<B> {
    pub fn new(inner: B, progress: Arc<Progress>) -> Self {
        Sliced {
            inner,
            pending: Bytes::new(),
            progress,
            taken: 0,
        }
    }
}

impl<B> http_body::Body for Sliced<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(SLICE);
                let piece = this.pending.split_to(n);
                this.taken += n as u64;
                this.progress.touch();
                return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(None) => {
                    this.progress.body_handed(this.taken);
                    return Poll::Ready(None);
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.inner.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + self.pending.len() as u64);
        if let Some(u) = inner.upper() {
            hint.set_upper(u + self.pending.len() as u64);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_stall_ends_after_the_idle_time_progress_keeps_it_going() {
        let p = Progress::new();
        let stalled = watch(std::future::pending::<()>(), &p, Duration::from_millis(50)).await;
        assert!(stalled.is_err());
        // A future that keeps making progress outlives the idle time.
        let p2 = p.clone();
        let busy = async move {
            for _ in 0..10 {
                p2.touch();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            7
        };
        p.touch();
        assert_eq!(watch(busy, &p, Duration::from_millis(60)).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn bodies_go_in_slices_that_mark_progress() {
        let p = Progress::new();
        let pieces: Vec<Bytes> = sliced(Bytes::from(vec![1u8; 3 * SLICE + 5]), p.clone())
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.iter().map(Bytes::len).sum::<usize>(), 3 * SLICE + 5);
    }
}
