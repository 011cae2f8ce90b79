//! How far a long command (backup-push, backup-fetch) has got. The library
//! reports through [`Progress`]; the binary decides whether and how to show
//! it (a bar on a terminal, log lines in cron's mail, nothing for JSON logs).

use std::sync::Arc;

/// Receives a command's progress. Called from many threads at once, for
/// every chunk: implementations must be cheap (atomics, no locks held long).
pub trait Progress: Send + Sync {
    /// Whether anything is shown. When not, work done only to measure
    /// progress (a remote server's size estimate) is skipped.
    fn shown(&self) -> bool;
    /// The work ahead: about `bytes` bytes in `parts` parts (`None`: not
    /// known beforehand, as for remote backups).
    fn begin(&self, bytes: u64, parts: Option<u64>);
    /// `bytes` more of the data were read (backup-push) or restored (backup-fetch).
    fn advance(&self, bytes: u64);
    /// One more part is stored or restored.
    fn part_done(&self);
    /// The data is done; what follows (the control part, waiting for WAL) is short.
    fn end(&self);
}

/// Shows nothing: the default, and what JSON logs get.
pub struct Silent;

impl Progress for Silent {
    fn shown(&self) -> bool {
        false
    }
    fn begin(&self, _: u64, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn part_done(&self) {}
    fn end(&self) {}
}

/// The progress sink commands share.
pub type SharedProgress = Arc<dyn Progress>;
