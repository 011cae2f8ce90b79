//! A part's index (`basebackups/<backup>/<part>.index`): where each frame of
//! the framed part begins, where each file's bytes lie in its tar stream,
//! and the BLAKE3 chaining values of every 1 MiB unit of its large files.
//! With it, `backup-fetch --delta` compares a local file unit by unit and
//! fetches only the frames holding what differs. Stored like the part
//! (encrypted when the part is); the manifest names it with its checksum,
//! and a backup without indexes (older cairn) restores as before.
//! Format: `docs/FORMAT.md` ("Part index").

use serde::{Deserialize, Serialize};

use super::keys;
use super::manifest::{FileEntry, Manifest, PartEntry};
use crate::Context;
use crate::codec::Keyring;
use crate::codec::format::TRAILER_LEN;
use crate::codec::frames::Frame;
use crate::codec::hex;
use crate::codec::units::{UNIT, UnitCv, root_of, unit_count};
use crate::storage::StorageError;

/// The current index format.
pub const VERSION: u32 = 1;

/// The manifest's reference to a part's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    /// Object key relative to the backup's directory.
    pub key: String,
    /// BLAKE3 of the index's plain bytes, hex.
    pub blake3: String,
}

/// The index of one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartIndex {
    pub version: u32,
    /// Bytes per unit.
    pub unit: u64,
    /// Where each frame begins; the last entry is the end of both streams.
    pub frames: Vec<Frame>,
    pub files: Vec<IndexedFile>,
}

/// Where one file's bytes lie in the part's tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedFile {
    pub path: String,
    /// Offset of the file's first byte in the tar stream.
    pub offset: u64,
    /// The chaining values of its units, hex (entries larger than a unit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<String>,
}

impl IndexedFile {
    /// The units' chaining values.
    pub fn unit_cvs(&self) -> Option<Vec<UnitCv>> {
        self.units.iter().map(|h| unhex32(h)).collect()
    }
}

impl PartIndex {
    /// Checks the index against the part and the manifest's entries for its
    /// files: frames that cover the part in order, files inside it, and unit
    /// chaining values that merge into each file's checksum. An index that
    /// fails is not used (the part is read whole instead).
    pub fn check(&self, part: &PartEntry, files: &[&FileEntry]) -> Result<(), String> {
        if self.version != VERSION || self.unit != UNIT {
            return Err(format!(
                "index version {} with {}-byte units; this cairn reads version {VERSION} with \
                 {UNIT}-byte units",
                self.version, self.unit
            ));
        }
        let end = part.raw_size + TRAILER_LEN as u64;
        let ordered = self
            .frames
            .windows(2)
            .all(|w| w[0].plain < w[1].plain && w[0].stored <= w[1].stored);
        if self.frames.first().map(|f| (f.plain, f.stored)) != Some((0, 0))
            || self.frames.last().map(|f| f.plain) != Some(end)
            || !ordered
        {
            return Err("its frames do not cover the part in order".into());
        }
        let by_path: std::collections::HashMap<&str, &IndexedFile> =
            self.files.iter().map(|f| (f.path.as_str(), f)).collect();
        for entry in files.iter().filter(|f| !f.dir) {
            let Some(f) = by_path.get(entry.path.as_str()) else {
                return Err(format!("it does not list file {}", entry.path));
            };
            let len = entry.entry_size();
            if f.offset.checked_add(len).is_none_or(|e| e > part.raw_size) {
                return Err(format!("file {} lies outside the part", entry.path));
            }
            // Every entry larger than a unit has them (a page set's are of
            // its bytes, as its checksum is).
            let want = unit_count(len);
            if f.units.len() as u64 != want {
                return Err(format!(
                    "file {} has {} units, not {want}",
                    entry.path,
                    f.units.len()
                ));
            }
            if want > 0 {
                let cvs = f
                    .unit_cvs()
                    .ok_or_else(|| format!("file {}: a unit checksum is not hex", entry.path))?;
                if root_of(&cvs).map(|h| hex(h.as_bytes())) != Some(entry.blake3.clone()) {
                    return Err(format!(
                        "the units of file {} do not make up its checksum",
                        entry.path
                    ));
                }
            }
        }
        Ok(())
    }

    /// The entry for `path`.
    pub fn file(&self, path: &str) -> Option<&IndexedFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// Why a part's index cannot be used.
#[derive(Debug)]
pub enum IndexError {
    /// Reading it failed: storage's own error.
    Storage(StorageError),
    /// It is missing, damaged, or not this part's: the part is read whole.
    Unusable(String),
}

/// Reads and checks the index of `manifest`'s part `part`.
pub async fn load(
    ctx: &Context,
    manifest: &Manifest,
    part: &PartEntry,
    keyring: Option<&Keyring>,
) -> Result<PartIndex, IndexError> {
    let Some(r) = &part.index else {
        return Err(IndexError::Unusable("the part has none".into()));
    };
    let key = keys::part(&manifest.name, &r.key).map_err(IndexError::Storage)?;
    let plain = match super::objects::read_plain(ctx, &key, keyring).await {
        Ok(Some(plain)) => plain,
        Ok(None) => return Err(IndexError::Unusable(format!("{key} is missing"))),
        Err(super::ArchiveError::Storage(e)) => return Err(IndexError::Storage(e)),
        Err(e) => return Err(IndexError::Unusable(e.to_string())),
    };
    if hex(blake3::hash(&plain).as_bytes()) != r.blake3 {
        return Err(IndexError::Unusable(format!(
            "{key} is not the index the manifest lists"
        )));
    }
    let index: PartIndex =
        serde_json::from_slice(&plain).map_err(|e| IndexError::Unusable(format!("{key}: {e}")))?;
    let files: Vec<&FileEntry> = manifest
        .files
        .iter()
        .filter(|f| f.part.and_then(|i| manifest.parts.get(i)) == Some(part))
        .collect();
    index.check(part, &files).map_err(IndexError::Unusable)?;
    Ok(index)
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::Stored;
    use crate::codec::units::unit_cv;

    #[test]
    fn an_index_is_checked_against_its_part_and_files() {
        let data: Vec<u8> = (0..3 * UNIT + 5).map(|i| (i % 253) as u8).collect();
        let units: Vec<String> = data
            .chunks(UNIT as usize)
            .enumerate()
            .map(|(i, c)| hex(&unit_cv(i as u64, c)))
            .collect();
        let part = PartEntry {
            key: "part_00001.tar".into(),
            raw_size: 512 + data.len() as u64 + 1024,
            stored_size: 0,
            blake3: String::new(),
            control: false,
            index: None,
        };
        let file = FileEntry {
            path: "base/5/16384".into(),
            dir: false,
            size: data.len() as u64,
            mode: 0o600,
            blake3: hex(blake3::hash(&data).as_bytes()),
            part: Some(0),
            stored: Stored::Whole,
        };
        let good = PartIndex {
            version: VERSION,
            unit: UNIT,
            frames: vec![
                Frame {
                    plain: 0,
                    stored: 0,
                },
                Frame {
                    plain: 512,
                    stored: 100,
                },
                Frame {
                    plain: part.raw_size + TRAILER_LEN as u64,
                    stored: 9000,
                },
            ],
            files: vec![IndexedFile {
                path: file.path.clone(),
                offset: 512,
                units: units.clone(),
            }],
        };
        assert_eq!(good.check(&part, &[&file]), Ok(()));
        // A delta's page set larger than a unit has units of its bytes too.
        let pages = FileEntry {
            size: 50 * UNIT,
            stored: Stored::Pages {
                bytes: data.len() as u64,
                pages: 384,
            },
            ..file.clone()
        };
        assert_eq!(good.check(&part, &[&pages]), Ok(()));
        let mut bad = good.clone();
        bad.files[0].units.swap(0, 1);
        assert!(
            bad.check(&part, &[&file])
                .unwrap_err()
                .contains("do not make up")
        );
        let mut bad = good.clone();
        bad.files[0].offset = part.raw_size;
        assert!(bad.check(&part, &[&file]).unwrap_err().contains("outside"));
        let mut bad = good.clone();
        bad.frames.pop();
        assert!(bad.check(&part, &[&file]).unwrap_err().contains("frames"));
        let mut bad = good;
        bad.files.clear();
        assert!(
            bad.check(&part, &[&file])
                .unwrap_err()
                .contains("does not list")
        );
    }
}
