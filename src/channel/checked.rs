//! The checks every backend needs before a request leaves, written once: [`Checked`] wraps
//! each channel that [`super::open_with`] returns and refuses a key no backend can hold
//! safely (see [`super::validate_key`]) before the backend sees it. Request metering stays
//! in the backends, because each counts as its own service bills (a memcached multi-get is
//! one request per key, a Redis `MGET` one command, DynamoDB counts units).

use async_trait::async_trait;
use bytes::Bytes;

use super::{Channel, ChannelError, PollPolicy, validate_key};

/// A channel whose keys are validated before they reach the backend.
#[derive(Debug)]
pub struct Checked<C> {
    inner: C,
}

impl<C: Channel> Checked<C> {
    /// `inner`, behind the checks.
    pub fn new(inner: C) -> Self {
        Checked { inner }
    }
}

fn validate_all(keys: &[String]) -> Result<(), ChannelError> {
    keys.iter().try_for_each(|k| validate_key(k))
}

#[async_trait]
impl<C: Channel> Channel for Checked<C> {
    fn url(&self) -> &str {
        self.inner.url()
    }

    fn poll_policy(&self) -> PollPolicy {
        self.inner.poll_policy()
    }

    fn reads_are_cheap(&self) -> bool {
        self.inner.reads_are_cheap()
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError> {
        validate_key(key)?;
        self.inner.put(key, value).await
    }

    async fn put_many(&self, items: Vec<(String, Bytes)>) -> Result<(), ChannelError> {
        for (key, _) in &items {
            validate_key(key)?;
        }
        self.inner.put_many(items).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError> {
        validate_key(key)?;
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
        validate_all(keys)?;
        self.inner.get_many(keys).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError> {
        validate_all(keys)?;
        self.inner.delete(keys).await
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        self.inner.list(prefix).await
    }
}
