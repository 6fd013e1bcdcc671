//! Per-epoch metrics, request counts and the cost estimate of real runs, and
//! `lambdaml report` over them.

use crate::common::services::{Server, shared};
use crate::common::*;

/// Requests of every kind in a `usage` (or `requests`) object.
fn request_count(usage: &serde_json::Value) -> u64 {
    ["puts", "gets", "deletes", "lists"]
        .iter()
        .map(|k| usage[k].as_u64().unwrap())
        .sum()
}

/// Trains with 4 workers on `data` over `server` and checks the request count the run reports
/// against the server's own counters.
fn reported_requests_match_the_server(server: &Server, data: &str) -> Run {
    let dir = scratch();
    let before = server.requests();
    let run = train(
        dir.path(),
        &[
            "--data",
            data,
            "--workers",
            "4",
            "--epochs",
            "3",
            "--batch-size",
            "20",
            "--channel",
            &server.url,
        ],
    );
    let served = server.requests() - before;
    let r = &run.summary["requests"];
    let reported = request_count(r);
    let gap = (reported as f64 - served as f64).abs() / served as f64;
    eprintln!("{}: reported {reported}, served {served}", server.url);
    assert!(
        served > 1000 && gap <= 0.01,
        "{}: the run reports {reported} requests ({r}), the server served {served} ({:.2}% apart)",
        server.url,
        100.0 * gap
    );
    // Every epoch record carries its share.
    let text = std::fs::read_to_string(run.run_dir.join("metrics.jsonl")).unwrap();
    let (mut comm_s, mut wait_s) = (0.0, 0.0);
    let per_epoch: u64 = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["wait_s"].as_f64().unwrap() <= v["comm_s"].as_f64().unwrap() + 1e-9);
            assert!(v["compute_s"].as_f64().unwrap() > 0.0);
            comm_s += v["comm_s"].as_f64().unwrap();
            wait_s += v["wait_s"].as_f64().unwrap();
            request_count(&v["usage"])
        })
        .sum();
    assert!(per_epoch > 0 && per_epoch <= reported);
    // `wait_s` means the same in both files; the summary splits `comm_s` into transfer and
    // waiting.
    let time = &run.summary["time"];
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    assert!(
        close(time["wait_s"].as_f64().unwrap(), wait_s),
        "{time} vs {wait_s}"
    );
    assert!(
        close(
            time["transfer_s"].as_f64().unwrap() + time["wait_s"].as_f64().unwrap(),
            comm_s
        ),
        "{time} vs {comm_s}"
    );
    // ElastiCache for the job's duration, Lambda for the workers' seconds.
    let cost = &run.summary["cost"];
    assert!(cost["elasticache"].as_f64().unwrap() > 0.0);
    assert!(cost["lambda_compute"].as_f64().unwrap() > 0.0);
    let total = run.summary["estimated_cost_usd"].as_f64().unwrap();
    assert!((total - cost["total"].as_f64().unwrap()).abs() < 1e-15);
    run
}

#[test]
fn memcached_request_counts_match_the_server_s_stats() {
    let data = dense_data().to_str().unwrap();
    let run = reported_requests_match_the_server(&Server::memcached(None), data);
    assert_eq!(run.summary["data_requests"]["gets"], 0, "local data");
    assert_eq!(run.summary["cost"]["s3_requests"].as_f64().unwrap(), 0.0);
}

#[test]
fn redis_request_counts_match_the_server_s_commandstats() {
    let data = dense_data().to_str().unwrap();
    let run = reported_requests_match_the_server(&Server::redis(), data);
    assert_eq!(run.summary["cost"]["s3_requests"].as_f64().unwrap(), 0.0);
}

#[test]
fn data_read_from_s3_is_priced_as_s3_and_kept_out_of_the_channel_s_counts() {
    let url = format!(
        "{}/metrics-data-{}",
        shared("LAMBDAML_TEST_S3"),
        std::process::id()
    );
    split(dense_data(), 4, &url);
    let run = reported_requests_match_the_server(&Server::memcached(None), &url);
    // Each of the 4 workers' single invocation reads the manifest and its partition.
    let data = &run.summary["data_requests"];
    assert_eq!(data["gets"], 8, "{data}");
    assert!(data["bytes_in"].as_u64().unwrap() > 100_000, "{data}");
    let get_price = run.summary["prices"]["s3_get_per_thousand"]
        .as_f64()
        .unwrap();
    let s3 = run.summary["cost"]["s3_requests"].as_f64().unwrap();
    assert!((s3 - 8.0 * get_price / 1e3).abs() < 1e-15, "{s3}");
}

#[test]
fn cost_follows_memory_size_and_price_overrides() {
    let dir = scratch();
    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, "lambda_gb_second = 1.0\ndate = \"2030-01-01\"\n").unwrap();
    let data = dense_data().to_str().unwrap();
    let base = ["--data", data, "--epochs", "1", "--memory-mb", "1024"];
    let small = train(dir.path(), &base);
    let priced = train(
        dir.path(),
        &[&base[..], &["--prices", prices.to_str().unwrap()]].concat(),
    );
    let s = &priced.summary;
    let billed = s["billed_seconds"].as_f64().unwrap();
    assert!(billed > 0.0);
    // 1 GB at 1 USD per GB-second.
    assert!((s["cost"]["lambda_compute"].as_f64().unwrap() - billed).abs() < 1e-9);
    assert_eq!(s["prices"]["date"], "2030-01-01");
    assert_eq!(
        small.summary["prices"]["date"],
        lambdaml::cost::Prices::default().date.as_str()
    );
    assert!(
        small.summary["cost"]["s3_requests"].as_f64().unwrap() > 0.0,
        "dir: is priced as S3"
    );
}

fn is_png(path: &std::path::Path) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR"
}

#[test]
fn report_compares_three_sync_modes() {
    let dir = scratch();
    let data = dense_data().to_str().unwrap();
    let runs: Vec<Run> = ["reduce", "reduce_scatter", "async"]
        .iter()
        .map(|sync| {
            train(
                dir.path(),
                &["--data", data, "--epochs", "3", "--sync", sync],
            )
        })
        .collect();
    let out = dir.path().join("report");
    let result = output(
        lambdaml()
            .arg("report")
            .args(runs.iter().map(|r| &r.run_dir))
            .arg("--out")
            .arg(&out),
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for chart in ["loss_vs_time.png", "loss_vs_cost.png", "time_breakdown.png"] {
        assert!(is_png(&out.join(chart)), "{chart} is not a PNG");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for (run, sync) in runs.iter().zip(["reduce", "reduce_scatter", "async"]) {
        let id = run.summary["job_id"].as_str().unwrap();
        let row = md
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} is not in the table:\n{md}"));
        assert!(row.contains(&format!("| {sync} |")), "{row}");
    }
    // A folder that is not a run is named.
    let bad = output(
        lambdaml()
            .arg("report")
            .arg(dir.path())
            .arg("--out")
            .arg(&out),
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a run folder"));
}
