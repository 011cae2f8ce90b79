//! The one retry policy: exponential backoff with jitter under a deadline.
//! Backends call [`RetryPolicy::run`] around each single request whose body they
//! can resend, and [`super::resume`] around each broken download; commands
//! never retry on their own.
//!
//! The deadline is per request, or, for the commands PostgreSQL waits on
//! (wal-push, wal-fetch), one instant for the whole command (`until`), so
//! that however many requests a call makes, it answers PostgreSQL in time.

use std::future::Future;
use std::time::{Duration, Instant};

use super::StorageError;

/// How long and how often to retry a transient failure.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// No new attempt starts after this much time since the first one.
    pub deadline: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The command's own deadline, when it has one: no attempt starts after
    /// it, whatever `deadline` says.
    pub until: Option<Instant>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            until: None,
        }
    }
}

impl RetryPolicy {
    /// When retries that start now must stop.
    pub fn end(&self, start: Instant) -> Instant {
        let own = start + self.deadline;
        self.until.map_or(own, |u| u.min(own))
    }

    /// How long a request may wait without progress: `idle`, but never past
    /// the command's deadline (a stalled request then ends in time), and at
    /// least a second.
    pub fn idle(&self, idle: Duration) -> Duration {
        match self.until {
            Some(u) => idle
                .min(u.saturating_duration_since(Instant::now()))
                .max(Duration::from_secs(1)),
            None => idle,
        }
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the deadline passes.
    pub async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let start = Instant::now();
        let end = self.end(start);
        let mut backoff = self.initial_backoff;
        let mut tries = 0u32;
        loop {
            tries += 1;
            match attempt().await {
                Err(e) if e.is_transient() => {
                    let elapsed = start.elapsed();
                    if Instant::now() + backoff >= end {
                        return Err(gave_up(e, tries, elapsed));
                    }
                    tracing::debug!(error = %e, tries, "transient storage error; retrying");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                other => return other,
            }
        }
    }
}

pub(crate) fn gave_up(e: StorageError, tries: u32, elapsed: Duration) -> StorageError {
    match e {
        StorageError::Transient {
            op,
            key,
            location,
            message,
        } => StorageError::Transient {
            op,
            key,
            location,
            message: format!(
                "{message} (gave up after {tries} attempts in {:.1}s)",
                elapsed.as_secs_f64()
            ),
        },
        other => other,
    }
}

/// Spreads retries of concurrent callers: a random factor in [0.5, 1.0).
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> StorageError {
        StorageError::Transient {
            op: "get",
            key: "k".into(),
            location: "l".into(),
            message: "refused".into(),
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let p = RetryPolicy {
            deadline: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            until: None,
        };
        let n = AtomicU32::new(0);
        let r = p
            .run(|| async {
                if n.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn gives_up_at_deadline_and_never_retries_permanent() {
        let p = RetryPolicy {
            deadline: Duration::from_millis(50),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            until: None,
        };
        let e = p
            .run(|| async { Err::<(), _>(transient()) })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("gave up after"), "{e}");
        let n = AtomicU32::new(0);
        let e = p
            .run(|| async {
                n.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(StorageError::NotFound {
                    key: "k".into(),
                    location: "l".into(),
                })
            })
            .await
            .unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_command_deadline_bounds_every_request() {
        let p = RetryPolicy {
            deadline: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            until: Some(Instant::now() + Duration::from_millis(100)),
        };
        let started = Instant::now();
        let e = p
            .run(|| async { Err::<(), _>(transient()) })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("gave up after"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(p.idle(Duration::from_secs(30)), Duration::from_secs(1));
    }
}
