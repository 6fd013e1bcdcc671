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
    /// Whether the kernels over these rows gain from an AVX2 build: dense rows do (twice the
    /// lanes); sparse rows' gathers and scatters do not vectorise, so they keep one build.
    const WIDE: bool;
    fn dot(&self, i: usize, w: &[f32]) -> f32;
    fn axpy(&self, i: usize, a: f32, out: &mut [f32]);
    /// [`Self::dot`] of each row of `block` (at most [`BLOCK`] rows; lanes past its end
    /// are 0), calling `look_ahead(k)` before row `k`'s: the row by row default spreads
    /// the caller's prefetches among the dot products (a burst of them, for sparse rows of
    /// several lines each, stalls on the CPU's line-fill buffers).
    #[inline(always)]
    fn dots(&self, block: &[u32], w: &[f32], look_ahead: impl FnMut(usize)) -> [f32; BLOCK] {
        dots_row_by_row(self, block, w, look_ahead)
    }
    /// [`Self::axpy`] of each row of `block` with its `a`, skipping those whose `a` is 0:
    /// every element of `out` receives its terms in block order.
    #[inline(always)]
    fn axpys(&self, block: &[u32], a: &[f32; BLOCK], out: &mut [f32]) {
        axpys_row_by_row(self, block, a, out);
    }
    /// Asks the CPU to start loading row `i`, which is used a few rows from now: an epoch
    /// jumps to a random block of rows every [`super::sgd::ORDER_BLOCK`] rows, where the
    /// hardware prefetcher cannot guess the next row, and a row that misses the cache would
    /// otherwise stall the loop.
    fn prefetch(&self, i: usize);
}

/// [`Rows::dots`] one row at a time: the trait's default, and the dense rows' way with a
/// short block or a row narrower than [`LANES`].
#[inline(always)]
fn dots_row_by_row<R: Rows + ?Sized>(
    x: &R,
    block: &[u32],
    w: &[f32],
    mut look_ahead: impl FnMut(usize),
) -> [f32; BLOCK] {
    let mut z = [0f32; BLOCK];
    for (k, (z, &r)) in z.iter_mut().zip(block).enumerate() {
        look_ahead(k);
        *z = x.dot(r as usize, w);
    }
    z
}

/// [`Rows::axpys`] one row at a time, as [`dots_row_by_row`] is for the dot products.
#[inline(always)]
fn axpys_row_by_row<R: Rows + ?Sized>(x: &R, block: &[u32], a: &[f32; BLOCK], out: &mut [f32]) {
    for (&r, &a) in block.iter().zip(a) {
        if a != 0.0 {
            x.axpy(r as usize, a, out);
        }
    }
}

/// Starts loading the cache lines that `values` spans (at most four). Rows are not aligned
/// to lines: a 112-byte row can span three, and stepping 64 bytes from its start would miss
/// the last one (measured: a third of the epoch stalled on it), so the last byte's line is
/// asked for too (a line asked for twice costs one more hint, no load).
#[inline(always)]
fn prefetch_bytes<T>(values: &[T]) {
    const LINE: usize = 64;
    let len = std::mem::size_of_val(values).min(3 * LINE + 1);
    if len == 0 {
        return;
    }
    let at = values.as_ptr().cast::<i8>();
    let mut offset = 0;
    while offset < len {
        prefetch_line(at.wrapping_add(offset));
        offset += LINE;
    }
    prefetch_line(at.wrapping_add(len - 1));
}

/// Asks the CPU to load the cache line holding `at` into every level.
#[inline(always)]
fn prefetch_line(at: *const i8) {
    // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(at);
    }
    // Elsewhere (arm64 Lambda) the loop runs without: its intrinsic is not stable yet.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

impl Rows for DenseMatrix {
    const WIDE: bool = true;
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
    #[inline(always)]
    fn dots(&self, block: &[u32], w: &[f32], look_ahead: impl FnMut(usize)) -> [f32; BLOCK] {
        let d = self.n_features;
        let (Ok(block), Some(tail)) = (<&[u32; BLOCK]>::try_from(block), Tail::of(d)) else {
            return dots_row_by_row(self, block, w, look_ahead);
        };
        (0..BLOCK).for_each(look_ahead);
        // The rows' lanes side by side: the same sums as `dot_dense` row by row, with
        // BLOCK independent accumulators for the CPU to overlap.
        let rows: [&[f32]; BLOCK] = std::array::from_fn(|k| self.row(block[k] as usize));
        let w = &w[..d];
        let mut acc = [[0f32; LANES]; BLOCK];
        for c in (0..tail.whole).step_by(LANES) {
            let wc = chunk(w, c);
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = chunk(row, c);
                for k in 0..LANES {
                    acc[k] += x[k] * wc[k];
                }
            }
        }
        if tail.counted > 0 {
            let wt = tail.fresh_only(chunk(w, tail.start));
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = chunk(row, tail.start);
                for k in 0..LANES {
                    acc[k] += x[k] * wt[k];
                }
            }
        }
        std::array::from_fn(|k| sum_lanes(&acc[k]))
    }
    #[inline(always)]
    fn axpys(&self, block: &[u32], a: &[f32; BLOCK], out: &mut [f32]) {
        let d = self.n_features;
        let Some(tail) = Tail::of(d) else {
            return axpys_row_by_row(self, block, a, out);
        };
        let rows: [&[f32]; BLOCK] = std::array::from_fn(|k| match block.get(k) {
            Some(&r) if a[k] != 0.0 => self.row(r as usize),
            _ => &[],
        });
        // A chunk of `out` stays in registers while every row adds to it; each element
        // still receives the rows' terms in block order, as from `axpy` row by row.
        let out = &mut out[..d];
        #[inline(always)]
        fn add_rows(
            rows: &[&[f32]; BLOCK],
            a: &[f32; BLOCK],
            start: usize,
            sum: &mut [f32; LANES],
        ) {
            for (row, &a) in rows.iter().zip(a) {
                if !row.is_empty() {
                    let x = chunk(row, start);
                    for k in 0..LANES {
                        sum[k] += a * x[k];
                    }
                }
            }
        }
        for c in (0..tail.whole).step_by(LANES) {
            let chunk: &mut [f32; LANES] = (&mut out[c..c + LANES]).try_into().expect("in range");
            add_rows(&rows, a, c, chunk);
        }
        if tail.counted > 0 {
            let chunk: &mut [f32; LANES] = (&mut out[tail.start..d]).try_into().expect("in range");
            let mut sum = *chunk;
            add_rows(&rows, a, tail.start, &mut sum);
            // The lanes the whole chunks already updated keep their values.
            *chunk = std::array::from_fn(|k| if tail.is_fresh(k) { sum[k] } else { chunk[k] });
        }
    }
    #[inline]
    fn prefetch(&self, i: usize) {
        prefetch_bytes(self.row(i));
    }
}

impl Rows for CsrMatrix {
    const WIDE: bool = false;
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

/// Width of the dense kernels' accumulators: one AVX register of `f32`.
const LANES: usize = 8;

/// How a dense row of `d >= LANES` values splits into chunks of [`LANES`]: the whole chunks,
/// then, when `d` is not a multiple of [`LANES`], one more chunk that ends at `d` and
/// overlaps the last whole one. Reading the row this way needs no scalar loop for the
/// remainder; the overlapped lanes are masked out, so each value is counted once.
#[derive(Clone, Copy)]
struct Tail {
    /// Values covered by the whole chunks.
    whole: usize,
    /// Where the last chunk starts (`d - LANES`).
    start: usize,
    /// Values of the last chunk that the whole chunks did not cover (0: none).
    counted: usize,
}

impl Tail {
    #[inline(always)]
    fn of(d: usize) -> Option<Tail> {
        let start = d.checked_sub(LANES)?;
        Some(Tail {
            whole: d - d % LANES,
            start,
            counted: d % LANES,
        })
    }
    /// Whether lane `k` of the last chunk holds a value the whole chunks did not cover.
    #[inline(always)]
    fn is_fresh(self, k: usize) -> bool {
        k >= LANES - self.counted
    }
    /// `values` with the lanes the whole chunks covered set to 0.
    #[inline(always)]
    fn fresh_only(self, values: &[f32; LANES]) -> [f32; LANES] {
        std::array::from_fn(|k| if self.is_fresh(k) { values[k] } else { 0.0 })
    }
}

/// The [`LANES`] values of `values` from `start`.
#[inline(always)]
fn chunk(values: &[f32], start: usize) -> &[f32; LANES] {
    values[start..start + LANES]
        .try_into()
        .expect("a whole chunk")
}

/// Dot product with [`LANES`] independent accumulators, so the compiler can vectorise it:
/// value `j` of a whole chunk adds to lane `j % LANES`, one of the last overlapping chunk
/// (see [`Tail`]) to lane `j - (d - LANES)`, and the lanes are summed by [`sum_lanes`].
/// The dense block kernels compute exactly these sums.
#[inline]
fn dot_dense(a: &[f32], b: &[f32]) -> f32 {
    let d = a.len().min(b.len());
    let (a, b) = (&a[..d], &b[..d]);
    let mut acc = [0f32; LANES];
    let Some(tail) = Tail::of(d) else {
        for j in 0..d {
            acc[j] += a[j] * b[j];
        }
        return sum_lanes(&acc);
    };
    for c in (0..tail.whole).step_by(LANES) {
        let (x, y) = (chunk(a, c), chunk(b, c));
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    if tail.counted > 0 {
        let (x, y) = (chunk(a, tail.start), tail.fresh_only(chunk(b, tail.start)));
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    sum_lanes(&acc)
}

/// The sum of a row's accumulators, pairwise: the order in which an AVX horizontal add
/// combines them.
#[inline(always)]
fn sum_lanes(acc: &[f32; LANES]) -> f32 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
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
    let mut z = x.dots(block, w, |k| {
        if let Some(&ahead) = rows.get(first + k + PREFETCH_AHEAD) {
            x.prefetch(ahead as usize);
            prefetch_bytes(&y[ahead as usize..ahead as usize + 1]);
        }
    });
    let mut t = [0f32; BLOCK];
    for (k, &r) in block.iter().enumerate() {
        z[k] += b;
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
    fn accumulate<R: Rows>(
        &self,
        x: &R,
        params: &[f32],
        y: &[f32],
        rows: &[u32],
        scale: f32,
        gw: &mut [f32],
    ) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if R::WIDE && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.accumulate_avx2(x, params, y, rows, scale, gw) };
        }
        self.accumulate_portable(x, params, y, rows, scale, gw)
    }

    /// [`Self::accumulate`] compiled for AVX2: twice the lanes of the x86_64 baseline.
    /// The arithmetic is the same, in the same order, so results do not depend on the CPU
    /// (no fused multiply-add is enabled).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn accumulate_avx2(
        &self,
        x: &impl Rows,
        params: &[f32],
        y: &[f32],
        rows: &[u32],
        scale: f32,
        gw: &mut [f32],
    ) -> (f32, f32) {
        self.accumulate_portable(x, params, y, rows, scale, gw)
    }

    #[inline(always)]
    fn accumulate_portable(
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
            let mut a = [0f32; BLOCK];
            for k in 0..block.len() {
                loss_sum += loss[k];
                if slope[k] != 0.0 {
                    a[k] = slope[k] * scale;
                    slope_sum += slope[k];
                }
            }
            x.axpys(block, &a, gw);
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

    fn evaluate_with<R: Rows>(&self, x: &R, params: &[f32], y: &[f32], rows: &[u32]) -> Eval {
        #[cfg(target_arch = "x86_64")]
        if R::WIDE && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.evaluate_avx2(x, params, y, rows) };
        }
        self.evaluate_portable(x, params, y, rows)
    }

    /// [`Self::evaluate_with`] compiled for AVX2, as [`Self::accumulate_avx2`] is.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn evaluate_avx2(&self, x: &impl Rows, params: &[f32], y: &[f32], rows: &[u32]) -> Eval {
        self.evaluate_portable(x, params, y, rows)
    }

    #[inline(always)]
    fn evaluate_portable(&self, x: &impl Rows, params: &[f32], y: &[f32], rows: &[u32]) -> Eval {
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

    fn arrange_rows(&mut self, order: &[u32]) {
        self.features.permute_rows(order);
        self.targets = order.iter().map(|&r| self.targets[r as usize]).collect();
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
    use proptest::prelude::*;

    /// A dense matrix of `n_rows` rows of `d` values in (-4, 4), and a weight vector.
    fn dense_case(d: usize, n_rows: usize, seed: u64) -> (DenseMatrix, Vec<f32>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut value = || rng.random_range(-4.0f32..4.0);
        let values = (0..d * n_rows).map(|_| value()).collect();
        let w = (0..d).map(|_| value()).collect();
        (
            DenseMatrix {
                n_features: d,
                values,
            },
            w,
        )
    }

    proptest! {
        /// The block kernels are the row-by-row ones, bit for bit, whatever the width: a
        /// row's score and update must not depend on which block it falls in.
        #[test]
        fn dense_block_kernels_equal_row_by_row(
            d in 1usize..40,
            seed in any::<u64>(),
            skip in proptest::collection::vec(any::<bool>(), BLOCK),
        ) {
            let (m, w) = dense_case(d, 11, seed);
            let block: Vec<u32> = vec![3, 0, 10, 3, 7, 1, 9, 2];
            let z = m.dots(&block, &w, |_| {});
            let a: [f32; BLOCK] =
                std::array::from_fn(|k| if skip[k] { 0.0 } else { w[k % d] * 0.37 });
            let (mut blocked, mut by_row) = (m.values[..d].to_vec(), m.values[..d].to_vec());
            m.axpys(&block, &a, &mut blocked);
            for (k, &r) in block.iter().enumerate() {
                prop_assert_eq!(z[k].to_bits(), m.dot(r as usize, &w).to_bits(), "row {}", r);
                if a[k] != 0.0 {
                    m.axpy(r as usize, a[k], &mut by_row);
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&blocked), bits(&by_row));
        }
    }

    #[test]
    fn dot_dense_counts_every_value_once() {
        for d in 1..40 {
            let a: Vec<f32> = (0..d).map(|j| (j + 1) as f32).collect();
            let ones = vec![1.0; d];
            let want = (d * (d + 1) / 2) as f32;
            assert_eq!(dot_dense(&a, &ones), want, "d = {d}");
        }
    }

    /// The AVX2 build of the kernels gives the portable build's results bit for bit, so a
    /// run does not depend on the CPU it lands on.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_equal_the_portable_ones() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for (d, loss) in [(28, Loss::Logistic), (9, Loss::Hinge), (16, Loss::Logistic)] {
            let (m, mut params) = dense_case(d, 203, d as u64);
            params.push(0.25);
            let model = Linear {
                loss,
                n_features: d,
                lam: 0.0,
            };
            let y: Vec<f32> = (0..203).map(|i| (i % 3 == 0) as u8 as f32).collect();
            let rows: Vec<u32> = (0..203u32).rev().collect();
            let (mut wide, mut portable) = (vec![0f32; d], vec![0f32; d]);
            // SAFETY: the CPU has AVX2 (checked above).
            let got = unsafe { model.accumulate_avx2(&m, &params, &y, &rows, 0.1, &mut wide) };
            let want = model.accumulate_portable(&m, &params, &y, &rows, 0.1, &mut portable);
            assert_eq!(
                (got.0.to_bits(), got.1.to_bits()),
                (want.0.to_bits(), want.1.to_bits())
            );
            assert_eq!(wide, portable);
            // SAFETY: as above.
            let got = unsafe { model.evaluate_avx2(&m, &params, &y, &rows) };
            assert_eq!(got, model.evaluate_portable(&m, &params, &y, &rows));
        }
    }

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
