//! Prometheus metrics, for the people who alert on backups: how the last run
//! of backup-push, backup-fetch, delete or wal-verify went, pushed to a
//! Pushgateway (those commands run from cron and exit, so nothing could
//! scrape them); wal-push's running counters, kept in a node_exporter
//! textfile (it runs once per WAL segment, far too often to push); and
//! wal-receive's positions, pushed or kept in a textfile of its own.
//! Formats are in docs/METRICS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::wal::push::Uploaded;

/// Why metrics could not be delivered. Never fails the command itself.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot push metrics to the Pushgateway at {url}: {message}")]
    Push { url: String, message: String },
    #[error("cannot update the metrics textfile {path}: {source}")]
    Textfile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Gauge or counter, as the exposition format's `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// One metric of a run, without labels (the grouping key or the textfile's
/// `storage` label are added).
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub value: f64,
}

impl Metric {
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Metric {
        Metric {
            name,
            help,
            kind: Kind::Gauge,
            value,
        }
    }
}

/// backup-push's figures.
pub fn backup_figures(raw: u64, stored: u64, corrupt_pages: usize) -> Vec<Metric> {
    vec![
        bytes_raw(raw),
        Metric::gauge(
            "cairn_last_bytes_stored",
            "Bytes the last successful backup stored, after compression and encryption.",
            stored as f64,
        ),
        Metric::gauge(
            "cairn_backup_corrupt_pages",
            "Pages whose checksum failed when the last successful backup read them.",
            corrupt_pages as f64,
        ),
    ]
}

/// backup-fetch's figures.
pub fn restore_figures(raw: u64) -> Vec<Metric> {
    vec![bytes_raw(raw)]
}

/// backup-push's and backup-fetch's bytes, one metric for both.
fn bytes_raw(bytes: u64) -> Metric {
    Metric::gauge(
        "cairn_last_bytes_raw",
        "Bytes of data the last successful run backed up or restored, before compression.",
        bytes as f64,
    )
}

/// `delete --confirm`'s figures.
pub fn delete_figures(backups: usize, wal: usize, objects: usize) -> Vec<Metric> {
    vec![
        Metric::gauge(
            "cairn_last_deleted_backups",
            "Backups the last successful delete removed.",
            backups as f64,
        ),
        Metric::gauge(
            "cairn_last_deleted_wal_files",
            "WAL files the last successful delete removed.",
            wal as f64,
        ),
        Metric::gauge(
            "cairn_last_deleted_objects",
            "Objects (backup parts, manifests, WAL files) the last successful delete removed.",
            objects as f64,
        ),
    ]
}

/// wal-verify's findings, pushed whether or not it passed (a gap is what
/// an alert wants to see).
pub fn verify_figures(report: &crate::wal::verify::Report) -> Vec<Metric> {
    vec![
        Metric::gauge(
            "cairn_wal_verify_backups",
            "Backups wal-verify checked.",
            report.backups.len() as f64,
        ),
        Metric::gauge(
            "cairn_wal_verify_missing_segments",
            "WAL segments that backups need for recovery to the newest segment and the archive lacks.",
            report.gaps.iter().map(|g| g.segments).sum::<u64>() as f64,
        ),
        Metric::gauge(
            "cairn_wal_verify_missing_histories",
            "Timeline history files that backups need and the archive lacks.",
            report.missing_histories.len() as f64,
        ),
    ]
}

/// backup-verify's findings, pushed whether or not it passed.
pub fn backup_verify_figures(report: &crate::drill::verify::Report) -> Vec<Metric> {
    vec![
        Metric::gauge(
            "cairn_backup_verify_backups",
            "Backups backup-verify checked.",
            report.backups.len() as f64,
        ),
        Metric::gauge(
            "cairn_backup_verify_problems",
            "Problems backup-verify found (damaged or missing parts, missing WAL).",
            report
                .backups
                .iter()
                .map(|b| b.problems.len())
                .sum::<usize>() as f64,
        ),
        Metric::gauge(
            "cairn_backup_verify_bytes",
            "Bytes of backup data backup-verify read and checked.",
            report.backups.iter().map(|b| b.bytes).sum::<u64>() as f64,
        ),
    ]
}

/// A drill's figures. What it did not measure (it failed first) is not
/// pushed, so the last measured RTO and RPO stay; the success timestamp
/// only moves when every check passed.
pub fn drill_figures(report: &crate::drill::Report) -> Vec<Metric> {
    let mut out = vec![Metric::gauge(
        "cairn_drill_checks_failed",
        "Checks the last drill failed (a drill that stopped early counts one).",
        (report.failed() + usize::from(report.error.is_some())) as f64,
    )];
    if report.rto_s > 0.0 {
        out.push(Metric::gauge(
            "cairn_drill_rto_seconds",
            "Seconds the last drill took from the start of the restore until the cluster was queryable.",
            report.rto_s,
        ));
    }
    if let Some(rpo) = report.rpo_s {
        out.push(Metric::gauge(
            "cairn_drill_rpo_seconds",
            "Seconds between the last transaction the last drill replayed and the newest archived WAL.",
            rpo,
        ));
    }
    if report.passed {
        let finished = report
            .finished
            .as_deref()
            .and_then(|f| {
                time::OffsetDateTime::parse(f, &time::format_description::well_known::Rfc3339).ok()
            })
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        out.push(Metric::gauge(
            "cairn_drill_last_success_timestamp_seconds",
            "Unix time of the last drill whose every check passed.",
            finished.unix_timestamp() as f64,
        ));
    }
    out
}

/// How one run of a command ended, with the figures it measured.
#[derive(Debug, Clone)]
pub struct Run {
    /// `backup-push`, `backup-fetch`, `delete`, `wal-verify`.
    pub command: &'static str,
    /// The storage URL: which archive (so, in practice, which cluster).
    pub storage: String,
    pub succeeded: bool,
    pub finished: SystemTime,
    pub duration: Duration,
    /// The command's own figures (bytes, objects deleted, missing segments).
    pub figures: Vec<Metric>,
}

/// The failure counter, which the Pushgateway cannot add to: cairn reads it
/// back from the gateway's API and pushes it incremented.
const FAILURES: &str = "cairn_failures_total";
const FAILURES_HELP: &str = "Runs of the command that failed (as far as the Pushgateway has kept).";

/// The metrics a run pushes: each run replaces the group's metrics of the
/// same names (POST), so the last success's timestamp and figures stay when
/// a later run fails. `failures` is the counter's value before this run
/// (`None`: unknown, then it is not pushed).
pub fn run_metrics(run: &Run, failures: Option<f64>) -> Vec<Metric> {
    let now = unix_seconds(run.finished);
    let mut out = vec![
        Metric::gauge(
            "cairn_last_run_timestamp_seconds",
            "Unix time the last run of the command ended.",
            now,
        ),
        Metric::gauge(
            "cairn_last_run_success",
            "1 if the last run of the command succeeded, else 0.",
            if run.succeeded { 1.0 } else { 0.0 },
        ),
        Metric::gauge(
            "cairn_last_run_duration_seconds",
            "How long the last run of the command took.",
            run.duration.as_secs_f64(),
        ),
    ];
    if run.succeeded {
        out.push(Metric::gauge(
            "cairn_last_success_timestamp_seconds",
            "Unix time the command last succeeded.",
            now,
        ));
    } else {
        out.push(Metric::gauge(
            "cairn_last_failure_timestamp_seconds",
            "Unix time the command last failed.",
            now,
        ));
    }
    if let Some(f) = failures {
        out.push(Metric {
            name: FAILURES,
            help: FAILURES_HELP,
            kind: Kind::Counter,
            value: f + if run.succeeded { 0.0 } else { 1.0 },
        });
    }
    out.extend(run.figures.iter().cloned());
    out
}

/// Pushes a run's metrics to the Pushgateway at `base_url`, into the group
/// `job="cairn", command, storage`.
pub async fn push(base_url: &str, run: &Run, timeout: Duration) -> Result<(), MetricsError> {
    let shown = redact(base_url);
    let fail = |message: String| MetricsError::Push {
        url: shown.clone(),
        message,
    };
    let base = url::Url::parse(base_url)
        .map_err(|e| fail(format!("not a URL: {e}")))?
        .to_string();
    let base = base.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let failures = match read_failures(&client, base, run).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(
                "cannot read {FAILURES} back from the Pushgateway at {shown}; not pushing it: {e}"
            );
            None
        }
    };
    let body = exposition(&run_metrics(run, failures));
    let response = client
        .post(group_url(base, run))
        .header("content-type", "text/plain; version=0.0.4")
        .body(body)
        .send()
        .await
        .map_err(|e| fail(crate::error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let text = text.trim();
        return Err(fail(if text.is_empty() {
            status.to_string()
        } else {
            format!("{status}: {text}")
        }));
    }
    Ok(())
}

/// The group's URL: the storage URL holds slashes, so it goes base64-encoded
/// (the gateway's `@base64` label syntax).
fn group_url(base: &str, run: &Run) -> String {
    use base64::Engine as _;
    let storage = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&run.storage);
    // An empty value must be written `=`.
    let storage = if storage.is_empty() {
        "=".into()
    } else {
        storage
    };
    format!(
        "{base}/metrics/job/cairn/command/{}/storage@base64/{storage}",
        run.command
    )
}

/// The group's current failure count: 0 if the group or the metric is new.
async fn read_failures(client: &reqwest::Client, base: &str, run: &Run) -> Result<f64, String> {
    let response = client
        .get(format!("{base}/api/v1/metrics"))
        .send()
        .await
        .map_err(|e| crate::error_chain(&e))?;
    if !response.status().is_success() {
        return Err(format!("{}", response.status()));
    }
    let body: serde_json::Value = response.json().await.map_err(|e| crate::error_chain(&e))?;
    let groups = body["data"]
        .as_array()
        .ok_or("no data in the API's answer")?;
    for g in groups {
        let labels = &g["labels"];
        if labels["job"] == "cairn"
            && labels["command"] == run.command
            && labels["storage"] == run.storage.as_str()
        {
            let value = g[FAILURES]["metrics"][0]["value"].as_str();
            return match value {
                None => Ok(0.0),
                Some(v) => v.parse().map_err(|_| format!("{FAILURES} is {v:?}")),
            };
        }
    }
    Ok(0.0)
}

/// A URL without its password (for messages).
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// What one wal-push did, for the textfile's counters.
#[derive(Debug, Clone)]
pub struct WalPushRun {
    pub storage: String,
    pub succeeded: bool,
    /// Segments (and other WAL files) this call uploaded, lookahead included.
    pub uploaded: Uploaded,
    pub duration: Duration,
    pub finished: SystemTime,
}

/// wal-push's metrics: (name, help, kind). Counters accumulate across
/// calls; gauges hold the last call's value.
const WAL_PUSH: [(&str, &str, Kind); 8] = [
    (
        "cairn_wal_push_files_total",
        "WAL files wal-push uploaded (segments pushed ahead included).",
        Kind::Counter,
    ),
    (
        "cairn_wal_push_bytes_raw_total",
        "Bytes of WAL wal-push uploaded, before compression.",
        Kind::Counter,
    ),
    (
        "cairn_wal_push_bytes_stored_total",
        "Bytes wal-push stored, after compression and encryption.",
        Kind::Counter,
    ),
    (
        "cairn_wal_push_replaced_total",
        "Archived WAL objects wal-push found damaged (they did not decode to the file) and \
         replaced with the good local copy.",
        Kind::Counter,
    ),
    (
        "cairn_wal_push_failures_total",
        "wal-push calls that failed (PostgreSQL retries them).",
        Kind::Counter,
    ),
    (
        "cairn_wal_push_last_success_timestamp_seconds",
        "Unix time wal-push last succeeded.",
        Kind::Gauge,
    ),
    (
        "cairn_wal_push_last_failure_timestamp_seconds",
        "Unix time wal-push last failed.",
        Kind::Gauge,
    ),
    (
        "cairn_wal_push_last_duration_seconds",
        "How long the last wal-push call took.",
        Kind::Gauge,
    ),
];

/// Adds one wal-push call to the counters in the node_exporter textfile at
/// `path`, under the label `storage`, keeping every other storage's series.
/// Calls are serialised by a lock file beside it; the file is replaced
/// whole (rename), so node_exporter never reads half of it.
pub fn update_textfile(path: &Path, run: &WalPushRun) -> Result<(), MetricsError> {
    let io = |source| MetricsError::Textfile {
        path: path.to_path_buf(),
        source,
    };
    let lock_path = path.with_file_name(format!(
        ".{}.lock",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    lock.lock().map_err(io)?;
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    replace_textfile(path, &updated_textfile(&old, run)).map_err(io)
}

/// Replaces the textfile at `path` with `text`, whole (rename), readable by
/// node_exporter: PostgreSQL runs archive_command with umask 0077 and
/// node_exporter runs as another user. A lost update after an OS crash only
/// loses a figure.
fn replace_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt;
    let mut f = crate::durable::TempFile::create(path)?;
    f.write_all(text.as_bytes())?;
    f.file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    f.commit(crate::durable::Durability::Atomic)
}

/// Writes a long-running command's state (wal-receive's positions and
/// lags) as a node_exporter textfile of its own at `path`, labelled
/// `command` and `storage` as a push would be, replaced whole (rename) so
/// node_exporter never reads half of it. The file is the command's alone:
/// each write replaces it.
pub fn write_textfile(path: &Path, run: &Run) -> Result<(), MetricsError> {
    let io = |source| MetricsError::Textfile {
        path: path.to_path_buf(),
        source,
    };
    let labels = format!(
        "command=\"{}\",storage=\"{}\"",
        escape_label(run.command),
        escape_label(&run.storage)
    );
    let mut text = String::new();
    for m in run_metrics(run, None) {
        write_header(&mut text, m.name, m.help, m.kind);
        let _ = writeln!(text, "{}{{{labels}}} {}", m.name, number(m.value));
    }
    replace_textfile(path, &text).map_err(io)
}

/// Where a long-running `command` keeps its textfile: beside wal-push's
/// `metrics_textfile`, named after it (`cairn.prom` → `cairn-wal-receive.prom`),
/// so node_exporter's textfile directory collects both.
pub fn sibling_textfile(textfile: &Path, command: &str) -> PathBuf {
    let stem = textfile
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cairn".into());
    textfile.with_file_name(format!("{stem}-{command}.prom"))
}

/// The textfile's new contents: `old`'s series of cairn's wal-push metrics,
/// with this run's added under its storage label. Anything else in `old`
/// is dropped: the file is cairn's.
pub fn updated_textfile(old: &str, run: &WalPushRun) -> String {
    // name -> (labels -> value)
    let mut series: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for line in old.lines() {
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        if let Some((known, _, _)) = WAL_PUSH.iter().find(|(n, _, _)| *n == name) {
            series.entry(known).or_default().insert(labels, value);
        }
    }
    let labels = format!("storage=\"{}\"", escape_label(&run.storage));
    let now = unix_seconds(run.finished);
    let mut add = |name: &'static str, value: f64| {
        *series
            .entry(name)
            .or_default()
            .entry(labels.clone())
            .or_default() += value;
    };
    if run.succeeded {
        add("cairn_wal_push_files_total", run.uploaded.files as f64);
        add("cairn_wal_push_bytes_raw_total", run.uploaded.raw as f64);
        add(
            "cairn_wal_push_bytes_stored_total",
            run.uploaded.stored as f64,
        );
        add(
            "cairn_wal_push_replaced_total",
            run.uploaded.replaced as f64,
        );
        add("cairn_wal_push_failures_total", 0.0);
    } else {
        add("cairn_wal_push_failures_total", 1.0);
    }
    let mut set = |name: &'static str, value: f64| {
        series
            .entry(name)
            .or_default()
            .insert(labels.clone(), value);
    };
    if run.succeeded {
        set("cairn_wal_push_last_success_timestamp_seconds", now);
    } else {
        set("cairn_wal_push_last_failure_timestamp_seconds", now);
    }
    set(
        "cairn_wal_push_last_duration_seconds",
        run.duration.as_secs_f64(),
    );
    let mut out = String::new();
    for (name, help, kind) in WAL_PUSH {
        let Some(values) = series.get(name) else {
            continue;
        };
        write_header(&mut out, name, help, kind);
        for (labels, value) in values {
            let _ = writeln!(out, "{name}{{{labels}}} {}", number(*value));
        }
    }
    out
}

/// `name{labels} value` (the only shape cairn writes); `None` for comments,
/// blank lines and anything else.
fn parse_sample(line: &str) -> Option<(&str, String, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let open = line.find('{')?;
    let close = line.rfind('}')?;
    let name = &line[..open];
    let labels = line.get(open + 1..close)?.to_string();
    let value = line.get(close + 1..)?.trim().parse().ok()?;
    Some((name, labels, value))
}

/// The text exposition format of `metrics` (the Pushgateway adds the
/// group's labels).
pub fn exposition(metrics: &[Metric]) -> String {
    let mut out = String::new();
    for m in metrics {
        write_header(&mut out, m.name, m.help, m.kind);
        let _ = writeln!(out, "{} {}", m.name, number(m.value));
    }
    out
}

fn write_header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let kind = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    };
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Integers as integers (byte counts must not lose digits to `e` notation).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value, escaped as the text format wants.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(storage: &str, succeeded: bool) -> WalPushRun {
        WalPushRun {
            storage: storage.into(),
            succeeded,
            uploaded: Uploaded {
                files: 3,
                raw: 3 << 24,
                stored: 1 << 20,
                replaced: 0,
            },
            duration: Duration::from_millis(250),
            finished: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn the_textfile_accumulates_per_storage_and_keeps_other_storages() {
        let one = updated_textfile("", &run("s3://a/x/", true));
        let two = updated_textfile(&one, &run("s3://a/x/", true));
        let three = updated_textfile(&two, &run("gs://b/\"q\"", false));
        assert!(
            three.contains("cairn_wal_push_files_total{storage=\"s3://a/x/\"} 6\n"),
            "{three}"
        );
        assert!(
            three.contains("cairn_wal_push_bytes_raw_total{storage=\"s3://a/x/\"} 100663296\n")
        );
        assert!(three.contains("cairn_wal_push_failures_total{storage=\"s3://a/x/\"} 0\n"));
        assert!(three.contains("cairn_wal_push_failures_total{storage=\"gs://b/\\\"q\\\"\"} 1\n"));
        assert!(three.contains(
            "cairn_wal_push_last_success_timestamp_seconds{storage=\"s3://a/x/\"} 1700000000\n"
        ));
        assert!(
            three.contains(
                "cairn_wal_push_last_duration_seconds{storage=\"gs://b/\\\"q\\\"\"} 0.25\n"
            )
        );
        // One HELP and TYPE per metric, before its series.
        assert_eq!(
            three
                .matches("# TYPE cairn_wal_push_files_total counter")
                .count(),
            1
        );
        // Foreign lines are dropped, not carried along half-understood.
        let four = updated_textfile(
            &format!("{three}other_metric 5\nbad{{\n"),
            &run("s3://a/x/", true),
        );
        assert!(!four.contains("other_metric"));
        assert!(four.contains("cairn_wal_push_files_total{storage=\"s3://a/x/\"} 9\n"));
    }

    #[test]
    fn a_failed_run_keeps_the_last_success_and_counts_the_failure() {
        let r = Run {
            command: "backup-push",
            storage: "file:///x".into(),
            succeeded: false,
            finished: SystemTime::UNIX_EPOCH + Duration::from_secs(10),
            duration: Duration::from_secs(2),
            figures: Vec::new(),
        };
        let m = run_metrics(&r, Some(4.0));
        let names: Vec<_> = m.iter().map(|m| m.name).collect();
        assert!(!names.contains(&"cairn_last_success_timestamp_seconds"));
        assert!(m.iter().any(|m| m.name == FAILURES && m.value == 5.0));
        assert!(run_metrics(&r, None).iter().all(|m| m.name != FAILURES));
        let text = exposition(&m);
        assert!(text.contains("# TYPE cairn_failures_total counter\ncairn_failures_total 5\n"));
        assert!(text.contains("cairn_last_run_success 0\n"));
        assert_eq!(
            group_url("http://gw:9091", &r),
            "http://gw:9091/metrics/job/cairn/command/backup-push/storage@base64/ZmlsZTovLy94"
        );
        assert_eq!(redact("http://u:secret@gw:9091/"), "http://u:***@gw:9091/");
    }
}
