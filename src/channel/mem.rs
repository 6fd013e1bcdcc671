//! `mem:[NAME]` — an in-process channel for unit tests and single-process runs.
//!
//! Channels opened with the same name in one process share their contents, so several tasks
//! can play the part of several workers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::meter::{self, Op};
use super::{Channel, ChannelError, PollPolicy};

type Store = Arc<Mutex<BTreeMap<String, Bytes>>>;

static NAMED: LazyLock<Mutex<HashMap<String, Store>>> = LazyLock::new(Default::default);

/// An in-memory channel.
#[derive(Debug, Clone)]
pub struct MemChannel {
    store: Store,
    url: String,
}

impl MemChannel {
    /// The channel named `name` in this process (created empty on first use); an empty name
    /// is a fresh private channel.
    pub fn named(name: &str) -> Self {
        let store = if name.is_empty() {
            Store::default()
        } else {
            NAMED
                .lock()
                .expect("registry lock")
                .entry(name.to_string())
                .or_default()
                .clone()
        };
        MemChannel {
            store,
            url: format!("mem:{name}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated (every operation is
        // a single insert/remove), so a poisoned lock is still safe to use.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Channel for MemChannel {
    fn url(&self) -> &str {
        &self.url
    }

    fn poll_policy(&self) -> PollPolicy {
        PollPolicy {
            initial: Duration::from_micros(10),
            max: Duration::from_millis(1),
        }
    }

    fn reads_are_cheap(&self) -> bool {
        true
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError> {
        meter::record(Op::Put, 1, value.len() as u64);
        self.lock().insert(key.to_string(), value);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError> {
        let v = self.lock().get(key).cloned();
        meter::record(Op::Get, 1, v.as_ref().map_or(0, |v| v.len() as u64));
        Ok(v)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError> {
        meter::record(Op::Delete, keys.len() as u64, 0);
        let mut store = self.lock();
        for key in keys {
            store.remove(key);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        Ok(Some(
            self.lock()
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect(),
        ))
    }
}
