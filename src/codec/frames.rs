//! Framed objects: a part's compressed stream cut into independent frames
//! (every [`UNIT`] plain bytes, and wherever the writer asks, such as where
//! a large file's bytes begin), with a table of where each frame starts in
//! the plain and in the compressed stream. Any reader decodes a framed
//! object from its start like any other (frames simply follow each other);
//! with the table, [`FrameReader`] decodes just the frames holding a range,
//! reading only their bytes: `backup-fetch --delta` fetches what differs.
//! See `docs/FORMAT.md` ("Part index").

use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::decode::decrypting;
use super::format::Header;
use super::units::UNIT;
use super::{CodecError, Compression, Keyring};

/// Where a frame begins: its offset in the plain bytes and in the compressed
/// stream (the bytes encryption takes in, or the object's bytes after the
/// header when not encrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    pub plain: u64,
    pub stored: u64,
}

/// Plain offsets at which the producer of a stream wants a frame to begin,
/// in increasing order. The producer adds an offset before it writes the
/// byte there, so the encoder, which gets that byte later, sees it in time.
#[derive(Debug, Default)]
pub struct FrameCuts {
    pending: Mutex<VecDeque<u64>>,
}

impl FrameCuts {
    pub fn new() -> Arc<Self> {
        Arc::new(FrameCuts::default())
    }

    /// Asks for a frame to begin at plain offset `at`.
    pub fn cut_at(&self, at: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.back().is_none_or(|&last| last < at) {
            p.push_back(at);
        }
    }

    /// The first requested cut after `after`, dropping those at or before it.
    fn next_after(&self, after: u64) -> Option<u64> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while p.front().is_some_and(|&c| c <= after) {
            p.pop_front();
        }
        p.front().copied()
    }
}

/// The compressing stage of a framed encoder: buffers a frame's plain bytes,
/// then writes them as one complete compression frame.
pub(super) struct Framed<W: Write> {
    sink: Sink<W>,
    cuts: Arc<FrameCuts>,
    /// Plain bytes of the frame being filled, which starts at `start`.
    buf: Vec<u8>,
    start: u64,
    frames: Vec<Frame>,
}

/// Where a frame's bytes go. The compressors and their buffers live as long
/// as the stream: buffers of a MiB or more are fresh mappings (main.rs,
/// `tune_allocator`), so one per frame would have the kernel fault in
/// megabytes of pages for every megabyte compressed.
enum Sink<W: Write> {
    Plain(Counted<W>),
    Lz4(Box<lz4_flex::frame::FrameEncoder<Counted<W>>>),
    /// With the buffer each frame is compressed into, kept for the next.
    Zstd(Counted<W>, Box<zstd::bulk::Compressor<'static>>, Vec<u8>),
}

/// The lz4 frame settings: one block holds a whole frame (frames are at most
/// [`UNIT`] plain bytes), so the encoder's and decoders' buffers need no more.
fn lz4_frame_info() -> lz4_flex::frame::FrameInfo {
    const _: () = assert!(UNIT <= 1 << 20);
    lz4_flex::frame::FrameInfo::new().block_size(lz4_flex::frame::BlockSize::Max1MB)
}

impl<W: Write> Sink<W> {
    /// Compressed bytes written so far.
    fn stored(&self) -> u64 {
        match self {
            Sink::Plain(c) | Sink::Zstd(c, ..) => c.n,
            Sink::Lz4(enc) => enc.get_ref().n,
        }
    }

    /// Writes `plain` as one complete frame.
    fn frame(&mut self, plain: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(c) => c.write_all(plain),
            Sink::Lz4(enc) => {
                // After `try_finish` the next write opens a new frame with
                // the encoder's state reset: the same bytes a new encoder
                // would write, without its allocations.
                enc.write_all(plain)?;
                enc.try_finish().map_err(io::Error::other)
            }
            Sink::Zstd(c, z, out) => {
                out.clear();
                out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
                z.compress_to_buffer(plain, out)?;
                c.write_all(out)
            }
        }
    }

    fn into_inner(self) -> W {
        match self {
            Sink::Plain(c) | Sink::Zstd(c, ..) => c.inner,
            // Every frame was finished in `frame`: nothing is left buffered.
            Sink::Lz4(enc) => enc.into_inner().inner,
        }
    }
}

impl<W: Write> Framed<W> {
    pub(super) fn new(
        out: W,
        compression: Compression,
        zstd_level: i32,
        cuts: Arc<FrameCuts>,
    ) -> io::Result<Self> {
        let out = Counted { inner: out, n: 0 };
        let sink = match compression {
            Compression::None => Sink::Plain(out),
            Compression::Lz4 => Sink::Lz4(Box::new(
                lz4_flex::frame::FrameEncoder::with_frame_info(lz4_frame_info(), out),
            )),
            Compression::Zstd => {
                let z = zstd::bulk::Compressor::new(zstd_level)?;
                Sink::Zstd(out, Box::new(z), Vec::new())
            }
        };
        Ok(Framed {
            sink,
            cuts,
            buf: Vec::with_capacity(UNIT as usize),
            start: 0,
            frames: Vec::new(),
        })
    }

    /// Where the frame being filled must end.
    fn boundary(&self) -> u64 {
        let full = self.start + UNIT;
        match self.cuts.next_after(self.start) {
            Some(cut) => cut.min(full),
            None => full,
        }
    }

    fn end_frame(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.frames.push(Frame {
            plain: self.start,
            stored: self.sink.stored(),
        });
        self.sink.frame(&self.buf)?;
        self.start += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes the last frame; returns the sink and the frame table, ending
    /// with the end of both streams.
    pub(super) fn finish(mut self) -> io::Result<(W, Vec<Frame>)> {
        self.end_frame()?;
        self.frames.push(Frame {
            plain: self.start,
            stored: self.sink.stored(),
        });
        let mut out = self.sink.into_inner();
        out.flush()?;
        Ok((out, self.frames))
    }
}

impl<W: Write> Write for Framed<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        while taken < data.len() {
            let at = self.start + self.buf.len() as u64;
            let end = self.boundary();
            if at == end {
                self.end_frame()?;
                continue;
            }
            let n = ((end - at) as usize).min(data.len() - taken);
            self.buf.extend_from_slice(&data[taken..taken + n]);
            taken += n;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that counts what passes through it.
struct Counted<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// lz4 frames one after another: lz4_flex's decoder ends each frame with a
/// read of 0 bytes and starts the next one on the next read, so a 0 is the
/// end only when the next read says so too. (cairn writes no empty frame.)
pub(crate) struct Lz4Frames<R: Read>(pub lz4_flex::frame::FrameDecoder<R>);

impl<R: Read> Read for Lz4Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf)? {
            0 if !buf.is_empty() => self.0.read(buf),
            n => Ok(n),
        }
    }
}

/// The compressed stream of an object, seekable: past the header, and
/// through age's seekable reader when encrypted.
enum Compressed<R: Read + Seek> {
    Plain { inner: R, header_len: u64 },
    Age(age::stream::StreamReader<R>),
}

impl<R: Read + Seek> Compressed<R> {
    fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        match self {
            Compressed::Plain { inner, header_len } => {
                inner.seek(SeekFrom::Start(*header_len + offset))?;
            }
            Compressed::Age(r) => {
                r.seek(SeekFrom::Start(offset))?;
            }
        }
        Ok(())
    }
}

impl<R: Read + Seek> Read for Compressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Compressed::Plain { inner, .. } => inner.read(buf),
            Compressed::Age(r) => r.read(buf),
        }
    }
}

/// Random access to a framed object's plain bytes through its frame table.
pub struct FrameReader<R: Read + Seek> {
    inner: Compressed<R>,
    compression: Compression,
    object: String,
}

impl<R: Read + Seek> FrameReader<R> {
    /// Reads the object's header (and age header) from `src`.
    pub fn new(mut src: R, keyring: Option<&Keyring>, object: &str) -> Result<Self, CodecError> {
        let header = Header::read_from(&mut src, object)?;
        let inner = if header.encrypted {
            Compressed::Age(decrypting(src, keyring, object)?)
        } else {
            Compressed::Plain {
                inner: src,
                header_len: header.to_bytes().len() as u64,
            }
        };
        Ok(FrameReader {
            inner,
            compression: header.compression,
            object: object.into(),
        })
    }

    /// The plain bytes `range`, decoded from the frames holding them only.
    /// `frames` is the object's table (ending with the end of the streams).
    /// The bytes are not verified here: the caller checks them against the
    /// hashes it holds for them.
    pub fn read_range(
        &mut self,
        frames: &[Frame],
        range: Range<u64>,
    ) -> Result<impl Read + '_, CodecError> {
        let bad = |detail: String| CodecError::Corrupt {
            object: self.object.clone(),
            detail,
        };
        let end_of = frames.last().map_or(0, |f| f.plain);
        if range.start > range.end || range.end > end_of {
            return Err(bad(format!(
                "bytes {}..{} are outside its {end_of} plain bytes",
                range.start, range.end
            )));
        }
        // The frame holding the first byte, and the first frame after the last.
        let first = frames.partition_point(|f| f.plain <= range.start).max(1) - 1;
        let after = frames
            .partition_point(|f| f.plain < range.end)
            .min(frames.len() - 1)
            .max(first + 1);
        let (from, to) = (frames[first], frames[after]);
        self.inner
            .seek_to(from.stored)
            .map_err(CodecError::from_io)?;
        let source = (&mut self.inner).take(to.stored - from.stored);
        let mut plain: Box<dyn Read + '_> = match self.compression {
            Compression::None => Box::new(source),
            Compression::Lz4 => Box::new(Lz4Frames(lz4_flex::frame::FrameDecoder::new(source))),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(source).map_err(CodecError::from_io)?)
            }
        };
        let skip = range.start - from.plain;
        let copied =
            io::copy(&mut (&mut plain).take(skip), &mut io::sink()).map_err(CodecError::from_io)?;
        if copied != skip {
            return Err(bad(format!(
                "frame at {} is shorter than its table says",
                from.plain
            )));
        }
        Ok(plain.take(range.end - range.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{CodecSettings, Decoder, Encoder};
    use std::io::Cursor;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i / 3) ^ (i >> 12)) as u8).collect()
    }

    #[test]
    fn framed_objects_decode_whole_and_by_range() {
        let key = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let id_file = dir.path().join("key");
        std::fs::write(&id_file, key.to_string().expose_secret()).unwrap();
        let keyring = Keyring::from_file(&id_file).unwrap();
        let plain = data(5 * UNIT as usize + 12345);
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            for encrypted in [false, true] {
                let settings = CodecSettings {
                    compression,
                    zstd_level: 3,
                    recipients: if encrypted {
                        vec![key.to_public()]
                    } else {
                        vec![]
                    },
                };
                let cuts = FrameCuts::new();
                cuts.cut_at(1000);
                cuts.cut_at(2 * UNIT + 17);
                let mut enc = Encoder::framed(Vec::new(), &settings, cuts).unwrap();
                for piece in plain.chunks(100_000) {
                    enc.write_all(piece).unwrap();
                }
                let (stored, digest, frames) = enc.finish_framed().unwrap();
                assert_eq!(digest.len, plain.len() as u64);
                let starts: Vec<u64> = frames.iter().map(|f| f.plain).collect();
                assert_eq!(&starts[..4], &[0, 1000, 1000 + UNIT, 2 * UNIT + 17]);
                // The end: the plain bytes and their trailer.
                assert_eq!(*starts.last().unwrap(), plain.len() as u64 + 48);
                // Whole, by the ordinary decoder.
                let mut whole = Vec::new();
                Decoder::new(&stored[..], Some(&keyring), "t")
                    .unwrap()
                    .read_to_end(&mut whole)
                    .unwrap();
                assert_eq!(whole, plain, "{compression} {encrypted}");
                // By ranges, out of order.
                let mut r = FrameReader::new(Cursor::new(&stored), Some(&keyring), "t").unwrap();
                for range in [
                    3 * UNIT..3 * UNIT + 10,
                    0..5,
                    1000..1000 + UNIT,
                    999..2 * UNIT + 20,
                    5 * UNIT..plain.len() as u64,
                    4 * UNIT + 1..4 * UNIT + 1,
                ] {
                    let mut got = Vec::new();
                    r.read_range(&frames, range.clone())
                        .unwrap()
                        .read_to_end(&mut got)
                        .unwrap();
                    assert_eq!(
                        got,
                        plain[range.start as usize..range.end as usize],
                        "{compression} {encrypted} {range:?}"
                    );
                }
                assert!(r.read_range(&frames, 0..plain.len() as u64 + 49).is_err());
            }
        }
    }

    use age::secrecy::ExposeSecret;
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::codec::{CodecSettings, Encoder};

    /// `cargo test --release --lib frames::timing -- --ignored --nocapture`:
    /// encoding throughput framed against one stream.
    #[test]
    #[ignore]
    fn framed_encoding_costs_little() {
        let page: Vec<u8> = (0..8192u32)
            .map(|i| {
                if i % 200 < 120 {
                    (i * 31 % 251) as u8
                } else {
                    b' '
                }
            })
            .collect();
        let data: Vec<u8> = page.iter().cycle().take(512 << 20).copied().collect();
        for compression in [Compression::Lz4, Compression::Zstd] {
            let settings = CodecSettings {
                compression,
                zstd_level: 3,
                recipients: vec![],
            };
            for framed in [false, true] {
                let t = std::time::Instant::now();
                let mut enc = if framed {
                    Encoder::framed(io::sink(), &settings, FrameCuts::new()).unwrap()
                } else {
                    Encoder::new(io::sink(), &settings, None).unwrap()
                };
                for c in data.chunks(256 << 10) {
                    enc.write_all(c).unwrap();
                }
                enc.finish_framed().unwrap();
                println!("{compression} framed={framed}: {:?}", t.elapsed());
            }
        }
    }
}
