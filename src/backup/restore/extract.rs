//! Extracting one part: download, decrypt, decompress and verify on one
//! thread; read the tar stream, check every file against the manifest and
//! apply page sets on another; write files on a third. A part is accepted
//! only when its bytes match the manifest's checksum, every file its entry.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::super::BackupError;
use super::super::delta::PageSetHead;
use super::dest::{Layout, WRITE_QUEUE, WriteOp, WriteStats, write_files};
use super::plan::{Action, PartWork};
use crate::Context;
use crate::archive::keys;
use crate::archive::manifest::{FileEntry, PartEntry};
use crate::codec::{CodecError, Decoder, Keyring, PipeWriter, hex, pipe};
use crate::pg::page::PAGE_SIZE;
use crate::storage::{StorageError, windowed};

/// What every part's extraction of one restore shares.
pub struct Job {
    pub layout: Layout,
    pub keyring: Option<Keyring>,
    pub rewrite_tablespace_map: bool,
    /// The directories of the restored backup: older backups' others are gone.
    pub dirs: HashSet<String>,
    /// Set when a part failed: the others stop.
    pub stop: AtomicBool,
    pub progress: crate::progress::SharedProgress,
    /// Files may exist already (`backup-fetch --delta`): written where they
    /// differ only.
    pub delta: bool,
    pub stats: Arc<WriteStats>,
}

/// Downloads, decodes and extracts one part, verifying each file against the
/// manifest and the part against its checksum.
pub async fn extract_part(
    ctx: &Context,
    backup: &str,
    work: PartWork,
    job: &Arc<Job>,
) -> Result<(), BackupError> {
    let PartWork {
        part,
        files: expected,
        ..
    } = work;
    let key = keys::part(backup, &part.key)?;
    // Several ranged reads in flight on a network store, one stream on disk.
    let stream = match windowed::get(ctx.storage.clone(), &key, part.stored_size).await {
        Ok(s) => s,
        Err(StorageError::NotFound { .. }) => {
            return Err(BackupError::MissingPart {
                name: backup.to_string(),
                key: key.to_string(),
                location: ctx.storage.location().to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let source = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let object = keys::object_name(ctx.storage.location(), &key);
    let extraction = Extraction {
        backup: backup.to_string(),
        part,
        job: job.clone(),
    };
    // Two stages, each on its own core: decrypt, decompress and verify; then
    // extract, hash and write.
    let (writer, reader) = pipe();
    let check = extraction.clone();
    let keyring = job.keyring.clone();
    let decode = tokio::task::spawn_blocking(move || -> Result<(), BackupError> {
        let decoder = Decoder::new(source, keyring.as_ref(), &object)?;
        check.decode_into(decoder, writer)
    });
    let (ops, queue) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
    let extract = tokio::task::spawn_blocking(move || extraction.run(reader, expected, &ops));
    let stats = job.stats.clone();
    let write = tokio::task::spawn_blocking(move || write_files(queue, &stats));
    let (decoded, extracted, written) = futures::join!(decode, extract, write);
    // The earliest stage's error is the cause; later stages only saw their
    // input end, the extractor its writer stop.
    decoded.map_err(BackupError::task)??;
    written.map_err(BackupError::task)??;
    extracted.map_err(BackupError::task)??;
    ctx.progress.part_done();
    Ok(())
}

#[derive(Clone)]
struct Extraction {
    backup: String,
    part: PartEntry,
    job: Arc<Job>,
}

impl Extraction {
    /// Decodes the whole object into `writer`; at its (verified) end, checks
    /// that it is this part, by the manifest's checksum of its tar bytes.
    fn decode_into<R: Read>(
        &self,
        mut decoder: Decoder<R>,
        mut writer: PipeWriter,
    ) -> Result<(), BackupError> {
        loop {
            // Each chunk goes to the extractor as it is read, without a copy.
            let chunk = match decoder.next_chunk() {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let err = self.read_error(e);
                    writer.fail(err.to_string());
                    return Err(err);
                }
            };
            self.job.progress.advance(chunk.len() as u64);
            if writer.send_bytes(chunk).is_err() {
                // The extractor stopped; its error is the one to report.
                return Ok(());
            }
        }
        let digest = decoder.verified_digest();
        let matches = digest
            .is_some_and(|d| hex(&d.blake3) == self.part.blake3 && d.len == self.part.raw_size);
        if !matches {
            let err = self.damaged(format!(
                "its contents ({}) are not the part the manifest lists ({}, {} bytes)",
                digest.map_or_else(|| "unverified".to_string(), |d| d.to_string()),
                self.part.blake3,
                self.part.raw_size
            ));
            writer.fail(err.to_string());
            return Err(err);
        }
        writer.finish().or(Ok(()))
    }

    fn damaged(&self, reason: String) -> BackupError {
        BackupError::Damaged {
            name: self.backup.clone(),
            part: self.part.key.clone(),
            reason,
        }
    }

    fn unsafe_entry(&self, entry: &str, reason: &'static str) -> BackupError {
        BackupError::UnsafeEntry {
            name: self.backup.clone(),
            part: self.part.key.clone(),
            entry: entry.to_string(),
            reason,
        }
    }

    fn run<R: Read>(
        &self,
        mut reader: R,
        mut expected: HashMap<String, (FileEntry, Action)>,
        ops: &std::sync::mpsc::SyncSender<WriteOp>,
    ) -> Result<(), BackupError> {
        {
            let mut archive = tar::Archive::new(&mut reader);
            let entries = archive.entries().map_err(|e| self.read_error(e))?;
            for entry in entries {
                if self.job.stop.load(Ordering::Relaxed) {
                    return Err(self.damaged("stopped: another part failed".into()));
                }
                let mut entry = entry.map_err(|e| self.read_error(e))?;
                let path = String::from_utf8(entry.path_bytes().into_owned())
                    .map_err(|_| self.unsafe_entry("(not UTF-8)", "name is not UTF-8"))?;
                let path = path.trim_end_matches('/').to_string();
                match entry.header().entry_type() {
                    // The restored backup's directories exist already; an
                    // older backup's others were removed since.
                    tar::EntryType::Directory if self.job.dirs.contains(&path) => {
                        self.job
                            .layout
                            .target(&path)
                            .map_err(|r| self.unsafe_entry(&path, r))?;
                    }
                    tar::EntryType::Directory => {}
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        let (want, action) = expected
                            .remove(&path)
                            .ok_or_else(|| self.unsafe_entry(&path, "file not in the manifest"))?;
                        if action == Action::Skip {
                            continue;
                        }
                        let target = self
                            .job
                            .layout
                            .target(&path)
                            .map_err(|r| self.unsafe_entry(&path, r))?;
                        match action {
                            Action::Patch { mode } => {
                                self.patch_file(&mut entry, &path, target, &want, mode, ops)?
                            }
                            Action::Write { mode } => {
                                self.write_file(&mut entry, &path, target, &want, mode, ops)?
                            }
                            Action::Verify => self.verify_file(&mut entry, &path, &want)?,
                            Action::Skip => {}
                        }
                    }
                    _ => {
                        return Err(self.unsafe_entry(
                            &path,
                            "links and special files have no place in a backup",
                        ));
                    }
                }
            }
        }
        // Read to the end: only there does the decoding stage confirm that the
        // object was whole and is the manifest's part.
        io::copy(&mut reader, &mut io::sink()).map_err(|e| self.read_error(e))?;
        if let Some(missing) = expected.keys().next() {
            return Err(self.damaged(format!("file {missing} listed in the manifest is missing")));
        }
        Ok(())
    }

    fn read_error(&self, e: io::Error) -> BackupError {
        match CodecError::from_io(e) {
            CodecError::Storage(e) => BackupError::Storage(e),
            CodecError::Io(e) => self.damaged(format!("unreadable: {e}")),
            other => BackupError::Codec(other),
        }
    }

    /// Reads one file's bytes, hashing them, and hands them to the writer;
    /// fails if they are not what the manifest says.
    fn write_file<R: Read>(
        &self,
        entry: &mut R,
        path: &str,
        target: PathBuf,
        want: &FileEntry,
        mode: u32,
        ops: &std::sync::mpsc::SyncSender<WriteOp>,
    ) -> Result<(), BackupError> {
        let send = |op: WriteOp| self.send(ops, op);
        send(if self.job.delta {
            WriteOp::Update(target)
        } else {
            WriteOp::Create(target)
        })?;
        let mut hasher = blake3::Hasher::new();
        let mut len = 0u64;
        let mut body = Vec::new();
        let keep_body = path == "tablespace_map" && self.job.rewrite_tablespace_map;
        loop {
            let mut buf = bytes::BytesMut::zeroed(256 << 10);
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            buf.truncate(n);
            hasher.update(&buf);
            len += n as u64;
            if keep_body {
                body.extend_from_slice(&buf);
            } else {
                send(WriteOp::Data(buf.freeze()))?;
            }
        }
        self.check_file(path, hasher, len, want)?;
        if keep_body {
            let text = String::from_utf8_lossy(&body);
            send(WriteOp::Data(self.remap_tablespace_map(&text).into()))?;
        }
        send(WriteOp::Close(mode))
    }

    /// Reads one entry's bytes and checks them against the manifest,
    /// writing nothing (backup-verify).
    fn verify_file<R: Read>(
        &self,
        entry: &mut R,
        path: &str,
        want: &FileEntry,
    ) -> Result<(), BackupError> {
        let mut reader = Hashing {
            inner: entry,
            hasher: blake3::Hasher::new(),
            len: 0,
            error: None,
        };
        if let Err(e) = io::copy(&mut reader, &mut io::sink()) {
            return Err(self.read_error(reader.error.take().unwrap_or(e)));
        }
        self.check_file(path, reader.hasher, reader.len, want)
    }

    fn send(
        &self,
        ops: &std::sync::mpsc::SyncSender<WriteOp>,
        op: WriteOp,
    ) -> Result<(), BackupError> {
        ops.send(op)
            .map_err(|_| self.damaged("the file writer stopped".into()))
    }

    /// Fails unless the entry's bytes are the ones the manifest lists.
    fn check_file(
        &self,
        path: &str,
        hasher: blake3::Hasher,
        len: u64,
        want: &FileEntry,
    ) -> Result<(), BackupError> {
        let digest = hex(hasher.finalize().as_bytes());
        if digest != want.blake3 || len != want.entry_size() {
            return Err(self.damaged(format!(
                "file {path} does not match the manifest (checksum {digest}, {len} bytes; \
                 expected {}, {} bytes)",
                want.blake3,
                want.entry_size()
            )));
        }
        Ok(())
    }

    /// Reads a page set and has its pages written over the file an older
    /// backup of the chain restored.
    fn patch_file<R: Read>(
        &self,
        entry: &mut R,
        path: &str,
        target: PathBuf,
        want: &FileEntry,
        mode: u32,
        ops: &std::sync::mpsc::SyncSender<WriteOp>,
    ) -> Result<(), BackupError> {
        let send = |op: WriteOp| self.send(ops, op);
        let mut reader = Hashing {
            inner: entry,
            hasher: blake3::Hasher::new(),
            len: 0,
            error: None,
        };
        let head =
            PageSetHead::read_from(&mut reader, want.entry_size()).map_err(
                |reason| match reader.error.take() {
                    Some(e) => self.read_error(e),
                    None => self.damaged(format!("file {path}: {reason}")),
                },
            )?;
        send(WriteOp::Patch(target, head.file_len))?;
        for no in head.pages {
            let mut page = bytes::BytesMut::zeroed(PAGE_SIZE);
            reader
                .read_exact(&mut page)
                .map_err(|e| self.read_error(e))?;
            send(WriteOp::At(u64::from(no) * PAGE_SIZE as u64, page.freeze()))?;
        }
        io::copy(&mut reader, &mut io::sink()).map_err(|e| self.read_error(e))?;
        self.check_file(path, reader.hasher, reader.len, want)?;
        send(WriteOp::Close(mode))
    }

    /// tablespace_map lines are `<oid> <path>`; PostgreSQL recreates the links
    /// from it at startup, so it must name where the tablespaces now are.
    fn remap_tablespace_map(&self, text: &str) -> String {
        text.lines()
            .map(|line| {
                let oid = line.split(' ').next().and_then(|o| o.parse::<u32>().ok());
                match oid.and_then(|o| self.job.layout.tablespaces.get(&o).map(|p| (o, p))) {
                    Some((o, p)) => format!("{o} {}\n", p.display()),
                    None => format!("{line}\n"),
                }
            })
            .collect()
    }
}

/// Counts and hashes what is read through it; keeps a read error whole for
/// a caller that only passes on its text.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
    len: u64,
    error: Option<io::Error>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.len += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
}
