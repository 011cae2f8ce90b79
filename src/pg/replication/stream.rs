//! The physical WAL stream of a replication connection, as `pg_receivewal`
//! reads it: `START_REPLICATION … PHYSICAL`, the XLogData and keepalive
//! messages the walsender sends in CopyBoth mode, the standby status updates
//! the client sends back, the end of a timeline, `TIMELINE_HISTORY`, and the
//! replication-slot commands. Message layouts: PostgreSQL's "Streaming
//! Replication Protocol".

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::{Incoming, ReplicationConn};
use crate::pg::client::PgError;
use crate::pg::wal::{Lsn, TimelineId};

/// What the walsender sends while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// WAL bytes that begin at `start`; `server_end` is the end of WAL on
    /// the server when it sent them.
    XLogData {
        start: Lsn,
        server_end: Lsn,
        data: Bytes,
    },
    /// A keepalive; `reply`: the server wants a status update now.
    Keepalive { server_end: Lsn, reply: bool },
    /// The timeline being streamed ended on the server (it switched to a
    /// newer one): `next` is that timeline and where it starts. The
    /// connection is ready for the next command.
    EndOfTimeline { next: Option<(TimelineId, Lsn)> },
}

/// How `START_REPLICATION` was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The server streams: read with [`ReplicationConn::next_stream`].
    Streaming,
    /// The start is exactly where that (old) timeline ends: nothing to
    /// stream on it; `next` is the timeline after it and where it starts.
    TimelineEnded { next: Option<(TimelineId, Lsn)> },
}

/// A replication slot as `READ_REPLICATION_SLOT` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub physical: bool,
    /// Where WAL is kept from (`None` before the slot reserved any).
    pub restart_lsn: Option<Lsn>,
    pub restart_timeline: Option<TimelineId>,
}

/// PostgreSQL's epoch (2000-01-01) in Unix seconds.
const PG_EPOCH_UNIX: u64 = 946_684_800;

/// Whether `name` is a valid replication slot name (lower-case letters,
/// digits and underscores, at most 63 bytes), so it can go into a command
/// unquoted.
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl ReplicationConn {
    /// `START_REPLICATION [SLOT s] PHYSICAL start TIMELINE tli`.
    pub async fn start_physical(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: TimelineId,
    ) -> Result<Started, PgError> {
        let slot = match slot {
            Some(s) if valid_slot_name(s) => format!("SLOT {s} "),
            Some(s) => return Err(PgError::Refused(bad_slot_name(s))),
            None => String::new(),
        };
        let sql = format!(
            "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {}",
            timeline.0
        );
        self.send_query(&sql).await?;
        loop {
            match self.read_any().await.map_err(|e| self.query_error(e))? {
                Incoming::CopyBoth => return Ok(Started::Streaming),
                // The end of an old timeline asked for: its result set at once.
                Incoming::Message(Message::RowDescription(_)) => {
                    self.in_rows = true;
                    let next = self.next_timeline().await?;
                    return Ok(Started::TimelineEnded { next });
                }
                Incoming::Message(Message::ErrorResponse(body)) => {
                    let message = super::server_message(body.fields());
                    self.drain_to_ready().await;
                    return Err(self.query_error(message));
                }
                Incoming::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                Incoming::Message(_) => {
                    return Err(self.query_error(format!("{sql}: unexpected answer")));
                }
            }
        }
    }

    /// The next message of the stream.
    pub async fn next_stream(&mut self) -> Result<StreamMessage, PgError> {
        loop {
            let msg = self.read().await.map_err(|e| self.query_error(e))?;
            match msg {
                Message::CopyData(body) => {
                    return parse_copy_data(body.into_bytes())
                        .map_err(|e| self.query_error(format!("WAL stream: {e}")));
                }
                Message::CopyDone => return self.end_of_timeline().await,
                Message::ErrorResponse(body) => {
                    let message = super::server_message(body.fields());
                    self.drain_to_ready().await;
                    return Err(self.query_error(message));
                }
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                _ => return Err(self.query_error("WAL stream: unexpected message")),
            }
        }
    }

    /// Whether a whole message is already buffered, so reading it will not
    /// wait for the network (a receiver syncs and reports once the burst the
    /// server sent is written).
    pub fn message_buffered(&self) -> bool {
        self.buf.len() >= 5 && {
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            self.buf.len() > len as usize
        }
    }

    /// A standby status update: WAL received and written up to `write`,
    /// durable up to `flush` (what synchronous replication and the slot go
    /// by), applied up to `apply`.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        let body = status_update(write, flush, apply, now_pg_micros(), reply_requested);
        frontend::CopyData::new(body)
            .map_err(|e| self.query_error(e.to_string()))?
            .write(&mut self.out);
        self.flush().await.map_err(|e| self.query_error(e))
    }

    /// Ends streaming from this side (CopyDone), reading what the server
    /// still sends until it is ready for another command.
    pub async fn stop_streaming(&mut self) -> Result<(), PgError> {
        frontend::copy_done(&mut self.out);
        self.flush().await.map_err(|e| self.query_error(e))?;
        loop {
            match self.read().await.map_err(|e| self.query_error(e))? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => {
                    let message = super::server_message(body.fields());
                    self.drain_to_ready().await;
                    return Err(self.query_error(message));
                }
                _ => {}
            }
        }
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and contents.
    pub async fn timeline_history(
        &mut self,
        timeline: TimelineId,
    ) -> Result<(String, String), PgError> {
        let rows = self
            .query_rows(&format!("TIMELINE_HISTORY {}", timeline.0))
            .await?;
        let row = rows.first();
        let col = |i: usize| row.and_then(|r| r.get(i).cloned().flatten());
        match (col(0), col(1)) {
            (Some(name), Some(content)) => Ok((name, content)),
            _ => Err(self.query_error("TIMELINE_HISTORY: unexpected answer")),
        }
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL`.
    pub async fn create_physical_slot(&mut self, name: &str) -> Result<(), PgError> {
        if !valid_slot_name(name) {
            return Err(PgError::Refused(bad_slot_name(name)));
        }
        self.query_rows(&format!(
            "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
        ))
        .await
        .map(|_| ())
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15 and later): `None` when
    /// no slot of that name exists.
    pub async fn read_slot(&mut self, name: &str) -> Result<Option<SlotInfo>, PgError> {
        if !valid_slot_name(name) {
            return Err(PgError::Refused(bad_slot_name(name)));
        }
        let rows = self
            .query_rows(&format!("READ_REPLICATION_SLOT {name}"))
            .await?;
        let row = rows.into_iter().next().unwrap_or_default();
        let col = |i: usize| row.get(i).cloned().flatten();
        let Some(kind) = col(0) else {
            return Ok(None);
        };
        Ok(Some(SlotInfo {
            physical: kind == "physical",
            restart_lsn: col(1).and_then(|v| v.parse().ok()),
            restart_timeline: col(2).and_then(|v| v.parse().ok()).map(TimelineId),
        }))
    }

    /// After the server's CopyDone: answer with ours and read the next
    /// timeline's result set, up to ReadyForQuery.
    async fn end_of_timeline(&mut self) -> Result<StreamMessage, PgError> {
        frontend::copy_done(&mut self.out);
        self.flush().await.map_err(|e| self.query_error(e))?;
        let next = self.next_timeline().await?;
        Ok(StreamMessage::EndOfTimeline { next })
    }

    /// Reads the result set that names the next timeline and where it
    /// starts, up to ReadyForQuery.
    async fn next_timeline(&mut self) -> Result<Option<(TimelineId, Lsn)>, PgError> {
        let mut next = None;
        loop {
            match self.next_reply().await? {
                super::Reply::Rows(rows) => {
                    if let Some(row) = rows.first() {
                        let col = |i: usize| row.get(i).cloned().flatten();
                        let tli = col(0).and_then(|v| v.parse::<u32>().ok());
                        let start = col(1).and_then(|v| v.parse::<Lsn>().ok());
                        if let (Some(tli), Some(start)) = (tli, start) {
                            next = Some((TimelineId(tli), start));
                        }
                    }
                }
                super::Reply::Ready => return Ok(next),
                // The CopyDone of the stream itself, echoed in the reply queue.
                super::Reply::CopyDone
                | super::Reply::CopyData(_)
                | super::Reply::CopyOut
                | super::Reply::CopyIn => {}
            }
        }
    }

    /// Reads up to ReadyForQuery, ignoring what comes (after an error).
    async fn drain_to_ready(&mut self) {
        loop {
            match self.read().await {
                Ok(Message::ReadyForQuery(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

fn bad_slot_name(name: &str) -> String {
    format!(
        "{name:?} is not a valid replication slot name (lower-case letters, digits and \
         underscores, at most 63 characters)"
    )
}

/// Microseconds since PostgreSQL's epoch, now.
fn now_pg_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let micros = unix
        .as_micros()
        .saturating_sub(u128::from(PG_EPOCH_UNIX) * 1_000_000);
    i64::try_from(micros).unwrap_or(i64::MAX)
}

/// The body of a standby status update ('r').
fn status_update(write: Lsn, flush: Lsn, apply: Lsn, now: i64, reply: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(write.0);
    b.put_u64(flush.0);
    b.put_u64(apply.0);
    b.put_i64(now);
    b.put_u8(u8::from(reply));
    b.freeze()
}

/// Parses a CopyData message of the stream.
fn parse_copy_data(mut b: Bytes) -> Result<StreamMessage, String> {
    let short = || "a message shorter than its header".to_string();
    if b.is_empty() {
        return Err(short());
    }
    match b.get_u8() {
        b'w' => {
            if b.remaining() < 24 {
                return Err(short());
            }
            let start = Lsn(b.get_u64());
            let server_end = Lsn(b.get_u64());
            let _sent = b.get_i64();
            Ok(StreamMessage::XLogData {
                start,
                server_end,
                data: b,
            })
        }
        b'k' => {
            if b.remaining() < 17 {
                return Err(short());
            }
            let server_end = Lsn(b.get_u64());
            let _sent = b.get_i64();
            let reply = b.get_u8() != 0;
            Ok(StreamMessage::Keepalive { server_end, reply })
        }
        t => Err(format!("unknown message type {:?}", char::from(t))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_messages_parse() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x0300_0000);
        w.put_u64(0x0300_1000);
        w.put_i64(1);
        w.put_slice(b"WAL!");
        assert_eq!(
            parse_copy_data(w.freeze()).unwrap(),
            StreamMessage::XLogData {
                start: Lsn(0x0300_0000),
                server_end: Lsn(0x0300_1000),
                data: Bytes::from_static(b"WAL!"),
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(42);
        k.put_i64(7);
        k.put_u8(1);
        assert_eq!(
            parse_copy_data(k.freeze()).unwrap(),
            StreamMessage::Keepalive {
                server_end: Lsn(42),
                reply: true
            }
        );
        assert!(parse_copy_data(Bytes::from_static(b"w\0\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn a_status_update_is_34_bytes_in_network_order() {
        let b = status_update(Lsn(1), Lsn(2), Lsn(3), 4, true);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &1u64.to_be_bytes());
        assert_eq!(&b[9..17], &2u64.to_be_bytes());
        assert_eq!(&b[25..33], &4i64.to_be_bytes());
        assert_eq!(b[33], 1);
    }

    #[test]
    fn slot_names_are_checked_before_they_reach_a_command() {
        assert!(valid_slot_name("cairn"));
        assert!(valid_slot_name("cairn_2"));
        assert!(!valid_slot_name("Cairn"));
        assert!(!valid_slot_name("a b"));
        assert!(!valid_slot_name("x; DROP"));
        assert!(!valid_slot_name(""));
        assert!(!valid_slot_name(&"a".repeat(64)));
    }
}
