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

use super::client::{PsClient, PsError};
use super::store::Mode;
use crate::channel::Channel;
use crate::comm::{CommError, CommStats, Keys};

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
    stats: CommStats,
}

/// The model a gradient-averaging job keeps on the server.
pub const MODEL: &str = "model";

impl PsCollective {
    /// Connects worker `worker` of `n` of `job`; `channel` is watched for the abort flag.
    pub async fn connect(
        addr: &str,
        token: Option<&str>,
        channel: Arc<dyn Channel>,
        job: &str,
        worker: usize,
        n: usize,
        wait_timeout: Duration,
    ) -> Result<Self, PsError> {
        Ok(PsCollective {
            client: PsClient::connect(addr, token).await?,
            channel,
            keys: Keys::new(job),
            job: job.to_string(),
            worker,
            n,
            wait_timeout,
            deadline: None,
            registered: HashSet::new(),
            last_pushed: HashMap::new(),
            stats: CommStats::default(),
        })
    }

    /// Waits stop with [`CommError::Interrupted`] at `deadline`.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The round last pushed to each model (for the checkpoint).
    pub fn last_pushed(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .last_pushed
            .iter()
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        v.sort();
        v
    }

    /// Restores what [`Self::last_pushed`] returned in the previous invocation.
    pub fn restore_last_pushed(&mut self, rounds: &[(String, u64)]) {
        self.last_pushed.extend(rounds.iter().cloned());
    }

    /// Traffic so far (pushes count as puts, pulls as gets).
    pub fn stats(&self) -> CommStats {
        self.stats
    }

    /// Registers `name` with `initial` values (zeros of `len` when none) once per
    /// invocation. When a resumed worker (`round > 0`) finds the model newly created, the
    /// server lost it (expired, or restarted without `--dir`): an error, not a silent reset.
    pub async fn ensure(
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
        if reply.created && round > 0 && name == MODEL {
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

    /// One SGD step on the server's model: `m += scale * grad` from every worker, then the
    /// model after round `round`.
    pub async fn grad_step(
        &mut self,
        round: u64,
        grad: &[f32],
        scale: f32,
    ) -> Result<Vec<f32>, CommError> {
        self.push_pull(MODEL, round, Mode::Grad { scale }, grad)
            .await
    }

    /// The mean of `values` over all workers.
    pub async fn mean(&mut self, round: u64, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let name = format!("mean-{}", values.len());
        self.ensure(&name, values.len(), None, round).await?;
        self.push_pull(&name, round, Mode::Average, values).await
    }

    /// The root's `values` on every worker (`own` is `Some` on the root only).
    pub async fn broadcast(
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
                return Ok(p.values);
            }
            if since.elapsed() >= self.wait_timeout {
                // One last pull whose error says how many workers pushed.
                let c = self.client.clone();
                let e = timeout_error(c, &job, name, round, since.elapsed()).await;
                return Err(CommError::Ps(e));
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

/// The error of a round that did not complete in time, saying how many workers pushed.
async fn timeout_error(
    mut c: PsClient,
    job: &str,
    name: &str,
    round: u64,
    waited: Duration,
) -> PsError {
    let pushed = match c.status().await {
        Ok(s) => s
            .models
            .iter()
            .find(|m| m.job == job && m.name == name)
            .map_or_else(
                || "the model is gone".to_string(),
                |m| format!("{} of {} workers pushed", m.pushed, m.workers),
            ),
        Err(e) => return e,
    };
    PsError::Rpc {
        addr: c.addr().to_string(),
        op: "pull",
        status: Box::new(tonic::Status::deadline_exceeded(format!(
            "round {round} of '{name}' did not complete in {waited:.1?}: {pushed}"
        ))),
    }
}
