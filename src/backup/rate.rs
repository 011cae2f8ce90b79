//! Reads of the data directory, metered: `--max-rate` paces them, shared by
//! every part builder, so that a backup does not starve the database of disk
//! bandwidth (what is uploaded is at most what was read, so it paces the
//! network too); and they are the backup's progress.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::progress::{Progress, Silent};

/// Lets readers through at no more than `rate` bytes per second.
#[derive(Debug)]
pub struct RateLimit {
    rate: u64,
    /// When the bytes granted so far are paid for.
    next: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// `None` for an unlimited rate (0).
    pub fn new(rate: u64) -> Option<RateLimit> {
        (rate > 0).then(|| RateLimit {
            rate,
            next: Mutex::new(None),
        })
    }

    /// Waits until `n` more bytes may be read.
    pub fn take(&self, n: usize) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let (wait, after) = schedule(*next, Instant::now(), n as u64, self.rate);
            *next = Some(after);
            wait
        };
        // Short waits add up in `next` instead: sleeping for each 8 KiB read
        // would oversleep and fall behind the rate.
        if wait >= MIN_SLEEP {
            std::thread::sleep(wait);
        }
    }
}

/// What every read of the data directory goes through: the optional rate
/// limit, and the progress the bytes read stand for.
#[derive(Clone, Copy)]
pub struct Reads<'a> {
    pub limit: Option<&'a RateLimit>,
    pub progress: &'a dyn Progress,
}

impl<'a> Reads<'a> {
    /// Neither paced nor counted.
    pub const FREE: Reads<'static> = Reads {
        limit: None,
        progress: &Silent,
    };

    /// `n` bytes were read: counts them, and waits as the rate asks.
    pub fn took(&self, n: usize) {
        self.progress.advance(n as u64);
        if let Some(l) = self.limit {
            l.take(n);
        }
    }

    /// The same pace for bytes that were already counted (a delta's changed
    /// pages, read again after the scan that found them).
    pub fn recount(self) -> Reads<'a> {
        Reads {
            limit: self.limit,
            progress: &Silent,
        }
    }
}

/// A reader metered by [`Reads`].
pub struct Paced<'a, R> {
    inner: R,
    reads: Reads<'a>,
}

impl<'a, R> Paced<'a, R> {
    pub fn new(inner: R, reads: Reads<'a>) -> Self {
        Paced { inner, reads }
    }
}

impl<R: std::io::Read> std::io::Read for Paced<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.reads.took(n);
        Ok(n)
    }
}

/// Waits shorter than this are not slept but carried.
const MIN_SLEEP: Duration = Duration::from_millis(2);
/// How far behind the schedule reading may fall and still catch up (a
/// sleep's overshoot, a slow read); longer idle time is not saved for a burst.
const CATCH_UP: Duration = Duration::from_millis(100);

/// A leaky bucket: `n` bytes may start when the previous ones are paid for
/// (or, if that is long past, a little before now), and are paid for
/// `n / rate` seconds later. Returns the wait and the new "paid" time.
fn schedule(paid: Option<Instant>, now: Instant, n: u64, rate: u64) -> (Duration, Instant) {
    let floor = now.checked_sub(CATCH_UP).unwrap_or(now);
    let start = paid.map_or(now, |p| p.max(floor));
    let cost = Duration::from_secs_f64(n as f64 / rate as f64);
    (start.saturating_duration_since(now), start + cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_paces_bytes_and_saves_no_idle_time() {
        let t0 = Instant::now();
        let rate = 1_000_000;
        // The first megabyte goes at once and is paid for a second later.
        let (wait, paid) = schedule(None, t0, 1_000_000, rate);
        assert_eq!(wait, Duration::ZERO);
        assert_eq!(paid, t0 + Duration::from_secs(1));
        // The next, asked for right away, waits that second.
        let (wait, paid) = schedule(Some(paid), t0, 500_000, rate);
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(paid, t0 + Duration::from_millis(1500));
        // After a long idle spell, no burst beyond the catch-up allowance.
        let later = t0 + Duration::from_secs(60);
        let (wait, paid) = schedule(Some(paid), later, 250_000, rate);
        assert_eq!(wait, Duration::ZERO);
        assert_eq!(paid, later - CATCH_UP + Duration::from_millis(250));
        // A small lag (an oversleep) is caught up, not lost.
        let (wait, paid) = schedule(
            Some(t0 + Duration::from_secs(1)),
            t0 + Duration::from_millis(1010),
            10_000,
            rate,
        );
        assert_eq!(wait, Duration::ZERO);
        assert_eq!(paid, t0 + Duration::from_millis(1010));
        assert!(RateLimit::new(0).is_none());
    }
}
