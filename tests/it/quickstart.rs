//! The README's first command, `lambdaml train` with no options, trains on 200,000 synthetic
//! HIGGS-like rows with 4 workers and matches a 1-worker run of the same config.
//! (Its speed is a benchmark, recorded in BENCHMARKS.md, not asserted here.)

use crate::common::*;

#[test]
fn the_default_job_matches_a_single_worker() {
    let dir = scratch();
    let four = train(dir.path(), &[]);
    let one = train(dir.path(), &["--workers", "1"]);
    let s = &four.summary;
    assert_eq!(s["workers"], 4);
    assert!(s["rows"].as_u64().unwrap() >= 200_000, "{s}");
    assert_eq!(s["model"], "lr");
    let (a4, a1) = (
        s["final_val_accuracy"].as_f64().unwrap(),
        one.summary["final_val_accuracy"].as_f64().unwrap(),
    );
    assert!(a4 > 0.65, "4 workers reached only {a4}");
    assert!((a4 - a1).abs() < 0.01, "4 workers {a4} vs 1 worker {a1}");
    // Both converge to the same optimum: the training losses agree closely too.
    let (l4, l1) = (
        s["final_train_loss"].as_f64().unwrap(),
        one.summary["final_train_loss"].as_f64().unwrap(),
    );
    assert!(
        (l4 - l1).abs() < 0.005,
        "train loss 4 workers {l4} vs 1 worker {l1}"
    );
    let left = files_under(&dir.path().join("runs/_channel"));
    assert!(left.is_empty(), "{left:?}");
}
