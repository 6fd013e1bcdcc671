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

/// One worker contributes vectors of another seed, as a stale or misplaced value would be:
/// the bench fails, naming the round and the value.
#[test]
fn a_wrong_all_reduce_result_fails_the_bench() {
    let dir = scratch();
    let exe = worker_wrapper(
        dir.path(),
        r#"*'"worker":1,'*"#,
        r#"ev=$(printf '%s' "$ev" | sed 's/"seed":[0-9]*/"seed":4242/')"#,
    );
    let out = bench(dir.path(), Some(&exe));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gave a wrong result") && err.contains("round 0"),
        "{err}"
    );
    assert!(files_under(&dir.path().join("channel")).is_empty());
}
