//! Channels: the external storage that serverless workers synchronise through.
//!
//! A [`Channel`] is a flat key-value store with `put`, `get`, `delete` and (where the backend
//! can) `list`. Collectives never rely on listing for correctness: every key they read is
//! known in advance. Backends are chosen by URL with [`open`].

pub mod codec;
pub mod dir;
pub mod mem;
mod poll;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use poll::Backoff;

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

    /// Stores `value` under `key`, replacing any previous value.
    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError>;

    /// Reads the value under `key`, `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError>;

    /// Deletes the keys; absent keys are not an error.
    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError>;

    /// Lists keys starting with `prefix`, or `None` when the backend cannot list.
    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError>;
}

/// Opens a channel from its URL: `dir:PATH` or `mem:[NAME]`.
pub fn open(url: &str) -> Result<Arc<dyn Channel>, ChannelError> {
    let invalid = |message: &str| ChannelError::InvalidUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| invalid("expected SCHEME:LOCATION, e.g. dir:/tmp/chan or mem:"))?;
    match scheme {
        "dir" => {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid("dir: needs a path, e.g. dir:/tmp/lambdaml-channel"));
            }
            Ok(Arc::new(dir::DirChannel::new(path, url)))
        }
        "mem" => Ok(Arc::new(mem::MemChannel::named(rest))),
        other => Err(invalid(&format!(
            "unknown scheme '{other}' (this build knows dir: and mem:)"
        ))),
    }
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

    #[test]
    fn urls_are_checked() {
        assert!(open("dir:/tmp/x").is_ok());
        assert!(open("mem:").is_ok());
        let err = open("ftp://x").unwrap_err().to_string();
        assert!(err.contains("unknown scheme 'ftp'"), "{err}");
        assert!(open("nothing").is_err());
        assert!(open("dir:").is_err());
    }
}
