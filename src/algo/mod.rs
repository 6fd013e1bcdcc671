//! Models and optimizers as pure compute over flat `f32` parameter vectors. Nothing here
//! knows about channels, platforms or jobs.

pub mod admm;
pub mod kmeans;
pub mod linear;
pub mod sgd;

use serde::{Deserialize, Serialize};

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
}

impl ModelKind {
    /// True for models that keep their data in CSR form.
    pub fn is_sparse(self) -> bool {
        matches!(
            self,
            ModelKind::SparseLr | ModelKind::SparseSvm | ModelKind::SparseKmeans
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

impl std::fmt::Display for OptimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimKind::GradAvg => "grad_avg",
            OptimKind::ModelAvg => "model_avg",
            OptimKind::Admm => "admm",
        })
    }
}
