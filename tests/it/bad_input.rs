//! Bad input ends with one clear message naming the file and line (or key), a non-zero exit
//! and no panic; a failed job leaves no key on the channel.

use std::path::Path;

use crate::common::*;

/// Runs `lambdaml train` expecting failure; returns stderr.
fn train_fails(dir: &Path, args: &[&str]) -> String {
    let out = output(
        lambdaml()
            .current_dir(dir)
            .args(["train", "--quiet", "--runs-dir"])
            .arg(dir.join("runs"))
            .args(args),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    stderr
}

#[test]
fn a_malformed_line_is_named_by_file_and_line() {
    let dir = scratch();
    let file = dir.path().join("bad.svm");
    std::fs::write(&file, "1 1:0.5 2:1\n0 1:0.1 2:0.2\n1 1:0.3 2=0.9\n0 2:1\n").unwrap();
    let err = train_fails(
        dir.path(),
        &["--data", file.to_str().unwrap(), "--workers", "2"],
    );
    assert!(err.contains("bad.svm:3:"), "{err}");
    assert!(
        err.contains("'2=0.9' is not of the form index:value"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn an_index_past_n_features_is_named_by_file_and_line() {
    let dir = scratch();
    let file = dir.path().join("wide.svm");
    std::fs::write(&file, "1 1:0.5 2:1\n0 1:0.1 7:0.2\n").unwrap();
    let err = train_fails(
        dir.path(),
        &[
            "--data",
            file.to_str().unwrap(),
            "--workers",
            "1",
            "--features",
            "4",
        ],
    );
    assert!(
        err.contains("wide.svm:2:") && err.contains("index 7 is past n_features = 4"),
        "{err}"
    );
}

#[test]
fn an_unknown_model_is_refused_by_flag_and_by_config() {
    let dir = scratch();
    let err = train_fails(dir.path(), &["--model", "cnn"]);
    assert!(
        err.contains("invalid value 'cnn'") && err.contains("sparse_svm"),
        "{err}"
    );
    let cfg = dir.path().join("job.toml");
    std::fs::write(&cfg, "workers = 2\nmodel = \"cnn\"\n").unwrap();
    let err = train_fails(dir.path(), &["--config", cfg.to_str().unwrap()]);
    assert!(err.contains("job.toml") && err.contains("cnn"), "{err}");
}

#[test]
fn an_unwritable_channel_directory_is_named() {
    let dir = scratch();
    // A path below a regular file can never be created, even by root.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let url = format!("dir:{}/chan", blocker.display());
    let err = train_fails(
        dir.path(),
        &["--data", dense_data().to_str().unwrap(), "--channel", &url],
    );
    assert!(
        err.contains("is not usable") && err.contains("put"),
        "{err}"
    );
    assert!(err.contains(&url) && err.contains("control/probe"), "{err}");
}

/// One worker's partition is corrupt: it fails, the driver aborts the others, reports the
/// worker's error (file and line), and deletes every key of the job.
#[test]
fn a_job_failing_mid_way_reports_the_worker_error_and_leaves_no_key() {
    let dir = scratch();
    let parts = partitions_with_a_bad_line(dir.path());
    let chan = dir.path().join("chan");
    let err = train_fails(
        dir.path(),
        &[
            "--data",
            parts.to_str().unwrap(),
            "--workers",
            "4",
            "--channel",
            &format!("dir:{}", chan.display()),
        ],
    );
    assert!(err.contains("worker 2 failed"), "{err}");
    assert!(
        err.contains("part-00002-of-00004: row 42: label NaN"),
        "{err}"
    );
    let left = files_under(&chan);
    assert!(left.is_empty(), "keys left after a failed job: {left:?}");
}

#[test]
fn a_partition_location_with_the_wrong_worker_count_is_explained() {
    let dir = scratch();
    let parts = dir.path().join("parts");
    split(dense_data(), 3, &parts);
    let err = train_fails(
        dir.path(),
        &["--data", parts.to_str().unwrap(), "--workers", "4"],
    );
    assert!(
        err.contains("holds 3 partitions but the job has 4 workers"),
        "{err}"
    );
}

/// A channel or data location that cannot be understood is refused where it enters (the flag
/// or the config file), before anything runs, saying what is expected.
#[test]
fn bad_locations_are_refused_where_they_enter() {
    let dir = scratch();
    let err = train_fails(dir.path(), &["--channel", "ftp://host/x"]);
    assert!(err.contains("unknown scheme 'ftp'"), "{err}");
    let err = train_fails(dir.path(), &["--data", "http://host/data.svm"]);
    assert!(err.contains("'http://' is not supported"), "{err}");
    let config = dir.path().join("job.toml");
    std::fs::write(&config, "channel = \"memcached://h:1?size=3\"\n").unwrap();
    let err = train_fails(dir.path(), &["--config", config.to_str().unwrap()]);
    assert!(
        err.contains("job.toml") && err.contains("unknown option 'size=3'"),
        "{err}"
    );
    let err = train_fails(dir.path(), &["--platform", "lambda"]);
    assert!(err.contains("unknown platform 'lambda'"), "{err}");
}

/// Absurd numbers are refused by validation, never reach a `Duration` and never panic.
#[test]
fn absurd_numbers_fail_validation_instead_of_panicking() {
    let dir = scratch();
    for (flag, value) in [
        ("--wait-timeout", "1e30"),
        ("--invocation-timeout", "1e30"),
        ("--epochs", "4294967295"),
    ] {
        let err = train_fails(dir.path(), &[flag, value]);
        let name = flag.trim_start_matches("--");
        assert!(err.contains(&format!("invalid {name}")), "{flag}: {err}");
    }
    let out =
        output(lambdaml().args(["ps", "serve", "--addr", "127.0.0.1:0", "--interval", "1e30"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(stderr.contains("--interval must be between"), "{stderr}");
}

/// A model that diverges fails the job, saying which epoch and what to try, instead of
/// being reported as trained.
#[test]
fn a_diverged_model_fails_the_job() {
    let dir = scratch();
    let err = train_fails(
        dir.path(),
        &[
            "--synth-rows",
            "4000",
            "--workers",
            "2",
            "--epochs",
            "3",
            "--lr",
            "1e30",
        ],
    );
    assert!(
        err.contains("the model diverged in epoch 1")
            && err.contains("--lr 1000000000000000000000000000000"),
        "{err}"
    );
}

/// A channel that was never reachable fails the job at its start with one message, instead
/// of retrying for the whole wait timeout with a warning per attempt.
#[test]
fn an_unreachable_channel_fails_at_start_with_one_message() {
    let dir = scratch();
    let port = crate::common::services::free_port();
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("memcached://127.0.0.1:{port}"),
    ] {
        let started = std::time::Instant::now();
        let err = train_fails(
            dir.path(),
            &["--channel", &url, "--synth-rows", "1000", "--workers", "1"],
        );
        // A bound on blocking (the default wait timeout is 300 s), not a measurement.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "{url}: took {:?}",
            started.elapsed()
        );
        assert!(
            err.contains(&format!("the channel {url} is not usable")),
            "{err}"
        );
        assert_eq!(
            err.lines().count(),
            1,
            "{url}: one message, no retry lines:\n{err}"
        );
    }
}

/// A byte that is not UTF-8, even in a comment, and an index given twice in one row are
/// named by file and line, for the file split on the fly and for the model alike.
#[test]
fn non_utf8_bytes_and_repeated_indices_are_named_by_line() {
    let dir = scratch();
    let latin1 = dir.path().join("latin1.svm");
    std::fs::write(
        &latin1,
        b"1 1:0.5 2:1\n0 1:0.1 2:0.2 # r\xe9sum\xe9\n1 1:0.3\n",
    )
    .unwrap();
    let err = train_fails(
        dir.path(),
        &["--data", latin1.to_str().unwrap(), "--workers", "1"],
    );
    assert!(
        err.contains("latin1.svm:2:") && err.contains("is not UTF-8"),
        "{err}"
    );
    let twice = dir.path().join("twice.svm");
    std::fs::write(&twice, "1 1:0.5 2:1\n0 2:0.1 1:0.2 2:0.3\n").unwrap();
    for model in ["lr", "sparse_lr"] {
        let err = train_fails(
            dir.path(),
            &[
                "--data",
                twice.to_str().unwrap(),
                "--workers",
                "1",
                "--model",
                model,
            ],
        );
        assert!(
            err.contains("twice.svm:2:") && err.contains("feature index 2 appears more than once"),
            "{model}: {err}"
        );
    }
}

/// One stray huge index in a small file would size a dense model at gigabytes per worker:
/// the job is refused before any worker allocates, naming the line and what to do.
#[test]
fn a_stray_huge_index_is_refused_before_any_worker_allocates() {
    let dir = scratch();
    let file = dir.path().join("stray.svm");
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!("{} 1:{} 2:0.5\n", i % 2, i as f32 / 100.0));
    }
    text.insert_str(0, "1 1:0.5 100000000:1\n");
    std::fs::write(&file, text).unwrap();
    let err = train_fails(
        dir.path(),
        &["--data", file.to_str().unwrap(), "--workers", "2"],
    );
    assert!(
        err.contains("index 100000000 on line 1 of")
            && err.contains("--features")
            && err.contains("sparse_lr")
            && err.contains("--memory-mb 2048"),
        "{err}"
    );
    assert!(!err.contains("killed"), "{err}");
}
