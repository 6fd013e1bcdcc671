//! Hybrid mode: a real `lambdaml ps serve` process on a free loopback port and real worker
//! processes training through it (`--sync ps`), compared with `reduce` over `dir:`; token
//! auth, snapshots that survive a killed server, expiry, and a 100 MB model.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use lambdaml::ps::client::PsClient;
use lambdaml::ps::store::Mode;

/// A parameter server process, killed on drop.
pub(crate) struct PsServer {
    child: Child,
    pub(crate) addr: String,
}

impl PsServer {
    /// Starts `lambdaml ps serve` on a free loopback port with `args`.
    pub(crate) fn start(args: &[&str]) -> PsServer {
        let mut child = lambdaml()
            .args(["ps", "serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        PsServer { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    lambdaml::channel::codec::decode_f32(bytes).unwrap()
}

/// Largest |a - b| relative to max(1, |b|).
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64 / (y.abs() as f64).max(1.0))
        .fold(0.0, f64::max)
}

/// Trains the same job with `reduce` over dir: and through the server; the final
/// parameters must agree up to float summation order, and every worker must end equal.
fn assert_ps_matches_reduce(server: &PsServer, data: &Path, args: &[&str], tol: f64) {
    let dir = scratch();
    let base = ["--data", data.to_str().unwrap(), "--workers", "4"];
    let chan = format!("dir:{}", dir.path().join("chan").display());
    let mut reduce_args: Vec<&str> = base.to_vec();
    reduce_args.extend(args);
    reduce_args.extend(["--sync", "reduce", "--channel", &chan]);
    let reduce = train(dir.path(), &reduce_args);
    let mut ps_args: Vec<&str> = base.to_vec();
    ps_args.extend(args);
    ps_args.extend([
        "--sync",
        "ps",
        "--ps-addr",
        &server.addr,
        "--channel",
        &chan,
    ]);
    let ps = train(dir.path(), &ps_args);

    let digests = ps.digests();
    assert!(
        digests.iter().all(|d| d == &digests[0]),
        "{args:?}: workers disagree: {digests:?}"
    );
    let (a, b) = (floats(&ps.model_bytes()), floats(&reduce.model_bytes()));
    let diff = max_rel_diff(&a, &b);
    assert!(diff < tol, "{args:?}: ps differs from reduce by {diff:e}");
    assert!(
        a.iter().any(|v| *v != 0.0),
        "{args:?}: the model never moved"
    );
    assert_eq!(ps.summary["sync"], "ps");
    assert_eq!(ps.summary["rounds"], reduce.summary["rounds"], "{args:?}");
    assert!(ps.summary["comm"]["puts"].as_u64().unwrap() > 0);
    assert!(
        files_under(&dir.path().join("chan")).is_empty(),
        "{args:?}: keys left on the channel"
    );
}

#[test]
fn grad_avg_and_model_avg_match_reduce_over_dir() {
    let server = PsServer::start(&[]);
    let data = dense_data();
    for model in ["lr", "svm"] {
        for optim in ["grad_avg", "model_avg"] {
            let args = [
                "--model",
                model,
                "--optim",
                optim,
                "--epochs",
                "3",
                "--batch-size",
                "100",
            ];
            assert_ps_matches_reduce(&server, data, &args, 1e-4);
        }
    }
    // Every job dropped its models when it ended.
    let status = runtime().block_on(async {
        let mut c = PsClient::connect(&server.addr, None).await.unwrap();
        c.status().await.unwrap()
    });
    assert!(status.models.is_empty(), "{:?}", status.models);
}

#[test]
fn two_runs_through_the_server_train_bit_identical_models() {
    // Pushes arrive in a different order every run; the server applies them in worker
    // order, so the sums and the model do not depend on it.
    let server = PsServer::start(&[]);
    let dir = scratch();
    let chan = format!("dir:{}", dir.path().join("chan").display());
    let args = [
        "--data",
        dense_data().to_str().unwrap(),
        "--workers",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--sync",
        "ps",
        "--ps-addr",
        &server.addr,
        "--channel",
        &chan,
    ];
    let first = train(dir.path(), &args);
    let second = train(dir.path(), &args);
    assert_eq!(first.digests(), second.digests());
    assert_eq!(first.train_losses(), second.train_losses());
}

#[test]
fn admm_and_kmeans_match_reduce_over_dir() {
    let server = PsServer::start(&[]);
    let admm = [
        "--optim", "admm", "--epochs", "4", "--lam", "0.01", "--tol", "0",
    ];
    assert_ps_matches_reduce(&server, dense_data(), &admm, 1e-4);
    let kmeans = [
        "--model", "kmeans", "--k", "4", "--epochs", "5", "--tol", "0",
    ];
    assert_ps_matches_reduce(&server, dense_data(), &kmeans, 1e-4);
}

#[test]
fn reinvoked_workers_resume_on_the_server() {
    let server = PsServer::start(&[]);
    let dir = scratch();
    let data = dense_data_20k().to_str().unwrap();
    let common = [
        "--data",
        data,
        "--workers",
        "4",
        "--epochs",
        "20",
        "--batch-size",
        "10",
        "--sync",
        "ps",
        "--ps-addr",
        &server.addr,
    ];
    let whole = train(dir.path(), &common);
    let mut cut = common.to_vec();
    cut.extend(["--invocation-timeout", "1", "--reinvoke-margin", "0.3"]);
    let resumed = train(dir.path(), &cut);
    let invocations = resumed.summary["invocations"].as_u64().unwrap();
    assert!(
        invocations >= 8,
        "too few re-invocations ({invocations} invocations)"
    );
    let diff = max_rel_diff(
        &floats(&resumed.model_bytes()),
        &floats(&whole.model_bytes()),
    );
    assert!(diff < 1e-4, "resumed run differs by {diff:e}");
}

#[test]
fn a_wrong_or_missing_token_is_rejected() {
    let server = PsServer::start(&["--token", "s3cret"]);
    let status = |token: Option<&str>| {
        let mut cmd = lambdaml();
        cmd.args(["ps", "status", "--addr", &server.addr])
            .env_remove("LAMBDAML_PS_TOKEN");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        output(&mut cmd)
    };
    let missing = status(None);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("needs a token"), "{err}");
    let wrong = status(Some("guess"));
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("wrong parameter-server token"), "{err}");
    let right = status(Some("s3cret"));
    assert!(right.status.success());
    assert!(String::from_utf8_lossy(&right.stdout).contains("0 models"));

    let dir = scratch();
    let data = dense_data().to_str().unwrap();
    let job = |token: &str| {
        output(
            lambdaml()
                .current_dir(dir.path())
                .args(["train", "--quiet", "--epochs", "1", "--data", data])
                .args(["--sync", "ps", "--ps-addr", &server.addr])
                .arg("--runs-dir")
                .arg(dir.path().join("runs"))
                .env("LAMBDAML_PS_TOKEN", token),
        )
    };
    let out = job("guess");
    assert!(!out.status.success(), "a job with a wrong token ran");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong parameter-server token"), "{err}");
    let out = job("s3cret");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token is never written to the run folder.
    for f in files_under(&dir.path().join("runs")) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).to_string();
        assert!(!text.contains("s3cret"), "{} holds the token", f.display());
    }
}

/// A token can come from a file (kept out of `ps` listings and shell history) for the
/// server, `ps status` and the workers; an oversized token file is refused before reading.
#[test]
fn tokens_can_come_from_files() {
    let dir = scratch();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-a-file\n").unwrap();
    let token_arg = token_file.to_str().unwrap();
    let server = PsServer::start(&["--token-file", token_arg]);
    let status = output(
        lambdaml()
            .args([
                "ps",
                "status",
                "--addr",
                &server.addr,
                "--token-file",
                token_arg,
            ])
            .env_remove("LAMBDAML_PS_TOKEN"),
    );
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .args(["train", "--quiet", "--epochs", "1", "--data"])
            .arg(dense_data())
            .args(["--sync", "ps", "--ps-addr", &server.addr])
            .args(["--ps-token-file", token_arg, "--runs-dir"])
            .arg(dir.path().join("runs"))
            .env_remove("LAMBDAML_PS_TOKEN"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let huge = dir.path().join("huge");
    std::fs::write(&huge, vec![b'x'; 1 << 20]).unwrap();
    let out = output(lambdaml().args([
        "ps",
        "status",
        "--addr",
        &server.addr,
        "--token-file",
        huge.to_str().unwrap(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("a token is at most 4096"),
        "{err}"
    );
}

#[test]
fn a_restarted_server_serves_its_snapshots() {
    let dir = scratch();
    let snapshots = dir.path().join("ps");
    let snapshots = snapshots.to_str().unwrap();
    let mut server = PsServer::start(&["--dir", snapshots, "--interval", "0.2"]);
    let rt = runtime();
    rt.block_on(async {
        let mut c = PsClient::connect(&server.addr, None).await.unwrap();
        c.register("job-1", "model", 2, 3, Some(&[1.0, 2.0, 3.0]))
            .await
            .unwrap();
        for w in 0..2 {
            c.push(
                "job-1",
                "model",
                0,
                w,
                Mode::Grad { scale: 0.5 },
                &[2.0, 2.0, 2.0],
                None,
            )
            .await
            .unwrap();
        }
    });
    let file = dir.path().join("ps/job-1/model.model");
    let t = Instant::now();
    while !file.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no snapshot written");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.kill(); // SIGKILL: no chance to write anything more
    let server = PsServer::start(&["--dir", snapshots]);
    rt.block_on(async {
        let mut c = PsClient::connect(&server.addr, None).await.unwrap();
        let status = c.status().await.unwrap();
        assert_eq!(status.models.len(), 1);
        assert_eq!(status.models[0].completed_round, Some(0));
        let pulled = c
            .pull("job-1", "model", Some(0), Duration::from_secs(1))
            .await
            .unwrap()
            .expect("round 0 is complete");
        assert_eq!(pulled.values, vec![3.0, 4.0, 5.0]);
        // Rounds go on from where they were.
        for w in 0..2 {
            c.push(
                "job-1",
                "model",
                1,
                w,
                Mode::Grad { scale: 1.0 },
                &[1.0, 1.0, 1.0],
                Some(0),
            )
            .await
            .unwrap();
        }
        let pulled = c
            .pull("job-1", "model", Some(1), Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pulled.values, vec![5.0, 6.0, 7.0]);
    });
}

#[test]
fn an_idle_model_expires_after_expired_plus_interval() {
    let dir = scratch();
    let snapshots = dir.path().join("ps");
    let server = PsServer::start(&[
        "--interval",
        "0.5",
        "--expired",
        "1",
        "--dir",
        snapshots.to_str().unwrap(),
    ]);
    runtime().block_on(async {
        let mut c = PsClient::connect(&server.addr, None).await.unwrap();
        c.register("job-2", "model", 1, 4, None).await.unwrap();
        let registered = Instant::now();
        // Kept while used...
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.pull("job-2", "model", None, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            c.status().await.unwrap().models.len(),
            1,
            "dropped while used"
        );
        // ...gone at most `expired + interval` after its last use.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(c.status().await.unwrap().models.is_empty());
        let err = c
            .pull("job-2", "model", None, Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no model 'model' for job 'job-2'"), "{err}");
        assert!(registered.elapsed() < Duration::from_secs(10));
    });
    assert!(
        !snapshots.join("job-2/model.model").exists(),
        "the expired model's snapshot is still on disk"
    );
}

#[test]
fn a_100_mb_model_streams_through() {
    let server = PsServer::start(&[]);
    let len = 25_000_000; // 100 MB of f32
    let values: Vec<f32> = (0..len).map(|i| (i % 1000) as f32).collect();
    runtime().block_on(async {
        let mut c = PsClient::connect(&server.addr, None).await.unwrap();
        c.register("big", "model", 1, len, None).await.unwrap();
        c.push("big", "model", 0, 0, Mode::Average, &values, None)
            .await
            .unwrap();
        let pulled = c
            .pull("big", "model", Some(0), Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pulled.values.len(), len);
        assert!(pulled.values == values, "values changed in transit");
    });
}

#[test]
fn an_unreachable_server_is_named() {
    let dir = scratch();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .args(["train", "--quiet", "--synth-rows", "1000", "--epochs", "1"])
            .args(["--sync", "ps", "--ps-addr", &addr])
            .arg("--runs-dir")
            .arg(dir.path().join("runs")),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("parameter server {addr} is unreachable")),
        "{err}"
    );
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .args(["train", "--quiet", "--sync", "ps"]),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid ps-addr"), "{err}");
}

/// A resumed worker whose server lost the job's model (expired, restarted without --dir)
/// fails clearly instead of training on a model re-created from its own parameters.
#[test]
fn a_resumed_worker_refuses_a_model_the_server_lost() {
    use lambdaml::comm::{self, Member, PsTarget, SyncMode};
    let server = PsServer::start(&[]);
    let target = PsTarget {
        addr: server.addr.clone(),
        token: None,
    };
    runtime().block_on(async {
        let ch = lambdaml::channel::open(&"mem:ps-lost".parse().unwrap())
            .await
            .unwrap();
        let member = || Member {
            channel: ch.clone(),
            job: "job-lost".into(),
            worker: 0,
            workers: 1,
            wait_timeout: Duration::from_secs(10),
            keep_rounds: 1,
        };
        let mut first = comm::open(SyncMode::Ps, Some(&target), member())
            .await
            .unwrap();
        let mut params = vec![1.0f32; 4];
        first
            .grad_step(0, &mut params, &[1.0; 4], 0.5)
            .await
            .unwrap();
        assert_eq!(params, vec![0.5; 4]);
        let state = first.state();
        let mut client = PsClient::connect(&target.addr, None).await.unwrap();
        client.drop_job("job-lost").await.unwrap();
        let mut resumed = comm::open(SyncMode::Ps, Some(&target), member())
            .await
            .unwrap();
        resumed.restore(state);
        let err = resumed
            .grad_step(1, &mut params, &[1.0; 4], 0.5)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("was gone at round 1"), "{err}");
        assert_eq!(
            params,
            vec![0.5; 4],
            "a failed step leaves the parameters alone"
        );
    });
}

/// Dropping a finished job removes its snapshots too, so a restarted server does not load
/// it again.
#[test]
fn a_dropped_job_leaves_no_snapshot_behind() {
    let dir = scratch();
    let snapshots = dir.path().join("ps");
    let snapshots = snapshots.to_str().unwrap();
    let mut server = PsServer::start(&["--dir", snapshots, "--interval", "0.2"]);
    let rt = runtime();
    let connect = |addr: &str| {
        let addr = addr.to_string();
        rt.block_on(async move { PsClient::connect(&addr, None).await.unwrap() })
    };
    let mut c = connect(&server.addr);
    rt.block_on(c.register("job-done", "model", 1, 3, Some(&[1.0, 2.0, 3.0])))
        .unwrap();
    let file = dir.path().join("ps/job-done/model.model");
    let t = Instant::now();
    while !file.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no snapshot written");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rt.block_on(c.drop_job("job-done")).unwrap(), 1);
    assert!(
        !file.exists(),
        "the dropped job's snapshot is still on disk"
    );
    assert!(!dir.path().join("ps/job-done").exists());
    std::thread::sleep(Duration::from_millis(500));
    server.kill();
    let server = PsServer::start(&["--dir", snapshots]);
    let mut c = connect(&server.addr);
    assert_eq!(rt.block_on(c.status()).unwrap().models.len(), 0);
}

/// A client that announces an enormous model, pushes to a model that does not exist, or
/// fills the server is refused, and the server goes on serving everyone else.
#[test]
fn hostile_calls_are_refused_and_the_server_stays_up() {
    let server = PsServer::start(&["--max-model-mb", "1", "--max-memory-mb", "2"]);
    runtime().block_on(async {
        let mut c = PsClient::connect(&server.addr, None).await.unwrap();
        let err = c
            .register("j", "huge", 1, usize::MAX / 8, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than this server's limit"), "{err}");
        let err = c
            .push(
                "j",
                "absent",
                0,
                0,
                Mode::Average,
                &vec![1.0; 100_000],
                None,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no model 'absent'"), "{err}");
        let quarter = 1 << 18; // 1 MiB of f32
        c.register("j", "a", 1, quarter, None).await.unwrap();
        c.register("j", "b", 1, quarter, None).await.unwrap();
        let err = c
            .register("j", "c", 1, quarter, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--max-memory-mb"), "{err}");
        assert_eq!(c.status().await.unwrap().models.len(), 2);
    });
}
