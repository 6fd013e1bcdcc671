//! Every model x optimizer x sync mode trains with 4 worker processes over a `dir:` channel:
//! loss goes down, synchronous modes end with bit-identical workers, and the channel is
//! left empty.

mod common;

use common::*;

fn check(model: &str, optim: &str, sync: &str) {
    let dir = scratch();
    let sparse = model.starts_with("sparse");
    let data = if sparse { sparse_data() } else { dense_data() };
    let chan = dir.path().join("chan");
    let lr = if sparse { "2.0" } else { "0.1" };
    let run = train(
        dir.path(),
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
            "--channel",
            &format!("dir:{}", chan.display()),
        ],
    );
    let s = &run.summary;
    assert_eq!(s["workers"], 4);
    assert_eq!(s["invocations"], 4);
    let losses = run.train_losses();
    assert_eq!(losses.len(), 4);
    assert!(
        losses[3] < losses[0],
        "{model}/{optim}/{sync}: training loss did not decrease: {losses:?}"
    );
    let acc = s["final_val_accuracy"].as_f64().unwrap();
    assert!(acc > 0.6, "{model}/{optim}/{sync}: accuracy {acc}");
    let digests = run.digests();
    if sync != "async" {
        assert!(
            digests.iter().all(|d| d == &digests[0]),
            "{model}/{optim}/{sync}: workers ended with different parameters: {digests:?}"
        );
    }
    let left = files_under(&chan);
    assert!(left.is_empty(), "keys left on the channel: {left:?}");
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
