//! Invocations with a short deadline checkpoint and re-invoke themselves; the job ends with
//! the same parameters, bit for bit, as an uninterrupted run with the same seed.

use crate::common::*;

fn interrupted_equals_uninterrupted(model: &str, sync: &str) {
    let dir = scratch();
    let base = [
        "--data",
        dense_data_20k().to_str().unwrap(),
        "--workers",
        "4",
        "--model",
        model,
        "--sync",
        sync,
        "--epochs",
        "15",
        "--batch-size",
        "20",
    ];
    let whole = train(dir.path(), &base);
    assert_eq!(whole.summary["invocations"], 4);
    let cut = train(
        dir.path(),
        &[
            &base[..],
            &["--invocation-timeout", "1", "--reinvoke-margin", "0.3"],
        ]
        .concat(),
    );
    let per_worker: Vec<u64> = cut.summary["invocations_per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        per_worker.iter().all(|&n| n >= 3),
        "expected at least 2 re-invocations per worker, got invocations {per_worker:?}"
    );
    assert_eq!(
        whole.model_bytes(),
        cut.model_bytes(),
        "re-invoked run ended with other parameters"
    );
    let digests = cut.digests();
    assert!(
        digests.iter().all(|d| d == &whole.digests()[0]),
        "{digests:?}"
    );
    let log = std::fs::read_to_string(cut.run_dir.join("logs/worker-0.log")).unwrap();
    assert!(log.contains("checkpointed and re-invoked"), "{log}");
    // Metrics of every epoch survive the re-invocations.
    assert_eq!(cut.train_losses().len(), 15);
    assert_eq!(cut.train_losses(), whole.train_losses());
}

#[test]
fn grad_avg_reduce_survives_reinvocation() {
    interrupted_equals_uninterrupted("lr", "reduce");
}

#[test]
fn grad_avg_reduce_scatter_survives_reinvocation() {
    interrupted_equals_uninterrupted("svm", "reduce_scatter");
}
