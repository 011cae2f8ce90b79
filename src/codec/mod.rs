//! The codec: what happens to bytes between a file and storage. Writing runs
//! checksum (BLAKE3 of the plain bytes) → compress (none, lz4, zstd) → encrypt
//! (age, optional) → storage; reading reverses it and verifies the checksum.
//! Both directions are `std::io` adapters, so any size streams in bounded memory.
//! The object format is specified in `docs/FORMAT.md`.

mod decode;
mod encode;
pub mod format;
pub mod frames;
mod pipe;
mod stream;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use decode::{Decoder, damage, decode_to_vec};
pub use encode::{Encoder, encode_to_vec};
pub use format::{Header, PlainDigest, hex};
pub use pipe::{PipeReader, PipeWriter, pipe};
pub use stream::{
    EncodedStream, FramedStream, STREAM_BUFFERS, encode_framed_stream, encode_stream,
};

/// Compression of an object's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!("unknown compression {s:?} (use none, lz4 or zstd)")),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

/// How new objects are written. Reading needs none of this: objects describe
/// themselves.
#[derive(Clone)]
pub struct CodecSettings {
    pub compression: Compression,
    pub zstd_level: i32,
    /// Encrypt to these when non-empty; only public keys are needed to write.
    pub recipients: Vec<age::x25519::Recipient>,
}

impl CodecSettings {
    /// About how much memory one encoder holds (compressor state and window,
    /// encryption buffers), for callers that budget memory across encoders.
    /// Measured with wal-push's peak RSS; zstd's grows with the level's window.
    pub fn working_set(&self) -> u64 {
        const MIB: u64 = 1 << 20;
        let compression = match self.compression {
            Compression::None => 0,
            Compression::Lz4 => MIB,
            // wal-push of a 16 MiB segment, less its ~10 MiB at level 1:
            // 3 → 2.5, 7 → 7, 9 → 14, 12 → 45, 15 → 69, 19 → 90, 20 → 180, 22 → 410.
            Compression::Zstd => match self.zstd_level {
                ..=3 => 4 * MIB,
                4..=7 => 8 * MIB,
                8..=9 => 16 * MIB,
                10..=12 => 48 * MIB,
                13..=19 => 96 * MIB,
                _ => 448 * MIB,
            },
        };
        let encryption = if self.recipients.is_empty() {
            0
        } else {
            MIB / 4
        };
        compression + encryption
    }
}

impl fmt::Debug for CodecSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodecSettings")
            .field("compression", &self.compression)
            .field("zstd_level", &self.zstd_level)
            .field("recipients", &self.recipients.len())
            .finish()
    }
}

impl Default for CodecSettings {
    fn default() -> Self {
        CodecSettings {
            compression: Compression::Lz4,
            zstd_level: 3,
            recipients: Vec::new(),
        }
    }
}

/// The age identities that can read encrypted objects. Secret keys never reach
/// `Debug`, logs or errors.
#[derive(Clone)]
pub struct Keyring {
    identities: Vec<age::x25519::Identity>,
    source: PathBuf,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Keyring({} identities from {})",
            self.identities.len(),
            self.source.display()
        )
    }
}

impl Keyring {
    /// Reads age identity files, every identity of each: objects encrypted
    /// to any of them decrypt (keys kept across a rotation).
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, CodecError> {
        let mut identities = Vec::new();
        for p in paths {
            identities.extend(Self::from_file(p)?.identities);
        }
        Ok(Keyring {
            identities,
            source: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
        })
    }

    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines; `#` comments).
    pub fn from_file(path: &Path) -> Result<Self, CodecError> {
        let bad = |detail: String| CodecError::IdentityFile {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut identities = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| {
                bad(format!(
                    "line {} is not an age X25519 identity (AGE-SECRET-KEY-1…)",
                    i + 1
                ))
            })?;
            identities.push(id);
        }
        if identities.is_empty() {
            return Err(bad("contains no identity".into()));
        }
        Ok(Keyring {
            identities,
            source: path.to_path_buf(),
        })
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub(crate) fn identities(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.identities.iter().map(|i| i as &dyn age::Identity)
    }
}

/// Parses an age X25519 public key (`age1…`).
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, String> {
    age::x25519::Recipient::from_str(s.trim())
        .map_err(|e| format!("{:?} is not an age X25519 recipient: {e}", s.trim()))
}

/// Why an object could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(
        "{object}: not a cairn object (bad magic bytes); it was not written by cairn or is damaged"
    )]
    NotAnObject { object: String },
    #[error(
        "{object}: object format version {version} is newer than this cairn understands; upgrade cairn"
    )]
    UnsupportedVersion { object: String, version: u8 },
    #[error("{object}: unknown {what} id {id} in object header; upgrade cairn")]
    UnknownCodec {
        object: String,
        what: &'static str,
        id: u8,
    },
    #[error(
        "{object} is encrypted with age but no identity is configured; set CAIRN_AGE_IDENTITY_FILE \
         (or age_identity_file) to the file holding its secret key"
    )]
    NoIdentity { object: String },
    #[error("{object}: none of the identities in {identity_file} can decrypt it (wrong age key?)")]
    WrongIdentity {
        object: String,
        identity_file: PathBuf,
    },
    #[error("{object} is corrupt or truncated: {detail}")]
    Corrupt { object: String, detail: String },
    #[error("age identity file {path}: {detail}")]
    IdentityFile { path: PathBuf, detail: String },
    #[error("cannot set up encryption: {0}")]
    Encrypt(String),
    /// Reading the object from storage failed (a network fault, not damage).
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// Recovers a codec error that travelled through an `io::Error` (the adapters
    /// are `Read`/`Write`, so that is the only way out of them).
    pub fn from_io(e: std::io::Error) -> CodecError {
        let e = match crate::storage::StorageError::from_io(e) {
            Ok(storage) => return CodecError::Storage(storage),
            Err(e) => e,
        };
        if e.get_ref().is_some_and(|inner| inner.is::<CodecError>()) {
            match e.into_inner().map(|b| b.downcast::<CodecError>()) {
                Some(Ok(c)) => *c,
                Some(Err(other)) => CodecError::Io(std::io::Error::other(other)),
                None => CodecError::Io(std::io::Error::other("unknown codec error")),
            }
        } else {
            CodecError::Io(e)
        }
    }

    /// Whether this only says that the next stage of a pipeline stopped
    /// reading: that stage's own error is the cause.
    pub fn is_stage_stopped(&self) -> bool {
        matches!(self, CodecError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub(crate) fn into_io(self) -> std::io::Error {
        match self {
            CodecError::Io(e) => e,
            other => std::io::Error::other(other),
        }
    }
}

#[cfg(test)]
mod tests;
