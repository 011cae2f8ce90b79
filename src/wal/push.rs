//! `cairn wal-push <path>` (PostgreSQL's `archive_command`).
//!
//! The file goes to `wal/<name>` with create-if-absent, so an archived file is never
//! replaced: if the name exists, the stored digest (in the object header) must match
//! the local file, else the push fails loudly. Lookahead: when a segment has to be
//! uploaded, up to N other segments with `archive_status/*.ready` go up with it,
//! concurrently, each leaving a marker `pg_wal/.cairn/pushed/<name>` that holds its
//! digest. PostgreSQL's later call for such a segment finds the marker, checks the
//! file still has that digest, and returns at once. PostgreSQL's `.ready` files are
//! never touched: it alone decides what counts as archived.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::{WalError, state_dir, wal_key, write_atomically};
use crate::Context;
use crate::codec::{CodecSettings, Header, PlainDigest, encode_stream};
use crate::pg::wal::{LongPageHeader, SegmentSize, WalFileName};
use crate::storage::{PutBody, PutMode, StorageError};

/// What happened to the file PostgreSQL asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Uploaded,
    /// An identical copy was already in the archive (a retry after a crash).
    AlreadyArchived,
    /// An earlier call pushed it ahead; the marker matched.
    PushedAhead,
}

#[derive(Debug)]
pub struct Report {
    pub name: WalFileName,
    pub outcome: Outcome,
    /// Segments pushed ahead by this call.
    pub pushed_ahead: usize,
    /// What this call uploaded (the file asked for, if it was, and the
    /// segments pushed ahead): files, bytes before and after encoding.
    pub uploaded: Uploaded,
}

/// Files and bytes uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uploaded {
    pub files: u64,
    pub raw: u64,
    pub stored: u64,
}

impl Uploaded {
    fn add(self, other: Uploaded) -> Uploaded {
        Uploaded {
            files: self.files + other.files,
            raw: self.raw + other.raw,
            stored: self.stored + other.stored,
        }
    }
}

/// Archives the WAL file at `path` (relative to the data directory, as `%p` is).
pub async fn push(ctx: &Context, path: &Path, lookahead: usize) -> Result<Report, WalError> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name: WalFileName = file_name.parse()?;
    let pg_wal = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let markers = state_dir(&pg_wal).join("pushed");

    if name.segment().is_some()
        && let Some(marked) = read_marker(&markers.join(file_name))
    {
        let (_, digest) = open_wal_file(path.to_path_buf(), name).await?;
        let _ = std::fs::remove_file(markers.join(file_name));
        if digest == marked {
            return Ok(Report {
                name,
                outcome: Outcome::PushedAhead,
                pushed_ahead: 0,
                uploaded: Uploaded::default(),
            });
        }
        tracing::warn!(file = %path.display(), "lookahead marker does not match the file; pushing it again");
    }

    tidy_state(&pg_wal, &markers);
    let budget = Semaphore::new(BUDGET_KIB as usize);
    let ahead = if name.segment().is_some() {
        ready_segments(&pg_wal, &name, &markers, lookahead)
    } else {
        Vec::new()
    };

    // Created first, so it is first in the budget's queue.
    let current = push_one(ctx, path.to_path_buf(), name, &budget);
    let others = futures::stream::iter(ahead)
        .map(|(n, p)| {
            let (budget, markers) = (&budget, &markers);
            async move {
                match push_one(ctx, p.clone(), n, budget).await {
                    Ok(pushed) => match record_marker(markers, &n, pushed.digest) {
                        Ok(()) => (1, pushed.uploaded),
                        Err(e) => {
                            tracing::warn!(segment = %n, error = %e, "could not record lookahead marker");
                            (0, pushed.uploaded)
                        }
                    },
                    Err(e) => {
                        // Not fatal: PostgreSQL will ask for this segment itself.
                        tracing::warn!(segment = %n, error = %e, "lookahead push failed");
                        (0, Uploaded::default())
                    }
                }
            }
        })
        .buffer_unordered(lookahead.max(1))
        .fold((0usize, Uploaded::default()), |(n, up), (ok, u)| async move {
            (n + ok, up.add(u))
        });
    let (current, (pushed_ahead, ahead_uploaded)) = futures::join!(current, others);
    let current = current?;
    Ok(Report {
        name,
        outcome: current.outcome,
        pushed_ahead,
        uploaded: current.uploaded.add(ahead_uploaded),
    })
}

/// Memory wal-push may hold for files in flight (upload buffers, encoder state),
/// in KiB. With the process's own ~15 MiB it keeps peak RSS under 64 MiB
/// whatever the lookahead; when a single file needs more (a huge segment with a
/// high zstd level), that file runs alone.
const BUDGET_KIB: u64 = 44 << 10;

/// What archiving one file of `size` bytes holds in memory, in KiB of the budget.
fn memory_cost(ctx: &Context, settings: &CodecSettings, size: u64) -> u32 {
    // Encoded size can exceed the plain size a little (incompressible data,
    // framing, age tags).
    let encoded = size + size / 64 + (64 << 10);
    let bytes = ctx.storage.put_buffering(encoded)
        + crate::codec::STREAM_BUFFERS as u64
        + settings.working_set();
    (bytes.div_ceil(1 << 10)).min(BUDGET_KIB) as u32
}

/// One file's push: what happened, the file's digest, what was uploaded.
struct Pushed {
    outcome: Outcome,
    digest: PlainDigest,
    uploaded: Uploaded,
}

async fn push_one(
    ctx: &Context,
    path: PathBuf,
    name: WalFileName,
    budget: &Semaphore,
) -> Result<Pushed, WalError> {
    let settings = ctx.config.codec();
    let size = tokio::fs::metadata(&path)
        .await
        .map_err(WalError::file(&path))?
        .len();
    let _permit = budget
        .acquire_many(memory_cost(ctx, &settings, size))
        .await
        .map_err(|e| WalError::File {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
    // Hash first, so that the digest goes into the object's header where a
    // later push can compare it without decrypting; then encode as it uploads.
    let (file, digest) = open_wal_file(path.clone(), name).await?;
    let encoded = encode_stream(file, settings, Some(digest), path.display().to_string());
    let key = wal_key(&name);
    let put = ctx
        .storage
        .put(&key, PutBody::Stream(encoded.body), PutMode::CreateIfAbsent)
        .await;
    let encoding = encoded.task.await.map_err(|e| WalError::File {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    match put {
        Ok(()) => {
            let (_, stored) = encoding?;
            Ok(Pushed {
                outcome: Outcome::Uploaded,
                digest,
                uploaded: Uploaded {
                    files: 1,
                    raw: digest.len,
                    stored,
                },
            })
        }
        Err(StorageError::AlreadyExists { .. }) => {
            let archived = archived_digest(ctx, &name).await?;
            if archived == Some(digest) {
                tracing::debug!(file = %name, "already archived with identical contents");
                Ok(Pushed {
                    outcome: Outcome::AlreadyArchived,
                    digest,
                    uploaded: Uploaded::default(),
                })
            } else {
                Err(WalError::Conflict {
                    name: name.to_string(),
                    location: ctx.storage.location().to_string(),
                    archived: archived
                        .map_or_else(|| "no digest in header".into(), |d| d.to_string()),
                    local: digest.to_string(),
                })
            }
        }
        // When the encoder failed, its error says why; the storage's only says
        // that the body ended badly.
        Err(e) => Err(encoding.err().map_or_else(|| e.into(), WalError::from)),
    }
}

/// The digest recorded in an archived object's header, read without decrypting.
async fn archived_digest(
    ctx: &Context,
    name: &WalFileName,
) -> Result<Option<PlainDigest>, WalError> {
    use futures::TryStreamExt;
    let key = wal_key(name);
    let mut stream = ctx.storage.get(&key).await?;
    let mut head = Vec::new();
    while head.len() < crate::codec::format::HEADER_LEN + crate::codec::format::DIGEST_FIELD_LEN {
        match stream.try_next().await {
            Ok(Some(b)) => head.extend_from_slice(&b),
            Ok(None) => break,
            Err(e) => {
                return Err(WalError::File {
                    path: PathBuf::from(key.as_str()),
                    source: e,
                });
            }
        }
    }
    Ok(Header::read_from(&mut &head[..], key.as_str())?.digest)
}

/// Opens a WAL file for archiving and hashes it, checking that a segment is
/// whole: its size is a valid segment size and matches the size its first page
/// header declares. Returns the file positioned at its start.
async fn open_wal_file(
    path: PathBuf,
    name: WalFileName,
) -> Result<(std::fs::File, PlainDigest), WalError> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let io = WalError::file(&path);
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(WalError::file(&path))?.len();
        if matches!(name, WalFileName::Segment(_) | WalFileName::Partial(_)) {
            let bad = |reason: String| WalError::BadSegment {
                path: path.clone(),
                reason,
            };
            let size = SegmentSize::new(len).map_err(|e| bad(e.to_string()))?;
            let mut first = Vec::with_capacity(LONG_HEADER_READ);
            (&mut file)
                .take(LONG_HEADER_READ as u64)
                .read_to_end(&mut first)
                .map_err(WalError::file(&path))?;
            let header = LongPageHeader::parse(&first).map_err(|e| bad(e.to_string()))?;
            if header.segment_size != size {
                return Err(bad(format!(
                    "file is {len} bytes but its header says segments are {} bytes",
                    header.segment_size.bytes()
                )));
            }
            file.rewind().map_err(WalError::file(&path))?;
        }
        let digest = PlainDigest::of_reader(&mut file).map_err(WalError::file(&path))?;
        file.rewind().map_err(WalError::file(&path))?;
        Ok((file, digest))
    })
    .await
    .map_err(|e| WalError::File {
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    })?
}

/// Enough of a segment's start for its long page header.
const LONG_HEADER_READ: usize = crate::pg::wal::LONG_PAGE_HEADER_LEN;

fn read_marker(path: &Path) -> Option<PlainDigest> {
    let text = std::fs::read_to_string(path).ok()?;
    let (len, hex) = text.trim().split_once(' ')?;
    let mut blake3 = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in blake3.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(PlainDigest {
        len: len.parse().ok()?,
        blake3,
    })
}

fn record_marker(markers: &Path, name: &WalFileName, d: PlainDigest) -> std::io::Result<()> {
    std::fs::create_dir_all(markers)?;
    write_atomically(
        &markers.join(name.to_string()),
        format!("{} {}\n", d.len, crate::codec::hex(&d.blake3)).as_bytes(),
    )
}

/// Segments (other than `current`) that PostgreSQL has marked ready, not yet
/// pushed ahead, oldest first, at most `n`.
fn ready_segments(
    pg_wal: &Path,
    current: &WalFileName,
    markers: &Path,
    n: usize,
) -> Vec<(WalFileName, PathBuf)> {
    if n == 0 {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<WalFileName> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")?
                .parse::<WalFileName>()
                .ok()
        })
        .filter(|w| w.segment().is_some() && w != current)
        .filter(|w| !markers.join(w.to_string()).exists())
        .collect();
    ready.sort_by_key(|w| w.segment());
    ready
        .into_iter()
        .take(n)
        .map(|w| (w, pg_wal.join(w.to_string())))
        .filter(|(_, p)| p.exists())
        .collect()
}

/// Drops markers whose `.ready` file is gone (PostgreSQL archived or removed the
/// segment), and prefetched segments left over from a finished recovery.
fn tidy_state(pg_wal: &Path, markers: &Path) {
    if let Ok(entries) = std::fs::read_dir(markers) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !pg_wal
                .join("archive_status")
                .join(format!("{name}.ready"))
                .exists()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // archive_command runs in the data directory; no signal file means recovery is over.
    let prefetch = state_dir(pg_wal).join("prefetch");
    if prefetch.exists()
        && !Path::new("recovery.signal").exists()
        && !Path::new("standby.signal").exists()
    {
        let _ = std::fs::remove_dir_all(prefetch);
    }
}
