//! `cairn backup-push --remote`: a base backup over the replication protocol,
//! as `pg_basebackup` takes one, for hosts that cannot see the data directory
//! (a Kubernetes CronJob's pod). The server's tar streams (one per tablespace)
//! are re-split into cairn parts, hashed file by file, encoded and uploaded
//! as they arrive, exactly like a local backup's; pg_control, backup_label,
//! tablespace_map and the server's own `backup_manifest` go into the control
//! part. Before the manifest is written, the WAL from start to stop must have
//! reached the archive. A remote delta is PostgreSQL 17's incremental
//! backup ([`super::incremental`]).

use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::Bytes;

use super::BackupError;
use super::incremental;
use super::lock::cluster_lock;
use super::push::PushOptions;
use super::store::{self, Lineage, Taken, part_name, store_part, upload_control_part};
use super::tar_split::{ControlFile, PartStream, Placements, append_dir, append_file};
use crate::Context;
use crate::archive::manifest::{CorruptPage, FileEntry, Manifest, PartEntry, Stored};
use crate::codec::{PipeReader, PipeWriter, pipe};
use crate::pg::client::{PgError, PgSession, check_archiving};
use crate::pg::datadir::Tablespace;
use crate::pg::replication::{ReplicationConn, Reply};
use crate::pg::wal::{Lsn, Segment, SegmentSize, SystemId, TimelineId};
use crate::progress::Progress;
use crate::storage::PutMode;

/// Takes a base backup over a replication connection; returns its manifest.
pub async fn push_remote(ctx: &Context, opts: &PushOptions) -> Result<Manifest, BackupError> {
    // A plain session beside the replication one, for the lock that keeps
    // two backups of this cluster into this storage apart.
    // Its database: the configured one, else `postgres` rather than libpq's
    // default (the user's name), which a backup role rarely has.
    let mut plain = opts.postgres.clone();
    if plain.dbname.is_none() && std::env::var_os("PGDATABASE").is_none_or(|d| d.is_empty()) {
        plain.dbname = Some("postgres".into());
    }
    let session = PgSession::connect(&plain).await?;
    let mut conn = ReplicationConn::connect(&opts.postgres).await?;
    let server_id = session.system_identifier().await?;
    cluster_lock(ctx, &session).await?;
    let system = conn.identify_system().await?;
    if system.system_identifier != server_id {
        return Err(BackupError::BadArgument(format!(
            "the replication and SQL connections reach different clusters ({} and {}): \
             check PGHOST/PGPORT",
            system.system_identifier, server_id
        )));
    }
    let mode = conn.show("archive_mode").await?;
    let standby = conn.version_num >= 140000 && conn.show("in_hot_standby").await? == "on";
    let command = conn.show("archive_command").await?;
    let library = if conn.version_num >= 150000 {
        conn.show("archive_library").await?
    } else {
        String::new()
    };
    check_archiving(&mode, standby, &command, &library)?;
    let segment_size = conn.show("wal_segment_size").await?;
    let segment_size = parse_size(&segment_size)
        .and_then(|b| SegmentSize::new(b).ok())
        .ok_or_else(|| {
            BackupError::BadArgument(format!(
                "server reports an invalid wal_segment_size {segment_size:?}"
            ))
        })?;

    let sysid = SystemId(system.system_identifier);
    let mut parent = incremental::choose(ctx, opts.kind, &mut conn, sysid, system.timeline).await?;
    if let Some(p) = &parent
        && let Err(e) = conn.upload_manifest(&p.server_manifest).await
    {
        tracing::info!(
            "taking a full backup: the server does not take {}'s backup_manifest to build on: {e}",
            p.delta.parent
        );
        parent = None;
    }

    let (start_time, label) = opts.start();
    let command = |incremental: bool| {
        base_backup_command(
            conn.version_num,
            &label,
            opts.fast_checkpoint,
            opts.max_rate,
            ctx.progress.shown(),
            incremental,
        )
    };
    let (full, incremental) = (command(false), command(true));
    conn.send_query(if parent.is_some() {
        &incremental
    } else {
        &full
    })
    .await?;
    let (start_lsn, timeline) = match position(&mut conn, "start").await {
        // What the server says when it cannot build on the parent (its
        // WAL summaries do not reach back, another timeline, summaries
        // turned off): a full backup instead.
        Err(e) if parent.is_some() => {
            let p = parent.take().map(|p| p.delta.parent).unwrap_or_default();
            tracing::info!("taking a full backup: the server cannot build on {p}: {e}");
            conn.send_query(&full).await?;
            position(&mut conn, "start").await?
        }
        other => other?,
    };
    let (tablespaces, estimate) = tablespace_rows(&mut conn).await?;
    let start_file = Segment::containing(timeline, start_lsn, segment_size);
    let name = match &parent {
        Some(p) => format!("base_{start_file}_D_{}", p.delta.parent_start_wal_file),
        None => format!("base_{start_file}"),
    };
    match &parent {
        Some(p) => {
            tracing::info!(backup = %name, lsn = %start_lsn, parent = %p.delta.parent, depth = p.delta.chain_depth, "remote incremental backup started")
        }
        None => {
            tracing::info!(backup = %name, lsn = %start_lsn, server = system.system_identifier, "remote backup started")
        }
    }
    ctx.progress.begin(estimate, None);
    store::check_name_free(ctx, &name, standby).await?;
    let running = store::begin(
        ctx,
        &name,
        sysid,
        timeline,
        start_lsn,
        segment_size,
        parent.as_ref().map(|p| p.delta.parent.as_str()),
        start_time,
    )
    .await?;

    // The splitter thread turns the server's archives into parts; each part
    // is uploaded by a task of its own while the next one fills.
    let (archives, archive_rx) = sync_channel::<(String, PipeReader)>(1);
    let (parts, mut part_rx) = tokio::sync::mpsc::channel::<NewPart>(1);
    let part_size = opts.part_size;
    let splitter = tokio::task::spawn_blocking(move || resplit(archive_rx, parts, part_size));
    let backup = name.as_str();
    let uploads = async {
        // Every part's upload runs while the splitter fills the next.
        let mut running = futures::stream::FuturesUnordered::new();
        let mut done = Vec::new();
        let mut open = true;
        while open || !running.is_empty() {
            tokio::select! {
                next = part_rx.recv(), if open => match next {
                    Some((index, reader, placements)) => running.push(async move {
                        let name = part_name(index);
                        let stored = store_part(ctx, backup, name, false, reader, Some(placements)).await;
                        ctx.progress.part_done();
                        (index, stored)
                    }),
                    None => open = false,
                },
                Some(finished) = futures::StreamExt::next(&mut running) => done.push(finished),
            }
        }
        done.sort_by_key(|(i, _)| *i);
        done.into_iter()
            .map(|(_, r)| r)
            .collect::<Result<Vec<PartEntry>, BackupError>>()
    };
    // The connection is read on a thread of its own: handing the stream to
    // the splitter blocks (its pipes are bounded), and the uploads, polled
    // here, must go on meanwhile.
    let runtime = tokio::runtime::Handle::current();
    let listed = tablespaces.clone();
    let progress = ctx.progress.clone();
    let receive = tokio::task::spawn_blocking(move || {
        let received = runtime.block_on(receive_archives(&mut conn, archives, &listed, &*progress));
        (conn, received)
    });
    let (receive, uploaded) = futures::join!(receive, uploads);
    let (mut conn, received) = receive.map_err(BackupError::task)?;
    let split = splitter.await.map_err(BackupError::task)?;
    // The cause, in the order the stages feed each other: the server's
    // stream, the splitter reading it, then storage. A stage that only saw
    // its neighbour stop is not the cause.
    if let Err(e) = &received
        && !is_splitter_gone(e)
    {
        return Err(received.err().unwrap_or_else(splitter_gone));
    }
    let (files, mut control_files, data_parts, mut parts) = match (split, uploaded) {
        (Ok((files, held, n)), Ok(parts)) => (files, held, n, parts),
        // A splitter that could not write found the upload stopped: the
        // upload's error is the cause.
        (Err(e), Err(upload)) if is_broken_pipe(&e) => return Err(upload),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let pg_manifest = received?;
    ctx.progress.end();
    let (stop_lsn, _) = position(&mut conn, "end").await?;
    // The server checks page checksums itself (VERIFY_CHECKSUMS, on by
    // default): one warning per bad page, then, after everything was sent,
    // an error (SQLSTATE XX001) in place of the command's completion.
    let corrupt_pages = match finish_query(&mut conn).await {
        Ok(()) => corrupt_pages_in(&conn.notices),
        Err(e) if conn.last_error_code.as_deref() == Some(DATA_CORRUPTED) => {
            let found = corrupt_pages_in(&conn.notices);
            if found.is_empty() {
                tracing::warn!(
                    "the server reports page checksum failures in words cairn cannot read \
                     (lc_messages is not English): see the server log for the pages; {e}"
                );
            }
            if opts.fail_on_page_corruption && found.is_empty() {
                return Err(e);
            }
            found
        }
        Err(e) => return Err(e),
    };
    super::push::check_pages(&name, &corrupt_pages, opts.fail_on_page_corruption)?;

    if let Some(m) = pg_manifest {
        // Kept plain beside the backup for the next incremental; in the
        // restore only of a full backup (an incremental's lists
        // INCREMENTAL files, which the restore does not have).
        let key = crate::archive::keys::server_manifest(&name)?;
        crate::archive::objects::write_plain(ctx, &key, &m, PutMode::Overwrite).await?;
        if parent.is_none() {
            control_files.push(ControlFile::new("backup_manifest", m));
        }
    }
    if parent.is_some() {
        for f in &mut control_files {
            if f.path == "backup_label" {
                f.bytes = incremental::restorable_label(&f.bytes);
            }
        }
    }
    for needed in ["global/pg_control", "backup_label"] {
        if !control_files.iter().any(|f| f.path == needed) {
            return Err(BackupError::BadArgument(format!(
                "the server's base backup has no {needed}; nothing was stored as a backup"
            )));
        }
    }
    let backup_label = text_of(&control_files, "backup_label");
    let tablespace_map = control_files
        .iter()
        .any(|f| f.path == "tablespace_map")
        .then(|| text_of(&control_files, "tablespace_map"));
    let (control, control_entries) =
        upload_control_part(ctx, &name, data_parts, control_files).await?;

    let mut files = files;
    files.extend(control_entries);
    parts.push(control);
    let taken = Taken {
        name,
        lineage: parent.map(|p| Lineage {
            parent: p.delta.parent,
            from_lsn: p.delta.from_lsn,
            chain_depth: p.delta.chain_depth,
        }),
        remote: true,
        start_lsn,
        stop_lsn,
        timeline,
        segment_size,
        start_time,
        system_identifier: SystemId(system.system_identifier),
        pg_version: conn.version_num,
        data_directory: String::new(),
        tablespaces,
        label,
        permanent: opts.permanent,
        backup_label,
        tablespace_map,
        corrupt_pages,
    };
    let manifest = taken.manifest(ctx, parts, files);
    // BASE_BACKUP did not wait for archiving: publish waits for the WAL.
    store::publish(ctx, &manifest, running, opts.archive_timeout).await?;
    // The lock ends with the session, after the manifest.
    drop(session);
    Ok(manifest)
}

/// `BASE_BACKUP` as the server's version spells it: the option list on 15+,
/// keywords before. No WAL in the stream (the archive has it), the server's
/// manifest, the tablespace map, and no waiting for archiving inside the
/// command: cairn waits for the archive itself, with its own timeout. With
/// `progress`, the server first estimates the size (a walk of its directories).
fn base_backup_command(
    version_num: u32,
    label: &str,
    fast: bool,
    max_rate: u64,
    progress: bool,
    incremental: bool,
) -> String {
    let label = label.replace('\'', "''");
    // The server paces in kB/s, from 32 kB/s to 1 GB/s.
    let rate = (max_rate > 0).then(|| (max_rate / 1024).clamp(32, 1_048_576));
    if version_num >= 150000 {
        format!(
            "BASE_BACKUP (LABEL '{label}', CHECKPOINT '{}', WAIT false, MANIFEST 'yes', \
             TABLESPACE_MAP true{}{}{})",
            if fast { "fast" } else { "spread" },
            rate.map_or_else(String::new, |r| format!(", MAX_RATE {r}")),
            if progress { ", PROGRESS true" } else { "" },
            if incremental { ", INCREMENTAL" } else { "" }
        )
    } else {
        format!(
            "BASE_BACKUP LABEL '{label}'{}{} NOWAIT{} MANIFEST 'yes' TABLESPACE_MAP",
            if progress { " PROGRESS" } else { "" },
            if fast { " FAST" } else { "" },
            rate.map_or_else(String::new, |r| format!(" MAX_RATE {r}"))
        )
    }
}

/// The `(LSN, timeline)` result set that starts and ends `BASE_BACKUP`.
async fn position(
    conn: &mut ReplicationConn,
    which: &str,
) -> Result<(Lsn, TimelineId), BackupError> {
    let bad = || PgError::Query {
        what: "BASE_BACKUP",
        message: format!("no {which} position in the server's answer"),
    };
    loop {
        match conn.next_reply().await? {
            Reply::Rows(rows) => {
                let row = rows.first().ok_or_else(bad)?;
                let lsn: Lsn = row
                    .first()
                    .and_then(|v| v.as_deref())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(bad)?;
                let tli = row
                    .get(1)
                    .and_then(|v| v.as_deref())
                    .and_then(|v| v.parse().ok())
                    .map(TimelineId)
                    .ok_or_else(bad)?;
                return Ok((lsn, tli));
            }
            Reply::Ready => return Err(bad().into()),
            _ => {}
        }
    }
}

/// The tablespace result set: `(oid, location, size)`, the data directory
/// itself as a row without an OID; with the total size in bytes, estimated
/// by the server (0 without `PROGRESS`).
async fn tablespace_rows(
    conn: &mut ReplicationConn,
) -> Result<(Vec<Tablespace>, u64), BackupError> {
    match conn.next_reply().await? {
        Reply::Rows(rows) => {
            let kilobytes: u64 = rows
                .iter()
                .filter_map(|r| r.get(2)?.as_deref()?.parse::<u64>().ok())
                .sum();
            let tablespaces = rows
                .iter()
                .filter_map(|r| {
                    let oid = r.first()?.as_deref()?.parse().ok()?;
                    let location = r.get(1)?.as_deref()?;
                    Some(Tablespace {
                        oid,
                        location: location.into(),
                    })
                })
                .collect();
            Ok((tablespaces, kilobytes * 1024))
        }
        _ => Err(PgError::Query {
            what: "BASE_BACKUP",
            message: "no tablespace list in the server's answer".into(),
        }
        .into()),
    }
}

/// Reads the archives of the COPY stream(s), hands each to the splitter as a
/// tar stream, and returns the server's backup manifest.
async fn receive_archives(
    conn: &mut ReplicationConn,
    archives: SyncSender<(String, PipeReader)>,
    tablespaces: &[Tablespace],
    progress: &dyn Progress,
) -> Result<Option<Vec<u8>>, BackupError> {
    let modern = conn.version_num >= 150000;
    // Before 15, one COPY per tablespace in the order of the list (the data
    // directory last), then one for the manifest.
    let mut order: Vec<String> = tablespaces
        .iter()
        .map(|t| format!("pg_tblspc/{}/", t.oid))
        .chain([String::new()])
        .collect();
    order.reverse();
    let mut current: Option<PipeWriter> = None;
    let mut manifest: Option<Vec<u8>> = None;
    let mut in_manifest = false;
    let start = |prefix: String, current: &mut Option<PipeWriter>| -> Result<(), BackupError> {
        finish(current.take())?;
        let (writer, reader) = pipe();
        archives
            .send((prefix, reader))
            .map_err(|_| splitter_gone())?;
        *current = Some(writer);
        Ok(())
    };
    loop {
        match conn.next_reply().await? {
            Reply::CopyOut if !modern => match order.pop() {
                Some(prefix) => start(prefix, &mut current)?,
                None => {
                    finish(current.take())?;
                    in_manifest = true;
                    manifest = Some(Vec::new());
                }
            },
            Reply::CopyOut => {}
            Reply::CopyData(data) if !modern => {
                if in_manifest {
                    manifest
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&data);
                } else {
                    progress.advance(data.len() as u64);
                    send(&mut current, data)?;
                }
            }
            Reply::CopyData(data) => match data.first() {
                Some(b'n') => {
                    let name = data[1..].split(|&b| b == 0).next().unwrap_or_default();
                    let name = String::from_utf8_lossy(name).into_owned();
                    start(archive_prefix(&name)?, &mut current)?;
                }
                Some(b'd') if in_manifest => manifest
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(&data[1..]),
                Some(b'd') => {
                    progress.advance(data.len() as u64 - 1);
                    send(&mut current, data.slice(1..))?
                }
                Some(b'm') => {
                    finish(current.take())?;
                    in_manifest = true;
                    manifest = Some(Vec::new());
                }
                // Progress reports.
                Some(b'p') => {}
                _ => {
                    return Err(PgError::Query {
                        what: "BASE_BACKUP",
                        message: "unknown message in the backup stream".into(),
                    }
                    .into());
                }
            },
            Reply::CopyDone => {
                finish(current.take())?;
                // 15+ sends one COPY; before, the manifest's COPY is the last.
                if modern || in_manifest {
                    return Ok(manifest);
                }
            }
            Reply::Rows(_) | Reply::Ready | Reply::CopyIn => {
                return Err(PgError::Query {
                    what: "BASE_BACKUP",
                    message: "the backup stream ended early".into(),
                }
                .into());
            }
        }
    }
}

/// `base.tar` is the data directory; `<oid>.tar` a tablespace.
fn archive_prefix(name: &str) -> Result<String, BackupError> {
    let stem = name.strip_suffix(".tar").unwrap_or(name);
    if stem == "base" {
        return Ok(String::new());
    }
    stem.parse::<u32>()
        .map(|oid| format!("pg_tblspc/{oid}/"))
        .map_err(|_| {
            PgError::Query {
                what: "BASE_BACKUP",
                message: format!("unexpected archive {name:?} in the backup stream"),
            }
            .into()
        })
}

fn send(current: &mut Option<PipeWriter>, data: Bytes) -> Result<(), BackupError> {
    let writer = current.as_mut().ok_or_else(|| PgError::Query {
        what: "BASE_BACKUP",
        message: "data before any archive in the backup stream".into(),
    })?;
    // The pipe is bounded: this blocks (the receiving thread) while the
    // splitter catches up.
    writer.send_bytes(data).map_err(|_| splitter_gone())
}

fn finish(current: Option<PipeWriter>) -> Result<(), BackupError> {
    match current {
        Some(w) => w.finish().map_err(|_| splitter_gone()),
        None => Ok(()),
    }
}

fn splitter_gone() -> BackupError {
    BackupError::StageStopped("the part builder")
}

fn is_broken_pipe(e: &BackupError) -> bool {
    matches!(e, BackupError::Codec(crate::codec::CodecError::Io(io))
        if io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn is_splitter_gone(e: &BackupError) -> bool {
    matches!(e, BackupError::StageStopped(_))
}

/// Reads the command's end: the result sets after the stream, to Ready.
/// `ERRCODE_DATA_CORRUPTED`, which ends a BASE_BACKUP that found bad pages.
const DATA_CORRUPTED: &str = "XX001";

/// The pages the server's checksum warnings name: `checksum verification
/// failed in file "./base/5/16389", block 7: calculated … but expected …`.
fn corrupt_pages_in(notices: &[String]) -> Vec<CorruptPage> {
    let mut found: Vec<CorruptPage> = notices
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("checksum verification failed in file \"")?;
            let (file, rest) = rest.split_once('"')?;
            let block = rest.strip_prefix(", block ")?;
            let digits: String = block.chars().take_while(char::is_ascii_digit).collect();
            Some(CorruptPage {
                file: file.trim_start_matches("./").to_string(),
                block: digits.parse().ok()?,
            })
        })
        .collect();
    found.sort_by(|a, b| (&a.file, a.block).cmp(&(&b.file, b.block)));
    found.dedup();
    found
}

async fn finish_query(conn: &mut ReplicationConn) -> Result<(), BackupError> {
    loop {
        if let Reply::Ready = conn.next_reply().await? {
            return Ok(());
        }
    }
}

/// The splitter: reads the server's tar archives in order and writes their
/// entries into cairn parts of about `part_size` bytes, starting a new part
/// (and its upload) as one fills. Holds back pg_control, backup_label and
/// tablespace_map for the control part. Returns the files, the held-back
/// files and the number of data parts.
/// A part the splitter started: its index, its tar stream, and where its
/// files land in it.
type NewPart = (usize, PipeReader, std::sync::Arc<Placements>);

fn resplit(
    archives: Receiver<(String, PipeReader)>,
    parts: tokio::sync::mpsc::Sender<NewPart>,
    part_size: u64,
) -> Result<(Vec<FileEntry>, Vec<ControlFile>, usize), BackupError> {
    let mut out = PartWriter {
        parts,
        current: None,
        index: 0,
        bytes: 0,
        part_size,
    };
    let mut files = Vec::new();
    let mut held = Vec::new();
    for (prefix, mut reader) in archives {
        let mut archive = tar::Archive::new(&mut reader);
        let entries = archive.entries().map_err(stream_error)?;
        for entry in entries {
            let mut entry = entry.map_err(stream_error)?;
            let raw = String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| {
                BackupError::BadArgument("the server sent a file name that is not UTF-8".into())
            })?;
            let path = format!("{prefix}{}", raw.trim_end_matches('/'));
            let header = entry.header();
            let mode = header.mode().unwrap_or(0o600);
            let mtime = header.mtime().unwrap_or(0) as i64;
            match header.entry_type() {
                tar::EntryType::Directory => {
                    let part = out.room_for(0)?;
                    append_dir(out.tar()?, &path, mode, mtime).map_err(stream_error)?;
                    files.push(FileEntry {
                        path,
                        dir: true,
                        size: 0,
                        mode,
                        blake3: String::new(),
                        part: Some(part),
                        stored: Stored::Whole,
                    });
                }
                // What the server sends but a restore must not find (a
                // standby's signal file would make the restore a standby).
                tar::EntryType::Regular | tar::EntryType::Continuous
                    if LEFT_OUT.contains(&path.as_str()) => {}
                tar::EntryType::Regular | tar::EntryType::Continuous
                    if incremental::relation_of(&path).is_some() =>
                {
                    let size = entry.size();
                    let converted = incremental::convert(&mut entry, &path, size)?;
                    let relation = incremental::relation_of(&path).unwrap_or(path);
                    let len = converted.entry_len();
                    let part = out.room_for(len)?;
                    let blocks = (&mut entry).take(len - converted.head.len() as u64);
                    let blake3 = append_file(
                        out.tar()?,
                        &relation,
                        mode,
                        mtime,
                        len,
                        converted.head.as_slice().chain(blocks),
                        std::path::Path::new(&relation),
                    )
                    .map_err(stream_error)?;
                    files.push(FileEntry {
                        path: relation,
                        dir: false,
                        size: converted.file_len,
                        mode,
                        blake3,
                        part: Some(part),
                        stored: Stored::Pages {
                            bytes: len,
                            pages: converted.blocks as u64,
                        },
                    });
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    if let Some(control) = control_path(&path) {
                        let mut bytes = Vec::with_capacity(size as usize);
                        entry.read_to_end(&mut bytes).map_err(stream_error)?;
                        held.push(ControlFile::new(control, bytes));
                        continue;
                    }
                    let part = out.room_for(size)?;
                    let blake3 = append_file(
                        out.tar()?,
                        &path,
                        mode,
                        mtime,
                        size,
                        &mut entry,
                        std::path::Path::new(&path),
                    )
                    .map_err(stream_error)?;
                    files.push(FileEntry {
                        path,
                        dir: false,
                        size,
                        mode,
                        blake3,
                        part: Some(part),
                        stored: Stored::Whole,
                    });
                }
                // pg_tblspc/<oid> links: the manifest lists the tablespaces.
                tar::EntryType::Symlink => {}
                other => {
                    tracing::debug!(entry = %path, kind = ?other, "skipped a special file in the server's stream");
                }
            }
        }
        // The archive's end-of-archive blocks and padding: read them, so the
        // sender never finds the pipe closed.
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(stream_error)?;
    }
    let data_parts = out.close()?;
    Ok((files, held, data_parts))
}

/// Files the server's base backup includes that a local backup leaves out.
const LEFT_OUT: [&str; 3] = ["standby.signal", "recovery.signal", "backup_label.old"];

fn control_path(path: &str) -> Option<&'static str> {
    match path {
        "global/pg_control" => Some("global/pg_control"),
        "backup_label" => Some("backup_label"),
        "tablespace_map" => Some("tablespace_map"),
        _ => None,
    }
}

fn stream_error(e: std::io::Error) -> BackupError {
    BackupError::Codec(crate::codec::CodecError::from_io(e))
}

/// The part being filled, and how to start the next.
struct PartWriter {
    parts: tokio::sync::mpsc::Sender<NewPart>,
    current: Option<tar::Builder<PartStream<PipeWriter>>>,
    /// Index of the current part (parts started so far, minus one).
    index: usize,
    bytes: u64,
    part_size: u64,
}

impl PartWriter {
    /// The part an entry of `size` bytes goes into, starting a new one when
    /// the current one is full.
    fn room_for(&mut self, size: u64) -> Result<usize, BackupError> {
        if self.current.is_some() && self.bytes > 0 && self.bytes + size > self.part_size {
            self.finish_current()?;
            self.index += 1;
        }
        if self.current.is_none() {
            let (writer, reader) = pipe();
            let placements = Placements::new();
            self.parts
                .blocking_send((self.index, reader, placements.clone()))
                .map_err(|_| BackupError::BadArgument("the part uploads stopped".into()))?;
            let mut tar = tar::Builder::new(PartStream::new(writer, Some(placements)));
            tar.mode(tar::HeaderMode::Deterministic);
            self.current = Some(tar);
            self.bytes = 0;
        }
        self.bytes += size.next_multiple_of(512) + 512;
        Ok(self.index)
    }

    fn tar(&mut self) -> Result<&mut tar::Builder<PartStream<PipeWriter>>, BackupError> {
        self.current
            .as_mut()
            .ok_or_else(|| BackupError::BadArgument("no part open".into()))
    }

    fn finish_current(&mut self) -> Result<(), BackupError> {
        if let Some(tar) = self.current.take() {
            let writer = tar.into_inner().map_err(stream_error)?.into_inner();
            writer.finish().map_err(stream_error)?;
        }
        Ok(())
    }

    /// Ends the last part; returns how many there are (at least one).
    fn close(mut self) -> Result<usize, BackupError> {
        if self.current.is_none() {
            self.room_for(0)?;
        }
        self.finish_current()?;
        Ok(self.index + 1)
    }
}

fn text_of(files: &[ControlFile], path: &str) -> String {
    files
        .iter()
        .find(|f| f.path == path)
        .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
        .unwrap_or_default()
}

/// `16MB` (as SHOW prints it) → bytes.
fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let unit = match s[split..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_s_checksum_warnings_name_the_pages() {
        let notices = [
            "checksum verification failed in file \"./base/5/16389\", block 7: calculated AB62 but expected 556B".to_string(),
            "checksum verification failed in file \"./base/5/16389\", block 131075: calculated 1 but expected 2".into(),
            "file \"./base/5/16389\" has a total of 2 checksum verification failures".into(),
            "2 total checksum verification failures".into(),
        ];
        assert_eq!(
            corrupt_pages_in(&notices),
            vec![
                CorruptPage {
                    file: "base/5/16389".into(),
                    block: 7
                },
                CorruptPage {
                    file: "base/5/16389".into(),
                    block: 131_075
                },
            ]
        );
    }

    #[test]
    fn base_backup_commands_follow_the_server_version() {
        assert_eq!(
            base_backup_command(150004, "it's", true, 0, false, false),
            "BASE_BACKUP (LABEL 'it''s', CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', \
             TABLESPACE_MAP true)"
        );
        assert_eq!(
            base_backup_command(140009, "x", false, 0, true, false),
            "BASE_BACKUP LABEL 'x' PROGRESS NOWAIT MANIFEST 'yes' TABLESPACE_MAP"
        );
        assert_eq!(
            base_backup_command(170000, "x", true, 50 << 20, true, false),
            "BASE_BACKUP (LABEL 'x', CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', \
             TABLESPACE_MAP true, MAX_RATE 51200, PROGRESS true)"
        );
        assert_eq!(
            base_backup_command(170000, "x", false, 0, false, true),
            "BASE_BACKUP (LABEL 'x', CHECKPOINT 'spread', WAIT false, MANIFEST 'yes', \
             TABLESPACE_MAP true, INCREMENTAL)"
        );
        assert_eq!(
            base_backup_command(120000, "x", true, 1000, false, false),
            "BASE_BACKUP LABEL 'x' FAST NOWAIT MAX_RATE 32 MANIFEST 'yes' TABLESPACE_MAP"
        );
    }

    #[test]
    fn sizes_and_archive_names() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("16 MB"), Some(16 << 20));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(archive_prefix("base.tar").unwrap(), "");
        assert_eq!(archive_prefix("16400.tar").unwrap(), "pg_tblspc/16400/");
        assert!(archive_prefix("../x.tar").is_err());
    }
}
