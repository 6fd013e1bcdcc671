//! Predicting a configuration's time and cost before it runs.
//!
//! The model, written down (README "Planning"):
//!
//! ```text
//! wall  = overhead.fixed + overhead.per_worker * n + load + epochs * epoch
//! epoch = compute / n * slowdown + rounds * round(sync, n, bytes) + other * rounds / rounds_1
//! load  = load_1 / n * max(1, n / cores)
//! slowdown = max(1, n * threads / cores) * contention   (workers sharing a machine's
//!            cores, contention growing to the profile's core_contention as they all get
//!            busy; 1 on Lambda)
//! ```
//!
//! `compute`, `load_1` and `other` come from a *pilot*: the job itself trained by one
//! worker for up to two epochs on this machine (so every model, optimizer and data layout
//! is measured as it really runs); `round`, the overhead (the channel's, where the profile
//! has one) and the requests come from the [`Profile`].
//! `rounds` per epoch follow from the optimizer: one per minibatch (grad_avg, and async
//! whatever the optimizer), one per epoch (model_avg, ADMM, KMeans), or one per
//! `sync_every` minibatches. Cost is [`crate::cost::estimate`] of the predicted
//! consumption: `n * busy` billed seconds, the rounds' requests plus each worker's
//! background (reads by the driver's reading time, [`super::follow::read_seconds`], the
//! rest by the wall time), per-epoch and one-off requests, and servers for the wall time.

use serde::{Deserialize, Serialize};

use super::JobConfig;
use super::profile::{Profile, Requests};
use crate::algo::{OptimKind, threads::vcpus_for_memory};
use crate::channel::ChannelUrl;
use crate::comm::SyncMode;
use crate::cost::{self, Consumption, Cost, Prices};

/// What one worker's pilot of a job measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pilot {
    /// The optimizer it ran.
    pub optim: OptimKind,
    /// Its memory size (compute threads).
    pub memory_mb: u32,
    /// Rows of the whole dataset.
    pub rows: usize,
    /// Values in the synchronised vector.
    pub params: usize,
    /// Seconds for one worker to load every row.
    pub load_s: f64,
    /// Seconds for one worker to compute one epoch over every row.
    pub compute_epoch_s: f64,
    /// Seconds of bookkeeping per epoch (records, steps' overhead).
    pub other_epoch_s: f64,
    /// Synchronisation rounds per epoch of the pilot.
    pub rounds_per_epoch: f64,
    /// Its training loss after each epoch: the curve a target loss is extrapolated from.
    #[serde(default)]
    pub losses: Vec<f64>,
}

impl Pilot {
    /// The pilot's figures from its run's summary and its worker's result.
    pub fn from_run(
        cfg: &JobConfig,
        s: &super::summary::Summary,
        result: Option<&super::records::WorkerResult>,
    ) -> anyhow::Result<Pilot> {
        let params = result.map_or(0, |r| r.params.len());
        let losses = result.map_or_else(Vec::new, |r| {
            r.history.iter().map(|e| e.train_loss).collect()
        });
        let epochs = f64::from(s.rounds.max(1));
        let t = &s.time;
        anyhow::ensure!(
            s.workers == 1,
            "a pilot runs one worker, this ran {}",
            s.workers
        );
        Ok(Pilot {
            optim: cfg.optim,
            memory_mb: cfg.memory_mb,
            rows: s.rows,
            params,
            load_s: t.load_s,
            compute_epoch_s: t.compute_s / epochs,
            // Its collectives are those of one worker: not what n workers' rounds cost.
            other_epoch_s: t.other_s / epochs,
            rounds_per_epoch: rounds_per_epoch(cfg, 1, s.rows),
            losses,
        })
    }

    /// One pilot from several runs of the same one: each timing the median of the runs'
    /// (on a shared machine one run's start-up or compute can be off by a quarter, and
    /// the planner's choice under a deadline should not hang on it). `None` if `runs` is
    /// empty.
    pub fn median(runs: &[Pilot]) -> Option<Pilot> {
        let first = runs.first()?;
        let median = |of: fn(&Pilot) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(of).collect();
            v.sort_by(f64::total_cmp);
            let mid = v.len() / 2;
            if v.len() % 2 == 1 {
                v[mid]
            } else {
                (v[mid - 1] + v[mid]) / 2.0
            }
        };
        Some(Pilot {
            load_s: median(|p| p.load_s),
            compute_epoch_s: median(|p| p.compute_epoch_s),
            other_epoch_s: median(|p| p.other_epoch_s),
            ..first.clone()
        })
    }
}

/// The choices the planner varies, as one configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Workers.
    pub workers: usize,
    /// Channel.
    pub channel: ChannelUrl,
    /// Sync mode.
    pub sync: SyncMode,
    /// Optimizer.
    pub optim: OptimKind,
    /// Memory of a worker (MB).
    pub memory_mb: u32,
    /// Epochs, where the planner chose them (to reach a target loss); `None`: the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
}

impl Choice {
    /// The choice `cfg` makes.
    pub fn of(cfg: &JobConfig) -> Choice {
        Choice {
            workers: cfg.workers,
            channel: cfg.channel_url().without_secrets(),
            sync: cfg.sync,
            optim: cfg.optim,
            memory_mb: cfg.memory_mb,
            epochs: None,
        }
    }

    /// `base` with this choice made.
    pub fn apply(&self, base: &JobConfig) -> JobConfig {
        JobConfig {
            workers: self.workers,
            channel: Some(self.channel.clone()),
            sync: self.sync,
            optim: self.optim,
            memory_mb: self.memory_mb,
            epochs: self.epochs.unwrap_or(base.epochs),
            ..base.clone()
        }
    }

    /// One line: `8 x reduce grad_avg redis 2048 MB` (`, 12 epochs` where chosen).
    pub fn label(&self) -> String {
        let epochs = self
            .epochs
            .map_or_else(String::new, |e| format!(", {e} epochs"));
        format!(
            "{} x {} {} {} {} MB{epochs}",
            self.workers,
            self.sync,
            self.optim,
            self.channel.scheme(),
            self.memory_mb
        )
    }
}

/// A configuration's predicted time and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// What was predicted.
    pub choice: Choice,
    /// Synchronisation rounds per epoch.
    pub rounds_per_epoch: f64,
    /// Seconds of one epoch: computing, communicating, the rest.
    pub epoch_s: f64,
    /// Of which computing.
    pub compute_epoch_s: f64,
    /// Of which in collectives.
    pub comm_epoch_s: f64,
    /// Seconds loading the partition.
    pub load_s: f64,
    /// Wall seconds from the first invocation to the last result.
    pub wall_s: f64,
    /// Invocations of all workers (re-invocations at the time limit included).
    pub invocations: u64,
    /// Seconds billed over all invocations.
    pub billed_s: f64,
    /// Channel requests of the whole job.
    pub requests: Requests,
    /// The cost by item.
    pub cost: Cost,
}

/// Epochs, in the pilot's terms, for a training loss curve (`losses`, one per epoch) to
/// reach `target`: the first epoch at or below it, else the curve's last three points
/// continued as a geometric approach to its asymptote (each epoch's drop a constant share
/// of the one before, as gradient methods' loss curves flatten). `Err` says why not: a curve
/// too short or not falling, or one that levels off above the target.
pub fn epochs_to_loss(losses: &[f64], target: f64) -> Result<f64, String> {
    if let Some(i) = losses.iter().position(|&l| l <= target) {
        return Ok(i as f64 + 1.0);
    }
    let [.., a, b, c] = losses else {
        return Err(format!(
            "the pilot's {} epoch(s) cannot be extrapolated: give --epochs 3 or more",
            losses.len()
        ));
    };
    let last = format!("the pilot's loss went {a:.4}, {b:.4}, {c:.4}");
    let (d1, d2) = (a - b, b - c);
    if !(d1 > 0.0 && d2 > 0.0) {
        return Err(format!(
            "{last}: not falling, so no epoch count reaches {target}"
        ));
    }
    let r = d2 / d1;
    if r >= 1.0 {
        // Not flattening: at the last drop per epoch (a lower bound on the epochs).
        return Ok(losses.len() as f64 + (c - target) / d2);
    }
    let floor = c - d2 * r / (1.0 - r);
    if target <= floor {
        return Err(format!(
            "{last}: it levels off near {floor:.4}, above the target {target}"
        ));
    }
    Ok(losses.len() as f64 + ((target - floor) / (c - floor)).ln() / r.ln())
}

/// How many of `cfg`'s epochs with `workers` workers make one epoch of its one-worker pilot,
/// in progress towards a loss: progress goes with the updates an epoch makes, and
/// synchronous gradient or model averaging makes one per minibatch of a worker's share (n
/// workers: 1/n as many), while asynchronous workers each update the shared model, and
/// ADMM and KMeans make one consensus step per epoch whatever the workers.
pub fn epochs_per_pilot_epoch(cfg: &JobConfig, workers: usize, rows: usize) -> f64 {
    if cfg.model.is_clustering() || cfg.optim == OptimKind::Admm || cfg.sync == SyncMode::Async {
        return 1.0;
    }
    minibatches_per_epoch(cfg, 1, rows) / minibatches_per_epoch(cfg, workers, rows)
}

/// Minibatches one of `workers` workers trains per epoch: its share of `rows`, less the
/// validation split, in batches of `cfg.batch_size` (at least one).
fn minibatches_per_epoch(cfg: &JobConfig, workers: usize, rows: usize) -> f64 {
    let per_worker = rows as f64 / workers.max(1) as f64;
    let train = per_worker - (cfg.val_ratio * per_worker).floor();
    (train / cfg.batch_size.max(1) as f64).ceil().max(1.0)
}

/// Synchronisation rounds per epoch of `cfg` with `workers` workers over `rows` rows.
pub fn rounds_per_epoch(cfg: &JobConfig, workers: usize, rows: usize) -> f64 {
    let steps = minibatches_per_epoch(cfg, workers, rows);
    if cfg.model.is_clustering() {
        return 1.0;
    }
    match (cfg.optim, cfg.sync) {
        (OptimKind::GradAvg, _) | (_, SyncMode::Async) => steps,
        (OptimKind::ModelAvg, _) => cfg
            .sync_every
            .map_or(1.0, |k| (steps / k.max(1) as f64).ceil()),
        (OptimKind::Admm, _) => 1.0,
    }
}

/// Collective rounds of a whole job of `epochs` epochs of `rounds_per_epoch`: those, one to
/// start every worker from the same model, and ADMM's closing round for its residual.
pub fn job_rounds(cfg: &JobConfig, epochs: f64, rounds_per_epoch: f64) -> f64 {
    let closing = if cfg.optim == OptimKind::Admm && !cfg.model.is_clustering() {
        1.0
    } else {
        0.0
    };
    epochs * rounds_per_epoch + 1.0 + closing
}

/// Predicts `cfg` (a full job configuration) from its pilot and the environment.
pub fn predict(
    cfg: &JobConfig,
    pilot: &Pilot,
    profile: &Profile,
    prices: &Prices,
) -> anyhow::Result<Forecast> {
    let n = cfg.workers.max(1);
    let nf = n as f64;
    let threads = vcpus_for_memory(cfg.memory_mb) as f64;
    let (slowdown, load_share) = match profile.shared_cores {
        Some(cores) => {
            let cores = cores as f64;
            let wanted = nf * threads;
            // From no contention with one core busy to the profile's with all of them.
            let contention = if cores > 1.0 {
                1.0 + (profile.core_contention - 1.0) * (wanted.min(cores) - 1.0).max(0.0)
                    / (cores - 1.0)
            } else {
                1.0
            };
            (
                (wanted / cores).max(1.0) * contention,
                (nf / cores).max(1.0),
            )
        }
        None => (1.0, 1.0),
    };
    let channel = cfg.channel_url();
    let ch = profile.channel(&channel)?;
    let rounds = rounds_per_epoch(cfg, n, pilot.rows);
    let bytes = pilot.params * 4;
    let round = if n == 1 {
        super::profile::Round {
            seconds: 0.0,
            requests: Requests::default(),
        }
    } else {
        ch.round(cfg.sync, n, bytes)?
    };
    let scale = profile.compute_scale;
    let compute_epoch_s = pilot.compute_epoch_s / nf * slowdown * scale;
    let comm_epoch_s = rounds * round.seconds;
    let other_epoch_s = pilot.other_epoch_s * rounds / pilot.rounds_per_epoch.max(1.0) * scale;
    let epoch_s = compute_epoch_s + comm_epoch_s + other_epoch_s;
    let load_s = pilot.load_s / nf * load_share * scale;
    let epochs = f64::from(cfg.epochs);
    let busy = load_s + epochs * epoch_s;
    // Each invocation works until its margin before the limit, then hands over.
    let life = (cfg.invocation_timeout - cfg.margin()).max(1.0);
    let per_worker_invocations = (busy / life).ceil().max(1.0);
    let again = per_worker_invocations - 1.0;
    let o = ch.overhead.as_ref().unwrap_or(&profile.overhead);
    let wall_s = o.fixed_s
        + o.per_worker_s * nf
        + busy
        + again * (o.per_worker_s * nf + o.billed_extra_s + load_s);
    let billed_s = nf * (busy + again * load_s + per_worker_invocations * o.billed_extra_s);
    let (reads, clocked) = ch.background.split_reads();
    let read_s = super::follow::read_seconds(cfg.heartbeat(&channel), wall_s);
    let requests = round
        .requests
        .times(job_rounds(cfg, epochs, rounds))
        .plus(ch.per_worker.times(nf * per_worker_invocations))
        .plus(ch.per_epoch.times(nf * epochs))
        .plus(reads.times(nf * read_s))
        .plus(clocked.times(nf * wall_s));
    let usage = requests.usage();
    let cost = cost::estimate(
        prices,
        &Consumption {
            channel: &channel,
            parameter_server: cfg.sync == SyncMode::Ps,
            memory_mb: cfg.memory_mb,
            invocations: (nf * per_worker_invocations) as u64,
            billed_s,
            usage,
            data_usage: Default::default(),
            wall_s,
        },
    );
    Ok(Forecast {
        choice: Choice::of(cfg),
        rounds_per_epoch: rounds,
        epoch_s,
        compute_epoch_s,
        comm_epoch_s,
        load_s,
        wall_s,
        invocations: (nf * per_worker_invocations) as u64,
        billed_s,
        requests,
        cost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::ModelKind;

    #[test]
    fn rounds_follow_the_optimizer() {
        let cfg = JobConfig {
            batch_size: 100,
            val_ratio: 0.0,
            ..JobConfig::default()
        };
        assert_eq!(rounds_per_epoch(&cfg, 4, 4000), 10.0);
        let model_avg = JobConfig {
            optim: OptimKind::ModelAvg,
            ..cfg.clone()
        };
        assert_eq!(rounds_per_epoch(&model_avg, 4, 4000), 1.0);
        let every = JobConfig {
            sync_every: Some(3),
            ..model_avg.clone()
        };
        assert_eq!(rounds_per_epoch(&every, 4, 4000), 4.0);
        let asynchronous = JobConfig {
            sync: SyncMode::Async,
            ..model_avg
        };
        assert_eq!(rounds_per_epoch(&asynchronous, 4, 4000), 10.0);
        let kmeans = JobConfig {
            model: ModelKind::Kmeans,
            ..cfg
        };
        assert_eq!(rounds_per_epoch(&kmeans, 4, 4000), 1.0);
    }

    #[test]
    fn a_target_loss_is_reached_where_the_pilots_curve_leads() {
        // Reached within the pilot: its epoch.
        assert_eq!(epochs_to_loss(&[0.9, 0.6, 0.5], 0.6), Ok(2.0));
        // A geometric curve: 1 + 0.5^k towards 1.0 reaches 1.01 at k = log2(100), epoch
        // 1 + 6.64.
        let curve: Vec<f64> = (0..4).map(|k| 1.0 + 0.5f64.powi(k)).collect();
        let e = epochs_to_loss(&curve, 1.01).unwrap();
        assert!((e - (1.0 + 100f64.log2())).abs() < 1e-9, "{e}");
        // Levelling off above the target, or not falling: refused, with why.
        let e = epochs_to_loss(&curve, 0.99).unwrap_err();
        assert!(e.contains("levels off near 1.0000"), "{e}");
        assert!(epochs_to_loss(&[0.5, 0.6, 0.7], 0.1).is_err());
        assert!(
            epochs_to_loss(&[0.5, 0.4], 0.1)
                .unwrap_err()
                .contains("--epochs 3")
        );
        // Falling steadily: at the last drop per epoch.
        assert_eq!(epochs_to_loss(&[1.0, 0.75, 0.5], 0.25), Ok(4.0));
    }

    #[test]
    fn more_synchronous_workers_need_more_epochs_for_the_same_progress() {
        let cfg = JobConfig {
            batch_size: 100,
            val_ratio: 0.0,
            ..JobConfig::default()
        };
        assert_eq!(epochs_per_pilot_epoch(&cfg, 1, 10_000), 1.0);
        assert_eq!(epochs_per_pilot_epoch(&cfg, 4, 10_000), 4.0);
        let model_avg = JobConfig {
            optim: OptimKind::ModelAvg,
            ..cfg.clone()
        };
        assert_eq!(epochs_per_pilot_epoch(&model_avg, 2, 10_000), 2.0);
        for other in [
            JobConfig {
                sync: SyncMode::Async,
                ..cfg.clone()
            },
            JobConfig {
                optim: OptimKind::Admm,
                ..cfg.clone()
            },
        ] {
            assert_eq!(epochs_per_pilot_epoch(&other, 8, 10_000), 1.0);
        }
    }

    #[test]
    fn a_repeated_pilot_keeps_each_timings_median() {
        let run = |load_s, compute_epoch_s, other_epoch_s| Pilot {
            optim: OptimKind::ModelAvg,
            memory_mb: 2048,
            rows: 1000,
            params: 29,
            load_s,
            compute_epoch_s,
            other_epoch_s,
            rounds_per_epoch: 1.0,
            losses: Vec::new(),
        };
        assert_eq!(Pilot::median(&[]), None);
        let one = run(0.1, 1.0, 0.01);
        assert_eq!(Pilot::median(std::slice::from_ref(&one)), Some(one));
        // One slow start, one slow epoch: neither decides the pilot.
        let three = [
            run(0.5, 1.0, 0.02),
            run(0.1, 1.3, 0.01),
            run(0.2, 0.9, 0.03),
        ];
        assert_eq!(Pilot::median(&three), Some(run(0.2, 1.0, 0.02)));
        let two = [run(0.1, 1.0, 0.0), run(0.3, 2.0, 0.0)];
        let m = Pilot::median(&two).unwrap();
        assert!((m.load_s - 0.2).abs() < 1e-12 && (m.compute_epoch_s - 1.5).abs() < 1e-12);
    }

    #[test]
    fn workers_sharing_cores_compute_no_faster_than_the_cores_allow() {
        let profile = Profile {
            core_contention: 1.0,
            ..Profile::load("local").unwrap()
        };
        let pilot = Pilot {
            optim: OptimKind::GradAvg,
            memory_mb: 1769,
            rows: 100_000,
            params: 29,
            load_s: 1.0,
            compute_epoch_s: 8.0,
            other_epoch_s: 0.0,
            rounds_per_epoch: 100.0,
            losses: Vec::new(),
        };
        let cores = profile.shared_cores.unwrap() as f64;
        let at_on = |n: usize, profile: &Profile| {
            let cfg = JobConfig {
                workers: n,
                memory_mb: 1769,
                ..JobConfig::default()
            };
            predict(&cfg, &pilot, profile, &Prices::default()).unwrap()
        };
        let at = |n: usize| at_on(n, &profile);
        let two = at(cores as usize);
        let eight = at(8 * cores as usize);
        assert!((two.compute_epoch_s - 8.0 / cores).abs() < 1e-9, "{two:?}");
        assert!(
            (eight.compute_epoch_s - 8.0 / cores).abs() < 1e-9,
            "{eight:?}"
        );
        let mut aws = profile.clone();
        aws.shared_cores = None;
        let cfg = JobConfig {
            workers: 8,
            memory_mb: 1769,
            ..JobConfig::default()
        };
        let f = predict(&cfg, &pilot, &aws, &Prices::default()).unwrap();
        assert!((f.compute_epoch_s - 1.0).abs() < 1e-9, "{f:?}");
        // Cores that slow each other down when all are busy: not one worker alone.
        let mut contended = profile.clone();
        contended.core_contention = 1.5;
        let two = at_on(cores as usize, &contended);
        assert!(
            (two.compute_epoch_s - 8.0 / cores * 1.5).abs() < 1e-9,
            "{two:?}"
        );
        assert!((at_on(1, &contended).compute_epoch_s - 8.0).abs() < 1e-9);
        assert!(f.cost.total > 0.0 && f.wall_s > f.epoch_s * 5.0);
    }
}
