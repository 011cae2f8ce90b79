//! The command line: clap's definitions, and their resolution into one
//! [`Invocation`] per command, with every option taken from flags or
//! configuration and validated once, before anything runs.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use cairn::backup::push::{BackupKind, PushOptions};
use cairn::backup::restore::{FetchOptions, RecoveryTarget};
use cairn::config::{Config, Setting, Source};
use cairn::drill::DrillOptions;
use cairn::drill::verify::Which;
use cairn::pg::wal::WalFileName;
use cairn::retention::{self, BeforeTarget, Policy, Retain};

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Keeps PostgreSQL clusters recoverable to any moment: WAL archiving and restore to a local directory, S3 or GCS",
    after_help = "Configuration: YAML file (--config or CAIRN_CONFIG) < CAIRN_* environment variables < flags.\n\
                  See config/cairn.example.yaml for every key."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes; each overrides the configuration key of the same name.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// YAML configuration file [env: CAIRN_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Storage URL: file:///path, s3://bucket/prefix or gs://bucket/prefix
    #[arg(long, global = true, value_name = "URL")]
    pub storage: Option<String>,
    /// Compression of new objects: none, lz4 or zstd
    #[arg(long, global = true, value_name = "NAME")]
    pub compression: Option<String>,
    /// zstd level (1-22)
    #[arg(long, global = true, value_name = "N")]
    pub zstd_level: Option<String>,
    /// error, warn, info, debug or trace
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// text or json
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

impl GlobalArgs {
    /// The flags as configuration settings (highest precedence).
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        for (key, v) in self.pairs() {
            out.push(Setting {
                key: key.to_string(),
                value: serde_yaml::Value::String(v.clone()),
                source: Source::Flag(key.replace('_', "-")),
            });
        }
        out
    }

    fn pairs(&self) -> Vec<(&'static str, &String)> {
        [
            ("storage", &self.storage),
            ("compression", &self.compression),
            ("zstd_level", &self.zstd_level),
            ("log_level", &self.log_level),
            ("log_format", &self.log_format),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect()
    }

    /// The same options as arguments, for a child cairn process.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(c) = &self.config {
            args.push("--config".into());
            args.push(c.clone().into_os_string());
        }
        for (k, v) in self.pairs() {
            args.push(format!("--{}", k.replace('_', "-")).into());
            args.push(v.into());
        }
        args
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive one WAL file (archive_command = 'cairn wal-push %p')
    WalPush {
        /// The WAL file, as PostgreSQL passes it (%p)
        path: PathBuf,
        /// Push up to N other .ready segments ahead, concurrently [config: wal_push_lookahead]
        #[arg(long, value_name = "N")]
        lookahead: Option<String>,
    },
    /// Restore one WAL file (restore_command = 'cairn wal-fetch %f %p')
    WalFetch {
        /// The WAL file name (%f)
        name: String,
        /// Where to write it (%p)
        dest: PathBuf,
        /// Prefetch the next M segments in the background [config: wal_fetch_prefetch]
        #[arg(long, value_name = "M")]
        prefetch: Option<String>,
    },
    /// Take a base backup of a running cluster (PostgreSQL connection from the
    /// PG* variables or the postgres: config section)
    BackupPush {
        /// The cluster's data directory [config: pgdata, env: PGDATA]
        pgdata: Option<PathBuf>,
        /// A label for the backup (recorded in backup_label and the manifest)
        #[arg(long)]
        label: Option<String>,
        /// Never delete this backup in retention
        #[arg(long)]
        permanent: bool,
        /// Store only what changed since the latest backup [config: delta_max_steps]
        #[arg(long, conflicts_with = "full")]
        delta: bool,
        /// Take a full backup even when delta_max_steps asks for a delta
        #[arg(long)]
        full: bool,
        /// Back up over the replication protocol, from a host that cannot see the
        /// data directory (the role needs REPLICATION); also chosen when no PGDATA
        /// is given or configured. Deltas of remote backups are PostgreSQL 17's
        /// incremental backups (the server needs summarize_wal = on).
        #[arg(long, conflicts_with = "pgdata")]
        remote: bool,
        /// Read at most BYTES per second from the data directory (remote: have the
        /// server send at most that); 0 for no limit [config: max_rate]
        #[arg(long, value_name = "BYTES")]
        max_rate: Option<String>,
        /// Fail the backup when a page's checksum fails (the cluster has data
        /// checksums); otherwise such pages are recorded and reported
        /// [config: fail_on_page_corruption]
        #[arg(long)]
        fail_on_page_corruption: bool,
        /// Push the outcome (success, duration, bytes) to this Prometheus
        /// Pushgateway, e.g. http://pushgateway:9091 [config: metrics_push_url]
        #[arg(long, value_name = "URL")]
        metrics_push_url: Option<String>,
    },
    /// Restore a base backup into an empty directory
    BackupFetch {
        /// Where to restore (must be empty or absent, unless --delta)
        dest: PathBuf,
        /// A backup name (see backup-list) or LATEST
        name: String,
        /// Set up recovery: latest, immediate (the backup's consistency point),
        /// time=…, lsn=…, xid=… or name=…
        #[arg(long, value_name = "TARGET")]
        recovery_target: Option<String>,
        /// Put tablespace OID at PATH instead of its original location (repeatable)
        #[arg(long, value_name = "OID=PATH")]
        tablespace_map: Vec<String>,
        /// Restore over DEST, an existing data directory of the same cluster with
        /// no server running: files that match are kept, the others rewritten
        /// where they differ, extra files removed
        #[arg(long)]
        delta: bool,
        /// Push the outcome (success, duration, bytes) to this Prometheus
        /// Pushgateway, e.g. http://pushgateway:9091 [config: metrics_push_url]
        #[arg(long, value_name = "URL")]
        metrics_push_url: Option<String>,
    },
    /// List base backups, oldest first (by start time, then WAL position),
    /// with when each started and finished
    BackupList {
        /// Every manifest field, as JSON
        #[arg(long)]
        json: bool,
    },
    /// Make a backup permanent (never deleted by retention), with the backups
    /// it is built on; or, with --impermanent, ordinary again
    BackupMark {
        /// A backup name (see backup-list)
        name: String,
        /// Remove the mark from this backup (its ancestors keep theirs)
        #[arg(long)]
        impermanent: bool,
    },
    /// Retention: delete backups and WAL by lineage; prints the plan, and
    /// carries it out only with --confirm
    Delete {
        #[command(subcommand)]
        policy: DeletePolicy,
        /// Carry the plan out (without it, nothing is deleted)
        #[arg(long, global = true)]
        confirm: bool,
        /// Push the outcome (success, duration, bytes) to this Prometheus
        /// Pushgateway, e.g. http://pushgateway:9091 [config: metrics_push_url]
        #[arg(long, global = true, value_name = "URL")]
        metrics_push_url: Option<String>,
    },
    /// Check that the archive holds every WAL segment from each backup's start
    /// to the newest segment, following timeline switches
    WalVerify {
        /// The report as JSON
        #[arg(long)]
        json: bool,
        /// Push the outcome (success, duration, bytes) to this Prometheus
        /// Pushgateway, e.g. http://pushgateway:9091 [config: metrics_push_url]
        #[arg(long, value_name = "URL")]
        metrics_push_url: Option<String>,
    },
    /// Prove, without PostgreSQL, that a backup restores: read every part of it
    /// and of its delta chain, check every file against the manifest, and check
    /// that the archive holds the WAL from its start to its stop
    BackupVerify {
        /// A backup name (see backup-list) or LATEST [default: LATEST]
        #[arg(conflicts_with = "all")]
        name: Option<String>,
        /// Verify every backup
        #[arg(long)]
        all: bool,
        /// Also check the WAL from each backup's stop to the newest segment,
        /// following timeline switches
        #[arg(long)]
        to_latest: bool,
        /// The report as JSON
        #[arg(long)]
        json: bool,
        /// Push the outcome to this Prometheus Pushgateway [config: metrics_push_url]
        #[arg(long, value_name = "URL")]
        metrics_push_url: Option<String>,
    },
    /// Restore a backup into a scratch directory, replay the archive, start a
    /// throwaway server (Unix socket only, archiving off), check the data, and
    /// report how long recovery took (RTO) and how far the archive reaches (RPO).
    /// Run it as the PostgreSQL OS user; exit 0 only when every check passed
    Drill {
        /// A backup name (see backup-list) or LATEST [default: LATEST]
        name: Option<String>,
        /// Scratch directory (created if absent, must be empty) [default: a new
        /// directory in the temporary directory]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Leave the scratch directory (its server stopped) for inspection
        #[arg(long)]
        keep: bool,
        /// Where recovery stops: latest, immediate, time=…, lsn=…, xid=… or name=…
        #[arg(long, value_name = "TARGET", default_value = "latest")]
        recovery_target: String,
        /// Directory of the PostgreSQL server binaries of the backup's major
        /// version [config: pg_bin; default: found on PATH, by pg_config, or in
        /// /usr/lib/postgresql/<major>/bin]
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<String>,
        /// A YAML list of checks, each {name, sql, expect}: the first column of
        /// the first row must equal expect (repeatable)
        #[arg(long, value_name = "FILE")]
        check: Vec<PathBuf>,
        /// Also write the report to FILE
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// The report's format
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Give up when recovery has not ended after this long (30m, 2h, …)
        #[arg(long, value_name = "DURATION", default_value = "6h")]
        timeout: String,
        /// Push the outcome (RTO, RPO, checks failed) to this Prometheus
        /// Pushgateway [config: metrics_push_url]
        #[arg(long, value_name = "URL")]
        metrics_push_url: Option<String>,
    },
    /// Stream WAL from the server over a physical replication slot, as a
    /// standby does, into the archive: completed segments as wal-push stores
    /// them, the open one as <segment>.partial. Nothing the server
    /// acknowledged is lost in a crash (with synchronous replication, RPO 0).
    /// Runs until SIGTERM or SIGINT, then stores the open segment and exits 0
    WalReceive {
        /// Create the replication slot if it does not exist
        /// [config: wal_receive_create_slot]
        #[arg(long)]
        create_slot: bool,
        /// The physical replication slot [config: wal_receive_slot]
        #[arg(long, value_name = "NAME")]
        slot: Option<String>,
        /// Where the stream is written before it is stored
        /// [config: wal_receive_spool]
        #[arg(long, value_name = "DIR")]
        spool: Option<String>,
    },
    /// Internal: the background worker wal-fetch starts for prefetching
    #[command(hide = true)]
    WalPrefetch {
        #[arg(long)]
        dir: PathBuf,
        names: Vec<String>,
    },
}

impl Command {
    /// The command's name, as typed (a metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Command::WalPush { .. } => "wal-push",
            Command::WalFetch { .. } => "wal-fetch",
            Command::BackupPush { .. } => "backup-push",
            Command::BackupFetch { .. } => "backup-fetch",
            Command::BackupList { .. } => "backup-list",
            Command::BackupMark { .. } => "backup-mark",
            Command::Delete { .. } => "delete",
            Command::WalVerify { .. } => "wal-verify",
            Command::BackupVerify { .. } => "backup-verify",
            Command::Drill { .. } => "drill",
            Command::WalPrefetch { .. } => "wal-prefetch",
            Command::WalReceive { .. } => "wal-receive",
        }
    }
}

/// How `cairn drill` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// The evidence log: SESSION_START … KEY_EVIDENCE … SESSION_END
    Text,
    Json,
    /// A section for a runbook
    Markdown,
}

/// What `cairn delete` deletes.
#[derive(Debug, Subcommand)]
pub enum DeletePolicy {
    /// Keep the newest N full backups (and their deltas), a time window, or
    /// daily/weekly/monthly backups, with the WAL they need; delete the rest
    Retain {
        /// Full backups to keep
        full: Option<usize>,
        /// Keep what recovery to any moment of this window needs (30m, 12h, 7d, 2w);
        /// a backup counts from when it finished (backup-list's `finished`)
        #[arg(long, value_name = "DURATION")]
        within: Option<String>,
        /// Keep the newest backup of each of the last D days
        #[arg(long, value_name = "D", default_value_t = 0)]
        daily: usize,
        /// Keep the newest backup of each of the last W weeks
        #[arg(long, value_name = "W", default_value_t = 0)]
        weekly: usize,
        /// Keep the newest backup of each of the last M months
        #[arg(long, value_name = "M", default_value_t = 0)]
        monthly: usize,
    },
    /// Delete the backups ordered before a backup (by name), or that started
    /// before a time (backup-list's `started`; RFC 3339 or YYYY-MM-DD, UTC),
    /// and the WAL only they needed
    Before {
        /// base_… or a time, compared with when backups started
        target: String,
    },
    /// Delete one backup and every delta built on it
    Target { name: String },
    /// Delete every backup that is not permanent, and the WAL
    Everything,
    /// Delete unfinished backups and WAL that no backup needs
    Garbage {
        /// Leave unfinished backups written to within this time: they may be
        /// in progress
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        grace: String,
    },
}

impl Cli {
    /// The configuration file named on the command line or by `CAIRN_CONFIG`.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.global
            .config
            .clone()
            .or_else(|| std::env::var_os("CAIRN_CONFIG").map(Into::into))
    }

    /// Every flag that stands for a configuration key, as settings of the
    /// highest precedence: validated with the configuration, once.
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = self.global.settings();
        let command_flags = match &self.command {
            Command::WalPush { lookahead, .. } => {
                vec![("wal_push_lookahead", "lookahead", lookahead.clone())]
            }
            Command::WalFetch { prefetch, .. } => {
                vec![("wal_fetch_prefetch", "prefetch", prefetch.clone())]
            }
            Command::BackupPush {
                metrics_push_url,
                max_rate,
                ..
            } => vec![
                (
                    "metrics_push_url",
                    "metrics-push-url",
                    metrics_push_url.clone(),
                ),
                ("max_rate", "max-rate", max_rate.clone()),
            ],
            Command::BackupFetch {
                metrics_push_url, ..
            }
            | Command::Delete {
                metrics_push_url, ..
            }
            | Command::WalVerify {
                metrics_push_url, ..
            }
            | Command::BackupVerify {
                metrics_push_url, ..
            } => vec![(
                "metrics_push_url",
                "metrics-push-url",
                metrics_push_url.clone(),
            )],
            Command::Drill {
                metrics_push_url,
                pg_bin,
                ..
            } => vec![
                (
                    "metrics_push_url",
                    "metrics-push-url",
                    metrics_push_url.clone(),
                ),
                ("pg_bin", "pg-bin", pg_bin.clone()),
            ],
            Command::WalReceive { slot, spool, .. } => vec![
                ("wal_receive_slot", "slot", slot.clone()),
                ("wal_receive_spool", "spool", spool.clone()),
            ],
            _ => Vec::new(),
        };
        for (key, flag, value) in command_flags {
            if let Some(v) = value {
                out.push(Setting {
                    key: key.into(),
                    value: serde_yaml::Value::String(v),
                    source: Source::Flag(flag.into()),
                });
            }
        }
        out
    }
}

/// One command, resolved: what it runs on, every option decided.
pub enum Invocation {
    WalPush {
        path: PathBuf,
    },
    WalFetch {
        name: String,
        dest: PathBuf,
    },
    WalPrefetch {
        dir: PathBuf,
        names: Vec<WalFileName>,
    },
    WalReceive {
        opts: cairn::wal::receive::ReceiveOptions,
    },
    /// `remote`: over the replication protocol (no data directory).
    BackupPush {
        opts: PushOptions,
        remote: bool,
    },
    BackupFetch(FetchOptions),
    BackupList {
        json: bool,
    },
    BackupMark {
        name: String,
        permanent: bool,
    },
    Delete {
        policy: Policy,
        confirm: bool,
    },
    WalVerify {
        json: bool,
    },
    BackupVerify {
        which: Which,
        to_latest: bool,
        json: bool,
    },
    Drill {
        opts: DrillOptions,
        report: Option<PathBuf>,
        format: ReportFormat,
    },
}

impl Invocation {
    /// What the progress display shows, for the commands that have one.
    pub fn progress(&self) -> Option<&'static str> {
        match self {
            Invocation::BackupPush { .. } => Some("backup"),
            Invocation::BackupFetch(_) => Some("restore"),
            Invocation::BackupVerify { .. } => Some("verify"),
            Invocation::Drill { .. } => Some("drill"),
            _ => None,
        }
    }
}

/// Resolves the command against the loaded configuration.
pub fn resolve(cli: Cli, config: &Config) -> anyhow::Result<Invocation> {
    Ok(match cli.command {
        Command::WalPush { path, .. } => Invocation::WalPush { path },
        Command::WalFetch { name, dest, .. } => Invocation::WalFetch { name, dest },
        Command::WalReceive { create_slot, .. } => Invocation::WalReceive {
            opts: cairn::wal::receive::ReceiveOptions {
                slot: config.wal_receive_slot.clone(),
                create_slot: create_slot || config.wal_receive_create_slot,
                application_name: config.wal_receive_application_name.clone(),
                status_interval: config.wal_receive_status_interval,
                partial_interval: config.wal_receive_partial_interval,
                spool: config.wal_receive_spool.clone(),
                postgres: config.postgres.clone(),
            },
        },
        Command::WalPrefetch { dir, names } => Invocation::WalPrefetch {
            dir,
            names: names
                .iter()
                .map(|n| n.parse())
                .collect::<Result<Vec<_>, _>>()
                .context("wal-prefetch got a bad segment name")?,
        },
        Command::BackupPush {
            pgdata,
            label,
            permanent,
            delta,
            full,
            remote,
            fail_on_page_corruption,
            ..
        } => {
            let pgdata = pgdata
                .or_else(|| config.pgdata.clone())
                .or_else(|| std::env::var_os("PGDATA").map(Into::into))
                .filter(|_| !remote);
            if pgdata.is_none() && !remote {
                tracing::info!(
                    "no data directory given (argument, pgdata, PGDATA): backing up over the \
                     replication protocol"
                );
            }
            let remote = pgdata.is_none();
            Invocation::BackupPush {
                opts: PushOptions {
                    pgdata: pgdata.unwrap_or_default(),
                    postgres: config.postgres.clone(),
                    label,
                    permanent,
                    fast_checkpoint: config.backup_fast_checkpoint,
                    archive_timeout: config.backup_archive_timeout,
                    part_size: config.backup_part_size,
                    concurrency: config.backup_concurrency,
                    kind: if full {
                        BackupKind::Full
                    } else if delta {
                        BackupKind::Delta
                    } else {
                        BackupKind::Auto {
                            max_steps: config.delta_max_steps,
                        }
                    },
                    max_rate: config.max_rate,
                    fail_on_page_corruption: fail_on_page_corruption
                        || config.fail_on_page_corruption,
                },
                remote,
            }
        }
        Command::BackupFetch {
            dest,
            name,
            recovery_target,
            tablespace_map,
            delta,
            ..
        } => {
            let recovery_target = recovery_target
                .map(|t| t.parse::<RecoveryTarget>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let tablespace_map = tablespace_map
                .iter()
                .map(|m| parse_tablespace_mapping(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Invocation::BackupFetch(FetchOptions {
                dest,
                name,
                tablespace_map,
                recovery_target,
                restore_command: restore_command(&cli.global)?,
                concurrency: config.backup_concurrency,
                delta,
            })
        }
        Command::BackupList { json } => Invocation::BackupList { json },
        Command::BackupMark { name, impermanent } => Invocation::BackupMark {
            name,
            permanent: !impermanent,
        },
        Command::Delete {
            policy, confirm, ..
        } => Invocation::Delete {
            policy: delete_policy(policy)?,
            confirm,
        },
        Command::WalVerify { json, .. } => Invocation::WalVerify { json },
        Command::BackupVerify {
            name,
            all,
            to_latest,
            json,
            ..
        } => Invocation::BackupVerify {
            which: if all {
                Which::All
            } else {
                Which::One(name.unwrap_or_else(|| "LATEST".into()))
            },
            to_latest,
            json,
        },
        Command::Drill {
            name,
            dir,
            keep,
            recovery_target,
            check,
            report,
            format,
            timeout,
            ..
        } => {
            let target = recovery_target
                .parse::<RecoveryTarget>()
                .map_err(anyhow::Error::msg)?;
            let timeout = retention::parse_duration(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            // The command as typed, for the report (program name shortened).
            let command = std::iter::once("cairn".to_string())
                .chain(std::env::args().skip(1).map(|a| {
                    if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                        format!("'{}'", a.replace('\'', r"'\''"))
                    } else {
                        a
                    }
                }))
                .collect::<Vec<_>>()
                .join(" ");
            Invocation::Drill {
                opts: DrillOptions {
                    name: name.unwrap_or_else(|| "LATEST".into()),
                    target,
                    dir,
                    keep,
                    pg_bin: config.pg_bin.clone(),
                    check_files: check,
                    restore_command: restore_command(&cli.global)?,
                    concurrency: config.backup_concurrency,
                    timeout: std::time::Duration::try_from(timeout).unwrap_or_default(),
                    command,
                },
                report,
                format,
            }
        }
    })
}

/// `cairn delete …`'s policy.
fn delete_policy(policy: DeletePolicy) -> anyhow::Result<Policy> {
    Ok(match policy {
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
    })
}

/// `--tablespace-map OID=PATH`.
fn parse_tablespace_mapping(m: &str) -> anyhow::Result<(u32, PathBuf)> {
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
fn restore_command(global: &GlobalArgs) -> anyhow::Result<String> {
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

/// Every command's name, as typed.
pub const COMMANDS: [&str; 12] = [
    "wal-push",
    "wal-fetch",
    "backup-push",
    "backup-fetch",
    "backup-list",
    "backup-mark",
    "delete",
    "wal-verify",
    "backup-verify",
    "drill",
    "wal-receive",
    "wal-prefetch",
];

/// The command in raw arguments (before clap has parsed them, and whether or
/// not they parse), for choosing the exit status when they do not: the first
/// argument that names one.
pub fn command_word(args: &[OsString]) -> Option<String> {
    args.iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| COMMANDS.contains(&a.as_ref()))
        .map(|a| a.into_owned())
}
