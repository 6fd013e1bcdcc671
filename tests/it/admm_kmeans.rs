//! ADMM converges to the optimum of the regularised problem (checked against a
//! single-process full-batch solver), and distributed KMeans gives the same centroids and
//! rounds whatever the number of workers.

use std::path::Path;

use crate::common::*;
use lambdaml::algo::linear::{Linear, Loss};
use lambdaml::channel::codec;
use lambdaml::data::libsvm::Layout;
use lambdaml::data::partition;
use lambdaml::data::{BinaryLabels, Dataset};

/// The partitions of `location`, with the targets of `loss`.
fn partitions(location: &Path, loss: Loss) -> (Vec<(Dataset, Vec<f32>)>, usize) {
    let m = partition::read_manifest(location).unwrap();
    let labels = BinaryLabels::from_distinct(&m.labels).unwrap();
    let model = Linear {
        loss,
        n_features: m.n_features,
        lam: 0.0,
    };
    let parts = (0..m.parts)
        .map(|i| {
            let ds =
                partition::load_partition(location, &m, i, m.n_features, Layout::Dense).unwrap();
            let y = model.targets(&ds.labels, labels);
            (ds, y)
        })
        .collect();
    (parts, m.n_features)
}

/// ADMM's problem: sum over workers of the mean loss on their rows, plus (lam/2)||w||^2
/// (bias not regularised). Returns the value and its (sub)gradient.
fn objective(parts: &[(Dataset, Vec<f32>)], loss: Loss, lam: f32, w: &[f32]) -> (f64, Vec<f32>) {
    let d = w.len() - 1;
    let model = Linear {
        loss,
        n_features: d,
        lam: 0.0,
    };
    let mut value = 0.0;
    let mut grad = vec![0f32; w.len()];
    let mut g = vec![0f32; w.len()];
    for (ds, y) in parts {
        let rows: Vec<u32> = (0..ds.n_rows() as u32).collect();
        value += model.evaluate(w, &ds.features, y, &rows).loss();
        model.gradient(w, &ds.features, y, &rows, &mut g);
        for (a, b) in grad.iter_mut().zip(&g) {
            *a += b;
        }
    }
    for j in 0..d {
        value += 0.5 * lam as f64 * (w[j] as f64).powi(2);
        grad[j] += lam * w[j];
    }
    (value, grad)
}

/// Single-process full-batch reference: gradient descent with backtracking for the smooth
/// logistic loss; for the hinge loss, the subgradient method with 1/(lam t) steps, keeping the
/// best objective seen. Returns the best objective reached.
fn reference_optimum(parts: &[(Dataset, Vec<f32>)], loss: Loss, lam: f32, d: usize) -> f64 {
    let mut w = vec![0f32; d + 1];
    let (mut best, _) = objective(parts, loss, lam, &w);
    match loss {
        Loss::Logistic => {
            let mut step = 1.0f32;
            for _ in 0..3000 {
                let (f, g) = objective(parts, loss, lam, &w);
                let gg: f64 = g.iter().map(|v| (*v as f64).powi(2)).sum();
                if gg < 1e-12 {
                    break;
                }
                step *= 2.0;
                loop {
                    let trial: Vec<f32> = w.iter().zip(&g).map(|(a, b)| a - step * b).collect();
                    let (ft, _) = objective(parts, loss, lam, &trial);
                    if ft <= f - 0.5 * step as f64 * gg || step < 1e-8 {
                        w = trial;
                        best = best.min(ft);
                        break;
                    }
                    step *= 0.5;
                }
            }
        }
        Loss::Hinge => {
            for t in 1..=4000 {
                let (f, g) = objective(parts, loss, lam, &w);
                best = best.min(f);
                let step = 1.0 / (lam * t as f32);
                for (a, b) in w.iter_mut().zip(&g) {
                    *a -= step * b;
                }
            }
        }
    }
    best
}

fn admm_reaches_the_optimum(model: &str, loss: Loss, tolerance: f64) {
    let dir = scratch();
    let parts_dir = dir.path().join("parts");
    split(dense_data(), 4, &parts_dir);
    // Strong enough that the regulariser shapes the optimum: a wrong z-update shows.
    let lam = 1.0f32;
    let run = train(
        dir.path(),
        &[
            "--data",
            parts_dir.to_str().unwrap(),
            "--workers",
            "4",
            "--model",
            model,
            "--optim",
            "admm",
            "--lam",
            "1",
            "--rho",
            "0.1",
            "--local-epochs",
            "3",
            "--epochs",
            "30",
            "--lr",
            "0.05",
            "--batch-size",
            "50",
            "--val-ratio",
            "0",
            "--tol",
            "0",
        ],
    );
    let z = codec::decode_f32(&run.model_bytes()).unwrap();
    let (parts, d) = partitions(&parts_dir, loss);
    let (admm_value, _) = objective(&parts, loss, lam, &z);
    let optimum = reference_optimum(&parts, loss, lam, d);
    let gap = (admm_value - optimum) / optimum;
    eprintln!(
        "{model}: ADMM {admm_value:.6} optimum {optimum:.6} gap {:.4}%",
        100.0 * gap
    );
    assert!(
        gap < tolerance,
        "{model}: ADMM objective {admm_value:.6} vs optimum {optimum:.6} ({:.3}% above)",
        100.0 * gap
    );
    let digests = run.digests();
    assert!(
        digests.iter().all(|d| d == &digests[0]),
        "consensus differs: {digests:?}"
    );
    assert!(run.summary["final_primal_residual"].as_f64().is_some());
    assert!(run.summary["final_dual_residual"].as_f64().is_some());
}

#[test]
fn admm_logistic_regression_is_within_1_percent_of_the_optimum() {
    admm_reaches_the_optimum("lr", Loss::Logistic, 0.01);
}

#[test]
fn admm_svm_is_within_2_percent_of_the_optimum() {
    admm_reaches_the_optimum("svm", Loss::Hinge, 0.02);
}

#[test]
fn admm_stops_early_when_both_residuals_are_small() {
    let dir = scratch();
    let run = train(
        dir.path(),
        &[
            "--data",
            dense_data().to_str().unwrap(),
            "--optim",
            "admm",
            "--epochs",
            "200",
            "--rho",
            "1",
            "--lam",
            "1",
            "--lr",
            "0.01",
            "--batch-size",
            "1000",
            "--tol",
            "0.01",
        ],
    );
    let rounds = run.summary["rounds"].as_u64().unwrap();
    assert!(rounds < 200, "never stopped: {rounds} rounds");
    assert!(run.summary["final_dual_residual"].as_f64().unwrap() < 0.01);
}

/// 8,000 rows of 8 well-separated clusters, and an init file with one row of each cluster.
fn blobs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("blobs.svm");
    let out = output(
        lambdaml()
            .args([
                "data", "synth", "blobs", "--rows", "8000", "--seed", "11", "--out",
            ])
            .arg(&data),
    );
    assert!(out.status.success());
    let text = std::fs::read_to_string(&data).unwrap();
    let mut picked: Vec<Option<&str>> = vec![None; 8];
    for line in text.lines() {
        let c: usize = line.split(' ').next().unwrap().parse().unwrap();
        picked[c].get_or_insert(line);
    }
    let init = dir.join("init.svm");
    let rows: Vec<&str> = picked.into_iter().map(|l| l.unwrap()).collect();
    std::fs::write(&init, rows.join("\n")).unwrap();
    (data, init)
}

#[test]
fn kmeans_gives_the_same_centroids_on_1_4_and_8_workers() {
    let dir = scratch();
    let (data, init) = blobs(dir.path());
    let runs: Vec<Run> = ["1", "4", "8"]
        .iter()
        .map(|w| {
            train(
                dir.path(),
                &[
                    "--data",
                    data.to_str().unwrap(),
                    "--model",
                    "kmeans",
                    "--k",
                    "8",
                    "--workers",
                    w,
                    "--epochs",
                    "50",
                    "--init-centroids",
                    init.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let centroids: Vec<Vec<f32>> = runs
        .iter()
        .map(|r| codec::decode_f32(&r.model_bytes()).unwrap())
        .collect();
    let rounds: Vec<u64> = runs
        .iter()
        .map(|r| r.summary["rounds"].as_u64().unwrap())
        .collect();
    assert!(rounds[0] < 50, "the stopping rule never fired: {rounds:?}");
    assert_eq!(rounds, vec![rounds[0]; 3], "rounds differ by worker count");
    for other in &centroids[1..] {
        let max_diff = centroids[0]
            .iter()
            .zip(other)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-4, "centroids differ by {max_diff}");
    }
    // The objective is the within-cluster sum of squares: ~ rows x features x unit variance.
    let objective = runs[1].summary["final_objective"].as_f64().unwrap();
    assert!(
        (objective / (8000.0 * 16.0) - 1.0).abs() < 0.05,
        "objective {objective}"
    );
}
