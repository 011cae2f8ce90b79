//! The encoder as a stream adapter: plain bytes from a `Read` become an encoded
//! [`ByteStream`] that a storage `put` consumes, in bounded memory. Encoding is
//! CPU work, so it runs on a blocking thread and hands chunks over a small
//! bounded channel; a slow upload therefore slows the encoder instead of
//! buffering the object.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::frames::{Frame, FrameCuts};
use super::pipe::{CHUNK, Chunks};
use super::{CodecError, CodecSettings, Encoder, PlainDigest};
use crate::storage::ByteStream;

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
/// The stream ends cleanly only after the whole object was encoded: on any
/// error (or a panic) its last item is an error. Must be called within a
/// Tokio runtime.
pub fn encode_stream<R: Read + Send + 'static>(
    src: R,
    settings: CodecSettings,
    known: Option<PlainDigest>,
    what: String,
) -> EncodedStream {
    let (body, task) = start(src, settings, Shape::Plain(known), what, |(d, sent, _)| {
        (d, sent)
    });
    EncodedStream { body, task }
}

/// What a framed encoding yields: the plain digest, the encoded size and
/// the frame table.
pub type Framing = (PlainDigest, u64, Vec<Frame>);

/// A framed encoding stream (see [`super::frames`]): its task also yields
/// the frame table.
pub struct FramedStream {
    pub body: ByteStream,
    pub task: JoinHandle<Result<Framing, CodecError>>,
}

/// [`encode_stream`] into a framed object: frames begin every unit and
/// wherever `cuts` asks. Without `cuts`, an ordinary object (no frames).
pub fn encode_framed_stream<R: Read + Send + 'static>(
    src: R,
    settings: CodecSettings,
    cuts: Option<Arc<FrameCuts>>,
    what: String,
) -> FramedStream {
    let shape = match cuts {
        Some(cuts) => Shape::Framed(cuts),
        None => Shape::Plain(None),
    };
    let (body, task) = start(src, settings, shape, what, |framing| framing);
    FramedStream { body, task }
}

enum Shape {
    Plain(Option<PlainDigest>),
    Framed(Arc<FrameCuts>),
}

/// Runs the encoder on a blocking thread; its task gives `yields` of what the
/// encoding gave.
fn start<R: Read + Send + 'static, T: Send + 'static>(
    src: R,
    settings: CodecSettings,
    shape: Shape,
    what: String,
    yields: fn(Framing) -> T,
) -> (ByteStream, JoinHandle<Result<T, CodecError>>) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
    let done = Arc::new(AtomicBool::new(false));
    let body = body_stream(rx, done.clone());
    let task = tokio::task::spawn_blocking(move || {
        let sink = ChannelWriter {
            tx: tx.clone(),
            chunks: Chunks::new(),
            sent: 0,
        };
        let result = encode_all(src, sink, &settings, shape, &what).map(yields);
        match &result {
            // Every chunk is sent: the end of the channel is now the end.
            Ok(_) => done.store(true, Ordering::Release),
            Err(e) => {
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
        result
    });
    (body, task)
}

fn encode_all<R: Read>(
    mut src: R,
    sink: ChannelWriter,
    settings: &CodecSettings,
    shape: Shape,
    what: &str,
) -> Result<Framing, CodecError> {
    let known = match &shape {
        Shape::Plain(known) => *known,
        Shape::Framed(_) => None,
    };
    let mut enc = match shape {
        Shape::Plain(known) => Encoder::new(sink, settings, known)?,
        Shape::Framed(cuts) => Encoder::framed(sink, settings, cuts)?,
    };
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
    let (mut sink, digest, frames) = enc.finish_framed()?;
    if let Some(k) = known
        && k != digest
    {
        return Err(CodecError::Io(io::Error::other(format!(
            "{what} changed while it was being stored (expected {k}, read {digest}); \
             nothing was stored"
        ))));
    }
    sink.send_rest()?;
    Ok((digest, sink.sent, frames))
}

/// The channel's receiving end as a body: a clean end only once `done`.
fn body_stream(rx: mpsc::Receiver<io::Result<Bytes>>, done: Arc<AtomicBool>) -> ByteStream {
    Box::pin(futures::stream::unfold(
        (rx, done, false),
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
    ))
}

/// A `Write` that sends what it gets as [`CHUNK`]-sized `Bytes` over a channel,
/// blocking while the channel is full.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    chunks: Chunks,
    /// Bytes handed over so far.
    sent: u64,
}

impl ChannelWriter {
    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.sent += chunk.len() as u64;
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the upload stopped reading the encoded stream",
            )
        })
    }

    fn send_rest(&mut self) -> io::Result<()> {
        match self.chunks.rest() {
            Some(chunk) => self.send(chunk),
            None => Ok(()),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let (n, full) = self.chunks.fill(data);
        if let Some(chunk) = full {
            self.send(chunk)?;
        }
        Ok(n)
    }

    /// Chunks go out when full or at the end; a flush from a layer above (the
    /// compressor flushes on finish) must not cut small chunks.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
