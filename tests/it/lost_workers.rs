//! Workers that end without a word (killed, out of memory) are reported as such, in
//! seconds; the driver deletes a failed job's keys only once every invocation has said it
//! stopped; and a job whose every process was killed leaves nothing on a cache once its keys
//! expire.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::services::Server;
use crate::common::*;

/// Lost workers are not re-invoked here: these tests are about how a loss is reported.
const SMALL_JOB: [&str; 10] = [
    "--max-retries",
    "0",
    "--synth-rows",
    "4000",
    "--workers",
    "2",
    "--epochs",
    "2",
    "--wait-timeout",
    "20",
];

/// A worker that allocated gigabytes used to be killed by the kernel without a record, and
/// the job failed only when a peer gave up waiting for it (`wait_timeout`, 300 s by default)
/// or the driver's stall limit passed. The local platform holds each invocation to its
/// memory as Lambda does and reports the end.
#[test]
fn a_worker_over_its_memory_is_reported_as_out_of_memory() {
    let dir = scratch();
    // Worker 1 builds a 256 MB string (a stand-in for a model sized by a stray index).
    let exe = worker_wrapper(
        dir.path(),
        r#"*'"worker":1,"invocation":0,'*"#,
        r#"exec awk 'BEGIN { s = "x"; for (i = 0; i < 28; i++) s = s s; system("sleep 30") }'"#,
    );
    let (err, _) = failing_job(
        dir.path(),
        Some(&exe),
        &[&SMALL_JOB[..], &["--memory-mb", "128"]].concat(),
    );
    assert!(
        err.contains("worker 1 failed: invocation 0 of worker 1 ran out of memory")
            && err.contains("more than its memory_mb of 128 MB")
            && err.contains("--memory-mb"),
        "{err}"
    );
}

/// A worker killed by a signal (the kernel's out-of-memory killer sends SIGKILL) is reported
/// with the signal and the last lines of its log.
#[test]
fn a_killed_worker_is_reported_with_its_signal_and_log() {
    let dir = scratch();
    let exe = worker_wrapper(
        dir.path(),
        r#"*'"worker":1,"invocation":0,'*"#,
        "echo 'about to be killed' >&2; kill -9 $$",
    );
    let (err, _) = failing_job(dir.path(), Some(&exe), &SMALL_JOB);
    assert!(
        err.contains("invocation 0 of worker 1 was killed by signal 9 (SIGKILL)")
            && err.contains("about to be killed"),
        "{err}"
    );
}

/// The driver of a failed job used to delete its keys after 10 s whatever its workers were
/// doing, and an invocation that started later wrote keys nobody deleted. It now deletes
/// them once every worker has said it stopped: worker 3 starts 12 s late, sees the abort
/// flag, says so, and the channel is left empty.
#[test]
fn a_failed_job_is_cleaned_up_after_its_late_invocations() {
    let dir = scratch();
    let parts = partitions_with_a_bad_line(dir.path());
    let exe = worker_wrapper(dir.path(), r#"*'"worker":3,"invocation":0,'*"#, "sleep 12");
    let mark = ProcessMark::new();
    let mut cmd = lambdaml();
    mark.apply(&mut cmd)
        .env("LAMBDAML_WORKER_EXE", &exe)
        .current_dir(dir.path())
        .args(["train", "--quiet", "--workers", "4", "--data"])
        .arg(&parts)
        .arg("--runs-dir")
        .arg(dir.path().join("runs"));
    let out = output(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("worker 2 failed"),
        "{err}"
    );
    assert!(
        mark.wait_gone(Duration::from_secs(60)),
        "the job's invocations were still running a minute after it failed"
    );
    let left = files_under(&dir.path().join("runs/_channel"));
    assert!(left.is_empty(), "keys left behind: {left:?}");
}

/// Driver, supervisors and workers all SIGKILLed mid-job (re-invoking every 2 s): nothing
/// of the job runs any more, and every key it wrote expires within `max_job_seconds +
/// invocation_timeout + 10 s` of being written.
fn killed_whole(server: Server) {
    let dir = scratch();
    let mark = ProcessMark::new();
    let mut cmd = lambdaml();
    mark.apply(&mut cmd)
        .current_dir(dir.path())
        .args(["train", "--quiet", "--runs-dir"])
        .arg(dir.path().join("runs"))
        .args(["--data", dense_data_20k().to_str().unwrap()])
        .args(["--workers", "3", "--epochs", "1000", "--batch-size", "20"])
        .args(["--invocation-timeout", "2", "--reinvoke-margin", "0.5"])
        .args(["--max-job-seconds", "6", "--channel", &server.url])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut driver = cmd.spawn().unwrap();
    let started = Instant::now();
    while server.items() == 0 || started.elapsed() < Duration::from_millis(2500) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    mark.kill_all();
    let killed = Instant::now();
    let _ = driver.wait();
    let left = server.items();
    assert!(
        left > 0,
        "nothing was left to expire, so this tested nothing"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        mark.pids().is_empty(),
        "a killed job still runs: {:?}",
        mark.pids()
    );
    // Every key was written before the kill, so it expires 6 + 2 + 10 s after it, at most.
    std::thread::sleep(Duration::from_secs(19).saturating_sub(killed.elapsed()));
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        server.drop_expired();
        let items = server.items();
        if items == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{items} of the {left} keys left by the killed job are still there after their expiry"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_job_killed_whole_leaves_nothing_on_memcached_after_the_expiry() {
    killed_whole(Server::memcached(None));
}

#[test]
fn a_job_killed_whole_leaves_nothing_on_redis_after_the_expiry() {
    killed_whole(Server::redis());
}
