//! A drill's report: what was restored, how long each step took, how far the
//! archive reaches, and each check with its evidence; printed as the
//! evidence log (below), as JSON for machines or as Markdown for a runbook.
//!
//! ```text
//! SESSION_START
//! command: cairn drill base_000000010000000000000004 --recovery-target latest
//! result: restored, replayed 37 WAL files, consistent, 4 of 4 checks passed
//! check: amcheck: passed: pg_amcheck --all --heapallindexed: no corruption
//! KEY_EVIDENCE: backup=base_000000010000000000000004, fetch_s=3.1, replay_s=5.4, …
//! SESSION_END
//! ```

use serde::Serialize;
use time::OffsetDateTime;

use super::checks::{Check, Status};
use crate::archive::manifest::rfc3339;
use crate::backup::restore::RecoveryTarget;

/// Everything a drill found. Times are RFC 3339 (UTC); durations seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command as typed.
    pub command: String,
    /// Every check passed and nothing failed.
    pub passed: bool,
    pub backup: String,
    /// The backups restored, the full backup first.
    pub chain: Vec<String>,
    pub pg_major: u32,
    pub recovery_target: String,
    #[serde(with = "rfc3339")]
    pub started: OffsetDateTime,
    /// RFC 3339.
    pub finished: Option<String>,
    /// Restoring the backup's files.
    pub fetch_s: f64,
    /// From starting the server until recovery ended and it accepted
    /// connections.
    pub replay_s: f64,
    /// Until the cluster was queryable: the backup's recovery time.
    pub rto_s: f64,
    /// WAL segments from the backup's start to where replay ended.
    pub wal_files_replayed: u64,
    pub wal_bytes_replayed: u64,
    /// `pg_last_xact_replay_timestamp()`.
    pub last_replayed_xact: Option<String>,
    /// The newest whole segment in the archive, and when it was stored.
    pub newest_archived_wal: Option<String>,
    pub newest_archived_at: Option<String>,
    /// How far the last replayed transaction is behind the newest archived
    /// WAL: the recovery point the archive offers now.
    pub rpo_s: Option<f64>,
    pub checks: Vec<Check>,
    /// Why the drill stopped early, when it did.
    pub error: Option<String>,
}

impl Report {
    /// The report of a drill of `chain` (its last backup the one named)
    /// begun at `started`, before anything happened.
    pub fn new(
        command: &str,
        target: &RecoveryTarget,
        chain: Vec<String>,
        pg_major: u32,
        started: OffsetDateTime,
    ) -> Report {
        Report {
            command: command.to_string(),
            passed: false,
            backup: chain.last().cloned().unwrap_or_default(),
            chain,
            pg_major,
            recovery_target: target.to_string(),
            started,
            finished: None,
            fetch_s: 0.0,
            replay_s: 0.0,
            rto_s: 0.0,
            wal_files_replayed: 0,
            wal_bytes_replayed: 0,
            last_replayed_xact: None,
            newest_archived_wal: None,
            newest_archived_at: None,
            rpo_s: None,
            checks: Vec::new(),
            error: None,
        }
    }

    /// Stamps the end and decides the outcome.
    pub fn finish(&mut self) {
        self.finished = Some(rfc3339::format(OffsetDateTime::now_utc()));
        self.passed = self.error.is_none()
            && !self.checks.is_empty()
            && self.checks.iter().all(|c| c.status != Status::Failed);
    }

    /// Checks that failed.
    pub fn failed(&self) -> usize {
        self.count(Status::Failed)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The one-line outcome, as the evidence log's `result:` line.
    pub fn result(&self) -> String {
        let verdict = if self.passed { "" } else { "FAILED: " };
        format!("{verdict}{}", self.outcome())
    }

    /// What happened, without the verdict.
    pub fn outcome(&self) -> String {
        let ran = self.checks.len() - self.count(Status::Skipped);
        let passed = self.count(Status::Passed);
        let skipped = match self.count(Status::Skipped) {
            0 => String::new(),
            n => format!(", {n} skipped"),
        };
        match &self.error {
            Some(e) if self.checks.is_empty() => e.clone(),
            Some(e) => format!("{e} (after {passed} of {ran} checks passed{skipped})"),
            None => {
                format!(
                    "restored, replayed {} WAL files, consistent, {passed} of {ran} \
                     checks passed{skipped}",
                    self.wal_files_replayed
                )
            }
        }
    }

    /// The figures an engineer checks, `key=value`.
    fn key_evidence(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        let mut out = vec![
            ("backup", self.backup.clone()),
            ("chain", self.chain.len().to_string()),
            ("pg", self.pg_major.to_string()),
            ("target", self.recovery_target.clone()),
            ("fetch_s", secs(self.fetch_s)),
            ("replay_s", secs(self.replay_s)),
            ("rto_s", secs(self.rto_s)),
            ("wal_files", self.wal_files_replayed.to_string()),
            ("wal_bytes", self.wal_bytes_replayed.to_string()),
            ("last_replayed_xact", opt(&self.last_replayed_xact)),
            ("newest_archived_wal", opt(&self.newest_archived_wal)),
            (
                "rpo_s",
                self.rpo_s.map(secs).unwrap_or_else(|| "unknown".into()),
            ),
        ];
        for c in &self.checks {
            if c.name == "amcheck" || c.name == "read through" {
                out.push((
                    if c.name == "amcheck" {
                        "amcheck"
                    } else {
                        "read_through"
                    },
                    status(c.status).into(),
                ));
            }
        }
        out
    }

    /// The evidence log.
    pub fn evidence_log(&self) -> String {
        let mut s = String::from("SESSION_START\n");
        s.push_str(&format!("command: {}\n", self.command));
        s.push_str(&format!("result: {}\n", self.result()));
        for c in &self.checks {
            s.push_str(&format!(
                "check: {}: {}: {}\n",
                c.name,
                status(c.status),
                one_line(&c.evidence)
            ));
        }
        let evidence: Vec<String> = self
            .key_evidence()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!("KEY_EVIDENCE: {}\n", evidence.join(", ")));
        s.push_str("SESSION_END\n");
        s
    }

    /// A Markdown section for a runbook.
    pub fn markdown(&self) -> String {
        let when = rfc3339::format(self.started);
        let mut s = format!("## Restore drill of {} ({when})\n\n", self.backup);
        s.push_str(&format!("`{}`\n\n", self.command));
        s.push_str(&format!("**Result:** {}\n\n", self.result()));
        s.push_str("| Figure | Value |\n|---|---|\n");
        for (k, v) in self.key_evidence() {
            s.push_str(&format!("| {k} | {} |\n", v.replace('|', "\\|")));
        }
        if !self.checks.is_empty() {
            s.push_str("\n| Check | Status | Evidence |\n|---|---|---|\n");
            for c in &self.checks {
                s.push_str(&format!(
                    "| {} | {} | {} |\n",
                    c.name.replace('|', "\\|"),
                    status(c.status),
                    one_line(&c.evidence).replace('|', "\\|")
                ));
            }
        }
        s
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Passed => "passed",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
    }
}

fn secs(v: f64) -> String {
    format!("{v:.1}")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(command: &str) -> Report {
        Report::new(
            command,
            &RecoveryTarget::Latest,
            vec!["base_000000010000000000000004".into()],
            17,
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn the_evidence_log_has_its_fixed_lines_and_the_figures() {
        let mut r = report("cairn drill LATEST");
        r.fetch_s = 3.1;
        r.replay_s = 5.4;
        r.rto_s = 8.54;
        r.wal_files_replayed = 37;
        r.checks.push(Check {
            name: "amcheck".into(),
            status: Status::Passed,
            evidence: "no corruption".into(),
        });
        r.checks.push(Check {
            name: "rows".into(),
            status: Status::Failed,
            evidence: "select 1 = 2,\nexpected 1".into(),
        });
        r.finish();
        assert!(!r.passed);
        let log = r.evidence_log();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines[0], "SESSION_START");
        assert_eq!(lines[1], "command: cairn drill LATEST");
        assert_eq!(
            lines[2],
            "result: FAILED: restored, replayed 37 WAL files, consistent, 1 of 2 checks passed"
        );
        assert_eq!(lines[4], "check: rows: failed: select 1 = 2, expected 1");
        assert!(lines[5].starts_with(
            "KEY_EVIDENCE: backup=base_000000010000000000000004, chain=1, pg=17, target=latest, \
             fetch_s=3.1, replay_s=5.4, rto_s=8.5, wal_files=37"
        ));
        assert!(
            lines[5].ends_with("rpo_s=unknown, amcheck=passed"),
            "{}",
            lines[5]
        );
        assert_eq!(lines[6], "SESSION_END");
        let md = r.markdown();
        assert!(
            md.contains("| rows | failed | select 1 = 2, expected 1 |"),
            "{md}"
        );
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["passed"], false);
        assert_eq!(json["checks"][0]["status"], "passed");
        assert_eq!(json["started"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_drill_without_checks_or_with_an_error_does_not_pass() {
        let mut r = report("cairn drill");
        r.finish();
        assert!(!r.passed);
        r.error = Some("the server stopped during recovery".into());
        r.finish();
        assert!(!r.passed);
        assert_eq!(r.result(), "FAILED: the server stopped during recovery");
    }
}
