//! Reading side of the codec: decrypt → decompress → verify, as one `Read` adapter.
//! The last `TRAILER_LEN` bytes of the decompressed stream are held back until the
//! end, where they must match the length and BLAKE3 of everything before them; only
//! then does `read` return 0. A caller that writes to a temporary file and renames
//! it after EOF therefore never publishes unverified bytes.

use std::io::{self, BufReader, Read};

use super::format::{self, Header, PlainDigest, TRAILER_LEN};
use super::{CodecError, Compression, Keyring};

enum Decrypt<R: Read> {
    None(R),
    Age(age::stream::StreamReader<R>),
}

impl<R: Read> Read for Decrypt<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decrypt::None(r) => r.read(buf),
            Decrypt::Age(r) => r.read(buf),
        }
    }
}

enum Decompress<R: Read> {
    None(R),
    Lz4(super::frames::Lz4Frames<R>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Read for Decompress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompress::None(r) => r.read(buf),
            Decompress::Lz4(r) => r.read(buf),
            Decompress::Zstd(r) => r.read(buf),
        }
    }
}

const BUF: usize = 1 << 20;
/// Chunks [`Decoder::next_chunk`] hands out stay below glibc's mmap threshold
/// (1 MiB, set in main), so they come from, and go back to, the heap instead of
/// costing a map, page faults and an unmap each.
pub const CHUNK_MAX: usize = 512 << 10;

/// Decodes a cairn object read from `R` into its verified plain bytes.
pub struct Decoder<R: Read> {
    inner: Decompress<Decrypt<R>>,
    object: String,
    header: Header,
    hasher: blake3::Hasher,
    len: u64,
    buf: Vec<u8>,
    /// `buf[pos..ready]` is verified-safe to hand out; `buf[ready..filled]` is held back.
    pos: usize,
    ready: usize,
    filled: usize,
    done: bool,
    /// The plain bytes' digest, once the end was read and verified.
    verified: Option<PlainDigest>,
}

impl<R: Read> Decoder<R> {
    /// Reads the header and sets up decryption (needs `keyring` only for encrypted
    /// objects) and decompression. `object` names the object in errors.
    pub fn new(mut src: R, keyring: Option<&Keyring>, object: &str) -> Result<Self, CodecError> {
        let header = Header::read_from(&mut src, object)?;
        let dec = if header.encrypted {
            Decrypt::Age(decrypting(src, keyring, object)?)
        } else {
            Decrypt::None(src)
        };
        let inner = match header.compression {
            Compression::None => Decompress::None(dec),
            Compression::Lz4 => Decompress::Lz4(super::frames::Lz4Frames(
                lz4_flex::frame::FrameDecoder::new(dec),
            )),
            Compression::Zstd => Decompress::Zstd(zstd::stream::read::Decoder::new(dec)?),
        };
        Ok(Decoder {
            inner,
            object: object.into(),
            header,
            hasher: blake3::Hasher::new(),
            len: 0,
            buf: vec![0; BUF + TRAILER_LEN],
            pos: 0,
            ready: 0,
            filled: 0,
            done: false,
            verified: None,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn corrupt(&self, detail: impl Into<String>) -> io::Error {
        CodecError::Corrupt {
            object: self.object.clone(),
            detail: detail.into(),
        }
        .into_io()
    }

    /// Refills `buf`; returns false at the verified end of the object.
    fn refill(&mut self) -> io::Result<bool> {
        // Keep the held-back tail at the front.
        self.buf.copy_within(self.ready..self.filled, 0);
        self.filled -= self.ready;
        self.pos = 0;
        self.ready = 0;
        loop {
            let n = match self.inner.read(&mut self.buf[self.filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Errors of the decompressor or decryptor mean damaged
                    // data; storage's own (a download that could not be
                    // resumed) stay what they are.
                    let passes = e.get_ref().is_some_and(|i| {
                        i.is::<CodecError>() || i.is::<crate::storage::StorageError>()
                    });
                    return Err(match e.kind() {
                        io::ErrorKind::InvalidData
                        | io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::Other
                            if !passes =>
                        {
                            self.corrupt(damage(&e))
                        }
                        _ => e,
                    });
                }
            };
            if n == 0 {
                return self.verify_end().map(|()| false);
            }
            self.filled += n;
            if self.filled > TRAILER_LEN {
                self.ready = self.filled - TRAILER_LEN;
                self.hasher.update(&self.buf[..self.ready]);
                self.len += self.ready as u64;
                return Ok(true);
            }
        }
    }

    fn verify_end(&mut self) -> io::Result<()> {
        let Some(stored) = format::parse_trailer(&self.buf[..self.filled]) else {
            return Err(self.corrupt("it ends without its trailer"));
        };
        let actual = PlainDigest {
            len: self.len,
            blake3: *self.hasher.finalize().as_bytes(),
        };
        if stored != actual {
            return Err(self.corrupt(format!(
                "checksum mismatch: trailer says {stored}, data is {actual}"
            )));
        }
        if let Some(h) = self.header.digest
            && h != actual
        {
            return Err(self.corrupt(format!(
                "checksum mismatch: header says {h}, data is {actual}"
            )));
        }
        self.done = true;
        self.verified = Some(actual);
        Ok(())
    }

    /// The next run of verified plain bytes as one owned chunk of at most
    /// [`CHUNK_MAX`], or `None` at the verified end. Saves the caller a
    /// zero-filled buffer and a second copy when it passes the bytes on.
    pub fn next_chunk(&mut self) -> io::Result<Option<bytes::Bytes>> {
        while self.pos == self.ready {
            if self.done || !self.refill()? {
                return Ok(None);
            }
        }
        let end = self.ready.min(self.pos + CHUNK_MAX);
        let chunk = bytes::Bytes::copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(Some(chunk))
    }

    /// The digest of the plain bytes, after everything was read and the
    /// trailer verified; `None` before.
    pub fn verified_digest(&self) -> Option<PlainDigest> {
        self.verified
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.ready {
            if self.done || !self.refill()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.ready - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What a decompressor's error says about the data, in words: lz4_flex's
/// errors display as their Debug form (`DecompressionError(…)`).
pub fn damage(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) if inner.is::<lz4_flex::frame::Error>() => {
            "its lz4 data does not decompress".to_string()
        }
        _ => e.to_string(),
    }
}

/// Decodes a whole stored object held in memory (a manifest, a `.history`
/// file): the counterpart of `encode_to_vec`.
pub fn decode_to_vec(
    stored: &[u8],
    keyring: Option<&Keyring>,
    object: &str,
) -> Result<Vec<u8>, CodecError> {
    let mut decoder = Decoder::new(stored, keyring, object)?;
    let mut plain = Vec::new();
    decoder
        .read_to_end(&mut plain)
        .map_err(CodecError::from_io)?;
    Ok(plain)
}

/// The age-decrypted stream of an encrypted object's body (`src` past the
/// header), with a keyring that can open it.
pub(super) fn decrypting<R: Read>(
    src: R,
    keyring: Option<&Keyring>,
    object: &str,
) -> Result<age::stream::StreamReader<R>, CodecError> {
    let keyring = keyring.ok_or_else(|| CodecError::NoIdentity {
        object: object.into(),
    })?;
    let d = age::Decryptor::new(src).map_err(|e| age_error(e, object, keyring))?;
    d.decrypt(keyring.identities())
        .map_err(|e| age_error(e, object, keyring))
}

fn age_error(e: age::DecryptError, object: &str, keyring: &Keyring) -> CodecError {
    match e {
        age::DecryptError::NoMatchingKeys => CodecError::WrongIdentity {
            object: object.into(),
            identity_file: keyring.source().to_path_buf(),
        },
        age::DecryptError::Io(io) if io.kind() != io::ErrorKind::UnexpectedEof => {
            CodecError::from_io(io)
        }
        other => CodecError::Corrupt {
            object: object.into(),
            detail: format!("age: {other}"),
        },
    }
}
