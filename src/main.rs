//! The cairn binary: parses arguments, loads configuration, runs one command and
//! maps its outcome to the exit status PostgreSQL expects. The only place that
//! prints or chooses exit codes.

mod cli;
mod display;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use cairn::Context;
use cairn::backup;
use cairn::config::{Config, LogFormat};
use cairn::metrics::Metric;
use cairn::wal::{self, WalError};
use cli::{Cli, Command, DeletePolicy};

/// wal-fetch: the archive definitely lacks the file (and in standby mode: any failure).
const EXIT_NOT_FOUND: u8 = 1;
/// wal-fetch during archive recovery: anything but "not found". PostgreSQL treats an
/// exit status above 125 as fatal and stops, instead of ending recovery early.
const EXIT_FATAL_TO_RECOVERY: u8 = 128;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tune_allocator(matches!(
        cli.command,
        Command::BackupPush { .. } | Command::BackupFetch { .. }
    ));
    let is_fetch = matches!(cli.command, Command::WalFetch { .. });
    // Hidden until a backup or restore shows it; log lines lift it off the screen.
    let bar = indicatif::ProgressBar::hidden();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            // Reported like every other error, in the default log format.
            init_logging(&Config::default(), &bar);
            tracing::error!("{e:#}");
            return failure_code(is_fetch, false);
        }
    };
    init_logging(&config, &bar);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return failure_code(is_fetch, false);
        }
    };
    match runtime.block_on(run(cli, config, bar)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let not_found = matches!(
                e.downcast_ref::<WalError>(),
                Some(WalError::NotInArchive { .. })
            );
            if not_found {
                // Normal at the end of the archive and for .history probes.
                tracing::info!("{e:#}");
            } else {
                tracing::error!("{e:#}");
            }
            failure_code(is_fetch, not_found)
        }
    }
}

/// Tunes glibc's allocator for cairn's pattern: 256 KiB chunks passed between
/// threads, and a few large buffers (zstd tables, upload parts).
/// - A fixed mmap threshold: by default glibc raises it after each large free,
///   so later large buffers land in per-thread heaps that are never given back
///   (wal-push's peak RSS grew with the lookahead: 72 MiB instead of 44 at zstd
///   level 9, lookahead 8). Fixed, they are mmapped and returned when freed.
/// - For backups, streaming gigabytes, a high trim threshold too: fixing the
///   mmap threshold pins the trim threshold at 128 KiB, so the heap shrank
///   after nearly every chunk and regrew with page faults; a restore spent half
///   its system time there (backup-fetch of 1.6 GB: 1.6-1.8 s, 1.4 s with it).
///   wal-push keeps the low one: it holds less, and its RSS has a budget.
fn tune_allocator(streaming_gigabytes: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        if streaming_gigabytes {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = streaming_gigabytes;
}

/// Exit status per DESIGN.md §1.
fn failure_code(is_fetch: bool, not_found: bool) -> ExitCode {
    if !is_fetch || not_found {
        return ExitCode::from(EXIT_NOT_FOUND);
    }
    // restore_command runs in the data directory, where the signal files are.
    if Path::new("standby.signal").exists() {
        ExitCode::from(EXIT_NOT_FOUND)
    } else {
        ExitCode::from(EXIT_FATAL_TO_RECOVERY)
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let file = cli
        .global
        .config
        .clone()
        .or_else(|| std::env::var_os("CAIRN_CONFIG").map(Into::into));
    let mut flags = cli.global.settings();
    // Command flags that stand for configuration keys: (key, flag, value).
    let command_flags = match &cli.command {
        Command::WalPush { lookahead, .. } => vec![("wal_push_lookahead", "lookahead", lookahead)],
        Command::WalFetch { prefetch, .. } => vec![("wal_fetch_prefetch", "prefetch", prefetch)],
        Command::BackupPush {
            metrics_push_url, ..
        }
        | Command::BackupFetch {
            metrics_push_url, ..
        }
        | Command::Delete {
            metrics_push_url, ..
        }
        | Command::WalVerify {
            metrics_push_url, ..
        } => vec![("metrics_push_url", "metrics-push-url", metrics_push_url)],
        _ => Vec::new(),
    };
    for (key, flag, value) in command_flags {
        if let Some(v) = value {
            flags.push(cairn::config::Setting {
                key: key.into(),
                value: serde_yaml::Value::String(v.clone()),
                source: cairn::config::Source::Flag(flag.into()),
            });
        }
    }
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    Ok(Config::load(file.as_deref(), env, flags)?)
}

/// `--tablespace-map OID=PATH`.
fn parse_tablespace_mapping(m: &str) -> anyhow::Result<(u32, std::path::PathBuf)> {
    let (oid, path) = m
        .split_once('=')
        .with_context(|| format!("--tablespace-map {m:?}: expected OID=PATH"))?;
    let oid = oid
        .parse()
        .with_context(|| format!("--tablespace-map {m:?}: {oid:?} is not a tablespace OID"))?;
    Ok((oid, path.into()))
}

/// The restore_command a restored cluster runs: this same binary with this same
/// configuration (file, CAIRN_* variables, flags). Storage credentials are not
/// copied: PostgreSQL's environment must provide them, as for archive_command.
fn restore_command(global: &cli::GlobalArgs) -> anyhow::Result<String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let exe = std::env::current_exe().context("cannot find the cairn binary's own path")?;
    let mut parts: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CAIRN_") && k != "CAIRN_CONFIG")
        .map(|(k, v)| format!("{k}={}", quote(&v)))
        .collect();
    parts.sort();
    parts.push(quote(&exe.to_string_lossy()));
    let config = global
        .config
        .clone()
        .or_else(|| std::env::var_os("CAIRN_CONFIG").map(Into::into));
    if let Some(c) = config {
        let abs = std::fs::canonicalize(&c).unwrap_or(c);
        parts.push("--config".into());
        parts.push(quote(&abs.to_string_lossy()));
    }
    let mut flags = global.clone();
    flags.config = None;
    for a in flags.to_args() {
        parts.push(quote(&a.to_string_lossy()));
    }
    parts.push("wal-fetch %f %p".into());
    Ok(parts.join(" "))
}

/// `cairn delete …`: prints the plan; carries it out with `--confirm`.
/// Returns what it deleted, for metrics.
async fn delete(ctx: &Context, policy: DeletePolicy, confirm: bool) -> anyhow::Result<Vec<Metric>> {
    use cairn::retention::{self, BeforeTarget, Policy, Retain};
    let policy = match policy {
        DeletePolicy::Retain {
            full,
            within,
            daily,
            weekly,
            monthly,
        } => Policy::Retain(Retain {
            full,
            within: within
                .map(|w| retention::parse_duration(&w))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--within: {e}"))?,
            daily,
            weekly,
            monthly,
        }),
        DeletePolicy::Before { target } => Policy::Before(if target.starts_with("base_") {
            BeforeTarget::Name(target)
        } else {
            BeforeTarget::Time(
                retention::parse_time(&target)
                    .map_err(|e| anyhow::anyhow!("delete before: {e}, nor a backup name"))?,
            )
        }),
        DeletePolicy::Target { name } => Policy::Target(name),
        DeletePolicy::Everything => Policy::Everything,
        DeletePolicy::Garbage { grace } => Policy::Garbage {
            grace: retention::parse_duration(&grace)
                .map_err(|e| anyhow::anyhow!("--grace: {e}"))?,
        },
    };
    let loaded = retention::apply::load(ctx).await?;
    let started = std::time::Instant::now();
    let plan = retention::plan(&loaded.catalog, &policy, time::OffsetDateTime::now_utc())?;
    tracing::debug!(elapsed = ?started.elapsed(), "retention plan made");
    print!("{plan}");
    let summary = plan.summary();
    if !confirm {
        if !plan.is_empty() {
            println!("Dry run: nothing was deleted. Run again with --confirm to delete.");
        }
        return Ok(Vec::new());
    }
    let deleted = retention::apply::apply(ctx, &plan, &loaded.manifests).await?;
    tracing::info!(
        objects = deleted,
        backups = summary.backups_deleted,
        wal = summary.wal_deleted,
        "retention applied"
    );
    Ok(vec![
        Metric::gauge(
            "cairn_last_deleted_backups",
            "Backups the last successful delete removed.",
            summary.backups_deleted as f64,
        ),
        Metric::gauge(
            "cairn_last_deleted_wal_files",
            "WAL files the last successful delete removed.",
            summary.wal_deleted as f64,
        ),
        Metric::gauge(
            "cairn_last_deleted_objects",
            "Objects (backup parts, manifests, WAL files) the last successful delete removed.",
            deleted as f64,
        ),
    ])
}

/// backup-push's and backup-fetch's bytes, one metric for both.
fn bytes_raw_metric(bytes: u64) -> Metric {
    Metric::gauge(
        "cairn_last_bytes_raw",
        "Bytes of data the last successful run backed up or restored, before compression.",
        bytes as f64,
    )
}

/// wal-verify's findings, pushed whether or not it passed (a gap is what
/// an alert wants to see).
fn verify_figures(report: &wal::verify::Report) -> Vec<Metric> {
    vec![
        Metric::gauge(
            "cairn_wal_verify_backups",
            "Backups wal-verify checked.",
            report.backups.len() as f64,
        ),
        Metric::gauge(
            "cairn_wal_verify_missing_segments",
            "WAL segments that backups need for recovery to the newest segment and the archive lacks.",
            report.gaps.iter().map(|g| g.segments).sum::<u64>() as f64,
        ),
        Metric::gauge(
            "cairn_wal_verify_missing_histories",
            "Timeline history files that backups need and the archive lacks.",
            report.missing_histories.len() as f64,
        ),
    ]
}

/// backup-list's table.
fn backup_table(list: &[backup::manifest::Manifest]) -> String {
    let mut rows = vec![[
        "name".to_string(),
        "finished".into(),
        "wal range".into(),
        "raw".into(),
        "stored".into(),
        "kind".into(),
        "permanent".into(),
    ]];
    for m in list {
        rows.push([
            m.name.clone(),
            m.finish_time.clone(),
            format!("{}..{}", m.start_wal_file, m.stop_wal_file),
            human_bytes(m.raw_size),
            human_bytes(m.stored_size),
            if m.remote {
                format!("{} (remote)", m.kind)
            } else {
                m.kind.clone()
            },
            if m.permanent { "yes" } else { "no" }.into(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn init_logging(config: &Config, bar: &indicatif::ProgressBar) {
    let builder = tracing_subscriber::fmt()
        .with_writer(display::LogWriter { bar: bar.clone() })
        .with_max_level(config.log_level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        // PostgreSQL's log adds its own timestamps.
        LogFormat::Text => builder.without_time().init(),
    }
}

/// What a command measured, for its metrics.
#[derive(Default)]
struct Figures {
    /// Pushed to the Pushgateway with the run's outcome.
    metrics: Vec<Metric>,
    /// wal-push: what it uploaded, for the textfile.
    wal: wal::push::Uploaded,
}

/// How long a metrics push may take: a down Pushgateway must not hold up
/// a backup's exit for long.
const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the command, then delivers its metrics (which never change its outcome).
async fn run(cli: Cli, config: Config, bar: indicatif::ProgressBar) -> anyhow::Result<()> {
    let command = cli.command.name();
    // A dry run of delete deletes nothing: it is not retention running.
    let pushes = match &cli.command {
        Command::Delete { confirm, .. } => *confirm,
        Command::BackupPush { .. } | Command::BackupFetch { .. } | Command::WalVerify { .. } => {
            true
        }
        _ => false,
    };
    let push_url = config.metrics_push_url.clone().filter(|_| pushes);
    let textfile = config
        .metrics_textfile
        .clone()
        .filter(|_| matches!(cli.command, Command::WalPush { .. }));
    let storage = config.storage.to_string();
    let started = std::time::Instant::now();
    let mut figures = Figures::default();
    let result = execute(cli, config, bar, &mut figures).await;
    let duration = started.elapsed();
    let finished = std::time::SystemTime::now();
    if let Some(path) = textfile {
        let run = cairn::metrics::WalPushRun {
            storage: storage.clone(),
            succeeded: result.is_ok(),
            uploaded: figures.wal,
            duration,
            finished,
        };
        let updated =
            tokio::task::spawn_blocking(move || cairn::metrics::update_textfile(&path, &run)).await;
        match updated {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::warn!("metrics textfile update failed: {e}"),
        }
    }
    if let Some(url) = push_url {
        let run = cairn::metrics::Run {
            command,
            storage,
            succeeded: result.is_ok(),
            finished,
            duration,
            figures: figures.metrics,
        };
        if let Err(e) = cairn::metrics::push(&url, &run, METRICS_TIMEOUT).await {
            tracing::warn!("{e}");
        }
    }
    result
}

async fn execute(
    cli: Cli,
    config: Config,
    bar: indicatif::ProgressBar,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let mut ctx = Context::open(config).await?;
    let what = match cli.command {
        Command::BackupPush { .. } => Some("backup"),
        Command::BackupFetch { .. } => Some("restore"),
        _ => None,
    };
    if let Some(what) = what {
        let mode = display::Mode::choose(
            ctx.config.log_format == LogFormat::Json,
            ctx.config.progress_interval,
        );
        ctx.progress = display::Display::new(mode, what, bar).attach();
    }
    match cli.command {
        Command::WalPush { path, .. } => {
            let report = wal::push::push(&ctx, &path, ctx.config.wal_push_lookahead).await?;
            figures.wal = report.uploaded;
            tracing::debug!(file = %report.name, outcome = ?report.outcome, pushed_ahead = report.pushed_ahead, "archived");
        }
        Command::WalFetch { name, dest, .. } => {
            let (source, next) =
                wal::fetch::fetch(&ctx, &name, &dest, ctx.config.wal_fetch_prefetch).await?;
            tracing::debug!(file = %name, ?source, "restored");
            if !next.is_empty()
                && let Err(e) = wal::fetch::spawn_prefetcher(&dest, &next, &cli.global.to_args())
            {
                tracing::warn!("cannot start prefetch worker: {e}");
            }
        }
        Command::BackupPush {
            pgdata,
            label,
            permanent,
            delta,
            full,
            remote,
            max_rate,
            metrics_push_url: _,
        } => {
            let max_rate = max_rate.unwrap_or(ctx.config.max_rate);
            if max_rate > 0 && max_rate < 32 << 10 {
                anyhow::bail!(
                    "--max-rate {max_rate}: at least 32768 bytes per second, or 0 for no limit"
                );
            }
            let pgdata = pgdata
                .or_else(|| ctx.config.pgdata.clone())
                .or_else(|| std::env::var_os("PGDATA").map(Into::into))
                .filter(|_| !remote);
            if pgdata.is_none() && !remote {
                tracing::info!(
                    "no data directory given (argument, pgdata, PGDATA): backing up over the \
                     replication protocol"
                );
            }
            if pgdata.is_none() && !delta && !full && ctx.config.delta_max_steps > 0 {
                tracing::info!(
                    "taking a full backup: remote backups are full backups (delta_max_steps \
                     applies to backups of a data directory)"
                );
            }
            if pgdata.is_none() && delta {
                anyhow::bail!(
                    "--delta needs the data directory: remote backups (over the replication \
                     protocol) are full backups"
                );
            }
            let opts = backup::push::PushOptions {
                pgdata: pgdata.clone().unwrap_or_default(),
                postgres: ctx.config.postgres.clone(),
                label,
                permanent,
                fast_checkpoint: ctx.config.backup_fast_checkpoint,
                archive_timeout: ctx.config.backup_archive_timeout,
                part_size: ctx.config.backup_part_size,
                concurrency: ctx.config.backup_concurrency,
                kind: if full {
                    backup::push::BackupKind::Full
                } else if delta {
                    backup::push::BackupKind::Delta
                } else {
                    backup::push::BackupKind::Auto {
                        max_steps: ctx.config.delta_max_steps,
                    }
                },
                max_rate,
            };
            let m = if pgdata.is_some() {
                backup::push::push(&ctx, &opts).await?
            } else {
                backup::remote::push_remote(&ctx, &opts).await?
            };
            tracing::info!(
                backup = %m.name,
                start_lsn = %m.start_lsn,
                stop_lsn = %m.stop_lsn,
                kind = %m.kind,
                raw_bytes = m.raw_size,
                stored_bytes = m.stored_size,
                parts = m.parts.len(),
                "backup complete"
            );
            figures.metrics = vec![
                bytes_raw_metric(m.raw_size),
                Metric::gauge(
                    "cairn_last_bytes_stored",
                    "Bytes the last successful backup stored, after compression and encryption.",
                    m.stored_size as f64,
                ),
            ];
            println!("{}", m.name);
        }
        Command::BackupFetch {
            dest,
            name,
            recovery_target,
            tablespace_map,
            metrics_push_url: _,
        } => {
            let recovery_target = recovery_target
                .map(|t| t.parse::<backup::fetch::RecoveryTarget>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let tablespace_map = tablespace_map
                .iter()
                .map(|m| parse_tablespace_mapping(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = backup::fetch::FetchOptions {
                dest,
                name,
                tablespace_map,
                recovery_target,
                restore_command: restore_command(&cli.global)?,
                concurrency: ctx.config.backup_concurrency,
            };
            let m = backup::fetch::fetch(&ctx, &opts).await?;
            tracing::info!(
                backup = %m.name,
                dest = %opts.dest.display(),
                kind = %m.kind,
                raw_bytes = m.raw_size,
                "restore complete"
            );
            figures.metrics = vec![bytes_raw_metric(m.raw_size)];
            println!("{}", m.name);
        }
        Command::BackupList { json } => {
            let list = backup::catalog::list(&ctx).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", backup_table(&list));
            }
        }
        Command::BackupMark { name, impermanent } => {
            let changed = backup::mark::mark(&ctx, &name, !impermanent).await?;
            let state = if impermanent {
                "impermanent"
            } else {
                "permanent"
            };
            if changed.is_empty() {
                tracing::info!(backup = %name, "already {state}");
            }
            for n in changed {
                tracing::info!(backup = %n, "marked {state}");
            }
        }
        Command::Delete {
            policy, confirm, ..
        } => figures.metrics = delete(&ctx, policy, confirm).await?,
        Command::WalVerify { json, .. } => {
            let report = wal::verify::verify(&ctx).await?;
            figures.metrics = verify_figures(&report);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            if let Some(problem) = report.problem() {
                anyhow::bail!("{problem}");
            }
        }
        Command::WalPrefetch { dir, names } => {
            let names = names
                .iter()
                .map(|n| n.parse())
                .collect::<Result<Vec<_>, _>>()
                .context("wal-prefetch got a bad segment name")?;
            wal::fetch::prefetch_worker(&ctx, &dir, &names).await;
        }
    }
    Ok(())
}
