//! The replication connection (what remote backups stand on) against a real
//! server: trust, SCRAM and md5 authentication, TCP and the Unix socket,
//! IDENTIFY_SYSTEM, and the errors a wrong password or a role without
//! REPLICATION get.

mod common;

use cairn::pg::client::{PgError, PgSettings};
use cairn::pg::replication::ReplicationConn;
use common::{Cluster, TestDir};

fn settings(c: &Cluster, user: &str, password: Option<&str>) -> PgSettings {
    PgSettings {
        host: Some("127.0.0.1".into()),
        port: Some(c.port),
        user: Some(user.into()),
        password: password.map(Into::into),
        dbname: Some("postgres".into()),
    }
}

/// One runtime for the whole test: a connection lives in the runtime that
/// opened it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

fn connect(s: &PgSettings) -> Result<ReplicationConn, PgError> {
    runtime().block_on(ReplicationConn::connect(s))
}

#[test]
fn replication_connections_authenticate_and_identify_the_system() {
    let t = TestDir::new();
    let sock = t.sub("sock");
    std::fs::create_dir_all(&sock).unwrap();
    common::chown_pg(&sock);
    let mut c = Cluster::init(&t, "primary", &[]);
    c.set(&[("unix_socket_directories", &format!("'{}'", sock.display()))]);
    // Password rules first: pg_hba.conf is read top down.
    let hba = c.datadir.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host replication scram 127.0.0.1/32 scram-sha-256\n\
             host replication md5 127.0.0.1/32 md5\n\
             host all plain 127.0.0.1/32 trust\n\
             host replication plain 127.0.0.1/32 trust\n{rest}"
        ),
    )
    .unwrap();
    c.start();
    c.sql("create role scram login replication password 'right'");
    c.sql("set password_encryption = 'md5'; create role md5 login replication password 'right'");
    c.sql("create role plain login");
    let sysid = c.sql("select system_identifier from pg_control_system()");
    let rt = runtime();

    // Trust over TCP and over the socket.
    for s in [
        settings(&c, "postgres", None),
        PgSettings {
            host: Some(sock.display().to_string()),
            ..settings(&c, "postgres", None)
        },
        settings(&c, "scram", Some("right")),
        settings(&c, "md5", Some("right")),
    ] {
        let mut conn = connect(&s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert!(conn.version_num >= 120000, "{}", conn.version_num);
        let info = rt.block_on(conn.identify_system()).unwrap();
        assert_eq!(info.system_identifier.to_string(), sysid);
        assert_eq!(info.timeline.0, 1);
        assert!(info.position.0 > 0);
        // The connection stays usable after a query.
        let again = rt.block_on(conn.identify_system()).unwrap();
        assert_eq!(again.system_identifier, info.system_identifier);
    }

    let err = |r: Result<ReplicationConn, PgError>| match r {
        Ok(_) => panic!("connected"),
        Err(e) => e.to_string(),
    };
    let wrong = err(connect(&settings(&c, "scram", Some("wrong"))));
    assert!(
        wrong.contains("password authentication failed for user \"scram\""),
        "{wrong}"
    );
    assert!(wrong.contains("127.0.0.1"), "{wrong}");
    let missing = err(connect(&settings(&c, "md5", None)));
    assert!(missing.contains("PGPASSWORD"), "{missing}");
    // A role without REPLICATION: the server's own words (15: "must be
    // superuser or replication role", 16+: "permission denied to start WAL
    // sender").
    let denied = err(connect(&settings(&c, "plain", None)));
    assert!(
        denied.contains("replication role") || denied.contains("WAL sender"),
        "{denied}"
    );
    // Nothing listening.
    let refused = err(connect(&PgSettings {
        port: Some(common::free_port()),
        ..settings(&c, "postgres", None)
    }));
    assert!(
        refused.contains("cannot connect to PostgreSQL at 127.0.0.1"),
        "{refused}"
    );
}

/// The WAL stream against a real server: a slot created and read back, a
/// whole segment streamed from its start is byte for byte the server's own
/// file, keepalives answered with status updates that move the slot, and,
/// after a promotion, the old timeline ends with the new one's start and its
/// history file.
#[test]
fn the_wal_stream_is_the_server_s_wal_byte_for_byte() {
    use cairn::pg::replication::stream::{Started, StreamMessage};
    use cairn::pg::wal::{Lsn, TimelineId};

    let t = TestDir::new();
    let mut c = Cluster::init(&t, "primary", &[]);
    c.set(&[("wal_level", "replica"), ("max_wal_senders", "4")]);
    c.start();
    let rt = runtime();
    let s = settings(&c, "postgres", None);
    let mut conn = rt
        .block_on(ReplicationConn::connect_as(&s, "cairn_test"))
        .unwrap();

    // A slot: absent, created (reserving WAL), then read back.
    assert_eq!(rt.block_on(conn.read_slot("cairn")).unwrap(), None);
    rt.block_on(conn.create_physical_slot("cairn")).unwrap();
    let slot = rt.block_on(conn.read_slot("cairn")).unwrap().unwrap();
    assert!(slot.physical);
    let reserved = slot.restart_lsn.expect("RESERVE_WAL reserves");
    let e = rt
        .block_on(conn.create_physical_slot("Bad Name"))
        .unwrap_err();
    assert!(
        e.to_string().contains("not a valid replication slot name"),
        "{e}"
    );

    // Stream from the start of the current segment through the next switch.
    let info = rt.block_on(conn.identify_system()).unwrap();
    let seg_size = 16u64 << 20;
    let start = Lsn(info.position.0 / seg_size * seg_size);
    let name = c.sql(&format!("select pg_walfile_name('{start}'::pg_lsn + 1)"));
    c.sql("create table t (n int); insert into t select generate_series(1, 10000)");
    c.sql("select pg_switch_wal()");
    let started = rt
        .block_on(conn.start_physical(Some("cairn"), start, info.timeline))
        .unwrap();
    assert_eq!(started, Started::Streaming);
    assert_eq!(
        c.sql("select application_name from pg_stat_replication"),
        "cairn_test"
    );
    let mut got = Vec::new();
    let mut replied = false;
    while (got.len() as u64) < seg_size {
        match rt.block_on(conn.next_stream()).unwrap() {
            StreamMessage::XLogData {
                start: at, data, ..
            } => {
                assert_eq!(at.0, start.0 + got.len() as u64, "a hole in the stream");
                got.extend_from_slice(&data);
            }
            StreamMessage::Keepalive { .. } => {}
            other => panic!("{other:?}"),
        }
        if !conn.message_buffered() && !replied {
            let at = Lsn(start.0 + got.len() as u64);
            rt.block_on(conn.send_status(at, at, at, false)).unwrap();
            replied = true;
        }
    }
    got.truncate(seg_size as usize);
    let file = std::fs::read(c.datadir.join("pg_wal").join(&name)).unwrap();
    assert!(got == file, "the streamed {name} differs from the server's");
    // The status update moved the slot.
    let end = Lsn(start.0 + seg_size);
    rt.block_on(conn.send_status(end, end, end, false)).unwrap();
    c.wait_until(
        "the slot to move",
        std::time::Duration::from_secs(30),
        |c| {
            c.sql(&format!(
                "select restart_lsn >= '{end}' from pg_replication_slots where slot_name = 'cairn'"
            )) == "t"
        },
    );
    assert!(reserved <= end);
    rt.block_on(conn.stop_streaming()).unwrap();
    // The connection takes commands again.
    assert_eq!(
        rt.block_on(conn.identify_system())
            .unwrap()
            .system_identifier,
        info.system_identifier
    );
    drop(conn);

    // A timeline switch: a standby of this server promoted, streamed from
    // on the old timeline, ends it and names the new one.
    let a = common::Archive::new(common::Backend::File);
    let standby = common::drill::streaming_standby(&t, &a, &c, "standby", |_| {});
    c.sql("insert into t values (1)");
    c.sql("select pg_switch_wal()");
    standby.wait_until(
        "the standby to catch up",
        std::time::Duration::from_secs(60),
        |s| s.try_sql("select count(*) from t").as_deref() == Some("10001"),
    );
    standby.sql("select pg_promote()");
    standby.wait_until("the promotion", std::time::Duration::from_secs(60), |s| {
        s.try_sql("select pg_is_in_recovery()").as_deref() == Some("f")
    });
    let ss = settings(&standby, "postgres", None);
    let mut conn = rt.block_on(ReplicationConn::connect(&ss)).unwrap();
    let now = rt.block_on(conn.identify_system()).unwrap();
    assert_eq!(now.timeline, TimelineId(2));
    let (file_name, content) = rt.block_on(conn.timeline_history(TimelineId(2))).unwrap();
    assert_eq!(file_name, "00000002.history");
    let switch: Lsn = content
        .split_whitespace()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .expect("a switchpoint in the history");
    // From a segment before the switch: timeline 1 streams up to its
    // switchpoint, then ends, naming timeline 2.
    let from = Lsn(switch.0 / seg_size * seg_size - seg_size);
    let started = rt
        .block_on(conn.start_physical(None, from, TimelineId(1)))
        .unwrap();
    assert_eq!(started, Started::Streaming);
    let mut streamed = from.0;
    loop {
        match rt.block_on(conn.next_stream()).unwrap() {
            StreamMessage::XLogData {
                start: at, data, ..
            } => {
                assert_eq!(at.0, streamed, "a hole in the stream");
                streamed = at.0 + data.len() as u64;
            }
            StreamMessage::Keepalive { .. } => {}
            StreamMessage::EndOfTimeline { next } => {
                assert_eq!(next, Some((TimelineId(2), switch)));
                break;
            }
        }
    }
    assert_eq!(
        streamed, switch.0,
        "timeline 1 streamed up to its switchpoint"
    );
    // Asked for exactly its end, the old timeline answers at once.
    let started = rt
        .block_on(conn.start_physical(None, switch, TimelineId(1)))
        .unwrap();
    assert_eq!(
        started,
        Started::TimelineEnded {
            next: Some((TimelineId(2), switch))
        }
    );
    // The new timeline streams from the start of the switch's segment.
    let seg_start = Lsn(switch.0 / seg_size * seg_size);
    let started = rt
        .block_on(conn.start_physical(None, seg_start, TimelineId(2)))
        .unwrap();
    assert_eq!(started, Started::Streaming);
    match rt.block_on(conn.next_stream()).unwrap() {
        StreamMessage::XLogData { start: at, .. } => assert_eq!(at, seg_start),
        other => panic!("{other:?}"),
    }
}
