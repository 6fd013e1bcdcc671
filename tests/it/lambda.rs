//! The Lambda platform, end to end through the local Lambda (`lambdaml lambda emulate`):
//! the real `lambda_runtime` inside the real binary, invoked with the real aws-sdk-lambda.
//! The local Lambda's own behaviour is tested first, since the rest relies on it.

use std::time::{Duration, Instant};

use aws_sdk_lambda::error::ProvideErrorMetadata;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;

use crate::common::services::{LocalLambda, Server, block_on, keys_left, shared};
use crate::common::*;

fn ping(lambda: &LocalLambda, function: &str, extra: &[&str]) -> std::process::Output {
    let mut cmd = lambdaml();
    lambda.apply(&mut cmd);
    output(
        cmd.args(["lambda", "ping", "--json", "--function", function])
            .args(extra),
    )
}

fn pongs(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A client of the local Lambda that does not retry, to see its answers as they are.
fn client(lambda: &LocalLambda) -> aws_sdk_lambda::Client {
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
        .region(aws_sdk_lambda::config::Region::new("us-east-1"))
        .endpoint_url(&lambda.url)
        .credentials_provider(aws_sdk_lambda::config::Credentials::new(
            "local", "local", None, None, "test",
        ))
        .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_lambda::Client::from_conf(config)
}

#[test]
fn the_local_lambda_reuses_instances_and_kills_one_past_its_timeout() {
    let dir = scratch();
    let lambda = LocalLambda::start(
        dir.path(),
        "pinged",
        &["--concurrency", "2", "--timeout", "2", "--memory", "256"],
        &[],
    );
    // Cold, then warm: one instance serves one invocation after another.
    let first = pongs(&ping(&lambda, "pinged", &["--count", "3"]));
    let served: Vec<u64> = first
        .iter()
        .map(|p| p["served"].as_u64().unwrap())
        .collect();
    assert_eq!(served, [1, 2, 3], "{first:?}");
    assert!(
        first.iter().all(|p| p["pid"] == first[0]["pid"]),
        "{first:?}"
    );
    assert_eq!(first[0]["memory_mb"], 256);
    assert_eq!(lambda.stats()["cold_starts"], 1);

    // Past its timeout, the instance is killed and the caller told; the next invocation
    // gets a new instance.
    let late = ping(&lambda, "pinged", &["--count", "1", "--sleep-ms", "4000"]);
    let stderr = String::from_utf8_lossy(&late.stderr);
    assert!(!late.status.success());
    assert!(
        stderr.contains("Task timed out after 2.00 seconds"),
        "{stderr}"
    );
    let after = pongs(&ping(&lambda, "pinged", &["--count", "1"]));
    assert_eq!(after[0]["served"], 1, "{after:?}");
    assert_ne!(after[0]["pid"], first[0]["pid"]);
    let stats = lambda.stats();
    assert_eq!(stats["timeouts"], 1, "{stats}");
    assert_eq!(stats["cold_starts"], 2, "{stats}");

    // An unknown function is Lambda's 404, in words.
    let missing = ping(&lambda, "nope", &["--count", "1"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("there is no Lambda function 'nope'"),
        "{stderr}"
    );
}

#[test]
fn event_invokes_answer_202_at_once_and_sync_ones_are_throttled_when_all_are_busy() {
    let dir = scratch();
    let lambda = LocalLambda::start(
        dir.path(),
        "queued",
        &["--concurrency", "2", "--timeout", "30"],
        &[],
    );
    let c = client(&lambda);
    let hold = br#"{"kind":"ping","sleep_ms":3000}"#;
    block_on(async {
        for _ in 0..3 {
            let out = c
                .invoke()
                .function_name("queued")
                .invocation_type(InvocationType::Event)
                .payload(Blob::new(&hold[..]))
                .send()
                .await
                .unwrap();
            assert_eq!(out.status_code(), 202);
        }
        // Answered before any of them ran to its end; the third waits in the queue.
        let stats = lambda.stats();
        assert_eq!(stats["completed"], 0, "{stats}");
        assert!(stats["instances"].as_u64().unwrap() <= 2, "{stats}");
        // Both instances are busy at the function's concurrency: a synchronous call is
        // throttled, as Lambda does.
        let throttled = c
            .invoke()
            .function_name("queued")
            .payload(Blob::new(&br#"{"kind":"ping"}"#[..]))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            throttled.code(),
            Some("TooManyRequestsException"),
            "{throttled:?}"
        );
    });
    // The queued event runs once an instance is free.
    let started = Instant::now();
    while lambda.stats()["completed"] != 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            lambda.stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lambda.stats()["cold_starts"], 2);
}

fn lambda_cmd(lambda: &LocalLambda) -> std::process::Command {
    let mut cmd = lambdaml();
    lambda.apply(&mut cmd);
    cmd
}

/// 4 workers on the Lambda platform train over `url` to the parameters the local platform
/// reaches, and leave nothing on the channel.
fn lambda_matches_local(url: &str, memcached: Option<&Server>) {
    let dir = scratch();
    let lambda = LocalLambda::start(dir.path(), "trainer", &["--concurrency", "4"], &[]);
    let base = [
        "--data",
        dense_data().to_str().unwrap(),
        "--workers",
        "4",
        "--epochs",
        "3",
        "--channel",
        url,
    ];
    let local = train(dir.path(), &base);
    let platform = lambda.platform();
    let on_lambda = train_with(
        lambda_cmd(&lambda),
        dir.path(),
        &[&base[..], &["--platform", &platform]].concat(),
    );
    assert_eq!(on_lambda.digests(), local.digests(), "{url}");
    assert_eq!(on_lambda.model_bytes(), local.model_bytes(), "{url}");
    assert_eq!(on_lambda.summary["platform"], platform);
    let stats = lambda.stats();
    assert_eq!(stats["invocations"], 4, "{stats}");
    assert_eq!(stats["completed"], 4, "{stats}");
    let logs = lambda.logs();
    assert!(logs.contains("Lambda runtime invoke"), "{logs}");
    assert!(logs.contains("worker finished"), "{logs}");
    match memcached {
        Some(server) => assert_eq!(server.items(), 0, "{url}: items left"),
        None => {
            let job = on_lambda.summary["job_id"].as_str().unwrap();
            let left = keys_left(url, job);
            assert!(left.is_empty(), "{url}: keys left: {left:?}");
        }
    }
}

#[test]
fn four_workers_on_lambda_match_the_local_platform_over_memcached() {
    let memcached = Server::memcached(None);
    lambda_matches_local(&memcached.url, Some(&memcached));
}

#[test]
fn four_workers_on_lambda_match_the_local_platform_over_s3() {
    let url = format!("{}/on-lambda", shared("LAMBDAML_TEST_S3"));
    lambda_matches_local(&url, None);
}

#[test]
fn workers_reinvoke_themselves_on_lambda_and_end_as_an_uninterrupted_run() {
    let dir = scratch();
    // Invocations of 1 s: every worker checkpoints and invokes its function again and again.
    let lambda = LocalLambda::start(
        dir.path(),
        "short",
        &["--concurrency", "4", "--timeout", "1"],
        &[],
    );
    let base = [
        "--data",
        dense_data_20k().to_str().unwrap(),
        "--workers",
        "4",
        "--epochs",
        "15",
        "--batch-size",
        "20",
    ];
    let whole = train(dir.path(), &base);
    let platform = lambda.platform();
    let cut = train_with(
        lambda_cmd(&lambda),
        dir.path(),
        &[
            &base[..],
            &["--platform", &platform, "--reinvoke-margin", "0.3"],
        ]
        .concat(),
    );
    let per_worker = cut.invocations_per_worker();
    assert!(
        per_worker.iter().all(|&n| n >= 3),
        "expected at least 2 re-invocations per worker, got invocations {per_worker:?}"
    );
    assert_eq!(whole.model_bytes(), cut.model_bytes());
    assert_eq!(cut.train_losses(), whole.train_losses());
    // Re-invocations wait for an instance to be free and reuse it: 4 cold starts in all.
    let stats = lambda.stats();
    assert_eq!(stats["cold_starts"], 4, "{stats}");
    assert_eq!(
        stats["invocations"].as_u64().unwrap(),
        per_worker.iter().sum::<u64>(),
        "{stats}"
    );
    assert_eq!(stats["timeouts"], 0, "{stats}");
}

#[test]
fn a_worker_past_its_timeout_is_killed_and_the_job_fails_naming_it() {
    let dir = scratch();
    let lambda = LocalLambda::start(
        dir.path(),
        "stuck",
        &["--concurrency", "4", "--timeout", "3"],
        &[("LAMBDAML_FAULT_STALL_WORKER", "2")],
    );
    let started = Instant::now();
    let mut cmd = lambda_cmd(&lambda);
    let out = output(
        cmd.current_dir(dir.path())
            .args(["train", "--quiet", "--runs-dir"])
            .arg(dir.path().join("runs"))
            .args(["--data", dense_data().to_str().unwrap()])
            .args(["--workers", "4", "--epochs", "50", "--reinvoke-margin", "1"])
            .args(["--max-retries", "0", "--platform", &lambda.platform()]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("worker 2 failed: invocation 0 of worker 2 ran up to its deadline"),
        "{stderr}"
    );
    // Well before the peers' wait_timeout (300 s) or the driver's stall limit.
    assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
    let waited = Instant::now();
    while lambda.stats()["timeouts"] != 1 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "{}",
            lambda.stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An instance SIGKILLed in the middle of a job (nobody reports it: the local Lambda, like
/// Lambda, says nothing to the job) is found lost by its missing heartbeats, its worker
/// re-invoked from its checkpoint, and the job ends as an undisturbed run.
fn an_instance_killed_mid_job_is_recovered(
    channel: &str,
    batch: &str,
    left: impl Fn() -> Vec<String>,
) {
    let dir = scratch();
    let mark = ProcessMark::new();
    let lambda = LocalLambda::start(dir.path(), "killed", &["--concurrency", "8"], &[mark.var()]);
    let base = [
        "--data",
        dense_data_20k().to_str().unwrap(),
        "--workers",
        "4",
        "--epochs",
        "8",
        "--batch-size",
        batch,
        "--channel",
        channel,
    ];
    let whole = train(dir.path(), &base);
    let mut cmd = lambda_cmd(&lambda);
    cmd.current_dir(dir.path())
        .args(["train", "--json", "--runs-dir"])
        .arg(dir.path().join("runs"))
        .args(base)
        .args(["--platform", &lambda.platform()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let driver = cmd.spawn().unwrap();
    let started = Instant::now();
    while lambda.logs().matches("epoch done").count() < 8 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}",
            lambda.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let instance = mark
        .pids()
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(23).any(|w| w == b"AWS_LAMBDA_RUNTIME_API="))
        })
        .expect("a running instance");
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &instance.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = driver.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cut = Run {
        run_dir: dir
            .path()
            .join("runs")
            .join(summary["job_id"].as_str().unwrap()),
        summary,
    };
    let recoveries = cut.summary["recoveries"].as_array().expect("a recovery");
    assert_eq!(recoveries.len(), 1, "{recoveries:?}");
    assert!(
        recoveries[0]["cause"]
            .as_str()
            .unwrap()
            .contains("sent no heartbeat"),
        "{recoveries:?}"
    );
    assert_eq!(whole.model_bytes(), cut.model_bytes());
    let left = left();
    assert!(left.is_empty(), "keys left on {channel}: {left:?}");
}

#[test]
fn an_instance_killed_mid_job_is_recovered_over_memcached() {
    let memcached = Server::memcached(None);
    an_instance_killed_mid_job_is_recovered(&memcached.url, "20", || {
        // Memcached does not list: name the count.
        match memcached.items() {
            0 => vec![],
            n => vec![format!("{n} items")],
        }
    });
}

#[test]
fn an_instance_killed_mid_job_is_recovered_over_s3() {
    let url = format!("{}/lambda-killed", shared("LAMBDAML_TEST_S3"));
    let prefix = url.clone();
    an_instance_killed_mid_job_is_recovered(&url, "250", || {
        block_on(async {
            let ch = lambdaml::channel::open(&prefix.parse().unwrap())
                .await
                .unwrap();
            ch.list("").await.unwrap().unwrap()
        })
    });
}

#[test]
fn an_instance_killed_mid_job_is_recovered_over_a_directory() {
    let root = scratch();
    let url = format!("dir:{}", root.path().display());
    an_instance_killed_mid_job_is_recovered(&url, "20", || {
        files_under(root.path())
            .into_iter()
            .map(|p| p.display().to_string())
            .collect()
    });
}

#[test]
fn a_function_with_less_concurrency_than_workers_fails_the_job_at_once() {
    let dir = scratch();
    let lambda = LocalLambda::start(dir.path(), "narrow", &["--concurrency", "2"], &[]);
    let (stderr, _) = {
        let mut cmd = lambda_cmd(&lambda);
        let out = output(
            cmd.current_dir(dir.path())
                .args(["train", "--quiet", "--runs-dir"])
                .arg(dir.path().join("runs"))
                .args(["--data", dense_data().to_str().unwrap()])
                .args(["--workers", "4", "--platform", &lambda.platform()]),
        );
        assert!(!out.status.success());
        (String::from_utf8_lossy(&out.stderr).to_string(), ())
    };
    assert!(
        stderr.contains(
            "the Lambda function 'narrow' can run at most 2 invocations at once (its reserved \
             concurrency), fewer than the job's 4 workers"
        ),
        "{stderr}"
    );
    assert_eq!(lambda.stats()["invocations"], 0);
}

/// `bootstrap.zip` as Lambda takes it, holding a launcher of the `lambdaml` under test
/// (`cargo lambda build` makes the real one, minutes of release build).
fn launcher_zip(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("bootstrap.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    zip.start_file("bootstrap", options).unwrap();
    write!(
        zip,
        "#!/bin/sh\nexec '{}' \"$@\"\n",
        env!("CARGO_BIN_EXE_lambdaml")
    )
    .unwrap();
    zip.finish().unwrap();
    path
}

fn succeeds(cmd: &mut std::process::Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The README's "Running on AWS" section, command by command, against the local Lambda
/// (standing in for the account's Lambda) and the local S3: split the data to S3, deploy
/// the function from its zip, ping it, train on it, clean up.
#[test]
fn the_readme_path_to_aws_runs_against_the_local_lambda_and_s3() {
    let dir = scratch();
    let lambda = LocalLambda::start(
        dir.path(),
        "lambdaml-worker",
        &["--no-code", "--concurrency", "8"],
        &[],
    );
    let zip = launcher_zip(dir.path());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let root = format!("{}/readme-{stamp}", shared("LAMBDAML_TEST_S3"));
    let data = format!("{root}/data/higgs");
    let channel = format!("{root}/channel");
    let run = |args: &[&str]| succeeds(lambda_cmd(&lambda).current_dir(dir.path()).args(args));

    run(&[
        "data",
        "split",
        dense_data().to_str().unwrap(),
        "--parts",
        "4",
        "--out",
        &data,
    ]);
    let deployed = run(&[
        "lambda",
        "deploy",
        "--name",
        "lambdaml-worker",
        "--role",
        "arn:aws:iam::123456789012:role/lambdaml-worker",
        "--zip",
        zip.to_str().unwrap(),
        "--memory",
        "2048",
        "--timeout",
        "900",
    ]);
    assert!(deployed.contains("created lambdaml-worker"), "{deployed}");
    let policy = &lambda.stats()["invoke_config"];
    assert_eq!(policy["MaximumRetryAttempts"], 0, "{policy}");
    let pinged = run(&["lambda", "ping", "--function", "lambdaml-worker"]);
    assert!(pinged.contains("lambdaml 0.1.0"), "{pinged}");
    assert!(pinged.contains("2048 MB"), "{pinged}");
    // Deploying again updates the function in place.
    let updated = run(&[
        "lambda",
        "deploy",
        "--name",
        "lambdaml-worker",
        "--role",
        "arn:aws:iam::123456789012:role/lambdaml-worker",
        "--zip",
        zip.to_str().unwrap(),
        "--memory",
        "1024",
        "--timeout",
        "600",
    ]);
    assert!(
        updated.contains("updated the code of lambdaml-worker"),
        "{updated}"
    );
    let summary: serde_json::Value = serde_json::from_str(&run(&[
        "train",
        "--json",
        "--runs-dir",
        "runs",
        "--platform",
        "lambda:lambdaml-worker",
        "--data",
        &data,
        "--workers",
        "4",
        "--epochs",
        "3",
        "--channel",
        &channel,
    ]))
    .unwrap();
    assert_eq!(summary["platform"], "lambda:lambdaml-worker");
    assert_eq!(
        summary["memory_mb"], 1024,
        "the function's memory is billed"
    );
    let job = summary["job_id"].as_str().unwrap();
    assert!(keys_left(&channel, job).is_empty());
    run(&["gc", "--channel", &channel]);
}

#[test]
fn workers_on_aws_cannot_be_given_this_machines_files() {
    let dir = scratch();
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .env(
                "AWS_ENDPOINT_URL_LAMBDA",
                "https://lambda.us-east-1.amazonaws.com",
            )
            .args(["train", "--quiet", "--platform", "lambda:lambdaml-worker"])
            .args(["--data", dense_data().to_str().unwrap()])
            .args(["--channel", "s3://bucket/channel"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("workers on lambda:lambdaml-worker cannot read")
            && stderr.contains("put the data on S3"),
        "{stderr}"
    );
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .env(
                "AWS_ENDPOINT_URL_LAMBDA",
                "https://lambda.us-east-1.amazonaws.com",
            )
            .args(["train", "--quiet", "--platform", "lambda:lambdaml-worker"])
            .args(["--data", "s3://bucket/data", "--channel", "dir:/tmp/x"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the channel dir:/tmp/x"),
        "{stderr}"
    );
}

#[test]
fn a_function_that_cannot_start_fails_its_invocation_once() {
    let dir = scratch();
    let broken = dir.path().join("broken.sh");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lambda = LocalLambda::start(
        dir.path(),
        "broken",
        &["--exe", broken.to_str().unwrap()],
        &[],
    );
    let out = ping(&lambda, "broken", &["--count", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the function did not start"), "{stderr}");
    // One instance tried, one invocation failed: no instances started for it forever.
    std::thread::sleep(Duration::from_millis(300));
    let stats = lambda.stats();
    assert_eq!(stats["cold_starts"], 1, "{stats}");
    assert_eq!(stats["crashed"], 1, "{stats}");
    assert_eq!(stats["instances"], 0, "{stats}");
}

#[test]
fn the_channel_bench_runs_its_workers_on_lambda() {
    let dir = scratch();
    let memcached = Server::memcached(None);
    let lambda = LocalLambda::start(dir.path(), "bencher", &["--concurrency", "2"], &[]);
    let out = succeeds(
        lambda_cmd(&lambda)
            .args(["bench", "channel", "--channel", &memcached.url])
            .args(["--workers", "2", "--size", "4096", "--rounds", "5"])
            .args(["--platform", &lambda.platform()]),
    );
    assert!(
        out.contains("every all-reduce round's result checked against the exact mean"),
        "{out}"
    );
    assert_eq!(lambda.stats()["invocations"], 2);
    assert_eq!(memcached.items(), 0, "the bench left keys");
}
