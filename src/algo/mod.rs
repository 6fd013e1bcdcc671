//! Models and optimizers as pure compute over flat `f32` parameter vectors. Nothing here
//! knows about channels, platforms or jobs.
//!
//! The worker loop drives every model through one trait, [`learner::Learner`]. A model
//! trained by gradients implements [`optim::Differentiable`] and gets every optimizer from
//! [`optim::Optimized`]; a model with its own round (KMeans) implements `Learner` directly.
//! [`build`] is the registry from a model's name to its learner.

pub mod admm;
pub mod cnn;
pub mod kmeans;
pub mod learner;
pub mod linear;
pub mod optim;
pub mod sgd;
pub mod threads;
pub mod vecmath;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use learner::{Learner, ModelError, TrainSpec};

/// The learner of `spec.model` on this worker's partition `data`, measured after every
/// epoch on its share of the test set `test` when given: the registry of models.
pub fn build(
    spec: &TrainSpec,
    data: Dataset,
    test: Option<Dataset>,
) -> Result<Box<dyn Learner>, ModelError> {
    match spec.model {
        ModelKind::Lr | ModelKind::Svm | ModelKind::SparseLr | ModelKind::SparseSvm => {
            linear::learner(spec, data, test)
        }
        ModelKind::Kmeans | ModelKind::SparseKmeans if test.is_some() => Err(ModelError::Invalid(
            "a test set measures classifiers; KMeans has none".into(),
        )),
        ModelKind::Kmeans | ModelKind::SparseKmeans => kmeans::learner(spec, data),
        ModelKind::Resnet20 | ModelKind::Resnet18 | ModelKind::Mobilenet => {
            cnn::learner(spec, data, test)
        }
    }
}

/// The model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum ModelKind {
    /// Logistic regression on dense features.
    Lr,
    /// Linear SVM (hinge loss) on dense features.
    Svm,
    /// Logistic regression on sparse (CSR) features.
    SparseLr,
    /// Linear SVM (hinge loss) on sparse (CSR) features.
    SparseSvm,
    /// Lloyd's KMeans on dense features.
    Kmeans,
    /// Lloyd's KMeans on sparse (CSR) features.
    SparseKmeans,
    /// ResNet-20 for small images (about 0.27 M parameters): quick CNN runs.
    Resnet20,
    /// ResNet-18 in its CIFAR form (about 11.2 M parameters).
    Resnet18,
    /// MobileNet v1 for 32x32 images (about 3.2 M parameters).
    Mobilenet,
}

impl ModelKind {
    /// True for models that keep their data in CSR form.
    pub fn is_sparse(self) -> bool {
        matches!(
            self,
            ModelKind::SparseLr | ModelKind::SparseSvm | ModelKind::SparseKmeans
        )
    }

    /// True for the convolutional networks, which train on image partitions.
    pub fn is_cnn(self) -> bool {
        matches!(
            self,
            ModelKind::Resnet20 | ModelKind::Resnet18 | ModelKind::Mobilenet
        )
    }

    /// True for clustering models (no labels, no optimizer).
    pub fn is_clustering(self) -> bool {
        matches!(self, ModelKind::Kmeans | ModelKind::SparseKmeans)
    }

    /// The loss of a linear model; `None` for clustering.
    pub fn loss(self) -> Option<linear::Loss> {
        match self {
            ModelKind::Lr | ModelKind::SparseLr => Some(linear::Loss::Logistic),
            ModelKind::Svm | ModelKind::SparseSvm => Some(linear::Loss::Hinge),
            ModelKind::Kmeans | ModelKind::SparseKmeans => None,
            ModelKind::Resnet20 | ModelKind::Resnet18 | ModelKind::Mobilenet => None,
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Lr => "lr",
            ModelKind::Svm => "svm",
            ModelKind::SparseLr => "sparse_lr",
            ModelKind::SparseSvm => "sparse_svm",
            ModelKind::Kmeans => "kmeans",
            ModelKind::SparseKmeans => "sparse_kmeans",
            ModelKind::Resnet20 => "resnet20",
            ModelKind::Resnet18 => "resnet18",
            ModelKind::Mobilenet => "mobilenet",
        })
    }
}

/// How workers combine their work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum OptimKind {
    /// Average gradients after every minibatch, then take the same SGD step everywhere.
    GradAvg,
    /// Train locally for an epoch, then average the models.
    ModelAvg,
    /// Consensus ADMM: local epochs on the loss plus a proximal term, then a z/u update.
    Admm,
}

/// How a gradient becomes a step, whatever the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum StepRule {
    /// `w -= lr * g`: suits dense features of similar scales.
    Sgd,
    /// AdaGrad: each coordinate's step divided by the root of its summed squared gradients,
    /// so rare features (most of a sparse model's) learn as fast as frequent ones.
    Adagrad,
}

impl std::fmt::Display for StepRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepRule::Sgd => "sgd",
            StepRule::Adagrad => "adagrad",
        })
    }
}

impl std::fmt::Display for OptimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimKind::GradAvg => "grad_avg",
            OptimKind::ModelAvg => "model_avg",
            OptimKind::Admm => "admm",
        })
    }
}
