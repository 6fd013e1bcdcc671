//! Records workers leave on the channel for the driver (progress, result, failure) and for
//! their own next invocation (checkpoint). Keys live under `{job}/worker/`.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::algo::learner::{LearnerState, Metrics};
use crate::channel::meter::Usage;
use crate::channel::{Channel, ChannelError, codec};
use crate::comm::{CollectiveState, CommStats};

/// Key of worker `w`'s record of kind `what`.
pub fn key(job: &str, what: &str, w: usize) -> String {
    format!("{job}/worker/{what}/{w}")
}

/// Record kinds.
pub const PROGRESS: &str = "progress";
/// Final result of a worker.
pub const RESULT: &str = "result";
/// Failure report of a worker.
pub const FAILURE: &str = "failure";
/// Checkpoint between invocations.
pub const CHECKPOINT: &str = "checkpoint";
/// Key of the job's own record ([`JobRecord`]).
pub fn job_key(job: &str) -> String {
    format!("{job}/control/job")
}

/// What the driver leaves on the channel about the job itself, so that anyone (`lambdaml
/// gc`) can tell a job that may still run from one that cannot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// When the driver started the job (milliseconds since the Unix epoch).
    pub started_unix_ms: u64,
    /// After this no invocation of the job runs any more (its life bound plus one
    /// invocation), whatever happened to its driver.
    pub ends_by_unix_ms: u64,
    /// The job as planned ([`crate::job::event::JobSpec`], JSON), without its secrets (the
    /// channel's password, the parameter server's token): what `lambdaml job attach` needs
    /// to follow and finish the job from another driver.
    pub spec_json: String,
}

impl JobRecord {
    /// `spec` as recorded: JSON, without secrets.
    pub fn spec_json(spec: &crate::job::event::JobSpec) -> String {
        let recorded = crate::job::event::JobSpec {
            channel: spec.channel.without_secrets(),
            ps_token: None,
            ..spec.clone()
        };
        serde_json::to_string(&recorded).expect("specs serialise")
    }
}

/// A running invocation's heartbeat ([`crate::job::liveness::Beat`]).
pub const ALIVE: &str = "alive";
/// The worker's current generation, written by the driver when it re-invokes a dead worker.
pub const GENERATION: &str = "generation";
/// Every record kind (for cleanup).
pub const ALL: [&str; 6] = [PROGRESS, RESULT, FAILURE, CHECKPOINT, ALIVE, GENERATION];

/// Metrics of one worker for one epoch (a line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// Worker index.
    pub worker: usize,
    /// Epoch, from 1.
    pub epoch: u32,
    /// Mean minibatch loss over the epoch (local data).
    pub train_loss: f64,
    /// Loss on the worker's validation rows after the epoch's synchronisation (classifiers).
    pub val_loss: Option<f64>,
    /// Accuracy on the validation rows, in [0, 1] (classifiers).
    pub val_accuracy: Option<f64>,
    /// Loss on the worker's share of the test set (`--test-data`).
    #[serde(default)]
    pub test_loss: Option<f64>,
    /// Accuracy on the worker's share of the test set, in [0, 1].
    #[serde(default)]
    pub test_accuracy: Option<f64>,
    /// KMeans: within-cluster sum of squares over all workers' rows, for the centroids the
    /// round started with.
    pub objective: Option<f64>,
    /// ADMM: mean over workers of `||w_i - z||` after the round.
    pub primal_residual: Option<f64>,
    /// ADMM: `rho ||z - z_prev||`.
    pub dual_residual: Option<f64>,
    /// Training rows of the worker.
    pub n_train: u64,
    /// Validation rows of the worker.
    pub n_val: u64,
    /// Rows of the worker's share of the test set.
    #[serde(default)]
    pub n_test: u64,
    /// Seconds computing gradients, steps and validation in this epoch.
    pub compute_s: f64,
    /// Seconds in collectives in this epoch, waiting included.
    pub comm_s: f64,
    /// Of `comm_s`, seconds waiting for peers (or for the parameter server's round).
    #[serde(default)]
    pub wait_s: f64,
    /// Seconds loading data (and the checkpoint) in invocations that started in this epoch.
    #[serde(default)]
    pub load_s: f64,
    /// Channel requests and bytes of this worker during the epoch (records included).
    #[serde(default)]
    pub usage: Usage,
    /// Collective rounds in the epoch (grad_avg: one per minibatch).
    #[serde(default)]
    pub rounds: u64,
    /// The longest of those rounds, in seconds.
    #[serde(default)]
    pub round_max_s: f64,
    /// Wall seconds of the epoch in this worker (across invocations).
    pub epoch_s: f64,
    /// Invocation (0-based) that finished the epoch.
    pub invocation: u32,
    /// Peak resident memory of that invocation's process so far, in MB (Linux; what to
    /// size `memory_mb` by).
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
}

impl EpochRecord {
    /// The model metrics this record holds.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            train_loss: Some(self.train_loss),
            val_loss: self.val_loss,
            val_accuracy: self.val_accuracy,
            test_loss: self.test_loss,
            test_accuracy: self.test_accuracy,
            objective: self.objective,
            primal_residual: self.primal_residual,
            dual_residual: self.dual_residual,
        }
    }

    /// Sets every metric that `m` has.
    pub fn set_metrics(&mut self, m: Metrics) {
        let all = self.metrics().or(m);
        self.train_loss = all.train_loss.unwrap_or(self.train_loss);
        self.val_loss = all.val_loss;
        self.val_accuracy = all.val_accuracy;
        self.test_loss = all.test_loss;
        self.test_accuracy = all.test_accuracy;
        self.objective = all.objective;
        self.primal_residual = all.primal_residual;
        self.dual_residual = all.dual_residual;
    }
}

/// Latest progress of a worker, overwritten every epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Epochs finished.
    pub epochs_done: u32,
    /// The last epoch's metrics.
    pub last: Option<EpochRecord>,
    /// Invocations so far (1 = no re-invocation yet).
    pub invocations: u32,
}

/// What a worker reports when it finishes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerResult {
    /// Worker index.
    pub worker: usize,
    /// Worker 0's final parameters (`model.bin`); empty from the others, whose `digest`
    /// says whether they hold the same model (a result as large as the model from every
    /// worker made the driver read N models to keep one).
    pub params: Vec<f32>,
    /// CRC-32 of the worker's final parameters ([`crate::job::summary::digest`]).
    pub digest: String,
    /// Metrics of every epoch.
    pub history: Vec<EpochRecord>,
    /// Invocations used (1 + re-invocations).
    pub invocations: u32,
    /// Channel keys left for the driver to delete.
    pub residual_keys: Vec<String>,
    /// Channel traffic of the worker's collectives.
    pub comm: CommStats,
    /// Every channel request of the worker's invocations, as the service counts them.
    pub usage: Usage,
    /// Seconds its invocations ran (what Lambda bills, rounded up to the millisecond).
    pub billed_s: f64,
    /// Requests reading the dataset from S3 in all its invocations (none for local data);
    /// kept apart from `usage` because they go to S3 whatever the channel is.
    #[serde(default)]
    pub data_usage: Usage,
    /// The parameter vector's layout ([`crate::algo::learner::Learner::layout_hash`]).
    #[serde(default)]
    pub layout: Option<u64>,
}

/// What a worker reports when it fails.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerFailure {
    /// Worker index.
    pub worker: usize,
    /// The error, with its causes.
    pub message: String,
    /// True when the invocation was lost (killed, out of memory, past its deadline) as its
    /// platform saw it, rather than failing on its own: the driver re-invokes it from its
    /// checkpoint (a worker's own error would only happen again).
    pub lost: bool,
    /// The generation of the invocation that failed ([`crate::job::event::WorkerEvent`]).
    pub generation: u32,
    /// The invocation that failed.
    pub invocation: u32,
    /// Channel keys left for the driver to delete.
    pub residual_keys: Vec<String>,
}

/// State carried from one invocation to the next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// The learner's parameters and optimizer state (empty before the first round).
    pub model: LearnerState,
    /// Training is over (last round or stopping rule); only reporting is left.
    pub training_done: bool,
    /// Current epoch (0-based).
    pub epoch: u32,
    /// Next minibatch within the epoch.
    pub step: usize,
    /// Next collective round.
    pub round: u64,
    /// Accumulators of the unfinished epoch.
    pub acc: EpochAcc,
    /// Finished epochs.
    pub history: Vec<EpochRecord>,
    /// What the collective needs to carry on (keys still to delete, server rounds).
    pub collective: CollectiveState,
    /// Invocations used so far.
    pub invocations: u32,
    /// Traffic so far.
    pub comm: CommStats,
    /// Channel requests of the previous invocations.
    pub usage: Usage,
    /// Billed seconds of the previous invocations.
    pub billed_s: f64,
    /// Requests reading the dataset (S3 `GetObject`s of the manifest and the partition), of
    /// every invocation so far, this one's included.
    #[serde(default)]
    pub data_usage: Usage,
    /// The layout of `model.params`, checked when an invocation takes the checkpoint up.
    #[serde(default)]
    pub layout: Option<u64>,
}

impl Checkpoint {
    /// Records that the state holds a model laid out as `layout`, failing when it already
    /// holds one laid out otherwise (`key`: where the checkpoint was read, for the message).
    pub fn adopt_layout(&mut self, layout: u64, key: &str) -> anyhow::Result<()> {
        match self.layout {
            Some(found) if found != layout => anyhow::bail!(
                "checkpoint '{key}' holds a model laid out differently from this one (layout \
                 {found:016x}, this model {layout:016x}): was the job resumed by another \
                 version of lambdaml, or with another --model or --width?"
            ),
            _ => {
                self.layout = Some(layout);
                Ok(())
            }
        }
    }
}

/// Running sums of the current epoch.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochAcc {
    /// Sum of minibatch losses.
    pub loss_sum: f64,
    /// Minibatches done.
    pub batches: u64,
    /// Seconds computing.
    pub compute_s: f64,
    /// Seconds in collectives.
    pub comm_s: f64,
    /// Of which waiting.
    pub wait_s: f64,
    /// Seconds loading.
    pub load_s: f64,
    /// Wall seconds.
    pub wall_s: f64,
    /// Channel requests of the epoch in earlier invocations.
    pub usage: Usage,
    /// Collective rounds.
    pub rounds: u64,
    /// Longest round.
    pub round_max_s: f64,
}

/// Errors reading a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The record is not valid.
    #[error("record '{key}' is unreadable: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Encodes a record: bincode (exact floats) inside a checksummed frame. Bincode is
/// positional: a record's fields must never be skipped when serialised
/// (`skip_serializing_if`), or every field after one skipped is read from the wrong bytes.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("records serialise");
    codec::encode_bytes(&body)
}

/// Decodes a record read from `key`.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RecordError> {
    let corrupt = |message: String| RecordError::Corrupt {
        key: key.to_string(),
        message,
    };
    let body = codec::decode_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| corrupt(e.to_string()))
}

/// Writes a record.
pub async fn put<T: Serialize>(ch: &dyn Channel, key: &str, value: &T) -> Result<(), ChannelError> {
    ch.put(key, encode(value)).await
}

/// Reads a record, `None` when absent.
pub async fn get<T: DeserializeOwned>(
    ch: &dyn Channel,
    key: &str,
) -> Result<Option<T>, RecordError> {
    match ch.get(key).await? {
        Some(bytes) => decode(key, &bytes).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records whose optional fields are all empty read back whole (bincode has no field
    /// names: a field left out when empty made every later field unreadable).
    #[test]
    fn records_with_empty_optional_fields_read_back() {
        let record = EpochRecord {
            worker: 1,
            epoch: 2,
            train_loss: 0.5,
            val_loss: None,
            val_accuracy: None,
            test_loss: None,
            test_accuracy: None,
            objective: None,
            primal_residual: None,
            dual_residual: None,
            n_train: 10,
            n_val: 0,
            n_test: 0,
            compute_s: 1.0,
            comm_s: 0.5,
            wait_s: 0.25,
            load_s: 0.0,
            usage: Usage::default(),
            rounds: 3,
            round_max_s: 0.1,
            epoch_s: 2.0,
            invocation: 0,
            peak_rss_mb: None,
        };
        let progress = Progress {
            epochs_done: 2,
            last: Some(record.clone()),
            invocations: 1,
        };
        let back: Progress = decode("k", &encode(&progress)).unwrap();
        assert_eq!(back, progress);
        let with = EpochRecord {
            test_accuracy: Some(0.75),
            peak_rss_mb: Some(12.0),
            ..record
        };
        assert_eq!(decode::<EpochRecord>("k", &encode(&with)).unwrap(), with);
    }

    /// A checkpoint remembers the layout of its model, and one taken up by a model laid out
    /// otherwise is refused, naming the key and both layouts.
    #[test]
    fn a_checkpoint_of_another_layout_is_refused() {
        let mut ckpt: Checkpoint = serde_json::from_value(serde_json::json!({
            "model": {"params": [], "aux": []},
            "training_done": false, "epoch": 0, "step": 0, "round": 0,
            "acc": EpochAcc::default(), "history": [],
            "collective": CollectiveState::default(), "invocations": 1,
            "comm": CommStats::default(), "usage": Usage::default(), "billed_s": 0.0
        }))
        .expect("a checkpoint written before layouts were recorded still reads");
        ckpt.adopt_layout(0xabc, "job/worker/checkpoint/0").unwrap();
        assert_eq!(ckpt.layout, Some(0xabc));
        ckpt.adopt_layout(0xabc, "job/worker/checkpoint/0").unwrap();
        let err = ckpt
            .adopt_layout(0xdef, "job/worker/checkpoint/0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("job/worker/checkpoint/0")
                && err.contains("0000000000000abc")
                && err.contains("0000000000000def"),
            "{err}"
        );
    }
}
