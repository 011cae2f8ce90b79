//! The byte layout of a stored object (version 1; see docs/FORMAT.md):
//!
//! ```text
//! header   magic "CAIRN\0\r\n" | version u8 | compression u8 | encryption u8 | flags u8 | 4 zero bytes
//!          [flags & 1: plain length u64 LE | BLAKE3 of plain bytes, 32 bytes]
//! body     encrypt(compress(plain bytes | trailer))
//! trailer  "CAIRNEND" | plain length u64 LE | BLAKE3 of plain bytes
//! ```
//! The trailer sits inside compression and encryption, so a streaming writer can
//! append it at the end and, when encrypted, it is authenticated with the data.

use std::fmt;
use std::io::Read;

use super::{CodecError, Compression};

pub const MAGIC: &[u8; 8] = b"CAIRN\0\r\n";
pub const VERSION: u8 = 1;
pub const TRAILER_MAGIC: &[u8; 8] = b"CAIRNEND";
pub const HEADER_LEN: usize = 16;
pub const DIGEST_FIELD_LEN: usize = 40;
pub const TRAILER_LEN: usize = 48;
const FLAG_DIGEST: u8 = 1;

pub(crate) const ENCRYPTION_NONE: u8 = 0;
pub(crate) const ENCRYPTION_AGE: u8 = 1;

/// Lower-case hex, as digests are written in manifests and markers.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Length and BLAKE3 hash of an object's plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainDigest {
    pub len: u64,
    pub blake3: [u8; 32],
}

impl PlainDigest {
    pub fn of(bytes: &[u8]) -> Self {
        PlainDigest {
            len: bytes.len() as u64,
            blake3: *blake3::hash(bytes).as_bytes(),
        }
    }

    /// The digest of everything `r` yields, read in bounded memory.
    pub fn of_reader(mut r: impl std::io::Read) -> std::io::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut len = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok(PlainDigest {
            len,
            blake3: *hasher.finalize().as_bytes(),
        })
    }

    pub(crate) fn to_bytes(self) -> [u8; DIGEST_FIELD_LEN] {
        let mut b = [0u8; DIGEST_FIELD_LEN];
        b[..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..].copy_from_slice(&self.blake3);
        b
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Self {
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[..8]);
        let mut blake3 = [0u8; 32];
        blake3.copy_from_slice(&b[8..40]);
        PlainDigest {
            len: u64::from_le_bytes(len),
            blake3,
        }
    }
}

impl fmt::Display for PlainDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, blake3 ", self.len)?;
        for b in &self.blake3[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// The plain-text header of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub compression: Compression,
    pub encrypted: bool,
    /// Present when the writer knew the digest before writing (WAL files do).
    pub digest: Option<PlainDigest>,
}

impl Header {
    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + DIGEST_FIELD_LEN);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.push(match self.compression {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        });
        b.push(if self.encrypted {
            ENCRYPTION_AGE
        } else {
            ENCRYPTION_NONE
        });
        b.push(if self.digest.is_some() {
            FLAG_DIGEST
        } else {
            0
        });
        b.extend_from_slice(&[0; 4]);
        if let Some(d) = self.digest {
            b.extend_from_slice(&d.to_bytes());
        }
        b
    }

    /// Reads and validates a header from the start of an object.
    pub fn read_from<R: Read>(r: &mut R, object: &str) -> Result<Self, CodecError> {
        let short = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => CodecError::Corrupt {
                object: object.into(),
                detail: "shorter than its header".into(),
            },
            _ => CodecError::from_io(e),
        };
        let mut b = [0u8; HEADER_LEN];
        r.read_exact(&mut b).map_err(short)?;
        if &b[..8] != MAGIC {
            return Err(CodecError::NotAnObject {
                object: object.into(),
            });
        }
        if b[8] != VERSION {
            return Err(CodecError::UnsupportedVersion {
                object: object.into(),
                version: b[8],
            });
        }
        let compression = match b[9] {
            0 => Compression::None,
            1 => Compression::Lz4,
            2 => Compression::Zstd,
            id => {
                return Err(CodecError::UnknownCodec {
                    object: object.into(),
                    what: "compression",
                    id,
                });
            }
        };
        let encrypted = match b[10] {
            ENCRYPTION_NONE => false,
            ENCRYPTION_AGE => true,
            id => {
                return Err(CodecError::UnknownCodec {
                    object: object.into(),
                    what: "encryption",
                    id,
                });
            }
        };
        if b[11] & !FLAG_DIGEST != 0 || b[12..16] != [0; 4] {
            return Err(CodecError::UnknownCodec {
                object: object.into(),
                what: "header flag",
                id: b[11],
            });
        }
        let digest = if b[11] & FLAG_DIGEST != 0 {
            let mut d = [0u8; DIGEST_FIELD_LEN];
            r.read_exact(&mut d).map_err(short)?;
            Some(PlainDigest::from_bytes(&d))
        } else {
            None
        };
        Ok(Header {
            compression,
            encrypted,
            digest,
        })
    }
}

pub(crate) fn trailer(d: PlainDigest) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..8].copy_from_slice(TRAILER_MAGIC);
    t[8..].copy_from_slice(&d.to_bytes());
    t
}

pub(crate) fn parse_trailer(t: &[u8]) -> Option<PlainDigest> {
    (t.len() == TRAILER_LEN && &t[..8] == TRAILER_MAGIC).then(|| PlainDigest::from_bytes(&t[8..]))
}
