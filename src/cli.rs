//! Command-line definitions (clap) and nothing else.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use cairn::config::{Setting, Source};

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
        /// is given or configured. Remote backups are full backups.
        #[arg(long, conflicts_with_all = ["pgdata", "delta"])]
        remote: bool,
        /// Read at most BYTES per second from the data directory (remote: have the
        /// server send at most that); 0 for no limit [config: max_rate]
        #[arg(long, value_name = "BYTES")]
        max_rate: Option<u64>,
        /// Push the outcome (success, duration, bytes) to this Prometheus
        /// Pushgateway, e.g. http://pushgateway:9091 [config: metrics_push_url]
        #[arg(long, value_name = "URL")]
        metrics_push_url: Option<String>,
    },
    /// Restore a base backup into an empty directory
    BackupFetch {
        /// Where to restore (must be empty or absent)
        dest: PathBuf,
        /// A backup name (see backup-list) or LATEST
        name: String,
        /// Set up recovery: latest, time=…, lsn=…, xid=… or name=…
        #[arg(long, value_name = "TARGET")]
        recovery_target: Option<String>,
        /// Put tablespace OID at PATH instead of its original location (repeatable)
        #[arg(long, value_name = "OID=PATH")]
        tablespace_map: Vec<String>,
        /// Push the outcome (success, duration, bytes) to this Prometheus
        /// Pushgateway, e.g. http://pushgateway:9091 [config: metrics_push_url]
        #[arg(long, value_name = "URL")]
        metrics_push_url: Option<String>,
    },
    /// List base backups, oldest first (by start time, then WAL position)
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
            Command::WalPrefetch { .. } => "wal-prefetch",
        }
    }
}

/// What `cairn delete` deletes.
#[derive(Debug, Subcommand)]
pub enum DeletePolicy {
    /// Keep the newest N full backups (and their deltas), a time window, or
    /// daily/weekly/monthly backups, with the WAL they need; delete the rest
    Retain {
        /// Full backups to keep
        full: Option<usize>,
        /// Keep what recovery to any moment of this window needs (30m, 12h, 7d, 2w)
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
    /// Delete the backups older than a backup (by name) or a time (RFC 3339
    /// or YYYY-MM-DD, UTC), and the WAL only they needed
    Before {
        /// base_… or a time
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
