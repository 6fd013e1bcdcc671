//! Retrying transient backend failures (a server restarting, throttling, a timeout) with
//! capped exponential backoff, within a time budget, then failing with the channel, the
//! operation, the key and the last error.

use std::future::Future;
use std::time::{Duration, Instant};

use super::ChannelError;

/// A backend error, marked transient (worth retrying) or not.
#[derive(Debug)]
pub struct BackendError {
    /// True when the same request may succeed later.
    pub transient: bool,
    /// The underlying error.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendError {
    /// A failure that may go away (connection refused or reset, timeout, throttling).
    pub fn transient(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        BackendError {
            transient: true,
            source: e.into(),
        }
    }

    /// A failure that retrying will not fix (bad request, missing bucket, access denied).
    pub fn permanent(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        BackendError {
            transient: false,
            source: e.into(),
        }
    }
}

/// How long and how often to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Give up once this much time has passed since the first attempt.
    pub budget: Duration,
    /// First pause between attempts (doubles, capped at `max_pause`).
    pub first_pause: Duration,
    /// Longest pause between attempts.
    pub max_pause: Duration,
    /// Log each retry at debug level only (the final error still says everything): for
    /// checks whose failure is reported once, such as a job's first contact with its channel.
    pub quiet: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(60),
            first_pause: Duration::from_millis(20),
            max_pause: Duration::from_secs(1),
            quiet: false,
        }
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or the budget is spent.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    channel: &str,
    op: &'static str,
    key: &str,
    mut attempt: F,
) -> Result<T, ChannelError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let started = Instant::now();
    let mut pause = policy.first_pause;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(v) => {
                if attempts > 1 {
                    tracing::info!(channel, op, key, attempts, "succeeded after retrying");
                }
                return Ok(v);
            }
            Err(e) if e.transient && started.elapsed() + pause < policy.budget => {
                if policy.quiet {
                    tracing::debug!(channel, op, key, attempts, error = %e.source, "transient failure, retrying");
                } else {
                    tracing::warn!(channel, op, key, attempts, error = %e.source, "transient failure, retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(policy.max_pause);
            }
            Err(e) => {
                let source: Box<dyn std::error::Error + Send + Sync> = if e.transient {
                    format!(
                        "still failing after {attempts} attempts over {:.1?}: {}",
                        started.elapsed(),
                        e.source
                    )
                    .into()
                } else {
                    e.source
                };
                return Err(ChannelError::Backend {
                    channel: channel.to_string(),
                    op,
                    key: key.to_string(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            budget: Duration::from_millis(budget_ms),
            first_pause: Duration::from_millis(1),
            max_pause: Duration::from_millis(5),
            quiet: false,
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let v = with_retries(&fast(1000), "mem:x", "get", "k", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(BackendError::transient("connection refused"))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!((v, calls.load(Ordering::SeqCst)), (7, 4));
    }

    #[tokio::test]
    async fn permanent_failures_and_spent_budgets_name_channel_op_and_key() {
        let err = with_retries(&fast(1000), "s3://b/p", "put", "job/1", || async {
            Err::<(), _>(BackendError::permanent("NoSuchBucket"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "put 'job/1' on s3://b/p failed");
        let err = with_retries(&fast(30), "redis://h", "get", "job/2", || async {
            Err::<(), _>(BackendError::transient("connection refused"))
        })
        .await
        .unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(
            chain.contains("still failing after") && chain.contains("connection refused"),
            "{chain}"
        );
    }
}
