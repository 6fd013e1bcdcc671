//! Every model x optimizer x sync mode trains with 4 worker processes over every channel:
//! `dir:`, Memcached, Redis, S3 and DynamoDB. Loss (KMeans: the objective) goes down,
//! synchronous modes end with bit-identical workers and the same parameters on every channel,
//! and afterwards the service itself holds no key of the job.

use crate::common::services::{Server, keys_left, shared};
use crate::common::*;

/// Runs the workload on `channel` (after `args`) and returns the run.
fn run_on(dir: &std::path::Path, args: &[&str], channel: &str) -> Run {
    train(dir, &[args, &["--channel", channel]].concat())
}

/// The same workload over Memcached, Redis, S3 and DynamoDB: same parameters as `dir:` for
/// synchronous modes, and nothing of the job left on the service.
pub(crate) fn check_remote_channels(
    dir: &std::path::Path,
    args: &[&str],
    reference: &Run,
    sync: &str,
) {
    let memcached = Server::memcached(None);
    let redis = Server::redis();
    let s3 = format!(
        "{}/matrix-{}",
        shared("LAMBDAML_TEST_S3"),
        reference.summary["job_id"].as_str().unwrap()
    );
    let dynamodb = shared("LAMBDAML_TEST_DYNAMODB");
    for url in [&memcached.url, &redis.url, &s3, &dynamodb] {
        let run = run_on(dir, args, url);
        if sync != "async" {
            assert_eq!(
                run.digests(),
                reference.digests(),
                "{url}: other parameters than over dir:"
            );
        }
        let job = run.summary["job_id"].as_str().unwrap();
        let left = if url.starts_with("memcached") || url.starts_with("redis") {
            let server = if url.starts_with("memcached") {
                &memcached
            } else {
                &redis
            };
            assert_eq!(
                server.items(),
                0,
                "{url}: the server still holds items after job {job}"
            );
            Vec::new()
        } else {
            keys_left(url, job)
        };
        assert!(left.is_empty(), "{url}: keys left: {left:?}");
    }
}

fn check(model: &str, optim: &str, sync: &str) {
    let dir = scratch();
    let sparse = model.starts_with("sparse");
    let data = if sparse { sparse_data() } else { dense_data() };
    let chan = dir.path().join("chan");
    // Sparse models step with AdaGrad by default (its rate is not SGD's).
    let lr = if sparse { "0.5" } else { "0.1" };
    let kmeans = model.contains("kmeans");
    let extra: &[&str] = match (kmeans, optim) {
        (true, _) => &["--k", "4", "--tol", "0"],
        // lr * rho well below 1, or the proximal pull undoes every local step.
        (false, "admm") if sparse => &["--local-epochs", "2", "--rho", "0.1", "--tol", "0"],
        (false, "admm") => &["--local-epochs", "2", "--rho", "0.5", "--tol", "0"],
        _ => &[],
    };
    let args: Vec<&str> = [
        &[
            "--data",
            data.to_str().unwrap(),
            "--workers",
            "4",
            "--model",
            model,
            "--optim",
            optim,
            "--sync",
            sync,
            "--epochs",
            "4",
            "--batch-size",
            "50",
            "--lr",
            lr,
        ][..],
        extra,
    ]
    .concat();
    let run = run_on(dir.path(), &args, &format!("dir:{}", chan.display()));
    let s = &run.summary;
    assert_eq!(s["workers"], 4);
    assert_eq!(s["invocations"], 4, "recoveries: {}", s["recoveries"]);
    let losses = run.train_losses();
    assert_eq!(losses.len(), 4);
    assert!(
        losses[3] < losses[0],
        "{model}/{optim}/{sync}: training loss did not decrease: {losses:?}"
    );
    if kmeans {
        assert!(s["final_objective"].as_f64().unwrap() > 0.0);
    } else {
        let acc = s["final_val_accuracy"].as_f64().unwrap();
        assert!(acc > 0.6, "{model}/{optim}/{sync}: accuracy {acc}");
    }
    let digests = run.digests();
    if sync != "async" {
        assert!(
            digests.iter().all(|d| d == &digests[0]),
            "{model}/{optim}/{sync}: workers ended with different parameters: {digests:?}"
        );
    }
    let left = files_under(&chan);
    assert!(left.is_empty(), "keys left on the channel: {left:?}");
    check_remote_channels(dir.path(), &args, &run, sync);
}

macro_rules! matrix {
    ($($name:ident: $model:literal $optim:literal $sync:literal;)*) => {
        $( #[test] fn $name() { check($model, $optim, $sync); } )*
    };
}

matrix! {
    lr_grad_avg_reduce: "lr" "grad_avg" "reduce";
    lr_grad_avg_reduce_scatter: "lr" "grad_avg" "reduce_scatter";
    lr_grad_avg_async: "lr" "grad_avg" "async";
    lr_model_avg_reduce: "lr" "model_avg" "reduce";
    lr_model_avg_reduce_scatter: "lr" "model_avg" "reduce_scatter";
    lr_model_avg_async: "lr" "model_avg" "async";
    svm_grad_avg_reduce: "svm" "grad_avg" "reduce";
    svm_grad_avg_reduce_scatter: "svm" "grad_avg" "reduce_scatter";
    svm_grad_avg_async: "svm" "grad_avg" "async";
    svm_model_avg_reduce: "svm" "model_avg" "reduce";
    svm_model_avg_reduce_scatter: "svm" "model_avg" "reduce_scatter";
    svm_model_avg_async: "svm" "model_avg" "async";
    sparse_lr_grad_avg_reduce: "sparse_lr" "grad_avg" "reduce";
    sparse_lr_grad_avg_reduce_scatter: "sparse_lr" "grad_avg" "reduce_scatter";
    sparse_lr_grad_avg_async: "sparse_lr" "grad_avg" "async";
    sparse_lr_model_avg_reduce: "sparse_lr" "model_avg" "reduce";
    sparse_lr_model_avg_reduce_scatter: "sparse_lr" "model_avg" "reduce_scatter";
    sparse_lr_model_avg_async: "sparse_lr" "model_avg" "async";
    sparse_svm_grad_avg_reduce: "sparse_svm" "grad_avg" "reduce";
    sparse_svm_grad_avg_reduce_scatter: "sparse_svm" "grad_avg" "reduce_scatter";
    sparse_svm_grad_avg_async: "sparse_svm" "grad_avg" "async";
    sparse_svm_model_avg_reduce: "sparse_svm" "model_avg" "reduce";
    sparse_svm_model_avg_reduce_scatter: "sparse_svm" "model_avg" "reduce_scatter";
    sparse_svm_model_avg_async: "sparse_svm" "model_avg" "async";
    lr_admm_reduce: "lr" "admm" "reduce";
    lr_admm_reduce_scatter: "lr" "admm" "reduce_scatter";
    svm_admm_reduce: "svm" "admm" "reduce";
    svm_admm_reduce_scatter: "svm" "admm" "reduce_scatter";
    sparse_lr_admm_reduce: "sparse_lr" "admm" "reduce";
    sparse_lr_admm_reduce_scatter: "sparse_lr" "admm" "reduce_scatter";
    sparse_svm_admm_reduce: "sparse_svm" "admm" "reduce";
    sparse_svm_admm_reduce_scatter: "sparse_svm" "admm" "reduce_scatter";
    kmeans_reduce: "kmeans" "grad_avg" "reduce";
    kmeans_reduce_scatter: "kmeans" "grad_avg" "reduce_scatter";
    sparse_kmeans_reduce: "sparse_kmeans" "grad_avg" "reduce";
    sparse_kmeans_reduce_scatter: "sparse_kmeans" "grad_avg" "reduce_scatter";
}

/// Combinations that make no sense are refused with a reason, before any worker starts.
#[test]
fn meaningless_combinations_are_refused() {
    let dir = scratch();
    for (args, reason) in [
        (
            &["--model", "kmeans", "--optim", "admm"][..],
            "ADMM does not apply to KMeans",
        ),
        (
            &["--model", "kmeans", "--sync", "async"][..],
            "use reduce or reduce_scatter",
        ),
        (
            &["--optim", "admm", "--sync", "async"][..],
            "use reduce or reduce_scatter",
        ),
        (&["--reg", "l1"][..], "l1 is supported with --optim admm"),
    ] {
        let out = output(
            lambdaml()
                .current_dir(dir.path())
                .args(["train", "--quiet", "--runs-dir"])
                .arg(dir.path().join("runs"))
                .args(args),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(reason),
            "{args:?}: {err}"
        );
    }
}

/// reduce and reduce_scatter sum in the same order, so they give the same bits.
#[test]
fn reduce_and_reduce_scatter_train_the_same_model() {
    let dir = scratch();
    let base = [
        "--data",
        dense_data().to_str().unwrap(),
        "--workers",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "64",
    ];
    let a = train(dir.path(), &[&base[..], &["--sync", "reduce"]].concat());
    let b = train(
        dir.path(),
        &[&base[..], &["--sync", "reduce_scatter"]].concat(),
    );
    assert_eq!(a.model_bytes(), b.model_bytes());
}
