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
