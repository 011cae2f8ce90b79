//! `backup-fetch --delta` over indexed parts: each local file that a part's
//! index covers is compared with the backup unit by unit (1 MiB, BLAKE3
//! chaining values) or, when small, whole; only the frames holding what
//! differs are fetched, decoded, verified against the index and written.
//! The parts themselves are never read whole. Parts without an index (older
//! backups), or whose index cannot be read, go the ordinary way.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;

use super::super::BackupError;
use super::dest::{Layout, WriteStats};
use super::plan::Reusable;
use crate::Context;
use crate::archive::keys;
use crate::archive::manifest::{Manifest, PartEntry};
use crate::archive::part_index::{self, IndexError, IndexedFile};
use crate::codec::frames::FrameReader;
use crate::codec::units::{UNIT, UnitCv, unit_cv};
use crate::codec::{CodecError, Keyring, damage, hex};
use crate::storage::ranged::RangedReader;

/// Candidates of indexed parts, by part, with their indexes.
pub struct Indexed {
    parts: Vec<IndexedPart>,
}

struct IndexedPart {
    /// The backup's name and the part.
    backup: String,
    part: PartEntry,
    frames: Vec<crate::codec::frames::Frame>,
    files: Vec<LocalFile>,
}

/// One file to bring in line with the backup.
struct LocalFile {
    want: Reusable,
    target: PathBuf,
    /// Where its bytes lie in the part's tar stream.
    offset: u64,
    /// Its units' chaining values (files larger than a unit).
    units: Vec<UnitCv>,
    /// What differs: the units to fetch (or, for a small file, `[0]`: all of it).
    differs: Vec<u64>,
}

/// What [`Indexed::compare`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// Files that hold what the backup has, and their bytes.
    pub kept: HashSet<String>,
    pub kept_bytes: u64,
}

impl Indexed {
    /// Every candidate this restore handles (kept or fetched here): the part
    /// plan leaves them out.
    pub fn paths(&self) -> HashSet<String> {
        self.parts
            .iter()
            .flat_map(|p| p.files.iter().map(|f| f.want.path.clone()))
            .collect()
    }

    /// Compares each file with the backup, `threads` units at a time.
    /// Blocking.
    pub fn compare(&mut self, threads: usize, stats: &WriteStats) -> Found {
        // Work items: (part, file, unit); a small file is one item.
        let mut items = Vec::new();
        for (p, part) in self.parts.iter().enumerate() {
            for (f, file) in part.files.iter().enumerate() {
                let n = file.units.len().max(1) as u64;
                items.extend((0..n).map(|u| (p, f, u)));
            }
        }
        let next = AtomicUsize::new(0);
        let differing = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    let mut buf = vec![0u8; UNIT as usize];
                    // The file of this thread's last unit: a file's units
                    // come in order, so most are read through one open.
                    let mut open: Option<((usize, usize), Option<fs::File>)> = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(p, f, u)) = items.get(i) else {
                            break;
                        };
                        let file = &self.parts[p].files[f];
                        if open.as_ref().is_none_or(|(at, _)| *at != (p, f)) {
                            open = Some(((p, f), fs::File::open(&file.target).ok()));
                        }
                        let local = open.as_ref().and_then(|(_, h)| h.as_ref());
                        if !local.is_some_and(|h| holds_unit(file, h, u, &mut buf)) {
                            differing
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((p, f, u));
                        }
                    }
                });
            }
        });
        for (p, f, u) in differing.into_inner().unwrap_or_else(|e| e.into_inner()) {
            self.parts[p].files[f].differs.push(u);
        }
        let mut found = Found::default();
        for part in &mut self.parts {
            for file in &mut part.files {
                file.differs.sort_unstable();
                let len = fs::symlink_metadata(&file.target).map(|m| m.len()).ok();
                if file.differs.is_empty() && len == Some(file.want.size) {
                    found.kept.insert(file.want.path.clone());
                    found.kept_bytes += file.want.size;
                } else if !file.units.is_empty() {
                    let same = file.units.len() - file.differs.len();
                    stats.add_unchanged(same as u64 * UNIT);
                }
            }
            part.files.retain(|f| !found.kept.contains(&f.want.path));
        }
        self.parts.retain(|p| !p.files.is_empty());
        found
    }

    /// Fetches, verifies and writes what [`Indexed::compare`] found to
    /// differ, `concurrency` parts at a time.
    pub async fn fetch(
        self,
        ctx: &Context,
        keyring: Option<Keyring>,
        concurrency: usize,
        stats: Arc<WriteStats>,
    ) -> Result<(), BackupError> {
        let runtime = tokio::runtime::Handle::current();
        let results: Vec<Result<(), BackupError>> = futures::stream::iter(self.parts)
            .map(|part| {
                let (storage, keyring, stats) =
                    (ctx.storage.clone(), keyring.clone(), stats.clone());
                let (runtime, location) = (runtime.clone(), ctx.storage.location().to_string());
                crate::blocking(move || {
                    let key = keys::part(&part.backup, &part.part.key)?;
                    let object = keys::object_name(&location, &key);
                    let reader = RangedReader::new(storage, key, part.part.stored_size, runtime);
                    let mut frames = FrameReader::new(reader, keyring.as_ref(), &object)
                        .map_err(|e| part.read_error(e))?;
                    part.apply(&mut frames, &stats)
                })
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// Whether unit `u` of the local file `f` holds the backup's bytes (for a
/// small file: the whole file). Any read failure means it does not.
fn holds_unit(file: &LocalFile, f: &fs::File, u: u64, buf: &mut [u8]) -> bool {
    if file.units.is_empty() {
        if !f
            .metadata()
            .is_ok_and(|m| m.is_file() && m.len() == file.want.size)
        {
            return false;
        }
        let mut h = blake3::Hasher::new();
        return h
            .update_reader(f)
            .is_ok_and(|h| hex(h.finalize().as_bytes()) == file.want.blake3);
    }
    let start = u * UNIT;
    let len = (file.want.size - start).min(UNIT) as usize;
    if f.read_exact_at(&mut buf[..len], start).is_err() {
        return false;
    }
    unit_cv(u, &buf[..len]) == file.units[u as usize]
}

impl IndexedPart {
    /// A failure to read the part: storage's own errors stay what they are.
    fn read_error(&self, e: CodecError) -> BackupError {
        match e {
            CodecError::Storage(e) => BackupError::Storage(e),
            CodecError::Io(e) => match CodecError::from_io(e) {
                CodecError::Storage(e) => BackupError::Storage(e),
                CodecError::Io(e) => self.damaged(format!("unreadable: {}", damage(&e))),
                other => self.damaged(other.to_string()),
            },
            other => self.damaged(other.to_string()),
        }
    }

    /// A failure while decoding the bytes of `file`.
    fn decode_error(&self, file: &LocalFile, e: io::Error) -> BackupError {
        match CodecError::from_io(e) {
            CodecError::Storage(e) => BackupError::Storage(e),
            CodecError::Io(e) => self.damaged(format!(
                "file {} cannot be decoded: {}",
                file.want.path,
                damage(&e)
            )),
            other => self.damaged(format!("file {}: {other}", file.want.path)),
        }
    }

    fn damaged(&self, reason: String) -> BackupError {
        BackupError::Damaged {
            name: self.backup.clone(),
            part: self.part.key.clone(),
            reason,
        }
    }

    /// Fetches the differing pieces in the order they lie in the part,
    /// neighbours in one read, and writes each once verified.
    fn apply<R: Read + io::Seek>(
        &self,
        frames: &mut FrameReader<R>,
        stats: &WriteStats,
    ) -> Result<(), BackupError> {
        // (plain range, file, unit or None for a whole small file)
        let mut pieces: Vec<(u64, u64, usize, Option<u64>)> = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            if f.units.is_empty() {
                pieces.push((f.offset, f.offset + f.want.size, i, None));
            } else {
                for &u in &f.differs {
                    let start = f.offset + u * UNIT;
                    let end = f.offset + ((u + 1) * UNIT).min(f.want.size);
                    pieces.push((start, end, i, Some(u)));
                }
            }
        }
        pieces.sort_unstable_by_key(|p| p.0);
        let mut open: HashMap<usize, fs::File> = HashMap::new();
        let mut k = 0;
        while k < pieces.len() {
            // A run: pieces whose gaps are small enough to read through.
            let mut end = k + 1;
            while end < pieces.len() && pieces[end].0 <= pieces[end - 1].1 + GAP {
                end += 1;
            }
            let run = &pieces[k..end];
            let (from, to) = (run[0].0, run[run.len() - 1].1);
            let mut bytes = frames
                .read_range(&self.frames, from..to)
                .map_err(|e| self.read_error(e))?;
            let mut at = from;
            let mut buf = Vec::new();
            for &(start, stop, i, unit) in run {
                let file = &self.files[i];
                let gap = io::copy(&mut (&mut bytes).take(start - at), &mut io::sink())
                    .map_err(|e| self.decode_error(file, e))?;
                buf.clear();
                let got = (&mut bytes)
                    .take(stop - start)
                    .read_to_end(&mut buf)
                    .map_err(|e| self.decode_error(file, e))?;
                if gap != start - at || got as u64 != stop - start {
                    return Err(self.damaged(format!(
                        "it ends before bytes {start}..{stop}, which its index lists"
                    )));
                }
                at = stop;
                self.check(file, unit, &buf)?;
                let out = match open.entry(i) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(open_target(file)?),
                };
                let offset = unit.map_or(0, |u| u * UNIT);
                out.write_all_at(&buf, offset)
                    .map_err(BackupError::io(&file.target))?;
                stats.add_written(buf.len() as u64);
            }
            k = end;
        }
        // Every file gets its length and mode, also one whose units all
        // matched but that was longer than the backup's.
        for (i, file) in self.files.iter().enumerate() {
            let f = match open.remove(&i) {
                Some(f) => f,
                None => open_target(file)?,
            };
            f.set_len(file.want.size)
                .map_err(BackupError::io(&file.target))?;
            fs::set_permissions(
                &file.target,
                fs::Permissions::from_mode(file.want.mode & 0o7777),
            )
            .map_err(BackupError::io(&file.target))?;
        }
        Ok(())
    }

    /// Fails unless `bytes` are the backup's: the unit's chaining value, or
    /// the small file's checksum.
    fn check(&self, file: &LocalFile, unit: Option<u64>, bytes: &[u8]) -> Result<(), BackupError> {
        let ok = match unit {
            Some(u) => file.units.get(u as usize) == Some(&unit_cv(u, bytes)),
            None => hex(blake3::hash(bytes).as_bytes()) == file.want.blake3,
        };
        if ok {
            return Ok(());
        }
        Err(self.damaged(match unit {
            Some(u) => format!(
                "file {} bytes {}..{} do not match the part's index",
                file.want.path,
                u * UNIT,
                u * UNIT + bytes.len() as u64
            ),
            None => format!("file {} does not match the manifest", file.want.path),
        }))
    }
}

/// Reads through gaps up to this size between two pieces rather than
/// starting another read.
const GAP: u64 = 256 << 10;

fn open_target(file: &LocalFile) -> Result<fs::File, BackupError> {
    if let Some(parent) = file.target.parent() {
        fs::create_dir_all(parent).map_err(BackupError::io(parent))?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&file.target)
        .map_err(BackupError::io(&file.target))
}

/// Loads the indexes of the parts holding `candidates` and sorts out the
/// candidates they cover. Parts whose index is missing, damaged or not this
/// part's are left to the ordinary path, with a warning.
pub async fn load(
    ctx: &Context,
    chain: &[Manifest],
    candidates: &[Reusable],
    layout: &Layout,
    keyring: Option<&Keyring>,
) -> Result<Indexed, BackupError> {
    let mut wanted: HashMap<(usize, usize), Vec<&Reusable>> = HashMap::new();
    for c in candidates {
        if let Some(p) = c.part
            && chain[c.backup]
                .parts
                .get(p)
                .is_some_and(|p| p.index.is_some())
        {
            wanted.entry((c.backup, p)).or_default().push(c);
        }
    }
    let loads = futures::stream::iter(wanted)
        .map(|((b, p), files)| async move {
            let manifest = &chain[b];
            let part = &manifest.parts[p];
            let index = part_index::load(ctx, manifest, part, keyring).await;
            (b, part, files, index)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut parts = Vec::new();
    for (b, part, files, index) in loads {
        let index = match index {
            Ok(index) => index,
            Err(IndexError::Storage(e)) => return Err(e.into()),
            Err(IndexError::Unusable(why)) => {
                tracing::warn!(
                    backup = %chain[b].name,
                    part = %part.key,
                    "the part's index is not usable ({why}); its part is read whole"
                );
                continue;
            }
        };
        let by_path: HashMap<&str, &IndexedFile> =
            index.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut local = Vec::new();
        for c in files {
            let (Some(f), Ok(target)) = (by_path.get(c.path.as_str()), layout.target(&c.path))
            else {
                continue;
            };
            local.push(LocalFile {
                want: c.clone(),
                target,
                offset: f.offset,
                units: f.unit_cvs().unwrap_or_default(),
                differs: Vec::new(),
            });
        }
        parts.push(IndexedPart {
            backup: chain[b].name.clone(),
            part: part.clone(),
            frames: index.frames,
            files: local,
        });
    }
    Ok(Indexed { parts })
}
