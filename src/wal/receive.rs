//! `cairn wal-receive`: streams WAL from the server over a physical
//! replication slot, as a standby does, so that a crash loses nothing the
//! server acknowledged. The stream goes into a local spool, one file per
//! segment (`<segment>.partial` while open), fsynced before the position is
//! reported as flushed (so the receiver can be a synchronous standby, and the
//! slot only moves past WAL that is on disk here). A completed segment is
//! stored exactly as wal-push stores it (so `archive_command` may run beside
//! the receiver) and then removed from the spool; the open one is stored as
//! `wal/<segment>.partial`, zero-padded to the segment size, every
//! `wal_receive_partial_interval` and at shutdown. Timeline switches are
//! followed (the `.history` file is stored first), lost connections retried.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::WalError;
use crate::Context;
use crate::archive::keys;
use crate::pg::client::{PgError, PgSettings};
use crate::pg::replication::ReplicationConn;
use crate::pg::replication::stream::{Started, StreamMessage};
use crate::pg::timeline::TimelineHistory;
use crate::pg::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};

/// What the receiver does.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub slot: String,
    pub create_slot: bool,
    pub application_name: String,
    pub status_interval: Duration,
    /// 0: the open segment is stored only at shutdown.
    pub partial_interval: Duration,
    pub spool: PathBuf,
    pub postgres: PgSettings,
}

/// Why the receiver stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("spool {path}: {}", describe_io(.cause))]
    Spool {
        path: PathBuf,
        // Not a source: the message says it, once.
        cause: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("a worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// In the words an operator searches for: a full file system is "No space
/// left on device", whichever layer noticed.
fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::StorageFull => {
            "No space left on device: the spool's file system is full".into()
        }
        _ => e.to_string(),
    }
}

/// How far the stream got, shared by the session, the uploader and the
/// progress reports (LSNs as numbers; 0: not yet).
#[derive(Debug, Default)]
pub struct Positions {
    /// Written to the spool.
    pub received: AtomicU64,
    /// Fsynced in the spool, and reported to the server as flushed.
    pub flushed: AtomicU64,
    /// Stored in the archive (a completed segment's end, or how far the
    /// last stored `.partial` reaches).
    pub archived: AtomicU64,
    /// The end of WAL on the server, as it last said.
    pub server: AtomicU64,
}

impl Positions {
    fn get(a: &AtomicU64) -> Lsn {
        Lsn(a.load(Ordering::Relaxed))
    }

    fn raise(a: &AtomicU64, to: Lsn) {
        a.fetch_max(to.0, Ordering::Relaxed);
    }

    /// The figures a progress report pushes.
    pub fn figures(&self) -> Vec<crate::metrics::Metric> {
        use crate::metrics::Metric;
        let (r, f, a, s) = (
            Self::get(&self.received).0,
            Self::get(&self.flushed).0,
            Self::get(&self.archived).0,
            Self::get(&self.server).0,
        );
        vec![
            Metric::gauge(
                "cairn_wal_receive_received_lsn",
                "WAL position received and written to the spool (bytes).",
                r as f64,
            ),
            Metric::gauge(
                "cairn_wal_receive_flushed_lsn",
                "WAL position fsynced in the spool and reported to the server as flushed (bytes).",
                f as f64,
            ),
            Metric::gauge(
                "cairn_wal_receive_archived_lsn",
                "WAL position stored in the archive (bytes).",
                a as f64,
            ),
            Metric::gauge(
                "cairn_wal_receive_lag_bytes",
                "Bytes of WAL the server has and the receiver has not flushed.",
                s.saturating_sub(f) as f64,
            ),
            Metric::gauge(
                "cairn_wal_receive_archive_lag_bytes",
                "Bytes of WAL flushed in the spool and not yet in the archive.",
                f.saturating_sub(a) as f64,
            ),
        ]
    }
}

/// Segments are 16 MiB unless the server says otherwise (`wal_segment_size`
/// is read from the first segment's header; the stream does not carry it).
const SEGMENT: SegmentSize = SegmentSize::DEFAULT;

/// A failure a reconnect may cure (the server restarting, a network
/// blip), as opposed to one it cannot (wrong cluster, authentication).
fn retryable(e: &ReceiveError) -> bool {
    match e {
        ReceiveError::Pg(PgError::Connect { message, .. }) => {
            !(message.contains("authentication failed")
                || message.contains("PGPASSWORD")
                || message.contains("replication role")
                || message.contains("WAL sender")
                || message.contains("no pg_hba.conf entry")
                || message.contains("authentication method"))
        }
        ReceiveError::Pg(PgError::Query { message, .. }) => {
            !(message.contains("does not exist") || message.contains("is active for PID"))
        }
        // Storage unreachable for a while (also when the first connection
        // admits the cluster): the spool holds the stream meanwhile.
        ReceiveError::Wal(WalError::Storage(_))
        | ReceiveError::Wal(WalError::Archive(crate::archive::ArchiveError::Storage(_))) => true,
        _ => false,
    }
}

/// Runs until `shutdown` resolves (then stores the open segment and exits
/// cleanly) or a failure no retry can fix.
pub async fn receive(
    ctx: Arc<Context>,
    opts: &ReceiveOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ReceiveError> {
    let spool = Spool::open(&opts.spool).await?;
    let positions = Arc::new(Positions::default());
    let (uploads, uploader) = Uploader::start(ctx.clone(), spool.dir.clone(), positions.clone());
    let progress = tokio::spawn(report_progress(ctx.clone(), positions.clone()));
    for seg in spool.completed().await? {
        uploads.send(Job::Segment(seg)).ok();
    }
    tokio::pin!(shutdown);
    // The cluster this process has admitted to the archive: a reconnect to
    // the same cluster needs no storage (which may be what is down).
    let admitted = std::sync::Mutex::new(None);
    let mut backoff = Duration::from_secs(1);
    let result = loop {
        let mut session = Session::new(&ctx, opts, &spool, &uploads, &positions, &admitted);
        let outcome = tokio::select! {
            // A session only ends in an error; shutdown ends it from here.
            r = session.run() => r.map(|never| match never {}),
            () = &mut shutdown => Ok(Ended::Shutdown),
        };
        // Whatever ended the session, what was received is on disk: store
        // the open segment as it stands.
        if let Err(e) = session.finish().await {
            tracing::warn!(error = %e, "could not store the open segment; it stays in the spool");
        }
        match outcome {
            Ok(Ended::Shutdown) => break Ok(()),
            Err(e) if retryable(&e) => {
                tracing::warn!(error = %crate::error_chain(&e), retry_in = ?backoff, "streaming stopped; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => break Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            Err(e) => break Err(e),
        }
    };
    drop(uploads);
    // Completed segments not yet stored stay in the spool for the next start.
    let _ = tokio::time::timeout(ctx.config.storage_timeout, uploader).await;
    progress.abort();
    push_figures(&ctx, &positions, result.is_ok()).await;
    result
}

/// Every `progress_interval`: a log line with the positions and lags, and
/// the same figures pushed to the Pushgateway and/or written to the
/// receiver's textfile, as configured.
async fn report_progress(ctx: Arc<Context>, positions: Arc<Positions>) {
    let every = ctx.config.progress_interval;
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let p = &positions;
        let (f, a, s) = (
            Positions::get(&p.flushed),
            Positions::get(&p.archived),
            Positions::get(&p.server),
        );
        tracing::info!(
            received = %Positions::get(&p.received),
            flushed = %f,
            archived = %a,
            lag_bytes = s.0.saturating_sub(f.0),
            archive_lag_bytes = f.0.saturating_sub(a.0),
            "receiving"
        );
        push_figures(&ctx, p, true).await;
    }
}

/// The positions as metrics: pushed to the Pushgateway and/or written to
/// the receiver's textfile beside `metrics_textfile`, as configured.
async fn push_figures(ctx: &Context, positions: &Positions, healthy: bool) {
    let url = ctx.config.metrics_push_url.as_ref();
    let textfile = ctx
        .config
        .metrics_textfile
        .as_deref()
        .map(|t| crate::metrics::sibling_textfile(t, "wal-receive"));
    if url.is_none() && textfile.is_none() {
        return;
    }
    let run = crate::metrics::Run {
        command: "wal-receive",
        storage: ctx.storage.location().to_string(),
        succeeded: healthy,
        finished: std::time::SystemTime::now(),
        duration: Duration::ZERO,
        figures: positions.figures(),
    };
    if let Some(path) = textfile {
        let run = run.clone();
        let written =
            tokio::task::spawn_blocking(move || crate::metrics::write_textfile(&path, &run)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::warn!("metrics textfile update failed: {e}"),
        }
    }
    if let Some(url) = url
        && let Err(e) = crate::metrics::push(url, &run, Duration::from_secs(10)).await
    {
        tracing::warn!("{e}");
    }
}

enum Ended {
    Shutdown,
}

/// One connection's streaming.
struct Session<'a> {
    ctx: &'a Context,
    opts: &'a ReceiveOptions,
    spool: &'a Spool,
    uploads: &'a mpsc::UnboundedSender<Job>,
    positions: &'a Positions,
    admitted: &'a std::sync::Mutex<Option<crate::pg::wal::SystemId>>,
    open: Option<OpenSegment>,
    last_partial: Instant,
    /// What the last stored `.partial` holds.
    partial_stored: Option<(Segment, u64)>,
}

/// The segment being written.
struct OpenSegment {
    seg: Segment,
    file: Option<std::fs::File>,
    /// Received and not yet written: a burst is written and fsynced at once.
    pending: Vec<u8>,
    /// Bytes received from the segment's start (written or pending).
    written: u64,
    /// Bytes fsynced.
    synced: u64,
}

impl<'a> Session<'a> {
    fn new(
        ctx: &'a Context,
        opts: &'a ReceiveOptions,
        spool: &'a Spool,
        uploads: &'a mpsc::UnboundedSender<Job>,
        positions: &'a Positions,
        admitted: &'a std::sync::Mutex<Option<crate::pg::wal::SystemId>>,
    ) -> Self {
        Session {
            ctx,
            opts,
            spool,
            uploads,
            positions,
            admitted,
            open: None,
            last_partial: Instant::now(),
            partial_stored: None,
        }
    }

    async fn run(&mut self) -> Result<std::convert::Infallible, ReceiveError> {
        let mut conn =
            ReplicationConn::connect_as(&self.opts.postgres, &self.opts.application_name).await?;
        let system = conn.identify_system().await?;
        let sysid = crate::pg::wal::SystemId(system.system_identifier);
        let known = *self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        if known != Some(sysid) {
            crate::archive::registry::admit(
                self.ctx,
                sysid,
                Segment::containing(system.timeline, system.position, SEGMENT),
            )
            .await
            .map_err(WalError::from)?;
            *self.admitted.lock().unwrap_or_else(|p| p.into_inner()) = Some(sysid);
        }
        self.ensure_slot(&mut conn).await?;
        let (mut timeline, mut start) = self
            .start_position(&mut conn, system.timeline, system.position)
            .await?;
        tracing::info!(slot = %self.opts.slot, %timeline, %start, "streaming");
        loop {
            let started = conn
                .start_physical(Some(&self.opts.slot), start, timeline)
                .await?;
            let next = match started {
                Started::TimelineEnded { next } => next,
                Started::Streaming => self.stream(&mut conn).await?,
            };
            let Some((tli, at)) = next else {
                return Err(ReceiveError::Refused(format!(
                    "timeline {timeline} ended on the server without a next one"
                )));
            };
            // The old timeline's open segment ends at the switch: store it
            // as a .partial (then it is done with); the new timeline
            // restarts that segment.
            let old = self.open.as_ref().map(|o| o.seg);
            self.finish().await?;
            if let Some(seg) = old {
                self.spool.remove_partial(seg).await;
            }
            self.store_history(&mut conn, tli).await?;
            tracing::info!(from = %timeline, to = %tli, switchpoint = %at, "following a timeline switch");
            timeline = tli;
            start = Segment::containing(tli, at, SEGMENT).start_lsn(SEGMENT);
        }
    }

    /// Streams until the timeline ends (its successor) or the stream fails.
    async fn stream(
        &mut self,
        conn: &mut ReplicationConn,
    ) -> Result<Option<(TimelineId, Lsn)>, ReceiveError> {
        let mut status = tokio::time::interval(self.opts.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let partial_every =
            (!self.opts.partial_interval.is_zero()).then_some(self.opts.partial_interval);
        // Also when the server is idle: the last burst reaches the archive
        // within the interval, not only when more WAL comes.
        let mut partial_tick =
            tokio::time::interval(partial_every.unwrap_or(Duration::from_secs(86_400)));
        partial_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                m = conn.next_stream() => m?,
                _ = status.tick() => {
                    let at = self.position();
                    conn.send_status(at, at, Lsn(0), false).await?;
                    continue;
                }
                _ = partial_tick.tick(), if partial_every.is_some() => {
                    if partial_every.is_some_and(|e| self.last_partial.elapsed() >= e) {
                        self.store_partial().await?;
                    }
                    continue;
                }
            };
            match msg {
                StreamMessage::XLogData {
                    start,
                    server_end,
                    data,
                } => {
                    Positions::raise(&self.positions.server, server_end);
                    self.write(start, &data).await?;
                    Positions::raise(&self.positions.received, Lsn(start.0 + data.len() as u64));
                    if !conn.message_buffered() {
                        // The burst is written: make it durable, then say so.
                        self.sync().await?;
                        let at = self.position();
                        conn.send_status(at, at, Lsn(0), false).await?;
                    }
                    if let Some(every) = partial_every
                        && self.last_partial.elapsed() >= every
                    {
                        self.store_partial().await?;
                    }
                }
                StreamMessage::Keepalive { reply, server_end } => {
                    Positions::raise(&self.positions.server, server_end);
                    if reply {
                        self.sync().await?;
                        let at = self.position();
                        conn.send_status(at, at, Lsn(0), false).await?;
                    }
                }
                StreamMessage::EndOfTimeline { next } => return Ok(next),
            }
        }
    }

    /// Where the durable stream ends.
    fn position(&self) -> Lsn {
        match &self.open {
            Some(o) => Lsn(o.seg.start_lsn(SEGMENT).0 + o.synced),
            None => Lsn(0),
        }
    }

    /// Appends `data` (which begins at `start`) to the spool, completing
    /// segments as they fill.
    async fn write(&mut self, start: Lsn, mut data: &[u8]) -> Result<(), ReceiveError> {
        let mut at = start;
        while !data.is_empty() {
            let seg = Segment::containing(self.timeline_of_open(), at, SEGMENT);
            let offset = at.0 - seg.start_lsn(SEGMENT).0;
            if self.open.as_ref().is_none_or(|o| o.seg != seg) {
                if offset != 0 {
                    return Err(ReceiveError::Refused(format!(
                        "the server sent WAL from {at}, in the middle of segment {seg} \
                         that the spool does not hold"
                    )));
                }
                self.open = Some(self.spool.create(seg).await?);
            }
            let o = self.open.as_mut().expect("just opened");
            if o.written != offset {
                return Err(ReceiveError::Refused(format!(
                    "the server sent WAL from {at}, but segment {seg} is written up to offset {}",
                    o.written
                )));
            }
            let room = (SEGMENT.bytes() - offset) as usize;
            let n = room.min(data.len());
            o.pending.extend_from_slice(&data[..n]);
            o.written += n as u64;
            data = &data[n..];
            at = Lsn(at.0 + n as u64);
            if o.written == SEGMENT.bytes() {
                self.complete().await?;
            }
        }
        Ok(())
    }

    /// The timeline of the open segment (a stream continues on it).
    fn timeline_of_open(&self) -> TimelineId {
        self.open
            .as_ref()
            .map(|o| o.seg.timeline)
            .unwrap_or(self.spool.timeline())
    }

    /// Writes what is pending and fsyncs it.
    async fn sync(&mut self) -> Result<(), ReceiveError> {
        if let Some(o) = self.open.as_mut()
            && o.synced < o.written
        {
            let file = o.file.as_mut().expect("an open segment has its file");
            let pending = &o.pending;
            // A synchronous commit waits for this write and fsync: done
            // here, with tokio moving this worker's other tasks elsewhere
            // meanwhile, rather than after a hop to the blocking pool.
            tokio::task::block_in_place(|| {
                use std::io::Write;
                file.write_all(pending).and_then(|()| file.sync_data())
            })
            .map_err(|e| self.spool.error(o.seg, e))?;
            o.pending.clear();
            o.synced = o.written;
            Positions::raise(
                &self.positions.flushed,
                Lsn(o.seg.start_lsn(SEGMENT).0 + o.synced),
            );
        }
        Ok(())
    }

    /// The open segment is full: durable, renamed to its name, queued.
    async fn complete(&mut self) -> Result<(), ReceiveError> {
        self.sync().await?;
        let o = self.open.take().expect("a segment is open");
        drop(o.file);
        self.spool.complete(o.seg).await?;
        // The uploader outlives every session.
        self.uploads.send(Job::Segment(o.seg)).ok();
        Ok(())
    }

    /// Queues the open segment, as it stands, to be stored as
    /// `wal/<segment>.partial` (the uploader stores it; the stream goes on,
    /// so synchronous commits never wait for an upload).
    async fn store_partial(&mut self) -> Result<(), ReceiveError> {
        self.sync().await?;
        self.last_partial = Instant::now();
        let Some(o) = self.open.as_ref() else {
            return Ok(());
        };
        if o.synced == 0 {
            return Ok(());
        }
        let (seg, synced) = (o.seg, o.synced);
        if self.partial_stored == Some((seg, synced)) {
            return Ok(());
        }
        let copy = self.spool.padded_copy(seg, synced).await?;
        self.uploads
            .send(Job::Partial {
                seg,
                copy,
                reach: synced,
            })
            .ok();
        self.partial_stored = Some((seg, synced));
        Ok(())
    }

    /// At the end of a session: the open segment made durable and stored.
    async fn finish(&mut self) -> Result<(), ReceiveError> {
        self.store_partial().await?;
        self.open = None;
        Ok(())
    }

    async fn ensure_slot(&self, conn: &mut ReplicationConn) -> Result<(), ReceiveError> {
        let slot = &self.opts.slot;
        if conn.version_num < 150000 {
            // READ_REPLICATION_SLOT is 15+; START_REPLICATION names a
            // missing slot itself.
            if self.opts.create_slot {
                match conn.create_physical_slot(slot).await {
                    Ok(()) => tracing::info!(%slot, "replication slot created"),
                    Err(e) if e.to_string().contains("already exists") => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        }
        match conn.read_slot(slot).await? {
            Some(s) if s.physical => Ok(()),
            Some(_) => Err(ReceiveError::Refused(format!(
                "replication slot {slot} is a logical slot; wal-receive needs a physical one \
                 (set wal_receive_slot to another name)"
            ))),
            None if self.opts.create_slot => {
                conn.create_physical_slot(slot).await?;
                tracing::info!(%slot, "replication slot created");
                Ok(())
            }
            None => Err(ReceiveError::Refused(format!(
                "replication slot {slot} does not exist on the server: create it with \
                 `cairn wal-receive --create-slot` (or wal_receive_create_slot: true), or \
                 SELECT pg_create_physical_replication_slot('{slot}', true)"
            ))),
        }
    }

    /// Where to start: the spool's open segment (again from its start), or
    /// after its newest completed one, or after the archive's newest
    /// segment, or where the slot keeps WAL from, or the server's current
    /// segment. Returns the timeline that position is on.
    async fn start_position(
        &mut self,
        conn: &mut ReplicationConn,
        server_tli: TimelineId,
        server_pos: Lsn,
    ) -> Result<(TimelineId, Lsn), ReceiveError> {
        let from_spool = self.spool.resume_point().await?;
        let candidate = match from_spool {
            Some(seg) => Some(seg),
            None => newest_archived(self.ctx, server_tli)
                .await?
                .map(|s| s.next(SEGMENT)),
        };
        let slot_start = if conn.version_num >= 150000 {
            conn.read_slot(&self.opts.slot)
                .await?
                .and_then(|s| s.restart_lsn)
        } else {
            None
        };
        let start = match (candidate, slot_start) {
            (Some(seg), Some(slot))
                if seg.start_lsn(SEGMENT) < Lsn(slot.0 / SEGMENT.bytes() * SEGMENT.bytes()) =>
            {
                tracing::warn!(
                    archive_ends = %seg, slot_keeps_from = %slot,
                    "the server no longer has the WAL after the archive's end: \
                     starting where the slot keeps WAL from (wal-verify will report the gap)"
                );
                Lsn(slot.0 / SEGMENT.bytes() * SEGMENT.bytes())
            }
            (Some(seg), _) => seg.start_lsn(SEGMENT),
            (None, Some(slot)) => Lsn(slot.0 / SEGMENT.bytes() * SEGMENT.bytes()),
            (None, None) => Lsn(server_pos.0 / SEGMENT.bytes() * SEGMENT.bytes()),
        };
        // The timeline the start lies on, by the server's history.
        let mut tli = server_tli;
        if server_tli.0 > 1 {
            let (_, text) = conn.timeline_history(server_tli).await?;
            let history = TimelineHistory::parse(server_tli, &text)
                .map_err(|e| ReceiveError::Refused(e.to_string()))?;
            if let Some(e) = history.entries.iter().find(|e| start < e.switchpoint) {
                tli = e.parent;
            }
            self.store_history_text(server_tli, &text).await?;
        }
        self.spool.set_timeline(tli);
        Ok((tli, start))
    }

    async fn store_history(
        &mut self,
        conn: &mut ReplicationConn,
        tli: TimelineId,
    ) -> Result<(), ReceiveError> {
        let (_, text) = conn.timeline_history(tli).await?;
        self.spool.set_timeline(tli);
        self.store_history_text(tli, &text).await
    }

    /// Stores a timeline's history file as wal-push would.
    async fn store_history_text(&self, tli: TimelineId, text: &str) -> Result<(), ReceiveError> {
        let name = WalFileName::History(tli);
        let path = self.spool.dir.join(name.to_string());
        tokio::fs::write(&path, text)
            .await
            .map_err(|e| ReceiveError::Spool {
                path: path.clone(),
                cause: e,
            })?;
        super::push::store(self.ctx, &path, name).await?;
        let _ = tokio::fs::remove_file(&path).await;
        Ok(())
    }
}

/// The newest segment of `tli` (or an earlier timeline) in the archive.
async fn newest_archived(ctx: &Context, tli: TimelineId) -> Result<Option<Segment>, ReceiveError> {
    let objects = ctx
        .storage
        .list(keys::WAL, None, None)
        .await
        .map_err(WalError::from)?;
    Ok(objects
        .iter()
        .filter_map(|o| match keys::classify(&o.key) {
            keys::Listed::Wal(WalFileName::Segment(s)) if s.timeline <= tli => Some(s),
            _ => None,
        })
        .max_by_key(|s| (s.number(SEGMENT), s.timeline)))
}

/// The spool directory: `<segment>.partial` being written, `<segment>`
/// complete and waiting for upload, `.spare` zero-filled for the next
/// segment; one receiver at a time (a lock file).
struct Spool {
    dir: PathBuf,
    _lock: std::fs::File,
    timeline: std::sync::Mutex<TimelineId>,
    /// A `.spare` is being zero-filled.
    spare_busy: Arc<std::sync::atomic::AtomicBool>,
}

/// The next segment's file, zero-filled ahead.
const SPARE: &str = ".spare";

/// Creates `path` holding a segment's worth of zeroes, fsynced.
fn zero_filled(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let zeroes = vec![0u8; 1 << 20];
    for _ in 0..SEGMENT.bytes() / zeroes.len() as u64 {
        f.write_all(&zeroes)?;
    }
    f.sync_all()
}

impl Spool {
    async fn open(dir: &Path) -> Result<Spool, ReceiveError> {
        let d = dir.to_path_buf();
        crate::blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            let io = |e| ReceiveError::Spool {
                path: d.clone(),
                cause: e,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(io)?;
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(d.join(".lock"))
                .map_err(io)?;
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(ReceiveError::Refused(format!(
                    "spool {} is in use by another wal-receive",
                    d.display()
                )));
            }
            // Snapshots a stopped receiver had queued for upload (the open
            // segment is streamed again, and stored anew) and zero-filling
            // it was doing.
            for e in std::fs::read_dir(&d).map_err(io)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".upload-") || name.ends_with(".zeroing") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(Spool {
                dir: d,
                _lock: lock,
                timeline: std::sync::Mutex::new(TimelineId(1)),
                spare_busy: Arc::default(),
            })
        })
        .await
    }

    fn timeline(&self) -> TimelineId {
        *self.timeline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_timeline(&self, tli: TimelineId) {
        *self.timeline.lock().unwrap_or_else(|p| p.into_inner()) = tli;
    }

    fn error(&self, seg: Segment, cause: std::io::Error) -> ReceiveError {
        ReceiveError::Spool {
            path: self.dir.join(format!("{seg}.partial")),
            cause,
        }
    }

    async fn names(&self) -> Result<Vec<WalFileName>, ReceiveError> {
        let d = self.dir.clone();
        crate::blocking(move || {
            let rd = std::fs::read_dir(&d).map_err(|e| ReceiveError::Spool {
                path: d.clone(),
                cause: e,
            })?;
            Ok(rd
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<WalFileName>().ok())
                .collect())
        })
        .await
    }

    /// Completed segments waiting for upload, oldest first.
    async fn completed(&self) -> Result<Vec<Segment>, ReceiveError> {
        let mut segs: Vec<Segment> = self
            .names()
            .await?
            .into_iter()
            .filter_map(|n| match n {
                WalFileName::Segment(s) => Some(s),
                _ => None,
            })
            .collect();
        segs.sort_by_key(|s| (s.number(SEGMENT), s.timeline));
        Ok(segs)
    }

    /// The segment to stream from: the open one (rewritten from its start),
    /// else the one after the newest completed one.
    async fn resume_point(&self) -> Result<Option<Segment>, ReceiveError> {
        let names = self.names().await?;
        let open = names
            .iter()
            .filter_map(|n| match n {
                WalFileName::Partial(s) => Some(*s),
                _ => None,
            })
            .max_by_key(|s| (s.number(SEGMENT), s.timeline));
        if open.is_some() {
            return Ok(open);
        }
        Ok(self.completed().await?.last().map(|s| s.next(SEGMENT)))
    }

    /// A new `<segment>.partial`, zero-filled to the segment size and
    /// durable, its directory entry too (a leftover from before a crash is
    /// replaced: only what is received again is trusted). Writing into
    /// allocated blocks changes no file metadata, so each burst's
    /// fdatasync flushes the data alone: appending made every synchronous
    /// commit wait for an ext4 journal commit as well (about 0.5 ms).
    /// PostgreSQL fills its WAL segments, and pg_receivewal its files, the
    /// same way. It also means a full spool fails here, before any byte of
    /// the segment is received, never in the middle of one. The zeroes are
    /// written ahead, into `.spare`, while the segment before fills.
    async fn create(&self, seg: Segment) -> Result<OpenSegment, ReceiveError> {
        let path = self.dir.join(format!("{seg}.partial"));
        let dir = self.dir.clone();
        let file = crate::blocking(move || {
            Ok::<_, ReceiveError>((|| {
                if std::fs::rename(dir.join(SPARE), &path).is_err() {
                    let tmp = dir.join(format!(".{seg}.zeroing"));
                    let made = zero_filled(&tmp).and_then(|()| std::fs::rename(&tmp, &path));
                    if made.is_err() {
                        let _ = std::fs::remove_file(&tmp);
                    }
                    made?;
                }
                crate::durable::sync_dir(&path)?;
                std::fs::OpenOptions::new().write(true).open(&path)
            })())
        })
        .await?
        .map_err(|e| self.error(seg, e))?;
        self.set_timeline(seg.timeline);
        self.prepare_spare();
        Ok(OpenSegment {
            seg,
            file: Some(file),
            pending: Vec::new(),
            written: 0,
            synced: 0,
        })
    }

    /// Zero-fills the next segment's file in the background (one at a
    /// time). A failure only costs the next segment its head start; a full
    /// spool is reported when that segment is created.
    fn prepare_spare(&self) {
        if self.spare_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let (dir, busy) = (self.dir.clone(), self.spare_busy.clone());
        tokio::task::spawn_blocking(move || {
            let (tmp, spare) = (dir.join(".spare.zeroing"), dir.join(SPARE));
            if !spare.exists() {
                let made = zero_filled(&tmp).and_then(|()| std::fs::rename(&tmp, &spare));
                if let Err(e) = made {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::debug!(error = %e, "could not zero-fill the next segment ahead");
                }
            }
            busy.store(false, Ordering::Release);
        });
    }

    /// Removes an old timeline's `<segment>.partial`, once stored.
    async fn remove_partial(&self, seg: Segment) {
        let _ = tokio::fs::remove_file(self.dir.join(format!("{seg}.partial"))).await;
    }

    /// Renames a full `.partial` to the segment's name, durably.
    async fn complete(&self, seg: Segment) -> Result<(), ReceiveError> {
        let (from, to, dir) = (
            self.dir.join(format!("{seg}.partial")),
            self.dir.join(seg.to_string()),
            self.dir.clone(),
        );
        crate::blocking(move || {
            std::fs::rename(&from, &to).map_err(|e| ReceiveError::Spool {
                path: from.clone(),
                cause: e,
            })?;
            crate::durable::sync_dir(&dir).map_err(|e| ReceiveError::Spool {
                path: dir.clone(),
                cause: e,
            })
        })
        .await
    }

    /// A copy of the first `len` bytes of the open segment, zero-padded to
    /// the segment size (a `.partial` is a whole segment's size, as
    /// PostgreSQL writes them), to upload while the original grows.
    async fn padded_copy(&self, seg: Segment, len: u64) -> Result<PathBuf, ReceiveError> {
        let (from, to) = (
            self.dir.join(format!("{seg}.partial")),
            self.dir.join(format!(".upload-{seg}-{len}.partial")),
        );
        crate::blocking(move || {
            use std::io::{Read, Write};
            let io = |p: &Path| {
                let p = p.to_path_buf();
                move |e| ReceiveError::Spool { path: p, cause: e }
            };
            let mut src = std::fs::File::open(&from).map_err(io(&from))?;
            let mut dst = std::fs::File::create(&to).map_err(io(&to))?;
            let copied = std::io::copy(&mut (&mut src).take(len), &mut dst).map_err(io(&to))?;
            dst.set_len(SEGMENT.bytes()).map_err(io(&to))?;
            dst.flush().map_err(io(&to))?;
            if copied != len {
                return Err(ReceiveError::Refused(format!(
                    "{} holds {copied} bytes, not the {len} written",
                    from.display()
                )));
            }
            Ok(to)
        })
        .await
    }
}

/// What the uploader stores, in the order queued.
pub(crate) enum Job {
    /// A completed segment in the spool.
    Segment(Segment),
    /// A padded copy of the open segment's first `reach` bytes.
    Partial {
        seg: Segment,
        copy: PathBuf,
        reach: u64,
    },
}

/// Stores what the session queues, one object at a time (the memory
/// bound), while the stream goes on: completed segments retried until
/// stored (the spool holds them meanwhile), then removed from the spool
/// with their `.partial` object; `.partial` snapshots tried once (the next
/// one is never far) and skipped once their segment is stored.
struct Uploader;

impl Uploader {
    fn start(
        ctx: Arc<Context>,
        dir: PathBuf,
        positions: Arc<Positions>,
    ) -> (mpsc::UnboundedSender<Job>, tokio::task::JoinHandle<()>) {
        // Unbounded: the spool on disk is the buffer; the queue holds names.
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let task = tokio::spawn(async move {
            let mut stored_segments: std::collections::HashSet<Segment> =
                std::collections::HashSet::new();
            while let Some(job) = rx.recv().await {
                match job {
                    Job::Segment(seg) => {
                        if store_segment(&ctx, &dir, seg, &positions).await {
                            stored_segments.insert(seg);
                        }
                    }
                    Job::Partial { seg, copy, reach } => {
                        if !stored_segments.contains(&seg) {
                            let name = WalFileName::Partial(seg);
                            match super::push::store_partial(&ctx, &copy, name).await {
                                Ok(()) => Positions::raise(
                                    &positions.archived,
                                    Lsn(seg.start_lsn(SEGMENT).0 + reach),
                                ),
                                Err(e) => tracing::warn!(
                                    segment = %seg,
                                    error = %crate::error_chain(&e),
                                    "storing the open segment as .partial failed; the next try comes with the next interval"
                                ),
                            }
                        }
                        let _ = tokio::fs::remove_file(&copy).await;
                    }
                }
            }
        });
        (tx, task)
    }
}

/// Stores one completed segment, retrying until it is stored or refused as
/// a conflict; then removes it from the spool and its `.partial` from the
/// archive. Whether it was stored.
async fn store_segment(ctx: &Context, dir: &Path, seg: Segment, positions: &Positions) -> bool {
    let path = dir.join(seg.to_string());
    let mut backoff = Duration::from_secs(1);
    let stored = loop {
        match super::push::store(ctx, &path, WalFileName::Segment(seg)).await {
            Ok(()) => break true,
            Err(e @ WalError::Conflict { .. }) => {
                // Another file under this name: never overwritten; this one
                // stays in the spool for the operator.
                tracing::error!(error = %e, spool = %path.display(), "segment not stored");
                break false;
            }
            Err(e) => {
                tracing::warn!(segment = %seg, error = %crate::error_chain(&e), retry_in = ?backoff, "storing a segment failed; it stays in the spool");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    };
    if !stored {
        return false;
    }
    Positions::raise(&positions.archived, seg.next(SEGMENT).start_lsn(SEGMENT));
    if tokio::fs::remove_file(&path).await.is_ok() {
        let partial = keys::wal(&WalFileName::Partial(seg));
        if let Err(e) = ctx.storage.delete_many(&[partial]).await {
            tracing::debug!(error = %e, "could not remove the segment's .partial");
        }
        tracing::debug!(segment = %seg, "stored");
    }
    true
}
