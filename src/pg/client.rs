//! The SQL session a base backup runs on: connection from the libpq variables
//! and the `postgres:` config section, server facts, and the non-exclusive
//! low-level backup calls, which differ between PostgreSQL 15+ and 12–14.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::wal::{Lsn, TimelineId};

/// Where and as whom to connect. Unset fields fall back to the libpq
/// environment variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
/// `PGDATABASE`), then to libpq's defaults.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PgSettings {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("dbname", &self.dbname)
            .finish()
    }
}

/// Where to connect, with every fallback applied.
#[derive(Clone)]
pub(crate) struct Target {
    /// A host name, an address, or a directory holding the server's socket.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl Target {
    /// `host:port as user`, for messages (never the password).
    pub fn describe(&self) -> String {
        format!("{}:{} as {}", self.host, self.port, self.user)
    }
}

impl PgSettings {
    /// Applies the libpq variables and defaults to the unset fields.
    pub(crate) fn resolve(&self) -> Result<Target, PgError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let host = self
            .host
            .clone()
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(|| {
                if std::path::Path::new("/var/run/postgresql").is_dir() {
                    "/var/run/postgresql".into()
                } else {
                    "localhost".into()
                }
            });
        let port = match self.port {
            Some(p) => p,
            None => match env("PGPORT") {
                Some(p) => p.parse().map_err(|_| PgError::Connect {
                    target: host.clone(),
                    message: format!("PGPORT={p:?} is not a port number"),
                })?,
                None => 5432,
            },
        };
        let user = self
            .user
            .clone()
            .or_else(|| env("PGUSER"))
            .or_else(os_user)
            .unwrap_or_else(|| "postgres".into());
        let dbname = self
            .dbname
            .clone()
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let password = self.password.clone().or_else(|| env("PGPASSWORD"));
        Ok(Target {
            host,
            port,
            user,
            password,
            dbname,
        })
    }
}

/// Refuses a server whose WAL does not reach an archive: a base backup is
/// useless without the WAL written during it.
pub(crate) fn check_archiving(
    mode: &str,
    recovery: bool,
    command: &str,
    library: &str,
) -> Result<(), PgError> {
    if mode == "off" || (recovery && mode != "always") {
        return Err(PgError::Refused(format!(
            "WAL archiving is not enabled (archive_mode = {mode}{}): a base backup is useless \
             without the WAL written during it. Set archive_mode = on{} and archive_command = \
             'cairn wal-push %p', then restart PostgreSQL",
            if recovery { " on a standby" } else { "" },
            if recovery {
                " (always, on a standby)"
            } else {
                ""
            }
        )));
    }
    if library.is_empty() && (command.is_empty() || command == "(disabled)") {
        return Err(PgError::Refused(
            "archive_command is not set: WAL written during the backup would never be \
             archived. Set archive_command = 'cairn wal-push %p' and reload PostgreSQL"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses servers older than 12, the oldest whose backup API cairn speaks.
pub(crate) fn check_version(version_num: u32) -> Result<(), PgError> {
    if version_num < 120000 {
        return Err(PgError::Refused(format!(
            "PostgreSQL {} is not supported; cairn needs 12 or later",
            version_num / 10000
        )));
    }
    Ok(())
}

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Connect { target: String, message: String },
    #[error("PostgreSQL ({what}): {message}")]
    Query { what: &'static str, message: String },
    #[error("{0}")]
    Refused(String),
}

fn query_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |e| PgError::Query {
        what,
        message: describe(&e),
    }
}

/// The server's own message where there is one (`password authentication
/// failed for user "x"`), else the driver's.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s = format!("{s}: {inner}");
                source = inner.source();
            }
            s
        }
    }
}

/// An open session.
pub struct PgSession {
    client: Client,
    /// `server_version_num`, e.g. 150004.
    pub version_num: u32,
}

/// The advisory lock class of cairn's locks (`"cair"` as an int4).
const LOCK_CLASS: i32 = 0x6361_6972;

/// The result of stopping a backup.
#[derive(Debug, Clone)]
pub struct BackupStop {
    pub lsn: Lsn,
    /// Contents for `backup_label`, byte for byte.
    pub backup_label: String,
    /// Contents for `tablespace_map`, when there are tablespaces.
    pub tablespace_map: Option<String>,
}

impl PgSession {
    pub async fn connect(settings: &PgSettings) -> Result<PgSession, PgError> {
        let Target {
            host,
            port,
            user,
            password,
            dbname,
        } = settings.resolve()?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&host)
            .port(port)
            .user(&user)
            .dbname(&dbname)
            .application_name(format!("cairn pid {}", std::process::id()))
            .connect_timeout(Duration::from_secs(10));
        if let Some(pw) = password {
            config.password(pw);
        }
        let target = format!("{host}:{port} as {user}");
        let (client, connection) = config.connect(NoTls).await.map_err(|e| PgError::Connect {
            target: target.clone(),
            message: describe(&e),
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        let version: String = client
            .query_one("SHOW server_version_num", &[])
            .await
            .map_err(query_err("server version"))?
            .get(0);
        let version_num = version.trim().parse().map_err(|_| PgError::Query {
            what: "server version",
            message: format!("unexpected server_version_num {version:?}"),
        })?;
        check_version(version_num)?;
        Ok(PgSession {
            client,
            version_num,
        })
    }

    /// The major version, e.g. 15.
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }

    async fn show(&self, setting: &'static str) -> Result<String, PgError> {
        let row = self
            .client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .map_err(query_err(setting))?;
        Ok(row.get(0))
    }

    pub async fn system_identifier(&self) -> Result<u64, PgError> {
        let row = self
            .client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(query_err("system identifier"))?;
        let s: String = row.get(0);
        s.parse().map_err(|_| PgError::Query {
            what: "system identifier",
            message: format!("unexpected value {s:?}"),
        })
    }

    pub async fn data_directory(&self) -> Result<String, PgError> {
        self.show("data_directory").await
    }

    pub async fn wal_segment_size(&self) -> Result<u64, PgError> {
        let row = self
            .client
            .query_one(
                "SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024 \
                 WHEN 'MB' THEN 1048576 ELSE 1 END FROM pg_settings WHERE name = 'wal_segment_size'",
                &[],
            )
            .await
            .map_err(query_err("wal_segment_size"))?;
        let n: i64 = row.get(0);
        Ok(n as u64)
    }

    /// `block_size`: the page size the server was built with.
    pub async fn block_size(&self) -> Result<u64, PgError> {
        let v = self.show("block_size").await?;
        v.trim().parse().map_err(|_| PgError::Query {
            what: "block_size",
            message: format!("{v:?} is not a number"),
        })
    }

    /// `data_checksums`: whether the cluster's pages carry checksums.
    pub async fn data_checksums(&self) -> Result<bool, PgError> {
        Ok(self.show("data_checksums").await?.trim() == "on")
    }

    /// Takes the session-level advisory lock `key` (in cairn's own class), held
    /// until this session ends, however the process ends. `Ok(None)` when it
    /// was taken; `Ok(Some(holder))` when another session holds it.
    pub async fn try_lock(&self, key: i32) -> Result<Option<String>, PgError> {
        let got: bool = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_CLASS, &key])
            .await
            .map_err(query_err("advisory lock"))?
            .get(0);
        if got {
            return Ok(None);
        }
        let holder = self
            .client
            .query_opt(
                "SELECT format('%s (%s, connected since %s)', a.application_name, \
                 coalesce(host(a.client_addr), 'local socket'), \
                 to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ')) \
                 FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE l.locktype = 'advisory' AND l.granted \
                 AND l.classid = $1::int::oid AND l.objid = $2::int::oid",
                &[&LOCK_CLASS, &key],
            )
            .await
            .map_err(query_err("advisory lock holder"))?
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|| "another session".into());
        Ok(Some(holder))
    }

    /// The first column of the first row `sql` returns, as text (`None`
    /// for no row or NULL): for checks written as SQL and an expected value.
    pub async fn first_value(&self, sql: &str) -> Result<Option<String>, PgError> {
        Ok(self.column(sql).await?.into_iter().next().flatten())
    }

    /// The first column of every row `sql` returns, as text.
    pub async fn column(&self, sql: &str) -> Result<Vec<Option<String>>, PgError> {
        let rows = self.rows(sql).await?;
        Ok(rows
            .into_iter()
            .map(|r| r.into_iter().next().flatten())
            .collect())
    }

    /// Every row `sql` returns, each column as text.
    pub async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(query_err("a check's query"))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// Runs statements that return nothing wanted.
    pub async fn execute(&self, sql: &str) -> Result<(), PgError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(query_err("a check's statement"))
    }

    /// Runs `COPY … TO STDOUT` and discards what it sends: reads every row
    /// (detoasting each value) without keeping any. Returns the bytes sent.
    pub async fn copy_out_len(&self, sql: &str) -> Result<u64, PgError> {
        use futures::StreamExt;
        let stream = self
            .client
            .copy_out(sql)
            .await
            .map_err(query_err("reading a table"))?;
        let mut stream = std::pin::pin!(stream);
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            bytes += chunk.map_err(query_err("reading a table"))?.len() as u64;
        }
        Ok(bytes)
    }

    pub async fn in_recovery(&self) -> Result<bool, PgError> {
        let row = self
            .client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(query_err("recovery state"))?;
        Ok(row.get(0))
    }

    /// Refuses to start a backup whose WAL would never reach the archive:
    /// neither archive_command nor wal-receive (an active physical slot
    /// named `receiver_slot`) carries it there.
    pub async fn check_archiving(&self, receiver_slot: &str) -> Result<(), PgError> {
        let mode = self.show("archive_mode").await?;
        let recovery = self.in_recovery().await?;
        let command = self.show("archive_command").await?;
        let library = if self.version_num >= 150000 {
            self.show("archive_library").await?
        } else {
            String::new()
        };
        let refused = match check_archiving(&mode, recovery, &command, &library) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let streamed = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 \
                 AND slot_type = 'physical' AND active",
                &[&receiver_slot],
            )
            .await
            .map_err(query_err("replication slots"))?
            .is_some();
        if streamed {
            tracing::info!(slot = %receiver_slot, "WAL reaches the archive through wal-receive");
            return Ok(());
        }
        Err(refused)
    }

    /// Starts a non-exclusive backup on this session; returns the start LSN and
    /// the timeline it is on.
    pub async fn backup_start(
        &self,
        label: &str,
        fast: bool,
    ) -> Result<(Lsn, TimelineId), PgError> {
        let sql = if self.version_num >= 150000 {
            "SELECT pg_backup_start($1, $2)::text"
        } else {
            "SELECT pg_start_backup($1, $2, false)::text"
        };
        let row = self
            .client
            .query_one(sql, &[&label, &fast])
            .await
            .map_err(query_err("start backup"))?;
        let lsn = parse_lsn(row.get(0))?;
        // The checkpoint the backup starts from is on the current timeline; on a
        // standby that is the timeline being replayed.
        let row = self
            .client
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .await
            .map_err(query_err("timeline"))?;
        let tli: i32 = row.get(0);
        Ok((lsn, TimelineId(tli as u32)))
    }

    /// Stops the backup, waiting (at most `archive_wait`) until the WAL it needs
    /// is archived.
    pub async fn backup_stop(&self, archive_wait: Duration) -> Result<BackupStop, PgError> {
        self.client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                archive_wait.as_millis().max(1)
            ))
            .await
            .map_err(query_err("set statement_timeout"))?;
        let sql = if self.version_num >= 150000 {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => true)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)"
        };
        let row = self.client.query_one(sql, &[]).await.map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
                PgError::Refused(format!(
                    "the backup's WAL was not archived within {} s (backup_archive_timeout): \
                     archive_command is failing or lagging; check pg_stat_archiver and the \
                     server log. The backup is abandoned",
                    archive_wait.as_secs()
                ))
            } else {
                query_err("stop backup")(e)
            }
        })?;
        let spcmap: Option<String> = row.get(2);
        Ok(BackupStop {
            lsn: parse_lsn(row.get(0))?,
            backup_label: row.get(1),
            tablespace_map: spcmap.filter(|s| !s.is_empty()),
        })
    }
}

fn parse_lsn(s: &str) -> Result<Lsn, PgError> {
    s.parse().map_err(|_| PgError::Query {
        what: "LSN",
        message: format!("unexpected LSN {s:?}"),
    })
}

/// The operating-system user, libpq's default role name.
fn os_user() -> Option<String> {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            // SAFETY: getpwuid returns a pointer into static storage or null.
            unsafe {
                let pw = libc::getpwuid(libc::geteuid());
                if pw.is_null() {
                    return None;
                }
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_str()
                    .ok()
                    .map(String::from)
            }
        })
}
