//! The restore's destination: where each path of the backup goes (the data
//! directory, or a tablespace's new location), creating and checking it, the
//! writer that puts verified bytes into files, and the final sync. Blocking:
//! callers run it on blocking threads.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::super::BackupError;
use super::plan::Reusable;
use crate::archive::manifest::{FileEntry, Manifest};
use crate::pg::datadir::EXCLUDED_CONTENTS;
use std::collections::HashSet;

/// Where each path of the backup goes: the destination, or a tablespace
/// location for `pg_tblspc/<oid>/…`.
#[derive(Clone)]
pub struct Layout {
    pub dest: PathBuf,
    pub tablespaces: HashMap<u32, PathBuf>,
}

/// What [`Layout::prepare`] created, to remove again if the restore fails.
pub struct Created {
    dirs: Vec<(PathBuf, bool)>,
}

impl Created {
    pub fn undo(&self) {
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
    /// The layout of `manifest`'s restore into `dest`, with tablespaces
    /// moved as `tablespace_map` says.
    pub fn new(
        manifest: &Manifest,
        dest: &Path,
        tablespace_map: &[(u32, PathBuf)],
    ) -> Result<Layout, BackupError> {
        let mut tablespaces = HashMap::new();
        for ts in &manifest.tablespaces {
            let location = tablespace_map
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
        for (oid, _) in tablespace_map {
            if !manifest.tablespaces.iter().any(|t| t.oid == *oid) {
                return Err(BackupError::BadArgument(format!(
                    "--tablespace-map {oid}=…: backup {} has no tablespace {oid}",
                    manifest.name
                )));
            }
        }
        Ok(Layout {
            dest: dest.to_path_buf(),
            tablespaces,
        })
    }

    /// Checks that the destination and tablespace locations are empty (or
    /// absent) and creates them.
    pub fn prepare(&self) -> Result<Created, BackupError> {
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
            created.dirs.push((dir.clone(), existed));
            // PostgreSQL refuses a data directory others can read: a
            // directory whose mode cannot be set would fail at startup.
            if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
                created.undo();
                return Err(BackupError::io(dir)(e));
            }
        }
        Ok(created)
    }

    /// Prepares a restore over an existing data directory (`backup-fetch
    /// --delta`): refuses one of another cluster or with a running server;
    /// marks the directory as being restored and removes `global/pg_control`
    /// first, durably, so that a restore cut short leaves a directory that
    /// cannot start (and that the next `--delta` run takes up); then removes
    /// whatever the backup does not have, as a restore into an empty
    /// directory would not create it.
    pub fn prepare_delta(&self, manifest: &Manifest) -> Result<(), BackupError> {
        let dest = &self.dest;
        let refuse = |why: String| {
            BackupError::BadArgument(format!(
                "backup-fetch --delta into {}: {why}",
                dest.display()
            ))
        };
        fs::create_dir_all(dest).map_err(BackupError::io(dest))?;
        if let Some(pid) = running_postmaster(dest) {
            return Err(refuse(format!(
                "a server runs in it (postmaster.pid names PID {pid}); stop it first"
            )));
        }
        let marker = dest.join(DELTA_MARKER);
        let want = manifest.system_identifier.0;
        let found = match fs::read_to_string(&marker) {
            Ok(text) => text.trim().parse::<u64>().ok(),
            Err(_) => match crate::pg::datadir::system_identifier(dest) {
                Ok(id) => Some(id),
                Err(_) if is_empty(dest)? => Some(want),
                Err(_) => {
                    return Err(refuse(
                        "it is not a data directory (no global/pg_control); restore into an \
                         empty directory instead"
                            .into(),
                    ));
                }
            },
        };
        match found {
            Some(id) if id == want => {}
            Some(id) => {
                return Err(refuse(format!(
                    "it belongs to cluster {id}, backup {} to cluster {want}; only a data \
                     directory of the same cluster can be reused",
                    manifest.name
                )));
            }
            None => return Err(refuse(format!("{DELTA_MARKER} is unreadable; remove it"))),
        }
        crate::durable::write_file(
            &marker,
            want.to_string().as_bytes(),
            crate::durable::Durability::Durable,
        )
        .map_err(BackupError::io(&marker))?;
        let control = dest.join("global/pg_control");
        match fs::remove_file(&control) {
            Ok(()) => crate::durable::sync_dir(&control).map_err(BackupError::io(&control))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::io(&control)(e)),
        }
        for dir in self.tablespaces.values() {
            fs::create_dir_all(dir).map_err(BackupError::io(dir))?;
        }
        self.remove_extraneous(manifest)
    }

    /// Removes every file and directory under the destination and the
    /// tablespace locations that the backup does not list.
    fn remove_extraneous(&self, manifest: &Manifest) -> Result<(), BackupError> {
        let mut expected: std::collections::HashSet<PathBuf> = manifest
            .files
            .iter()
            .filter_map(|f| self.target(&f.path).ok())
            .collect();
        expected.insert(self.dest.join(DELTA_MARKER));
        // Directories a restore creates empty, and their parents.
        for d in EXCLUDED_CONTENTS
            .iter()
            .copied()
            .chain(["pg_wal/archive_status", "pg_tblspc"])
        {
            let mut p = self.dest.join(d);
            while p.starts_with(&self.dest) && p != self.dest {
                expected.insert(p.clone());
                if !p.pop() {
                    break;
                }
            }
        }
        let roots = std::iter::once(&self.dest).chain(self.tablespaces.values());
        for root in roots {
            remove_unexpected(root, &expected)?;
        }
        Ok(())
    }

    /// After a delta restore is durable: the directory is whole again.
    pub fn finish_delta(&self) -> Result<(), BackupError> {
        let marker = self.dest.join(DELTA_MARKER);
        fs::remove_file(&marker).map_err(BackupError::io(&marker))?;
        crate::durable::sync_dir(&marker).map_err(BackupError::io(&marker))
    }

    /// Which of `candidates` the destination already holds, byte for byte
    /// (same size and BLAKE3), hashed `threads` at a time; with their bytes.
    pub fn matching(&self, candidates: &[Reusable], threads: usize) -> (HashSet<String>, u64) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let found = std::sync::Mutex::new((HashSet::new(), 0u64));
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(c) = candidates.get(i) else {
                            break;
                        };
                        if self.holds(c) {
                            let mut f = found.lock().unwrap_or_else(|p| p.into_inner());
                            f.0.insert(c.path.clone());
                            f.1 += c.size;
                        }
                    }
                });
            }
        });
        found.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn holds(&self, c: &Reusable) -> bool {
        let Ok(path) = self.target(&c.path) else {
            return false;
        };
        let Ok(f) = fs::File::open(&path) else {
            return false;
        };
        if !f.metadata().is_ok_and(|m| m.is_file() && m.len() == c.size) {
            return false;
        }
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(f)
            .is_ok_and(|h| crate::codec::hex(h.finalize().as_bytes()) == c.blake3)
    }

    /// The place for backup path `path`, or why it is unsafe. Only plain
    /// relative components are allowed, so no entry can leave its root.
    pub fn target(&self, path: &str) -> Result<PathBuf, &'static str> {
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
    pub fn make_dirs(&self, manifest: &Manifest) -> Result<(), BackupError> {
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
                // Over an existing directory (--delta): a link already right stays.
                if fs::read_link(&link).is_ok_and(|t| &t == to) {
                    continue;
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
    pub fn finish(&self, manifest: &Manifest) -> Result<(), BackupError> {
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
    pub fn sync(&self) -> Result<(), BackupError> {
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

/// Marks a data directory a `backup-fetch --delta` is restoring (its
/// cluster's system identifier): pg_control is gone until it ends.
pub const DELTA_MARKER: &str = ".cairn-delta-restore";

/// The PID in `dir/postmaster.pid` if that process is alive.
fn running_postmaster(dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    alive.then_some(pid)
}

fn is_empty(dir: &Path) -> Result<bool, BackupError> {
    Ok(fs::read_dir(dir)
        .map_err(BackupError::io(dir))?
        .next()
        .is_none())
}

/// Removes what under `dir` is not in `expected` (not following links).
fn remove_unexpected(
    dir: &Path,
    expected: &std::collections::HashSet<PathBuf>,
) -> Result<(), BackupError> {
    for e in fs::read_dir(dir).map_err(BackupError::io(dir))? {
        let e = e.map_err(BackupError::io(dir))?;
        let path = e.path();
        let kind = e.file_type().map_err(BackupError::io(&path))?;
        if !expected.contains(&path) {
            if kind.is_dir() {
                fs::remove_dir_all(&path).map_err(BackupError::io(&path))?;
            } else {
                fs::remove_file(&path).map_err(BackupError::io(&path))?;
            }
        } else if kind.is_dir() {
            remove_unexpected(&path, expected)?;
        }
    }
    Ok(())
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

/// Chunks waiting for the writer: with 256 KiB chunks, 2 MiB per part.
pub const WRITE_QUEUE: usize = 8;

/// What the extractor asks the writer to do, in order.
pub enum WriteOp {
    /// A new file, written in order by `Data`.
    Create(PathBuf),
    /// A file that may exist already (`backup-fetch --delta`): `Data` is
    /// compared with it page by page and only what differs is written; it
    /// is cut to the length written at `Close`.
    Update(PathBuf),
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
pub fn write_files(
    queue: std::sync::mpsc::Receiver<WriteOp>,
    stats: &WriteStats,
) -> Result<(), BackupError> {
    let mut current: Option<(fs::File, PathBuf, u64, u64)> = None;
    // For `Update`: compare before writing.
    let mut updating = false;
    for op in queue {
        match op {
            WriteOp::Update(target) => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(BackupError::io(parent))?;
                }
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&target)
                    .map_err(BackupError::io(&target))?;
                current = Some((f, target, 0, 0));
                updating = true;
            }
            WriteOp::Data(chunk) if updating => {
                let Some((f, target, len, _)) = current.as_mut() else {
                    continue;
                };
                update_range(f, *len, &chunk, stats).map_err(BackupError::io(&*target))?;
                *len += chunk.len() as u64;
            }
            WriteOp::Create(target) => {
                updating = false;
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
                updating = false;
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
                stats.add_written(page.len() as u64);
            }
            WriteOp::Data(chunk) => {
                let Some((f, target, len, flushed)) = current.as_mut() else {
                    continue;
                };
                f.write_all(&chunk).map_err(BackupError::io(&*target))?;
                *len += chunk.len() as u64;
                stats.add_written(chunk.len() as u64);
                if *len - *flushed >= WRITEBACK_EVERY {
                    start_writeback(f, *flushed, *len);
                    *flushed = *len;
                }
            }
            WriteOp::Close(mode) => {
                if let Some((f, target, len, flushed)) = current.take() {
                    if std::mem::take(&mut updating) {
                        f.set_len(len).map_err(BackupError::io(&target))?;
                    }
                    start_writeback(&f, flushed, len);
                    fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(BackupError::io(&target))?;
                }
            }
        }
    }
    Ok(())
}

/// What a restore wrote, and (`--delta`) found already in place.
#[derive(Debug, Default)]
pub struct WriteStats {
    written: std::sync::atomic::AtomicU64,
    unchanged: std::sync::atomic::AtomicU64,
}

impl WriteStats {
    pub(super) fn add_written(&self, n: u64) {
        self.written
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn add_unchanged(&self, n: u64) {
        self.unchanged
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes written, and bytes of rewritten files found already in place.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.written.load(std::sync::atomic::Ordering::Relaxed),
            self.unchanged.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// Writes `chunk` at `offset` of `f`, page by page, only where the file
/// holds something else.
fn update_range(f: &fs::File, offset: u64, chunk: &[u8], stats: &WriteStats) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut old = vec![0u8; chunk.len()];
    let mut have = 0;
    while have < old.len() {
        match f.read_at(&mut old[have..], offset + have as u64) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    const STEP: usize = 8192;
    let mut at = 0;
    while at < chunk.len() {
        let end = (at + STEP).min(chunk.len());
        if end <= have && old[at..end] == chunk[at..end] {
            stats
                .unchanged
                .fetch_add((end - at) as u64, std::sync::atomic::Ordering::Relaxed);
        } else {
            f.write_all_at(&chunk[at..end], offset + at as u64)?;
            stats.add_written((end - at) as u64);
        }
        at = end;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
