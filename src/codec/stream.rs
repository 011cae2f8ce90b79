//! The encoder as a stream adapter: plain bytes from a `Read` become an encoded
//! [`ByteStream`] that a storage `put` consumes, in bounded memory. Encoding is
//! CPU work, so it runs on a blocking thread and hands chunks over a small
//! bounded channel; a slow upload therefore slows the encoder instead of
//! buffering the object.

use std::io::{self, Read, Write};

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
/// bytes' digest, or the error that also ended the stream.
pub struct EncodedStream {
    pub body: ByteStream,
    pub task: JoinHandle<Result<PlainDigest, CodecError>>,
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
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
    let task = tokio::task::spawn_blocking(move || {
        let result = (|| {
            let sink = ChannelWriter {
                tx: tx.clone(),
                buf: BytesMut::with_capacity(CHUNK),
            };
            let mut enc = Encoder::new(sink, &settings, known)?;
            let mut buf = vec![0u8; READ_BUF];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(CodecError::Io(io::Error::new(
                            e.kind(),
                            format!("{what}: {e}"),
                        )));
                    }
                };
                enc.write_all(&buf[..n]).map_err(CodecError::from_io)?;
            }
            let (mut sink, digest) = enc.finish()?;
            if let Some(k) = known
                && k != digest
            {
                return Err(CodecError::Io(io::Error::other(format!(
                    "{what} changed while it was being stored (expected {k}, read {digest}); \
                     nothing was stored"
                ))));
            }
            sink.send_pending()?;
            Ok(digest)
        })();
        if let Err(e) = &result {
            // The consumer must not see a clean end of stream.
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        result
    });
    let body = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    EncodedStream { body, task }
}

/// A `Write` that sends what it gets as [`CHUNK`]-sized `Bytes` over a channel,
/// blocking while the channel is full.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn send_pending(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
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
