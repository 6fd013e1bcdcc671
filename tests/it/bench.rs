//! `lambdaml bench channel` runs real worker processes, checks every round's result against
//! the exact mean and counts requests. (Its timings are benchmarks, never asserted.)

use crate::common::*;

fn bench(dir: &std::path::Path, exe: Option<&std::path::Path>) -> std::process::Output {
    let mut cmd = lambdaml();
    if let Some(exe) = exe {
        cmd.env("LAMBDAML_WORKER_EXE", exe);
    }
    let channel = format!("dir:{}", dir.join("channel").display());
    output(cmd.args([
        "bench",
        "channel",
        "--channel",
        &channel,
        "--workers",
        "3",
        "--size",
        "40000",
        "--rounds",
        "4",
        "--json",
    ]))
}

#[test]
fn bench_channel_checks_every_round_and_counts_requests() {
    let dir = scratch();
    let out = bench(dir.path(), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for mode in ["reduce", "reduce_scatter"] {
        let per_round = report["requests_per_round"][mode].as_f64().unwrap();
        // 3 workers each put their share and read the others' at least once.
        assert!(per_round >= 6.0, "{mode}: {per_round} requests per round");
    }
    assert!(files_under(&dir.path().join("channel")).is_empty());
}

/// The bench with worker 1's event edited by the `sed` expression `edit`: its output and
/// its stderr.
fn bench_with_worker_1_edited(dir: &std::path::Path, edit: &str) -> (std::process::Output, String) {
    let exe = worker_wrapper(
        dir,
        r#"*'"worker":1,'*"#,
        &format!(r#"ev=$(printf '%s' "$ev" | sed '{edit}')"#),
    );
    let out = bench(dir, Some(&exe));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

/// One worker contributes vectors of another seed, as a stale or misplaced value would be:
/// the bench fails, naming the round and the value.
#[test]
fn a_wrong_all_reduce_result_fails_the_bench() {
    let dir = scratch();
    let (out, err) = bench_with_worker_1_edited(dir.path(), r#"s/"seed":[0-9]*/"seed":4242/"#);
    assert!(
        !out.status.success() && err.contains("gave a wrong result") && err.contains("round 0"),
        "{err}"
    );
    assert!(files_under(&dir.path().join("channel")).is_empty());
}

/// One worker measures vectors of another size, so a peer that reads its contribution stops
/// with an error: the bench fails with that worker's error. (Before, it waited 10 minutes
/// for the failed worker's result and then said only that the workers had not finished.)
#[test]
fn a_failed_bench_worker_fails_the_bench_with_its_error() {
    let dir = scratch();
    let (out, err) = bench_with_worker_1_edited(dir.path(), r#"s/"size":[0-9]*/"size":400/"#);
    assert!(
        !out.status.success()
            && err.contains("bench worker")
            && err.contains("failed")
            && err.contains("workers disagree on the model size"),
        "{err}"
    );
}
