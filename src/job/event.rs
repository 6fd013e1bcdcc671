//! What an invocation receives: the job (same for every worker) and its own coordinates.

use serde::{Deserialize, Serialize};

use super::config::JobConfig;
use crate::algo::learner::TrainSpec;
use crate::channel::ChannelUrl;
use crate::comm::PsTarget;
use crate::data::{BinaryLabels, DataLocation};
use crate::platform::PlatformSpec;

/// The resolved job, as planned by the driver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSpec {
    /// Unique id; prefix of every channel key of the job.
    pub job_id: String,
    /// The configuration, with defaults filled in.
    pub config: JobConfig,
    /// Channel URL.
    pub channel: ChannelUrl,
    /// Partition location (one partition per worker): a directory or `s3://bucket/prefix`.
    pub data_location: DataLocation,
    /// The test set's partition location (`--test-data`), one partition per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_location: Option<DataLocation>,
    /// Number of features.
    pub n_features: usize,
    /// Raw label values of the two classes (classifiers only).
    pub labels: Option<BinaryLabels>,
    /// CNNs: the images' shape, classes and channel statistics (from the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<crate::data::images::ImageFacts>,
    /// Rows in all partitions.
    pub total_rows: usize,
    /// Minibatches per epoch, the same on every worker.
    pub steps_per_epoch: usize,
    /// How to invoke a worker again.
    pub platform: PlatformSpec,
    /// When the driver started the job (milliseconds since the Unix epoch): the job's life
    /// (`max_job_seconds`) is counted from it.
    pub started_unix_ms: u64,
    /// The parameter server's token (`--sync ps`), kept out of `config` so that it is never
    /// written to the run folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ps_token: Option<String>,
}

impl JobSpec {
    /// What worker `worker`'s learner is built from.
    pub fn train_spec(&self, worker: usize) -> TrainSpec {
        let c = &self.config;
        TrainSpec {
            model: c.model,
            optim: c.optim,
            n_features: self.n_features,
            labels: self.labels,
            lr: c.learning_rate(),
            step: c.step_rule(),
            lam: c.regularisation(self.training_rows()),
            reg: c.reg,
            rho: c.admm_penalty(),
            local_epochs: c.local_epochs,
            tol: c.tol,
            k: c.k,
            init_centroids: c.init_centroids.clone(),
            seed: c.seed,
            val_ratio: c.val_ratio,
            worker,
            workers: c.workers,
            steps_per_epoch: self.steps_per_epoch,
            total_rows: self.total_rows,
            threads: crate::algo::threads::vcpus_for_memory(c.memory_mb),
            images: self.images.clone(),
            momentum: c.momentum,
            width: c.width,
            epochs: c.epochs,
        }
    }

    /// Rows all workers train on (validation rows held out).
    pub fn training_rows(&self) -> usize {
        (self.total_rows as f64 * (1.0 - self.config.val_ratio)).round() as usize
    }

    /// The parameter server of `--sync ps`, with its token.
    pub fn ps_target(&self) -> Option<PsTarget> {
        self.config.ps_addr.as_ref().map(|addr| PsTarget {
            addr: addr.clone(),
            token: self.ps_token.clone(),
        })
    }
}

/// Milliseconds since the Unix epoch now (what `started_unix_ms` is measured in).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The event of one invocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerEvent {
    /// The job.
    pub job: JobSpec,
    /// This worker's index (and partition).
    pub worker: usize,
    /// 0 for the first invocation, then 1, 2, ... for re-invocations.
    pub invocation: u32,
    /// True when the invocation continues from a checkpoint.
    pub resume: bool,
    /// Which life of the worker this is: 0, then one more each time the driver re-invokes
    /// a worker it found dead. An invocation of an older generation than the channel's
    /// (one paused, then resumed after it was replaced) stops without writing anything.
    #[serde(default)]
    pub generation: u32,
    /// True when the driver re-invokes a dead worker: it continues from its checkpoint if
    /// it wrote one, else starts over.
    #[serde(default)]
    pub recover: bool,
}

/// The payload of an invocation of the `lambdaml worker` function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invocation {
    /// A training worker.
    Train(Box<WorkerEvent>),
    /// A `lambdaml bench channel` worker.
    BenchChannel(super::bench::BenchEvent),
    /// A health check (`lambdaml lambda ping`): the function answers with a [`Pong`].
    Ping(Ping),
}

/// Longest a ping may hold its invocation: Lambda's longest timeout.
pub const MAX_PING_SLEEP_MS: u64 = 900_000;

/// A health check of the worker function.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Ping {
    /// How long the function holds the invocation before answering, in milliseconds (at
    /// most [`MAX_PING_SLEEP_MS`]): to try a platform's timeout.
    #[serde(default)]
    pub sleep_ms: u64,
}

/// What the worker function answers to a [`Ping`]: which binary runs, and whether the
/// instance is a warm one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pong {
    /// The `lambdaml` version of the function's code.
    pub version: String,
    /// The process serving the invocation (the same one across warm invocations).
    pub pid: u32,
    /// Invocations this process has served, this one included (1: a cold start).
    pub served: u64,
    /// The machine's architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// The function's memory, in MB, as the platform set it (Lambda's
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory_mb: Option<u32>,
}

impl Ping {
    /// Answers the ping after holding it `sleep_ms`; `served` counts this process's
    /// invocations.
    pub async fn answer(&self, served: u64) -> anyhow::Result<Pong> {
        anyhow::ensure!(
            self.sleep_ms <= MAX_PING_SLEEP_MS,
            "a ping may hold its invocation at most {MAX_PING_SLEEP_MS} ms, not {}",
            self.sleep_ms
        );
        tokio::time::sleep(std::time::Duration::from_millis(self.sleep_ms)).await;
        Ok(Pong {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            served,
            arch: std::env::consts::ARCH.to_string(),
            memory_mb: std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .ok()
                .and_then(|m| m.parse().ok()),
        })
    }
}
