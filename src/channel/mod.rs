//! Channels: the external storage that serverless workers synchronise through.
//!
//! A [`Channel`] is a flat key-value store with `put`, `get`, `delete` and (where the backend
//! can) `list`. Collectives never rely on listing for correctness: every key they read is
//! known in advance. Backends are chosen by a parsed [`ChannelUrl`] with [`open`].

mod aws;
pub mod checked;
pub mod chunked;
pub mod codec;
pub mod dir;
pub mod dynamodb;
pub mod mem;
pub mod memcached;
pub mod meter;
mod poll;
pub mod redis;
pub mod retry;
pub mod s3;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use checked::Checked;
pub use poll::Backoff;
pub use retry::RetryPolicy;
pub use url::ChannelUrl;

/// How a waiter should poll this backend: first sleep and the cap of the exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollPolicy {
    /// First sleep between two polls of a missing key.
    pub initial: Duration,
    /// Longest sleep between two polls.
    pub max: Duration,
}

/// Errors from a channel backend. Each names the channel, the operation and the key.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The channel URL is not understood.
    #[error("invalid channel '{url}': {message}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key is not acceptable to any backend.
    #[error("invalid key '{key}': {message}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why it is refused.
        message: String,
    },
    /// The backend failed an operation.
    #[error("{op} '{key}' on {channel} failed")]
    Backend {
        /// The channel URL.
        channel: String,
        /// The operation (put, get, delete, list).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A key-value store reachable by every worker of a job.
///
/// Values are opaque bytes (in practice framed by [`codec`]). A `put` replaces any previous
/// value atomically: a concurrent `get` sees the old value, the new one, or nothing, never a
/// partial write.
#[async_trait]
pub trait Channel: Send + Sync + std::fmt::Debug {
    /// The URL this channel was opened with, for messages.
    fn url(&self) -> &str;

    /// How waiters should poll this backend.
    fn poll_policy(&self) -> PollPolicy;

    /// True when reading several keys is one round trip and nobody bills each read (caches,
    /// a directory, memory). A small all-reduce then has every worker read every
    /// contribution: one phase instead of two through a leader, for n(n-1) reads a round
    /// instead of 2(n-1). False where reads are billed one by one (S3, DynamoDB).
    fn reads_are_cheap(&self) -> bool {
        false
    }

    /// Stores `value` under `key`, replacing any previous value.
    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError>;

    /// Stores several values, all in flight together: S3 and DynamoDB answer concurrent
    /// requests together, a multiplexed Redis connection pipelines them, Memcached sends
    /// every command before reading the first reply; a directory writes one after another.
    async fn put_many(&self, items: Vec<(String, Bytes)>) -> Result<(), ChannelError> {
        futures_util::future::try_join_all(
            items
                .into_iter()
                .map(|(k, v)| async move { self.put(&k, v).await }),
        )
        .await
        .map(drop)
    }

    /// Reads the value under `key`, `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError>;

    /// Reads several keys, in one round trip where the backend allows (memcached multi-get,
    /// Redis `MGET`, DynamoDB `BatchGetItem`); one `get` after another otherwise.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }

    /// Deletes the keys; absent keys are not an error.
    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError>;

    /// Lists keys starting with `prefix`, or `None` when the backend cannot list.
    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError>;
}

/// How a channel is opened: how long transient failures are retried, and how long the keys
/// written through it live.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OpenOptions {
    /// Retrying of transient backend failures.
    pub retry: RetryPolicy,
    /// Keys written through the channel expire this long after they were written, on the
    /// backends that can expire keys themselves: Memcached and Redis at once, DynamoDB
    /// through the number attribute [`dynamodb::EXPIRES_AT`] once TTL is enabled on the table
    /// for it. A safety net for keys nobody deletes (a job whose driver and workers were all
    /// killed); directories and S3 ignore it (`lambdaml` cleanup, or an S3 lifecycle rule).
    /// `None`: keys live until deleted.
    pub expiry: Option<Duration>,
}

impl From<RetryPolicy> for OpenOptions {
    fn from(retry: RetryPolicy) -> Self {
        OpenOptions {
            retry,
            expiry: None,
        }
    }
}

/// Opens a channel from its URL with the default retry policy; see [`open_with`].
pub async fn open(url: &ChannelUrl) -> Result<Arc<dyn Channel>, ChannelError> {
    open_with(url, RetryPolicy::default()).await
}

/// Opens the channel `url` names ([`ChannelUrl`] lists the backends).
///
/// AWS region, credentials and endpoint come from the standard AWS settings. Transient
/// backend failures are retried within `options.retry.budget`; keys expire as
/// [`OpenOptions::expiry`] says.
pub async fn open_with(
    url: &ChannelUrl,
    options: impl Into<OpenOptions>,
) -> Result<Arc<dyn Channel>, ChannelError> {
    let OpenOptions { retry, expiry } = options.into();
    let name = url.to_string();
    Ok(match url {
        ChannelUrl::Dir(path) => Arc::new(Checked::new(dir::DirChannel::new(path, &name))),
        ChannelUrl::Mem(n) => Arc::new(Checked::new(mem::MemChannel::named(n))),
        ChannelUrl::S3 { bucket, prefix } => Arc::new(Checked::new(
            s3::S3Channel::open(&name, bucket, prefix, retry).await?,
        )),
        ChannelUrl::Memcached { hosts, item_size } => Arc::new(Checked::new(
            memcached::open(&name, hosts, *item_size, retry, expiry).await?,
        )),
        ChannelUrl::Redis(u) => Arc::new(Checked::new(
            redis::RedisChannel::open(u, &name, retry, expiry).await?,
        )),
        ChannelUrl::DynamoDb { table } => Arc::new(Checked::new(
            dynamodb::open(&name, table, retry, expiry).await?,
        )),
    })
}

/// Seconds since the Unix epoch at which a key written now with `expiry` expires.
fn expires_at_unix(expiry: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now + expiry).as_secs_f64().ceil() as u64
}

/// Checks that a key is a relative path of `[A-Za-z0-9._-]` segments, so that it maps safely
/// onto every backend (file names, object keys, cache keys).
pub fn validate_key(key: &str) -> Result<(), ChannelError> {
    let bad = |message: &str| {
        Err(ChannelError::InvalidKey {
            key: key.to_string(),
            message: message.to_string(),
        })
    };
    if key.is_empty() || key.len() > 200 {
        return bad("keys are 1 to 200 characters");
    }
    for segment in key.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.starts_with('.') {
            return bad("segments must be non-empty and must not start with '.'");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return bad("segments may hold only letters, digits, '.', '-' and '_'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("job-1/3/reduce/0").is_ok());
        for bad in ["", "/a", "a//b", "a/../b", "a b", ".hidden", "a/.tmp"] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        let url = |u: &str| u.parse::<ChannelUrl>();
        assert!(open(&url("dir:/tmp/x").unwrap()).await.is_ok());
        assert!(open(&url("mem:").unwrap()).await.is_ok());
        let err = url("ftp://x").unwrap_err().to_string();
        assert!(err.contains("unknown scheme 'ftp'"), "{err}");
        assert!(url("nothing").is_err());
        assert!(url("dir:").is_err());
        let err = url("memcached://h:1?size=3").unwrap_err().to_string();
        assert!(err.contains("unknown option 'size=3'"), "{err}");
        assert!(url("dynamodb://").is_err());
    }
}
