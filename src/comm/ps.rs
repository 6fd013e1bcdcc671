//! `--sync ps`: the collectives of a training job done by pushing to and pulling from the
//! parameter server instead of exchanging keys on the channel.
//!
//! - gradient averaging: push `-lr/n * grad` into the model (`m += ...`), pull the model
//!   once all `n` pushed (the hybrid design of the paper: the model lives on the server);
//! - every other all-reduce (model averaging, ADMM, KMeans statistics): push the vector,
//!   pull the mean once all arrived;
//! - broadcast (KMeans' initial centroids): the root pushes, the others only check in.
//!
//! Pushes are idempotent per (round, worker), so a re-invoked worker re-running a round
//! changes nothing on the server. Waits are cut into one-second pulls so the invocation's
//! deadline and the job's abort flag are seen while waiting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Collective, CollectiveState, CommError, CommStats, Keys, Member, PsTarget, WaitCredit,
};
use crate::channel::Channel;
use crate::ps::client::{PsClient, PsError};
use crate::ps::store::Mode;

/// Longest single pull while waiting.
const PULL_SLICE: Duration = Duration::from_secs(1);

/// One worker's endpoint on the parameter server.
#[derive(Debug)]
pub struct PsCollective {
    client: PsClient,
    channel: Arc<dyn Channel>,
    keys: Keys,
    job: String,
    worker: usize,
    n: usize,
    wait_timeout: Duration,
    deadline: Option<Instant>,
    registered: HashSet<String>,
    /// The round this invocation last pushed to each model.
    last_pushed: HashMap<String, u64>,
    /// Waiting already done for the current round by earlier invocations (until a pull
    /// succeeds), and the total when a wait was cut off by the deadline.
    waited: WaitCredit,
    stats: CommStats,
}

/// The model a gradient-averaging job keeps on the server.
const MODEL: &str = "model";

impl PsCollective {
    /// Connects `member` to the server at `target`; the member's channel is watched for the
    /// abort flag.
    pub async fn connect(target: &PsTarget, member: Member) -> Result<Self, PsError> {
        Ok(PsCollective {
            client: PsClient::connect(&target.addr, target.token.as_deref()).await?,
            channel: member.channel,
            keys: Keys::new(&member.job),
            job: member.job,
            worker: member.worker,
            n: member.workers,
            wait_timeout: member.wait_timeout,
            deadline: None,
            registered: HashSet::new(),
            last_pushed: HashMap::new(),
            stats: CommStats::default(),
            waited: WaitCredit::default(),
        })
    }

    /// Registers `name` with `initial` values (zeros of `len` when none) once per
    /// invocation. When the server creates a model this worker pushed to in an earlier
    /// invocation (its checkpointed state says so), the server lost it (expired, or
    /// restarted without `--dir`): an error, not a silent reset.
    async fn ensure(
        &mut self,
        name: &str,
        len: usize,
        initial: Option<&[f32]>,
        round: u64,
    ) -> Result<(), CommError> {
        if self.registered.contains(name) {
            return Ok(());
        }
        let (job, n) = (self.job.clone(), self.n as u32);
        let reply = self
            .retrying(|mut c| {
                let (job, name) = (job.clone(), name.to_string());
                async move { c.register(&job, &name, n, len, initial).await }
            })
            .await?;
        if reply.created && self.last_pushed.contains_key(name) {
            return Err(CommError::Ps(PsError::Rpc {
                addr: self.client.addr().to_string(),
                op: "register",
                status: Box::new(tonic::Status::failed_precondition(format!(
                    "model '{name}' of job {job} was gone at round {round} (expired, or the \
                     server restarted without --dir)"
                ))),
            }));
        }
        self.registered.insert(name.to_string());
        Ok(())
    }

    async fn push_pull(
        &mut self,
        name: &str,
        round: u64,
        mode: Mode,
        values: &[f32],
    ) -> Result<Vec<f32>, CommError> {
        let (job, w) = (self.job.clone(), self.worker as u32);
        let after = self.last_pushed.get(name).copied();
        self.retrying(|mut c| {
            let (job, name) = (job.clone(), name.to_string());
            async move { c.push(&job, &name, round, w, mode, values, after).await }
        })
        .await?;
        self.last_pushed.insert(name.to_string(), round);
        self.stats.puts += 1;
        self.stats.bytes_out += values.len() as u64 * 4;
        let since = Instant::now();
        let mut next_abort_check = since + PULL_SLICE;
        let what = || format!("ps:{name}@{round}");
        loop {
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                self.waited.interrupted(since);
                return Err(CommError::Interrupted { key: what() });
            }
            if now >= next_abort_check {
                next_abort_check = now + PULL_SLICE;
                let abort = self.keys.abort();
                self.stats.gets += 1;
                if self.channel.get(&abort).await?.is_some() {
                    return Err(CommError::Aborted);
                }
            }
            let mut slice = PULL_SLICE;
            if let Some(d) = self.deadline {
                slice = slice.min(d.saturating_duration_since(now));
            }
            let pulled = self
                .retrying(|mut c| {
                    let (job, name) = (job.clone(), name.to_string());
                    async move { c.pull(&job, &name, Some(round), slice).await }
                })
                .await?;
            self.stats.gets += 1;
            if let Some(p) = pulled {
                self.stats.bytes_in += p.values.len() as u64 * 4;
                self.stats.wait_seconds += since.elapsed().as_secs_f64();
                self.waited.completed();
                return Ok(p.values);
            }
            let total = self.waited.total(since);
            if total >= self.wait_timeout {
                // One last look at the server, for an error naming who did not push.
                let c = self.client.clone();
                return Err(timeout_error(c, &job, name, round, total).await);
            }
        }
    }

    /// Runs `call`, retrying transient failures (a restarting server) within the wait
    /// timeout; tonic's channel reconnects by itself.
    async fn retrying<T, F, Fut>(&mut self, call: F) -> Result<T, CommError>
    where
        F: Fn(PsClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, PsError>>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match call(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && started.elapsed() + pause < self.wait_timeout => {
                    tracing::warn!("{e}; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(CommError::Ps(e)),
            }
        }
    }
}

#[async_trait]
impl Collective for PsCollective {
    async fn mean(&mut self, round: u64, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let name = format!("mean-{}", values.len());
        self.ensure(&name, values.len(), None, round).await?;
        self.push_pull(&name, round, Mode::Average, values).await
    }

    /// The server keeps the model: every worker pushes `-lr/n * grad` into it (registered
    /// from this worker's `params` if it is new) and pulls it once all have pushed.
    async fn grad_step(
        &mut self,
        round: u64,
        params: &mut Vec<f32>,
        grad: &[f32],
        lr: f32,
    ) -> Result<(), CommError> {
        self.ensure(MODEL, params.len(), Some(params), round)
            .await?;
        let scale = -lr / self.n as f32;
        *params = self
            .push_pull(MODEL, round, Mode::Grad { scale }, grad)
            .await?;
        Ok(())
    }

    /// The root pushes its values as a replacement; the others only check in and pull.
    async fn broadcast(
        &mut self,
        round: u64,
        own: Option<&[f32]>,
        len: usize,
    ) -> Result<Vec<f32>, CommError> {
        let name = format!("broadcast-{len}");
        self.ensure(&name, len, None, round).await?;
        self.push_pull(&name, round, Mode::Replace, own.unwrap_or(&[]))
            .await
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Pushes count as puts, pulls (and abort-flag reads) as gets.
    fn stats(&self) -> CommStats {
        self.stats
    }

    fn state(&self) -> CollectiveState {
        let mut last_pushed: Vec<(String, u64)> = self
            .last_pushed
            .iter()
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        last_pushed.sort();
        CollectiveState {
            pending: Vec::new(),
            written: Vec::new(),
            last_pushed,
            waited_s: self.waited.carried_s(),
        }
    }

    fn restore(&mut self, state: CollectiveState) {
        self.waited.restore(state.waited_s);
        self.last_pushed.extend(state.last_pushed);
    }

    /// The server's models are dropped by the driver (`DropJob`); no channel keys remain.
    fn residual_keys(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The error of a round that did not complete in time: a [`CommError::Timeout`] naming the
/// round and the first worker that has not pushed, as the channel collectives name the key
/// and the worker they waited for.
async fn timeout_error(
    mut c: PsClient,
    job: &str,
    name: &str,
    round: u64,
    waited: Duration,
) -> CommError {
    let status = match c.status().await {
        Ok(s) => s,
        Err(e) => return CommError::Ps(e),
    };
    let model = status
        .models
        .iter()
        .find(|m| m.job == job && m.name == name);
    match model.and_then(|m| m.missing.first()) {
        Some(&worker) => CommError::Timeout {
            key: format!("ps:{name}@{round}"),
            worker: worker as usize,
            waited,
        },
        None => CommError::Ps(PsError::Rpc {
            addr: c.addr().to_string(),
            op: "pull",
            status: Box::new(tonic::Status::deadline_exceeded(format!(
                "round {round} of '{name}' did not complete in {waited:.1?}: {}",
                model.map_or_else(
                    || "the model is gone".to_string(),
                    |m| format!("{} of {} workers pushed", m.pushed, m.workers)
                )
            ))),
        }),
    }
}
