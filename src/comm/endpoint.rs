//! One worker's endpoint on the channel: the key scheme, waiting for peers' keys (deadline,
//! abort flag, timeout), deferred deletion, traffic counters, and the channel algorithms
//! (reduce, reduce-scatter, async exchange, broadcast, barrier) that the collectives of
//! [`super::exchange`] are made of.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    CommError, CommStats, Completed, Keys, Member, Op, WaitCredit, add_assign, scale, sleep,
};
use crate::channel::codec;
use crate::channel::{Backoff, Channel};
use crate::data::chunk_bounds;

/// How often a waiter looks at the abort flag.
const ABORT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The most bytes of contributions one worker reads in a gathered mean ([`Comm::gathers`]).
/// Above it, reading everyone's vector costs more than the leader's second phase saves: with
/// 8 workers on Redis, gathering won at 56 KB a worker, tied at 224 KB and lost at 896 KB
/// (BENCHMARKS.md, "Small means gathered").
const GATHER_MAX_READ: usize = 128 << 10;

/// One worker's endpoint for collectives.
#[derive(Debug)]
pub struct Comm {
    pub(super) channel: Arc<dyn Channel>,
    pub(super) keys: Keys,
    pub(super) worker: usize,
    pub(super) n: usize,
    wait_timeout: Duration,
    /// Rounds per checkpoint block ([`Member::keep_rounds`]).
    pub(super) keep_rounds: u64,
    deadline: Option<Instant>,
    pending: Vec<Completed>,
    /// Rounds of `pending` whose keys every worker is past: they are deleted together with
    /// this worker's next write, in flight with it, so a deletion does not add a round
    /// trip to a round. They stay in `pending` (and in checkpoints) until deleted.
    deletable: Vec<Completed>,
    /// Keys this worker wrote, with their round, that no worker's `pending` may cover yet:
    /// a worker that fails reports them, so a round cut off by a failure leaves nothing.
    /// Dropped once every worker is provably past their round (see `after_full_gather`).
    written: Vec<(u64, String)>,
    /// The round of the collective in progress (what `put` files its key under).
    round: u64,
    stats: CommStats,
    /// Waiting for the current round, across invocations.
    waited: WaitCredit,
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
        Comm {
            channel,
            keys: Keys::new(job),
            worker,
            n,
            wait_timeout,
            keep_rounds: 1,
            deadline: None,
            pending: Vec::new(),
            deletable: Vec::new(),
            written: Vec::new(),
            round: 0,
            stats: CommStats::default(),
            waited: WaitCredit::default(),
        }
    }

    /// The endpoint of `member`.
    pub fn of(member: Member) -> Self {
        let mut comm = Comm::new(
            member.channel,
            &member.job,
            member.worker,
            member.workers,
            member.wait_timeout,
        );
        comm.keep_rounds = member.keep_rounds.max(1);
        comm
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.n
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

    /// Seconds of waiting to carry to the next invocation (see [`super::CollectiveState`]).
    pub fn waited_s(&self) -> f64 {
        self.waited.carried_s()
    }

    /// Counts `waited_s` (from earlier invocations) against the next wait's timeout.
    pub fn restore_waited(&mut self, waited_s: f64) {
        self.waited.restore(waited_s);
    }

    /// Keys written that may not be covered by any worker's pending rounds yet, with their
    /// rounds (carried in checkpoints).
    pub fn written(&self) -> &[(u64, String)] {
        &self.written
    }

    /// Takes up what [`Self::written`] returned in the previous invocation.
    pub fn restore_written(&mut self, written: Vec<(u64, String)>) {
        self.written = written;
    }

    /// Keys this worker's collectives leave behind, those of a collective cut off by a
    /// failure included; the driver deletes them after the job.
    pub fn residual_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.pending.iter().flat_map(|c| self.owned(*c)).collect();
        keys.extend(self.written.iter().map(|(_, k)| k.clone()));
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
            Op::Gather => vec![k.reduce_part(r, w)],
        }
    }

    fn complete(&mut self, c: Completed) {
        if self.owned(c).is_empty() || (c.op == Op::Async && self.pending.contains(&c)) {
            return;
        }
        self.pending.push(c);
    }

    /// Called once this worker has seen all `n` contributions of a round: every worker is
    /// past the pending rounds, and has checkpointed in the current block (it does before
    /// its first round of a block), so the keys of earlier blocks can go, with the next
    /// write ([`Self::deletable`]).
    async fn after_full_gather(&mut self) -> Result<(), CommError> {
        // Every worker finished the earlier rounds: their keys are in the owners' pending
        // (or deleted), so this worker need not report them any more.
        let round = self.round;
        self.written.retain(|(r, _)| *r >= round);
        // Deletable rounds not deleted yet (no write came since) are still pending, so they
        // are among these again.
        let block_start = round / self.keep_rounds * self.keep_rounds;
        self.deletable = self
            .pending
            .iter()
            .copied()
            .filter(|c| c.round < block_start || c.op == Op::Async)
            .collect();
        Ok(())
    }

    /// The keys of the deletable rounds.
    fn deletable_keys(&self) -> Vec<String> {
        self.deletable.iter().flat_map(|c| self.owned(*c)).collect()
    }

    /// Deletes the keys of the deletable rounds now.
    async fn delete_deletable(&mut self) -> Result<(), CommError> {
        let keys = self.deletable_keys();
        self.channel.delete(&keys).await?;
        self.deleted(&keys);
        Ok(())
    }

    /// The deletable keys to delete beside a write of `writing`. A key about to be written
    /// again (an async model after a barrier) must be deleted before, not beside, its write:
    /// those are deleted now, and nothing is left to delete beside it.
    async fn deletions_beside(&mut self, writing: &[&str]) -> Result<Vec<String>, CommError> {
        let keys = self.deletable_keys();
        if keys.iter().any(|k| writing.contains(&k.as_str())) {
            self.delete_deletable().await?;
            return Ok(Vec::new());
        }
        Ok(keys)
    }

    /// Drops the deletable rounds, whose `keys` are gone, from the pending ones.
    fn deleted(&mut self, keys: &[String]) {
        self.stats.deletes += keys.len() as u64;
        let done = std::mem::take(&mut self.deletable);
        self.pending.retain(|c| !done.contains(c));
        self.written.retain(|(_, k)| !keys.contains(k));
    }

    /// Counts a put of `bytes` under `key` and files the key under the current round.
    fn note_put(&mut self, key: &str, bytes: usize) {
        if !self.written.iter().any(|(_, k)| k == key) {
            self.written.push((self.round, key.to_string()));
        }
        self.stats.puts += 1;
        self.stats.bytes_out += bytes as u64;
    }

    pub(super) async fn put(&mut self, key: &str, value: Bytes) -> Result<(), CommError> {
        // One item of `put_many` is one `put` on every backend; this keeps the deletions
        // beside a write in one place.
        self.put_many(vec![(key.to_string(), value)]).await
    }

    /// Writes several keys of the current round, all in flight together, with the
    /// deletable keys ([`Self::deletions_beside`]).
    async fn put_many(&mut self, items: Vec<(String, Bytes)>) -> Result<(), CommError> {
        for (key, value) in &items {
            self.note_put(key, value.len());
        }
        let writing: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        let keys = self.deletions_beside(&writing).await?;
        if keys.is_empty() {
            self.channel.put_many(items).await?;
        } else {
            let channel = &self.channel;
            futures_util::try_join!(channel.put_many(items), channel.delete(&keys))?;
            self.deleted(&keys);
        }
        Ok(())
    }

    pub(super) async fn get(&mut self, key: &str) -> Result<Option<Bytes>, CommError> {
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
    pub(super) async fn wait_all(
        &mut self,
        keys: &[(String, usize)],
        since: Instant,
    ) -> Result<Vec<Bytes>, CommError> {
        let started = Instant::now();
        let limit = since + self.waited.left(self.wait_timeout);
        let mut backoff = Backoff::new(self.channel.poll_policy());
        let mut next_abort_check = started + ABORT_CHECK_EVERY;
        let mut found: Vec<Option<Bytes>> = vec![None; keys.len()];
        loop {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
            if missing.is_empty() {
                self.stats.wait_seconds += started.elapsed().as_secs_f64();
                self.waited.completed();
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
                self.waited.interrupted(since);
                return Err(CommError::Interrupted { key: key.clone() });
            }
            if now >= limit {
                return Err(CommError::Timeout {
                    key: key.clone(),
                    worker: *worker,
                    waited: self.waited.total(since),
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

    /// Waits for the vector of `len` values under `key`, written by `worker`.
    async fn wait_vector(
        &mut self,
        key: String,
        worker: usize,
        since: Instant,
        len: usize,
    ) -> Result<Vec<f32>, CommError> {
        let keys = [(key, worker)];
        let frame = self.wait_all(&keys, since).await?.remove(0);
        Ok(view_vector(&keys[0].0, &frame, len)?.to_vec())
    }

    /// True when the mean of `len` values is gathered: every worker writes its vector and
    /// sums everyone's itself, one phase instead of two. That pays for small vectors on a
    /// channel whose reads are cheap ([`Channel::reads_are_cheap`]): a round is then one
    /// write and the reads of the others' vectors, not a write, the leader's reads and sum,
    /// its write and everyone's read.
    pub fn gathers(&self, len: usize) -> bool {
        self.channel.reads_are_cheap() && (self.n - 1) * len * 4 <= GATHER_MAX_READ
    }

    /// The mean of a small vector in one phase (see [`Self::gathers`]): every worker writes
    /// its vector, reads the others' and sums them all in worker order, as the leader of
    /// [`Self::reduce`] does, so the result is bit for bit the same.
    async fn gather_mean(&mut self, round: u64, values: &[f32]) -> Result<Vec<f32>, CommError> {
        self.round = round;
        let since = Instant::now();
        let (n, w, len) = (self.n, self.worker, values.len());
        let own = self.keys.reduce_part(round, w);
        self.put(&own, codec::encode_f32(values)).await?;
        let others: Vec<(String, usize)> = (0..n)
            .filter(|&i| i != w)
            .map(|i| (self.keys.reduce_part(round, i), i))
            .collect();
        let frames = self.wait_all(&others, since).await?;
        self.after_full_gather().await?;
        let mut theirs = others
            .iter()
            .zip(&frames)
            .map(|((key, _), frame)| view_vector(key, frame, len));
        let mut acc = if w == 0 {
            values.to_vec()
        } else {
            theirs.next().expect("worker 0's vector")?.to_vec()
        };
        for i in 1..n {
            if i == w {
                add_assign(&mut acc, values);
            } else {
                theirs
                    .next()
                    .expect("one vector per other worker")?
                    .add_to(&mut acc);
            }
        }
        scale(&mut acc, n);
        self.complete(Completed {
            op: Op::Gather,
            round,
        });
        Ok(acc)
    }

    /// `reduce`: every worker writes its vector, worker 0 sums them in worker order and
    /// writes the mean, the others read it. Small vectors are gathered instead
    /// ([`Self::gathers`]).
    pub async fn reduce(&mut self, round: u64, values: &[f32]) -> Result<Vec<f32>, CommError> {
        if self.gathers(values.len()) {
            return self.gather_mean(round, values).await;
        }
        self.round = round;
        let since = Instant::now();
        let len = values.len();
        if self.worker != 0 {
            let own = self.keys.reduce_part(round, self.worker);
            self.put(&own, codec::encode_f32(values)).await?;
            let mean = self.keys.reduce_mean(round);
            let result = self.wait_vector(mean, 0, since, len).await?;
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
        let frames = self.wait_all(&parts, since).await?;
        for ((key, _), frame) in parts.iter().zip(&frames) {
            view_vector(key, frame, len)?.add_to(&mut acc);
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

    /// `reduce_scatter`: worker i sums chunk i of every vector and writes its mean; every
    /// worker then reads all chunks. Small vectors are gathered instead ([`Self::gathers`]).
    pub async fn reduce_scatter(
        &mut self,
        round: u64,
        values: &[f32],
    ) -> Result<Vec<f32>, CommError> {
        if self.gathers(values.len()) {
            return self.gather_mean(round, values).await;
        }
        self.round = round;
        let since = Instant::now();
        let (n, w, len) = (self.n, self.worker, values.len());
        let parts: Vec<(String, Bytes)> = (0..n)
            .filter(|&j| j != w)
            .map(|j| {
                let key = self.keys.scatter_part(round, j, w);
                (key, codec::encode_f32(&values[chunk_bounds(len, n, j)]))
            })
            .collect();
        self.put_many(parts).await?;
        let mine = chunk_bounds(len, n, w);
        let parts: Vec<(String, usize)> = (0..n)
            .filter(|&i| i != w)
            .map(|i| (self.keys.scatter_part(round, w, i), i))
            .collect();
        let frames = self.wait_all(&parts, since).await?;
        let mut theirs = parts.iter().zip(&frames);
        let mut acc = vec![0f32; mine.len()];
        for i in 0..n {
            if i == w {
                add_assign(&mut acc, &values[mine.clone()]);
            } else {
                let ((key, _), frame) = theirs.next().expect("one part per other worker");
                view_vector(key, frame, mine.len())?.add_to(&mut acc);
            }
        }
        self.after_full_gather().await?;
        scale(&mut acc, n);
        let key = self.keys.gather_chunk(round, w);
        self.put(&key, codec::encode_f32(&acc)).await?;
        let chunks: Vec<(String, usize)> = (0..n)
            .filter(|&j| j != w)
            .map(|j| (self.keys.gather_chunk(round, j), j))
            .collect();
        let frames = self.wait_all(&chunks, since).await?;
        // Appended in owner order: the result is written once, never zeroed first.
        let mut result = Vec::with_capacity(len);
        let mut theirs = chunks.iter().zip(&frames);
        for j in 0..n {
            if j == w {
                result.extend_from_slice(&acc);
            } else {
                let ((key, _), frame) = theirs.next().expect("one chunk per other worker");
                view_vector(key, frame, chunk_bounds(len, n, j).len())?.extend_into(&mut result);
            }
        }
        self.complete(Completed {
            op: Op::ReduceScatter,
            round,
        });
        Ok(result)
    }

    /// `async`: publishes `values` as this worker's latest model and averages it with the
    /// latest models of the others that have published one (no waiting).
    pub async fn async_exchange(&mut self, values: &[f32]) -> Result<Vec<f32>, CommError> {
        // Its one key is this worker's own, covered by `pending` once written.
        self.round = u64::MAX;
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
                view_vector(&key, &bytes, values.len())?.add_to(&mut acc);
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
        self.round = round;
        let key = self.keys.broadcast(round, 0);
        let result = match values {
            Some(v) => {
                if self.n > 1 {
                    self.put(&key, codec::encode_f32(v)).await?;
                }
                v.to_vec()
            }
            None => self.wait_vector(key, 0, Instant::now(), len).await?,
        };
        self.complete(Completed {
            op: Op::Broadcast,
            round,
        });
        Ok(result)
    }

    /// Returns once every worker has reached barrier `round`.
    pub async fn barrier(&mut self, round: u64) -> Result<(), CommError> {
        self.round = round;
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
        // Nothing is written after a barrier to send them with, and its callers wait anyway.
        if !self.deletable.is_empty() {
            self.delete_deletable().await?;
        }
        self.complete(Completed {
            op: Op::Barrier,
            round,
        });
        Ok(())
    }
}

/// The checked vector of `expected` values in the frame read from `key`.
pub(super) fn view_vector<'a>(
    key: &str,
    bytes: &'a [u8],
    expected: usize,
) -> Result<codec::F32View<'a>, CommError> {
    let v = codec::view_f32(bytes).map_err(|source| CommError::Corrupt {
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
