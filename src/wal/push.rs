//! `cairn wal-push <path>` (PostgreSQL's `archive_command`).
//!
//! A segment is checked before anything is stored: its long page header must
//! fit its name ([`super::check`]), it must belong to this data directory's
//! cluster, and that cluster must be the archive's (`archive::registry`,
//! consulted once per storage and remembered in `pg_wal/.cairn/`).
//!
//! The file goes to `wal/<name>` with create-if-absent, so an archived file is
//! never replaced by a different one: if the name exists, the stored object
//! is read back and decoded; identical contents are success (a retry after a
//! crash), different contents a loud failure, and a stored object that does
//! not decode (truncated, bit-flipped) is replaced by this good copy, the one
//! case where replacing is right, with a warning and a metric.
//!
//! Lookahead: when a segment has to be uploaded, up to N other segments with
//! `archive_status/*.ready` go up with it, concurrently, each leaving a marker
//! `pg_wal/.cairn/pushed/<name>` that holds its digest and the storage it went
//! to. PostgreSQL's later call for such a segment finds the marker, checks the
//! file still has that digest and the storage is still the configured one,
//! and returns at once. PostgreSQL's `.ready` files are never touched: it
//! alone decides what counts as archived.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::{WalError, check, state_dir};
use crate::Context;
use crate::archive::{keys, registry};
use crate::codec::{CodecError, CodecSettings, Decoder, PlainDigest, encode_stream};
use crate::durable::{self, Durability};
use crate::pg::wal::{LONG_PAGE_HEADER_LEN, SegmentSize, SystemId, WalFileName};
use crate::storage::{PutBody, PutMode, StorageError};

/// What happened to the file PostgreSQL asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Uploaded,
    /// An identical copy was already in the archive (a retry after a crash).
    AlreadyArchived,
    /// The archived copy was damaged and has been replaced by this one.
    Replaced,
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
    /// Damaged archived objects replaced.
    pub replaced: u64,
}

impl Uploaded {
    fn add(self, other: Uploaded) -> Uploaded {
        Uploaded {
            files: self.files + other.files,
            raw: self.raw + other.raw,
            stored: self.stored + other.stored,
            replaced: self.replaced + other.replaced,
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
    let location = ctx.storage.location().to_string();

    if name.segment().is_some() {
        let marker = markers.join(file_name);
        let loc = location.clone();
        let marked = crate::blocking(move || Ok::<_, WalError>(read_marker(&marker, &loc))).await?;
        if let Some(marked) = marked {
            let (_, digest, _) = open_wal_file(path.to_path_buf(), name).await?;
            let marker = markers.join(file_name);
            crate::blocking(move || {
                let _ = std::fs::remove_file(marker);
                Ok::<_, WalError>(())
            })
            .await?;
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
    }

    let ahead = {
        let (pg_wal, markers) = (pg_wal.clone(), markers.clone());
        let spool = ctx.config.wal_fetch_spool.clone();
        let configured_lookahead = if name.segment().is_some() {
            lookahead
        } else {
            0
        };
        crate::blocking(move || {
            tidy_state(&pg_wal, &markers, spool.as_deref());
            Ok::<_, WalError>(ready_segments(
                &pg_wal,
                &name,
                &markers,
                configured_lookahead,
            ))
        })
        .await?
    };
    let budget = Semaphore::new(BUDGET_KIB as usize);

    // Created first, so it is first in the budget's queue.
    let current = push_one(ctx, path.to_path_buf(), name, &budget);
    let others = futures::stream::iter(ahead)
        .map(|(n, p)| {
            let (budget, markers, location) = (&budget, &markers, &location);
            async move {
                match push_one(ctx, p.clone(), n, budget).await {
                    Ok(pushed) => {
                        let marker = markers.join(n.to_string());
                        let text = marker_text(pushed.digest, location);
                        let markers = markers.clone();
                        let recorded = durable::write(marker.clone(), text.into_bytes(), Durability::Atomic);
                        let made = tokio::task::spawn_blocking(move || std::fs::create_dir_all(markers)).await;
                        let result = match made {
                            Ok(Ok(())) => recorded.await,
                            Ok(Err(e)) => Err(e),
                            Err(e) => Err(std::io::Error::other(e)),
                        };
                        match result {
                            Ok(()) => (1, pushed.uploaded),
                            Err(e) => {
                                tracing::warn!(segment = %n, error = %e, "could not record lookahead marker");
                                (0, pushed.uploaded)
                            }
                        }
                    }
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
    let (file, digest, system) = open_wal_file(path.clone(), name).await?;
    if let (Some(system), Some(segment)) = (system, name.segment().or(partial_of(&name))) {
        admit(ctx, &path, system, segment).await?;
    }
    let stored = upload(ctx, &path, name, file, digest, PutMode::CreateIfAbsent).await;
    match stored {
        Ok(stored) => Ok(Pushed {
            outcome: Outcome::Uploaded,
            digest,
            uploaded: Uploaded {
                files: 1,
                raw: digest.len,
                stored,
                replaced: 0,
            },
        }),
        Err(WalError::Storage(StorageError::AlreadyExists { .. })) => {
            match compare_archived(ctx, &name, digest).await? {
                Archived::Identical => {
                    tracing::debug!(file = %name, "already archived with identical contents");
                    Ok(Pushed {
                        outcome: Outcome::AlreadyArchived,
                        digest,
                        uploaded: Uploaded::default(),
                    })
                }
                Archived::Different(archived) => Err(WalError::Conflict {
                    name: name.to_string(),
                    location: ctx.storage.location().to_string(),
                    archived,
                    local: digest.to_string(),
                }),
                Archived::Damaged(reason) => {
                    tracing::warn!(
                        file = %name,
                        object = %keys::object_name(ctx.storage.location(), &keys::wal(&name)),
                        %reason,
                        "the archived copy is damaged; replacing it with this file, which is whole"
                    );
                    let (file, again, _) = open_wal_file(path.clone(), name).await?;
                    if again != digest {
                        return Err(WalError::BadSegment {
                            path,
                            reason: "it changed while it was being archived".into(),
                        });
                    }
                    let stored = upload(ctx, &path, name, file, digest, PutMode::Overwrite).await?;
                    Ok(Pushed {
                        outcome: Outcome::Replaced,
                        digest,
                        uploaded: Uploaded {
                            files: 1,
                            raw: digest.len,
                            stored,
                            replaced: 1,
                        },
                    })
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// Stores the WAL file at `path` as wal-push would (never over a different
/// file of that name), for wal-receive's completed segments and history
/// files.
pub(crate) async fn store(ctx: &Context, path: &Path, name: WalFileName) -> Result<(), WalError> {
    let budget = Semaphore::new(memory_cost(ctx, &ctx.config.codec(), 16 << 20) as usize);
    push_one(ctx, path.to_path_buf(), name, &budget)
        .await
        .map(|_| ())
}

/// Stores wal-receive's open segment as `name` (a `.partial`), replacing
/// the previous one: the one object in the archive that is ever replaced.
pub(crate) async fn store_partial(
    ctx: &Context,
    path: &Path,
    name: WalFileName,
) -> Result<(), WalError> {
    let (file, digest, _) = open_wal_file(path.to_path_buf(), name).await?;
    upload(ctx, path, name, file, digest, PutMode::Overwrite)
        .await
        .map(|_| ())
}

/// The segment of a `.partial` file, which carries a segment's header.
fn partial_of(name: &WalFileName) -> Option<crate::pg::wal::Segment> {
    match name {
        WalFileName::Partial(s) => Some(*s),
        _ => None,
    }
}

/// Encodes `file` and stores it as WAL file `name`; returns the stored size.
async fn upload(
    ctx: &Context,
    path: &Path,
    name: WalFileName,
    file: std::fs::File,
    digest: PlainDigest,
    mode: PutMode,
) -> Result<u64, WalError> {
    let encoded = encode_stream(
        file,
        ctx.config.codec(),
        Some(digest),
        path.display().to_string(),
    );
    let put = ctx
        .storage
        .put(&keys::wal(&name), PutBody::Stream(encoded.body), mode)
        .await;
    let encoding = encoded.task.await.map_err(|e| WalError::File {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    match (encoding, put) {
        (Ok((_, stored)), Ok(())) => Ok(stored),
        // The cause, not its echo: an encoder that saw the upload stop
        // reading reports the storage's failure; an upload whose body broke
        // reports the encoder's (or the file's).
        (Err(e), Err(put)) if e.is_stage_stopped() => Err(put.into()),
        (Err(e), _) => Err(e.into()),
        (Ok(_), Err(put)) => Err(put.into()),
    }
}

/// What the archive holds under a name that is already taken.
enum Archived {
    Identical,
    /// Another WAL file's contents, whole (its digest).
    Different(String),
    /// An object that does not decode to any whole file.
    Damaged(String),
}

/// Reads the archived object back and decodes it, to prove it is exactly
/// `digest`'s bytes. Without the identity an encrypted object cannot be
/// decoded: then only the digest in its header can be compared.
async fn compare_archived(
    ctx: &Context,
    name: &WalFileName,
    digest: PlainDigest,
) -> Result<Archived, WalError> {
    let key = keys::wal(name);
    let object = keys::object_name(ctx.storage.location(), &key);
    let keyring = ctx.keyring()?;
    let stream = ctx.storage.get(&key).await?;
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    // `None`: encrypted, and this host has no identity to decrypt it.
    let decoded = crate::blocking(move || -> Result<Option<Archived>, WalError> {
        let mut decoder = match Decoder::new(reader, keyring.as_ref(), &object) {
            Ok(d) => d,
            Err(CodecError::NoIdentity { .. }) => return Ok(None),
            Err(e) => return damaged_or(e).map(Some),
        };
        if let Err(e) = std::io::copy(&mut decoder, &mut std::io::sink()) {
            return damaged_or(CodecError::from_io(e)).map(Some);
        }
        Ok(Some(match decoder.verified_digest() {
            None => Archived::Damaged("it did not verify".into()),
            Some(found) if found == digest => Archived::Identical,
            Some(found) => Archived::Different(found.to_string()),
        }))
    })
    .await?;
    match decoded {
        Some(archived) => Ok(archived),
        None => {
            // A host that only writes: the header's digest is all it can compare.
            tracing::debug!(file = %name, "cannot decrypt the archived copy (no age identity): comparing the digest in its header only");
            header_only(ctx, name, digest).await
        }
    }
}

/// A decoding failure: damage when the bytes are wrong, else the error
/// (storage trouble, a wrong key) for PostgreSQL to retry.
fn damaged_or(e: CodecError) -> Result<Archived, WalError> {
    match e {
        CodecError::Corrupt { .. } | CodecError::NotAnObject { .. } => {
            Ok(Archived::Damaged(e.to_string()))
        }
        other => Err(WalError::Codec(other)),
    }
}

/// The digest recorded in an archived object's header, compared without
/// decrypting.
async fn header_only(
    ctx: &Context,
    name: &WalFileName,
    digest: PlainDigest,
) -> Result<Archived, WalError> {
    use futures::TryStreamExt;
    let key = keys::wal(name);
    let mut stream = ctx.storage.get(&key).await?;
    let mut head = Vec::new();
    while head.len() < crate::codec::format::HEADER_LEN + crate::codec::format::DIGEST_FIELD_LEN {
        match stream.try_next().await {
            Ok(Some(b)) => head.extend_from_slice(&b),
            Ok(None) => break,
            Err(e) => return Err(crate::wal::read_error(e)),
        }
    }
    let object = keys::object_name(ctx.storage.location(), &key);
    match crate::codec::Header::read_from(&mut &head[..], &object) {
        Ok(h) => Ok(match h.digest {
            Some(d) if d == digest => Archived::Identical,
            Some(d) => Archived::Different(d.to_string()),
            None => Archived::Different("no digest in header".into()),
        }),
        Err(e) => damaged_or(e),
    }
}

/// Admits `system`'s WAL to the archive (see `archive::registry`) once per
/// storage, remembering it in `pg_wal/.cairn/` so later pushes ask nothing.
async fn admit(
    ctx: &Context,
    path: &Path,
    system: SystemId,
    segment: crate::pg::wal::Segment,
) -> Result<(), WalError> {
    let pg_wal = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let hash = blake3::hash(ctx.storage.location().as_bytes()).to_hex();
    let remembered = state_dir(&pg_wal).join(format!("admitted-{}", &hash[..16]));
    let expected = system.to_string();
    let known = {
        let remembered = remembered.clone();
        crate::blocking(move || {
            Ok::<_, WalError>(
                std::fs::read_to_string(&remembered).is_ok_and(|t| t.trim() == expected),
            )
        })
        .await?
    };
    if known {
        return Ok(());
    }
    registry::admit(ctx, system, segment).await?;
    let dir = state_dir(&pg_wal);
    let text = format!("{system}\n").into_bytes();
    let result = crate::blocking(move || {
        std::fs::create_dir_all(&dir).map_err(WalError::file(&dir))?;
        durable::write_file(&remembered, &text, Durability::Atomic)
            .map_err(WalError::file(&remembered))
    })
    .await;
    if let Err(e) = result {
        // Only costs a request on the next push.
        tracing::debug!(error = %e, "could not remember the archive's admission");
    }
    Ok(())
}

/// Opens a WAL file for archiving and hashes it. A segment (or `.partial`)
/// must be whole and what its name says: a valid size that its header
/// declares, its header placing it at its name's position; and it must be
/// this data directory's cluster's, when the directory says which that is.
/// Returns the file positioned at its start, the digest, and the cluster of
/// a segment.
async fn open_wal_file(
    path: PathBuf,
    name: WalFileName,
) -> Result<(std::fs::File, PlainDigest, Option<SystemId>), WalError> {
    crate::blocking(move || {
        let io = WalError::file(&path);
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(WalError::file(&path))?.len();
        let bad = |reason: String| WalError::BadSegment {
            path: path.clone(),
            reason,
        };
        let mut system = None;
        if matches!(name, WalFileName::Segment(_) | WalFileName::Partial(_)) {
            SegmentSize::new(len).map_err(|e| bad(e.to_string()))?;
            let mut first = Vec::with_capacity(LONG_PAGE_HEADER_LEN);
            (&mut file)
                .take(LONG_PAGE_HEADER_LEN as u64)
                .read_to_end(&mut first)
                .map_err(WalError::file(&path))?;
            let own = check::data_directory_system(&path);
            let header = check::check(&name, &first, len, own).map_err(bad)?;
            system = header.map(|h| SystemId(h.system_identifier));
            file.rewind().map_err(WalError::file(&path))?;
        }
        let digest = PlainDigest::of_reader(&mut file).map_err(WalError::file(&path))?;
        file.rewind().map_err(WalError::file(&path))?;
        Ok((file, digest, system))
    })
    .await
}

/// A marker's text: the digest, then the storage it vouches for.
fn marker_text(d: PlainDigest, location: &str) -> String {
    format!("{} {}\n{location}\n", d.len, crate::codec::hex(&d.blake3))
}

/// The digest a marker vouches for in storage `location`; `None` for a
/// marker of another storage (the configuration changed since), an older
/// cairn's marker that names none, or anything unreadable.
fn read_marker(path: &Path, location: &str) -> Option<PlainDigest> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let (len, hex) = lines.next()?.trim().split_once(' ')?;
    if lines.next()? != location {
        return None;
    }
    let mut blake3 = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in blake3.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(PlainDigest {
        len: len.parse().ok()?,
        blake3,
    })
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
/// segment), and the prefetch spool of a finished recovery.
fn tidy_state(pg_wal: &Path, markers: &Path, spool: Option<&Path>) {
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
    if !Path::new("recovery.signal").exists()
        && !Path::new("standby.signal").exists()
        && let Some(s) = super::spool::Spool::existing(pg_wal, spool)
    {
        s.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_vouch_only_for_their_storage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        let d = PlainDigest {
            len: 16 << 20,
            blake3: [7; 32],
        };
        std::fs::write(&p, marker_text(d, "s3://a/p/")).unwrap();
        assert_eq!(read_marker(&p, "s3://a/p/"), Some(d));
        assert_eq!(read_marker(&p, "s3://b/p/"), None);
        // An older cairn's marker names no storage: not trusted.
        std::fs::write(&p, format!("{} {}\n", d.len, crate::codec::hex(&d.blake3))).unwrap();
        assert_eq!(read_marker(&p, "s3://a/p/"), None);
    }
}
