//! `lambdaml profile` and `lambdaml plan`: a profile measured here is usable by the planner,
//! the planner's pilots leave nothing behind, `plan --run` trains exactly the configuration
//! it recommended, a deadline nothing meets is refused with the reason, and `report` sets
//! the prediction against the run. (How close predictions are is a benchmark, never
//! asserted: BENCHMARKS.md "Planning".)

use serde_json::Value;

use crate::common::*;

fn plan(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let channel = format!("dir:{}", dir.join("channel").display());
    output(
        lambdaml()
            .current_dir(dir)
            .arg("plan")
            .arg("--data")
            .arg(dense_data())
            .args(["--epochs", "2", "--batch-size", "200"])
            .args(["--workers", "1,2", "--optim", "grad_avg,model_avg"])
            .args(["--sync", "reduce,reduce_scatter", "--channels", &channel])
            .arg("--runs-dir")
            .arg(dir.join("runs"))
            .args(extra),
    )
}

#[test]
fn plan_run_trains_the_configuration_it_recommended() {
    let dir = scratch();
    let out = plan(dir.path(), &["--json", "--run", "--deadline", "600"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let both: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = &both["plan"];
    // 2 worker counts x 2 optimizers x 2 sync modes.
    assert_eq!(plan["forecasts"].as_array().unwrap().len(), 8, "{plan}");
    let best = &plan["forecasts"][plan["recommended"]["Ok"].as_u64().unwrap() as usize];
    let choice = &best["choice"];
    let summary = &both["summary"];
    assert_eq!(summary["workers"], choice["workers"]);
    assert_eq!(summary["sync"], choice["sync"]);
    assert_eq!(summary["optim"], choice["optim"]);
    assert_eq!(summary["memory_mb"], choice["memory_mb"]);
    assert_eq!(summary["channel"], choice["channel"]);
    // Under a deadline: the cheapest of those predicted within it, less the reserve.
    let keep = 1.0 - plan["limits"]["slack"].as_f64().unwrap();
    let cost = best["cost"]["total"].as_f64().unwrap();
    for f in plan["forecasts"].as_array().unwrap() {
        if f["wall_s"].as_f64().unwrap() <= 600.0 * keep {
            assert!(cost <= f["cost"]["total"].as_f64().unwrap(), "{f}");
        }
    }
    let run_dir = dir
        .path()
        .join("runs")
        .join(summary["job_id"].as_str().unwrap());
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("forecast.json")).unwrap())
            .unwrap();
    assert_eq!(&kept, best);
    // The pilots' runs and keys are gone: only the planned run is left.
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "_channel")
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(files_under(&dir.path().join("runs/_channel")).is_empty());
    assert!(files_under(&dir.path().join("channel")).is_empty());

    let report = dir.path().join("report");
    let out = output(
        lambdaml()
            .arg("report")
            .arg(&run_dir)
            .arg("--out")
            .arg(&report),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("Predicted against measured"), "{md}");
}

#[test]
fn plan_to_a_target_loss_trains_the_epochs_it_chose() {
    let dir = scratch();
    // Any loss is below 1e9: reached in the pilot's first epoch, so each configuration
    // needs one pilot epoch's worth of updates, n epochs for n synchronous workers.
    let out = plan(
        dir.path(),
        &[
            "--json",
            "--run",
            "--target-loss",
            "1e9",
            "--pilot-runs",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let both: Value = serde_json::from_slice(&out.stdout).unwrap();
    let planned = &both["plan"];
    assert_eq!(planned["target_loss"], 1e9);
    for f in planned["forecasts"].as_array().unwrap() {
        assert_eq!(f["choice"]["epochs"], f["choice"]["workers"], "{f}");
    }
    let best = &planned["forecasts"][planned["recommended"]["Ok"].as_u64().unwrap() as usize];
    assert_eq!(both["summary"]["epochs"], best["choice"]["epochs"]);

    // A target the pilot's two epochs cannot be extrapolated to: every configuration is
    // skipped with why, and nothing trains.
    let dir = scratch();
    let out = plan(
        dir.path(),
        &["--run", "--target-loss", "0", "--pilot-runs", "1"],
    );
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("give --epochs 3 or more"), "{stdout}");
}

#[test]
fn a_deadline_nothing_meets_is_refused_with_the_reason() {
    let dir = scratch();
    let out = plan(dir.path(), &["--run", "--deadline", "0.001"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no configuration fits") && err.contains("past the deadline of 0.0 s"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no configuration fits"), "{stdout}");
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        runs.iter().all(|n| n == "_channel"),
        "nothing trained: {runs:?}"
    );
}

#[test]
fn a_measured_profile_is_one_the_planner_takes() {
    let dir = scratch();
    let channel = format!("dir:{}", dir.path().join("channel").display());
    let profile = dir.path().join("profile.json");
    let out = output(
        lambdaml()
            .current_dir(dir.path())
            .args(["profile", "--channel", &channel])
            .args(["--workers", "1,2", "--sizes", "1024,8192", "--rounds", "2"])
            .arg("--out")
            .arg(&profile),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    let rounds = p["channels"][0]["rounds"].as_array().unwrap();
    // 2 worker counts x 2 sizes x (reduce, reduce_scatter, async).
    assert_eq!(rounds.len(), 12, "{p}");
    assert!(files_under(&dir.path().join("channel")).is_empty());
    let out = plan(
        dir.path(),
        &["--profile", profile.to_str().unwrap(), "--budget", "1"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("recommended:"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
