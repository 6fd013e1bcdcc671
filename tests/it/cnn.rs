//! CNNs (tiny ResNet-20 and MobileNet: the same graphs at 1/8 width) trained by 4 worker
//! processes on synthetic CIFAR-format images: synchronous modes end with bit-identical
//! workers, BatchNorm statistics included, and the loss falls; every sync mode, the
//! parameter server and every channel carry them; a run cut by deadlines ends as an
//! uninterrupted one.

use std::path::Path;
use std::sync::OnceLock;

use crate::common::services::{Server, keys_left, shared};
use crate::common::*;
use crate::ps::PsServer;

/// 1,024 synthetic 3x32x32 images in CIFAR-10's binary format.
fn cifar_data() -> &'static Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        shared_data(
            "cifar-1024.bin",
            &["cifar", "--rows", "1024", "--seed", "2"],
        )
    })
}

/// The arguments of a tiny CNN job on 4 workers.
fn cnn_args<'a>(model: &'a str, optim: &'a str, sync: &'a str) -> Vec<&'a str> {
    vec![
        "--data",
        cifar_data().to_str().unwrap(),
        "--workers",
        "4",
        "--model",
        model,
        "--width",
        "0.125",
        "--optim",
        optim,
        "--sync",
        sync,
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--memory-mb",
        "1769",
    ]
}

/// Replaces the value of `flag` in `args`.
fn set<'a>(args: &mut [&'a str], flag: &str, value: &'a str) {
    let at = args.iter().position(|a| *a == flag).expect("flag present");
    args[at + 1] = value;
}

fn check(model: &str, optim: &str, sync: &str) {
    let dir = scratch();
    let chan = dir.path().join("chan");
    let args = cnn_args(model, optim, sync);
    let run = train(
        dir.path(),
        &[
            &args[..],
            &["--channel", &format!("dir:{}", chan.display())],
        ]
        .concat(),
    );
    let losses = run.train_losses();
    assert_eq!(losses.len(), 3);
    assert!(
        losses[2] < losses[0],
        "{model}/{optim}/{sync}: training loss did not fall: {losses:?}"
    );
    let digests = run.digests();
    if sync != "async" {
        assert!(
            digests.iter().all(|d| d == &digests[0]),
            "{model}/{optim}/{sync}: workers ended with different parameters: {digests:?}"
        );
    }
    assert!(files_under(&chan).is_empty(), "keys left on the channel");
}

#[test]
fn resnet_grad_avg_reduce() {
    check("resnet20", "grad_avg", "reduce");
}

#[test]
fn resnet_grad_avg_reduce_scatter() {
    check("resnet20", "grad_avg", "reduce_scatter");
}

#[test]
fn mobilenet_grad_avg_reduce() {
    check("mobilenet", "grad_avg", "reduce");
}

#[test]
fn mobilenet_grad_avg_reduce_scatter() {
    check("mobilenet", "grad_avg", "reduce_scatter");
}

#[test]
fn resnet_model_avg_reduce() {
    check("resnet20", "model_avg", "reduce");
}

#[test]
fn resnet_grad_avg_async() {
    check("resnet20", "grad_avg", "async");
}

/// model_avg averaging within epochs (`--sync-every`), measured on a test set every epoch:
/// a round per two minibatches (the epoch's last included), identical workers after each
/// epoch's average, and the test shares covering the test file once.
#[test]
fn resnet_model_avg_within_epochs_with_a_test_set() {
    let dir = scratch();
    let test = shared_data(
        "cifar-test-200.bin",
        &["cifar", "--rows", "200", "--seed", "9"],
    );
    let mut args = cnn_args("resnet20", "model_avg", "reduce");
    set(&mut args, "--epochs", "2");
    args.extend(["--sync-every", "2", "--test-data", test.to_str().unwrap()]);
    let run = train(dir.path(), &args);
    let steps = run.summary["steps_per_epoch"].as_u64().unwrap();
    let text = std::fs::read_to_string(run.run_dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for line in &lines {
        assert_eq!(line["rounds"].as_u64(), Some(steps.div_ceil(2)), "{line}");
    }
    let shares: u64 = lines
        .iter()
        .filter(|l| l["epoch"] == 2)
        .map(|l| l["n_test"].as_u64().unwrap())
        .sum();
    assert_eq!(shares, 200);
    let accuracy = run.summary["final_test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    let digests = run.digests();
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
}

/// Every channel carries a CNN and ends with the same parameters as `dir:`.
#[test]
fn resnet_over_every_channel() {
    let dir = scratch();
    let args = cnn_args("resnet20", "grad_avg", "reduce");
    let reference = train(dir.path(), &args);
    crate::train_matrix::check_remote_channels(dir.path(), &args, &reference, "reduce");
}

/// Through the parameter server, two runs train the same model.
#[test]
fn resnet_through_the_parameter_server() {
    let server = PsServer::start(&[]);
    let dir = scratch();
    let mut args = cnn_args("resnet20", "grad_avg", "ps");
    args.extend(["--ps-addr", &server.addr]);
    let a = train(dir.path(), &args);
    let losses = a.train_losses();
    assert!(losses[2] < losses[0], "{losses:?}");
    let b = train(dir.path(), &args);
    assert_eq!(a.model_bytes(), b.model_bytes());
}

/// Deadlines that cut every worker at least twice, mid-epoch: the same parameters (and
/// metrics) as an uninterrupted run with the same seed, momentum and augmentation included.
#[test]
fn a_cnn_cut_by_deadlines_ends_as_an_uninterrupted_run() {
    let dir = scratch();
    let mut base = cnn_args("resnet20", "grad_avg", "reduce");
    set(&mut base, "--width", "0.25");
    set(&mut base, "--batch-size", "8");
    train_whole_and_cut(dir.path(), &base);
}

/// A CNN on rows of features, a linear model on images, and ADMM for a CNN are refused
/// with one message each, before any worker starts.
#[test]
fn cnns_and_their_data_are_checked_at_start() {
    let dir = scratch();
    let run = |args: &[&str]| failing_job(dir.path(), None, args).0;
    let cifar = cifar_data().to_str().unwrap();
    let err = run(&[
        "--model",
        "resnet20",
        "--data",
        dense_data().to_str().unwrap(),
    ]);
    assert!(err.contains("trains on images"), "{err}");
    let err = run(&["--model", "lr", "--data", cifar]);
    assert!(
        err.contains("3x32x32 images") && err.contains("resnet20"),
        "{err}"
    );
    let err = run(&["--model", "mobilenet", "--optim", "admm", "--data", cifar]);
    assert!(err.contains("ADMM is for convex models"), "{err}");
}

/// Real images: Fashion-MNIST's IDX files (the Debian package the test script installs)
/// split into image partitions, and a tiny ResNet trained on its 10,000 test images learns
/// far above chance (10%) in one epoch (46.5% when written; BENCHMARKS.md has the
/// full-size run).
#[test]
fn fashion_mnist_is_read_split_and_learned() {
    let root = std::path::PathBuf::from(crate::common::services::shared(
        "LAMBDAML_TEST_FASHION_MNIST",
    ));
    let dir = scratch();
    let parts = dir.path().join("parts");
    split(&root.join("train-images-idx3-ubyte.gz"), 4, &parts);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(parts.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["rows"],
        serde_json::json!([15000, 15000, 15000, 15000])
    );
    assert_eq!(manifest["format"], "images");
    assert_eq!(
        manifest["images"]["shape"],
        serde_json::json!({"channels": 1, "height": 28, "width": 28})
    );
    assert_eq!(manifest["images"]["classes"], 10);
    let run = train(
        dir.path(),
        &[
            "--data",
            root.join("t10k-images-idx3-ubyte.gz").to_str().unwrap(),
            "--workers",
            "4",
            "--model",
            "resnet20",
            "--width",
            "0.125",
            "--epochs",
            "1",
            "--batch-size",
            "32",
        ],
    );
    let acc = run.summary["final_val_accuracy"].as_f64().unwrap();
    assert!(acc > 0.3, "validation accuracy {acc}");
}

/// `lambdaml bench cnn` times training steps and reports the network's size.
#[test]
fn the_step_bench_runs() {
    let out = output(lambdaml().args([
        "bench",
        "cnn",
        "--model",
        "mobilenet",
        "--width",
        "0.125",
        "--batch",
        "8",
        "--steps",
        "2",
        "--json",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["model"], "mobilenet");
    assert_eq!(t["steps"], 2);
    assert!(t["step_s_median"].as_f64().unwrap() > 0.0);
    assert!(t["params"].as_u64().unwrap() > 1000);
}

/// A full-size ResNet-18 (11.2 M values, 45 MB) crosses Memcached's 1 MB items, Redis, S3,
/// DynamoDB's 400 KB items and the parameter server: one round of gradient averaging (one
/// minibatch per worker), the same parameters as over `dir:`, nothing left on the service.
/// (On dynalite the round takes tens of seconds: no worker may be taken for lost meanwhile.)
#[test]
fn a_full_size_resnet18_round_crosses_the_channels_and_the_parameter_server() {
    let dir = scratch();
    // Three images per worker, none held out: one small minibatch, so the round is about
    // moving 45 MB, not about computing.
    let data = dir.path().join("twelve.bin");
    let out = output(
        lambdaml()
            .args(["data", "synth", "cifar", "--rows", "12", "--out"])
            .arg(&data),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--workers",
        "4",
        "--model",
        "resnet18",
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ];
    let reference = train(dir.path(), &args);
    let digests = reference.digests();
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
    let memcached = Server::memcached(None);
    let redis = Server::redis();
    let s3 = format!(
        "{}/resnet18-{}",
        shared("LAMBDAML_TEST_S3"),
        reference.summary["job_id"].as_str().unwrap()
    );
    let dynamodb = shared("LAMBDAML_TEST_DYNAMODB");
    for url in [&memcached.url, &redis.url, &s3, &dynamodb] {
        let run = train(dir.path(), &[&args[..], &["--channel", url]].concat());
        assert_eq!(
            run.invocations_per_worker(),
            vec![1; 4],
            "{url}: a worker was re-invoked: {}",
            run.summary["recoveries"]
        );
        assert_eq!(
            run.digests(),
            digests,
            "{url}: other parameters than over dir:"
        );
        if !url.starts_with("memcached") {
            // Memcached cannot list: its item count is checked below.
            let left = keys_left(url, run.summary["job_id"].as_str().unwrap());
            assert!(left.is_empty(), "{url}: keys left: {left:?}");
        }
    }
    assert_eq!(memcached.items(), 0, "memcached still holds items");
    assert_eq!(redis.items(), 0, "redis still holds items");
    let server = PsServer::start(&[]);
    let through_ps = train(
        dir.path(),
        &[&args[..], &["--sync", "ps", "--ps-addr", &server.addr]].concat(),
    );
    let losses = through_ps.train_losses();
    assert!(losses[0].is_finite(), "{losses:?}");
}
