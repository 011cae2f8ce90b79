//! `cairn backup-fetch <dest> <NAME|LATEST>`: restores a base backup into an
//! empty directory. Data parts are downloaded, decrypted, decompressed and
//! extracted concurrently; every file is checked against the manifest, every
//! part against its recorded checksum. The control part (pg_control,
//! backup_label) goes last, so a directory that misses anything cannot start;
//! and on any failure, what was extracted is removed again.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use super::delta::PageSetHead;
use super::manifest::{FileEntry, Manifest, PartEntry, Stored};
use super::{BackupError, catalog, part_key};
use crate::Context;
use crate::codec::hex;
use crate::codec::{CodecError, Decoder, Keyring, PipeWriter, pipe};
use crate::pg::datadir::EXCLUDED_CONTENTS;
use crate::pg::page::PAGE_SIZE;
use crate::pg::wal::Lsn;
use crate::storage::StorageError;

/// Where recovery from the restored backup should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archive.
    Latest,
    Time(String),
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

impl std::str::FromStr for RecoveryTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "latest" {
            return Ok(RecoveryTarget::Latest);
        }
        let (kind, value) = s.split_once('=').ok_or_else(|| {
            format!("recovery target {s:?}: use latest, time=…, lsn=…, xid=… or name=…")
        })?;
        if value.is_empty() {
            return Err(format!("recovery target {s:?} has no value"));
        }
        match kind {
            "time" => {
                // PostgreSQL parses the time; reject what it surely cannot.
                if !value.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(format!("recovery target time {value:?} is not a timestamp"));
                }
                Ok(RecoveryTarget::Time(value.to_string()))
            }
            "lsn" => value.parse().map(RecoveryTarget::Lsn).map_err(|_| {
                format!("recovery target lsn {value:?} is not an LSN (like 0/3000028)")
            }),
            "xid" => value
                .parse()
                .map(RecoveryTarget::Xid)
                .map_err(|_| format!("recovery target xid {value:?} is not a transaction id")),
            "name" => Ok(RecoveryTarget::Name(value.to_string())),
            _ => Err(format!(
                "recovery target {s:?}: use latest, time=…, lsn=…, xid=… or name=…"
            )),
        }
    }
}

/// What a backup-fetch does.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub dest: PathBuf,
    /// A backup name or `LATEST`.
    pub name: String,
    /// Tablespace OID → where to put it instead of its original location.
    pub tablespace_map: Vec<(u32, PathBuf)>,
    pub recovery_target: Option<RecoveryTarget>,
    /// The shell command for `restore_command` (cairn itself with this
    /// configuration, then `wal-fetch %f %p`).
    pub restore_command: String,
    /// Parts downloaded and extracted at once.
    pub concurrency: usize,
}

/// Restores a backup; returns its manifest.
pub async fn fetch(ctx: &Context, opts: &FetchOptions) -> Result<Manifest, BackupError> {
    let manifest = catalog::resolve(ctx, &opts.name).await?;
    let chain = catalog::chain(ctx, manifest).await?;
    let sources = sources(&chain)?;
    let Some(manifest) = chain.last() else {
        return Err(BackupError::BadArgument("empty backup chain".into()));
    };
    let layout = Layout::new(manifest, opts)?;
    let created = layout.prepare()?;
    let result = restore(ctx, &chain, &sources, &layout, opts).await;
    if result.is_err() {
        created.undo();
    }
    result.map(|()| manifest.clone())
}

/// What a restore does with one file entry of one backup of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// A newer backup of the chain holds this file, or it is gone.
    Skip,
    /// Create the file from the entry's bytes.
    Write { mode: u32 },
    /// Apply the entry's page set to the file an older backup wrote.
    Patch { mode: u32 },
}

/// For each backup of `chain` (full first), the files to take from it: for
/// every file of the last backup, the newest backup that holds it whole, then
/// each later one's page set. Files of older backups that the last one does
/// not list were removed, and are never written.
fn sources(chain: &[Manifest]) -> Result<Vec<HashMap<String, Action>>, BackupError> {
    let Some(last) = chain.last() else {
        return Ok(Vec::new());
    };
    let maps: Vec<HashMap<&str, &FileEntry>> = chain
        .iter()
        .map(|m| {
            m.files
                .iter()
                .filter(|f| !f.dir)
                .map(|f| (f.path.as_str(), f))
                .collect()
        })
        .collect();
    let mut out = vec![HashMap::new(); chain.len()];
    for f in last.files.iter().filter(|f| !f.dir) {
        let mut k = chain.len() - 1;
        loop {
            let broken = |reason: String| BackupError::BrokenChain {
                name: last.name.clone(),
                reason,
            };
            let e = maps[k].get(f.path.as_str()).ok_or_else(|| {
                broken(format!(
                    "file {} is not in {}, on which the next backup of the chain builds",
                    f.path, chain[k].name
                ))
            })?;
            match e.stored {
                Stored::Whole => {
                    out[k].insert(f.path.clone(), Action::Write { mode: f.mode });
                    break;
                }
                Stored::Pages { .. } => {
                    out[k].insert(f.path.clone(), Action::Patch { mode: f.mode });
                }
                Stored::Unchanged => {}
            }
            if k == 0 {
                return Err(broken(format!(
                    "no backup of its chain holds file {} whole",
                    f.path
                )));
            }
            k -= 1;
        }
    }
    Ok(out)
}

async fn restore(
    ctx: &Context,
    chain: &[Manifest],
    sources: &[HashMap<String, Action>],
    layout: &Layout,
    opts: &FetchOptions,
) -> Result<(), BackupError> {
    let Some(last) = chain.last() else {
        return Ok(());
    };
    let keyring = if chain.iter().any(|m| m.encrypted) {
        ctx.keyring()?
    } else {
        None
    };
    layout.make_dirs(last)?;
    let job = Arc::new(Job {
        layout: layout.clone(),
        keyring,
        rewrite_tablespace_map: last
            .tablespaces
            .iter()
            .any(|t| layout.tablespaces.get(&t.oid) != Some(&t.location)),
        dirs: last
            .files
            .iter()
            .filter(|f| f.dir)
            .map(|f| f.path.clone())
            .collect(),
        // After a failure no new part starts and running ones stop at their
        // next entry; all are waited for, so that nothing writes into the
        // destination while a failed restore is being removed.
        stop: AtomicBool::new(false),
        progress: ctx.progress.clone(),
    });
    // Parts holding nothing this restore needs are not read.
    let by_part: Vec<_> = chain.iter().map(files_by_part).collect();
    let needed: Vec<Vec<&PartEntry>> = chain
        .iter()
        .zip(sources)
        .zip(&by_part)
        .map(|((manifest, actions), by_part)| {
            manifest
                .parts
                .iter()
                .filter(|p| {
                    by_part
                        .get(&p.key)
                        .is_some_and(|files| files.iter().any(|f| actions.contains_key(&f.path)))
                })
                .collect()
        })
        .collect();
    ctx.progress.begin(
        needed.iter().flatten().map(|p| p.raw_size).sum(),
        Some(needed.iter().map(Vec::len).sum::<usize>() as u64),
    );
    // Oldest first: a delta's page sets patch what its ancestors wrote.
    for (k, ((manifest, actions), by_part)) in chain.iter().zip(sources).zip(&by_part).enumerate() {
        let is_last = k + 1 == chain.len();
        let (control, data): (Vec<&PartEntry>, Vec<&PartEntry>) = needed[k]
            .iter()
            .copied()
            .partition(|p| p.control && is_last);
        let empty = Vec::new();
        let planned = |p: &PartEntry| -> HashMap<String, (FileEntry, Action)> {
            by_part
                .get(&p.key)
                .unwrap_or(&empty)
                .iter()
                .filter(|f| !f.dir)
                .map(|f| {
                    let action = actions.get(&f.path).copied().unwrap_or(Action::Skip);
                    (f.path.clone(), ((*f).clone(), action))
                })
                .collect()
        };
        let results: Vec<Result<(), BackupError>> = futures::stream::iter(data)
            .map(|p| {
                let files = planned(p);
                let job = &job;
                async move {
                    if job.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let r = extract_part(ctx, manifest, p, files, job).await;
                    if r.is_err() {
                        job.stop.store(true, Ordering::Relaxed);
                    }
                    r
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        // In completion order: the first error is the cause, later ones its echo.
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        // pg_control last: until it exists, the directory cannot be started.
        for p in control {
            extract_part(ctx, manifest, p, planned(p), &job).await?;
        }
    }
    ctx.progress.end();
    layout.finish(last)?;
    if let Some(target) = &opts.recovery_target {
        write_recovery_settings(&layout.dest, target, &opts.restore_command, &last.name)?;
    }
    layout.sync()?;
    Ok(())
}

/// What every part's extraction of one restore shares.
struct Job {
    layout: Layout,
    keyring: Option<Keyring>,
    rewrite_tablespace_map: bool,
    /// The directories of the restored backup: older backups' others are gone.
    dirs: HashSet<String>,
    /// Set when a part failed: the others stop.
    stop: AtomicBool,
    progress: crate::progress::SharedProgress,
}

fn files_by_part(manifest: &Manifest) -> HashMap<String, Vec<&FileEntry>> {
    let mut by_part: HashMap<String, Vec<&FileEntry>> = HashMap::new();
    for f in &manifest.files {
        if let Some(p) = f.part.and_then(|i| manifest.parts.get(i)) {
            by_part.entry(p.key.clone()).or_default().push(f);
        }
    }
    by_part
}

/// Where each path of the backup goes: the destination, or a tablespace
/// location for `pg_tblspc/<oid>/…`.
#[derive(Clone)]
struct Layout {
    dest: PathBuf,
    tablespaces: HashMap<u32, PathBuf>,
}

/// What [`Layout::prepare`] created, to remove again if the restore fails.
struct Created {
    dirs: Vec<(PathBuf, bool)>,
}

impl Created {
    fn undo(&self) {
        for (dir, existed) in &self.dirs {
            if *existed {
                if let Ok(rd) = fs::read_dir(dir) {
                    for e in rd.flatten() {
                        let p = e.path();
                        let _ = if p.is_dir() && !p.is_symlink() {
                            fs::remove_dir_all(&p)
                        } else {
                            fs::remove_file(&p)
                        };
                    }
                }
            } else {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

impl Layout {
    fn new(manifest: &Manifest, opts: &FetchOptions) -> Result<Layout, BackupError> {
        let mut tablespaces = HashMap::new();
        for ts in &manifest.tablespaces {
            let location = opts
                .tablespace_map
                .iter()
                .find(|(oid, _)| *oid == ts.oid)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| ts.location.clone());
            if !location.is_absolute() {
                return Err(BackupError::BadArgument(format!(
                    "tablespace {} location {} is not an absolute path",
                    ts.oid,
                    location.display()
                )));
            }
            tablespaces.insert(ts.oid, location);
        }
        for (oid, _) in &opts.tablespace_map {
            if !manifest.tablespaces.iter().any(|t| t.oid == *oid) {
                return Err(BackupError::BadArgument(format!(
                    "--tablespace-map {oid}=…: backup {} has no tablespace {oid}",
                    manifest.name
                )));
            }
        }
        Ok(Layout {
            dest: opts.dest.clone(),
            tablespaces,
        })
    }

    /// Checks that the destination and tablespace locations are empty (or
    /// absent) and creates them.
    fn prepare(&self) -> Result<Created, BackupError> {
        let mut created = Created { dirs: Vec::new() };
        let roots = std::iter::once(&self.dest).chain(self.tablespaces.values());
        for dir in roots {
            let existed = match fs::read_dir(dir) {
                Ok(mut rd) => {
                    if rd.next().is_some() {
                        created.undo();
                        return Err(BackupError::DestinationNotEmpty(dir.clone()));
                    }
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    created.undo();
                    return Err(BackupError::io(dir)(e));
                }
            };
            if !existed && let Err(e) = fs::create_dir_all(dir) {
                created.undo();
                return Err(BackupError::io(dir)(e));
            }
            // PostgreSQL refuses a data directory others can read.
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            created.dirs.push((dir.clone(), existed));
        }
        Ok(created)
    }

    /// The place for backup path `path`, or why it is unsafe. Only plain
    /// relative components are allowed, so no entry can leave its root.
    fn target(&self, path: &str) -> Result<PathBuf, &'static str> {
        let p = Path::new(path);
        if p.is_absolute() {
            return Err("absolute path");
        }
        let mut parts = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_str().ok_or("name is not UTF-8")?),
                Component::CurDir => {}
                Component::ParentDir => return Err("`..` in path"),
                _ => return Err("not a relative path"),
            }
        }
        if parts.is_empty() {
            return Err("empty path");
        }
        if let ["pg_tblspc", oid, rest @ ..] = parts.as_slice()
            && !rest.is_empty()
        {
            let oid: u32 = oid
                .parse()
                .map_err(|_| "pg_tblspc entry not named by an OID")?;
            let root = self
                .tablespaces
                .get(&oid)
                .ok_or("tablespace not in the manifest")?;
            return Ok(rest.iter().fold(root.clone(), |p, s| p.join(s)));
        }
        Ok(parts.iter().fold(self.dest.clone(), |p, s| p.join(s)))
    }

    /// Creates every directory of the backup (and the tablespace links), so
    /// that parts can be extracted in any order.
    fn make_dirs(&self, manifest: &Manifest) -> Result<(), BackupError> {
        for f in manifest.files.iter().filter(|f| f.dir) {
            if let Some(oid) = tablespace_link(&f.path) {
                let link = self.dest.join("pg_tblspc").join(oid.to_string());
                let to = self
                    .tablespaces
                    .get(&oid)
                    .ok_or_else(|| unsafe_entry(manifest, f, "tablespace not in the manifest"))?;
                if let Some(parent) = link.parent() {
                    fs::create_dir_all(parent).map_err(BackupError::io(parent))?;
                }
                std::os::unix::fs::symlink(to, &link).map_err(BackupError::io(&link))?;
                continue;
            }
            let dir = self
                .target(&f.path)
                .map_err(|r| unsafe_entry(manifest, f, r))?;
            fs::create_dir_all(&dir).map_err(BackupError::io(&dir))?;
        }
        Ok(())
    }

    /// Empty pg_wal/archive_status and the other directories whose contents
    /// backups leave out, then the directories' modes.
    fn finish(&self, manifest: &Manifest) -> Result<(), BackupError> {
        for d in EXCLUDED_CONTENTS
            .iter()
            .copied()
            .chain(["pg_wal/archive_status", "pg_tblspc"])
        {
            let p = self.dest.join(d);
            fs::create_dir_all(&p).map_err(BackupError::io(&p))?;
        }
        for f in manifest.files.iter().filter(|f| f.dir) {
            if tablespace_link(&f.path).is_some() {
                continue;
            }
            if let Ok(dir) = self.target(&f.path) {
                fs::set_permissions(&dir, fs::Permissions::from_mode(f.mode & 0o7777))
                    .map_err(BackupError::io(&dir))?;
            }
        }
        Ok(())
    }

    /// Makes everything durable: one syncfs per filesystem touched.
    fn sync(&self) -> Result<(), BackupError> {
        for dir in std::iter::once(&self.dest).chain(self.tablespaces.values()) {
            let f = fs::File::open(dir).map_err(BackupError::io(dir))?;
            // SAFETY: syncfs on a valid, open descriptor.
            let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
            if rc != 0 {
                return Err(BackupError::io(dir)(io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

/// `pg_tblspc/<oid>` itself: the tablespace link.
fn tablespace_link(path: &str) -> Option<u32> {
    let rest = path.strip_prefix("pg_tblspc/")?;
    if rest.contains('/') {
        return None;
    }
    rest.parse().ok()
}

fn unsafe_entry(manifest: &Manifest, f: &FileEntry, reason: &'static str) -> BackupError {
    BackupError::UnsafeEntry {
        name: manifest.name.clone(),
        part: f
            .part
            .and_then(|i| manifest.parts.get(i))
            .map_or_else(|| "?".into(), |p| p.key.clone()),
        entry: f.path.clone(),
        reason,
    }
}

/// Downloads, decodes and extracts one part, verifying each file against the
/// manifest and the part against its checksum.
async fn extract_part(
    ctx: &Context,
    manifest: &Manifest,
    part: &PartEntry,
    expected: HashMap<String, (FileEntry, Action)>,
    job: &Arc<Job>,
) -> Result<(), BackupError> {
    let key = part_key(&manifest.name, &part.key)?;
    let stream = match ctx.storage.get(&key).await {
        Ok(s) => s,
        Err(StorageError::NotFound { .. }) => {
            return Err(BackupError::MissingPart {
                name: manifest.name.clone(),
                key: key.to_string(),
                location: ctx.storage.location().to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let source = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let object = format!("{}/{key}", ctx.storage.location().trim_end_matches('/'));
    let extraction = Extraction {
        backup: manifest.name.clone(),
        part: part.clone(),
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
    let write = tokio::task::spawn_blocking(move || write_files(queue));
    let (decoded, extracted, written) = futures::join!(decode, extract, write);
    // The earliest stage's error is the cause; later stages only saw their
    // input end, the extractor its writer stop.
    decoded.map_err(BackupError::task)??;
    written.map_err(BackupError::task)??;
    extracted.map_err(BackupError::task)??;
    ctx.progress.part_done();
    Ok(())
}

/// Chunks waiting for the writer: with 256 KiB chunks, 2 MiB per part.
const WRITE_QUEUE: usize = 8;

/// What the extractor asks the writer to do, in order.
enum WriteOp {
    /// A new file, written in order by `Data`.
    Create(PathBuf),
    Data(bytes::Bytes),
    /// A file an older backup wrote, cut or extended to this length, then
    /// patched by `At`.
    Patch(PathBuf, u64),
    At(u64, bytes::Bytes),
    Close(u32),
}

/// The third stage of a part's restore: creates and writes the files the
/// extractor verified, so that copying into the page cache (the largest cost
/// of a restore) runs beside decoding and hashing instead of after them.
fn write_files(queue: std::sync::mpsc::Receiver<WriteOp>) -> Result<(), BackupError> {
    let mut current: Option<(fs::File, PathBuf, u64, u64)> = None;
    for op in queue {
        match op {
            WriteOp::Create(target) => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(BackupError::io(parent))?;
                }
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(BackupError::io(&target))?;
                current = Some((f, target, 0, 0));
            }
            WriteOp::Patch(target, len) => {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&target)
                    .map_err(BackupError::io(&target))?;
                f.set_len(len).map_err(BackupError::io(&target))?;
                // Written pages are scattered: flush the whole range at close.
                current = Some((f, target, len, 0));
            }
            WriteOp::At(offset, page) => {
                let Some((f, target, _, _)) = current.as_mut() else {
                    continue;
                };
                std::os::unix::fs::FileExt::write_all_at(f, &page, offset)
                    .map_err(BackupError::io(&*target))?;
            }
            WriteOp::Data(chunk) => {
                let Some((f, target, len, flushed)) = current.as_mut() else {
                    continue;
                };
                f.write_all(&chunk).map_err(BackupError::io(&*target))?;
                *len += chunk.len() as u64;
                if *len - *flushed >= WRITEBACK_EVERY {
                    start_writeback(f, *flushed, *len);
                    *flushed = *len;
                }
            }
            WriteOp::Close(mode) => {
                if let Some((f, target, len, flushed)) = current.take() {
                    start_writeback(&f, flushed, len);
                    fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(BackupError::io(&target))?;
                }
            }
        }
    }
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
        send(WriteOp::Create(target))?;
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

/// Written data is handed to the disk in steps of this size, so that the final
/// sync finds little left to do and writing never stalls on a mountain of
/// dirty pages (PostgreSQL's own `*_flush_after` idea).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts (does not wait for) writeback of bytes `from..end` of `f`.
fn start_writeback(f: &fs::File, from: u64, end: u64) {
    if end <= from {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: a valid descriptor; SYNC_FILE_RANGE_WRITE only initiates I/O.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(f),
            from as i64,
            (end - from) as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Makes the restored directory start as a recovery to `target`, fetching WAL
/// with `restore_command`.
fn write_recovery_settings(
    dest: &Path,
    target: &RecoveryTarget,
    restore_command: &str,
    backup: &str,
) -> Result<(), BackupError> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut conf = format!(
        "\n# Added by cairn backup-fetch of {backup} at {}\nrestore_command = {}\n",
        super::now_rfc3339(),
        quote(restore_command)
    );
    let setting = match target {
        RecoveryTarget::Latest => None,
        RecoveryTarget::Time(t) => Some(("recovery_target_time", t.clone())),
        RecoveryTarget::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
        RecoveryTarget::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        RecoveryTarget::Name(n) => Some(("recovery_target_name", n.clone())),
    };
    conf.push_str("recovery_target_timeline = 'latest'\n");
    if let Some((key, value)) = setting {
        conf.push_str(&format!("{key} = {}\n", quote(&value)));
        // Open for writes at the target, on a new timeline, rather than pause.
        conf.push_str("recovery_target_action = 'promote'\n");
    }
    let auto = dest.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .map_err(BackupError::io(&auto))?;
    f.write_all(conf.as_bytes())
        .map_err(BackupError::io(&auto))?;
    let signal = dest.join("recovery.signal");
    fs::write(&signal, b"").map_err(BackupError::io(&signal))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_targets_parse() {
        assert_eq!("latest".parse(), Ok(RecoveryTarget::Latest));
        assert_eq!(
            "lsn=0/3000028".parse(),
            Ok(RecoveryTarget::Lsn("0/3000028".parse().unwrap()))
        );
        assert_eq!("xid=1234".parse(), Ok(RecoveryTarget::Xid(1234)));
        assert_eq!(
            "time=2026-11-21 10:00:00+00".parse(),
            Ok(RecoveryTarget::Time("2026-11-21 10:00:00+00".into()))
        );
        for bad in [
            "",
            "now",
            "time=",
            "lsn=x",
            "xid=-1",
            "when=1",
            "time=yesterday",
        ] {
            assert!(bad.parse::<RecoveryTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_stay_inside_their_roots() {
        let layout = Layout {
            dest: PathBuf::from("/restore"),
            tablespaces: HashMap::from([(16400, PathBuf::from("/ts"))]),
        };
        assert_eq!(
            layout.target("base/1/1259"),
            Ok(PathBuf::from("/restore/base/1/1259"))
        );
        assert_eq!(
            layout.target("pg_tblspc/16400/PG_15/1/16500"),
            Ok(PathBuf::from("/ts/PG_15/1/16500"))
        );
        for bad in [
            "/etc/passwd",
            "../x",
            "base/../../x",
            "pg_tblspc/99/x",
            "pg_tblspc/x/y",
            "",
        ] {
            assert!(layout.target(bad).is_err(), "{bad}");
        }
    }
}
