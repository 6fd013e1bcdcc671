//! What a finished job leaves behind: `summary.json`, `metrics.jsonl`, `model.bin`, and the
//! table printed at the end.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::event::JobSpec;
use super::records::{EpochRecord, WorkerResult};
use crate::channel::meter::Usage;
use crate::channel::{ChannelUrl, codec};
use crate::comm::CommStats;
use crate::cost::{self, Consumption, Cost, Prices};

/// The run's summary (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Job id.
    pub job_id: String,
    /// Model trained.
    pub model: String,
    /// Optimizer.
    pub optim: String,
    /// Synchronisation pattern.
    pub sync: String,
    /// Channel URL.
    pub channel: ChannelUrl,
    /// Where the workers ran (`local`, `lambda:FUNCTION`); runs written before it was
    /// recorded read as `local`.
    #[serde(default)]
    pub platform: crate::platform::PlatformChoice,
    /// Number of workers.
    pub workers: usize,
    /// Epochs trained.
    pub epochs: u32,
    /// Rows per minibatch per worker.
    pub batch_size: usize,
    /// Minibatches per epoch per worker.
    pub steps_per_epoch: usize,
    /// Learning rate.
    pub lr: f32,
    /// How gradients became steps (`sgd`, `adagrad`; none for KMeans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<crate::algo::StepRule>,
    /// Regularisation strength (the model's default resolved when none was given).
    pub lam: f32,
    /// Seed.
    pub seed: u64,
    /// Feature count.
    pub n_features: usize,
    /// Rows in all partitions.
    pub rows: usize,
    /// Epochs (rounds) actually run: fewer than `epochs` when a stopping rule fired.
    pub rounds: u32,
    /// Mean training loss of the last epoch, weighted by training rows (KMeans: the
    /// objective per row).
    pub final_train_loss: f64,
    /// Validation loss after the last epoch, pooled over workers (classifiers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_val_loss: Option<f64>,
    /// Validation accuracy after the last epoch, pooled over workers, in [0, 1] (classifiers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_val_accuracy: Option<f64>,
    /// Test loss after the last epoch, pooled over the workers' shares (`--test-data`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_test_loss: Option<f64>,
    /// Test accuracy after the last epoch, pooled over the workers' shares, in [0, 1].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_test_accuracy: Option<f64>,
    /// KMeans: the last round's within-cluster sum of squares.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_objective: Option<f64>,
    /// ADMM: the last round's mean `||w_i - z||`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_primal_residual: Option<f64>,
    /// ADMM: the last round's `rho ||z - z_prev||`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_dual_residual: Option<f64>,
    /// Wall seconds from the first invocation to the last result.
    pub wall_seconds: f64,
    /// Workers lost on the way (killed, out of memory, silent) and re-invoked from their
    /// checkpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recoveries: Vec<super::follow::Recovery>,
    /// Invocations of all workers, re-invocations included.
    pub invocations: u32,
    /// Invocations per worker.
    pub invocations_per_worker: Vec<u32>,
    /// CRC-32 of each worker's final parameters (equal digests: identical models).
    pub param_digests: Vec<String>,
    /// The layout of the vector in `model.bin` (a hash of its pieces' names and sizes, in
    /// hex): a tool reading the file checks it against the model it builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_layout: Option<String>,
    /// Channel traffic of all workers' collectives.
    pub comm: CommStats,
    /// Every channel request of the job (workers' invocations and the driver), as the
    /// service counts them.
    pub requests: Usage,
    /// Requests of the workers reading the dataset from S3 (zero for local data); priced as
    /// S3 requests whatever the channel is, and not part of `requests`.
    #[serde(default)]
    pub data_requests: Usage,
    /// Where the workers' time went, summed over workers (seconds).
    pub time: TimeSplit,
    /// Memory of a worker function (MB).
    pub memory_mb: u32,
    /// Seconds billed over all invocations.
    pub billed_seconds: f64,
    /// What the run would cost on AWS (USD), see `cost`.
    pub estimated_cost_usd: f64,
    /// The estimate by item.
    pub cost: Cost,
    /// The prices used.
    pub prices: Prices,
}

/// Worker time by activity, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, derive_more::Add)]
pub struct TimeSplit {
    /// Loading data and checkpoints.
    pub load_s: f64,
    /// Computing (gradients, steps, assignments, validation).
    pub compute_s: f64,
    /// Moving data in collectives, waiting excluded (`metrics.jsonl`'s `comm_s` minus its
    /// `wait_s`). Run folders written before the rename call it `comm_s`.
    #[serde(alias = "comm_s")]
    pub transfer_s: f64,
    /// Waiting for peers inside collectives (as `wait_s` in `metrics.jsonl`).
    pub wait_s: f64,
    /// The rest of the epochs (records, checkpoints, bookkeeping).
    pub other_s: f64,
}

impl TimeSplit {
    /// The split of one epoch record.
    pub fn of(r: &EpochRecord) -> TimeSplit {
        TimeSplit {
            load_s: r.load_s,
            compute_s: r.compute_s,
            transfer_s: (r.comm_s - r.wait_s).max(0.0),
            wait_s: r.wait_s,
            other_s: (r.epoch_s - r.compute_s - r.comm_s).max(0.0),
        }
    }
}

/// Per-epoch metrics pooled over workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochSummary {
    /// Epoch, from 1.
    pub epoch: u32,
    /// Training loss weighted by training rows.
    pub train_loss: f64,
    /// Validation loss weighted by validation rows.
    pub val_loss: Option<f64>,
    /// Validation accuracy weighted by validation rows.
    pub val_accuracy: Option<f64>,
    /// Test loss weighted by test rows (`--test-data`).
    pub test_loss: Option<f64>,
    /// Test accuracy weighted by test rows: the whole test set's when the workers hold the
    /// same model (grad_avg, or after model_avg's epoch average).
    pub test_accuracy: Option<f64>,
    /// KMeans objective (the same on every worker).
    pub objective: Option<f64>,
    /// ADMM primal residual (the same on every worker).
    pub primal_residual: Option<f64>,
    /// ADMM dual residual (the same on every worker).
    pub dual_residual: Option<f64>,
    /// Slowest worker's epoch seconds.
    pub epoch_s: f64,
    /// Mean share of the epoch spent in collectives.
    pub comm_share: f64,
}

/// Pools the workers' records of each epoch.
pub fn per_epoch(results: &[WorkerResult]) -> Vec<EpochSummary> {
    let epochs = results.iter().map(|r| r.history.len()).min().unwrap_or(0);
    (0..epochs)
        .map(|e| pool(e as u32 + 1, results.iter().map(|r| &r.history[e])))
        .collect()
}

fn pool<'a>(epoch: u32, records: impl Iterator<Item = &'a EpochRecord>) -> EpochSummary {
    let (mut tl, mut nt, mut vl, mut va, mut nv) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut xl, mut xa, mut nx) = (0.0, 0.0, 0.0);
    let (mut slowest, mut comm_share, mut count) = (0f64, 0.0, 0.0);
    let mut first: Option<&EpochRecord> = None;
    for r in records {
        first.get_or_insert(r);
        tl += r.train_loss * r.n_train as f64;
        nt += r.n_train as f64;
        if let (Some(l), Some(a)) = (r.val_loss, r.val_accuracy) {
            vl += l * r.n_val as f64;
            va += a * r.n_val as f64;
            nv += r.n_val as f64;
        }
        if let (Some(l), Some(a)) = (r.test_loss, r.test_accuracy) {
            xl += l * r.n_test as f64;
            xa += a * r.n_test as f64;
            nx += r.n_test as f64;
        }
        slowest = slowest.max(r.epoch_s);
        comm_share += if r.epoch_s > 0.0 {
            r.comm_s / r.epoch_s
        } else {
            0.0
        };
        count += 1.0;
    }
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let has_val = first.is_some_and(|r| r.val_accuracy.is_some());
    EpochSummary {
        epoch,
        train_loss: div(tl, nt),
        val_loss: has_val.then(|| div(vl, nv)),
        val_accuracy: has_val.then(|| div(va, nv)),
        test_loss: (nx > 0.0).then(|| xl / nx),
        test_accuracy: (nx > 0.0).then(|| xa / nx),
        objective: first.and_then(|r| r.objective),
        primal_residual: first.and_then(|r| r.primal_residual),
        dual_residual: first.and_then(|r| r.dual_residual),
        epoch_s: slowest,
        comm_share: div(comm_share, count),
    }
}

/// Builds the summary of a finished job.
pub fn summarize(
    spec: &JobSpec,
    rows: usize,
    results: &[WorkerResult],
    wall_seconds: f64,
    driver_usage: Usage,
    prices: &Prices,
) -> Summary {
    let cfg = &spec.config;
    let epochs = per_epoch(results);
    let last = epochs.last().copied();
    let invocations_per_worker: Vec<u32> = results.iter().map(|r| r.invocations).collect();
    let requests = results.iter().fold(driver_usage, |acc, r| acc + r.usage);
    let data_requests = results
        .iter()
        .fold(Usage::default(), |acc, r| acc + r.data_usage);
    let billed_seconds: f64 = results.iter().map(|r| r.billed_s).sum();
    let cost = cost::estimate(
        prices,
        &Consumption {
            channel: &spec.channel,
            parameter_server: cfg.ps_addr.is_some(),
            memory_mb: cfg.memory_mb,
            invocations: invocations_per_worker.iter().map(|&i| i as u64).sum(),
            billed_s: billed_seconds,
            usage: requests,
            data_usage: data_requests,
            wall_s: wall_seconds,
        },
    );
    let time = results
        .iter()
        .flat_map(|r| &r.history)
        .fold(TimeSplit::default(), |acc, e| acc + TimeSplit::of(e));
    Summary {
        job_id: spec.job_id.clone(),
        model: cfg.model.to_string(),
        optim: if cfg.model.is_clustering() {
            "lloyd".to_string()
        } else {
            cfg.optim.to_string()
        },
        sync: cfg.sync.to_string(),
        channel: spec.channel.without_secrets(),
        platform: cfg.platform.clone(),
        workers: cfg.workers,
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        steps_per_epoch: spec.steps_per_epoch,
        lr: cfg.learning_rate(),
        step: (!cfg.model.is_clustering()).then(|| cfg.step_rule()),
        lam: cfg.regularisation(spec.training_rows()),
        seed: cfg.seed,
        n_features: spec.n_features,
        rows,
        rounds: epochs.len() as u32,
        final_train_loss: last.map_or(f64::NAN, |l| l.train_loss),
        final_val_loss: last.and_then(|l| l.val_loss),
        final_val_accuracy: last.and_then(|l| l.val_accuracy),
        final_test_loss: last.and_then(|l| l.test_loss),
        final_test_accuracy: last.and_then(|l| l.test_accuracy),
        final_objective: last.and_then(|l| l.objective),
        final_primal_residual: last.and_then(|l| l.primal_residual),
        final_dual_residual: last.and_then(|l| l.dual_residual),
        wall_seconds,
        recoveries: Vec::new(),
        invocations: invocations_per_worker.iter().sum(),
        invocations_per_worker,
        param_digests: results.iter().map(|r| r.digest.clone()).collect(),
        model_layout: results
            .first()
            .and_then(|r| r.layout)
            .map(|h| format!("{h:016x}")),
        comm: results
            .iter()
            .fold(CommStats::default(), |acc, r| acc + r.comm),
        requests,
        data_requests,
        time,
        memory_mb: cfg.memory_mb,
        billed_seconds,
        estimated_cost_usd: cost.total,
        cost,
        prices: prices.clone(),
    }
}

/// CRC-32 of the parameters' little-endian bytes, as hex. The bytes go to the hasher a
/// block at a time: a call per value cost about as much as a round of the all-reduce it
/// checks in `bench channel` (a few tenths of a millisecond per MB this way).
pub fn digest(params: &[f32]) -> String {
    let mut h = crc32fast::Hasher::new();
    let mut bytes = [0u8; 4096];
    for chunk in params.chunks(bytes.len() / 4) {
        for (b, v) in bytes.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&bytes[..chunk.len() * 4]);
    }
    format!("{:08x}", h.finalize())
}

/// Writes `summary.json`, `metrics.jsonl` (a line per worker per epoch) and `model.bin`
/// (worker 0's parameters in the wire format).
pub fn write_run(dir: &Path, summary: &Summary, results: &[WorkerResult]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(summary).expect("summary serialises");
    std::fs::write(dir.join("summary.json"), json)?;
    let mut metrics = std::io::BufWriter::new(std::fs::File::create(dir.join("metrics.jsonl"))?);
    for r in results {
        for e in &r.history {
            serde_json::to_writer(&mut metrics, e)?;
            metrics.write_all(b"\n")?;
        }
    }
    metrics.flush()?;
    if let Some(first) = results.first() {
        std::fs::write(dir.join("model.bin"), codec::encode_f32(&first.params))?;
    }
    Ok(())
}

/// The table printed at the end of a job: the columns the model has.
pub fn render_table(summary: &Summary, results: &[WorkerResult]) -> String {
    use std::fmt::Write as _;
    let epochs = per_epoch(results);
    type Column = (&'static str, fn(&EpochSummary) -> Option<String>);
    let columns: [Column; 10] = [
        ("train loss", |e| Some(format!("{:.5}", e.train_loss))),
        ("val loss", |e| e.val_loss.map(|v| format!("{v:.5}"))),
        ("val acc", |e| {
            e.val_accuracy.map(|v| format!("{:.2}%", 100.0 * v))
        }),
        ("test loss", |e| e.test_loss.map(|v| format!("{v:.5}"))),
        ("test acc", |e| {
            e.test_accuracy.map(|v| format!("{:.2}%", 100.0 * v))
        }),
        ("objective", |e| e.objective.map(|v| format!("{v:.6e}"))),
        ("primal res", |e| {
            e.primal_residual.map(|v| format!("{v:.3e}"))
        }),
        ("dual res", |e| e.dual_residual.map(|v| format!("{v:.3e}"))),
        ("time s", |e| Some(format!("{:.2}", e.epoch_s))),
        ("comm %", |e| Some(format!("{:.1}%", 100.0 * e.comm_share))),
    ];
    let shown: Vec<&Column> = columns
        .iter()
        .filter(|(_, f)| epochs.iter().any(|e| f(e).is_some()))
        .collect();
    let mut out = format!("{:>5}", "epoch");
    for (name, _) in &shown {
        let _ = write!(out, "  {name:>12}");
    }
    out.push('\n');
    for e in &epochs {
        let _ = write!(out, "{:>5}", e.epoch);
        for (_, f) in &shown {
            let _ = write!(out, "  {:>12}", f(e).unwrap_or_else(|| "-".into()));
        }
        out.push('\n');
    }
    let outcome = match (summary.final_val_accuracy, summary.final_objective) {
        (Some(acc), _) => format!("val accuracy {:.2}%", 100.0 * acc),
        (None, Some(obj)) => format!("objective {obj:.6e}"),
        (None, None) => "no metric".to_string(),
    };
    let outcome = match summary.final_test_accuracy {
        Some(acc) => format!("test accuracy {:.2}%, {outcome}", 100.0 * acc),
        None => outcome,
    };
    let _ = writeln!(
        out,
        "\n{} {}/{}/{} on {} workers over {}: {outcome} after {} rounds, {:.1} s, {} invocations, \
         {} channel requests, about ${:.6} on AWS",
        summary.job_id,
        summary.model,
        summary.optim,
        summary.sync,
        summary.workers,
        summary.channel,
        summary.rounds,
        summary.wall_seconds,
        summary.invocations,
        summary.requests.requests(),
        summary.estimated_cost_usd
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_tells_one_bit_and_is_the_crc_of_the_bytes() {
        let mut v: Vec<f32> = (0..3000).map(|i| i as f32 / 7.0).collect();
        let before = digest(&v);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(before, format!("{:08x}", crc32fast::hash(&bytes)));
        assert_eq!(before, digest(&v.clone()));
        v[2999] = f32::from_bits(v[2999].to_bits() ^ 1);
        assert_ne!(before, digest(&v));
        assert_ne!(digest(&v[..1024]), digest(&v[..1025]));
    }

    #[test]
    fn time_splits_of_earlier_run_folders_still_read() {
        let old = r#"{"load_s":1,"compute_s":2,"comm_s":3,"wait_s":4,"other_s":5}"#;
        let t: TimeSplit = serde_json::from_str(old).unwrap();
        assert_eq!(t.transfer_s, 3.0);
        let new = serde_json::to_string(&t).unwrap();
        assert!(new.contains("\"transfer_s\":3.0"), "{new}");
    }
}
