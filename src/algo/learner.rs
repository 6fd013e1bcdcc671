//! What the worker loop needs from a model: the one trait every model implements, in the
//! spirit of linfa's fit/predict traits, over flat `f32` parameters.
//!
//! An epoch is `steps_per_epoch` local steps (each may ask for a gradient step through the
//! collective), then, if the learner has one, an epoch synchronisation (a vector averaged
//! over the workers and applied), then an evaluation. A learner never talks to the
//! collective itself: it says what to average and applies the mean, so the same learner
//! runs on every channel, every sync mode and the parameter server, and the loop that
//! drives it (`job::worker`) is written once.

use serde::{Deserialize, Serialize};

use crate::data::{BinaryLabels, DataError};

use super::admm::Reg;
use super::{ModelKind, OptimKind};

/// A named stretch of the flat parameter vector (a layer's weights, a bias, a centroid
/// table); the segments of a learner tile its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Name, unique within the model.
    pub name: String,
    /// Number of `f32` values.
    pub len: usize,
}

impl Segment {
    /// A segment of `len` values called `name`.
    pub fn new(name: &str, len: usize) -> Self {
        Segment {
            name: name.to_string(),
            len,
        }
    }
}

/// A 64-bit FNV-1a hash of `segments`' names and lengths, in order.
pub fn segments_hash(segments: &[Segment]) -> u64 {
    fnv1a(segments.iter().map(|s| format!("{}:{};", s.name, s.len)))
}

/// A 64-bit FNV-1a hash of the bytes of `parts`, in order.
pub fn fnv1a(parts: impl IntoIterator<Item = String>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// What a learner carries between rounds and invocations; checkpoints store it whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerState {
    /// The parameters the collectives average or step (ADMM: the local `w_i`; KMeans: the
    /// centroids).
    pub params: Vec<f32>,
    /// Optimizer state (ADMM: `z`, `u` and the last local primal residual).
    pub aux: Vec<f32>,
}

/// How a learner starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// From this state, on every worker.
    Ready(LearnerState),
    /// From worker 0's vector (`own` on worker 0 only), broadcast to all, then handed to
    /// [`Learner::state_from_broadcast`].
    Broadcast {
        /// Worker 0's proposal.
        own: Option<Vec<f32>>,
        /// Its length.
        len: usize,
    },
}

/// What the loop does with the gradient a step wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSync {
    /// Nothing: the learner applied the step locally.
    Local,
    /// A synchronous SGD step through the collective with this learning rate.
    Gradient {
        /// Learning rate.
        lr: f32,
    },
    /// The mean of the workers' gradients, handed to
    /// [`Learner::apply_mean_gradient`], which steps: for step rules whose state must
    /// follow the averaged gradient (AdaGrad, so that a rare feature seen by one worker is
    /// not stepped a worker-count times too little).
    MeanGradient,
}

/// One local step's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Mean loss of the batch, before the step.
    pub loss: f32,
    /// What to do with the gradient.
    pub sync: StepSync,
}

/// Metrics an epoch produced; `None` where they do not apply.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    /// Training loss, when the learner defines it (otherwise the mean batch loss).
    pub train_loss: Option<f64>,
    /// Loss on the worker's validation rows.
    pub val_loss: Option<f64>,
    /// Accuracy on the validation rows, in [0, 1].
    pub val_accuracy: Option<f64>,
    /// Loss on the worker's share of the test set (`--test-data`).
    pub test_loss: Option<f64>,
    /// Accuracy on the worker's share of the test set, in [0, 1].
    pub test_accuracy: Option<f64>,
    /// KMeans: within-cluster sum of squares over all rows.
    pub objective: Option<f64>,
    /// ADMM: mean over workers of `||w_i - z||`.
    pub primal_residual: Option<f64>,
    /// ADMM: `rho ||z - z_prev||`.
    pub dual_residual: Option<f64>,
}

impl Metrics {
    /// `self` with every field `other` has set taken from `other`.
    pub fn or(self, other: Metrics) -> Metrics {
        Metrics {
            train_loss: other.train_loss.or(self.train_loss),
            val_loss: other.val_loss.or(self.val_loss),
            val_accuracy: other.val_accuracy.or(self.val_accuracy),
            test_loss: other.test_loss.or(self.test_loss),
            test_accuracy: other.test_accuracy.or(self.test_accuracy),
            objective: other.objective.or(self.objective),
            primal_residual: other.primal_residual.or(self.primal_residual),
            dual_residual: other.dual_residual.or(self.dual_residual),
        }
    }
}

/// What applying an epoch's mean produced.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EpochSync {
    /// Metrics of this epoch.
    pub current: Metrics,
    /// Metrics of the previous epoch that only this round could compute (ADMM's primal
    /// residual travels one round late); they complete the previous epoch's record.
    pub previous: Metrics,
}

/// A model with its optimizer and its partition, as the worker loop drives it.
pub trait Learner: Send {
    /// The segments of the parameter vector, in order.
    fn segments(&self) -> Vec<Segment>;

    /// A fingerprint of how the parameter vector is laid out (names, sizes and kinds of its
    /// pieces): a checkpoint or a model written for another layout has another one, so it is
    /// refused instead of being read as garbage of the right length.
    fn layout_hash(&self) -> u64 {
        segments_hash(&self.segments())
    }

    /// How training starts on this worker.
    fn init(&self) -> Result<Init, ModelError>;

    /// The state built from the broadcast vector of [`Init::Broadcast`].
    fn state_from_broadcast(&self, values: Vec<f32>) -> LearnerState {
        LearnerState {
            params: values,
            aux: Vec::new(),
        }
    }

    /// Local steps per epoch (0: an epoch is only its synchronisation).
    fn steps_per_epoch(&self) -> usize;

    /// Local step `step` of `epoch`: writes the gradient into `grad` and says what to do
    /// with it; a [`StepSync::Local`] step is applied to `state` here.
    fn step(
        &mut self,
        state: &mut LearnerState,
        epoch: u32,
        step: usize,
        grad: &mut Vec<f32>,
    ) -> Step;

    /// True when an epoch ends with a vector averaged over the workers.
    fn syncs_each_epoch(&self) -> bool;

    /// The vector to average at the end of the epoch (called when
    /// [`Self::syncs_each_epoch`]).
    fn epoch_vector(&self, state: &LearnerState) -> Vec<f32>;

    /// Applies the mean of the epoch vectors.
    fn apply_epoch_mean(&self, state: &mut LearnerState, mean: &[f32]) -> EpochSync;

    /// Metrics of the model after the epoch (validation loss and accuracy...).
    fn evaluate(&self, state: &LearnerState) -> Metrics;

    /// True when training may stop early, from the previous epoch's metrics (complete) and
    /// this one's.
    fn converged(&self, previous: Option<&Metrics>, current: &Metrics) -> bool;

    /// Steps `state` with the workers' mean gradient (after a [`StepSync::MeanGradient`]).
    fn apply_mean_gradient(&self, _state: &mut LearnerState, _mean: &mut [f32]) {
        unreachable!("a learner that asks for the mean gradient applies it")
    }

    /// A last vector to average once training is over (ADMM: the final primal residual).
    fn closing_vector(&self, _state: &LearnerState) -> Option<Vec<f32>> {
        None
    }

    /// The metrics completing the last epoch, from the mean of the closing vectors.
    fn apply_closing_mean(&self, _mean: &[f32]) -> Metrics {
        Metrics::default()
    }

    /// The trained model the worker reports (ADMM: the consensus `z`).
    fn result(&self, state: &LearnerState) -> Vec<f32>;

    /// (training rows, validation rows) of this worker.
    fn rows(&self) -> (usize, usize);

    /// Rows of this worker's share of the test set (0 without one).
    fn test_rows(&self) -> usize {
        0
    }

    /// What to try when the model's numbers stop being finite.
    fn divergence_hint(&self) -> String {
        "check the data for values too large for 32-bit floats".to_string()
    }
}

/// Everything a learner is built from: hyper-parameters and this worker's place in the job.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    /// The model.
    pub model: ModelKind,
    /// The optimizer.
    pub optim: OptimKind,
    /// Number of features.
    pub n_features: usize,
    /// Raw label values of the two classes (classifiers).
    pub labels: Option<BinaryLabels>,
    /// Learning rate.
    pub lr: f32,
    /// How a gradient becomes a step.
    pub step: super::StepRule,
    /// Regularisation strength.
    pub lam: f32,
    /// Regulariser.
    pub reg: Reg,
    /// ADMM penalty.
    pub rho: f32,
    /// ADMM: local epochs per round.
    pub local_epochs: u32,
    /// Early-stop tolerance (0: off).
    pub tol: f64,
    /// KMeans: clusters.
    pub k: usize,
    /// KMeans: file of initial centroids.
    pub init_centroids: Option<String>,
    /// Seed of shuffles and seeding.
    pub seed: u64,
    /// Fraction of each partition held out.
    pub val_ratio: f64,
    /// This worker.
    pub worker: usize,
    /// Workers in the job.
    pub workers: usize,
    /// Minibatches per epoch, the same on every worker.
    pub steps_per_epoch: usize,
    /// Rows in all partitions.
    pub total_rows: usize,
    /// Compute threads ([`super::threads::vcpus_for_memory`] of the worker's memory).
    pub threads: usize,
    /// CNNs: what the partition location records about its images.
    pub images: Option<crate::data::images::ImageFacts>,
    /// CNNs: momentum of the SGD step.
    pub momentum: f32,
    /// CNNs: multiplies every layer's channel count (1 = the published network).
    pub width: f32,
    /// Epochs of the job (CNNs decay their learning rate over them).
    pub epochs: u32,
}

/// A learner that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model and the spec or data do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// Reading model input (initial centroids) failed.
    #[error("reading {what}")]
    Input {
        /// What was read.
        what: String,
        /// Why it failed.
        #[source]
        source: DataError,
    },
}
