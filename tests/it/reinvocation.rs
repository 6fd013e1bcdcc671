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
    let (whole, cut) = train_whole_and_cut(dir.path(), &base);
    assert_eq!(whole.summary["invocations"], 4);
    let digests = cut.digests();
    assert!(
        digests.iter().all(|d| d == &whole.digests()[0]),
        "{digests:?}"
    );
    let log = std::fs::read_to_string(cut.run_dir.join("logs/worker-0.log")).unwrap();
    assert!(log.contains("checkpointed and re-invoked"), "{log}");
    // Metrics of every epoch survive the re-invocations (and equal the whole run's, above).
    assert_eq!(cut.train_losses().len(), 15);
}

#[test]
fn grad_avg_reduce_survives_reinvocation() {
    interrupted_equals_uninterrupted("lr", "reduce");
}

/// AdaGrad (sparse models' default) keeps its running sums in the checkpoint.
#[test]
fn adagrad_on_the_mean_gradient_survives_reinvocation() {
    interrupted_equals_uninterrupted("sparse_lr", "reduce");
}

#[test]
fn grad_avg_reduce_scatter_survives_reinvocation() {
    interrupted_equals_uninterrupted("svm", "reduce_scatter");
}

/// A worker whose peer is dead used to wait out each invocation, re-invoke itself and wait
/// again from zero, forever, when its invocations were shorter than the wait timeout. Its
/// waiting is counted across invocations: after `wait_timeout` in all, the job fails naming
/// the key and the dead worker.
#[test]
fn waiting_for_a_dead_peer_is_counted_across_reinvocations() {
    let dir = scratch();
    // Worker 1's first invocation dies at once without a word; everything else runs.
    let exe = worker_wrapper(dir.path(), r#"*'"worker":1,"invocation":0,'*"#, "exit 0");
    let (err, logs) = failing_job(
        dir.path(),
        Some(&exe),
        &[
            "--synth-rows",
            "2000",
            "--workers",
            "2",
            "--epochs",
            "50",
            "--invocation-timeout",
            "1",
            "--reinvoke-margin",
            "0.3",
            "--wait-timeout",
            "4",
        ],
    );
    assert!(
        err.contains("worker 0 failed") && err.contains("/reduce/1' from worker 1"),
        "{err}"
    );
    assert!(
        logs.contains("checkpointed and re-invoked"),
        "the waiter never re-invoked itself, so this did not test waits across invocations"
    );
}

/// Every job has a hard bound on its invocations and on its life, whatever its driver does.
#[test]
fn invocations_and_job_life_are_bounded() {
    let long = [
        "--data",
        dense_data_20k().to_str().unwrap(),
        "--workers",
        "1",
        "--epochs",
        "1000",
        "--batch-size",
        "20",
        "--invocation-timeout",
        "1",
        "--reinvoke-margin",
        "0.3",
    ];
    let dir = scratch();
    let (err, _) = failing_job(
        dir.path(),
        None,
        &[&long[..], &["--max-invocations", "2"]].concat(),
    );
    assert!(err.contains("reached its limit of 2 invocations"), "{err}");
    let (err, _) = failing_job(
        dir.path(),
        None,
        &[&long[..], &["--max-job-seconds", "2"]].concat(),
    );
    assert!(
        err.contains("past its limit of 2 s (--max-job-seconds)"),
        "{err}"
    );
}

/// Workers whose invocations are too short to look at the abort flag while they wait
/// re-invoke themselves after a peer failed: the re-invocation sees the flag and stops at
/// once, without training or writing anything.
#[test]
fn a_reinvocation_of_an_aborted_job_stops_at_once() {
    let dir = scratch();
    let parts = partitions_with_a_bad_line(dir.path());
    let (err, logs) = failing_job(
        dir.path(),
        None,
        &[
            "--data",
            parts.to_str().unwrap(),
            "--workers",
            "4",
            "--invocation-timeout",
            "1",
            "--reinvoke-margin",
            "0.3",
        ],
    );
    assert!(err.contains("worker 2 failed"), "{err}");
    assert!(logs.contains("the job was aborted: not resuming"), "{logs}");
}
