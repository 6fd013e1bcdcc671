//! `lambdaml tune`: eight trials on one Redis with room for two at a time run to their end
//! (or are stopped as clearly worse), never more workers alive than the concurrency (read
//! from the workers' own logs, not from the tuner's bookkeeping), nothing left on the
//! channel, and the best trial's TOML trains the same model again.

use std::path::Path;

use serde_json::Value;

use crate::common::services::Server;
use crate::common::*;

/// When a worker's log begins and ends (its first and last lines' times, in µs).
fn alive_span(log: &Path) -> (i64, i64) {
    let text = std::fs::read_to_string(log).unwrap();
    let at = |line: &str| {
        let stamp = line.split_whitespace().next().unwrap();
        chrono::DateTime::parse_from_rfc3339(stamp)
            .unwrap_or_else(|e| panic!("{}: '{stamp}': {e}", log.display()))
            .timestamp_micros()
    };
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("20")).collect();
    (at(lines[0]), at(lines[lines.len() - 1]))
}

/// Most spans open at once.
fn most_at_once(spans: &[(i64, i64)]) -> usize {
    let mut events: Vec<(i64, i32)> = spans.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
    // An end before a start at the same instant.
    events.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in events {
        open += d;
        most = most.max(open);
    }
    most as usize
}

#[test]
fn tune_runs_every_trial_within_the_concurrency_and_its_best_toml_reproduces_it() {
    let dir = scratch();
    let redis = Server::redis();
    let search = dir.path().join("search");
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .arg("tune")
            .arg("--data")
            .arg(dense_data())
            .args(["--epochs", "2", "--workers", "2"])
            .args(["--lr", "0.02,0.1,0.5,2", "--batch-size", "100,400"])
            .args(["--concurrency", "4", "--channel", &redis.url, "--json"])
            .arg("--out")
            .arg(&search)
            .arg("--runs-dir")
            .arg(dir.path().join("runs")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let trials = s["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 8, "{s}");
    let mut spans = Vec::new();
    for t in trials {
        let status = t["status"].as_str().unwrap();
        assert!(status == "done" || status == "stopped", "{t}");
        let run = Path::new(t["run_dir"].as_str().unwrap());
        for w in 0..2 {
            spans.push(alive_span(
                &run.join("logs").join(format!("worker-{w}.log")),
            ));
        }
    }
    assert!(s["peak_workers"].as_u64().unwrap() <= 4, "{s}");
    let most = most_at_once(&spans);
    assert!(most <= 4, "{most} workers alive at once: {spans:?}");
    assert!(most > 2, "the trials never overlapped: {spans:?}");
    assert_eq!(redis.items(), 0, "keys left on the channel");

    let best = &trials[s["best"].as_u64().unwrap() as usize];
    assert_eq!(best["status"], "done");
    let toml = std::fs::read_to_string(search.join("best.toml")).unwrap();
    assert!(toml.contains(&redis.url), "{toml}");
    let again = train(
        dir.path(),
        &["--config", search.join("best.toml").to_str().unwrap()],
    );
    assert_eq!(
        serde_json::to_value(again.digests()).unwrap(),
        best["param_digests"],
        "the best trial's TOML trained another model"
    );
}

#[test]
fn tune_refuses_a_field_that_does_not_exist_naming_it() {
    let dir = scratch();
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .args(["tune", "--param", "learning_rate=0.1,0.2", "--runs-dir"])
            .arg(dir.path()),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("learning_rate"), "{err}");
}
