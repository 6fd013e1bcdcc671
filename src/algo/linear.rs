//! Linear models (logistic regression, linear SVM) over dense or CSR features.
//!
//! Parameters are one flat vector `[w_0 .. w_{d-1}, b]`: weights then bias. The objective is
//! `mean(loss(w.x + b, y)) + lam/2 * ||w||^2` (the bias is not regularised).

use super::OptimKind;
use super::learner::{Learner, Metrics, ModelError, Segment, TrainSpec};
use super::optim::{Differentiable, Optimized};
use crate::data::{BinaryLabels, CsrMatrix, Dataset, DenseMatrix, Features};

/// The per-example loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Logistic loss on targets {0, 1}.
    Logistic,
    /// Hinge loss on targets {-1, +1}.
    Hinge,
}

impl Loss {
    /// The target value of the negative and positive class.
    pub fn targets(self) -> (f32, f32) {
        match self {
            Loss::Logistic => (0.0, 1.0),
            Loss::Hinge => (-1.0, 1.0),
        }
    }

    /// Loss and its derivative with respect to the score `z`.
    #[inline]
    pub fn value_and_slope(self, z: f32, y: f32) -> (f32, f32) {
        match self {
            Loss::Logistic => {
                // softplus(z) - y z, computed without overflow.
                let softplus = if z > 0.0 {
                    z + (-z).exp().ln_1p()
                } else {
                    z.exp().ln_1p()
                };
                let sigmoid = if z >= 0.0 {
                    1.0 / (1.0 + (-z).exp())
                } else {
                    let e = z.exp();
                    e / (1.0 + e)
                };
                (softplus - y * z, sigmoid - y)
            }
            Loss::Hinge => {
                let margin = y * z;
                if margin < 1.0 {
                    (1.0 - margin, -y)
                } else {
                    (0.0, 0.0)
                }
            }
        }
    }
}

/// Row access shared by dense and sparse matrices, so the kernels are written once and
/// monomorphised for each layout.
trait Rows {
    fn dot(&self, i: usize, w: &[f32]) -> f32;
    fn axpy(&self, i: usize, a: f32, out: &mut [f32]);
    /// Asks the CPU to start loading row `i`, which is used a few rows from now: rows come
    /// in shuffled order, so the hardware prefetcher cannot guess them, and a row that
    /// misses the cache would otherwise stall the loop.
    fn prefetch(&self, i: usize);
}

/// Starts loading the cache lines of `bytes` (at most the first four).
#[inline]
fn prefetch_bytes<T>(values: &[T]) {
    let start = values.as_ptr().cast::<u8>();
    let len = std::mem::size_of_val(values).min(256);
    for offset in (0..len).step_by(64) {
        // SAFETY: `offset` is within `values`; a prefetch reads nothing and cannot fault.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(start.add(offset).cast());
        }
        // Elsewhere (arm64 Lambda) the loop runs without: its intrinsic is not stable yet.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, offset);
    }
}

impl Rows for DenseMatrix {
    #[inline]
    fn dot(&self, i: usize, w: &[f32]) -> f32 {
        dot_dense(self.row(i), w)
    }
    #[inline]
    fn axpy(&self, i: usize, a: f32, out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(self.row(i)) {
            *o += a * x;
        }
    }
    #[inline]
    fn prefetch(&self, i: usize) {
        prefetch_bytes(self.row(i));
    }
}

impl Rows for CsrMatrix {
    #[inline]
    fn dot(&self, i: usize, w: &[f32]) -> f32 {
        let (idx, val) = self.row(i);
        idx.iter().zip(val).map(|(&j, &v)| w[j as usize] * v).sum()
    }
    #[inline]
    fn axpy(&self, i: usize, a: f32, out: &mut [f32]) {
        let (idx, val) = self.row(i);
        for (&j, &v) in idx.iter().zip(val) {
            out[j as usize] += a * v;
        }
    }
    #[inline]
    fn prefetch(&self, i: usize) {
        let (idx, val) = self.row(i);
        prefetch_bytes(idx);
        prefetch_bytes(val);
    }
}

/// How many rows ahead of the one in use a row is prefetched: far enough for a load from
/// memory (about 100 ns) to finish while the rows before it are computed.
const PREFETCH_AHEAD: usize = 8;

/// Dot product with eight independent accumulators, so the compiler can vectorise it.
#[inline]
pub fn dot_dense(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Validation result: sums, so workers' results can be pooled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Eval {
    /// Sum of per-example losses.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: u64,
    /// Examples evaluated.
    pub count: u64,
}

impl Eval {
    /// Mean loss (0 when empty).
    pub fn loss(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.loss_sum / self.count as f64
        }
    }
    /// Accuracy in [0, 1] (0 when empty).
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.correct as f64 / self.count as f64
        }
    }
}

/// A linear model of `n_features` weights plus a bias.
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    /// The loss.
    pub loss: Loss,
    /// Number of weights.
    pub n_features: usize,
    /// L2 regularisation strength.
    pub lam: f32,
}

impl Linear {
    /// Length of the parameter vector.
    pub fn n_params(&self) -> usize {
        self.n_features + 1
    }

    /// Maps raw labels to this loss's targets.
    pub fn targets(&self, raw: &[f32], labels: BinaryLabels) -> Vec<f32> {
        let (neg, pos) = self.loss.targets();
        raw.iter()
            .map(|&l| if labels.is_positive(l) { pos } else { neg })
            .collect()
    }

    /// Writes the gradient of the objective on `rows` into `grad` (overwritten) and returns
    /// the mean data loss of the batch (before the step).
    pub fn gradient(
        &self,
        params: &[f32],
        x: &Features,
        y: &[f32],
        rows: &[u32],
        grad: &mut [f32],
    ) -> f32 {
        match x {
            Features::Dense(m) => self.gradient_with(m, params, y, rows, grad),
            Features::Sparse(m) => self.gradient_with(m, params, y, rows, grad),
        }
    }

    fn gradient_with(
        &self,
        x: &impl Rows,
        params: &[f32],
        y: &[f32],
        rows: &[u32],
        grad: &mut [f32],
    ) -> f32 {
        let d = self.n_features;
        let (w, b) = (&params[..d], params[d]);
        grad.fill(0.0);
        let mut loss_sum = 0f32;
        let mut bias_grad = 0f32;
        let scale = 1.0 / rows.len().max(1) as f32;
        {
            let gw = &mut grad[..d];
            for (k, &r) in rows.iter().enumerate() {
                if let Some(&ahead) = rows.get(k + PREFETCH_AHEAD) {
                    x.prefetch(ahead as usize);
                }
                let r = r as usize;
                let z = x.dot(r, w) + b;
                let (loss, slope) = self.loss.value_and_slope(z, y[r]);
                loss_sum += loss;
                if slope != 0.0 {
                    x.axpy(r, slope * scale, gw);
                    bias_grad += slope;
                }
            }
            if self.lam != 0.0 {
                for (g, wj) in gw.iter_mut().zip(w) {
                    *g += self.lam * wj;
                }
            }
        }
        grad[d] = bias_grad * scale;
        loss_sum * scale
    }

    /// Loss and accuracy on `rows`.
    pub fn evaluate(&self, params: &[f32], x: &Features, y: &[f32], rows: &[u32]) -> Eval {
        match x {
            Features::Dense(m) => self.evaluate_with(m, params, y, rows),
            Features::Sparse(m) => self.evaluate_with(m, params, y, rows),
        }
    }

    fn evaluate_with(&self, x: &impl Rows, params: &[f32], y: &[f32], rows: &[u32]) -> Eval {
        let d = self.n_features;
        let (w, b) = (&params[..d], params[d]);
        let (_, pos) = self.loss.targets();
        let mut eval = Eval::default();
        for (k, &r) in rows.iter().enumerate() {
            if let Some(&ahead) = rows.get(k + PREFETCH_AHEAD) {
                x.prefetch(ahead as usize);
            }
            let r = r as usize;
            let z = x.dot(r, w) + b;
            eval.loss_sum += self.loss.value_and_slope(z, y[r]).0 as f64;
            eval.correct += u64::from((z >= 0.0) == (y[r] == pos));
            eval.count += 1;
        }
        eval
    }

    /// The full regularised objective on `rows` (for tests and convergence checks).
    pub fn objective(&self, params: &[f32], x: &Features, y: &[f32], rows: &[u32]) -> f64 {
        let d = self.n_features;
        let reg: f64 = params[..d].iter().map(|w| (*w as f64).powi(2)).sum::<f64>();
        self.evaluate(params, x, y, rows).loss() + 0.5 * self.lam as f64 * reg
    }
}

/// A linear classifier on one worker's partition: the [`Differentiable`] model that
/// `lr`, `svm`, `sparse_lr` and `sparse_svm` train with any optimizer.
pub struct LinearClassifier {
    model: Linear,
    features: Features,
    targets: Vec<f32>,
}

impl Differentiable for LinearClassifier {
    fn segments(&self) -> Vec<Segment> {
        vec![
            Segment::new("weights", self.model.n_features),
            Segment::new("bias", 1),
        ]
    }

    fn initial_params(&self) -> Vec<f32> {
        vec![0.0; self.model.n_params()]
    }

    fn n_rows(&self) -> usize {
        self.targets.len()
    }

    fn gradient(&self, params: &[f32], rows: &[u32], grad: &mut [f32]) -> f32 {
        self.model
            .gradient(params, &self.features, &self.targets, rows, grad)
    }

    fn evaluate(&self, params: &[f32], rows: &[u32]) -> Metrics {
        let eval = self
            .model
            .evaluate(params, &self.features, &self.targets, rows);
        Metrics {
            val_loss: Some(eval.loss()),
            val_accuracy: Some(eval.accuracy()),
            ..Metrics::default()
        }
    }
}

/// The learner of a linear model (`spec.model` with a loss) on `data`.
pub fn learner(spec: &TrainSpec, data: Dataset) -> Result<Box<dyn Learner>, ModelError> {
    let loss = spec
        .model
        .loss()
        .ok_or_else(|| ModelError::Invalid(format!("{} is not a linear model", spec.model)))?;
    let labels = spec
        .labels
        .ok_or_else(|| ModelError::Invalid("a classifier needs two label values".into()))?;
    let model = Linear {
        loss,
        n_features: spec.n_features,
        // With ADMM the regulariser belongs to the z-update, not to the local problems.
        lam: if spec.optim == OptimKind::Admm {
            0.0
        } else {
            spec.lam
        },
    };
    let targets = model.targets(&data.labels, labels);
    let classifier = LinearClassifier {
        model,
        features: data.features,
        targets,
    };
    Ok(Box::new(Optimized::new(classifier, spec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (Features, Vec<f32>) {
        let m = DenseMatrix {
            n_features: 2,
            values: vec![1.0, 0.5, -1.0, 0.2, 0.3, -2.0, -0.7, -0.1],
        };
        (Features::Dense(m), vec![1.0, 0.0, 0.0, 1.0])
    }

    /// The analytic gradient matches central finite differences of the objective.
    #[test]
    fn gradient_matches_finite_differences() {
        let (x, y) = toy();
        for loss in [Loss::Logistic, Loss::Hinge] {
            let model = Linear {
                loss,
                n_features: 2,
                lam: 0.1,
            };
            let y = if loss == Loss::Hinge {
                y.iter().map(|&v| 2.0 * v - 1.0).collect()
            } else {
                y.clone()
            };
            let rows = [0u32, 1, 2, 3];
            let p = [0.3f32, -0.2, 0.05];
            let mut g = [0f32; 3];
            model.gradient(&p, &x, &y, &rows, &mut g);
            for j in 0..3 {
                let h = 1e-3f32;
                let (mut a, mut b) = (p, p);
                a[j] += h;
                b[j] -= h;
                let fd = (model.objective(&a, &x, &y, &rows) - model.objective(&b, &x, &y, &rows))
                    / (2.0 * h as f64);
                assert!(
                    (fd - g[j] as f64).abs() < 2e-3,
                    "{loss:?} param {j}: {fd} vs {}",
                    g[j]
                );
            }
        }
    }

    #[test]
    fn dense_and_sparse_agree() {
        let (x, y) = toy();
        let Features::Dense(d) = &x else {
            unreachable!()
        };
        let mut csr = CsrMatrix {
            n_features: 2,
            ..CsrMatrix::default()
        };
        for r in 0..4 {
            for (j, &v) in d.row(r).iter().enumerate() {
                csr.indices.push(j as u32);
                csr.values.push(v);
            }
            csr.indptr.push(csr.indices.len());
        }
        let xs = Features::Sparse(csr);
        let model = Linear {
            loss: Loss::Logistic,
            n_features: 2,
            lam: 0.01,
        };
        let p = [0.1f32, 0.4, -0.3];
        let (mut g1, mut g2) = ([0f32; 3], [0f32; 3]);
        let l1 = model.gradient(&p, &x, &y, &[0, 1, 2, 3], &mut g1);
        let l2 = model.gradient(&p, &xs, &y, &[0, 1, 2, 3], &mut g2);
        assert!((l1 - l2).abs() < 1e-6);
        for j in 0..3 {
            assert!((g1[j] - g2[j]).abs() < 1e-6);
        }
    }

    #[test]
    fn logistic_loss_is_stable_for_large_scores() {
        let (l, s) = Loss::Logistic.value_and_slope(100.0, 0.0);
        assert!((l - 100.0).abs() < 1e-3 && (s - 1.0).abs() < 1e-6);
        let (l, s) = Loss::Logistic.value_and_slope(-100.0, 0.0);
        assert!(l.abs() < 1e-6 && s.abs() < 1e-6);
    }
}
