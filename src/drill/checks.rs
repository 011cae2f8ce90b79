//! What a drill checks on the restored server, each recorded as passed,
//! failed or skipped with its evidence: the server accepts connections; the
//! heap and indexes are sound (amcheck, as `pg_amcheck --all
//! --heapallindexed` runs it); every row of every database reads through
//! (what `pg_dumpall` reads); and the operator's own
//! checks, a YAML file of SQL statements with expected results:
//!
//! ```yaml
//! - name: accounts
//!   sql: select count(*) from pgbench_accounts
//!   expect: "1000000"
//!   database: bench            # default: postgres
//! - name: nightly marker
//!   sql: select v from drill_marker where k = 'last'
//!   expect: "2026-12-03"
//! ```
//!
//! A check compares the first column of the first row, as text (`NULL` for
//! a null or no row), with `expect`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DrillError;
use super::server::PORT;
use crate::pg::client::{PgError, PgSession, PgSettings};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    Skipped,
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub evidence: String,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, evidence: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            evidence: evidence.into(),
        }
    }
}

/// One of the operator's checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCheck {
    #[serde(default)]
    pub name: Option<String>,
    /// The database it runs in (default `postgres`).
    #[serde(default)]
    pub database: Option<String>,
    pub sql: String,
    pub expect: String,
}

/// Reads a `--check` file.
pub fn load(path: &Path) -> Result<Vec<UserCheck>, DrillError> {
    let text = std::fs::read_to_string(path).map_err(|e| DrillError::io(path, e))?;
    let checks: Vec<UserCheck> =
        serde_yaml::from_str(&text).map_err(|e| DrillError::CheckFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if checks.is_empty() {
        return Err(DrillError::CheckFile {
            path: path.to_path_buf(),
            message: "it holds no check (expected a list of {name, sql, expect})".into(),
        });
    }
    Ok(checks)
}

/// The operator's checks, each in its database.
pub async fn run_user(conn: &Conn, checks: &[UserCheck]) -> Vec<Check> {
    let mut out = Vec::with_capacity(checks.len());
    for (i, c) in checks.iter().enumerate() {
        let name = c.name.clone().unwrap_or_else(|| format!("check {}", i + 1));
        let db = c.database.as_deref().unwrap_or("postgres");
        let sql = c.sql.trim();
        let value = match conn.to(db).await {
            Ok(session) => session.first_value(sql).await,
            Err(e) => Err(e),
        };
        let check = match value {
            Ok(v) => {
                let got = v.unwrap_or_else(|| "NULL".into());
                if got.trim() == c.expect.trim() {
                    Check::new(name, Status::Passed, format!("{sql} = {got}"))
                } else {
                    Check::new(
                        name,
                        Status::Failed,
                        format!("{sql} = {got}, expected {}", c.expect.trim()),
                    )
                }
            }
            Err(e) => Check::new(name, Status::Failed, format!("{sql} (database {db}): {e}")),
        };
        out.push(check);
    }
    out
}

/// Sessions on the drill's server, one database at a time.
#[derive(Debug, Clone)]
pub struct Conn {
    pub socket_dir: PathBuf,
    pub user: String,
}

impl Conn {
    pub async fn to(&self, dbname: &str) -> Result<PgSession, PgError> {
        PgSession::connect(&PgSettings {
            host: Some(self.socket_dir.display().to_string()),
            port: Some(PORT),
            user: Some(self.user.clone()),
            password: None,
            dbname: Some(dbname.to_string()),
        })
        .await
    }

    /// The databases that accept connections (template0 does not, and
    /// pg_dumpall skips it too).
    async fn databases(&self) -> Result<Vec<String>, PgError> {
        let s = self.to("template1").await?;
        Ok(
            s.column("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
                .await?
                .into_iter()
                .flatten()
                .collect(),
        )
    }
}

/// Heap relations of a database worth reading (tables, populated
/// materialized views, TOAST tables; not other sessions' temporary ones):
/// OID, quoted name, kind.
const RELATIONS: &str = "SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't' \
     AND (c.relkind <> 'm' OR c.relispopulated) ORDER BY c.oid";

/// Valid btree indexes of a database: OID.
const BTREES: &str = "SELECT c.oid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
     JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND i.indisvalid \
     AND i.indisready AND c.relpersistence <> 't' ORDER BY c.oid";

/// A relation of [`RELATIONS`].
struct Relation {
    oid: String,
    name: String,
    toast: bool,
}

async fn relations(s: &PgSession) -> Result<Vec<Relation>, PgError> {
    let rows = s.rows(RELATIONS).await?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| {
            let kind = r.pop()??;
            let name = r.pop()??;
            let oid = r.pop()??;
            Some(Relation {
                oid,
                name,
                toast: kind == "t",
            })
        })
        .collect())
}

/// The amcheck extension's checks, as `pg_amcheck --all --heapallindexed`
/// runs them: `verify_heapam` on every heap relation (with its TOAST), and
/// `bt_index_check(…, heapallindexed)` on every btree index, in every
/// database. Run through SQL, so no client tool of the server's version is
/// needed; skipped, saying why, where the extension is not installed with
/// the server.
pub async fn amcheck(conn: &Conn) -> Check {
    const NAME: &str = "amcheck";
    match amcheck_all(conn).await {
        Ok(Amchecked::Sound {
            databases,
            relations,
            indexes,
        }) => Check::new(
            NAME,
            Status::Passed,
            format!(
                "verify_heapam on {relations} relations and bt_index_check (heapallindexed) on \
                 {indexes} btree indexes in {databases} databases: no corruption"
            ),
        ),
        Ok(Amchecked::Corrupt(what)) => Check::new(NAME, Status::Failed, what),
        Ok(Amchecked::Unavailable(why)) => Check::new(
            NAME,
            Status::Skipped,
            format!("the amcheck extension is not installed with this server: {why}"),
        ),
        Err(e) => Check::new(NAME, Status::Failed, e.to_string()),
    }
}

enum Amchecked {
    Sound {
        databases: usize,
        relations: usize,
        indexes: usize,
    },
    Corrupt(String),
    Unavailable(String),
}

async fn amcheck_all(conn: &Conn) -> Result<Amchecked, PgError> {
    let databases = conn.databases().await?;
    let (mut relations_checked, mut indexes_checked) = (0, 0);
    for db in &databases {
        let s = conn.to(db).await?;
        if let Err(e) = s.execute("CREATE EXTENSION IF NOT EXISTS amcheck").await {
            let text = e.to_string();
            if text.contains("is not available") || text.contains("control file") {
                return Ok(Amchecked::Unavailable(text));
            }
            return Err(e);
        }
        for r in relations(&s).await? {
            let sql = format!(
                "SELECT blkno, offnum, msg FROM verify_heapam({}, check_toast => {}) LIMIT 1",
                r.oid, !r.toast
            );
            if let Some(row) = s.rows(&sql).await?.into_iter().next() {
                let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
                return Ok(Amchecked::Corrupt(format!(
                    "database {db}, relation {}: block {}, item {}: {}",
                    r.name,
                    field(0),
                    field(1),
                    field(2)
                )));
            }
            relations_checked += 1;
        }
        for oid in s.column(BTREES).await?.into_iter().flatten() {
            if let Err(e) = s
                .execute(&format!("SELECT bt_index_check({oid}, true)"))
                .await
            {
                let name = s
                    .first_value(&format!("SELECT {oid}::regclass::text"))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(oid);
                return Ok(Amchecked::Corrupt(format!(
                    "database {db}, index {name}: {e}"
                )));
            }
            indexes_checked += 1;
        }
    }
    Ok(Amchecked::Sound {
        databases: databases.len(),
        relations: relations_checked,
        indexes: indexes_checked,
    })
}

/// Every row of every table, materialized view and catalog in every
/// database, read with `COPY … TO STDOUT` and discarded (what `pg_dumpall`
/// reads, without a client tool of the server's version).
pub async fn read_through(conn: &Conn) -> Check {
    const NAME: &str = "read through";
    let mut tables = 0usize;
    let mut bytes = 0u64;
    let databases = match conn.databases().await {
        Ok(d) => d,
        Err(e) => return Check::new(NAME, Status::Failed, e.to_string()),
    };
    for db in &databases {
        let s = match conn.to(db).await {
            Ok(s) => s,
            Err(e) => return Check::new(NAME, Status::Failed, format!("database {db}: {e}")),
        };
        let rels = match relations(&s).await {
            Ok(r) => r,
            Err(e) => return Check::new(NAME, Status::Failed, format!("database {db}: {e}")),
        };
        // TOAST tables are read through their tables' values.
        for r in rels.iter().filter(|r| !r.toast) {
            match s
                .copy_out_len(&format!("COPY (SELECT * FROM {}) TO STDOUT", r.name))
                .await
            {
                Ok(n) => {
                    tables += 1;
                    bytes += n;
                }
                Err(e) => {
                    return Check::new(
                        NAME,
                        Status::Failed,
                        format!("database {db}, table {}: {e}", r.name),
                    );
                }
            }
        }
    }
    Check::new(
        NAME,
        Status::Passed,
        format!(
            "read every row of {tables} tables in {} databases ({bytes} bytes as text)",
            databases.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_files_are_lists_of_sql_and_expectations() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("checks.yaml");
        std::fs::write(
            &p,
            "- name: rows\n  sql: select count(*) from t\n  expect: \"10\"\n- sql: select 1\n  expect: 1\n",
        )
        .unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].expect, "1");
        std::fs::write(&p, "- sql: select 1\n  expected: 1\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("checks.yaml") && e.contains("expected"), "{e}");
        std::fs::write(&p, "[]\n").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("no check"));
    }
}
