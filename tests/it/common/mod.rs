//! Helpers for integration tests: run the real `lambdaml` binary (driver and worker
//! processes), with datasets generated once per test binary.

pub mod services;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// The `lambdaml` binary under test.
pub fn lambdaml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lambdaml"))
}

/// Runs a command and returns its output, whatever the exit status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("the lambdaml binary runs")
}

/// A scratch directory for one test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lambdaml-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

/// `lambdaml data synth ARGS` written once per test binary run as `name` in the shared data folder.
pub fn shared_data(name: &str, args: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if !path.exists() {
        // Several test binaries may race: write to a private name, then rename.
        let tmp = dir.join(format!("{name}.{}", std::process::id()));
        let out = output(
            lambdaml()
                .args(["data", "synth"])
                .args(args)
                .arg("--out")
                .arg(&tmp),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// 4,000 HIGGS-like dense rows.
pub fn dense_data() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        shared_data(
            "higgs-4000.svm",
            &["higgs", "--rows", "4000", "--seed", "3"],
        )
    })
}

/// 20,000 HIGGS-like dense rows.
pub fn dense_data_20k() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        shared_data(
            "higgs-20000.svm",
            &["higgs", "--rows", "20000", "--seed", "4"],
        )
    })
}

/// 3,000 RCV1-like sparse rows over 5,000 features.
pub fn sparse_data() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        shared_data(
            "rcv1-3000.svm",
            &[
                "rcv1",
                "--rows",
                "3000",
                "--features",
                "5000",
                "--seed",
                "5",
            ],
        )
    })
}

/// Splits `data` into `parts` partitions at `out` (a directory or s3://...) with the CLI.
pub fn split(data: &Path, parts: usize, out: impl AsRef<std::ffi::OsStr>) {
    let out = output(
        lambdaml()
            .args(["data", "split"])
            .arg(data)
            .args(["--parts", &parts.to_string(), "--out"])
            .arg(out),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Splits the dense test data into 4 partitions under `dir/parts` and breaks row 42 of
/// partition 2 (its label becomes NaN), so that worker 2 fails while loading and the others
/// are mid-round.
pub fn partitions_with_a_bad_line(dir: &Path) -> PathBuf {
    let parts = dir.join("parts");
    split(dense_data(), 4, &parts);
    let part2 = parts.join("part-00002-of-00004");
    let mut bytes = std::fs::read(&part2).unwrap();
    // The binary partition format: a 24-byte header, then per row a label, a pair count
    // and the (index, value) pairs, 4 bytes each.
    let mut at = 24;
    for _ in 0..41 {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 8 + len * 8;
    }
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&part2, bytes).unwrap();
    parts
}

/// Runs `lambdaml train` expecting failure, with the workers started through `exe`;
/// returns stderr and the run folder's worker logs.
pub fn failing_job(
    dir: &std::path::Path,
    exe: Option<&std::path::Path>,
    args: &[&str],
) -> (String, String) {
    let mut cmd = lambdaml();
    if let Some(exe) = exe {
        cmd.env("LAMBDAML_WORKER_EXE", exe);
    }
    let out = output(
        cmd.current_dir(dir)
            .args(["train", "--quiet", "--runs-dir"])
            .arg(dir.join("runs"))
            .args(args),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the job succeeded:\n{stderr}");
    let mut logs = String::new();
    for f in files_under(&dir.join("runs")) {
        if f.extension().is_some_and(|e| e == "log") {
            logs.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
    }
    (stderr, logs)
}

/// A worker binary for `LAMBDAML_WORKER_EXE` (written to `dir/worker.sh`): invocations
/// whose event contains `matching` (a shell `case` pattern, e.g.
/// `*'"worker":1,"invocation":0,'*`) run `then` (a shell command; the event is in `$ev`),
/// every other runs the real `lambdaml`.
pub fn worker_wrapper(dir: &Path, matching: &str, then: &str) -> PathBuf {
    let exe = dir.join("worker.sh");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\nev=$(cat)\ncase \"$ev\" in {matching}) {then};; esac\n\
             printf '%s' \"$ev\" | exec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_lambdaml")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

/// A finished training run.
pub struct Run {
    pub summary: Value,
    pub run_dir: PathBuf,
}

impl Run {
    /// Pooled training loss of each epoch, from metrics.jsonl.
    pub fn train_losses(&self) -> Vec<f64> {
        let text = std::fs::read_to_string(self.run_dir.join("metrics.jsonl")).unwrap();
        let mut sums: Vec<(f64, f64)> = Vec::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let e = v["epoch"].as_u64().unwrap() as usize;
            if sums.len() < e {
                sums.resize(e, (0.0, 0.0));
            }
            let n = v["n_train"].as_f64().unwrap();
            sums[e - 1].0 += v["train_loss"].as_f64().unwrap() * n;
            sums[e - 1].1 += n;
        }
        sums.iter().map(|(s, n)| s / n).collect()
    }

    /// Invocations each worker needed, from the summary.
    pub fn invocations_per_worker(&self) -> Vec<u64> {
        self.summary["invocations_per_worker"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    }

    /// Final parameters of worker 0, as written to model.bin.
    pub fn model_bytes(&self) -> Vec<u8> {
        std::fs::read(self.run_dir.join("model.bin")).unwrap()
    }

    pub fn digests(&self) -> Vec<String> {
        self.summary["param_digests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    }
}

/// Runs `lambdaml train --json` with `args` in `dir` (runs go to `dir/runs`) and returns the
/// run, failing the test with the driver's stderr if it fails.
pub fn train(dir: &Path, args: &[&str]) -> Run {
    train_with(lambdaml(), dir, args)
}

/// As [`train`], with `cmd` (the `lambdaml` binary with an environment of its own).
pub fn train_with(mut cmd: Command, dir: &Path, args: &[&str]) -> Run {
    let out = output(
        cmd.current_dir(dir)
            .args(["train", "--json", "--runs-dir"])
            .arg(dir.join("runs"))
            .args(args),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "train {args:?} failed:\n{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON on stdout");
    let run_dir = dir.join("runs").join(summary["job_id"].as_str().unwrap());
    Run { summary, run_dir }
}

/// Trains `args` once whole and once cut by 1-second deadlines, and checks what a cut must
/// not change: every worker was re-invoked at least twice, and the cut run ends with the same
/// model.bin and epoch losses as the whole one. Returns (whole, cut).
pub fn train_whole_and_cut(dir: &Path, args: &[&str]) -> (Run, Run) {
    let whole = train(dir, args);
    let cut = train(
        dir,
        &[
            args,
            &["--invocation-timeout", "1", "--reinvoke-margin", "0.3"],
        ]
        .concat(),
    );
    let per_worker = cut.invocations_per_worker();
    assert!(
        per_worker.iter().all(|&n| n >= 3),
        "expected at least 2 re-invocations per worker, got invocations {per_worker:?}"
    );
    assert_eq!(
        whole.model_bytes(),
        cut.model_bytes(),
        "re-invoked run ended with other parameters"
    );
    assert_eq!(cut.train_losses(), whole.train_losses());
    (whole, cut)
}

/// Every file left under a `dir:` channel root (temp files included).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// A mark in the environment of a driver, inherited by every process it starts (supervisors,
/// workers, their re-invocations), so that a test can find and kill all of one job's
/// processes without touching other tests'.
pub struct ProcessMark(String);

impl ProcessMark {
    const VAR: &'static str = "LAMBDAML_TEST_PROCESS_MARK";

    /// A fresh mark.
    pub fn new() -> Self {
        ProcessMark(format!("{:016x}", rand::random::<u64>()))
    }

    /// The environment variable that carries the mark, for a process started otherwise.
    pub fn var(&self) -> (&'static str, &str) {
        (Self::VAR, &self.0)
    }

    /// Marks `cmd` (and everything it starts).
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env(Self::VAR, &self.0)
    }

    /// The live processes carrying the mark.
    pub fn pids(&self) -> Vec<u32> {
        let needle = format!("{}={}", Self::VAR, self.0);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
            })
            // A zombie keeps its environment readable until it is reaped, but runs nothing.
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    !stat
                        .rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
            })
            .collect()
    }

    /// SIGKILLs every marked process, again and again until none is left (a process may be
    /// starting another as it is killed).
    pub fn kill_all(&self) {
        let mut quiet_scans = 0;
        while quiet_scans < 3 {
            let pids = self.pids();
            if pids.is_empty() {
                quiet_scans += 1;
            } else {
                quiet_scans = 0;
                let _ = Command::new("kill")
                    .arg("-9")
                    .args(pids.iter().map(u32::to_string))
                    .status();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Waits up to `limit` for every marked process to end; false if some are still running.
    pub fn wait_gone(&self, limit: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if self.pids().is_empty() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.pids().is_empty()
    }
}
