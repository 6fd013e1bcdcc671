//! A worker that dies, hangs or runs twice costs seconds, not the job: it is re-invoked from
//! its checkpoint (the driver learns of its death from its platform, or from its missing
//! heartbeats), the job ends with the same parameters as an undisturbed run, and an
//! invocation that was replaced stops without writing.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::services::shared;
use crate::common::*;

/// The job every test here runs: long enough (about 10 epochs of many rounds) to be killed
/// in the middle.
fn job(channel: &str, sync: &str, batch: &str, epochs: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--data",
        dense_data_20k().to_str().unwrap(),
        "--workers",
        "4",
        "--sync",
        sync,
        "--epochs",
        epochs,
        "--batch-size",
        batch,
    ]
    .map(String::from)
    .to_vec();
    if !channel.is_empty() {
        args.extend(["--channel".to_string(), channel.to_string()]);
    }
    args
}

/// A job running in the background, its processes marked.
struct Running {
    driver: Child,
    mark: ProcessMark,
    runs: PathBuf,
    started: Instant,
}

/// Starts the job in the background, its runs under `dir/disturbed` (apart from the
/// undisturbed run's, whose logs would otherwise be watched).
fn start(dir: &Path, args: &[String]) -> Running {
    let mark = ProcessMark::new();
    let runs = dir.join("disturbed");
    let mut cmd = lambdaml();
    mark.apply(&mut cmd)
        .current_dir(dir)
        .args(["train", "--json", "--runs-dir"])
        .arg(&runs)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Running {
        driver: cmd.spawn().unwrap(),
        mark,
        runs,
        started: Instant::now(),
    }
}

impl Running {
    /// Waits until worker `w` has logged `epochs` finished epochs.
    fn wait_for_epochs(&self, w: usize, epochs: usize) {
        loop {
            let logged = files_under(&self.runs)
                .iter()
                .filter(|f| f.ends_with(format!("logs/worker-{w}.log")))
                .map(|f| {
                    std::fs::read_to_string(f)
                        .unwrap_or_default()
                        .matches("epoch done")
                        .count()
                })
                .sum::<usize>();
            if logged >= epochs {
                return;
            }
            assert!(
                self.started.elapsed() < Duration::from_secs(120),
                "worker {w} did not finish {epochs} epochs in 2 minutes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The supervisor of worker `w`'s running invocation and the worker process under it.
    fn worker_processes(&self, w: usize) -> (u32, Vec<u32>) {
        let log = format!("worker-{w}.log");
        for pid in self.mark.pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("supervise") && cmdline.contains(&log) {
                let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(|c| c.parse().unwrap())
                    .collect();
                return (pid, children);
            }
        }
        panic!("no running invocation of worker {w}");
    }

    /// The driver's summary once the job is done.
    fn finish(self) -> Run {
        let out = self.driver.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the job failed:\n{stderr}");
        let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
        let run_dir = self.runs.join(summary["job_id"].as_str().unwrap());
        Run { summary, run_dir }
    }
}

fn signal(sig: &str, pids: &[u32]) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pids:?}");
}

/// How worker 1 is disturbed in the middle of the job.
#[derive(Clone, Copy)]
enum Fault {
    /// SIGKILL of the worker process: its supervisor (the platform) reports the death.
    KillWorker,
    /// SIGKILL of the worker and its supervisor: nobody reports it, its heartbeats stop.
    KillSilently,
}

/// Runs the job undisturbed, then again with worker 1 killed in its third epoch: the
/// result is the same, bit for bit, and the recovery is in the summary.
fn killed_equals_undisturbed(channel: &str, sync: &str, batch: &str, epochs: &str, fault: Fault) {
    let dir = scratch();
    let args = job(channel, sync, batch, epochs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let whole = train(dir.path(), &args);
    let job = start(dir.path(), &job(channel, sync, batch, epochs));
    job.wait_for_epochs(1, 2);
    let (supervisor, worker) = job.worker_processes(1);
    match fault {
        Fault::KillWorker => signal("KILL", &worker),
        Fault::KillSilently => signal("KILL", &[&[supervisor][..], &worker].concat()),
    }
    let cut = job.finish();
    let recoveries = cut.summary["recoveries"].as_array().expect("a recovery");
    assert_eq!(recoveries.len(), 1, "{recoveries:?}");
    let r = &recoveries[0];
    assert_eq!(r["worker"], 1);
    let cause = r["cause"].as_str().unwrap();
    match fault {
        Fault::KillWorker => assert!(cause.contains("killed by signal 9"), "{cause}"),
        Fault::KillSilently => assert!(cause.contains("sent no heartbeat"), "{cause}"),
    }
    assert_eq!(
        whole.model_bytes(),
        cut.model_bytes(),
        "the recovered job ended with other parameters"
    );
    assert_eq!(
        cut.digests()
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );
    assert_eq!(cut.train_losses().len(), whole.train_losses().len());
    eprintln!(
        "{channel} {sync}: undisturbed {:.1} s, killed {:.1} s (found lost after {:.1} s of \
         silence, back {:.2} s later)",
        whole.summary["wall_seconds"].as_f64().unwrap(),
        cut.summary["wall_seconds"].as_f64().unwrap(),
        r["silent_s"].as_f64().unwrap(),
        r["back_after_s"].as_f64().unwrap_or(f64::NAN),
    );
}

#[test]
fn a_killed_worker_is_recovered_on_dir_with_reduce() {
    killed_equals_undisturbed("", "reduce", "20", "16", Fault::KillWorker);
}

#[test]
fn a_silently_killed_worker_is_recovered_on_dir_with_reduce_scatter() {
    killed_equals_undisturbed("", "reduce_scatter", "20", "16", Fault::KillSilently);
}

#[test]
fn a_killed_worker_is_recovered_on_memcached_with_reduce_scatter() {
    let url = shared("LAMBDAML_TEST_MEMCACHED");
    killed_equals_undisturbed(&url, "reduce_scatter", "20", "16", Fault::KillWorker);
}

#[test]
fn a_silently_killed_worker_is_recovered_on_memcached_with_reduce() {
    let url = shared("LAMBDAML_TEST_MEMCACHED");
    killed_equals_undisturbed(&url, "reduce", "20", "16", Fault::KillSilently);
}

#[test]
fn a_killed_worker_is_recovered_on_s3_with_reduce() {
    let url = format!("{}/recovery-reduce", shared("LAMBDAML_TEST_S3"));
    killed_equals_undisturbed(&url, "reduce", "250", "8", Fault::KillWorker);
}

#[test]
fn a_silently_killed_worker_is_recovered_on_s3_with_reduce_scatter() {
    let url = format!("{}/recovery-scatter", shared("LAMBDAML_TEST_S3"));
    killed_equals_undisturbed(&url, "reduce_scatter", "250", "8", Fault::KillSilently);
}

/// A worker killed at every start is re-invoked `--max-retries` times, then the job fails
/// in seconds (not after `wait_timeout`) naming the worker, how often it was lost, the
/// cause and its last log lines; nothing is left on the channel.
#[test]
fn a_worker_lost_past_max_retries_fails_the_job_in_seconds() {
    let dir = scratch();
    let exe = worker_wrapper(
        dir.path(),
        r#"*'"worker":1,'*"#,
        "echo \"about to be killed\" >&2; kill -9 $$",
    );
    let started = Instant::now();
    let (err, _) = failing_job(
        dir.path(),
        Some(&exe),
        &job("", "reduce", "20", "3")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let took = started.elapsed();
    assert!(
        err.contains("worker 1 failed: it was lost 3 times, more than --max-retries 2 allows")
            && err.contains("invocation 2 of worker 1 was killed by signal 9 (SIGKILL)")
            && err.contains("about to be killed"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(60),
        "the job took {took:?} to fail"
    );
    let left = files_under(&dir.path().join("runs/_channel"));
    assert!(left.is_empty(), "keys left behind: {left:?}");
}

/// A worker frozen (SIGSTOP) for longer than the dead-worker threshold is replaced; woken
/// up while its replacement runs, it finds itself superseded and exits without writing,
/// and the job's result is the one of an undisturbed run.
#[test]
fn a_frozen_worker_is_replaced_and_its_stale_invocation_exits_without_writing() {
    let dir = scratch();
    let url = shared("LAMBDAML_TEST_MEMCACHED");
    // Long enough that the replacement still runs when the frozen one wakes up.
    let args = job(&url, "reduce", "20", "40");
    let whole = train(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let job = start(dir.path(), &args);
    job.wait_for_epochs(1, 2);
    let (_, worker) = job.worker_processes(1);
    signal("STOP", &worker);
    // Declared dead after 5 missed beats of 1 s; the replacement takes over meanwhile.
    std::thread::sleep(Duration::from_secs(7));
    signal("CONT", &worker);
    let cut = job.finish();
    assert_eq!(whole.model_bytes(), cut.model_bytes());
    let recoveries = cut.summary["recoveries"].as_array().unwrap();
    assert_eq!(recoveries.len(), 1, "{recoveries:?}");
    let log = std::fs::read_to_string(cut.run_dir.join("logs/worker-1.log")).unwrap();
    assert!(
        log.contains("superseded: the driver re-invoked this worker as generation 1"),
        "{log}"
    );
    assert!(
        !log.contains("ERROR"),
        "the stale invocation reported an error:\n{log}"
    );
}

/// Lambda may deliver one event twice: two copies of worker 1's first invocation run at
/// once. One stops within a beat (they tell each other apart by their heartbeats), and the
/// job ends as an undisturbed run.
#[test]
fn a_duplicated_invocation_stops_and_changes_nothing() {
    let dir = scratch();
    let args = job("", "reduce", "20", "8");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let whole = train(dir.path(), &args);
    let exe = worker_wrapper(
        dir.path(),
        r#"*'"worker":1,"invocation":0,'*"#,
        &format!(
            "printf '%s' \"$ev\" | '{}' worker &",
            env!("CARGO_BIN_EXE_lambdaml")
        ),
    );
    let mut cmd = lambdaml();
    cmd.env("LAMBDAML_WORKER_EXE", &exe);
    let twice = train_with(cmd, dir.path(), &args);
    assert_eq!(whole.model_bytes(), twice.model_bytes());
    assert!(
        twice.summary.get("recoveries").is_none(),
        "{}",
        twice.summary
    );
    let log = std::fs::read_to_string(twice.run_dir.join("logs/worker-1.log")).unwrap();
    assert!(
        log.contains("a duplicate: another copy of this invocation runs"),
        "{log}"
    );
}
