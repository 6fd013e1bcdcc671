//! The driver is not a single point of failure: a job lives on its channel, so `lambdaml
//! job status|attach|cancel` work from another process, and workers whose driver is gone
//! past its lease stop and delete the job's keys.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::services::Server;
use crate::common::*;

/// A job of `epochs` epochs of about a tenth of a second each here: long enough that a
/// driver killed after two is gone while its workers still run, even on a faster machine.
fn job_args(channel: &str, epochs: &str) -> Vec<String> {
    [
        "--data",
        dense_data_20k().to_str().unwrap(),
        "--workers",
        "4",
        "--epochs",
        epochs,
        "--batch-size",
        "20",
        "--channel",
        channel,
    ]
    .map(String::from)
    .to_vec()
}

/// A driver started in the background (runs under a folder of its own in `dir`), and its
/// job's id once its workers have finished two epochs.
// The caller waits for the driver it gets back.
#[allow(clippy::zombie_processes)]
fn start_driver(dir: &Path, args: &[String], mark: &ProcessMark) -> (Child, String) {
    let runs = runs_of(dir, mark);
    let mut cmd = lambdaml();
    mark.apply(&mut cmd)
        .current_dir(dir)
        .args(["train", "--quiet", "--runs-dir"])
        .arg(&runs)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let driver = cmd.spawn().unwrap();
    let started = Instant::now();
    loop {
        let logs: Vec<PathBuf> = files_under(&runs)
            .into_iter()
            .filter(|f| f.ends_with("logs/worker-0.log"))
            .collect();
        if let Some(log) = logs.first()
            && std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches("epoch done")
                .count()
                >= 2
        {
            let job = log.parent().unwrap().parent().unwrap();
            return (driver, job.file_name().unwrap().to_string_lossy().into());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the job did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runs_of(dir: &Path, mark: &ProcessMark) -> PathBuf {
    dir.join(format!("runs-{}", mark.var().1))
}

fn job_command(args: &[&str]) -> std::process::Output {
    output(lambdaml().arg("job").args(args))
}

/// The driver SIGKILLed in the middle of a job; `lambdaml job status` sees it gone, and
/// `lambdaml job attach` from a new process finishes the job with the result of an
/// undisturbed run, a complete run folder, and nothing left on the channel.
#[test]
fn a_job_whose_driver_was_killed_is_finished_by_attach() {
    let dir = scratch();
    let memcached = Server::memcached(None);
    let args = job_args(&memcached.url, "100");
    let whole = train(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mark = ProcessMark::new();
    let (mut driver, job) = start_driver(dir.path(), &args, &mark);
    driver.kill().unwrap();
    driver.wait().unwrap();
    // Past the 5 s after which a silent driver counts as gone (5 beats of 1 s).
    std::thread::sleep(Duration::from_secs(6));
    let status = job_command(&["status", &job, "--channel", &memcached.url]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(shown.contains("driver   gone"), "{shown}");
    assert!(shown.contains("running"), "{shown}");
    let out = job_command(&["attach", &job, "--channel", &memcached.url, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let attached = Run {
        run_dir: runs_of(dir.path(), &mark).join(&job),
        summary,
    };
    assert_eq!(whole.model_bytes(), attached.model_bytes());
    assert_eq!(attached.train_losses(), whole.train_losses());
    for file in [
        "summary.json",
        "metrics.jsonl",
        "model.bin",
        "config.toml",
        "logs",
    ] {
        assert!(
            attached.run_dir.join(file).exists(),
            "no {file} in the run folder"
        );
    }
    assert!(
        !attached.run_dir.join("partitions").exists(),
        "the job's partitions outlived it"
    );
    assert!(mark.wait_gone(Duration::from_secs(30)));
    assert_eq!(memcached.items(), 0, "keys left on memcached");
}

/// Without an attach, the workers of a job whose driver was killed stop once its lease is
/// over and delete every key of the job.
fn workers_clean_up_after_the_lease(channel: &str, left: impl Fn() -> usize) {
    let dir = scratch();
    let mut args = job_args(channel, "400");
    args.extend(["--driver-lease".to_string(), "3".to_string()]);
    let mark = ProcessMark::new();
    let (mut driver, _) = start_driver(dir.path(), &args, &mark);
    assert!(left() > 0);
    driver.kill().unwrap();
    driver.wait().unwrap();
    assert!(
        mark.wait_gone(Duration::from_secs(60)),
        "workers still run a minute after their driver was killed"
    );
    assert_eq!(left(), 0, "keys left after the lease");
}

#[test]
fn without_attach_the_workers_delete_the_job_from_memcached_after_the_lease() {
    let memcached = Server::memcached(None);
    workers_clean_up_after_the_lease(&memcached.url, || memcached.items() as usize);
}

#[test]
fn without_attach_the_workers_delete_the_job_from_a_directory_after_the_lease() {
    let root = scratch();
    let url = format!("dir:{}", root.path().display());
    workers_clean_up_after_the_lease(&url, || files_under(root.path()).len());
}

/// `lambdaml job cancel` with the driver alive: the driver stops its workers, deletes the
/// keys and fails with "cancelled"; with the driver gone, the command does it itself.
#[test]
fn cancel_stops_a_job_with_or_without_its_driver() {
    let dir = scratch();
    let memcached = Server::memcached(None);
    let args = job_args(&memcached.url, "400");

    let mark = ProcessMark::new();
    let (driver, job) = start_driver(dir.path(), &args, &mark);
    let out = job_command(&["cancel", &job, "--channel", &memcached.url]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("its driver stopped the workers"), "{said}");
    let driven = driver.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&driven.stderr);
    assert!(!driven.status.success());
    assert!(
        err.contains("the job was cancelled (lambdaml job cancel)"),
        "{err}"
    );
    assert!(mark.wait_gone(Duration::from_secs(30)));
    assert_eq!(memcached.items(), 0, "keys left after a cancel");

    let mark = ProcessMark::new();
    let (mut driver, job) = start_driver(dir.path(), &args, &mark);
    driver.kill().unwrap();
    driver.wait().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let out = job_command(&["cancel", &job, "--channel", &memcached.url]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("its driver was gone"), "{said}");
    assert!(mark.wait_gone(Duration::from_secs(30)));
    assert_eq!(
        memcached.items(),
        0,
        "keys left after a cancel without a driver"
    );
}

/// Ctrl-C in the terminal (SIGINT to the driver's process group) stops the job as a cancel
/// does: the workers stop within a beat, the driver deletes the job's keys and says so.
#[test]
fn ctrl_c_stops_the_job_and_deletes_its_keys() {
    let dir = scratch();
    let memcached = Server::memcached(None);
    let args = job_args(&memcached.url, "400");
    let mark = ProcessMark::new();
    let runs = runs_of(dir.path(), &mark);
    let mut cmd = lambdaml();
    use std::os::unix::process::CommandExt;
    mark.apply(&mut cmd)
        .process_group(0)
        .current_dir(dir.path())
        .args(["train", "--quiet", "--runs-dir"])
        .arg(&runs)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let driver = cmd.spawn().unwrap();
    let started = Instant::now();
    while !files_under(&runs).iter().any(|f| {
        f.ends_with("logs/worker-0.log")
            && std::fs::read_to_string(f).is_ok_and(|l| l.matches("epoch done").count() >= 2)
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the job did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let group = format!("-{}", driver.id());
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .unwrap()
            .success()
    );
    let out = driver.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("the job was interrupted (Ctrl-C)"), "{err}");
    assert!(mark.wait_gone(Duration::from_secs(30)));
    assert_eq!(memcached.items(), 0, "keys left after Ctrl-C");
}
