//! `cairn drill`: restores a backup (with its chain) into a scratch
//! directory, replays the archive to the recovery target with cairn's own
//! restore_command, starts a throwaway server on a private Unix socket,
//! checks the data, measures how long it all took (the backup's RTO) and how
//! far the archive reaches (its RPO), and leaves a report. It never touches
//! the cluster the backup came from and never writes to the archive
//! (`archive_mode = off`; restore_command only reads), and it removes its
//! server and directory however it ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::checks::{self, Check, Conn, Status, UserCheck};
use super::report::Report;
use super::server::{Binaries, Server, major_of};
use super::{DrillError, verify};
use crate::Context;
use crate::archive::manifest::rfc3339;
use crate::archive::{catalog, keys};
use crate::backup::restore::{FetchOptions, RecoveryTarget};
use crate::pg::client::PgSession;
use crate::pg::wal::{Lsn, Segment, WalFileName};

/// What a drill does.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// A backup name or `LATEST`.
    pub name: String,
    pub target: RecoveryTarget,
    /// Scratch directory (created if missing, must be empty); a new one in
    /// the temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Leave the scratch directory (stopped) for inspection.
    pub keep: bool,
    /// PostgreSQL server binaries; found for the backup's major version
    /// when `None`.
    pub pg_bin: Option<PathBuf>,
    /// `--check` files (YAML lists of checks).
    pub check_files: Vec<PathBuf>,
    /// The restore_command the restored server runs (cairn itself).
    pub restore_command: String,
    pub concurrency: usize,
    /// How long recovery may take before the drill gives up.
    pub timeout: Duration,
    /// The command as typed, for the report.
    pub command: String,
}

/// The scratch directory and what the drill made in it; removed on drop
/// (unless kept), after the server stopped.
struct Scratch {
    root: PathBuf,
    made_root: bool,
    keep: bool,
    server: Option<Server>,
}

impl Scratch {
    fn new(dir: Option<&Path>, keep: bool) -> Result<Scratch, DrillError> {
        use std::os::unix::fs::DirBuilderExt;
        let (root, made_root) = match dir {
            Some(d) => {
                let made = !d.exists();
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
                    .map_err(|e| DrillError::io(d, e))?;
                if std::fs::read_dir(d)
                    .map_err(|e| DrillError::io(d, e))?
                    .next()
                    .is_some()
                {
                    return Err(DrillError::ScratchNotEmpty(d.to_path_buf()));
                }
                (d.to_path_buf(), made)
            }
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let d = std::env::temp_dir()
                    .join(format!("cairn-drill-{}-{nanos:08x}", std::process::id()));
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&d)
                    .map_err(|e| DrillError::io(&d, e))?;
                (d, true)
            }
        };
        Ok(Scratch {
            root,
            made_root,
            keep,
            server: None,
        })
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("s")
    }

    /// Where a tablespace of the backup is restored.
    fn tablespace(&self, oid: u32) -> PathBuf {
        self.root.join(format!("ts-{oid}"))
    }

    fn tablespaces(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.root)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("ts-"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Removes a file or a tree; a restore cut short may still be writing into
/// it for a moment, so a tree that will not go is tried again.
fn remove(path: &Path) {
    for _ in 0..20 {
        let gone = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(_) => false,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).is_ok(),
            Ok(_) => std::fs::remove_file(path).is_ok(),
        };
        if gone {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::warn!("could not remove {}: remove it by hand", path.display());
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        if self.keep {
            return;
        }
        let paths = if self.made_root {
            vec![self.root.clone()]
        } else {
            let mut p = vec![self.data(), self.socket_dir(), self.root.join("server.log")];
            p.extend(self.tablespaces());
            p
        };
        for p in paths {
            remove(&p);
        }
    }
}

/// Runs a drill; the report says what happened, also when it failed part
/// way (then `error` is set and the checks that could not run are absent).
/// Errors are for what stops a drill before it starts (no such backup, no
/// server binaries, a scratch directory in use).
pub async fn drill(ctx: &Context, opts: &DrillOptions) -> Result<Report, DrillError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Err(DrillError::AsRoot);
    }
    let started = OffsetDateTime::now_utc();
    let files = opts.check_files.clone();
    let user_checks = crate::blocking(move || {
        let loaded = files
            .iter()
            .map(|f| checks::load(f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, DrillError>(loaded.concat())
    })
    .await?;
    let manifest = catalog::resolve(ctx, &opts.name).await?;
    let chain = catalog::chain(ctx, manifest.clone()).await?;
    let major = major_of(manifest.pg_version);
    let given = opts.pg_bin.clone();
    let bin = crate::blocking(move || Binaries::find(major, given.as_deref())).await?;
    let mut report = Report::new(
        &opts.command,
        &opts.target,
        chain.iter().map(|m| m.name.clone()).collect(),
        major,
        started,
    );
    let mut scratch = {
        let (dir, keep) = (opts.dir.clone(), opts.keep);
        crate::blocking(move || Scratch::new(dir.as_deref(), keep)).await?
    };
    let outcome = tokio::select! {
        r = run(ctx, opts, &user_checks, &bin, &manifest, &mut scratch, &mut report) => r,
        signal = crate::interrupted() => Err(DrillError::Interrupted(signal)),
    };
    // Stopping the server and removing the directory block: off the async
    // workers. A restore cut short by a signal may still have writers
    // finishing; Scratch's drop retries the removal.
    let removed = crate::blocking(move || {
        drop(scratch);
        Ok::<_, DrillError>(())
    })
    .await;
    if let Err(e) = outcome.and(removed) {
        report.error = Some(crate::error_chain(&e));
    }
    report.finish();
    Ok(report)
}

async fn run(
    ctx: &Context,
    opts: &DrillOptions,
    user_checks: &[UserCheck],
    bin: &Binaries,
    manifest: &crate::archive::manifest::Manifest,
    scratch: &mut Scratch,
    report: &mut Report,
) -> Result<(), DrillError> {
    // The WAL up to the backup's stop must be there and whole, or no target
    // can be reached: say which segment is wrong before restoring anything.
    let size = manifest.wal_segment_size;
    let problems = verify::check_wal(
        ctx,
        &[(manifest.start_segment(), manifest.stop_segment())],
        size,
        manifest.system_identifier,
        opts.concurrency,
        true,
        &mut 0,
    )
    .await;
    if let Some(first) = problems.into_iter().next() {
        return Err(DrillError::Unrestorable(first));
    }

    // Restore.
    let t = Instant::now();
    let fetch = FetchOptions {
        dest: scratch.data(),
        name: manifest.name.clone(),
        tablespace_map: manifest
            .tablespaces
            .iter()
            .map(|ts| (ts.oid, scratch.tablespace(ts.oid)))
            .collect(),
        recovery_target: Some(opts.target.clone()),
        restore_command: opts.restore_command.clone(),
        concurrency: opts.concurrency,
        delta: false,
    };
    crate::backup::restore::fetch(ctx, &fetch).await?;
    report.fetch_s = t.elapsed().as_secs_f64();

    // Start and wait for the end of recovery.
    let t = Instant::now();
    let (data, socket_dir, log) = (
        scratch.data(),
        scratch.socket_dir(),
        scratch.root.join("server.log"),
    );
    let b = bin.clone();
    let server = crate::blocking(move || {
        prepare_config(&data)?;
        std::fs::create_dir_all(&socket_dir).map_err(|e| DrillError::io(&socket_dir, e))?;
        let s = Server::start(&b, &data, &socket_dir, &log)?;
        s.wait_started(Duration::from_secs(60))?;
        Ok::<_, DrillError>(s)
    })
    .await?;
    let socket_dir = server.socket_dir.clone();
    scratch.server = Some(server);
    let session = match wait_for_end_of_recovery(scratch, &socket_dir, opts.timeout).await {
        Ok(s) => s,
        Err(e) => {
            report.checks.push(Check {
                name: "consistent".into(),
                status: Status::Failed,
                evidence: crate::error_chain(&e),
            });
            return Err(e);
        }
    };
    report.replay_s = t.elapsed().as_secs_f64();
    report.rto_s = report.fetch_s + report.replay_s;
    report.checks.push(Check {
        name: "consistent".into(),
        status: Status::Passed,
        evidence: "recovery ended at the target; the server accepts connections".into(),
    });

    // What recovery replayed, and how far it reached.
    let replayed = session
        .first_value("SELECT pg_last_wal_replay_lsn()::text")
        .await?
        .and_then(|l| l.parse::<Lsn>().ok());
    if let Some(end) = replayed {
        let first = manifest.start_segment().number(size);
        // The segment of the last byte replayed: after a switch, replay
        // stands at the very start of the next segment, which it has not read.
        let last =
            Segment::containing(manifest.timeline, Lsn(end.0.saturating_sub(1)), size).number(size);
        report.wal_files_replayed = last.saturating_sub(first) + 1;
        report.wal_bytes_replayed = end.0.saturating_sub(manifest.start_lsn.0);
    }
    let last_xact = session
        .first_value(
            "SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
        )
        .await?;
    let newest = newest_wal(ctx).await?;
    if let Some(t) = &last_xact
        && let Ok(xact) = OffsetDateTime::parse(t, &Rfc3339)
        && let Some(stored) = newest.as_ref().and_then(|n| n.1)
    {
        report.rpo_s = Some((stored - xact).as_seconds_f64().max(0.0));
    }
    report.last_replayed_xact = last_xact;
    if let Some((name, stored)) = newest {
        report.newest_archived_wal = Some(name);
        report.newest_archived_at = stored.map(rfc3339::format);
    }

    // Checks.
    let conn = Conn {
        socket_dir: socket_dir.clone(),
        user: session_user(&session).await?,
    };
    // amcheck and the full read each keep one backend busy: side by side
    // they take about as long as amcheck alone.
    let (amcheck, read) = tokio::join!(checks::amcheck(&conn), checks::read_through(&conn));
    report.checks.push(amcheck);
    report.checks.push(read);
    report
        .checks
        .extend(checks::run_user(&conn, user_checks).await);
    drop(session);
    Ok(())
}

/// A config the drill's server can start with: the backup's own
/// postgresql.conf may live outside the data directory (Debian keeps it in
/// /etc), and its pg_hba.conf may ask for passwords; the drill's server
/// listens on a private socket only, where trust is safe.
fn prepare_config(data: &Path) -> Result<(), DrillError> {
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "# Written by cairn drill: the backup held none.\n")
            .map_err(|e| DrillError::io(&conf, e))?;
    }
    let hba = data.join("cairn_drill_hba.conf");
    std::fs::write(&hba, "local all all trust\n").map_err(|e| DrillError::io(&hba, e))?;
    let ident = data.join("cairn_drill_ident.conf");
    std::fs::write(&ident, "").map_err(|e| DrillError::io(&ident, e))?;
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&format!(
        "\n# Added by cairn drill\nhba_file = '{}'\nident_file = '{}'\n",
        hba.display(),
        ident.display()
    ));
    std::fs::write(&auto, text).map_err(|e| DrillError::io(&auto, e))
}

/// Connects once the server accepts connections and recovery is over,
/// promoting a server paused at its target.
async fn wait_for_end_of_recovery(
    scratch: &Scratch,
    socket_dir: &Path,
    timeout: Duration,
) -> Result<PgSession, DrillError> {
    let deadline = Instant::now() + timeout;
    // The bootstrap superuser is usually postgres, else the OS user that
    // ran initdb (which a drill run as that user is).
    let os_user = std::env::var("USER").unwrap_or_else(|_| "postgres".into());
    let conn = |user: &str| Conn {
        socket_dir: socket_dir.to_path_buf(),
        user: user.to_string(),
    };
    loop {
        let alive = scratch.server.as_ref().is_some_and(Server::alive);
        if !alive {
            let tail = scratch
                .server
                .as_ref()
                .map(|s| s.log_tail(6))
                .unwrap_or_default();
            return Err(DrillError::Server(format!(
                "the server stopped during recovery: {tail}"
            )));
        }
        if Instant::now() > deadline {
            return Err(DrillError::Server(format!(
                "recovery did not end within {} s",
                timeout.as_secs()
            )));
        }
        for user in ["postgres", os_user.as_str()] {
            let Ok(session) = conn(user).to("template1").await else {
                continue;
            };
            match session.in_recovery().await {
                Ok(false) => return Ok(session),
                Ok(true) => {
                    // Paused at the target (recovery_target_action = pause):
                    // promote, as a restore to that moment would.
                    if session
                        .first_value("SELECT pg_get_wal_replay_pause_state()")
                        .await
                        .ok()
                        .flatten()
                        .as_deref()
                        == Some("paused")
                    {
                        let _ = session.first_value("SELECT pg_promote()").await;
                    }
                }
                Err(_) => {}
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The role the session is connected as (the checks' client tools use it).
async fn session_user(session: &PgSession) -> Result<String, DrillError> {
    Ok(session
        .first_value("SELECT current_user")
        .await?
        .unwrap_or_else(|| "postgres".into()))
}

/// The newest whole segment in the archive (by timeline, then position),
/// and when it was stored, where the storage says.
async fn newest_wal(ctx: &Context) -> Result<Option<(String, Option<OffsetDateTime>)>, DrillError> {
    let listed = ctx.storage.list(keys::WAL, None, None).await?;
    Ok(listed
        .iter()
        .filter_map(|o| match keys::classify(&o.key) {
            keys::Listed::Wal(WalFileName::Segment(s)) => Some((s, o.modified)),
            _ => None,
        })
        .max_by_key(|(s, _)| (s.timeline, s.pos()))
        .map(|(s, modified)| (s.to_string(), modified.map(OffsetDateTime::from))))
}
