//! `cairn wal-fetch <name> <dest>` (PostgreSQL's `restore_command`) and the
//! prefetch worker it starts.
//!
//! `dest` is written through a temporary file and renamed only after the
//! object's checksum verified and the segment proved to be the one asked for,
//! of this cluster ([`super::check`]), so PostgreSQL never sees a partial or
//! a wrong file. A missing WAL file is explained by `archive::missing`: the
//! end of the archive and a hole retention made on purpose are "not found";
//! a gap is an error, so recovery cannot silently end early.
//!
//! Prefetch: after a segment is fetched, a detached `cairn wal-prefetch`
//! process downloads the next M segments of the timeline concurrently into
//! the spool ([`super::spool`], outside the data directory). A fetch that
//! finds its segment there (written since the machine booted) checks it the
//! same way and moves it into place; one that finds it still downloading
//! waits for it.

use std::fs::{File, TryLockError};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::spool::Spool;
use super::{WalError, check};
use crate::Context;
use crate::archive::keys;
use crate::archive::missing::{self, Absence};
use crate::codec::{CodecError, Decoder, Keyring};
use crate::durable::{Durability, TempFile};
use crate::pg::wal::{LONG_PAGE_HEADER_LEN, SegmentSize, SystemId, WalFileName};
use crate::storage::{ByteStream, StorageError};

/// Where the file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Archive,
    Prefetched,
}

/// What a fetch did, and what to prefetch next.
#[derive(Debug)]
pub struct Fetched {
    pub source: Source,
    /// The next segments to download ahead, into `spool`.
    pub next: Vec<WalFileName>,
    pub spool: Option<Spool>,
}

/// Fetches `name` into `dest`.
pub async fn fetch(
    ctx: &Context,
    name: &str,
    dest: &Path,
    prefetch: usize,
) -> Result<Fetched, WalError> {
    let name: WalFileName = name.parse()?;
    let pg_wal = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let configured = ctx.config.wal_fetch_spool.clone();
    let dest_buf = dest.to_path_buf();
    let wants_spool = name.segment().is_some();
    let (system, spool) = crate::blocking(move || {
        let system = check::data_directory_system(&dest_buf);
        let spool = if wants_spool {
            match Spool::open(&pg_wal, configured.as_deref()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no prefetch spool; fetching without prefetch");
                    None
                }
            }
        } else {
            None
        };
        Ok::<_, WalError>((system, spool))
    })
    .await?;

    let mut source = Source::Archive;
    let mut size = None;
    if let Some(spool) = &spool {
        let (spool, dest) = (spool.clone(), dest.to_path_buf());
        let wait = ctx.config.storage_timeout;
        size = crate::blocking(move || take_prefetched(&spool, &name, &dest, wait, system)).await?;
        if size.is_some() {
            source = Source::Prefetched;
        }
    }
    if size.is_none() {
        size = match download(ctx, &name, dest, system).await {
            Ok(size) => size,
            Err(WalError::Storage(StorageError::NotFound { .. })) => {
                match end_partial(ctx, &name, dest, system).await? {
                    Some(size) => Some(size),
                    None => return Err(missing(ctx, &name, system).await),
                }
            }
            Err(e) => return Err(e),
        };
    }
    let (Some(segment), Some(spool)) = (name.segment(), spool) else {
        return Ok(Fetched {
            source,
            next: Vec::new(),
            spool: None,
        });
    };
    let size = size.unwrap_or(SegmentSize::DEFAULT);
    let (stale, spool2) = (segment, spool.clone());
    let next = crate::blocking(move || {
        spool2.discard_stale(stale);
        // The segment size is the restored file's own, never assumed.
        let mut next = Vec::with_capacity(prefetch);
        let mut s = segment;
        for _ in 0..prefetch {
            s = s.next(size);
            let n = WalFileName::Segment(s);
            if !spool2.has(&n) {
                next.push(n);
            }
        }
        Ok::<_, WalError>(next)
    })
    .await?;
    Ok(Fetched {
        source,
        next,
        spool: Some(spool),
    })
}

/// Starts the detached prefetch worker for `names`. `global_args` are the
/// options this process got, so the worker reads the same configuration.
pub fn spawn_prefetcher(
    spool: &Spool,
    names: &[WalFileName],
    global_args: &[std::ffi::OsString],
) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    // current_exe resolves a relative or PATH invocation to the real binary.
    let exe = std::env::current_exe()?;
    std::process::Command::new(exe)
        .args(global_args)
        .arg("wal-prefetch")
        .arg("--dir")
        .arg(&spool.dir)
        .args(names.iter().map(|n| n.to_string()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Its own process group: signals PostgreSQL sends to restore_command's group
        // must not cut a download short (it would only be redone, but wastefully).
        .process_group(0)
        .spawn()
        .map(|_| ())
}

/// The worker: downloads each segment into the spool unless present or in flight.
pub async fn prefetch_worker(ctx: &Context, dir: &Path, names: &[WalFileName]) {
    let spool = Spool {
        dir: dir.to_path_buf(),
    };
    futures::stream::iter(names)
        .for_each_concurrent(names.len().max(1), |name| {
            let spool = &spool;
            async move {
                if let Err(e) = prefetch_one(ctx, spool, name).await {
                    tracing::warn!(segment = %name, error = %e, "prefetch failed; PostgreSQL's own request will fetch it");
                }
            }
        })
        .await;
}

async fn prefetch_one(ctx: &Context, spool: &Spool, name: &WalFileName) -> Result<(), WalError> {
    let (done, part) = (spool.done(name), spool.part(name));
    let locked = {
        let (done, part) = (done.clone(), part.clone());
        crate::blocking(move || {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&part)
                .map_err(WalError::file(&part))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(WalError::file(&part)(e)),
            }
            // Another worker may have finished it between our checks.
            if done.exists() {
                let _ = std::fs::remove_file(&part);
                return Ok(None);
            }
            file.set_len(0).map_err(WalError::file(&part))?;
            Ok(Some(file))
        })
        .await?
    };
    let Some(file) = locked else {
        return Ok(());
    };
    let out = file.try_clone().map_err(WalError::file(&part))?;
    let result = decode_into(ctx, name, out).await;
    crate::blocking(move || {
        let finished = match result {
            // Named done only once whole; not fsynced: a fetch trusts it only
            // if it was written since the machine booted (see `spool`).
            Ok(_) => std::fs::rename(&part, &done).map_err(WalError::file(&done)),
            Err(WalError::Storage(StorageError::NotFound { .. })) => Ok(()),
            Err(e) => Err(e),
        };
        if finished.is_err() || !done.exists() {
            let _ = std::fs::remove_file(&part);
        }
        // `file` drops here, releasing the lock after the rename.
        drop(file);
        finished
    })
    .await
}

/// Moves a prefetched copy of `name` into `dest`, waiting up to `wait` for one
/// still being downloaded; checks it first. Returns its segment size, or
/// `None` when there is no usable copy (then the caller downloads).
fn take_prefetched(
    spool: &Spool,
    name: &WalFileName,
    dest: &Path,
    wait: Duration,
    system: Option<SystemId>,
) -> Result<Option<SegmentSize>, WalError> {
    let done = spool.done(name);
    if !done.exists() {
        let Ok(f) = File::open(spool.part(name)) else {
            return Ok(None);
        };
        let deadline = Instant::now() + wait;
        loop {
            match f.try_lock_shared() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                // A stuck worker: fetch directly rather than wait forever.
                Err(_) => return Ok(None),
            }
        }
    }
    let mut file = match File::open(&done) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::file(&done)(e)),
    };
    if !Spool::trusted(&done) {
        tracing::info!(file = %done.display(), "discarding a prefetched segment written before the machine's last boot");
        let _ = std::fs::remove_file(&done);
        return Ok(None);
    }
    let len = file.metadata().map_err(WalError::file(&done))?.len();
    let mut first = Vec::with_capacity(LONG_PAGE_HEADER_LEN);
    (&mut file)
        .take(LONG_PAGE_HEADER_LEN as u64)
        .read_to_end(&mut first)
        .map_err(WalError::file(&done))?;
    let header = match check::check(name, &first, len, system) {
        Ok(h) => h,
        Err(reason) => {
            tracing::warn!(file = %done.display(), %reason, "discarding a prefetched segment that is not the one asked for");
            let _ = std::fs::remove_file(&done);
            return Ok(None);
        }
    };
    match std::fs::rename(&done, dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // Another filesystem (the default spool lies in the temporary
        // directory): copy.
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut out = TempFile::create(dest).map_err(WalError::file(dest))?;
            std::io::Seek::rewind(&mut file).map_err(WalError::file(&done))?;
            std::io::copy(&mut file, &mut out).map_err(WalError::file(dest))?;
            out.commit(Durability::Atomic)
                .map_err(WalError::file(dest))?;
            let _ = std::fs::remove_file(&done);
        }
        Err(e) => return Err(WalError::file(&done)(e)),
    }
    Ok(Some(
        header.map_or(SegmentSize::DEFAULT, |h| h.segment_size),
    ))
}

/// Downloads, verifies and checks `name` into `dest` via a temporary file;
/// returns the segment's size (`None` for other WAL files).
async fn download(
    ctx: &Context,
    name: &WalFileName,
    dest: &Path,
    system: Option<SystemId>,
) -> Result<Option<SegmentSize>, WalError> {
    let out = {
        let dest = dest.to_path_buf();
        crate::blocking(move || TempFile::create(&dest).map_err(WalError::file(&dest))).await?
    };
    let (first, len, mut out) = decode_into(ctx, name, out).await?;
    let object = keys::object_name(ctx.storage.location(), &keys::wal(name));
    let header =
        check::check(name, &first, len, system).map_err(|reason| WalError::NotThisFile {
            name: name.to_string(),
            object,
            reason,
        })?;
    // PostgreSQL reads the file at once and fsyncs what it keeps.
    crate::blocking(move || {
        out.flush()
            .map_err(|e| WalError::Codec(CodecError::Io(e)))?;
        out.commit(Durability::Atomic)
            .map_err(|e| WalError::Codec(CodecError::Io(e)))
    })
    .await?;
    Ok(header.map(|h| h.segment_size))
}

/// Reads archived WAL file `name` as wal-fetch would restore it, writing
/// nothing: decrypted, decompressed, its checksum verified, and its header
/// checked against the name and `system` (backup-verify).
pub async fn check_archived(
    ctx: &Context,
    name: &WalFileName,
    system: Option<SystemId>,
) -> Result<(), WalError> {
    let (first, len, _) = decode_into(ctx, name, std::io::sink()).await?;
    check::check(name, &first, len, system).map_err(|reason| WalError::NotThisFile {
        name: name.to_string(),
        object: keys::object_name(ctx.storage.location(), &keys::wal(name)),
        reason,
    })?;
    Ok(())
}

/// Streams WAL file `name` from storage through the decoder into `out`.
/// Returns only once the checksum verified, with the first bytes (for the
/// header check) and the length; on error `out` holds garbage.
async fn decode_into<W: Write + Send + 'static>(
    ctx: &Context,
    name: &WalFileName,
    out: W,
) -> Result<(Vec<u8>, u64, W), WalError> {
    let key = keys::wal(name);
    let keyring = ctx.keyring()?;
    let stream = ctx.storage.get(&key).await?;
    let object = keys::object_name(ctx.storage.location(), &key);
    decode_stream(stream, keyring, object, out).await
}

async fn decode_stream<W: Write + Send + 'static>(
    stream: ByteStream,
    keyring: Option<Keyring>,
    object: String,
    out: W,
) -> Result<(Vec<u8>, u64, W), WalError> {
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    crate::blocking(move || {
        let mut decoder = Decoder::new(reader, keyring.as_ref(), &object)?;
        let mut out = BufWriter::with_capacity(1 << 20, out);
        // The header's bytes first, kept for the check; the rest copied
        // straight into the writer's buffer.
        let mut first = Vec::with_capacity(LONG_PAGE_HEADER_LEN);
        (&mut decoder)
            .take(LONG_PAGE_HEADER_LEN as u64)
            .read_to_end(&mut first)
            .map_err(crate::wal::read_error)?;
        out.write_all(&first).map_err(CodecError::Io)?;
        let rest = std::io::copy(&mut decoder, &mut out).map_err(crate::wal::read_error)?;
        let len = first.len() as u64 + rest;
        let out = out
            .into_inner()
            .map_err(|e| WalError::Codec(CodecError::Io(e.into_error())))?;
        Ok((first, len, out))
    })
    .await
}

/// At the end of the archive, the segment wal-receive was writing when it
/// stopped: `wal/<segment>.partial` (the bytes it received, zero-padded),
/// restored as the segment, so that recovery replays up to the last byte
/// received. Only when no later WAL exists on the path: a `.partial` before
/// other WAL is an old timeline's, never a substitute.
async fn end_partial(
    ctx: &Context,
    name: &WalFileName,
    dest: &Path,
    system: Option<SystemId>,
) -> Result<Option<SegmentSize>, WalError> {
    let WalFileName::Segment(seg) = name else {
        return Ok(None);
    };
    let partial = WalFileName::Partial(*seg);
    if ctx.storage.head(&keys::wal(&partial)).await?.is_none() {
        return Ok(None);
    }
    if !matches!(missing::explain(ctx, name, system).await?, Absence::End) {
        return Ok(None);
    }
    tracing::info!(file = %name, "the end of the archive: restoring this segment's received part from {partial}");
    match download(ctx, &partial, dest, system).await {
        Ok(size) => Ok(size),
        // Replaced or removed meanwhile (the receiver completed it): as
        // PostgreSQL asks again, the whole segment is there.
        Err(WalError::Storage(StorageError::NotFound { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Tells "the archive ends here" (or retention removed it on purpose) from
/// "the archive has a hole here".
async fn missing(ctx: &Context, name: &WalFileName, system: Option<SystemId>) -> WalError {
    let location = ctx.storage.location().to_string();
    match missing::explain(ctx, name, system).await {
        Ok(Absence::End) => WalError::NotInArchive {
            name: name.to_string(),
            location,
        },
        Ok(Absence::Removed) => {
            tracing::info!(file = %name, "retention removed this segment on purpose: the archive ends here for this restore");
            WalError::NotInArchive {
                name: name.to_string(),
                location,
            }
        }
        Ok(Absence::Gap { later }) => WalError::Gap {
            name: name.to_string(),
            later,
            location,
        },
        Err(e) => e.into(),
    }
}
