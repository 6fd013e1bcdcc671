//! Collectives: how the workers of a job combine their vectors, behind one trait,
//! [`Collective`], chosen once from the sync mode when a worker starts ([`open`]).
//!
//! | sync mode | implementation | a mean | a gradient step |
//! |---|---|---|---|
//! | `reduce` | [`exchange::OverChannel`]`<`[`exchange::Reduce`]`>` | every worker writes, worker 0 averages, everyone reads | mean of the gradients, then the step |
//! | `reduce_scatter` | [`exchange::OverChannel`]`<`[`exchange::ReduceScatter`]`>` | worker i averages chunk i, everyone reads every chunk | as `reduce` |
//! | `async` | [`exchange::OverChannel`]`<`[`exchange::Async`]`>` | own model published, averaged with the latest of the others | the step, then the models averaged |
//! | `ps` | [`ps::PsCollective`] | push to the parameter server, pull the mean | push `-lr/n * grad` into the server's model, pull the model |
//!
//! A small vector on a channel whose reads are cheap is gathered in either barrier mode:
//! every worker writes it and sums everyone's itself, in worker order
//! ([`endpoint::Comm::gathers`]).
//!
//! **The contract** every implementation keeps (and `tests/it/collective_conformance.rs`
//! checks against each):
//! - **Means, summed in worker order**, so every worker gets bit-identical results and
//!   `reduce`, `reduce_scatter` and `ps` agree bit for bit on the same inputs.
//! - **Idempotent per round**: a worker that re-executes a round (after a re-invocation)
//!   rewrites the same keys, or re-pushes the same values, and changes nothing.
//! - **State only changes on success**: a failed or interrupted call leaves the caller's
//!   parameters as they were, so the round can be re-run.
//! - **Waits end clearly**: at the invocation's deadline with [`CommError::Interrupted`]
//!   (checkpoint and re-invoke), when the driver raised the abort flag with
//!   [`CommError::Aborted`], and after the wait timeout with an error naming the key and
//!   the worker waited for.
//! - **Cleanup without listing**: a key is deleted once every worker is provably past the
//!   round that used it and has checkpointed past it (rounds go in blocks of
//!   [`Member::keep_rounds`]; a worker that dies is re-run from its checkpoint, at the
//!   start of the current block at the earliest, so that block's keys are kept); what is left at the end is [`Collective::residual_keys`], for the
//!   driver to delete. What must survive a re-invocation is [`Collective::state`].

pub mod endpoint;
pub mod exchange;
pub mod keys;
pub mod ps;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::channel::codec::CodecError;
pub use endpoint::Comm;
pub use keys::Keys;

/// How workers synchronise: the flag and config value. [`open`] turns it into a
/// [`Collective`] once; nothing else matches on it.
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
        use clap::ValueEnum;
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// Where the parameter server of `--sync ps` is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq)]
pub struct PsTarget {
    /// `HOST:PORT` or a URL.
    pub addr: String,
    /// The bearer token, if the server wants one.
    pub token: Option<String>,
}

/// One worker's place in a job: what every collective needs to know.
#[derive(Debug, Clone)]
pub struct Member {
    /// The channel of the job (keys, and the driver's abort flag).
    pub channel: Arc<dyn Channel>,
    /// The job id, prefix of every key.
    pub job: String,
    /// This worker's index.
    pub worker: usize,
    /// Workers in the job.
    pub workers: usize,
    /// How long a wait for a peer may take before the job fails.
    pub wait_timeout: Duration,
    /// Rounds per checkpoint block (at least 1): every worker checkpoints before its first
    /// round of each block of this many rounds, so the keys of the current block are kept
    /// for a peer that recovers from its checkpoint and re-runs the block's rounds.
    pub keep_rounds: u64,
}

/// Builds the collective of `mode`: the one place where the sync mode is looked at.
/// `ps` is required (and only used) for [`SyncMode::Ps`].
pub async fn open(
    mode: SyncMode,
    ps: Option<&PsTarget>,
    member: Member,
) -> Result<Box<dyn Collective>, CommError> {
    if member.worker >= member.workers {
        return Err(CommError::Setup(format!(
            "worker {} out of range for {} workers",
            member.worker, member.workers
        )));
    }
    Ok(match mode {
        SyncMode::Reduce => Box::new(exchange::OverChannel::<exchange::Reduce>::new(member)),
        SyncMode::ReduceScatter => Box::new(exchange::OverChannel::<exchange::ReduceScatter>::new(
            member,
        )),
        SyncMode::Async => Box::new(exchange::OverChannel::<exchange::Async>::new(member)),
        SyncMode::Ps => {
            let target = ps.ok_or_else(|| {
                CommError::Setup(
                    "--sync ps needs the parameter server's address (--ps-addr)".to_string(),
                )
            })?;
            Box::new(ps::PsCollective::connect(target, member).await?)
        }
    })
}

/// The collective operations of one worker, whatever carries them.
///
/// `round` must be the same on every worker for the same call and grow by at least one
/// between calls; re-running a round after a re-invocation is allowed and changes nothing.
#[async_trait]
pub trait Collective: Send + std::fmt::Debug {
    /// The mean of `values` over all workers.
    async fn mean(&mut self, round: u64, values: &[f32]) -> Result<Vec<f32>, CommError>;

    /// One synchronous SGD step with the workers' gradients: afterwards `params` is the
    /// same on every worker (`params - lr * mean(grad)` for the barrier modes and the
    /// parameter server; the mean of every worker's own step for `async`). On error
    /// `params` is unchanged.
    async fn grad_step(
        &mut self,
        round: u64,
        params: &mut Vec<f32>,
        grad: &[f32],
        lr: f32,
    ) -> Result<(), CommError>;

    /// Worker 0's vector on every worker: worker 0 passes `Some(values)`, the others `None`
    /// and the length they expect.
    async fn broadcast(
        &mut self,
        round: u64,
        own: Option<&[f32]>,
        len: usize,
    ) -> Result<Vec<f32>, CommError>;

    /// Waits stop with [`CommError::Interrupted`] at `deadline` (the invocation's end less
    /// the time needed to checkpoint).
    fn set_deadline(&mut self, deadline: Option<Instant>);

    /// Requests, bytes and waiting of this invocation.
    fn stats(&self) -> CommStats;

    /// What the next invocation needs to carry on (checkpoints store it).
    fn state(&self) -> CollectiveState;

    /// Takes up the state a previous invocation left in its checkpoint.
    fn restore(&mut self, state: CollectiveState);

    /// Keys this worker's collectives leave behind; the driver deletes them after the job.
    fn residual_keys(&self) -> Vec<String>;
}

/// What a collective carries from one invocation to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectiveState {
    /// Channel collectives: completed rounds whose keys are still to delete.
    pub pending: Vec<Completed>,
    /// Parameter server: the round this worker last pushed to each server model, so the
    /// next invocation's first push still lets the server detect rounds it lost.
    pub last_pushed: Vec<(String, u64)>,
    /// Channel collectives: keys written (with their rounds) that no worker's pending rounds
    /// may cover yet.
    #[serde(default)]
    pub written: Vec<(u64, String)>,
    /// Seconds already spent waiting for the round the invocation was cut off in: the
    /// re-run of that round may only wait for what is left of the wait timeout, so a dead
    /// peer fails the job after `wait_timeout` however often the waiter re-invokes itself.
    #[serde(default)]
    pub waited_s: f64,
}

/// Waiting for one round measured across invocations: what earlier invocations waited
/// counts against this one's timeout, and what this one waited before the deadline cut it
/// off is carried to the next (in [`CollectiveState::waited_s`]).
#[derive(Debug, Clone, Copy, Default)]
struct WaitCredit {
    /// Waited for the current round by earlier invocations, until a wait completes.
    before: Duration,
    /// The total when a wait was cut off by the deadline.
    at_interrupt: Duration,
}

impl WaitCredit {
    /// Takes up the seconds a checkpoint carried (garbage counts as none).
    fn restore(&mut self, waited_s: f64) {
        self.before = Duration::try_from_secs_f64(waited_s).unwrap_or_default();
    }

    /// Seconds to carry to the next invocation.
    fn carried_s(&self) -> f64 {
        self.at_interrupt.max(self.before).as_secs_f64()
    }

    /// What is left of `timeout` for this round's waits.
    fn left(&self, timeout: Duration) -> Duration {
        timeout.saturating_sub(self.before)
    }

    /// All the waiting for this round, the wait started at `since` included.
    fn total(&self, since: Instant) -> Duration {
        self.before + since.elapsed()
    }

    /// The wait started at `since` was cut off by the deadline.
    fn interrupted(&mut self, since: Instant) {
        self.at_interrupt = self.total(since);
    }

    /// A wait completed: the round's earlier waiting no longer counts.
    fn completed(&mut self) {
        self.before = Duration::ZERO;
    }
}

/// Errors of a collective.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// The collective could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelError),
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
    /// A small all-reduce (either mode) where every worker read every contribution
    /// ([`endpoint::Comm::gathers`]).
    Gather,
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, derive_more::Add)]
pub struct CommStats {
    /// `put` requests (parameter server: pushes).
    pub puts: u64,
    /// `get` requests, including polls of missing keys (parameter server: pulls).
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

/// `params -= lr * grad`: the step of synchronous SGD, taken here so that every
/// collective applies it the same way.
pub fn sgd_step(params: &mut [f32], grad: &[f32], lr: f32) {
    for (p, g) in params.iter_mut().zip(grad) {
        *p -= lr * g;
    }
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
