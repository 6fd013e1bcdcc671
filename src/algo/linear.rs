//! Linear models (logistic regression, linear SVM) over dense or CSR features.
//!
//! Parameters are one flat vector `[w_0 .. w_{d-1}, b]`: weights then bias. The objective is
//! `mean(loss(w.x + b, y)) + lam/2 * ||w||^2` (the bias is not regularised).

use super::OptimKind;
use super::learner::{Learner, Metrics, ModelError, Segment, TrainSpec};
use super::optim::{Differentiable, Optimized};
use super::threads::Compute;
use super::vecmath::{BLOCK, exp_nonpositive, ln_1p_unit};
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
    #[inline(always)]
    pub fn value_and_slope(self, z: f32, y: f32) -> (f32, f32) {
        match self {
            Loss::Logistic => {
                // softplus(z) - y z and sigmoid(z) - y from one exp(-|z|), without overflow.
                let e = exp_nonpositive(-z.abs());
                let inv = 1.0 / (1.0 + e);
                let sigmoid = if z >= 0.0 { inv } else { e * inv };
                (z.max(0.0) + ln_1p_unit(e) - y * z, sigmoid - y)
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

    /// [`Self::value_and_slope`] of a block of scores, in a loop the compiler vectorises.
    #[inline(always)]
    fn block(self, z: &[f32; BLOCK], y: &[f32; BLOCK]) -> ([f32; BLOCK], [f32; BLOCK]) {
        let (mut loss, mut slope) = ([0f32; BLOCK], [0f32; BLOCK]);
        for k in 0..BLOCK {
            (loss[k], slope[k]) = self.value_and_slope(z[k], y[k]);
        }
        (loss, slope)
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

/// Starts loading the cache lines that `values` spans (at most four). Rows are not aligned
/// to lines: a 112-byte row can span three, and stepping 64 bytes from its start would miss
/// the last one (measured: a third of the epoch stalled on it).
#[inline]
fn prefetch_bytes<T>(values: &[T]) {
    const LINE: usize = 64;
    let start = values.as_ptr() as usize;
    let len = std::mem::size_of_val(values);
    if len == 0 {
        return;
    }
    let (first, last) = (start / LINE, (start + len - 1) / LINE);
    for line in first..=last.min(first + 3) {
        // A line that `values` touches: the pointer is inside or at the start of its line.
        let offset = (line * LINE).max(start) - start;
        let at = values.as_ptr().cast::<i8>().wrapping_add(offset);
        // SAFETY: `at` points into `values`; a prefetch reads nothing and cannot fault.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(at);
        }
        // Elsewhere (arm64 Lambda) the loop runs without: its intrinsic is not stable yet.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
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

/// Fewest rows worth a thread of their own: below this, starting the part costs more than
/// computing it.
const MIN_ROWS_PER_THREAD: usize = 256;

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

/// The scores `w.x + b` and targets of the rows `block` (which starts at `rows[first]`),
/// prefetching the rows that come [`PREFETCH_AHEAD`] places later; lanes past the end of
/// a short last block are 0.
#[inline(always)]
fn scores(
    x: &impl Rows,
    w: &[f32],
    b: f32,
    y: &[f32],
    rows: &[u32],
    first: usize,
    block: &[u32],
) -> ([f32; BLOCK], [f32; BLOCK]) {
    let (mut z, mut t) = ([0f32; BLOCK], [0f32; BLOCK]);
    for (k, &r) in block.iter().enumerate() {
        if let Some(&ahead) = rows.get(first + k + PREFETCH_AHEAD) {
            x.prefetch(ahead as usize);
            prefetch_bytes(&y[ahead as usize..ahead as usize + 1]);
        }
        z[k] = x.dot(r as usize, w) + b;
        t[k] = y[r as usize];
    }
    (z, t)
}

/// Validation result: sums, so workers' results (and threads' parts) can be pooled.
#[derive(Debug, Clone, Copy, Default, PartialEq, derive_more::Add)]
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
        self.gradient_on(&Compute::single(), params, x, y, rows, grad)
    }

    /// [`Self::gradient`] on the threads of `compute`: each sums the gradient of a part of
    /// the rows, and the parts are added in order.
    pub fn gradient_on(
        &self,
        compute: &Compute,
        params: &[f32],
        x: &Features,
        y: &[f32],
        rows: &[u32],
        grad: &mut [f32],
    ) -> f32 {
        let d = self.n_features;
        let scale = 1.0 / rows.len().max(1) as f32;
        let part = |part: &[u32], gw: &mut [f32]| match x {
            Features::Dense(m) => self.accumulate(m, params, y, part, scale, gw),
            Features::Sparse(m) => self.accumulate(m, params, y, part, scale, gw),
        };
        grad.fill(0.0);
        let (mut loss_sum, mut bias_sum) = (0f32, 0f32);
        if compute.threads() == 1 {
            (loss_sum, bias_sum) = part(rows, &mut grad[..d]);
        } else {
            let sums = compute.map_parts(rows, MIN_ROWS_PER_THREAD, |rows| {
                let mut gw = vec![0f32; d];
                let (loss, bias) = part(rows, &mut gw);
                (gw, loss, bias)
            });
            for (gw, loss, bias) in sums {
                for (g, p) in grad[..d].iter_mut().zip(&gw) {
                    *g += p;
                }
                loss_sum += loss;
                bias_sum += bias;
            }
        }
        if self.lam != 0.0 {
            for (g, wj) in grad[..d].iter_mut().zip(&params[..d]) {
                *g += self.lam * wj;
            }
        }
        grad[d] = bias_sum * scale;
        loss_sum * scale
    }

    /// Adds `scale` times the data gradient of `rows` to `gw` (weights only) and returns the
    /// sums of their losses and of their loss slopes (the bias gradient, unscaled).
    fn accumulate(
        &self,
        x: &impl Rows,
        params: &[f32],
        y: &[f32],
        rows: &[u32],
        scale: f32,
        gw: &mut [f32],
    ) -> (f32, f32) {
        let d = self.n_features;
        let (w, b) = (&params[..d], params[d]);
        let (mut loss_sum, mut slope_sum) = (0f32, 0f32);
        // Scores of a block of rows first, then their losses together (vectorised), then
        // the updates: the same sums, in the same order, as row by row.
        for (first, block) in (0..).step_by(BLOCK).zip(rows.chunks(BLOCK)) {
            let (z, t) = scores(x, w, b, y, rows, first, block);
            let (loss, slope) = self.loss.block(&z, &t);
            for (k, &r) in block.iter().enumerate() {
                loss_sum += loss[k];
                if slope[k] != 0.0 {
                    x.axpy(r as usize, slope[k] * scale, gw);
                    slope_sum += slope[k];
                }
            }
        }
        (loss_sum, slope_sum)
    }

    /// Loss and accuracy on `rows`.
    pub fn evaluate(&self, params: &[f32], x: &Features, y: &[f32], rows: &[u32]) -> Eval {
        self.evaluate_on(&Compute::single(), params, x, y, rows)
    }

    /// [`Self::evaluate`] on the threads of `compute`.
    pub fn evaluate_on(
        &self,
        compute: &Compute,
        params: &[f32],
        x: &Features,
        y: &[f32],
        rows: &[u32],
    ) -> Eval {
        compute
            .map_parts(rows, MIN_ROWS_PER_THREAD, |rows| match x {
                Features::Dense(m) => self.evaluate_with(m, params, y, rows),
                Features::Sparse(m) => self.evaluate_with(m, params, y, rows),
            })
            .into_iter()
            .fold(Eval::default(), std::ops::Add::add)
    }

    fn evaluate_with(&self, x: &impl Rows, params: &[f32], y: &[f32], rows: &[u32]) -> Eval {
        let d = self.n_features;
        let (w, b) = (&params[..d], params[d]);
        let (_, pos) = self.loss.targets();
        let mut eval = Eval::default();
        for (first, block) in (0..).step_by(BLOCK).zip(rows.chunks(BLOCK)) {
            let (z, t) = scores(x, w, b, y, rows, first, block);
            let (loss, _) = self.loss.block(&z, &t);
            for k in 0..block.len() {
                eval.loss_sum += loss[k] as f64;
                eval.correct += u64::from((z[k] >= 0.0) == (t[k] == pos));
            }
            eval.count += block.len() as u64;
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
    compute: Compute,
    /// The worker's share of the test set (`--test-data`): features and targets.
    test: Option<(Features, Vec<f32>)>,
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
        self.model.gradient_on(
            &self.compute,
            params,
            &self.features,
            &self.targets,
            rows,
            grad,
        )
    }

    fn evaluate(&self, params: &[f32], rows: &[u32]) -> Metrics {
        let eval =
            self.model
                .evaluate_on(&self.compute, params, &self.features, &self.targets, rows);
        Metrics {
            val_loss: Some(eval.loss()),
            val_accuracy: Some(eval.accuracy()),
            ..Metrics::default()
        }
    }

    fn evaluate_test(&self, params: &[f32]) -> Metrics {
        let Some((features, targets)) = &self.test else {
            return Metrics::default();
        };
        let rows: Vec<u32> = (0..targets.len() as u32).collect();
        let eval = self
            .model
            .evaluate_on(&self.compute, params, features, targets, &rows);
        Metrics {
            test_loss: Some(eval.loss()),
            test_accuracy: Some(eval.accuracy()),
            ..Metrics::default()
        }
    }

    fn test_rows(&self) -> usize {
        self.test.as_ref().map_or(0, |(_, t)| t.len())
    }
}

/// The learner of a linear model (`spec.model` with a loss) on `data`, measured on `test`
/// after every epoch when given.
pub fn learner(
    spec: &TrainSpec,
    data: Dataset,
    test: Option<Dataset>,
) -> Result<Box<dyn Learner>, ModelError> {
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
    let test = test.map(|t| {
        let targets = model.targets(&t.labels, labels);
        (t.features, targets)
    });
    let classifier = LinearClassifier {
        model,
        features: data.features,
        targets,
        compute: Compute::with_threads(spec.threads),
        test,
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
    fn threads_split_the_batch_and_agree_with_one() {
        let (x, y) = toy();
        let model = Linear {
            loss: Loss::Logistic,
            n_features: 2,
            lam: 0.01,
        };
        let params = vec![0.3, -0.2, 0.05];
        let rows: Vec<u32> = (0..y.len() as u32).cycle().take(2000).collect();
        let mut one = vec![0.0; 3];
        let loss_one = model.gradient(&params, &x, &y, &rows, &mut one);
        let two = Compute::with_threads(2);
        let mut a = vec![0.0; 3];
        let mut b = vec![0.0; 3];
        let loss_a = model.gradient_on(&two, &params, &x, &y, &rows, &mut a);
        let loss_b = model.gradient_on(&two, &params, &x, &y, &rows, &mut b);
        assert_eq!(
            (loss_a.to_bits(), a.clone()),
            (loss_b.to_bits(), b),
            "not deterministic"
        );
        assert!((loss_a - loss_one).abs() < 1e-5, "{loss_a} vs {loss_one}");
        for (p, q) in a.iter().zip(&one) {
            assert!((p - q).abs() < 1e-5, "{a:?} vs {one:?}");
        }
        let e1 = model.evaluate(&params, &x, &y, &rows);
        let e2 = model.evaluate_on(&two, &params, &x, &y, &rows);
        assert_eq!((e1.correct, e1.count), (e2.correct, e2.count));
        assert!((e1.loss() - e2.loss()).abs() < 1e-9);
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
