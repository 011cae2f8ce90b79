//! `cairn backup-verify`: proves, without PostgreSQL, that a backup can be
//! restored from the archive: every part of it and of its delta chain is
//! read, decrypted, decompressed and checked against the manifest (the
//! part's checksum, every file's), and every WAL segment from its start to
//! its stop (with `--to-latest`: to the newest segment, following
//! timelines) is read back as wal-fetch would restore it: there, whole, and
//! the WAL of this cluster that its name says. Parts and segments are read
//! in parallel, each through bounded pipes; nothing is written. Every
//! problem is reported, naming its object.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::StreamExt;
use serde::Serialize;

use super::DrillError;
use crate::Context;
use crate::archive::manifest::Manifest;
use crate::archive::part_index::{self, IndexError};
use crate::archive::{ArchiveError, Catalog, catalog};
use crate::backup::restore::dest::Layout;
use crate::backup::restore::extract::{Job, extract_part};
use crate::backup::restore::plan;
use crate::pg::wal::{Segment, SegmentSize, SystemId, WalFileName};
use crate::storage::StorageError;
use crate::wal::WalError;

/// Which backups to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// A backup by name, or `LATEST`.
    One(String),
    All,
}

/// What backup-verify found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every backup checked out.
    pub ok: bool,
    pub backups: Vec<Verified>,
}

/// One backup's findings.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub name: String,
    /// The backups read, its full backup first.
    pub chain: Vec<String>,
    pub parts: usize,
    pub files: usize,
    /// Tar bytes read and checked.
    pub bytes: u64,
    /// The WAL a restore needs, first and last segment.
    pub wal_first: String,
    pub wal_last: String,
    /// WAL segments read back and checked.
    pub wal_segments: u64,
    #[serde(skip)]
    system: SystemId,
    #[serde(skip)]
    segment_size: SegmentSize,
    /// One line per problem, each naming its object.
    pub problems: Vec<String>,
}

/// Verifies the backups `which` names.
pub async fn verify(
    ctx: &Context,
    which: &Which,
    to_latest: bool,
    concurrency: usize,
) -> Result<Report, DrillError> {
    let names: Vec<String> = match which {
        Which::One(name) => vec![catalog::resolve(ctx, name).await?.name],
        Which::All => catalog::list(ctx)
            .await?
            .into_iter()
            .map(|m| m.name)
            .collect(),
    };
    if names.is_empty() {
        return Err(ArchiveError::NoBackups {
            location: ctx.storage.location().to_string(),
        }
        .into());
    }
    let newest = if to_latest {
        Some(crate::wal::verify::check(&Catalog::load(ctx).await?))
    } else {
        None
    };
    let mut backups = Vec::with_capacity(names.len());
    for name in names {
        let manifest = catalog::load(ctx, &name).await?;
        let own = vec![(manifest.start_segment(), manifest.stop_segment())];
        let path = newest
            .as_ref()
            .and_then(|r| r.backups.iter().find(|b| b.name == name))
            .map(|b| b.path.clone());
        // With --to-latest, missing segments are the gaps reported below.
        let (runs, report_missing) = match path {
            Some(p) => (p, false),
            None => (own, true),
        };
        let mut one = verify_one(ctx, manifest, concurrency).await?;
        one.problems.extend(
            check_wal(
                ctx,
                &runs,
                one.segment_size,
                one.system,
                concurrency,
                report_missing,
                &mut one.wal_segments,
            )
            .await,
        );
        if let Some(report) = &newest
            && let Some(b) = report.backups.iter().find(|b| b.name == one.name)
        {
            one.wal_last = b.newest.to_string();
            for g in report
                .gaps
                .iter()
                .filter(|g| g.needed_by.contains(&one.name))
            {
                one.problems.push(format!(
                    "WAL segments {}..{} ({} missing) are not in {}",
                    g.first,
                    g.last,
                    g.segments,
                    ctx.storage.location()
                ));
            }
            for m in &b.missing_histories {
                one.problems.push(format!(
                    "timeline history {} is not in {}",
                    WalFileName::History(*m),
                    ctx.storage.location()
                ));
            }
        }
        backups.push(one);
    }
    Ok(Report {
        ok: backups.iter().all(|b| b.problems.is_empty()),
        backups,
    })
}

async fn verify_one(
    ctx: &Context,
    manifest: Manifest,
    concurrency: usize,
) -> Result<Verified, DrillError> {
    let name = manifest.name.clone();
    let (first, last) = (manifest.start_segment(), manifest.stop_segment());
    let mut problems = Vec::new();
    let chain = match catalog::chain(ctx, manifest.clone()).await {
        Ok(c) => c,
        Err(e) => {
            problems.push(e.to_string());
            vec![manifest.clone()]
        }
    };
    let planned = plan::verify_all(&chain);
    // Decrypting needs the identity only when something is encrypted; its
    // absence, or a wrong one, is each part's problem, named.
    let keyring = if chain.iter().any(|m| m.encrypted) {
        match ctx.keyring() {
            Ok(k) => k,
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        }
    } else {
        None
    };
    let job = Arc::new(Job {
        // Nothing is written: the layout only judges entries' paths.
        layout: Layout {
            dest: PathBuf::from("/nonexistent/cairn-verify"),
            tablespaces: manifest
                .tablespaces
                .iter()
                .map(|t| (t.oid, t.location.clone()))
                .collect(),
        },
        keyring,
        rewrite_tablespace_map: false,
        dirs: HashSet::new(),
        stop: AtomicBool::new(false),
        progress: ctx.progress.clone(),
        delta: false,
        stats: Arc::default(),
    });
    let files = planned
        .stages
        .iter()
        .flat_map(|s| &s.data)
        .map(|w| w.files.len())
        .sum();
    let (parts, bytes) = (planned.parts, planned.bytes);
    ctx.progress.begin(bytes, Some(parts as u64));
    let work: Vec<_> = planned
        .stages
        .into_iter()
        .flat_map(|s| s.data.into_iter().chain(s.control))
        .collect();
    let failures: Vec<String> = futures::stream::iter(work)
        .map(|w| {
            let job = &job;
            let backup = chain[w.backup].name.clone();
            async move { extract_part(ctx, &backup, w, job).await.err() }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|e| async move { e.map(|e| crate::error_chain(&e)) })
        .collect()
        .await;
    ctx.progress.end();
    problems.extend(failures);
    // The parts' indexes: a damaged one costs delta restores their speed
    // (they read that part whole), not the backup; still damage to report.
    for m in &chain {
        for part in m.parts.iter().filter(|p| p.index.is_some()) {
            match part_index::load(ctx, m, part, job.keyring.as_ref()).await {
                Ok(_) => {}
                Err(IndexError::Storage(e)) => problems.push(crate::error_chain(&e)),
                Err(IndexError::Unusable(why)) => problems.push(format!(
                    "backup {}, part {}: its index is not usable ({why}); delta restores \
                     read the part whole",
                    m.name, part.key
                )),
            }
        }
    }
    // Pages the backups found corrupt on disk: restored as they were.
    for m in &chain {
        problems.extend(m.corrupt_pages.iter().map(|p| {
            format!(
                "backup {}: block {} of {} failed its page checksum when the backup read it \
                 (corrupt on disk then; stored and restored as it was)",
                m.name, p.block, p.file
            )
        }));
    }
    Ok(Verified {
        name,
        chain: chain.iter().map(|m| m.name.clone()).collect(),
        parts,
        files,
        bytes,
        wal_first: first.to_string(),
        wal_last: last.max(first).to_string(),
        wal_segments: 0,
        system: manifest.system_identifier,
        segment_size: manifest.wal_segment_size,
        problems,
    })
}

/// Reads back every segment of `runs` (first and last of one timeline),
/// `concurrency` at a time, as a restore would: one line per segment that
/// is missing (when `report_missing`) or is not this cluster's WAL of that
/// name. Counts the segments read into `read`.
pub(crate) async fn check_wal(
    ctx: &Context,
    runs: &[(Segment, Segment)],
    size: SegmentSize,
    system: SystemId,
    concurrency: usize,
    report_missing: bool,
    read: &mut u64,
) -> Vec<String> {
    let segments: Vec<Segment> = runs
        .iter()
        .flat_map(|&(first, last)| {
            (first.number(size)..=last.max(first).number(size))
                .map(move |n| Segment::from_number(first.timeline, n, size))
        })
        .collect();
    let results: Vec<(Segment, Result<(), WalError>)> =
        futures::stream::iter(segments.into_iter().map(|seg| async move {
            let name = WalFileName::Segment(seg);
            (
                seg,
                crate::wal::fetch::check_archived(ctx, &name, Some(system)).await,
            )
        }))
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let mut problems = Vec::new();
    for (seg, result) in results {
        match result {
            Ok(()) => *read += 1,
            Err(WalError::Storage(StorageError::NotFound { .. })) => {
                if report_missing {
                    problems.push(format!(
                        "WAL segment {seg}, which a restore of this backup needs, is not in {}",
                        ctx.storage.location()
                    ));
                }
            }
            Err(e) => problems.push(format!("WAL segment {seg}: {}", crate::error_chain(&e))),
        }
    }
    problems
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.backups {
            let status = if b.problems.is_empty() {
                "ok"
            } else {
                "FAILED"
            };
            writeln!(
                f,
                "{}: {status}: {} part(s), {} file(s), {} bytes read and checked (chain: {}); \
                 WAL {}..{}, {} segment(s) read and checked",
                b.name,
                b.parts,
                b.files,
                b.bytes,
                b.chain.join(" ← "),
                b.wal_first,
                b.wal_last,
                b.wal_segments
            )?;
            for p in &b.problems {
                writeln!(f, "  {p}")?;
            }
        }
        Ok(())
    }
}

impl Report {
    /// The first problem, for the one-line error.
    pub fn problem(&self) -> Option<String> {
        let failed: Vec<&Verified> = self
            .backups
            .iter()
            .filter(|b| !b.problems.is_empty())
            .collect();
        let first = failed.first()?;
        let more = failed.iter().map(|b| b.problems.len()).sum::<usize>() - 1;
        Some(format!(
            "backup {} does not verify: {}{}",
            first.name,
            first.problems[0],
            if more > 0 {
                format!(" (and {more} more problem(s))")
            } else {
                String::new()
            }
        ))
    }
}
