//! The one retry policy: exponential backoff with jitter under an overall deadline.
//! Backends call [`RetryPolicy::run`] around each single request whose body they
//! can resend; commands never retry on their own.

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
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Runs `attempt` until it succeeds, fails permanently, or the deadline passes.
    pub async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let start = Instant::now();
        let mut backoff = self.initial_backoff;
        let mut tries = 0u32;
        loop {
            tries += 1;
            match attempt().await {
                Err(e) if e.is_transient() => {
                    let elapsed = start.elapsed();
                    if elapsed + backoff >= self.deadline {
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

fn gave_up(e: StorageError, tries: u32, elapsed: Duration) -> StorageError {
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
fn jitter(d: Duration) -> Duration {
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
}
