//! Distributed Lloyd's KMeans over dense or CSR rows.
//!
//! Each round a worker assigns its rows to the nearest centroid and produces the statistics
//! `[sums (k x d), counts (k), sse (1)]`; the collective averages them over workers, and
//! `centroid_c = mean sums_c / mean counts_c` (the averaging cancels: it is the count-weighted
//! global mean). An empty cluster keeps its centroid.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use std::path::Path;

use super::learner::{
    EpochSync, Init, Learner, LearnerState, Metrics, ModelError, Segment, Step, StepSync, TrainSpec,
};
use super::threads::Compute;
use crate::data::libsvm::{self, Layout};
use crate::data::{CsrMatrix, Dataset, DenseMatrix, Features};

/// Rows per block of the dense distance kernel.
const BLOCK: usize = 256;

/// Adds one row to its cluster's sums and returns its exact squared distance to the centroid
/// (arguments: the cluster's sums, its centroid, its index).
type AddRow<'a> = dyn FnMut(&mut [f64], &[f32], usize) -> f64 + 'a;

/// Length of the statistics vector for `k` clusters of `d` features.
pub fn stats_len(k: usize, d: usize) -> usize {
    k * d + k + 1
}

/// Squared Euclidean norm of every row.
pub fn row_sq_norms(x: &Features) -> Vec<f32> {
    match x {
        Features::Dense(m) => (0..m.n_rows())
            .map(|i| m.row(i).iter().map(|v| v * v).sum())
            .collect(),
        Features::Sparse(m) => (0..m.n_rows())
            .map(|i| m.row(i).1.iter().map(|v| v * v).sum())
            .collect(),
    }
}

/// Assigns every row to its nearest centroid; writes `[sums, counts, sse]` into `stats`.
/// `centroids` is `k x d` row-major; `sq_norms` from [`row_sq_norms`].
pub fn assign(x: &Features, sq_norms: &[f32], centroids: &[f32], k: usize, stats: &mut [f32]) {
    assign_on(&Compute::single(), x, sq_norms, centroids, k, stats)
}

/// Rows per part when an assignment is split among threads: a part must outweigh handing it
/// to a thread.
const MIN_PART_ROWS: usize = 1024;

/// [`assign`] on the threads of `compute`: contiguous parts of the rows, whose sums are added
/// in part order (deterministic for a given number of threads).
pub fn assign_on(
    compute: &Compute,
    x: &Features,
    sq_norms: &[f32],
    centroids: &[f32],
    k: usize,
    stats: &mut [f32],
) {
    let d = x.n_features();
    assert_eq!(centroids.len(), k * d, "centroids must be k x d");
    assert_eq!(stats.len(), stats_len(k, d));
    let c_sq: Vec<f32> = centroids
        .chunks_exact(d)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    let parts = compute.map_ranges(x.n_rows(), MIN_PART_ROWS, |rows| {
        assign_rows(x, rows, sq_norms, centroids, &c_sq, k)
    });
    let mut total = parts.into_iter();
    let mut sum = total.next().expect("at least one part");
    for p in total {
        sum.add(&p);
    }
    for (o, s) in stats[..k * d].iter_mut().zip(&sum.sums) {
        *o = *s as f32;
    }
    for (o, c) in stats[k * d..k * d + k].iter_mut().zip(&sum.counts) {
        *o = *c as f32;
    }
    stats[k * d + k] = sum.sse as f32;
}

/// The assignment statistics of some rows, in full precision until they are written out.
struct Partial {
    sums: Vec<f64>,
    counts: Vec<u64>,
    sse: f64,
}

impl Partial {
    fn add(&mut self, other: &Partial) {
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sse += other.sse;
    }
}

/// Assigns the rows `rows` of `x`; `c_sq` holds the centroids' squared norms.
fn assign_rows(
    x: &Features,
    rows: std::ops::Range<usize>,
    sq_norms: &[f32],
    centroids: &[f32],
    c_sq: &[f32],
    k: usize,
) -> Partial {
    let d = x.n_features();
    let mut sums = vec![0f64; k * d];
    let mut counts = vec![0u64; k];
    let mut sse = 0f64;
    // The expanded form picks the nearest centroid with one matrix multiply; the winner's
    // distance is then recomputed directly, because the expansion loses precision to
    // cancellation far from the origin and the objective should be exact.
    let mut visit = |dots: &[f32], row_sq: f32, add: &mut AddRow| {
        let mut best = (0usize, f32::INFINITY);
        for (c, (&dot, &cs)) in dots.iter().zip(c_sq).enumerate() {
            let dist = row_sq - 2.0 * dot + cs;
            if dist < best.1 {
                best = (c, dist);
            }
        }
        counts[best.0] += 1;
        let centroid = &centroids[best.0 * d..(best.0 + 1) * d];
        sse += add(&mut sums[best.0 * d..(best.0 + 1) * d], centroid, best.0);
    };
    match x {
        Features::Dense(m) => {
            let mut dots = vec![0f32; BLOCK * k];
            for start in rows.clone().step_by(BLOCK) {
                let n = BLOCK.min(rows.end - start);
                dense_dots(m, start, n, centroids, k, &mut dots[..n * k]);
                for r in 0..n {
                    let row = m.row(start + r);
                    visit(
                        &dots[r * k..(r + 1) * k],
                        sq_norms[start + r],
                        &mut |s, c, _| {
                            let mut dist = 0f64;
                            for ((a, v), cv) in s.iter_mut().zip(row).zip(c) {
                                *a += *v as f64;
                                dist += ((v - cv) as f64).powi(2);
                            }
                            dist
                        },
                    );
                }
            }
        }
        Features::Sparse(m) => {
            let c_sq64: Vec<f64> = centroids
                .chunks_exact(d)
                .map(|c| c.iter().map(|v| (*v as f64).powi(2)).sum())
                .collect();
            let mut dots = vec![0f32; k];
            for r in rows {
                sparse_dots(m, r, centroids, d, &mut dots);
                let (idx, val) = m.row(r);
                visit(&dots, sq_norms[r], &mut |s, c, cluster| {
                    // ||x - c||^2 = ||c||^2 + sum over non-zeros of ((x_j - c_j)^2 - c_j^2).
                    let mut dist = c_sq64[cluster];
                    for (&j, &v) in idx.iter().zip(val) {
                        let cj = c[j as usize] as f64;
                        s[j as usize] += v as f64;
                        dist += (v as f64 - cj).powi(2) - cj * cj;
                    }
                    dist.max(0.0)
                });
            }
        }
    }
    Partial { sums, counts, sse }
}

/// `out (rows x k) = X[start..start+rows] (rows x d) * C^T (d x k)`, one matrix multiply.
fn dense_dots(
    m: &DenseMatrix,
    start: usize,
    rows: usize,
    centroids: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let d = m.n_features;
    let a = &m.values[start * d..(start + rows) * d];
    // SAFETY: the pointers and strides describe `a` (rows x d, row-major), C^T read from
    // `centroids` (k x d row-major, so element (p, j) is at j*d + p) and `out` (rows x k),
    // all in bounds and not aliased.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            d,
            k,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            centroids.as_ptr(),
            1,
            d as isize,
            0.0,
            out.as_mut_ptr(),
            k as isize,
            1,
        );
    }
}

fn sparse_dots(m: &CsrMatrix, r: usize, centroids: &[f32], d: usize, out: &mut [f32]) {
    let (idx, val) = m.row(r);
    for (c, o) in out.iter_mut().enumerate() {
        let centroid = &centroids[c * d..(c + 1) * d];
        *o = idx
            .iter()
            .zip(val)
            .map(|(&j, &v)| centroid[j as usize] * v)
            .sum();
    }
}

/// New centroids from averaged statistics; an empty cluster keeps its old centroid.
pub fn update(centroids: &mut [f32], mean_stats: &[f32], k: usize, d: usize) {
    let counts = &mean_stats[k * d..k * d + k];
    for c in 0..k {
        if counts[c] > 0.0 {
            let sums = &mean_stats[c * d..(c + 1) * d];
            for (o, s) in centroids[c * d..(c + 1) * d].iter_mut().zip(sums) {
                *o = s / counts[c];
            }
        }
    }
}

/// Greedy k-means++ seeding on `x` (as scikit-learn does): the first centroid uniformly; then
/// at each step `2 + ln k` candidates are drawn with probability proportional to the squared
/// distance to the nearest chosen centroid, and the one that lowers the total most is kept.
/// Plain k-means++ (one candidate) often puts two centroids in one cluster and misses another.
pub fn kmeans_pp(x: &Features, k: usize, seed: u64) -> Vec<f32> {
    let d = x.n_features();
    let n = x.n_rows();
    assert!(n > 0, "k-means++ needs rows");
    let mut rng = StdRng::seed_from_u64(seed);
    let sq = row_sq_norms(x);
    let row = |i: usize| -> Vec<f32> {
        match x {
            Features::Dense(m) => m.row(i).to_vec(),
            Features::Sparse(m) => {
                let mut v = vec![0f32; d];
                let (idx, val) = m.row(i);
                for (&j, &x) in idx.iter().zip(val) {
                    v[j as usize] = x;
                }
                v
            }
        }
    };
    let distances_to = |c: &[f32]| -> Vec<f32> {
        let c_sq: f32 = c.iter().map(|v| v * v).sum();
        (0..n)
            .map(|i| {
                let dot: f32 = match x {
                    Features::Dense(m) => m.row(i).iter().zip(c).map(|(a, b)| a * b).sum(),
                    Features::Sparse(m) => {
                        let (idx, val) = m.row(i);
                        idx.iter().zip(val).map(|(&j, &v)| c[j as usize] * v).sum()
                    }
                };
                (sq[i] - 2.0 * dot + c_sq).max(0.0)
            })
            .collect()
    };
    let first = row(rng.random_range(0..n));
    let mut nearest = distances_to(&first);
    let mut centroids = first;
    let trials = 2 + (k as f64).ln() as usize;
    for _ in 1..k {
        let total: f64 = nearest.iter().map(|&v| v as f64).sum();
        let mut best: Option<(f64, Vec<f32>, Vec<f32>)> = None;
        for _ in 0..trials {
            let pick = if total > 0.0 {
                let mut target = rng.random::<f64>() * total;
                nearest
                    .iter()
                    .position(|&v| {
                        target -= v as f64;
                        target <= 0.0
                    })
                    .unwrap_or(n - 1)
            } else {
                rng.random_range(0..n)
            };
            let candidate = row(pick);
            let merged: Vec<f32> = distances_to(&candidate)
                .iter()
                .zip(&nearest)
                .map(|(a, b)| a.min(*b))
                .collect();
            let potential: f64 = merged.iter().map(|&v| v as f64).sum();
            if best.as_ref().is_none_or(|(p, _, _)| potential < *p) {
                best = Some((potential, candidate, merged));
            }
        }
        let (_, candidate, merged) = best.expect("at least one trial");
        centroids.extend_from_slice(&candidate);
        nearest = merged;
    }
    centroids
}

/// Distributed Lloyd on one worker's partition: the [`Learner`] of `kmeans` and
/// `sparse_kmeans`. An epoch is one round: assign, average the statistics, move the
/// centroids.
pub struct Lloyd {
    features: Features,
    sq_norms: Vec<f32>,
    k: usize,
    d: usize,
    seed: u64,
    tol: f64,
    worker: usize,
    workers: usize,
    total_rows: usize,
    init_centroids: Option<String>,
    compute: Compute,
}

/// The learner of KMeans with the `k`, seed and initial centroids of `spec`, on `data`.
pub fn learner(spec: &TrainSpec, data: Dataset) -> Result<Box<dyn Learner>, ModelError> {
    let sq_norms = row_sq_norms(&data.features);
    Ok(Box::new(Lloyd {
        features: data.features,
        sq_norms,
        k: spec.k,
        d: spec.n_features,
        seed: spec.seed,
        tol: spec.tol,
        worker: spec.worker,
        workers: spec.workers,
        total_rows: spec.total_rows,
        init_centroids: spec.init_centroids.clone(),
        compute: Compute::with_threads(spec.threads),
    }))
}

impl Learner for Lloyd {
    fn segments(&self) -> Vec<Segment> {
        vec![Segment::new("centroids", self.k * self.d)]
    }

    /// Read from `init_centroids` by every worker, or k-means++ on worker 0's partition
    /// broadcast to the others.
    fn init(&self) -> Result<Init, ModelError> {
        let (k, d) = (self.k, self.d);
        if let Some(path) = &self.init_centroids {
            let params = read_centroids(Path::new(path), k, d)?;
            return Ok(Init::Ready(LearnerState {
                params,
                aux: Vec::new(),
            }));
        }
        let n_rows = self.features.n_rows();
        if self.worker == 0 && n_rows < k {
            return Err(ModelError::Invalid(format!(
                "worker 0's partition has {n_rows} rows, fewer than k = {k}"
            )));
        }
        Ok(Init::Broadcast {
            own: (self.worker == 0).then(|| kmeans_pp(&self.features, k, self.seed)),
            len: k * d,
        })
    }

    fn steps_per_epoch(&self) -> usize {
        0
    }

    /// Never called: an epoch of Lloyd is only its synchronisation.
    fn step(&mut self, _: &mut LearnerState, _: u32, _: usize, _: &mut Vec<f32>) -> Step {
        Step {
            loss: 0.0,
            sync: StepSync::Local,
        }
    }

    fn syncs_each_epoch(&self) -> bool {
        true
    }

    fn epoch_vector(&self, state: &LearnerState) -> Vec<f32> {
        let mut stats = vec![0f32; stats_len(self.k, self.d)];
        assign_on(
            &self.compute,
            &self.features,
            &self.sq_norms,
            &state.params,
            self.k,
            &mut stats,
        );
        stats
    }

    fn apply_epoch_mean(&self, state: &mut LearnerState, mean: &[f32]) -> EpochSync {
        let (k, d) = (self.k, self.d);
        update(&mut state.params, mean, k, d);
        // Means times n are the global totals (the stopping rule only needs ratios).
        let objective = mean[k * d + k] as f64 * self.workers as f64;
        EpochSync {
            current: Metrics {
                train_loss: Some(objective / self.total_rows.max(1) as f64),
                objective: Some(objective),
                ..Metrics::default()
            },
            previous: Metrics::default(),
        }
    }

    fn evaluate(&self, _: &LearnerState) -> Metrics {
        Metrics::default()
    }

    /// When the objective changed by less than `tol`, relatively, since the last round.
    fn converged(&self, previous: Option<&Metrics>, current: &Metrics) -> bool {
        match (previous.and_then(|m| m.objective), current.objective) {
            (Some(prev), Some(now)) => prev > 0.0 && ((prev - now).abs() / prev) < self.tol,
            _ => false,
        }
    }

    fn result(&self, state: &LearnerState) -> Vec<f32> {
        state.params.clone()
    }

    fn rows(&self) -> (usize, usize) {
        (self.features.n_rows(), 0)
    }
}

/// The rows of the LibSVM file `path` as `k` centroids of `d` features.
fn read_centroids(path: &Path, k: usize, d: usize) -> Result<Vec<f32>, ModelError> {
    let ds = libsvm::read_file(path, d, Layout::Dense).map_err(|source| ModelError::Input {
        what: format!("the initial centroids {}", path.display()),
        source,
    })?;
    if ds.n_rows() != k {
        return Err(ModelError::Invalid(format!(
            "{} holds {} centroids but k = {k}: pass --k {}",
            path.display(),
            ds.n_rows(),
            ds.n_rows()
        )));
    }
    match ds.features {
        Features::Dense(m) => Ok(m.values),
        Features::Sparse(_) => Err(ModelError::Invalid(format!(
            "{} was read as sparse rows, expected dense",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> Features {
        // Two clear clusters around (0,0) and (10,10).
        let mut v = Vec::new();
        for i in 0..40 {
            let e = (i % 5) as f32 * 0.1;
            if i % 2 == 0 {
                v.extend([e, -e])
            } else {
                v.extend([10.0 + e, 10.0 - e])
            }
        }
        Features::Dense(DenseMatrix {
            n_features: 2,
            values: v,
        })
    }

    fn to_sparse(x: &Features) -> Features {
        let Features::Dense(m) = x else {
            unreachable!()
        };
        let mut csr = CsrMatrix {
            n_features: m.n_features,
            ..CsrMatrix::default()
        };
        for r in 0..m.n_rows() {
            for (j, &v) in m.row(r).iter().enumerate() {
                if v != 0.0 {
                    csr.indices.push(j as u32);
                    csr.values.push(v);
                }
            }
            csr.indptr.push(csr.indices.len());
        }
        Features::Sparse(csr)
    }

    #[test]
    fn lloyd_finds_the_two_blobs_dense_and_sparse() {
        for x in [blobs(), to_sparse(&blobs())] {
            let sq = row_sq_norms(&x);
            let mut c = vec![1.0, 1.0, 2.0, 2.0];
            let mut stats = vec![0f32; stats_len(2, 2)];
            for _ in 0..5 {
                assign(&x, &sq, &c, 2, &mut stats);
                update(&mut c, &stats, 2, 2);
            }
            let mut centres: Vec<(i32, i32)> = c
                .chunks(2)
                .map(|p| (p[0].round() as i32, p[1].round() as i32))
                .collect();
            centres.sort();
            assert_eq!(centres, vec![(0, 0), (10, 10)]);
            assign(&x, &sq, &c, 2, &mut stats);
            assert_eq!(&stats[4..6], &[20.0, 20.0]);
            // Each blob: 20 points at offsets (e - 0.2, 0.2 - e), e in {0, .1, .2, .3, .4}.
            assert!((stats[6] - 1.6).abs() < 1e-4, "sse {}", stats[6]);
        }
    }

    /// Threads split the rows and add their sums in order: the same counts, and the same
    /// sums and objective up to the f32 rounding of the total, dense and sparse.
    #[test]
    fn threads_assign_as_one_thread_does() {
        let mut rng = StdRng::seed_from_u64(3);
        let (n, d, k) = (5000, 6, 4);
        let dense = Features::Dense(DenseMatrix {
            n_features: d,
            values: (0..n * d).map(|_| rng.random_range(-3.0..3.0)).collect(),
        });
        let centroids: Vec<f32> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        for x in [dense.clone(), to_sparse(&dense)] {
            let norms = row_sq_norms(&x);
            let mut one = vec![0f32; stats_len(k, d)];
            assign(&x, &norms, &centroids, k, &mut one);
            for threads in [2, 3] {
                let mut many = vec![0f32; stats_len(k, d)];
                assign_on(
                    &Compute::with_threads(threads),
                    &x,
                    &norms,
                    &centroids,
                    k,
                    &mut many,
                );
                assert_eq!(one[k * d..k * d + k], many[k * d..k * d + k], "counts");
                for (a, b) in one.iter().zip(&many) {
                    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn the_matmul_kernel_matches_pairwise_distances() {
        let x = Features::Dense(DenseMatrix {
            n_features: 3,
            values: (0..3 * 600)
                .map(|i| ((i * 37 % 101) as f32) / 10.0)
                .collect(),
        });
        let c: Vec<f32> = (0..3 * 7).map(|i| ((i * 13 % 17) as f32) / 2.0).collect();
        let mut stats = vec![0f32; stats_len(7, 3)];
        assign(&x, &row_sq_norms(&x), &c, 7, &mut stats);
        let Features::Dense(m) = &x else {
            unreachable!()
        };
        let mut sse = 0f64;
        for r in 0..m.n_rows() {
            let best = c
                .chunks(3)
                .map(|cc| {
                    cc.iter()
                        .zip(m.row(r))
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min);
            sse += best as f64;
        }
        assert!((stats[7 * 3 + 7] as f64 - sse).abs() / sse < 1e-4);
        assert_eq!(stats[21..28].iter().sum::<f32>(), 600.0);
    }

    /// On 8 well-separated clusters, seeding then Lloyd reaches the optimum (about one unit
    /// of variance per feature per row) for every seed tried. Plain k-means++ failed on about
    /// half of these seeds by putting two centroids in one cluster.
    #[test]
    fn seeding_finds_every_cluster_of_the_blobs() {
        use crate::data::libsvm::{Layout, parse_text};
        use crate::data::synth::{SynthKind, generate};
        let mut text = Vec::new();
        generate(SynthKind::Blobs, 4000, 5, None, &mut text, |_| {}).unwrap();
        let ds = parse_text(
            std::str::from_utf8(&text).unwrap(),
            std::path::Path::new("blobs"),
            16,
            Layout::Dense,
        )
        .unwrap();
        let sq = row_sq_norms(&ds.features);
        for seed in 0..10 {
            let mut c = kmeans_pp(&ds.features, 8, seed);
            let mut stats = vec![0f32; stats_len(8, 16)];
            for _ in 0..10 {
                assign(&ds.features, &sq, &c, 8, &mut stats);
                update(&mut c, &stats, 8, 16);
            }
            assign(&ds.features, &sq, &c, 8, &mut stats);
            let per_row = stats[8 * 16 + 8] / 4000.0;
            assert!(per_row < 17.0, "seed {seed}: objective per row {per_row}");
        }
    }

    #[test]
    fn kmeans_pp_is_seeded_and_spreads_out() {
        let x = blobs();
        let a = kmeans_pp(&x, 2, 9);
        assert_eq!(a, kmeans_pp(&x, 2, 9));
        // The second centre lands in the other blob.
        assert!((a[0] - a[2]).abs() > 5.0, "{a:?}");
    }
}
