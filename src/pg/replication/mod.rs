//! A replication connection (`replication=true`), as `pg_basebackup` and
//! `pg_receivewal` open one: startup and simple queries here, the WAL stream
//! (`START_REPLICATION`) in [`stream`].
//! tokio-postgres cannot open one (it only speaks the extended query protocol
//! after startup, which walsenders refuse), so this is a small client of its
//! own on `postgres-protocol`'s message codec: startup, authentication
//! (trust, password, md5, SCRAM-SHA-256), simple queries, and the COPY stream
//! that `BASE_BACKUP` answers with.

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::client::{PgError, PgSettings, Target};
use super::wal::{Lsn, TimelineId};

pub mod stream;

trait Stream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Stream for T {}

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_identifier: u64,
    pub timeline: TimelineId,
    /// The current WAL flush position.
    pub position: Lsn,
}

/// One thing the server sent in answer to a query.
#[derive(Debug)]
pub enum Reply {
    /// A result set, whole (rows of text columns; `None` is NULL).
    Rows(Vec<Vec<Option<String>>>),
    /// A COPY stream starts; `CopyData` follows until `CopyDone`.
    CopyOut,
    CopyData(Bytes),
    CopyDone,
    /// The server waits for the client's COPY data (UPLOAD_MANIFEST).
    CopyIn,
    /// The query is over; the connection is ready for the next.
    Ready,
}

/// An open replication connection.
pub struct ReplicationConn {
    io: Pin<Box<dyn Stream>>,
    buf: BytesMut,
    out: BytesMut,
    target: String,
    /// `server_version_num`, e.g. 150004.
    pub version_num: u32,
    /// Rows of the result set being read.
    rows: Vec<Vec<Option<String>>>,
    in_rows: bool,
    /// Replies decoded but not yet handed out (a walsender ends a result set
    /// by starting the next thing, not always with CommandComplete).
    queued: std::collections::VecDeque<Reply>,
    /// Notices (warnings) received during the current query, their text;
    /// BASE_BACKUP reports page checksum failures this way.
    pub notices: Vec<String>,
    /// The SQLSTATE of the last error a query ended with.
    pub last_error_code: Option<String>,
}

/// Notices kept per query, at most (a server may send one per bad page).
const NOTICES_KEPT: usize = 100_000;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ReplicationConn {
    /// Connects and authenticates as the settings (and libpq variables) say.
    pub async fn connect(settings: &PgSettings) -> Result<ReplicationConn, PgError> {
        Self::connect_as(settings, "cairn").await
    }

    /// Connects under `application_name` (what `synchronous_standby_names`
    /// and `pg_stat_replication` know it by).
    pub async fn connect_as(
        settings: &PgSettings,
        application_name: &str,
    ) -> Result<ReplicationConn, PgError> {
        let t = settings.resolve()?;
        let target = t.describe();
        let io = tokio::time::timeout(CONNECT_TIMEOUT, open(&t))
            .await
            .map_err(|_| PgError::Connect {
                target: target.clone(),
                message: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            })?
            .map_err(|e| PgError::Connect {
                target: target.clone(),
                message: e.to_string(),
            })?;
        let mut conn = ReplicationConn {
            io,
            buf: BytesMut::with_capacity(64 << 10),
            out: BytesMut::new(),
            target,
            version_num: 0,
            rows: Vec::new(),
            in_rows: false,
            queued: std::collections::VecDeque::new(),
            notices: Vec::new(),
            last_error_code: None,
        };
        conn.startup(&t, application_name).await?;
        super::client::check_version(conn.version_num)?;
        Ok(conn)
    }

    fn connect_error(&self, message: impl Into<String>) -> PgError {
        PgError::Connect {
            target: self.target.clone(),
            message: message.into(),
        }
    }

    async fn startup(&mut self, t: &Target, application_name: &str) -> Result<(), PgError> {
        let params = [
            ("user", t.user.as_str()),
            ("database", t.dbname.as_str()),
            ("replication", "true"),
            ("application_name", application_name),
        ];
        frontend::startup_message(params, &mut self.out)
            .map_err(|e| self.connect_error(e.to_string()))?;
        self.flush().await.map_err(|e| self.connect_error(e))?;
        let password = || {
            t.password.clone().ok_or_else(|| PgError::Connect {
                target: t.describe(),
                message: "the server asks for a password: set PGPASSWORD or postgres.password"
                    .into(),
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.read().await.map_err(|e| self.connect_error(e))?;
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.out)
                        .map_err(|e| self.connect_error(e.to_string()))?;
                    self.flush().await.map_err(|e| self.connect_error(e))?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        t.user.as_bytes(),
                        password()?.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.out)
                        .map_err(|e| self.connect_error(e.to_string()))?;
                    self.flush().await.map_err(|e| self.connect_error(e))?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms
                        .next()
                        .map_err(|e| self.connect_error(e.to_string()))?
                    {
                        offered |= m == SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(self.connect_error(
                            "the server offers no SASL mechanism cairn supports (SCRAM-SHA-256)",
                        ));
                    }
                    // No TLS, so no channel binding to offer.
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.out)
                        .map_err(|e| self.connect_error(e.to_string()))?;
                    self.flush().await.map_err(|e| self.connect_error(e))?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.connect_error("SASL continue without a start"))?;
                    s.update(body.data())
                        .map_err(|e| self.connect_error(format!("SCRAM: {e}")))?;
                    let reply = s.message().to_vec();
                    frontend::sasl_response(&reply, &mut self.out)
                        .map_err(|e| self.connect_error(e.to_string()))?;
                    self.flush().await.map_err(|e| self.connect_error(e))?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.connect_error("SASL final without a start"))?;
                    s.finish(body.data())
                        .map_err(|e| self.connect_error(format!("SCRAM: {e}")))?;
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(self.connect_error(
                        "the server asks for an authentication method cairn does not support \
                         (use trust, password, md5 or scram-sha-256 in pg_hba.conf)",
                    ));
                }
                Message::ParameterStatus(p) => {
                    let name = p.name().map_err(|e| self.connect_error(e.to_string()))?;
                    if name == "server_version" {
                        let v = p.value().map_err(|e| self.connect_error(e.to_string()))?;
                        self.version_num = version_num(v);
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ErrorResponse(body) => {
                    return Err(self.connect_error(server_message(body.fields())));
                }
                Message::ReadyForQuery(_) => return Ok(()),
                _ => return Err(self.connect_error("unexpected message during startup")),
            }
        }
    }

    /// Sends a query (the simple protocol: walsenders take no other); read
    /// the answer with [`ReplicationConn::next_reply`] until `Ready`.
    pub async fn send_query(&mut self, sql: &str) -> Result<(), PgError> {
        frontend::query(sql, &mut self.out).map_err(|e| self.query_error(e.to_string()))?;
        self.flush().await.map_err(|e| self.query_error(e))
    }

    /// A setting's value (`SHOW`, which walsenders answer), empty if none.
    pub async fn show(&mut self, name: &str) -> Result<String, PgError> {
        let rows = self.query_rows(&format!("SHOW {name}")).await?;
        Ok(rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default())
    }

    /// `UPLOAD_MANIFEST` (PostgreSQL 17+): sends a previous backup's
    /// `backup_manifest`, which the next `BASE_BACKUP ( INCREMENTAL )` on
    /// this connection builds on. The server checks it (its checksum, the
    /// system identifier) only once it has it all.
    pub async fn upload_manifest(&mut self, manifest: &[u8]) -> Result<(), PgError> {
        self.send_query("UPLOAD_MANIFEST").await?;
        loop {
            match self.next_reply().await? {
                Reply::CopyIn => break,
                Reply::Ready => {
                    return Err(self.query_error("the server did not take UPLOAD_MANIFEST"));
                }
                _ => {}
            }
        }
        for chunk in manifest.chunks(64 * 1024) {
            frontend::CopyData::new(chunk)
                .map_err(|e| self.query_error(e.to_string()))?
                .write(&mut self.out);
            self.flush().await.map_err(|e| self.query_error(e))?;
        }
        frontend::copy_done(&mut self.out);
        self.flush().await.map_err(|e| self.query_error(e))?;
        loop {
            if let Reply::Ready = self.next_reply().await? {
                return Ok(());
            }
        }
    }

    fn query_error(&self, message: impl Into<String>) -> PgError {
        PgError::Query {
            what: "replication connection",
            message: message.into(),
        }
    }

    /// The next part of the answer to the current query. A server error
    /// ends the query with that error (after the server is ready again).
    pub async fn next_reply(&mut self) -> Result<Reply, PgError> {
        loop {
            if let Some(r) = self.queued.pop_front() {
                return Ok(r);
            }
            let msg = self.read().await.map_err(|e| self.query_error(e))?;
            match msg {
                Message::RowDescription(_) => {
                    self.end_rows();
                    self.in_rows = true;
                }
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    let mut values = Vec::new();
                    while let Some(r) =
                        ranges.next().map_err(|e| self.query_error(e.to_string()))?
                    {
                        values.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    self.rows.push(values);
                }
                Message::CommandComplete(_) => self.end_rows(),
                Message::NoticeResponse(body) => {
                    if self.notices.len() < NOTICES_KEPT {
                        self.notices.push(server_message(body.fields()));
                    }
                }
                Message::EmptyQueryResponse | Message::ParameterStatus(_) => {}
                Message::CopyOutResponse(_) => {
                    self.end_rows();
                    self.queued.push_back(Reply::CopyOut);
                }
                Message::CopyData(body) => {
                    self.end_rows();
                    self.queued.push_back(Reply::CopyData(body.into_bytes()));
                }
                Message::CopyDone => self.queued.push_back(Reply::CopyDone),
                Message::CopyInResponse(_) => {
                    self.end_rows();
                    self.queued.push_back(Reply::CopyIn);
                }
                Message::ErrorResponse(body) => {
                    let message = server_message(body.fields());
                    self.last_error_code = error_code(body.fields());
                    // Drain to ReadyForQuery, so the error is the whole story.
                    loop {
                        match self.read().await {
                            Ok(Message::ReadyForQuery(_)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    self.rows.clear();
                    self.in_rows = false;
                    self.queued.clear();
                    return Err(self.query_error(message));
                }
                Message::ReadyForQuery(_) => {
                    self.end_rows();
                    self.queued.push_back(Reply::Ready);
                }
                _ => return Err(self.query_error("unexpected message from the server")),
            }
        }
    }

    /// Queues the result set being read, if any.
    fn end_rows(&mut self) {
        if std::mem::take(&mut self.in_rows) {
            let rows = std::mem::take(&mut self.rows);
            self.queued.push_back(Reply::Rows(rows));
        }
    }

    /// Runs a query that answers with result sets only; returns the rows of
    /// the last one.
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        self.send_query(sql).await?;
        let mut last = Vec::new();
        loop {
            match self.next_reply().await? {
                Reply::Rows(rows) => last = rows,
                Reply::Ready => return Ok(last),
                _ => return Err(self.query_error(format!("{sql}: unexpected COPY answer"))),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: the cluster, timeline and WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, PgError> {
        let rows = self.query_rows("IDENTIFY_SYSTEM").await?;
        let bad = |what: &str| self.query_error(format!("IDENTIFY_SYSTEM: unexpected {what}"));
        let row = rows.first().ok_or_else(|| bad("empty answer"))?;
        let col = |i: usize| row.get(i).and_then(|v| v.as_deref());
        Ok(SystemInfo {
            system_identifier: col(0)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("system identifier"))?,
            timeline: TimelineId(
                col(1)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad("timeline"))?,
            ),
            position: col(2)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("WAL position"))?,
        })
    }

    async fn flush(&mut self) -> Result<(), String> {
        let out = self.out.split();
        self.io.write_all(&out).await.map_err(|e| e.to_string())?;
        self.io.flush().await.map_err(|e| e.to_string())
    }

    async fn read(&mut self) -> Result<Message, String> {
        match self.read_any().await? {
            Incoming::Message(m) => Ok(m),
            Incoming::CopyBoth => Err("unexpected CopyBothResponse".into()),
        }
    }

    /// The next message, including the CopyBothResponse that
    /// postgres-protocol does not parse (`START_REPLICATION`'s answer).
    async fn read_any(&mut self) -> Result<Incoming, String> {
        loop {
            if self.buf.len() >= 5 && self.buf[0] == COPY_BOTH_RESPONSE {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let _ = self.buf.split_to(total);
                    return Ok(Incoming::CopyBoth);
                }
            } else if let Some(msg) =
                Message::parse(&mut self.buf).map_err(|e| format!("bad message: {e}"))?
            {
                return Ok(Incoming::Message(msg));
            }
            self.buf.reserve(64 << 10);
            let n = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
        }
    }
}

/// The tag of CopyBothResponse.
const COPY_BOTH_RESPONSE: u8 = b'W';

/// A message as [`ReplicationConn::read_any`] reads it.
enum Incoming {
    CopyBoth,
    Message(Message),
}

async fn open(t: &Target) -> std::io::Result<Pin<Box<dyn Stream>>> {
    if t.host.starts_with('/') {
        let path = std::path::Path::new(&t.host).join(format!(".s.PGSQL.{}", t.port));
        let s = tokio::net::UnixStream::connect(path).await?;
        Ok(Box::pin(s))
    } else {
        let s = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await?;
        s.set_nodelay(true)?;
        Ok(Box::pin(s))
    }
}

/// `15.4 (Debian 15.4-1)` → 150004; `12.16` → 120016.
fn version_num(v: &str) -> u32 {
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    major * 10000 + minor
}

/// The server's message, with its detail and hint when it gives them.
fn server_message(mut fields: ErrorFields<'_>) -> String {
    let (mut message, mut detail, mut hint) = (String::new(), None, None);
    while let Ok(Some(f)) = fields.next() {
        let text = || String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'M' => message = text(),
            b'D' => detail = Some(text()),
            b'H' => hint = Some(text()),
            _ => {}
        }
    }
    for extra in [detail, hint].into_iter().flatten() {
        message = format!("{message} ({extra})");
    }
    message
}

/// An error's SQLSTATE (`C` field).
fn error_code(mut fields: ErrorFields<'_>) -> Option<String> {
    while let Ok(Some(f)) = fields.next() {
        if f.type_() == b'C' {
            return Some(String::from_utf8_lossy(f.value_bytes()).into_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_become_version_numbers() {
        assert_eq!(version_num("15.4 (Debian 15.4-1.pgdg120+1)"), 150004);
        assert_eq!(version_num("12.16"), 120016);
        assert_eq!(version_num("17devel"), 170000);
    }
}
