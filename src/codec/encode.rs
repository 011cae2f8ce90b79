//! Writing side of the codec: hash → compress → encrypt, as one `Write` adapter.

use std::io::{self, Write};

use std::sync::Arc;

use super::format::{self, Header, PlainDigest};
use super::frames::{Frame, FrameCuts, Framed};
use super::{CodecError, CodecSettings, Compression};

enum Encrypt<W: Write> {
    None(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Write for Encrypt<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encrypt::None(w) => w.write(buf),
            Encrypt::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encrypt::None(w) => w.flush(),
            Encrypt::Age(w) => w.flush(),
        }
    }
}

impl<W: Write> Encrypt<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Encrypt::None(w) => Ok(w),
            Encrypt::Age(w) => w.finish(),
        }
    }
}

enum Compress<W: Write> {
    None(W),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    /// Independent frames, with a table of where each begins.
    Framed(Framed<W>),
}

impl<W: Write> Write for Compress<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compress::None(w) => w.write(buf),
            Compress::Lz4(w) => w.write(buf),
            Compress::Zstd(w) => w.write(buf),
            Compress::Framed(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compress::None(w) => w.flush(),
            Compress::Lz4(w) => w.flush(),
            Compress::Zstd(w) => w.flush(),
            Compress::Framed(w) => w.flush(),
        }
    }
}

impl<W: Write> Compress<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Compress::None(w) => Ok(w),
            Compress::Lz4(w) => w.finish().map_err(io::Error::other),
            Compress::Zstd(w) => w.finish(),
            Compress::Framed(w) => w.finish().map(|(w, _)| w),
        }
    }
}

/// Encodes plain bytes written to it into a cairn object written to `W`.
/// Call [`Encoder::finish`]; dropping it leaves an incomplete object.
pub struct Encoder<W: Write> {
    inner: Compress<Encrypt<W>>,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Encoder<W> {
    /// Writes the header and sets up the pipeline. Pass `known` when the plain
    /// bytes' digest is known up front, so that it goes into the header too.
    pub fn new(
        out: W,
        settings: &CodecSettings,
        known: Option<PlainDigest>,
    ) -> Result<Self, CodecError> {
        let enc = Self::start(out, settings, known)?;
        let inner = match settings.compression {
            Compression::None => Compress::None(enc),
            Compression::Lz4 => Compress::Lz4(lz4_flex::frame::FrameEncoder::new(enc)),
            Compression::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(enc, settings.zstd_level)?;
                if let Some(d) = known {
                    // Knowing the size lets zstd size its window and tables to the
                    // input, not to the level's maximum (a 128 MiB window at 22).
                    z.set_pledged_src_size(Some(d.len + format::TRAILER_LEN as u64))?;
                }
                Compress::Zstd(z)
            }
        };
        Ok(Encoder {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// An encoder of a framed object (see [`super::frames`]): frames begin
    /// every unit and wherever `cuts` asks; [`Encoder::finish_framed`]
    /// returns their table.
    pub fn framed(
        out: W,
        settings: &CodecSettings,
        cuts: Arc<FrameCuts>,
    ) -> Result<Self, CodecError> {
        let enc = Self::start(out, settings, None)?;
        let framed = Framed::new(enc, settings.compression, settings.zstd_level, cuts)?;
        Ok(Encoder {
            inner: Compress::Framed(framed),
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// Writes the header and sets up encryption.
    fn start(
        mut out: W,
        settings: &CodecSettings,
        known: Option<PlainDigest>,
    ) -> Result<Encrypt<W>, CodecError> {
        let header = Header {
            compression: settings.compression,
            encrypted: !settings.recipients.is_empty(),
            digest: known,
        };
        out.write_all(&header.to_bytes())?;
        Ok(if settings.recipients.is_empty() {
            Encrypt::None(out)
        } else {
            let e = age::Encryptor::with_recipients(
                settings.recipients.iter().map(|r| r as &dyn age::Recipient),
            )
            .map_err(|e| CodecError::Encrypt(e.to_string()))?;
            Encrypt::Age(e.wrap_output(out)?)
        })
    }

    /// [`Encoder::finish`] of a framed encoder, with the frame table.
    pub fn finish_framed(mut self) -> Result<(W, PlainDigest, Vec<Frame>), CodecError> {
        let digest = self.write_trailer()?;
        match self.inner {
            Compress::Framed(f) => {
                let (enc, frames) = f.finish()?;
                Ok((enc.finish()?, digest, frames))
            }
            other => Ok((other.finish()?.finish()?, digest, Vec::new())),
        }
    }

    fn write_trailer(&mut self) -> Result<PlainDigest, CodecError> {
        let digest = PlainDigest {
            len: self.len,
            blake3: *self.hasher.finalize().as_bytes(),
        };
        self.inner.write_all(&format::trailer(digest))?;
        Ok(digest)
    }

    /// Writes the trailer, flushes every layer and returns the sink with the
    /// digest of what was written.
    pub fn finish(mut self) -> Result<(W, PlainDigest), CodecError> {
        let digest = self.write_trailer()?;
        let out = self.inner.finish()?.finish()?;
        Ok((out, digest))
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encodes a whole in-memory buffer (WAL files), with its digest in the header.
pub fn encode_to_vec(
    plain: &[u8],
    settings: &CodecSettings,
) -> Result<(Vec<u8>, PlainDigest), CodecError> {
    let digest = PlainDigest::of(plain);
    let mut enc = Encoder::new(
        Vec::with_capacity(plain.len() / 2 + 1024),
        settings,
        Some(digest),
    )?;
    enc.write_all(plain)?;
    let (out, d) = enc.finish()?;
    debug_assert_eq!(d, digest);
    Ok((out, digest))
}
