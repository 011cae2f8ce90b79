//! One typed [`Config`], layered: YAML file (`--config` or `CAIRN_CONFIG`) <
//! `CAIRN_*` environment variables < command-line flags, and validated once.
//! Every key has the same name in YAML, as `CAIRN_<KEY>` and as `--<key>` where a
//! flag exists; `config/cairn.example.yaml` documents them all. Unknown keys and
//! bad values are errors that name the key and where it came from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::codec::{CodecSettings, Compression};
use crate::pg::client::PgSettings;
use crate::storage::{RetryPolicy, StorageOptions, StorageUrl};

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(n) => write!(f, "flag --{n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(
        "unknown configuration key {key:?} (from {origin}); see config/cairn.example.yaml for the keys"
    )]
    UnknownKey { key: String, origin: Source },
    #[error("configuration key {key} (from {origin}): {message}")]
    BadValue {
        key: String,
        origin: Source,
        message: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub storage: StorageUrl,
    pub compression: Compression,
    pub zstd_level: i32,
    pub age_recipients: Vec<age::x25519::Recipient>,
    /// Files of age identities (several identities each): reading tries every
    /// one, so a restore works across a key rotation.
    pub age_identity_file: Vec<PathBuf>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_force_path_style: bool,
    /// Whether the S3 server enforces `If-None-Match: *` (`false`: ask first,
    /// without the header; see README, "Stores and credentials").
    pub s3_conditional_create: bool,
    /// `None`: by endpoint (AWS: when supported; others: when required).
    pub s3_checksum: Option<crate::storage::S3Checksum>,
    pub gcs_endpoint: Option<String>,
    /// The Blob endpoint for `az://` (Azurite, a sovereign cloud, a private
    /// endpoint): `http://127.0.0.1:10000/devstoreaccount1`.
    pub azure_endpoint: Option<String>,
    pub log_level: tracing::Level,
    pub log_format: LogFormat,
    pub storage_timeout: Duration,
    /// A storage request that sends or receives nothing for this long is
    /// abandoned (and retried while `storage_timeout` allows).
    pub storage_idle_timeout: Duration,
    pub upload_part_size: usize,
    /// Ranged reads of one large object in flight on a network store.
    pub storage_parallel_reads: usize,
    /// Parts of one large object uploaded at once (S3, Azure).
    pub storage_parallel_writes: usize,
    pub wal_push_lookahead: usize,
    pub wal_fetch_prefetch: usize,
    /// Where wal-fetch's prefetch worker keeps segments downloaded ahead
    /// (outside the data directory); default: the temporary directory.
    pub wal_fetch_spool: Option<PathBuf>,
    /// The data directory backup-push reads (also `PGDATA`).
    pub pgdata: Option<PathBuf>,
    /// The `postgres:` section; unset fields come from the libpq variables.
    pub postgres: PgSettings,
    pub backup_part_size: u64,
    pub backup_concurrency: usize,
    pub backup_fast_checkpoint: bool,
    pub backup_archive_timeout: Duration,
    /// backup-push takes deltas until the chain has this many, then a full; 0: always full.
    pub delta_max_steps: u32,
    /// Bytes per second backup-push reads (or the server sends), 0: no limit.
    pub max_rate: u64,
    /// A page whose checksum fails fails the backup (else it is recorded
    /// in the manifest and reported).
    pub fail_on_page_corruption: bool,
    /// How often backup-push and backup-fetch log their progress when stderr
    /// is not a terminal; 0: never.
    pub progress_interval: Duration,
    /// The Pushgateway backup-push, backup-fetch, delete and wal-verify push
    /// their outcome to (`http://host:9091`).
    pub metrics_push_url: Option<String>,
    /// The node_exporter textfile (`*.prom`) wal-push keeps its counters in.
    pub metrics_textfile: Option<PathBuf>,
    /// The PostgreSQL server binaries `cairn drill` starts; found for the
    /// backup's major version when unset.
    pub pg_bin: Option<PathBuf>,
    /// wal-receive's physical replication slot.
    pub wal_receive_slot: String,
    /// wal-receive creates its slot when it is missing (else it refuses).
    pub wal_receive_create_slot: bool,
    /// The `application_name` wal-receive connects under (what
    /// `synchronous_standby_names` lists).
    pub wal_receive_application_name: String,
    /// How often wal-receive reports its position at least.
    pub wal_receive_status_interval: Duration,
    /// How often wal-receive stores its open segment as `.partial`; 0: only
    /// at shutdown.
    pub wal_receive_partial_interval: Duration,
    /// Where wal-receive writes the stream before storing it.
    pub wal_receive_spool: PathBuf,
}

pub const DEFAULT_STORAGE: &str = "file:///var/lib/cairn";

impl Default for Config {
    fn default() -> Self {
        Config {
            storage: StorageUrl::File(PathBuf::from("/var/lib/cairn")),
            compression: Compression::Lz4,
            zstd_level: 3,
            age_recipients: Vec::new(),
            age_identity_file: Vec::new(),
            s3_endpoint: None,
            s3_region: None,
            s3_force_path_style: false,
            s3_conditional_create: true,
            s3_checksum: None,
            gcs_endpoint: None,
            azure_endpoint: None,
            log_level: tracing::Level::INFO,
            log_format: LogFormat::Text,
            storage_timeout: Duration::from_secs(60),
            storage_idle_timeout: Duration::from_secs(30),
            upload_part_size: 32 << 20,
            storage_parallel_reads: crate::storage::windowed::READS_AHEAD,
            storage_parallel_writes: crate::storage::PARALLEL_WRITES,
            wal_push_lookahead: 8,
            wal_fetch_prefetch: 8,
            wal_fetch_spool: None,
            pgdata: None,
            postgres: PgSettings::default(),
            backup_part_size: 1 << 30,
            backup_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            fail_on_page_corruption: false,
            backup_fast_checkpoint: true,
            backup_archive_timeout: Duration::from_secs(600),
            delta_max_steps: 0,
            max_rate: 0,
            progress_interval: Duration::from_secs(30),
            metrics_push_url: None,
            metrics_textfile: None,
            pg_bin: None,
            wal_receive_slot: "cairn".into(),
            wal_receive_create_slot: false,
            wal_receive_application_name: "cairn".into(),
            wal_receive_status_interval: Duration::from_secs(10),
            wal_receive_partial_interval: Duration::from_secs(10),
            wal_receive_spool: PathBuf::from("/var/lib/cairn-receive"),
        }
    }
}

/// One setting before validation.
pub struct Setting {
    pub key: String,
    pub value: Value,
    pub source: Source,
}

impl Config {
    /// Loads the file (if any), then `CAIRN_*` variables from `env`, then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: Vec<Setting>,
    ) -> Result<Config, ConfigError> {
        let mut settings = Vec::new();
        if let Some(path) = file {
            settings.extend(read_file(path)?);
        }
        for (var, value) in env {
            let Some(key) = var.strip_prefix("CAIRN_") else {
                continue;
            };
            if key == "CONFIG" {
                continue;
            }
            settings.push(Setting {
                key: key.to_ascii_lowercase(),
                value: Value::String(value),
                source: Source::Env(var),
            });
        }
        settings.extend(flags);
        let mut config = Config::default();
        let mut recipients_file = None;
        for s in settings {
            config.set(s, &mut recipients_file)?;
        }
        if let Some((path, source)) = recipients_file {
            config
                .age_recipients
                .extend(read_recipients_file(&path, &source)?);
        }
        Ok(config)
    }

    fn set(
        &mut self,
        s: Setting,
        recipients_file: &mut Option<(PathBuf, Source)>,
    ) -> Result<(), ConfigError> {
        if s.value.is_null() {
            return Ok(());
        }
        let bad = |message: String| ConfigError::BadValue {
            key: s.key.clone(),
            origin: s.source.clone(),
            message,
        };
        let v = &s.value;
        match s.key.as_str() {
            "storage" => self.storage = StorageUrl::parse(&string(v).map_err(bad)?).map_err(bad)?,
            "compression" => self.compression = string(v).map_err(bad)?.parse().map_err(bad)?,
            "zstd_level" => self.zstd_level = number(v, 1, 22).map_err(bad)? as i32,
            "age_recipients" => {
                self.age_recipients = list(v)
                    .map_err(bad)?
                    .iter()
                    .map(|r| crate::codec::parse_recipient(r))
                    .collect::<Result<_, _>>()
                    .map_err(bad)?;
            }
            "age_recipients_file" => {
                *recipients_file = Some((PathBuf::from(string(v).map_err(bad)?), s.source.clone()))
            }
            "age_identity_file" => {
                self.age_identity_file = list(v)
                    .map_err(bad)?
                    .into_iter()
                    .map(PathBuf::from)
                    .collect()
            }
            "s3_endpoint" => self.s3_endpoint = Some(endpoint(v).map_err(bad)?),
            "s3_region" => self.s3_region = Some(string(v).map_err(bad)?),
            "s3_force_path_style" => self.s3_force_path_style = boolean(v).map_err(bad)?,
            "s3_conditional_create" => self.s3_conditional_create = boolean(v).map_err(bad)?,
            "s3_checksum" => self.s3_checksum = Some(string(v).map_err(bad)?.parse().map_err(bad)?),
            "gcs_endpoint" => self.gcs_endpoint = Some(endpoint(v).map_err(bad)?),
            "azure_endpoint" => self.azure_endpoint = Some(endpoint(v).map_err(bad)?),
            "log_level" => {
                self.log_level = match string(v).map_err(bad)?.as_str() {
                    "error" => tracing::Level::ERROR,
                    "warn" => tracing::Level::WARN,
                    "info" => tracing::Level::INFO,
                    "debug" => tracing::Level::DEBUG,
                    "trace" => tracing::Level::TRACE,
                    other => {
                        return Err(bad(format!(
                            "{other:?} is not a log level (error, warn, info, debug, trace)"
                        )));
                    }
                }
            }
            "log_format" => {
                self.log_format = match string(v).map_err(bad)?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        return Err(bad(format!("{other:?} is not a log format (text, json)")));
                    }
                }
            }
            "storage_timeout" => {
                self.storage_timeout = Duration::from_secs(number(v, 1, 86_400).map_err(bad)?)
            }
            "storage_idle_timeout" => {
                self.storage_idle_timeout = Duration::from_secs(number(v, 1, 3600).map_err(bad)?)
            }
            "upload_part_size" => {
                self.upload_part_size = number(v, 5 << 20, 5 << 30).map_err(bad)? as usize
            }
            "storage_parallel_reads" => {
                self.storage_parallel_reads = number(v, 1, 64).map_err(bad)? as usize
            }
            "storage_parallel_writes" => {
                let most = crate::storage::MAX_PARALLEL_WRITES as u64;
                self.storage_parallel_writes = number(v, 1, most).map_err(bad)? as usize
            }
            "wal_push_lookahead" => {
                self.wal_push_lookahead = number(v, 0, 256).map_err(bad)? as usize
            }
            "wal_fetch_prefetch" => {
                self.wal_fetch_prefetch = number(v, 0, 256).map_err(bad)? as usize
            }
            "wal_fetch_spool" => {
                let path = PathBuf::from(string(v).map_err(bad)?);
                if !path.is_absolute() {
                    return Err(bad(format!(
                        "{}: expected an absolute path (restore_command runs in the data \
                         directory, and the spool must lie outside it)",
                        path.display()
                    )));
                }
                self.wal_fetch_spool = Some(path);
            }
            "pgdata" => self.pgdata = Some(PathBuf::from(string(v).map_err(bad)?)),
            "postgres" => self.postgres = postgres_section(v, &s.source)?,
            "backup_part_size" => {
                self.backup_part_size = number(v, 1 << 20, 64 << 30).map_err(bad)?
            }
            "backup_concurrency" => {
                self.backup_concurrency = number(v, 1, 64).map_err(bad)? as usize
            }
            "backup_checkpoint" => {
                self.backup_fast_checkpoint = match string(v).map_err(bad)?.as_str() {
                    "fast" => true,
                    "spread" => false,
                    other => {
                        return Err(bad(format!("{other:?} is not fast or spread")));
                    }
                }
            }
            "backup_archive_timeout" => {
                self.backup_archive_timeout =
                    Duration::from_secs(number(v, 1, 7 * 86_400).map_err(bad)?)
            }
            "delta_max_steps" => self.delta_max_steps = number(v, 0, 1000).map_err(bad)? as u32,
            "max_rate" => {
                let rate = number(v, 0, 1 << 40).map_err(bad)?;
                if rate > 0 && rate < 32 << 10 {
                    return Err(bad(format!(
                        "{rate}: at least 32768 bytes per second, or 0 for no limit"
                    )));
                }
                self.max_rate = rate;
            }
            "metrics_push_url" => {
                let url = string(v).map_err(bad)?;
                match url::Url::parse(&url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => {
                        return Err(bad(
                            "expected the Pushgateway's http:// or https:// URL, such as \
                             http://pushgateway:9091"
                                .into(),
                        ));
                    }
                }
                self.metrics_push_url = Some(url);
            }
            "metrics_textfile" => {
                let path = PathBuf::from(string(v).map_err(bad)?);
                if path.extension().is_none_or(|e| e != "prom") || !path.is_absolute() {
                    return Err(bad(format!(
                        "{}: expected an absolute path ending in .prom (node_exporter's \
                         textfile collector reads only those)",
                        path.display()
                    )));
                }
                self.metrics_textfile = Some(path);
            }
            "pg_bin" => {
                let path = PathBuf::from(string(v).map_err(bad)?);
                if !path.is_absolute() {
                    return Err(bad(format!(
                        "{}: expected the absolute path of a directory of PostgreSQL server \
                         binaries, such as /usr/lib/postgresql/17/bin",
                        path.display()
                    )));
                }
                self.pg_bin = Some(path);
            }
            "wal_receive_slot" => {
                let name = string(v).map_err(bad)?;
                if !crate::pg::replication::stream::valid_slot_name(&name) {
                    return Err(bad(format!(
                        "{name:?}: a replication slot name is lower-case letters, digits and \
                         underscores, at most 63 characters"
                    )));
                }
                self.wal_receive_slot = name;
            }
            "wal_receive_create_slot" => self.wal_receive_create_slot = boolean(v).map_err(bad)?,
            "fail_on_page_corruption" => self.fail_on_page_corruption = boolean(v).map_err(bad)?,
            "wal_receive_application_name" => {
                let name = string(v).map_err(bad)?;
                if name.is_empty() || name.len() > 63 || !name.is_ascii() {
                    return Err(bad(format!("{name:?}: expected 1 to 63 ASCII characters")));
                }
                self.wal_receive_application_name = name;
            }
            "wal_receive_status_interval" => {
                self.wal_receive_status_interval =
                    Duration::from_secs(number(v, 1, 3600).map_err(bad)?)
            }
            "wal_receive_partial_interval" => {
                self.wal_receive_partial_interval =
                    Duration::from_secs(number(v, 0, 86_400).map_err(bad)?)
            }
            "wal_receive_spool" => {
                let path = PathBuf::from(string(v).map_err(bad)?);
                if !path.is_absolute() {
                    return Err(bad(format!(
                        "{}: expected an absolute path",
                        path.display()
                    )));
                }
                self.wal_receive_spool = path;
            }
            "progress_interval" => {
                self.progress_interval = Duration::from_secs(number(v, 0, 86_400).map_err(bad)?)
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: s.key,
                    origin: s.source,
                });
            }
        }
        Ok(())
    }

    pub fn codec(&self) -> CodecSettings {
        CodecSettings {
            compression: self.compression,
            zstd_level: self.zstd_level,
            recipients: self.age_recipients.clone(),
        }
    }

    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            retry: RetryPolicy {
                deadline: self.storage_timeout,
                ..RetryPolicy::default()
            },
            idle_timeout: self.storage_idle_timeout,
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_force_path_style: self.s3_force_path_style,
            s3_conditional_create: self.s3_conditional_create,
            s3_checksum: self.s3_checksum,
            gcs_endpoint: self.gcs_endpoint.clone(),
            azure_endpoint: self.azure_endpoint.clone(),
            azure_secrets: crate::storage::AzureSecrets::from_env(),
            part_size: self.upload_part_size,
            parallel_reads: self.storage_parallel_reads,
            parallel_writes: self.storage_parallel_writes,
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<Setting>, ConfigError> {
    let err = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let map = match doc {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        _ => {
            return Err(err(
                "expected a mapping of keys to values at the top level".into()
            ));
        }
    };
    map.into_iter()
        .map(|(k, value)| match k {
            Value::String(key) => Ok(Setting {
                key,
                value,
                source: Source::File(path.to_path_buf()),
            }),
            other => Err(err(format!("key {other:?} is not a string"))),
        })
        .collect()
}

/// The `postgres:` section: host, port, user, password, dbname.
fn postgres_section(v: &Value, source: &Source) -> Result<PgSettings, ConfigError> {
    let bad = |key: &str, message: String| ConfigError::BadValue {
        key: format!("postgres.{key}"),
        origin: source.clone(),
        message,
    };
    let Value::Mapping(map) = v else {
        return Err(ConfigError::BadValue {
            key: "postgres".into(),
            origin: source.clone(),
            message: "expected a mapping (host, port, user, password, dbname)".into(),
        });
    };
    let mut pg = PgSettings::default();
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        match key {
            "host" => pg.host = Some(string(v).map_err(|m| bad(key, m))?),
            "port" => pg.port = Some(number(v, 1, 65_535).map_err(|m| bad(key, m))? as u16),
            "user" => pg.user = Some(string(v).map_err(|m| bad(key, m))?),
            "password" => pg.password = Some(string(v).map_err(|m| bad(key, m))?),
            "dbname" => pg.dbname = Some(string(v).map_err(|m| bad(key, m))?),
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: format!("postgres.{key}"),
                    origin: source.clone(),
                });
            }
        }
    }
    Ok(pg)
}

fn read_recipients_file(
    path: &Path,
    source: &Source,
) -> Result<Vec<age::x25519::Recipient>, ConfigError> {
    let bad = |message: String| ConfigError::BadValue {
        key: "age_recipients_file".into(),
        origin: source.clone(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            crate::codec::parse_recipient(l).map_err(|e| bad(format!("{}: {e}", path.display())))
        })
        .collect()
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Value::String(_) => Err("must not be empty".into()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("expected a string".into()),
    }
}

/// A service endpoint: an http:// or https:// URL with a host. Anything else
/// would only fail later, request by request, looking like a network fault.
fn endpoint(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    match url::Url::parse(&s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s),
        _ => Err(format!(
            "{s:?} is not an endpoint URL: write it with its scheme, like \
             http://127.0.0.1:9000 or https://s3.example.com"
        )),
    }
}

fn number(v: &Value, min: u64, max: u64) -> Result<u64, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("expected a whole number from {min} to {max}"))?;
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is out of range ({min} to {max})"))
    }
}

fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("{s:?} is not true or false")),
        },
        _ => Err("expected true or false".into()),
    }
}

/// A YAML list, or a comma-separated string (as environment variables carry lists).
fn list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Sequence(items) => items.iter().map(string).collect(),
        Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        _ => Err("expected a list of strings".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flag(key: &str, v: &str) -> Setting {
        Setting {
            key: key.into(),
            value: Value::String(v.into()),
            source: Source::Flag(key.replace('_', "-")),
        }
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "storage: s3://b/p\ncompression: zstd\nzstd_level: 9\nwal_push_lookahead: 4\ns3_force_path_style: true\n").unwrap();
        let c = Config::load(
            Some(&p),
            env(&[
                ("CAIRN_COMPRESSION", "none"),
                ("CAIRN_ZSTD_LEVEL", "5"),
                ("OTHER", "x"),
            ]),
            vec![flag("zstd_level", "7")],
        )
        .unwrap();
        assert_eq!(
            c.storage,
            StorageUrl::S3 {
                bucket: "b".into(),
                prefix: "p/".into()
            }
        );
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.zstd_level, 7);
        assert_eq!(c.wal_push_lookahead, 4);
        assert!(c.s3_force_path_style);
        assert_eq!(c.wal_fetch_prefetch, 8);
    }

    #[test]
    fn errors_name_the_key_and_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "storage: file:///x\nstorag: oops\n").unwrap();
        let e = Config::load(Some(&p), vec![], vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"storag\"") && e.contains("c.yaml"), "{e}");
        let e = Config::load(None, env(&[("CAIRN_ZSTD_LEVEL", "99")]), vec![])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("zstd_level")
                && e.contains("CAIRN_ZSTD_LEVEL")
                && e.contains("out of range"),
            "{e}"
        );
        let e = Config::load(None, env(&[("CAIRN_COMPRESSION", "brotli")]), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("compression") && e.contains("brotli"), "{e}");
        let e = Config::load(None, env(&[("CAIRN_BOGUS", "1")]), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("CAIRN_BOGUS"), "{e}");
        let e = Config::load(None, vec![], vec![flag("storage", "ftp://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--storage") && e.contains("ftp"), "{e}");
        let e = Config::load(None, env(&[("CAIRN_AGE_RECIPIENTS", "age1nope")]), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("age_recipients"), "{e}");
        let e = Config::load(
            None,
            vec![],
            vec![flag("metrics_push_url", "pushgateway:9091")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--metrics-push-url") && e.contains("http://"),
            "{e}"
        );
        let e = Config::load(
            None,
            env(&[("CAIRN_METRICS_TEXTFILE", "/tmp/cairn.txt")]),
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("CAIRN_METRICS_TEXTFILE") && e.contains(".prom"),
            "{e}"
        );
    }

    #[test]
    fn recipients_from_list_string_and_file() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        let c = Config::load(
            None,
            env(&[("CAIRN_AGE_RECIPIENTS", &format!("{a}, {b}"))]),
            vec![],
        )
        .unwrap();
        assert_eq!(c.age_recipients.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.txt");
        std::fs::write(&f, format!("# ops\n{a}\n\n")).unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            format!(
                "age_recipients: [{b}]\nage_recipients_file: {}\n",
                f.display()
            ),
        )
        .unwrap();
        assert_eq!(
            Config::load(Some(&p), vec![], vec![])
                .unwrap()
                .age_recipients
                .len(),
            2
        );
    }

    /// The example documents the defaults: loading it changes nothing.
    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cairn.example.yaml");
        let c = Config::load(Some(&path), Vec::new(), Vec::new()).unwrap();
        let d = Config::default();
        assert_eq!(format!("{:?}", c.storage), format!("{:?}", d.storage));
        assert_eq!(c.compression, d.compression);
        assert_eq!(c.zstd_level, d.zstd_level);
        assert_eq!(c.storage_timeout, d.storage_timeout);
        assert_eq!(c.upload_part_size, d.upload_part_size);
        assert_eq!(c.storage_parallel_reads, d.storage_parallel_reads);
        assert_eq!(c.storage_parallel_writes, d.storage_parallel_writes);
        assert_eq!(c.wal_push_lookahead, d.wal_push_lookahead);
        assert_eq!(c.wal_fetch_prefetch, d.wal_fetch_prefetch);
        assert_eq!(c.backup_part_size, d.backup_part_size);
        assert_eq!(c.backup_fast_checkpoint, d.backup_fast_checkpoint);
        assert_eq!(c.backup_archive_timeout, d.backup_archive_timeout);
        assert_eq!(c.delta_max_steps, d.delta_max_steps);
        assert_eq!(c.max_rate, d.max_rate);
        assert_eq!(c.progress_interval, d.progress_interval);
        let pg = Config::load(
            None,
            Vec::new(),
            vec![Setting {
                key: "postgres".into(),
                value: serde_yaml::from_str("{host: db, port: 5433, password: pw}").unwrap(),
                source: Source::Default,
            }],
        )
        .unwrap();
        assert_eq!(pg.postgres.port, Some(5433));
        assert!(
            !format!("{:?}", pg.postgres).contains("pw"),
            "password in Debug"
        );
    }
}
