//! A bounded pipe between two blocking threads, so that one stage of a
//! pipeline (building a tar, decoding an object) runs on one core while the
//! next (encoding, extracting) runs on another. The reading end sees a clean
//! end only after the writer's [`PipeWriter::finish`]; a writer that fails or
//! is dropped early makes the reader fail, never look complete.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::{Buf, Bytes, BytesMut};

/// Size of the chunks passed between stages (pipes and encoded streams).
pub(super) const CHUNK: usize = 256 << 10;
/// Chunks in flight: with [`CHUNK`], at most 1 MiB per pipe.
const DEPTH: usize = 4;

/// Collects written bytes into [`CHUNK`]-sized `Bytes`, so that the stages of
/// a pipeline hand each other few, large pieces.
pub(super) struct Chunks {
    buf: BytesMut,
}

impl Chunks {
    pub(super) fn new() -> Self {
        Chunks {
            buf: BytesMut::with_capacity(CHUNK),
        }
    }

    /// Takes as much of `data` as fits in the current chunk; returns how much,
    /// and the chunk once it is full.
    pub(super) fn fill(&mut self, data: &[u8]) -> (usize, Option<Bytes>) {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        let full = (self.buf.len() >= CHUNK).then(|| self.take());
        (n, full)
    }

    /// What is left, if anything.
    pub(super) fn rest(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Bytes {
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        chunk
    }
}

enum Msg {
    Data(Bytes),
    Fail(String),
    End,
}

/// A new pipe.
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(DEPTH);
    (
        PipeWriter {
            tx,
            chunks: Chunks::new(),
        },
        PipeReader {
            rx,
            cur: Bytes::new(),
            done: false,
        },
    )
}

pub struct PipeWriter {
    tx: SyncSender<Msg>,
    chunks: Chunks,
}

impl PipeWriter {
    fn send(&self, m: Msg) -> io::Result<()> {
        self.tx.send(m).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the next stage stopped reading")
        })
    }

    fn send_rest(&mut self) -> io::Result<()> {
        match self.chunks.rest() {
            Some(chunk) => self.send(Msg::Data(chunk)),
            None => Ok(()),
        }
    }

    /// Sends a chunk as it is, without copying (after whatever was written).
    pub fn send_bytes(&mut self, chunk: Bytes) -> io::Result<()> {
        self.send_rest()?;
        self.send(Msg::Data(chunk))
    }

    /// Ends the stream cleanly.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_rest()?;
        self.send(Msg::End)
    }

    /// Ends the stream with an error the reader will return.
    pub fn fail(self, message: String) {
        let _ = self.tx.send(Msg::Fail(message));
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let (n, full) = self.chunks.fill(data);
        if let Some(chunk) = full {
            self.send(Msg::Data(chunk))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct PipeReader {
    rx: Receiver<Msg>,
    cur: Bytes,
    done: bool,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(b)) => self.cur = b,
                Ok(Msg::End) => self.done = true,
                Ok(Msg::Fail(m)) => return Err(io::Error::other(m)),
                Err(_) => {
                    return Err(io::Error::other(
                        "the previous stage stopped before the end of the stream",
                    ));
                }
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_cleanly_only_when_finished() {
        let (mut w, mut r) = pipe();
        let t = std::thread::spawn(move || {
            w.write_all(&vec![7u8; 3 * CHUNK + 5]).unwrap();
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got.len(), 3 * CHUNK + 5);

        let (mut w, mut r) = pipe();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert!(r.read_to_end(&mut Vec::new()).is_err());

        let (w, mut r) = pipe();
        w.fail("broken part".into());
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("broken part"));
    }
}
