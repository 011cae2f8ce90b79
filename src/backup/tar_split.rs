//! Tar-split: a base backup is a set of independent tar streams ("parts"), each
//! small enough to upload, compress and encrypt in parallel with the others and
//! to restore on its own. Files are assigned to parts before any is read
//! ([`plan`]), so parts can be built concurrently by separate workers; a file
//! never spans two parts.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::archive::manifest::{FileEntry, Stored};
use crate::archive::part_index::IndexedFile;
use crate::backup::delta::{DeltaBase, FilePlan, PageSetReader};
use crate::backup::page_check::{Layout, PageCheck};
use crate::backup::rate::{Paced, Reads};
use crate::codec::frames::FrameCuts;
use crate::codec::hex;
use crate::codec::units::{UNIT, UnitHasher};
use crate::pg::datadir::{Entry, EntryKind};

/// Assigns entries to parts in order, starting a new part once a part holds
/// `part_size` bytes of file data. Directories go with the files that follow.
pub fn plan(entries: &[Entry], part_size: u64) -> Vec<Vec<Entry>> {
    let mut parts: Vec<Vec<Entry>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for e in entries {
        let size = match e.kind {
            EntryKind::File { size } => size,
            EntryKind::Dir => 0,
        };
        if bytes > 0 && bytes + size > part_size {
            parts.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(e.clone());
        // Tar headers and padding count too.
        bytes += size.next_multiple_of(512) + 512;
    }
    if !current.is_empty() || parts.is_empty() {
        parts.push(current);
    }
    parts
}

/// Writes one part's tar stream into `out`; returns what went in. A file that
/// vanished since the walk is left out; one that shrank is padded with zeros
/// and one that grew is cut at its size when opened: replay of the WAL written
/// during the backup repairs both, as it does torn pages. With `delta`, each
/// file is stored as [`DeltaBase::plan_file`] decides; with `pages`, the
/// pages of relation files are checked against their checksums as they pass.
pub fn write_part<W: Write>(
    entries: &[Entry],
    part: usize,
    delta: Option<&DeltaBase>,
    pages: Option<&PageCheck>,
    reads: Reads<'_>,
    out: W,
    placements: Option<Arc<Placements>>,
) -> io::Result<(Vec<FileEntry>, W)> {
    let mut tar = tar::Builder::new(PartStream::new(out, placements));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut written = Vec::with_capacity(entries.len());
    for e in entries {
        match e.kind {
            EntryKind::Dir => {
                append_dir(&mut tar, &e.path, e.mode, e.mtime)?;
                written.push(FileEntry {
                    path: e.path.clone(),
                    dir: true,
                    size: 0,
                    mode: e.mode,
                    blake3: String::new(),
                    part: Some(part),
                    stored: Stored::Whole,
                });
            }
            EntryKind::File { .. } => {
                let mut file = match File::open(&e.source) {
                    Ok(f) => f,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        tracing::debug!(file = %e.path, "vanished during the backup; WAL replay recreates it");
                        continue;
                    }
                    Err(err) => return Err(annotate(err, &e.source)),
                };
                let size = file
                    .metadata()
                    .map_err(|err| annotate(err, &e.source))?
                    .len();
                let how = match delta {
                    Some(d) => d
                        .plan_file(&e.path, &mut file, size, reads)
                        .map_err(|err| annotate(err, &e.source))?,
                    None => FilePlan::Whole,
                };
                let mut entry = FileEntry {
                    path: e.path.clone(),
                    dir: false,
                    size,
                    mode: e.mode,
                    blake3: String::new(),
                    part: Some(part),
                    stored: Stored::Whole,
                };
                match how {
                    FilePlan::Unchanged { blake3 } => {
                        entry.blake3 = blake3;
                        entry.part = None;
                        entry.stored = Stored::Unchanged;
                    }
                    FilePlan::Whole => {
                        let data = Paced::new((&file).take(size), reads);
                        entry.blake3 = match pages {
                            Some(check) => {
                                let data = check.reader(&e.path, &file, Layout::Whole, data);
                                append_file(
                                    &mut tar, &e.path, e.mode, e.mtime, size, data, &e.source,
                                )
                            }
                            None => append_file(
                                &mut tar, &e.path, e.mode, e.mtime, size, data, &e.source,
                            ),
                        }?;
                    }
                    FilePlan::Pages(blocks) => {
                        let count = blocks.len() as u64;
                        let set = PageSetReader::new(&file, size, blocks.clone());
                        let layout = Layout::Pages {
                            head: set.head_len(),
                            blocks,
                        };
                        let len = set.len();
                        let set = Paced::new(set, reads.recount());
                        entry.blake3 = match pages {
                            Some(check) => {
                                let set = check.reader(&e.path, &file, layout, set);
                                append_file(&mut tar, &e.path, e.mode, e.mtime, len, set, &e.source)
                            }
                            None => {
                                append_file(&mut tar, &e.path, e.mode, e.mtime, len, set, &e.source)
                            }
                        }?;
                        entry.stored = Stored::Pages {
                            bytes: len,
                            pages: count,
                        };
                    }
                }
                written.push(entry);
            }
        }
    }
    let out = tar.into_inner()?.into_inner();
    Ok((written, out))
}

/// Where each file of a part lands in its tar stream, and where the encoder
/// must begin a frame: what the part's index records. The tar side adds to
/// it as it writes; the encoder reads the cuts as the bytes reach it.
#[derive(Debug, Default)]
pub struct Placements {
    pub cuts: Arc<FrameCuts>,
    files: Mutex<Vec<IndexedFile>>,
}

impl Placements {
    pub fn new() -> Arc<Self> {
        Arc::new(Placements::default())
    }

    /// The files placed so far, taken out.
    pub fn take_files(&self) -> Vec<IndexedFile> {
        std::mem::take(&mut *self.files.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn add(&self, file: IndexedFile) {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(file);
    }
}

/// A part's tar stream on its way to the encoder: counts its bytes, so
/// that files can be placed.
pub struct PartStream<W: Write> {
    inner: W,
    at: u64,
    placements: Option<Arc<Placements>>,
}

impl<W: Write> PartStream<W> {
    pub fn new(inner: W, placements: Option<Arc<Placements>>) -> Self {
        PartStream {
            inner,
            at: 0,
            placements,
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for PartStream<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.at += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file of the control part, given as bytes: pg_control read after the
/// backup stopped, backup_label and tablespace_map from the stop call.
pub struct ControlFile {
    pub path: &'static str,
    pub bytes: Vec<u8>,
}

impl ControlFile {
    pub fn new(path: &'static str, bytes: Vec<u8>) -> Self {
        ControlFile { path, bytes }
    }
}

/// Files of the control part are the server's own: owner-only.
const CONTROL_MODE: u32 = 0o600;

/// Writes the control part.
pub fn write_control_part<W: Write>(
    files: &[ControlFile],
    part: usize,
    out: W,
) -> io::Result<(Vec<FileEntry>, W)> {
    let mut tar = tar::Builder::new(out);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut written = Vec::new();
    for f in files {
        let size = f.bytes.len() as u64;
        let mut h = header(tar::EntryType::Regular, CONTROL_MODE, now, size);
        tar.append_data(&mut h, f.path, &f.bytes[..])?;
        written.push(FileEntry {
            path: f.path.to_string(),
            dir: false,
            size,
            mode: CONTROL_MODE,
            blake3: hex(blake3::hash(&f.bytes).as_bytes()),
            part: Some(part),
            stored: Stored::Whole,
        });
    }
    Ok((written, tar.into_inner()?))
}

/// Appends a directory entry.
pub(crate) fn append_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    mtime: i64,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, mtime, 0);
    tar.append_data(&mut h, path, io::empty())
}

/// Appends a file of `size` bytes read from `data` (zeros if it comes up
/// short); returns the BLAKE3 of what went in, hex.
///
/// The entry is written here rather than by `tar` so that the file's offset
/// is known before its first byte goes out: a file larger than a unit
/// starts a frame of its own, and its units are hashed as they pass.
pub(crate) fn append_file<W: Write, R: Read>(
    tar: &mut tar::Builder<PartStream<W>>,
    path: &str,
    mode: u32,
    mtime: i64,
    size: u64,
    data: R,
    source: &Path,
) -> io::Result<String> {
    let mut h = header(tar::EntryType::Regular, mode, mtime, size);
    // The header as tar writes it (with a long-name entry first if the path
    // needs one): the same bytes append_data would write before the data.
    let head = {
        let mut scratch = tar::Builder::new(Vec::with_capacity(1024));
        scratch.append_data(&mut h, path, io::empty())?;
        scratch.get_ref().clone()
    };
    let out = tar.get_mut();
    out.write_all(&head)?;
    let offset = out.at;
    if size > UNIT
        && let Some(p) = &out.placements
    {
        p.cuts.cut_at(offset);
    }
    let mut reader = Exactly::new(data, size, source);
    let copied = io::copy(&mut reader, out)?;
    if copied != size {
        return Err(io::Error::other(format!(
            "{}: {copied} bytes read of {size}",
            source.display()
        )));
    }
    let padding = (size.next_multiple_of(512) - size) as usize;
    out.write_all(&[0u8; 512][..padding])?;
    let (hash, cvs) = reader.hasher.finalize();
    if let Some(p) = &out.placements {
        p.add(IndexedFile {
            path: path.to_string(),
            offset,
            units: cvs.iter().map(|cv| hex(cv)).collect(),
        });
    }
    Ok(hex(hash.as_bytes()))
}

fn header(kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(size);
    h
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Yields exactly `left` bytes: the file's, then zeros if it came up short.
struct Exactly<'a, R: Read> {
    inner: R,
    left: u64,
    hasher: UnitHasher,
    path: &'a Path,
}

impl<'a, R: Read> Exactly<'a, R> {
    fn new(inner: R, left: u64, path: &'a Path) -> Self {
        Exactly {
            inner,
            left,
            hasher: UnitHasher::new(left),
            path,
        }
    }
}

impl<R: Read> Read for Exactly<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(0) => {
                buf[..want].fill(0);
                want
            }
            Ok(n) => n,
            Err(e) => return Err(annotate(e, self.path)),
        };
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            source: PathBuf::from(path),
            kind: EntryKind::File { size },
            mode: 0o600,
            mtime: 0,
        }
    }

    #[test]
    fn plan_splits_by_size_and_never_splits_a_file() {
        let entries = vec![
            file("a", 400 << 10),
            file("b", 400 << 10),
            file("c", 3 << 20),
            file("d", 10),
        ];
        let parts = plan(&entries, 1 << 20);
        let names: Vec<Vec<&str>> = parts
            .iter()
            .map(|p| p.iter().map(|e| e.path.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
        assert_eq!(plan(&[], 1 << 20).len(), 1);
    }

    #[test]
    fn shrunk_files_are_padded_and_vanished_ones_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let mut e = file("f", 5);
        e.source = p.clone();
        let mut gone = file("gone", 1);
        gone.source = d.path().join("gone");
        let (files, tar) =
            write_part(&[e, gone], 0, None, None, Reads::FREE, Vec::new(), None).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].blake3, hex(blake3::hash(b"hello").as_bytes()));
        let mut a = tar::Archive::new(&tar[..]);
        let mut entry = a.entries().unwrap().next().unwrap().unwrap();
        let mut body = String::new();
        entry.read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello");
    }
}
