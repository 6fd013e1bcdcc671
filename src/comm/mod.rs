//! Collectives over a [`Channel`]: all-reduce through a leader (`reduce`), `reduce_scatter`
//! (worker i owns chunk i), `async` latest-model exchange, and a barrier.
//!
//! All return the **mean** and sum contributions in worker order, so every worker gets
//! bit-identical results and `reduce` equals `reduce_scatter` bit for bit.
//!
//! **Idempotence.** A worker that re-executes a round (after a re-invocation) rewrites the
//! same keys with the same bytes. **Cleanup without listing.** A key is deleted only once
//! every worker is provably past the round that used it: when a worker has gathered all `n`
//! contributions of a later round, every contributor has finished the earlier ones. Keys of
//! the final round are reported by [`Comm::residual_keys`] for the driver to delete.

pub mod keys;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::channel::codec::{self, CodecError};
use crate::channel::{Backoff, Channel, ChannelError};
pub use keys::{Keys, chunk_bounds};

/// How workers synchronise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum SyncMode {
    /// All-reduce through worker 0: everyone writes, the leader averages, everyone reads.
    Reduce,
    /// Every worker averages one chunk of the vector, then everyone reads all chunks.
    ReduceScatter,
    /// No barrier: publish the own model, average with the latest models of the others.
    Async,
    /// Through a parameter server (`lambdaml ps serve`, `--ps-addr`): push, then pull the
    /// model once every worker pushed. The channel then only carries records.
    Ps,
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Reduce => "reduce",
            SyncMode::ReduceScatter => "reduce_scatter",
            SyncMode::Async => "async",
            SyncMode::Ps => "ps",
        })
    }
}

/// Errors of a collective.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A peer did not write its key in time.
    #[error("timed out after {waited:.1?} waiting for key '{key}' from worker {worker}")]
    Timeout {
        /// The key waited for.
        key: String,
        /// The worker expected to write it.
        worker: usize,
        /// How long this worker waited.
        waited: Duration,
    },
    /// The invocation's deadline came while waiting: checkpoint and re-invoke.
    #[error("invocation deadline reached while waiting for key '{key}'")]
    Interrupted {
        /// The key waited for.
        key: String,
    },
    /// The driver aborted the job.
    #[error("the job was aborted by the driver")]
    Aborted,
    /// The parameter server failed (`--sync ps`).
    #[error(transparent)]
    Ps(#[from] crate::ps::client::PsError),
    /// A value could not be decoded.
    #[error("key '{key}' holds an unreadable value")]
    Corrupt {
        /// The key read.
        key: String,
        /// What is wrong with it.
        #[source]
        source: CodecError,
    },
    /// A peer sent a vector of another length (workers disagree on the model).
    #[error(
        "key '{key}' holds {found} values, expected {expected}: workers disagree on the model size"
    )]
    LengthMismatch {
        /// The key read.
        key: String,
        /// Length expected.
        expected: usize,
        /// Length found.
        found: usize,
    },
}

/// Which collective a completed round was; drives deferred deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A `reduce` all-reduce.
    Reduce,
    /// A `reduce_scatter` all-reduce.
    ReduceScatter,
    /// An async exchange.
    Async,
    /// A barrier.
    Barrier,
    /// A broadcast from worker 0.
    Broadcast,
}

/// A completed collective whose keys this worker must delete once all workers are past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    /// The collective.
    pub op: Op,
    /// Its round.
    pub round: u64,
}

/// Traffic counters of one worker's collectives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CommStats {
    /// `put` requests.
    pub puts: u64,
    /// `get` requests (including polls of missing keys).
    pub gets: u64,
    /// `delete` requests.
    pub deletes: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Seconds spent waiting for peers.
    pub wait_seconds: f64,
}

impl std::ops::Add for CommStats {
    type Output = CommStats;
    fn add(self, o: CommStats) -> CommStats {
        CommStats {
            puts: self.puts + o.puts,
            gets: self.gets + o.gets,
            deletes: self.deletes + o.deletes,
            bytes_out: self.bytes_out + o.bytes_out,
            bytes_in: self.bytes_in + o.bytes_in,
            wait_seconds: self.wait_seconds + o.wait_seconds,
        }
    }
}

/// How often a waiter looks at the abort flag.
const ABORT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// One worker's endpoint for collectives.
#[derive(Debug)]
pub struct Comm {
    channel: Arc<dyn Channel>,
    keys: Keys,
    worker: usize,
    n: usize,
    wait_timeout: Duration,
    deadline: Option<Instant>,
    pending: Vec<Completed>,
    stats: CommStats,
}

impl Comm {
    /// Worker `worker` of `n` in job `job`. A wait fails after `wait_timeout`.
    pub fn new(
        channel: Arc<dyn Channel>,
        job: &str,
        worker: usize,
        n: usize,
        wait_timeout: Duration,
    ) -> Self {
        assert!(worker < n, "worker {worker} out of range for {n} workers");
        Comm {
            channel,
            keys: Keys::new(job),
            worker,
            n,
            wait_timeout,
            deadline: None,
            pending: Vec::new(),
            stats: CommStats::default(),
        }
    }

    /// Waits stop with [`CommError::Interrupted`] at `deadline` (the invocation's end less
    /// the time needed to checkpoint).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The key scheme of this job.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Traffic so far.
    pub fn stats(&self) -> CommStats {
        self.stats
    }

    /// Completed rounds whose keys are still to delete (saved in checkpoints).
    pub fn pending(&self) -> &[Completed] {
        &self.pending
    }

    /// Restores the pending list from a checkpoint.
    pub fn restore_pending(&mut self, pending: Vec<Completed>) {
        self.pending = pending;
    }

    /// Keys this worker's collectives leave behind; the driver deletes them after the job.
    pub fn residual_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.pending.iter().flat_map(|c| self.owned(*c)).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Keys of a completed round that this worker is responsible for deleting.
    fn owned(&self, c: Completed) -> Vec<String> {
        let (k, w, n, r) = (&self.keys, self.worker, self.n, c.round);
        match c.op {
            Op::Reduce if w == 0 => (1..n)
                .map(|i| k.reduce_part(r, i))
                .chain([k.reduce_mean(r)])
                .collect(),
            Op::Reduce => Vec::new(),
            Op::ReduceScatter => (0..n)
                .filter(|&i| i != w)
                .map(|i| k.scatter_part(r, w, i))
                .chain([k.gather_chunk(r, w)])
                .collect(),
            Op::Async => vec![k.async_model(w)],
            Op::Barrier => vec![k.barrier(r, w)],
            Op::Broadcast if w == 0 => vec![k.broadcast(r, 0)],
            Op::Broadcast => Vec::new(),
        }
    }

    fn complete(&mut self, c: Completed) {
        if self.owned(c).is_empty() || (c.op == Op::Async && self.pending.contains(&c)) {
            return;
        }
        self.pending.push(c);
    }

    /// Called once this worker has seen all `n` contributions of a round: every worker is
    /// past the pending rounds, so their keys can go.
    async fn after_full_gather(&mut self) -> Result<(), CommError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = self.pending.iter().flat_map(|c| self.owned(*c)).collect();
        self.channel.delete(&keys).await?;
        self.stats.deletes += keys.len() as u64;
        self.pending.clear();
        Ok(())
    }

    async fn put(&mut self, key: &str, value: Bytes) -> Result<(), CommError> {
        self.stats.puts += 1;
        self.stats.bytes_out += value.len() as u64;
        self.channel.put(key, value).await?;
        Ok(())
    }

    async fn get(&mut self, key: &str) -> Result<Option<Bytes>, CommError> {
        self.stats.gets += 1;
        let v = self.channel.get(key).await?;
        if let Some(v) = &v {
            self.stats.bytes_in += v.len() as u64;
        }
        Ok(v)
    }

    /// Polls `keys` (each written by the worker beside it) with capped exponential backoff
    /// until all exist, fetching the missing ones in one request per poll where the backend
    /// allows. Returns the values in the order of `keys`.
    async fn wait_all(
        &mut self,
        keys: &[(String, usize)],
        since: Instant,
    ) -> Result<Vec<Bytes>, CommError> {
        let started = Instant::now();
        let limit = since + self.wait_timeout;
        let mut backoff = Backoff::new(self.channel.poll_policy());
        let mut next_abort_check = started + ABORT_CHECK_EVERY;
        let mut found: Vec<Option<Bytes>> = vec![None; keys.len()];
        loop {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
            if missing.is_empty() {
                self.stats.wait_seconds += started.elapsed().as_secs_f64();
                return Ok(found.into_iter().flatten().collect());
            }
            let asked: Vec<String> = missing.iter().map(|&i| keys[i].0.clone()).collect();
            self.stats.gets += asked.len() as u64;
            let values = self.channel.get_many(&asked).await?;
            for (&i, v) in missing.iter().zip(values) {
                if let Some(v) = v {
                    self.stats.bytes_in += v.len() as u64;
                    found[i] = Some(v);
                }
            }
            if found.iter().all(Option::is_some) {
                continue;
            }
            let (key, worker) = &keys[found.iter().position(Option::is_none).expect("one missing")];
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                return Err(CommError::Interrupted { key: key.clone() });
            }
            if now >= limit {
                return Err(CommError::Timeout {
                    key: key.clone(),
                    worker: *worker,
                    waited: now - since,
                });
            }
            if now >= next_abort_check {
                next_abort_check = now + ABORT_CHECK_EVERY;
                let abort = self.keys.abort();
                if self.get(&abort).await?.is_some() {
                    return Err(CommError::Aborted);
                }
            }
            let until = self.deadline.map_or(limit, |d| d.min(limit));
            sleep(backoff.next_sleep(until.saturating_duration_since(now))).await;
        }
    }

    /// Waits for the vectors under `keys` (written by the workers beside them), each of
    /// `expected` values.
    async fn wait_vectors(
        &mut self,
        keys: &[(String, usize)],
        since: Instant,
        expected: impl Fn(usize) -> usize,
    ) -> Result<Vec<Vec<f32>>, CommError> {
        let values = self.wait_all(keys, since).await?;
        keys.iter()
            .zip(&values)
            .enumerate()
            .map(|(i, ((key, _), bytes))| decode_vector(key, bytes, expected(i)))
            .collect()
    }

    /// Averages `values` over all workers with the chosen collective; `round` must increase
    /// by at least one between calls and be the same on every worker.
    pub async fn all_reduce_mean(
        &mut self,
        mode: SyncMode,
        round: u64,
        values: &[f32],
    ) -> Result<Vec<f32>, CommError> {
        if self.n == 1 {
            return Ok(values.to_vec());
        }
        match mode {
            SyncMode::Reduce => self.reduce(round, values).await,
            SyncMode::ReduceScatter => self.reduce_scatter(round, values).await,
            SyncMode::Async => self.async_exchange(values).await,
            SyncMode::Ps => unreachable!("--sync ps rounds go to the parameter server"),
        }
    }

    async fn reduce(&mut self, round: u64, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let since = Instant::now();
        let len = values.len();
        if self.worker != 0 {
            let own = self.keys.reduce_part(round, self.worker);
            self.put(&own, codec::encode_f32(values)).await?;
            let mean = [(self.keys.reduce_mean(round), 0)];
            let result = self.wait_vectors(&mean, since, |_| len).await?.remove(0);
            self.complete(Completed {
                op: Op::Reduce,
                round,
            });
            return Ok(result);
        }
        let parts: Vec<(String, usize)> = (1..self.n)
            .map(|i| (self.keys.reduce_part(round, i), i))
            .collect();
        let mut acc = values.to_vec();
        for v in self.wait_vectors(&parts, since, |_| len).await? {
            add_assign(&mut acc, &v);
        }
        self.after_full_gather().await?;
        scale(&mut acc, self.n);
        let key = self.keys.reduce_mean(round);
        self.put(&key, codec::encode_f32(&acc)).await?;
        self.complete(Completed {
            op: Op::Reduce,
            round,
        });
        Ok(acc)
    }

    async fn reduce_scatter(&mut self, round: u64, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let since = Instant::now();
        let (n, w, len) = (self.n, self.worker, values.len());
        for j in (0..n).filter(|&j| j != w) {
            let key = self.keys.scatter_part(round, j, w);
            self.put(&key, codec::encode_f32(&values[chunk_bounds(len, n, j)]))
                .await?;
        }
        let mine = chunk_bounds(len, n, w);
        let parts: Vec<(String, usize)> = (0..n)
            .filter(|&i| i != w)
            .map(|i| (self.keys.scatter_part(round, w, i), i))
            .collect();
        let mut theirs = self
            .wait_vectors(&parts, since, |_| mine.len())
            .await?
            .into_iter();
        let mut acc = vec![0f32; mine.len()];
        for i in 0..n {
            if i == w {
                add_assign(&mut acc, &values[mine.clone()]);
            } else {
                add_assign(&mut acc, &theirs.next().expect("one part per other worker"));
            }
        }
        self.after_full_gather().await?;
        scale(&mut acc, n);
        let key = self.keys.gather_chunk(round, w);
        self.put(&key, codec::encode_f32(&acc)).await?;
        let mut result = vec![0f32; len];
        result[mine].copy_from_slice(&acc);
        let owners: Vec<usize> = (0..n).filter(|&j| j != w).collect();
        let chunks: Vec<(String, usize)> = owners
            .iter()
            .map(|&j| (self.keys.gather_chunk(round, j), j))
            .collect();
        let gathered = self
            .wait_vectors(&chunks, since, |i| chunk_bounds(len, n, owners[i]).len())
            .await?;
        for (&j, v) in owners.iter().zip(gathered) {
            result[chunk_bounds(len, n, j)].copy_from_slice(&v);
        }
        self.complete(Completed {
            op: Op::ReduceScatter,
            round,
        });
        Ok(result)
    }

    async fn async_exchange(&mut self, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let own = self.keys.async_model(self.worker);
        self.put(&own, codec::encode_f32(values)).await?;
        let mut acc = vec![0f32; values.len()];
        let mut count = 0;
        for i in 0..self.n {
            if i == self.worker {
                add_assign(&mut acc, values);
                count += 1;
                continue;
            }
            let key = self.keys.async_model(i);
            if let Some(bytes) = self.get(&key).await? {
                add_assign(&mut acc, &decode_vector(&key, &bytes, values.len())?);
                count += 1;
            }
        }
        scale(&mut acc, count);
        self.complete(Completed {
            op: Op::Async,
            round: 0,
        });
        Ok(acc)
    }

    /// Sends worker 0's `values` to every worker: worker 0 passes `Some(values)` and gets them
    /// back, the others pass `None` and wait for a vector of `len` values.
    pub async fn broadcast(
        &mut self,
        round: u64,
        values: Option<&[f32]>,
        len: usize,
    ) -> Result<Vec<f32>, CommError> {
        let key = self.keys.broadcast(round, 0);
        let result = match values {
            Some(v) => {
                if self.n > 1 {
                    self.put(&key, codec::encode_f32(v)).await?;
                }
                v.to_vec()
            }
            None => self
                .wait_vectors(&[(key, 0)], Instant::now(), |_| len)
                .await?
                .remove(0),
        };
        self.complete(Completed {
            op: Op::Broadcast,
            round,
        });
        Ok(result)
    }

    /// Returns once every worker has reached barrier `round`.
    pub async fn barrier(&mut self, round: u64) -> Result<(), CommError> {
        if self.n == 1 {
            return Ok(());
        }
        let since = Instant::now();
        let own = self.keys.barrier(round, self.worker);
        self.put(&own, codec::encode_bytes(&[])).await?;
        let (n, w) = (self.n, self.worker);
        let others: Vec<(String, usize)> = (0..n)
            .filter(|&i| i != w)
            .map(|i| (self.keys.barrier(round, i), i))
            .collect();
        self.wait_all(&others, since).await?;
        self.after_full_gather().await?;
        self.complete(Completed {
            op: Op::Barrier,
            round,
        });
        Ok(())
    }
}

fn decode_vector(key: &str, bytes: &[u8], expected: usize) -> Result<Vec<f32>, CommError> {
    let v = codec::decode_f32(bytes).map_err(|source| CommError::Corrupt {
        key: key.to_string(),
        source,
    })?;
    if v.len() != expected {
        return Err(CommError::LengthMismatch {
            key: key.to_string(),
            expected,
            found: v.len(),
        });
    }
    Ok(v)
}

fn add_assign(acc: &mut [f32], v: &[f32]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a += *b;
    }
}

fn scale(acc: &mut [f32], n: usize) {
    let n = n as f32;
    for a in acc.iter_mut() {
        *a /= n;
    }
}

/// Sleeps `d`. Tokio timers have millisecond granularity, so sub-millisecond backoff steps
/// sleep the thread instead: a worker process has nothing else to run meanwhile.
pub async fn sleep(d: Duration) {
    if d < Duration::from_millis(1) {
        std::thread::sleep(d);
    } else {
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
mod tests;
