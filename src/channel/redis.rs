//! `redis://host:port[/db]` — Redis (or ElastiCache for Redis). Values up to 512 MB need no
//! chunking; listing uses `SCAN`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;

use super::meter::{self, Op};
use super::retry::{BackendError, RetryPolicy, with_retries};
use super::{Channel, ChannelError, PollPolicy};

/// One request may not take longer (a paused server shows up as a timeout, then a retry).
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis channel.
pub struct RedisChannel {
    url: String,
    conn: ConnectionManager,
    retry: RetryPolicy,
    expiry: Option<Duration>,
}

impl std::fmt::Debug for RedisChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChannel")
            .field("url", &self.url)
            .finish()
    }
}

fn classify(e: redis::RedisError) -> BackendError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        BackendError::transient(e)
    } else {
        BackendError::permanent(e)
    }
}

impl RedisChannel {
    /// Connects to the server of `url` (retrying while it is unreachable); `name` (the URL
    /// without its password) names the channel in messages. Keys expire `expiry` after they
    /// were written (never when `None`).
    pub async fn open(
        url: &str,
        name: &str,
        retry: RetryPolicy,
        expiry: Option<Duration>,
    ) -> Result<Self, ChannelError> {
        let client = redis::Client::open(url).map_err(|e| ChannelError::InvalidUrl {
            url: name.to_string(),
            message: e.to_string(),
        })?;
        let conn = with_retries(&retry, name, "connect", "", || {
            let client = client.clone();
            async move {
                tokio::time::timeout(OP_TIMEOUT, ConnectionManager::new(client))
                    .await
                    .map_err(|_| BackendError::transient("connect timed out"))?
                    .map_err(classify)
            }
        })
        .await?;
        Ok(RedisChannel {
            url: name.to_string(),
            conn,
            retry,
            expiry,
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, ChannelError> {
        let kind = match op {
            "put" => Op::Put,
            "get" => Op::Get,
            "delete" => Op::Delete,
            _ => Op::List,
        };
        with_retries(&self.retry, &self.url, op, key, || async {
            // One command, one request, as `INFO commandstats` counts them; value bytes are
            // added by the callers.
            meter::record(kind, 1, 0);
            let mut conn = self.conn.clone();
            tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<T>(&mut conn))
                .await
                .map_err(|_| BackendError::transient(format!("no answer within {OP_TIMEOUT:?}")))?
                .map_err(classify)
        })
        .await
    }
}

#[async_trait]
impl Channel for RedisChannel {
    fn url(&self) -> &str {
        &self.url
    }

    fn poll_policy(&self) -> PollPolicy {
        PollPolicy {
            initial: Duration::from_micros(20),
            max: Duration::from_millis(2),
        }
    }

    fn reads_are_cheap(&self) -> bool {
        true
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError> {
        meter::record(Op::Put, 0, value.len() as u64);
        let mut set = redis::cmd("SET");
        set.arg(key).arg(&value[..]);
        if let Some(expiry) = self.expiry {
            set.arg("PX").arg(expiry.as_millis().max(1) as u64);
        }
        self.run::<()>("put", key, &set).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError> {
        let v: Option<Vec<u8>> = self.run("get", key, redis::cmd("GET").arg(key)).await?;
        meter::record(Op::Get, 0, v.as_ref().map_or(0, |v| v.len() as u64));
        Ok(v.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        let values: Vec<Option<Vec<u8>>> =
            self.run("get", first, redis::cmd("MGET").arg(keys)).await?;
        let bytes = values.iter().flatten().map(|v| v.len() as u64).sum();
        meter::record(Op::Get, 0, bytes);
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError> {
        for chunk in keys.chunks(500) {
            self.run::<()>("delete", &chunk[0], redis::cmd("DEL").arg(chunk))
                .await?;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        let pattern = format!("{}*", prefix.replace(['*', '?', '[', ']', '\\'], ""));
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .run(
                    "list",
                    prefix,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            keys.extend(batch.into_iter().filter(|k| k.starts_with(prefix)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(Some(keys))
    }
}
