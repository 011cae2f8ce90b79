//! What the binary shows: results on stdout (tables, names; a reader that
//! closes the pipe early ends the output quietly), and the progress of
//! backup-push and backup-fetch: a bar (bytes, parts, rate, ETA) when stderr
//! is a terminal; a plain log line every `progress_interval` seconds when it
//! is not (cron mail, a pod's log); nothing with JSON logs, whose readers want
//! events, not chatter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cairn::progress::Progress;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Lines(Duration),
    Off,
}

impl Mode {
    /// A bar on a terminal, log lines elsewhere (none if `interval` is 0), nothing for JSON logs.
    pub fn choose(json_logs: bool, interval: Duration) -> Mode {
        if json_logs {
            Mode::Off
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Mode::Bar
        } else if interval.is_zero() {
            Mode::Off
        } else {
            Mode::Lines(interval)
        }
    }
}

/// Parts not known beforehand (a remote backup's).
const UNKNOWN: u64 = u64::MAX;

/// A command's progress, as counted by the library, and its presentation.
pub struct Display {
    mode: Mode,
    /// What is going on, for log lines: "backup", "restore".
    what: &'static str,
    bar: ProgressBar,
    begun: OnceLock<Instant>,
    total: AtomicU64,
    parts_total: AtomicU64,
    bytes: AtomicU64,
    parts: AtomicU64,
    ended: AtomicBool,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Display {
    /// `bar` is the one the log writer suspends (see [`LogWriter`]).
    pub fn new(mode: Mode, what: &'static str, bar: ProgressBar) -> Arc<Display> {
        Arc::new(Display {
            mode,
            what,
            bar,
            begun: OnceLock::new(),
            total: AtomicU64::new(0),
            parts_total: AtomicU64::new(UNKNOWN),
            bytes: AtomicU64::new(0),
            parts: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            ticker: Mutex::new(None),
        })
    }

    fn parts_message(&self) -> String {
        let done = self.parts.load(Ordering::Relaxed);
        match self.parts_total.load(Ordering::Relaxed) {
            UNKNOWN if done == 1 => "1 part".to_string(),
            UNKNOWN => format!("{done} parts"),
            total => format!("{done}/{total} parts"),
        }
    }

    /// One log line: "412.0 MiB of 1.4 GiB (29%), 3/12 parts, 180.3 MiB/s, about 6 s left".
    fn line(&self) -> String {
        self.line_after(self.begun.get().map_or(Duration::ZERO, Instant::elapsed))
    }

    fn line_after(&self, elapsed: Duration) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let rate = if elapsed.as_secs_f64() > 0.0 {
            bytes as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        };
        let mut out = human_bytes(bytes);
        if total > 0 {
            out.push_str(&format!(
                " of {} ({}%)",
                human_bytes(total),
                (bytes.min(total) * 100) / total
            ));
        }
        out.push_str(&format!(
            ", {}, {}/s",
            self.parts_message(),
            human_bytes(rate as u64)
        ));
        let left = if rate > 0.0 {
            total.saturating_sub(bytes) as f64 / rate
        } else {
            0.0
        };
        if left >= 1.0 {
            out.push_str(&format!(", about {} left", human_duration(left)));
        }
        out
    }

    fn start_ticker(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        let handle = std::thread::spawn(move || {
            loop {
                std::thread::park_timeout(every);
                let Some(d) = me.upgrade() else { return };
                if d.ended.load(Ordering::Relaxed) {
                    return;
                }
                // park_timeout may wake early: only report on time.
                let due = d.begun.get().is_some_and(|b| b.elapsed() >= every);
                if due {
                    tracing::info!("{} progress: {}", d.what, d.line());
                }
            }
        });
        if let Ok(mut t) = self.ticker.lock() {
            *t = Some(handle);
        }
    }

    /// Starts showing progress: for the ticker, which needs the `Arc`.
    pub fn attach(self: &Arc<Self>) -> Arc<dyn Progress> {
        Arc::new(Attached(self.clone()))
    }
}

/// The [`Progress`] the library gets: the display, able to start its ticker.
struct Attached(Arc<Display>);

impl Progress for Attached {
    fn shown(&self) -> bool {
        self.0.mode != Mode::Off
    }

    fn begin(&self, bytes: u64, parts: Option<u64>) {
        let d = &self.0;
        d.total.store(bytes, Ordering::Relaxed);
        d.parts_total
            .store(parts.unwrap_or(UNKNOWN), Ordering::Relaxed);
        if d.begun.set(Instant::now()).is_err() {
            return;
        }
        match d.mode {
            Mode::Bar => {
                let template = if bytes > 0 {
                    "{spinner} {bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec}, ETA {eta}, {msg}"
                } else {
                    "{spinner} {bytes}, {binary_bytes_per_sec}, {elapsed}, {msg}"
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    d.bar.set_style(style.progress_chars("=> "));
                }
                d.bar.set_length(bytes);
                d.bar.set_message(d.parts_message());
                d.bar.set_draw_target(ProgressDrawTarget::stderr());
                d.bar.enable_steady_tick(Duration::from_millis(200));
            }
            Mode::Lines(every) => d.start_ticker(every),
            Mode::Off => {}
        }
    }

    fn advance(&self, bytes: u64) {
        let d = &self.0;
        let now = d.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if d.mode == Mode::Bar {
            // A remote backup's estimate can be short of the truth.
            if d.bar.length().is_some_and(|l| l > 0 && now > l) {
                d.bar.set_length(now);
            }
            d.bar.set_position(now);
        }
    }

    fn part_done(&self) {
        let d = &self.0;
        d.parts.fetch_add(1, Ordering::Relaxed);
        if d.mode == Mode::Bar {
            d.bar.set_message(d.parts_message());
        }
    }

    fn end(&self) {
        let d = &self.0;
        if d.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        match d.mode {
            Mode::Bar => d.bar.finish_and_clear(),
            Mode::Lines(_) => {
                if let Some(t) = d.ticker.lock().ok().and_then(|mut t| t.take()) {
                    t.thread().unpark();
                }
                if d.begun.get().is_some() {
                    tracing::info!("{} progress: {}", d.what, d.line());
                }
            }
            Mode::Off => {}
        }
    }
}

impl Drop for Attached {
    /// A failed command never calls `end`: the bar must not stay on screen.
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Relaxed);
        self.0.bar.finish_and_clear();
    }
}

fn human_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Where log lines go: stderr, with the progress bar (if any) lifted off the
/// screen while a line is written, so the two do not garble each other.
#[derive(Clone)]
pub struct LogWriter {
    pub bar: ProgressBar,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LogLine { bar: &self.bar }
    }
}

/// One log event being written (the formatter writes it whole, at once).
pub struct LogLine<'a> {
    bar: &'a ProgressBar,
}

impl std::io::Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bar
            .suspend(|| std::io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_how_far_how_fast_and_how_long() {
        let d = Display::new(
            Mode::Lines(Duration::from_secs(3600)),
            "backup",
            ProgressBar::hidden(),
        );
        let p = d.attach();
        p.begin(4 << 30, Some(4));
        p.advance(1 << 30);
        p.part_done();
        assert_eq!(
            d.line_after(Duration::from_secs(8)),
            "1.0 GiB of 4.0 GiB (25%), 1/4 parts, 128.0 MiB/s, about 24 s left"
        );
        p.end();
        // Unknown totals (a remote backup's parts; no size estimate).
        let d = Display::new(Mode::Off, "backup", ProgressBar::hidden());
        let p = d.attach();
        p.begin(0, None);
        p.advance(2048);
        p.part_done();
        assert_eq!(
            d.line_after(Duration::from_secs(2)),
            "2.0 KiB, 1 part, 1.0 KiB/s"
        );
        assert_eq!(human_duration(59.6), "1 min 0 s");
        assert_eq!(human_duration(7322.0), "2 h 2 min");
    }
}

/// Standard output: results for whoever reads them.
pub struct Stdout {
    out: std::io::Stdout,
}

/// The reader of standard output went away (`cairn backup-list | head -1`):
/// not a failure, nothing more to say.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

impl Stdout {
    pub fn new() -> Stdout {
        Stdout {
            out: std::io::stdout(),
        }
    }

    pub fn text(&mut self, text: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut lock = self.out.lock();
        match lock.write_all(text.as_bytes()).and_then(|()| lock.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
            Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
        }
    }

    pub fn line(&mut self, line: &str) -> anyhow::Result<()> {
        self.text(&format!("{line}\n"))
    }

    /// A verification's report, as JSON or as text.
    pub fn report<R: serde::Serialize + std::fmt::Display>(
        &mut self,
        report: &R,
        json: bool,
    ) -> anyhow::Result<()> {
        if json {
            self.text(&format!("{}\n", serde_json::to_string_pretty(report)?))
        } else {
            self.text(&report.to_string())
        }
    }
}

/// backup-list's table: when each backup started (what `delete before TIME`
/// compares) and finished (what `delete retain --within` counts from).
pub fn backup_table(list: &[cairn::archive::manifest::Manifest]) -> String {
    use cairn::archive::manifest::rfc3339;
    let mut rows = vec![[
        "name".to_string(),
        "started".into(),
        "finished".into(),
        "wal range".into(),
        "raw".into(),
        "stored".into(),
        "kind".into(),
        "permanent".into(),
    ]];
    for m in list {
        rows.push([
            m.name.clone(),
            rfc3339::format(m.start_time),
            rfc3339::format(m.finish_time),
            format!("{}..{}", m.start_wal_file, m.stop_wal_file),
            human_bytes(m.raw_size),
            human_bytes(m.stored_size),
            if m.remote {
                format!("{} (remote)", m.kind)
            } else {
                m.kind.to_string()
            },
            if m.permanent { "yes" } else { "no" }.into(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Bytes as people read them: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
