//! `--test-data`: a test set measured after every epoch, each worker on its share, pooled in
//! the summary into the whole set's figures; and `--sync-every`, model averaging within an
//! epoch.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use crate::common::*;
use lambdaml::algo::linear::{Linear, Loss};
use lambdaml::channel::codec;
use lambdaml::data::libsvm::Layout;
use lambdaml::data::{BinaryLabels, partition};

/// 1,000 HIGGS-like rows drawn apart from the training rows of [`dense_data`].
fn dense_test_data() -> &'static Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        shared_data(
            "higgs-test-1000.svm",
            &["higgs", "--rows", "1000", "--seed", "33"],
        )
    })
}

/// The lines of `run`'s metrics.jsonl.
fn metric_lines(run: &Run) -> Vec<Value> {
    std::fs::read_to_string(run.run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The final model of `run` (worker 0's `model.bin`).
fn model(run: &Run) -> Vec<f32> {
    codec::decode_f32(&run.model_bytes()).unwrap()
}

/// Accuracy of the logistic model `w` on the LibSVM file `path`, computed here from
/// `model.bin` and the file, apart from the job.
fn accuracy_on(w: &[f32], path: &Path, dir: &Path) -> (f64, usize) {
    let n_features = w.len() - 1;
    let out = dir.join("whole-test");
    let m = partition::split_file(path, 1, &out, Some(n_features), |_| {}).unwrap();
    let ds = partition::load_partition(&out, &m, 0, n_features, Layout::Dense).unwrap();
    let model = Linear {
        loss: Loss::Logistic,
        n_features,
        lam: 0.0,
    };
    let y = model.targets(&ds.labels, BinaryLabels::from_distinct(&m.labels).unwrap());
    let rows: Vec<u32> = (0..ds.n_rows() as u32).collect();
    let eval = model.evaluate(w, &ds.features, &y, &rows);
    (eval.accuracy(), rows.len())
}

/// The pooled test accuracy of a 4-worker job is the accuracy of its model on the whole test
/// file, every epoch has it, and the shares cover the file once.
#[test]
fn linear_test_accuracy_is_the_models_accuracy_on_the_test_file() {
    let dir = scratch();
    let test = dense_test_data();
    let run = train(
        dir.path(),
        &[
            "--data",
            dense_data().to_str().unwrap(),
            "--test-data",
            test.to_str().unwrap(),
            "--workers",
            "4",
            "--epochs",
            "2",
            "--batch-size",
            "100",
        ],
    );
    let lines = metric_lines(&run);
    assert_eq!(lines.len(), 8);
    for epoch in 1..=2 {
        let shares: Vec<&Value> = lines.iter().filter(|l| l["epoch"] == epoch).collect();
        let rows: u64 = shares.iter().map(|l| l["n_test"].as_u64().unwrap()).sum();
        assert_eq!(
            rows, 1000,
            "the workers' shares do not cover the test file once"
        );
        assert!(shares.iter().all(|l| l["test_accuracy"].is_f64()));
    }
    let (expected, n) = accuracy_on(&model(&run), test, dir.path());
    let pooled = run.summary["final_test_accuracy"].as_f64().unwrap();
    // Scores summed in another order may flip a row sitting on the boundary: one at most.
    assert!(
        (pooled - expected).abs() <= 1.0 / n as f64 + 1e-12,
        "pooled {pooled}, the model's own accuracy on the file {expected}"
    );
    assert!(expected > 0.55, "the model learned nothing: {expected}");
    assert!(run.summary["final_test_loss"].is_f64());
    assert_eq!(
        run.summary["model_layout"].as_str().map(str::len),
        Some(16),
        "{}",
        run.summary
    );
}

/// Test sets that cannot be measured against the model are refused before any worker
/// starts, naming the problem.
#[test]
fn test_sets_that_do_not_fit_are_refused() {
    let dir = scratch();
    let refused = |args: &[&str]| failing_job(dir.path(), None, args).0;
    let data = dense_data().to_str().unwrap();
    let wide = dir.path().join("wide.svm");
    std::fs::write(&wide, "1 1:0.5 99:1\n0 2:0.25\n").unwrap();
    let err = refused(&["--data", data, "--test-data", wide.to_str().unwrap()]);
    assert!(err.contains("99") && err.contains("--test-data"), "{err}");
    let odd = dir.path().join("odd.svm");
    std::fs::write(&odd, "7 1:0.5\n0 2:0.25\n").unwrap();
    let err = refused(&["--data", data, "--test-data", odd.to_str().unwrap()]);
    assert!(err.contains("label 7"), "{err}");
    let parts = dir.path().join("parts3");
    split(dense_test_data(), 3, &parts);
    let err = refused(&[
        "--data",
        data,
        "--workers",
        "2",
        "--test-data",
        parts.to_str().unwrap(),
    ]);
    assert!(err.contains("3 partitions"), "{err}");
    let err = refused(&["--model", "kmeans", "--test-data", data]);
    assert!(err.contains("test-data"), "{err}");
}

/// Averaging the models after every minibatch (`--sync-every 1`) is, with plain SGD, the
/// same algorithm as averaging the gradients: both runs end with the same model up to
/// rounding, while averaging once per epoch ends elsewhere; each epoch holds a round per
/// minibatch.
#[test]
fn model_averaging_every_minibatch_matches_gradient_averaging() {
    let dir = scratch();
    let base = [
        "--data",
        dense_data().to_str().unwrap(),
        "--workers",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "100",
        "--step",
        "sgd",
    ];
    let grads = train(dir.path(), &[&base[..], &["--optim", "grad_avg"]].concat());
    let every = train(
        dir.path(),
        &[&base[..], &["--optim", "model_avg", "--sync-every", "1"]].concat(),
    );
    let epochly = train(dir.path(), &[&base[..], &["--optim", "model_avg"]].concat());
    let gap = |a: &Run, b: &Run| {
        model(a)
            .iter()
            .zip(model(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let close = gap(&grads, &every);
    let far = gap(&grads, &epochly);
    assert!(
        close < 1e-4,
        "grad_avg and model_avg every minibatch differ by {close}"
    );
    assert!(
        far > 100.0 * close.max(1e-6),
        "once per epoch is as close: {far}"
    );
    let steps = grads.summary["steps_per_epoch"].as_u64().unwrap();
    assert!(steps > 1);
    for line in metric_lines(&every) {
        assert_eq!(line["rounds"].as_u64(), Some(steps), "{line}");
    }
    let digests = every.digests();
    assert!(digests.iter().all(|d| d == &digests[0]));
}
