//! Jobs over real servers: models larger than an item chunked through Memcached (64 KB
//! items) and DynamoDB (400 KB items), a server paused in the middle of a job, a server that
//! never comes back, and training data read from S3.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::services::{Server, shared};
use crate::common::*;

/// A sparse model of `features` weights (4 bytes each), trained by 4 workers on `channel`.
fn wide_model(dir: &std::path::Path, features: usize, channel: &str) -> Run {
    let data = dir.join(format!("wide-{features}.svm"));
    if !data.exists() {
        let out = output(
            lambdaml()
                .args(["data", "synth", "rcv1", "--rows", "400", "--features"])
                .arg(features.to_string())
                .arg("--out")
                .arg(&data),
        );
        assert!(out.status.success());
    }
    let f = features.to_string();
    train(
        dir,
        &[
            "--data",
            data.to_str().unwrap(),
            "--features",
            &f,
            "--model",
            "sparse_lr",
            "--optim",
            "model_avg",
            "--epochs",
            "2",
            "--batch-size",
            "50",
            "--lr",
            "2",
            "--channel",
            channel,
        ],
    )
}

#[test]
fn a_4_mb_model_crosses_memcached_with_64_kb_items_and_a_2_mb_model_crosses_dynamodb() {
    let dir = scratch();
    let small = Server::memcached(Some(64));
    let chan = format!("dir:{}", dir.path().join("chan").display());
    let four_mb = wide_model(dir.path(), 1_000_000, &chan);
    let over_memcached = wide_model(dir.path(), 1_000_000, &small.url);
    assert_eq!(over_memcached.digests(), four_mb.digests());
    assert_eq!(small.items(), 0, "chunks left on memcached");
    assert!(
        over_memcached.summary["comm"]["bytes_out"]
            .as_u64()
            .unwrap()
            > 4 * 4_000_000
    );
    let two_mb = wide_model(dir.path(), 500_000, &chan);
    let over_dynamodb = wide_model(dir.path(), 500_000, &shared("LAMBDAML_TEST_DYNAMODB"));
    assert_eq!(over_dynamodb.digests(), two_mb.digests());
}

/// Starts a ~3 s training job on `channel` in the background.
fn start_job(
    dir: &std::path::Path,
    channel: &str,
    wait_timeout: &str,
    epochs: &str,
) -> std::process::Child {
    lambdaml()
        .current_dir(dir)
        .args(["train", "--json", "--runs-dir"])
        .arg(dir.join("runs"))
        .args([
            "--data",
            dense_data_20k().to_str().unwrap(),
            "--epochs",
            epochs,
            "--batch-size",
            "20",
        ])
        .args(["--channel", channel, "--wait-timeout", wait_timeout])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Returns once the workers of the job in `dir` exchange data through `server` (not during
/// the driver's probe of the channel, before the job's clock starts).
fn wait_until_training_through(dir: &std::path::Path, server: &Server) {
    let started = Instant::now();
    let training = || {
        files_under(&dir.join("runs")).iter().any(|f| {
            f.ends_with("logs/worker-0.log")
                && std::fs::read_to_string(f).is_ok_and(|log| log.contains("worker started"))
        })
    };
    while !training() || server.items() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job never used the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_server_paused_for_5_seconds_does_not_fail_the_job() {
    for server in [Server::memcached(None), Server::redis()] {
        let dir = scratch();
        let job = start_job(dir.path(), &server.url, "60", "5");
        wait_until_training_through(dir.path(), &server);
        server.signal("STOP");
        std::thread::sleep(Duration::from_secs(5));
        server.signal("CONT");
        let out = job.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: the job failed:\n{stderr}",
            server.url
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            summary["wall_seconds"].as_f64().unwrap() > 5.0,
            "the pause missed the job"
        );
        assert_eq!(server.items(), 0, "{}: keys left", server.url);
        // The same parameters as without the pause.
        let reference = train(
            dir.path(),
            &[
                "--data",
                dense_data_20k().to_str().unwrap(),
                "--epochs",
                "5",
                "--batch-size",
                "20",
            ],
        );
        assert_eq!(summary["param_digests"], reference.summary["param_digests"]);
    }
}

#[test]
fn a_server_that_stays_away_fails_the_job_with_a_clear_error() {
    let dir = scratch();
    let server = Server::memcached(None);
    let url = server.url.clone();
    // Long enough to be training when the server goes: 5 epochs took under 0.5 s once
    // small means were gathered, and the job ended before a kill 0.5 s after its start.
    let job = start_job(dir.path(), &url, "5", "200");
    wait_until_training_through(dir.path(), &server);
    server.signal("KILL");
    let started = Instant::now();
    let out = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the job succeeded without its server"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(last.contains(&url) && last.contains("failed"), "{last}");
}

#[test]
fn partitions_are_read_from_s3() {
    let dir = scratch();
    let url = format!("{}/data-{}", shared("LAMBDAML_TEST_S3"), std::process::id());
    split(dense_data(), 4, &url);
    let local = dir.path().join("parts");
    split(dense_data(), 4, &local);
    let from_s3 = train(dir.path(), &["--data", &url, "--epochs", "2"]);
    let from_disk = train(
        dir.path(),
        &["--data", local.to_str().unwrap(), "--epochs", "2"],
    );
    assert_eq!(from_s3.digests(), from_disk.digests());
    assert_eq!(from_s3.summary["rows"], 4000);
}

/// A password in the channel URL reaches the workers (the job trains) but no file of the run
/// folder, no log and no message: it is shown as `***` everywhere it is recorded.
#[test]
fn a_channel_password_is_recorded_nowhere() {
    let secret = "pw-0d1e-secret";
    let server = Server::redis_with_password(Some(secret));
    let dir = scratch();
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .args([
                "train",
                "--json",
                "-v",
                "--synth-rows",
                "2000",
                "--workers",
                "2",
            ])
            .args(["--epochs", "1", "--channel", &server.url, "--runs-dir"])
            .arg(dir.path().join("runs")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(":***@127.0.0.1"), "{summary}");
    assert!(!summary.contains(secret) && !stderr.contains(secret));
    for file in files_under(&dir.path().join("runs")) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{} holds the password",
            file.display()
        );
    }
    // A wrong password fails the job without showing the one given.
    let wrong = server.url.replace(secret, "not-the-password");
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .args(["train", "--quiet", "--synth-rows", "2000", "--workers", "2"])
            .args(["--channel", &wrong, "--runs-dir"])
            .arg(dir.path().join("runs")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

/// A job that fails mid-round leaves nothing on a channel that cannot list (memcached):
/// every key a worker wrote for the round it was in is reported, and deleted by the driver.
#[test]
fn a_failed_job_leaves_no_key_on_memcached() {
    let server = Server::memcached(None);
    let dir = scratch();
    let parts = partitions_with_a_bad_line(dir.path());
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .args(["train", "--quiet", "--workers", "4", "--data"])
            .arg(&parts)
            .args(["--channel", &server.url, "--runs-dir"])
            .arg(dir.path().join("runs")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("worker 2 failed"),
        "{stderr}"
    );
    assert_eq!(
        server.items(),
        0,
        "keys left on memcached after a failed job"
    );
}
