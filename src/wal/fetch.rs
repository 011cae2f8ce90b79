//! `cairn wal-fetch <name> <dest>` (PostgreSQL's `restore_command`) and the
//! prefetch worker it starts.
//!
//! `dest` is written through a temporary file and renamed only after the object's
//! checksum verified, so PostgreSQL never sees a partial file. A missing segment
//! while later segments of its timeline are archived is a gap, reported as an
//! error rather than "not found", so recovery cannot silently end early.
//!
//! Prefetch: after a segment is fetched, a detached `cairn wal-prefetch` process
//! downloads the next M segments of the timeline concurrently into
//! `pg_wal/.cairn/prefetch/`. Each download writes `<name>.part` under an exclusive
//! lock and renames it to `<name>` when verified; a fetch that finds `<name>`
//! renames it into place, one that finds a locked `.part` waits for the lock.

use std::fs::{File, TryLockError};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{WalError, state_dir, tmp_name, wal_key};
use crate::Context;
use crate::codec::{CodecError, Decoder};
use crate::pg::wal::{LONG_PAGE_HEADER_LEN, LongPageHeader, Segment, WalFileName};
use crate::storage::{ObjectKey, StorageError};

/// Where the file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Archive,
    Prefetched,
}

/// Fetches `name` into `dest`; returns the next segments to prefetch, if any.
pub async fn fetch(
    ctx: &Context,
    name: &str,
    dest: &Path,
    prefetch: usize,
) -> Result<(Source, Vec<WalFileName>), WalError> {
    let name: WalFileName = name.parse()?;
    let pg_wal = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefetch_dir = state_dir(&pg_wal).join("prefetch");
    let mut source = Source::Archive;
    let taken = match name.segment() {
        Some(_) => take_prefetched(&prefetch_dir, &name, dest, ctx.config.storage_timeout).await?,
        None => false,
    };
    if taken {
        source = Source::Prefetched;
    } else {
        match download(ctx, &name, dest).await {
            Ok(()) => {}
            Err(WalError::Storage(StorageError::NotFound { .. })) => {
                return Err(missing(ctx, &name).await);
            }
            Err(e) => return Err(e),
        }
    }
    let Some(segment) = name.segment() else {
        return Ok((source, Vec::new()));
    };
    discard_stale(&prefetch_dir, segment);
    if prefetch == 0 {
        return Ok((source, Vec::new()));
    }
    // The segment size is read from the file itself, never assumed.
    let size = match read_header(dest) {
        Ok(h) => h.segment_size,
        Err(e) => {
            tracing::warn!(file = %dest.display(), error = %e, "cannot read WAL header; not prefetching");
            return Ok((source, Vec::new()));
        }
    };
    let mut next = Vec::with_capacity(prefetch);
    let mut s = segment;
    for _ in 0..prefetch {
        s = s.next(size);
        let n = WalFileName::Segment(s);
        let f = prefetch_dir.join(n.to_string());
        if !f.exists() && !in_flight(&part_path(&f)) {
            next.push(n);
        }
    }
    Ok((source, next))
}

/// Starts the detached prefetch worker for `names`. `global_args` are the options
/// this process got, so the worker reads the same configuration.
pub fn spawn_prefetcher(
    dest: &Path,
    names: &[WalFileName],
    global_args: &[std::ffi::OsString],
) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let pg_wal = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = state_dir(&pg_wal).join("prefetch");
    std::fs::create_dir_all(&dir)?;
    // current_exe resolves a relative or PATH invocation to the real binary.
    let exe = std::env::current_exe()?;
    std::process::Command::new(exe)
        .args(global_args)
        .arg("wal-prefetch")
        .arg("--dir")
        .arg(&dir)
        .args(names.iter().map(|n| n.to_string()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Its own process group: signals PostgreSQL sends to restore_command's group
        // must not cut a download short (it would only be redone, but wastefully).
        .process_group(0)
        .spawn()
        .map(|_| ())
}

/// The worker: downloads each segment into `dir` unless present or in flight.
pub async fn prefetch_worker(ctx: &Context, dir: &Path, names: &[WalFileName]) {
    futures::stream::iter(names)
        .for_each_concurrent(names.len().max(1), |name| async move {
            if let Err(e) = prefetch_one(ctx, dir, name).await {
                tracing::warn!(segment = %name, error = %e, "prefetch failed; PostgreSQL's own request will fetch it");
            }
        })
        .await;
}

async fn prefetch_one(ctx: &Context, dir: &Path, name: &WalFileName) -> Result<(), WalError> {
    let done = dir.join(name.to_string());
    let part = part_path(&done);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .map_err(WalError::file(&part))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(()),
        Err(TryLockError::Error(e)) => {
            return Err(WalError::File {
                path: part,
                source: e,
            });
        }
    }
    // Another worker may have finished it between our checks.
    if done.exists() {
        let _ = std::fs::remove_file(&part);
        return Ok(());
    }
    file.set_len(0).map_err(WalError::file(&part))?;
    match decode_into(
        ctx,
        &wal_key(name),
        file.try_clone().map_err(WalError::file(&part))?,
    )
    .await
    {
        Ok(()) => std::fs::rename(&part, &done).map_err(WalError::file(&done)),
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            match e {
                WalError::Storage(StorageError::NotFound { .. }) => Ok(()),
                e => Err(e),
            }
        }
    }
    // `file` drops here, releasing the lock after the rename.
}

fn part_path(done: &Path) -> PathBuf {
    let mut p = done.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

fn in_flight(part: &Path) -> bool {
    File::open(part).is_ok_and(|f| matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock)))
}

/// Moves a prefetched copy into `dest`, waiting for one still being downloaded.
async fn take_prefetched(
    dir: &Path,
    name: &WalFileName,
    dest: &Path,
    wait: Duration,
) -> Result<bool, WalError> {
    let done = dir.join(name.to_string());
    if !done.exists() {
        let part = part_path(&done);
        let Ok(f) = File::open(&part) else {
            return Ok(false);
        };
        let deadline = Instant::now() + wait;
        loop {
            match f.try_lock_shared() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                // A stuck worker: fetch directly rather than wait forever.
                Err(_) => return Ok(false),
            }
        }
    }
    match std::fs::rename(&done, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(WalError::File {
            path: done,
            source: e,
        }),
    }
}

/// Removes prefetched segments that recovery has passed or that belong to another
/// timeline than the one it is now reading.
fn discard_stale(dir: &Path, current: Segment) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match name
            .strip_suffix(".part")
            .unwrap_or(name)
            .parse::<WalFileName>()
        {
            Ok(WalFileName::Segment(s)) => s.timeline != current.timeline || s <= current,
            _ => true,
        };
        if stale && (!name.ends_with(".part") || !in_flight(&e.path())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn read_header(path: &Path) -> Result<LongPageHeader, WalError> {
    use std::io::Read;
    let mut b = [0u8; LONG_PAGE_HEADER_LEN];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(WalError::file(path))?;
    Ok(LongPageHeader::parse(&b)?)
}

/// Downloads and verifies `name` into `dest` via a temporary file.
async fn download(ctx: &Context, name: &WalFileName, dest: &Path) -> Result<(), WalError> {
    let tmp = tmp_name(dest);
    let file = File::create(&tmp).map_err(WalError::file(&tmp))?;
    match decode_into(ctx, &wal_key(name), file).await {
        Ok(()) => std::fs::rename(&tmp, dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            WalError::File {
                path: dest.to_path_buf(),
                source: e,
            }
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Streams an object through the decoder into `file`. Returns only once the
/// checksum verified; on error the file holds garbage and must be discarded.
async fn decode_into(ctx: &Context, key: &ObjectKey, file: File) -> Result<(), WalError> {
    let keyring = ctx.keyring()?;
    let stream = ctx.storage.get(key).await?;
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let object = format!("{}/{key}", ctx.storage.location().trim_end_matches('/'));
    tokio::task::spawn_blocking(move || -> Result<(), WalError> {
        let mut decoder = Decoder::new(reader, keyring.as_ref(), &object)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        std::io::copy(&mut decoder, &mut out).map_err(CodecError::from_io)?;
        out.flush().map_err(CodecError::Io)?;
        Ok(())
    })
    .await
    .map_err(|e| WalError::Codec(CodecError::Io(std::io::Error::other(e))))?
}

/// Tells "the archive ends here" from "the archive has a hole here".
async fn missing(ctx: &Context, name: &WalFileName) -> WalError {
    let location = ctx.storage.location().to_string();
    let Some(segment) = name.segment() else {
        return WalError::NotInArchive {
            name: name.to_string(),
            location,
        };
    };
    let prefix = format!("wal/{}", segment.timeline);
    let after = wal_key(name);
    let first_segment = |objs: Vec<crate::storage::ObjectMeta>, pred: &dyn Fn(Segment) -> bool| {
        objs.iter()
            .filter_map(|o| {
                o.key
                    .as_str()
                    .strip_prefix("wal/")?
                    .parse::<WalFileName>()
                    .ok()?
                    .segment()
            })
            .find(|s| pred(*s))
    };
    // Listing also proves the bucket or directory exists: "not found" must mean the
    // object, never a misconfigured archive.
    let later = match ctx
        .storage
        .list(&prefix, Some(after.as_str()), Some(64))
        .await
    {
        Ok(objs) => first_segment(objs, &|s| s > segment),
        Err(e) => return e.into(),
    };
    let Some(later) = later else {
        return WalError::NotInArchive {
            name: name.to_string(),
            location,
        };
    };
    // A timeline begins part-way through the WAL; segments before its first
    // archived one are not a gap.
    let earlier = match ctx.storage.list(&prefix, None, Some(64)).await {
        Ok(objs) => first_segment(objs, &|s| s < segment),
        Err(e) => return e.into(),
    };
    if earlier.is_some() {
        WalError::Gap {
            name: name.to_string(),
            later: later.to_string(),
            location,
        }
    } else {
        WalError::NotInArchive {
            name: name.to_string(),
            location,
        }
    }
}
