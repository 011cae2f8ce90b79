//! The encoder as a stream adapter: plain bytes from a `Read` become an encoded
//! [`ByteStream`] that a storage `put` consumes, in bounded memory. Encoding is
//! CPU work, so it runs on a blocking thread and hands chunks over a small
//! bounded channel; a slow upload therefore slows the encoder instead of
//! buffering the object.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{CodecError, CodecSettings, Encoder, PlainDigest};
use crate::storage::ByteStream;

/// Size of the chunks handed to storage.
const CHUNK: usize = 256 << 10;
/// Chunks waiting for storage: with [`CHUNK`], at most 1 MiB per stream.
const QUEUE: usize = 4;
/// Read size from the source.
const READ_BUF: usize = 256 << 10;

/// Bytes held by one encoding stream outside the compressor (read buffer, chunk
/// being filled, queued chunks): what a caller budgeting memory must count.
pub const STREAM_BUFFERS: usize = READ_BUF + CHUNK * (QUEUE + 2);

/// The encoded stream and the task producing it; the task yields the plain
/// bytes' digest and the encoded size, or the error that also ended the stream.
pub struct EncodedStream {
    pub body: ByteStream,
    pub task: JoinHandle<Result<(PlainDigest, u64), CodecError>>,
}

/// Encodes everything `src` yields. With `known`, the digest goes into the
/// header, and the stream ends in an error instead of its last bytes if the
/// source turned out to differ from it (a file changed between hashing and
/// encoding), so that a storage put of the stream fails and stores nothing.
/// Must be called within a Tokio runtime.
pub fn encode_stream<R: Read + Send + 'static>(
    mut src: R,
    settings: CodecSettings,
    known: Option<PlainDigest>,
    what: String,
) -> EncodedStream {
    let (sink, body) = encoding_channel();
    let task = tokio::task::spawn_blocking(move || {
        let mut sink = sink.start(&settings, known)?;
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let e = CodecError::Io(io::Error::new(e.kind(), format!("{what}: {e}")));
                    return Err(sink.abort(e));
                }
            };
            if let Err(e) = sink.write_all(&buf[..n]) {
                return Err(sink.abort(CodecError::from_io(e)));
            }
        }
        let tx = sink.tx.clone();
        sink.finish_checked(known, &what).map_err(|e| fail(&tx, e))
    });
    EncodedStream { body, task }
}

/// An unstarted [`StreamSink`]: the channel exists, the header is not written.
pub struct PendingSink {
    tx: mpsc::Sender<io::Result<Bytes>>,
    done: Arc<AtomicBool>,
}

impl PendingSink {
    /// Writes the header and sets up the codec. If this fails, the stream ends
    /// in an error once the sink is gone.
    pub fn start(
        self,
        settings: &CodecSettings,
        known: Option<PlainDigest>,
    ) -> Result<StreamSink, CodecError> {
        let writer = ChannelWriter {
            tx: self.tx.clone(),
            buf: BytesMut::with_capacity(CHUNK),
            sent: 0,
        };
        let enc = Encoder::new(writer, settings, known)?;
        Ok(StreamSink {
            enc,
            tx: self.tx,
            done: self.done,
        })
    }
}

/// A channel whose writing end encodes (on a blocking thread: writes block
/// while storage is behind) and whose reading end is a body for a storage put.
/// The body ends cleanly only after [`StreamSink::finish`]; if the sink is
/// dropped before (an error, a panic), the body's last item is an error, so
/// that no put stores a partial object.
pub fn encoding_channel() -> (PendingSink, ByteStream) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
    let done = Arc::new(AtomicBool::new(false));
    let body = Box::pin(futures::stream::unfold(
        (rx, done.clone(), false),
        |(mut rx, done, ended)| async move {
            if ended {
                return None;
            }
            match rx.recv().await {
                Some(item) => Some((item, (rx, done, false))),
                None if done.load(Ordering::Acquire) => None,
                None => Some((
                    Err(io::Error::other(
                        "the encoder stopped before the end of the object",
                    )),
                    (rx, done, true),
                )),
            }
        },
    ));
    (PendingSink { tx, done }, body)
}

/// The writing end of [`encoding_channel`]: plain bytes in, encoded chunks out.
/// End it with [`StreamSink::finish`] or [`StreamSink::abort`]; dropping it
/// ends the stream without a trailer, which every reader rejects.
pub struct StreamSink {
    enc: Encoder<ChannelWriter>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    done: Arc<AtomicBool>,
}

impl StreamSink {
    /// Completes the object; returns the plain bytes' digest and the encoded size.
    pub fn finish(self) -> Result<(PlainDigest, u64), CodecError> {
        let tx = self.tx.clone();
        self.finish_checked(None, "").map_err(|e| fail(&tx, e))
    }

    fn finish_checked(
        self,
        known: Option<PlainDigest>,
        what: &str,
    ) -> Result<(PlainDigest, u64), CodecError> {
        let (mut sink, digest) = self.enc.finish()?;
        let done = self.done;
        if let Some(k) = known
            && k != digest
        {
            return Err(CodecError::Io(io::Error::other(format!(
                "{what} changed while it was being stored (expected {k}, read {digest}); \
                 nothing was stored"
            ))));
        }
        sink.send_pending()?;
        done.store(true, Ordering::Release);
        Ok((digest, sink.sent))
    }

    /// Ends the stream with `e`, so that the put consuming it fails; returns `e`.
    pub fn abort(self, e: CodecError) -> CodecError {
        fail(&self.tx, e)
    }
}

impl Write for StreamSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.enc.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends `e` down the stream (the consumer must not see a clean end) and
/// returns it.
fn fail(tx: &mpsc::Sender<io::Result<Bytes>>, e: CodecError) -> CodecError {
    let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
    e
}

/// A `Write` that sends what it gets as [`CHUNK`]-sized `Bytes` over a channel,
/// blocking while the channel is full.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    /// Bytes handed over so far.
    sent: u64,
}

impl ChannelWriter {
    fn send_pending(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.sent += chunk.len() as u64;
        self.buf.reserve(CHUNK);
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the upload stopped reading the encoded stream",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_pending()?;
        }
        Ok(n)
    }

    /// Chunks go out when full or at the end; a flush from a layer above (the
    /// compressor flushes on finish) must not cut small chunks.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
