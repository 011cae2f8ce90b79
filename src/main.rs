//! The cairn binary: parses arguments, loads configuration, resolves the
//! invocation ([`cli`]), runs it, presents its outcome ([`display`]) and maps
//! it to the exit status PostgreSQL expects. The only place that prints or
//! chooses exit codes.

mod cli;
mod display;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use cairn::Context;
use cairn::config::{Config, LogFormat};
use cairn::metrics::Metric;
use cairn::wal::{self, WalError};
use cli::{Cli, Invocation};

/// wal-fetch: the archive definitely lacks the file (and in standby mode: any
/// failure). wal-push and other commands: any failure.
const EXIT_NOT_FOUND: u8 = 1;
/// wal-fetch during archive recovery: anything but "not found". PostgreSQL treats an
/// exit status above 125 as fatal and stops, instead of ending recovery early.
const EXIT_FATAL_TO_RECOVERY: u8 = 128;

/// Who called, as far as the exit status is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// restore_command: 1 means "not in the archive" and ends recovery.
    WalFetch,
    /// archive_command: never 0 but for success, never above 125.
    WalPush,
    Other,
}

impl Caller {
    fn of(word: Option<&str>) -> Caller {
        match word {
            Some("wal-fetch") => Caller::WalFetch,
            Some("wal-push") => Caller::WalPush,
            _ => Caller::Other,
        }
    }

    /// Exit status per DESIGN.md §1 for a failure (`not_found`: wal-fetch's
    /// "the archive does not have it").
    fn failure(self, not_found: bool) -> ExitCode {
        if self != Caller::WalFetch || not_found {
            return ExitCode::from(EXIT_NOT_FOUND);
        }
        // restore_command runs in the data directory, where the signal files are.
        if Path::new("standby.signal").exists() {
            ExitCode::from(EXIT_NOT_FOUND)
        } else {
            ExitCode::from(EXIT_FATAL_TO_RECOVERY)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let caller = Caller::of(cli::command_word(&args).as_deref());
    // Whatever goes wrong, PostgreSQL must read the right status: a panic is
    // a failure like any other (reported on stderr as one line), never
    // clap's or Rust's own codes, which read as "not found".
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("ERROR cairn failed unexpectedly: {message}{at}");
    }));
    match std::panic::catch_unwind(|| run_main(args, caller)) {
        Ok(code) => code,
        Err(_) => caller.failure(false),
    }
}

fn run_main(args: Vec<OsString>, caller: Caller) -> ExitCode {
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => return usage_error(e, caller),
    };
    let is_backup = matches!(
        cli.command,
        cli::Command::BackupPush { .. }
            | cli::Command::BackupFetch { .. }
            | cli::Command::BackupVerify { .. }
            | cli::Command::Drill { .. }
    );
    tune_allocator(is_backup);
    // Hidden until a backup or restore shows it; log lines lift it off the screen.
    let bar = indicatif::ProgressBar::hidden();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            // Reported like every other error, in the default log format.
            init_logging(&Config::default(), &bar);
            tracing::error!("{e:#}");
            return caller.failure(false);
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
            return caller.failure(false);
        }
    };
    match runtime.block_on(run(cli, config, bar)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let not_found = matches!(
                e.downcast_ref::<WalError>(),
                Some(WalError::NotInArchive { .. })
            );
            if e.downcast_ref::<display::StdoutClosed>().is_some() {
                // `cairn backup-list | head`: the reader has all it wanted.
                return ExitCode::SUCCESS;
            }
            if not_found {
                // Normal at the end of the archive and for .history probes.
                tracing::info!("{e:#}");
            } else {
                tracing::error!("{e:#}");
            }
            caller.failure(not_found)
        }
    }
}

/// Arguments that do not parse. Help and version are answers, not errors;
/// anything else is reported in one line, with the status PostgreSQL must see
/// from restore_command or archive_command (clap's own 2 would read as "not
/// in the archive" and end a recovery early).
fn usage_error(e: clap::Error, caller: Caller) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand if caller == Caller::Other => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        _ => {}
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let hint = match caller {
        Caller::WalFetch => " (restore_command = 'cairn wal-fetch %f %p')",
        Caller::WalPush => " (archive_command = 'cairn wal-push %p')",
        Caller::Other => " (cairn --help lists the commands and options)",
    };
    eprintln!("ERROR invalid arguments: {first}{hint}");
    match caller {
        Caller::Other => ExitCode::from(2),
        _ => caller.failure(false),
    }
}

/// Tunes glibc's allocator for cairn's pattern: 256 KiB chunks passed between
/// threads, and a few large buffers (zstd tables, upload parts).
/// - A fixed mmap threshold: by default glibc raises it after each large free,
///   so later large buffers land in per-thread heaps that are never given back
///   (wal-push's peak RSS grew with the lookahead: 72 MiB instead of 44 at zstd
///   level 9, lookahead 8). Fixed, they are mmapped and returned when freed.
/// - For the commands that stream gigabytes (backup-push, backup-fetch,
///   backup-verify, drill), a high trim threshold too: fixing the
///   mmap threshold pins the trim threshold at 128 KiB, so the heap shrank
///   after nearly every chunk and regrew with page faults; a restore spent half
///   its system time there (backup-fetch of 1.6 GB: 1.6-1.8 s, 1.4 s with it).
///   wal-push keeps the low one: it holds less, and its RSS has a budget.
///
/// A buffer of 1 MiB or more is thus a fresh mapping, faulted in page by
/// page: the streaming paths keep theirs (compressors, upload parts) rather
/// than allocate one per chunk, which cost a backup-push a page fault per
/// 4 KiB it stored.
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

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    Ok(Config::load(
        cli.config_file().as_deref(),
        env,
        cli.settings(),
    )?)
}

fn init_logging(config: &Config, bar: &indicatif::ProgressBar) {
    // cairn's own events at the configured level; libraries' only when they
    // are errors (the AWS SDK warns with whole debug dumps of what cairn
    // reports in one line anyway).
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::ERROR)
        .with_target("cairn", config.log_level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let writer = display::LogWriter { bar: bar.clone() };
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_target(false)
                    .with_writer(writer),
            )
            .init(),
        // PostgreSQL's log adds its own timestamps.
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .init(),
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

/// Resolves and runs the command, then delivers its metrics (which never
/// change its outcome).
async fn run(cli: Cli, config: Config, bar: indicatif::ProgressBar) -> anyhow::Result<()> {
    let command = cli.command.name();
    let pushes = match &cli.command {
        // A dry run of delete deletes nothing: it is not retention running.
        cli::Command::Delete { confirm, .. } => *confirm,
        cli::Command::BackupPush { .. }
        | cli::Command::BackupFetch { .. }
        | cli::Command::WalVerify { .. }
        | cli::Command::BackupVerify { .. }
        | cli::Command::Drill { .. } => true,
        _ => false,
    };
    let push_url = config.metrics_push_url.clone().filter(|_| pushes);
    let textfile = config
        .metrics_textfile
        .clone()
        .filter(|_| matches!(cli.command, cli::Command::WalPush { .. }));
    let storage = config.storage.to_string();
    let global_args = cli.global.to_args();
    let started = std::time::Instant::now();
    let mut figures = Figures::default();
    let result = match cli::resolve(cli, &config) {
        Ok(invocation) => execute(invocation, config, bar, &global_args, &mut figures).await,
        Err(e) => Err(e),
    };
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
    invocation: Invocation,
    config: Config,
    bar: indicatif::ProgressBar,
    global_args: &[OsString],
    figures: &mut Figures,
) -> anyhow::Result<()> {
    // PostgreSQL waits on wal-push and wal-fetch: storage_timeout bounds the
    // whole call, however many requests it makes.
    let until = matches!(
        invocation,
        Invocation::WalPush { .. } | Invocation::WalFetch { .. }
    )
    .then(|| std::time::Instant::now() + config.storage_timeout);
    let mut ctx = Context::open_until(config, until).await?;
    if let Some(what) = invocation.progress() {
        let mode = display::Mode::choose(
            ctx.config.log_format == LogFormat::Json,
            ctx.config.progress_interval,
        );
        ctx.progress = display::Display::new(mode, what, bar).attach();
    }
    let mut out = display::Stdout::new();
    match invocation {
        Invocation::WalPush { path } => {
            let report = wal::push::push(&ctx, &path, ctx.config.wal_push_lookahead).await?;
            figures.wal = report.uploaded;
            tracing::debug!(file = %report.name, outcome = ?report.outcome, pushed_ahead = report.pushed_ahead, "archived");
        }
        Invocation::WalFetch { name, dest } => {
            let fetched =
                wal::fetch::fetch(&ctx, &name, &dest, ctx.config.wal_fetch_prefetch).await?;
            tracing::debug!(file = %name, source = ?fetched.source, "restored");
            if let Some(spool) = &fetched.spool
                && !fetched.next.is_empty()
                && let Err(e) = wal::fetch::spawn_prefetcher(spool, &fetched.next, global_args)
            {
                tracing::warn!("cannot start prefetch worker: {e}");
            }
        }
        Invocation::WalPrefetch { dir, names } => {
            wal::fetch::prefetch_worker(&ctx, &dir, &names).await;
        }
        Invocation::WalReceive { opts } => {
            let ctx = std::sync::Arc::new(ctx);
            wal::receive::receive(ctx, &opts, async {
                let signal = cairn::interrupted().await;
                tracing::info!("{signal}: storing the open segment and stopping");
            })
            .await?;
        }
        Invocation::BackupPush { opts, remote } => {
            let m = if remote {
                cairn::backup::remote::push_remote(&ctx, &opts).await?
            } else {
                cairn::backup::push::push(&ctx, &opts).await?
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
            figures.metrics =
                cairn::metrics::backup_figures(m.raw_size, m.stored_size, m.corrupt_pages.len());
            out.line(&m.name)?;
        }
        Invocation::BackupFetch(opts) => {
            let m = cairn::backup::restore::fetch(&ctx, &opts).await?;
            tracing::info!(
                backup = %m.name,
                dest = %opts.dest.display(),
                kind = %m.kind,
                raw_bytes = m.raw_size,
                "restore complete"
            );
            figures.metrics = cairn::metrics::restore_figures(m.raw_size);
            out.line(&m.name)?;
        }
        Invocation::BackupList { json } => {
            let list = cairn::archive::catalog::list(&ctx).await?;
            if json {
                out.text(&format!("{}\n", serde_json::to_string_pretty(&list)?))?;
            } else {
                out.text(&display::backup_table(&list))?;
            }
        }
        Invocation::BackupMark { name, permanent } => {
            let changed = cairn::backup::mark::mark(&ctx, &name, permanent).await?;
            let state = if permanent {
                "permanent"
            } else {
                "impermanent"
            };
            if changed.is_empty() {
                tracing::info!(backup = %name, "already {state}");
            }
            for n in changed {
                tracing::info!(backup = %n, "marked {state}");
            }
        }
        Invocation::Delete { policy, confirm } => {
            figures.metrics = delete(&ctx, &policy, confirm, &mut out).await?;
        }
        Invocation::WalVerify { json } => {
            let report = wal::verify::verify(&ctx).await?;
            figures.metrics = cairn::metrics::verify_figures(&report);
            out.report(&report, json)?;
            if let Some(problem) = report.problem() {
                anyhow::bail!("{problem}");
            }
        }
        Invocation::BackupVerify {
            which,
            to_latest,
            json,
        } => {
            let concurrency = ctx.config.backup_concurrency;
            let report = cairn::drill::verify::verify(&ctx, &which, to_latest, concurrency).await?;
            figures.metrics = cairn::metrics::backup_verify_figures(&report);
            out.report(&report, json)?;
            if let Some(problem) = report.problem() {
                anyhow::bail!("{problem}");
            }
        }
        Invocation::Drill {
            opts,
            report: file,
            format,
        } => {
            let report = cairn::drill::drill(&ctx, &opts).await?;
            figures.metrics = cairn::metrics::drill_figures(&report);
            let text = match format {
                cli::ReportFormat::Text => report.evidence_log(),
                cli::ReportFormat::Json => format!("{}\n", serde_json::to_string_pretty(&report)?),
                cli::ReportFormat::Markdown => report.markdown(),
            };
            out.text(&text)?;
            if let Some(path) = file {
                let durability = cairn::durable::Durability::Durable;
                cairn::durable::write(path.clone(), text.into_bytes(), durability)
                    .await
                    .with_context(|| format!("cannot write the report to {}", path.display()))?;
            }
            if !report.passed {
                anyhow::bail!("drill of {} failed: {}", report.backup, report.outcome());
            }
        }
    }
    Ok(())
}

/// `cairn delete …`: prints the plan; carries it out with `--confirm`.
/// Returns what it deleted, for metrics.
async fn delete(
    ctx: &Context,
    policy: &cairn::retention::Policy,
    confirm: bool,
    out: &mut display::Stdout,
) -> anyhow::Result<Vec<Metric>> {
    use cairn::retention;
    let catalog = cairn::archive::Catalog::load(ctx).await?;
    let started = std::time::Instant::now();
    let plan = retention::plan(&catalog, policy, time::OffsetDateTime::now_utc())?;
    tracing::debug!(elapsed = ?started.elapsed(), "retention plan made");
    out.text(&plan.to_string())?;
    let summary = plan.summary();
    if !confirm {
        if !plan.is_empty() {
            out.line("Dry run: nothing was deleted. Run again with --confirm to delete.")?;
        }
        return Ok(Vec::new());
    }
    let mut deleted = retention::apply::apply(ctx, &plan, &catalog.holes).await?;
    if let retention::Policy::Garbage { grace } = policy {
        // What dead writers left that listings do not show (temporary files).
        let grace = std::time::Duration::try_from(*grace).unwrap_or_default();
        let leftovers = ctx.storage.remove_leftovers(grace).await?;
        if leftovers > 0 {
            out.line(&format!(
                "Removed {leftovers} temporary object(s) left by writers that died."
            ))?;
        }
        deleted += leftovers;
    }
    tracing::info!(
        objects = deleted,
        backups = summary.backups_deleted,
        wal = summary.wal_deleted,
        "retention applied"
    );
    Ok(cairn::metrics::delete_figures(
        summary.backups_deleted,
        summary.wal_deleted,
        deleted,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_word_is_found_past_global_options() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            cli::command_word(&args(&[
                "cairn",
                "--storage",
                "s3://b",
                "wal-fetch",
                "x",
                "y"
            ])),
            Some("wal-fetch".into())
        );
        assert_eq!(
            cli::command_word(&args(&["cairn", "--prefech", "4", "wal-fetch", "x"])),
            Some("wal-fetch".into())
        );
        assert_eq!(
            cli::command_word(&args(&["cairn", "wal-push"])),
            Some("wal-push".into())
        );
        assert_eq!(cli::command_word(&args(&["cairn", "--storage", "x"])), None);
        // The list is clap's.
        use clap::CommandFactory;
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(names, cli::COMMANDS);
    }
}
