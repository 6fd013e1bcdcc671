//! Training loop of distributed KMeans (Lloyd), dense and sparse.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};

use super::{Outcome, Session, interrupted};
use crate::algo::kmeans;
use crate::data::Features;
use crate::data::libsvm::{self, Layout};

pub(super) async fn train(s: &mut Session<'_>) -> anyhow::Result<Outcome> {
    let spec = &s.event.job;
    let cfg = spec.config.clone();
    let (k, d) = (cfg.k, spec.n_features);
    if s.state.params.is_empty() {
        match initial_centroids(s, k, d).await? {
            Some(c) => s.state.params = c,
            None => return s.reinvoke().await,
        }
    }
    anyhow::ensure!(
        s.state.params.len() == k * d,
        "checkpoint holds {} centroid values, expected k x d = {}",
        s.state.params.len(),
        k * d
    );
    let sq_norms = kmeans::row_sq_norms(&s.data.features);
    let mut stats = vec![0f32; kmeans::stats_len(k, d)];
    let n_rows = s.data.n_rows();
    while !s.state.training_done {
        if s.should_yield() {
            return s.reinvoke().await;
        }
        let started = Instant::now();
        kmeans::assign(&s.data.features, &sq_norms, &s.state.params, k, &mut stats);
        s.state.acc.compute_s += started.elapsed().as_secs_f64();
        let Some(mean) = s.collective(&stats).await? else {
            return s.reinvoke().await;
        };
        kmeans::update(&mut s.state.params, &mean, k, d);
        // Means times n are the global totals (the stopping rule only needs ratios).
        let objective = mean[k * d + k] as f64 * cfg.workers as f64;
        s.state.acc.wall_s += started.elapsed().as_secs_f64();
        let converged = s
            .state
            .prev_objective
            .is_some_and(|prev| prev > 0.0 && ((prev - objective).abs() / prev) < cfg.tol);
        let mut record = s.epoch_record(objective / spec.total_rows.max(1) as f64, n_rows, 0);
        record.objective = Some(objective);
        s.finish_epoch(record).await?;
        s.state.prev_objective = Some(objective);
        if converged || s.state.epoch >= cfg.epochs {
            s.state.training_done = true;
        }
    }
    let centroids = s.state.params.clone();
    s.finish(centroids).await
}

/// The starting centroids: read from `init_centroids` by every worker, or k-means++ on
/// worker 0's partition broadcast through the channel. `None`: the deadline came first.
async fn initial_centroids(
    s: &mut Session<'_>,
    k: usize,
    d: usize,
) -> anyhow::Result<Option<Vec<f32>>> {
    let cfg = &s.event.job.config;
    if let Some(path) = &cfg.init_centroids {
        return read_centroids(Path::new(path), k, d).map(Some);
    }
    if s.data.n_rows() < k && s.event.worker == 0 {
        bail!(
            "worker 0's partition has {} rows, fewer than k = {k}",
            s.data.n_rows()
        );
    }
    let own = (s.event.worker == 0).then(|| kmeans::kmeans_pp(&s.data.features, k, cfg.seed));
    match s.broadcast(own.as_deref(), k * d).await {
        Ok(c) => Ok(Some(c)),
        Err(e) => interrupted(e),
    }
}

fn read_centroids(path: &Path, k: usize, d: usize) -> anyhow::Result<Vec<f32>> {
    let ds = libsvm::read_file(path, d, Layout::Dense)
        .with_context(|| format!("reading the initial centroids {}", path.display()))?;
    if ds.n_rows() != k {
        bail!(
            "{} holds {} centroids but k = {k}: pass --k {}",
            path.display(),
            ds.n_rows(),
            ds.n_rows()
        );
    }
    match ds.features {
        Features::Dense(m) => Ok(m.values),
        Features::Sparse(_) => unreachable!("read as dense"),
    }
}
