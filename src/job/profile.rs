//! `lambdaml profile`: what the planner ([`super::forecast`]) needs to know about the machine
//! or cloud the workers run on, measured once and kept as JSON.
//!
//! Per channel (by scheme: a profile made on one Redis applies to any Redis) it holds the
//! time and the requests of one collective round for each sync mode, at a few worker counts
//! and vector sizes (measured by `bench channel`'s worker processes), and the requests a job
//! makes besides its rounds (heartbeats, records, the driver following it). For the platform
//! it holds what a job costs beyond its workers' own time (starting processes or
//! invocations, collecting results), and whether the workers share the machine's cores.
//!
//! Figures between the measured points are interpolated linearly (in bytes, then in
//! workers); beyond them they are extrapolated from the last two points, never below zero.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::driver::{self, JobProgress};
use super::plan::DataProgress;
use super::records::EpochRecord;
use super::{JobConfig, bench, follow, forecast};
use crate::algo::{ModelKind, OptimKind};
use crate::channel::ChannelUrl;
use crate::channel::meter::Usage;
use crate::comm::SyncMode;
use crate::platform::PlatformChoice;

/// The profile made on this project's CI machine kind (2 cores, local processes), shipped so
/// that `plan` works before anyone profiles.
pub const LOCAL_DEFAULT: &str = include_str!("../../profiles/local-2core.json");

/// A profile written by hand for AWS from published figures (see `profiles/README.md`).
pub const AWS_DEFAULT: &str = include_str!("../../profiles/aws-us-east-1.json");

/// What a configuration costs on one environment, as far as the planner needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// What it describes, e.g. "local processes, 2 cores".
    pub name: String,
    /// How it was made: the command and the date, or the published sources.
    pub source: String,
    /// Cores all workers share (processes on one machine); `None`: every worker has the
    /// vCPUs its memory size gives it (Lambda).
    pub shared_cores: Option<usize>,
    /// How many times slower each worker computes when workers keep every one of the
    /// `shared_cores` busy than one worker alone (shared caches, memory bandwidth,
    /// hyper-threads; measured 1.1 on this project's 2-vCPU machine); 1 where workers share
    /// no machine.
    #[serde(default = "no_contention")]
    pub core_contention: f64,
    /// Seconds of compute there per second of the planner's pilot here.
    pub compute_scale: f64,
    /// Wall time of a job beyond its workers' busy time.
    pub overhead: Overhead,
    /// One entry per channel scheme.
    pub channels: Vec<ChannelProfile>,
}

fn no_contention() -> f64 {
    1.0
}

/// Time a job spends outside its workers' loading, computing and communicating.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overhead {
    /// Seconds per job (the driver's start, its last poll, collecting results).
    pub fixed_s: f64,
    /// Seconds per worker (starting a process or an invocation: they start one by one).
    pub per_worker_s: f64,
    /// Seconds an invocation is billed beyond its busy time (runtime start, connecting,
    /// writing its result).
    pub billed_extra_s: f64,
}

/// One channel scheme's costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelProfile {
    /// `dir`, `s3`, `memcached`, `redis` or `dynamodb`.
    pub scheme: String,
    /// Where it was measured (a URL without secrets), or "published figures".
    pub measured_on: String,
    /// Collective rounds.
    pub rounds: Vec<RoundCost>,
    /// Requests per running worker besides its rounds that come with time: reads (gets,
    /// read units) per second of the driver reading its records at the quickest pace, which
    /// slows as the job ages (see [`super::follow::read_seconds`]); the rest (its
    /// heartbeats) per second of wall time.
    pub background: Requests,
    /// Requests per worker once per job: reading its records and writing its result, the
    /// job's bookkeeping and cleanup.
    pub per_worker: Requests,
    /// Requests per worker per epoch (its progress record).
    pub per_epoch: Requests,
    /// The job overhead with this channel (the driver's first contact, its reads of the
    /// records and its cleanup take far longer on S3 than on a cache); the profile's when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Overhead>,
}

/// One measured (or published) round of a collective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundCost {
    /// The sync mode.
    pub sync: SyncMode,
    /// Workers taking part.
    pub workers: usize,
    /// Bytes of the vector each contributes.
    pub bytes: usize,
    /// Seconds of a round as a job runs them back to back (the slowest worker's share);
    /// profiles written before that timing held a barrier-aligned round's median.
    pub seconds: f64,
    /// Requests of all workers together in one round.
    pub requests: Requests,
}

/// Channel requests by what they are billed as; fractional, as rates and means are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Requests {
    /// Writes.
    pub puts: f64,
    /// Reads.
    pub gets: f64,
    /// Deletes.
    pub deletes: f64,
    /// Listings.
    pub lists: f64,
    /// DynamoDB read request units.
    pub read_units: f64,
    /// DynamoDB write request units.
    pub write_units: f64,
}

impl Requests {
    /// `u` divided by `by`.
    pub fn per(u: &Usage, by: f64) -> Requests {
        let by = by.max(f64::MIN_POSITIVE);
        Requests {
            puts: u.puts as f64 / by,
            gets: u.gets as f64 / by,
            deletes: u.deletes as f64 / by,
            lists: u.lists as f64 / by,
            read_units: u.read_units as f64 / by,
            write_units: u.write_units as f64 / by,
        }
    }

    /// Each count times `k`.
    pub fn times(self, k: f64) -> Requests {
        self.zip(Requests::default(), |a, _| a * k)
    }

    /// The sum of two.
    pub fn plus(self, o: Requests) -> Requests {
        self.zip(o, |a, b| a + b)
    }

    /// `self - o`, never below zero.
    pub fn minus(self, o: Requests) -> Requests {
        self.zip(o, |a, b| (a - b).max(0.0))
    }

    /// `(reads, the rest)`: gets and read units apart from every other kind, as they grow
    /// with the driver's reads rather than with the clock.
    pub fn split_reads(self) -> (Requests, Requests) {
        let reads = Requests {
            gets: self.gets,
            read_units: self.read_units,
            ..Requests::default()
        };
        (reads, self.minus(reads))
    }

    /// Requests of every kind.
    pub fn total(&self) -> f64 {
        self.puts + self.gets + self.deletes + self.lists
    }

    /// Rounded to whole requests, for the cost model.
    pub fn usage(&self) -> Usage {
        let r = |v: f64| v.max(0.0).round() as u64;
        Usage {
            puts: r(self.puts),
            gets: r(self.gets),
            deletes: r(self.deletes),
            lists: r(self.lists),
            read_units: r(self.read_units),
            write_units: r(self.write_units),
            ..Usage::default()
        }
    }

    fn zip(self, o: Requests, f: impl Fn(f64, f64) -> f64) -> Requests {
        Requests {
            puts: f(self.puts, o.puts),
            gets: f(self.gets, o.gets),
            deletes: f(self.deletes, o.deletes),
            lists: f(self.lists, o.lists),
            read_units: f(self.read_units, o.read_units),
            write_units: f(self.write_units, o.write_units),
        }
    }
}

/// A round's time and requests, as interpolated from a profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Seconds.
    pub seconds: f64,
    /// Requests of all workers together.
    pub requests: Requests,
}

impl Profile {
    /// Reads a profile: a JSON file, or `local` / `aws` for the shipped ones.
    pub fn load(which: &str) -> anyhow::Result<Profile> {
        let (text, name) = match which {
            "local" => (
                LOCAL_DEFAULT.to_string(),
                "the shipped local profile".to_string(),
            ),
            "aws" => (
                AWS_DEFAULT.to_string(),
                "the shipped AWS profile".to_string(),
            ),
            path => (
                std::fs::read_to_string(path).with_context(|| format!("reading profile {path}"))?,
                format!("profile {path}"),
            ),
        };
        let p: Profile = serde_json::from_str(&text).with_context(|| format!("parsing {name}"))?;
        p.check().with_context(|| name)?;
        Ok(p)
    }

    /// Refuses a profile whose figures cannot be used (negative, not finite, empty).
    pub fn check(&self) -> anyhow::Result<()> {
        let finite = |what: &str, v: f64| {
            anyhow::ensure!(v.is_finite() && v >= 0.0, "{what} is {v}: must be >= 0");
            Ok(())
        };
        finite("compute_scale", self.compute_scale)?;
        finite("overhead.fixed_s", self.overhead.fixed_s)?;
        finite("overhead.per_worker_s", self.overhead.per_worker_s)?;
        finite("overhead.billed_extra_s", self.overhead.billed_extra_s)?;
        anyhow::ensure!(self.shared_cores != Some(0), "shared_cores is 0");
        anyhow::ensure!(
            (1.0..=16.0).contains(&self.core_contention),
            "core_contention must be between 1 and 16, got {}",
            self.core_contention
        );
        for c in &self.channels {
            anyhow::ensure!(!c.rounds.is_empty(), "channel {} has no rounds", c.scheme);
            for r in &c.rounds {
                finite(&format!("{} {} round seconds", c.scheme, r.sync), r.seconds)?;
                anyhow::ensure!(r.workers >= 1, "{} round with 0 workers", c.scheme);
            }
        }
        Ok(())
    }

    /// The entry for `channel`'s scheme.
    pub fn channel(&self, channel: &ChannelUrl) -> anyhow::Result<&ChannelProfile> {
        self.channels
            .iter()
            .find(|c| c.scheme == channel.scheme())
            .with_context(|| {
                format!(
                    "the profile '{}' has no figures for {} channels (it has: {}); run \
                     `lambdaml profile --channel {}` to measure them",
                    self.name,
                    channel.scheme(),
                    self.channels
                        .iter()
                        .map(|c| c.scheme.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    channel.without_secrets()
                )
            })
    }
}

impl ChannelProfile {
    /// One round of `sync` among `workers` workers each contributing `bytes`.
    pub fn round(&self, sync: SyncMode, workers: usize, bytes: usize) -> anyhow::Result<Round> {
        let mine: Vec<&RoundCost> = self.rounds.iter().filter(|r| r.sync == sync).collect();
        anyhow::ensure!(
            !mine.is_empty(),
            "the profile has no {sync} rounds for {} channels",
            self.scheme
        );
        let mut counts: Vec<usize> = mine.iter().map(|r| r.workers).collect();
        counts.sort_unstable();
        counts.dedup();
        // At each measured worker count, the round at `bytes`; then across worker counts.
        let at_count: Vec<(f64, Round)> = counts
            .iter()
            .map(|&n| {
                let mut by_size: Vec<&&RoundCost> =
                    mine.iter().filter(|r| r.workers == n).collect();
                by_size.sort_by_key(|r| r.bytes);
                let points: Vec<(f64, Round)> = by_size
                    .iter()
                    .map(|r| {
                        (
                            r.bytes as f64,
                            Round {
                                seconds: r.seconds,
                                requests: r.requests,
                            },
                        )
                    })
                    .collect();
                (n as f64, interpolate(&points, bytes as f64))
            })
            .collect();
        Ok(interpolate(&at_count, workers as f64))
    }
}

/// The value at `x` of the piecewise-linear curve through `points` (sorted by x), extended
/// beyond its ends along its first and last pieces and kept at or above zero.
fn interpolate(points: &[(f64, Round)], x: f64) -> Round {
    let line = |a: &(f64, Round), b: &(f64, Round)| {
        let t = if b.0 == a.0 {
            0.0
        } else {
            (x - a.0) / (b.0 - a.0)
        };
        let mix = |p: f64, q: f64| (p + t * (q - p)).max(0.0);
        Round {
            seconds: mix(a.1.seconds, b.1.seconds),
            requests: a.1.requests.zip(b.1.requests, mix),
        }
    };
    match points {
        [] => Round {
            seconds: 0.0,
            requests: Requests::default(),
        },
        [only] => only.1,
        _ => {
            let i = points
                .windows(2)
                .position(|w| x <= w[1].0)
                .unwrap_or(points.len() - 2);
            line(&points[i], &points[i + 1])
        }
    }
}

/// What `lambdaml profile` measures.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// Channels to measure.
    pub channels: Vec<ChannelUrl>,
    /// Worker counts of the bench rounds.
    pub workers: Vec<usize>,
    /// Vector sizes (bytes) of the bench rounds.
    pub sizes: Vec<usize>,
    /// Rounds per bench run.
    pub rounds: usize,
    /// The worker executable.
    pub exe: PathBuf,
    /// Where the calibration jobs put their run folders.
    pub scratch: PathBuf,
}

/// A UI that shows nothing: the calibration jobs run quietly.
struct Silent;

impl DataProgress for Silent {
    fn phase(&self, _: &str, _: u64, _: bool) {}
    fn advance(&self, _: u64) {}
    fn done(&self) {}
}

impl JobProgress for Silent {
    fn training(&self, _: u64) {}
    fn trained(&self, _: u64, _: Option<&EpochRecord>) {}
    fn finished(&self) {}
}

/// The small jobs that calibrate what is not a round.
#[derive(Debug, Clone, Copy)]
enum Calibration {
    /// One epoch of model averaging of LR on 4,000 rows: little of anything.
    Short,
    /// 40 such epochs: 40 rounds and records, in little more time.
    ManyRounds,
    /// One epoch of ADMM with 200 local passes over 100,000 rows: seconds, one round (and
    /// ADMM's closing one).
    Long,
}

/// A calibration job of `kind` over `channel` with `workers` workers.
fn calibration_job(
    channel: &ChannelUrl,
    workers: usize,
    kind: Calibration,
    scratch: &Path,
) -> JobConfig {
    let base = JobConfig {
        synth_rows: 4000,
        workers,
        model: ModelKind::Lr,
        optim: OptimKind::ModelAvg,
        sync: SyncMode::Reduce,
        platform: PlatformChoice::Local,
        channel: Some(channel.clone()),
        epochs: 1,
        batch_size: 100,
        tol: 0.0,
        runs_dir: scratch.to_path_buf(),
        ..JobConfig::default()
    };
    match kind {
        Calibration::Short => base,
        Calibration::ManyRounds => JobConfig { epochs: 40, ..base },
        Calibration::Long => JobConfig {
            synth_rows: 100_000,
            optim: OptimKind::Admm,
            local_epochs: 200,
            ..base
        },
    }
}

/// What one calibration job measured: the requests of a worker beyond its rounds.
struct Calibrated {
    epochs: f64,
    wall_s: f64,
    /// The driver's reads as seconds at its quickest pace.
    read_s: f64,
    requests: Requests,
}

/// Splits the requests each worker made beyond its rounds in three jobs into once per
/// worker, per epoch and background (exactly, as three equations in three unknowns for each
/// kind of request; none below zero). Reads are background per second of the driver's
/// reading, the rest per second of wall time.
fn split_requests(points: &[Calibrated]) -> (Requests, Requests, Requests) {
    type Field = for<'a> fn(&'a mut Requests) -> &'a mut f64;
    // Each kind of request, and whether it is a read.
    let fields: [(Field, bool); 6] = [
        (|r| &mut r.puts, false),
        (|r| &mut r.gets, true),
        (|r| &mut r.deletes, false),
        (|r| &mut r.lists, false),
        (|r| &mut r.read_units, true),
        (|r| &mut r.write_units, false),
    ];
    let mut out = [Requests::default(); 3];
    for (field, read) in fields {
        let rows: Vec<[f64; 4]> = points
            .iter()
            .map(|p| {
                let mut r = p.requests;
                let time = if read { p.read_s } else { p.wall_s };
                [1.0, p.epochs, time, *field(&mut r)]
            })
            .collect();
        let x = solve3(&rows).unwrap_or([rows.first().map_or(0.0, |r| r[3]), 0.0, 0.0]);
        for (part, v) in out.iter_mut().zip(x) {
            *field(part) = v.max(0.0);
        }
    }
    (out[0], out[1], out[2])
}

/// The solution of three linear equations `a x + b y + c z = d` (rows `[a, b, c, d]`), by
/// elimination with partial pivoting; `None` when they do not determine it.
fn solve3(rows: &[[f64; 4]]) -> Option<[f64; 3]> {
    let mut m: Vec<[f64; 4]> = rows.iter().take(3).copied().collect();
    if m.len() < 3 {
        return None;
    }
    for col in 0..3 {
        let pivot = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        for row in 0..3 {
            if row != col {
                let k = m[row][col] / m[col][col];
                let pivot_row = m[col];
                for (v, p) in m[row].iter_mut().zip(pivot_row).skip(col) {
                    *v -= k * p;
                }
            }
        }
    }
    Some([m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]])
}

/// Seconds each worker was busy (loading, computing, communicating), on average.
fn busy_per_worker(s: &super::summary::Summary) -> f64 {
    let t = &s.time;
    (t.load_s + t.compute_s + t.transfer_s + t.wait_s + t.other_s) / s.workers.max(1) as f64
}

/// Measures a profile of this machine for `opts.channels`; `say` is told what is measured.
pub async fn measure(opts: &ProfileOptions, say: &dyn Fn(&str)) -> anyhow::Result<Profile> {
    anyhow::ensure!(!opts.channels.is_empty(), "no channel to profile");
    anyhow::ensure!(
        opts.workers.iter().all(|&n| (1..=64).contains(&n)),
        "profile worker counts must be between 1 and 64"
    );
    anyhow::ensure!(
        opts.sizes.iter().all(|&b| (4..=64 << 20).contains(&b)),
        "profile sizes must be between 4 bytes and 64 MiB"
    );
    let mut channels = Vec::new();
    let mut overheads = Vec::new();
    for url in &opts.channels {
        let mut rounds = Vec::new();
        for &n in &opts.workers {
            for &bytes in &opts.sizes {
                say(&format!(
                    "{}: {n} workers, {bytes} bytes",
                    url.without_secrets()
                ));
                let bench = |rounds| {
                    let plan = bench::BenchPlan {
                        channel: url.clone(),
                        workers: n,
                        size: bytes,
                        rounds,
                        ps: None,
                        timing: bench::RoundTiming::BackToBack,
                    };
                    bench::run(plan, PlatformChoice::Local, opts.exe.clone())
                };
                let mut r = bench(opts.rounds)
                    .await
                    .with_context(|| format!("benchmarking {}", url.without_secrets()))?;
                // A few quick rounds are mostly their start: on memcached with 2 workers, 10
                // rounds of 128 bytes took 1.47 ms each, 200 took 0.75 ms. Quick rounds are
                // measured again, many more of them, in about as much time as slow ones.
                if r.round_ms.values().all(|s| s.median < QUICK_ROUND_MS) {
                    r = bench(opts.rounds * QUICK_ROUNDS_MORE)
                        .await
                        .with_context(|| format!("benchmarking {}", url.without_secrets()))?;
                }
                for (mode, stat) in &r.round_ms {
                    let Ok(sync) = mode.parse::<SyncModeName>() else {
                        continue;
                    };
                    let usage = r.usage.get(mode).copied().unwrap_or_default();
                    rounds.push(RoundCost {
                        sync: sync.0,
                        workers: n,
                        bytes,
                        seconds: stat.median / 1e3,
                        requests: Requests::per(&usage, r.rounds as f64),
                    });
                }
            }
        }
        let partial = ChannelProfile {
            scheme: url.scheme().to_string(),
            measured_on: url.without_secrets().to_string(),
            rounds,
            background: Requests::default(),
            per_worker: Requests::default(),
            per_epoch: Requests::default(),
            overhead: None,
        };
        let mut channel_overheads = Vec::new();
        // Three jobs: short, many rounds, long: what grows with the rounds is per epoch,
        // what grows with the time is background, the rest is per worker.
        say(&format!("{}: calibration jobs", url.without_secrets()));
        let mut points = Vec::new();
        for kind in [
            Calibration::Short,
            Calibration::ManyRounds,
            Calibration::Long,
        ] {
            let cfg = calibration_job(url, 2, kind, &opts.scratch);
            let (s, results) = run_calibration(cfg.clone())
                .await
                .with_context(|| format!("calibration job on {}", url.without_secrets()))?;
            let round = partial.round(SyncMode::Reduce, 2, results[0].params.len() * 4)?;
            // One round per epoch, one to start from the same model, ADMM's closing one.
            let comm = round
                .requests
                .times(forecast::job_rounds(&cfg, f64::from(s.rounds), 1.0));
            let other = Requests::per(&s.requests, 1.0).minus(comm).times(0.5);
            points.push(Calibrated {
                epochs: f64::from(s.rounds),
                wall_s: s.wall_seconds,
                read_s: follow::read_seconds(cfg.heartbeat(url), s.wall_seconds),
                requests: other,
            });
            channel_overheads.push(overhead_point(&s));
        }
        overheads.extend(channel_overheads.iter().copied());
        let (per_worker, per_epoch, background) = split_requests(&points);
        channels.push((
            ChannelProfile {
                background,
                per_worker,
                per_epoch,
                ..partial
            },
            channel_overheads,
        ));
    }
    // The platform's overhead: on the first channel, one worker and the most profiled.
    let url = &opts.channels[0];
    let most = opts.workers.iter().copied().max().unwrap_or(4).max(2);
    for n in [1, most] {
        say(&format!("start-up of {n} worker(s)"));
        let cfg = calibration_job(url, n, Calibration::Short, &opts.scratch);
        let (s, _) = run_calibration(cfg).await?;
        overheads.push(overhead_point(&s));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let core_contention = if cores > 1 {
        say(&format!("compute of one worker against {cores} at once"));
        contention(url, cores.min(16), &opts.scratch).await?
    } else {
        1.0
    };
    let overhead = fit_overhead(&overheads);
    let channels = channels
        .into_iter()
        .map(|(ch, points)| ChannelProfile {
            overhead: Some(channel_overhead(&overhead, &points)),
            ..ch
        })
        .collect();
    Ok(Profile {
        name: format!("local processes, {cores} cores"),
        source: format!(
            "lambdaml profile on {} ({} rounds per point)",
            chrono::Local::now().format("%Y-%m-%d"),
            opts.rounds
        ),
        shared_cores: Some(cores),
        core_contention,
        compute_scale: 1.0,
        overhead,
        channels,
    })
}

/// Runs a calibration job quietly and removes its run folder: its summary and results.
async fn run_calibration(
    cfg: JobConfig,
) -> anyhow::Result<(super::summary::Summary, Vec<super::records::WorkerResult>)> {
    let out = driver::run(cfg, &Silent).await?;
    let _ = std::fs::remove_dir_all(&out.run_dir);
    Ok((out.summary, out.results))
}

/// How many times slower each of `n` workers computes than one alone, the same work each:
/// ADMM's 200 local passes over 50,000 rows per worker, nearly all compute.
async fn contention(channel: &ChannelUrl, n: usize, scratch: &Path) -> anyhow::Result<f64> {
    let compute_per_worker = |workers: usize| {
        let cfg = JobConfig {
            synth_rows: 50_000 * workers,
            ..calibration_job(channel, workers, Calibration::Long, scratch)
        };
        async move {
            let (s, _) = run_calibration(cfg).await?;
            anyhow::Ok(s.time.compute_s / workers as f64)
        }
    };
    // Alone and together alternated, the median of the ratios: a single pair of runs on a
    // shared machine measured 1.0 one day and 1.6 the next.
    let mut ratios = Vec::with_capacity(CONTENTION_PAIRS);
    for _ in 0..CONTENTION_PAIRS {
        let alone = compute_per_worker(1).await?;
        let together = compute_per_worker(n).await?;
        ratios.push(together / alone.max(1e-9));
    }
    ratios.sort_by(f64::total_cmp);
    Ok(ratios[ratios.len() / 2].clamp(1.0, 16.0))
}

/// Pairs of runs (one worker alone, one per core together) a contention is the median of.
const CONTENTION_PAIRS: usize = 3;

/// Rounds quicker than this (ms) are measured again, [`QUICK_ROUNDS_MORE`] times as many.
const QUICK_ROUND_MS: f64 = 5.0;
/// How many times more rounds a quick round is measured with.
const QUICK_ROUNDS_MORE: usize = 20;

/// The overhead of jobs on one channel, from its calibration jobs `points`: `global` with
/// the fixed part and the billed extra those jobs showed.
fn channel_overhead(global: &Overhead, points: &[(usize, f64, f64)]) -> Overhead {
    let k = points.len().max(1) as f64;
    let fixed = points
        .iter()
        .map(|&(n, wall_extra, _)| wall_extra - global.per_worker_s * n as f64)
        .sum::<f64>()
        / k;
    Overhead {
        fixed_s: fixed.max(0.0),
        per_worker_s: global.per_worker_s,
        billed_extra_s: (points.iter().map(|p| p.2).sum::<f64>() / k).max(0.0),
    }
}

/// A job's `(workers, wall seconds beyond busy time, billed seconds per invocation beyond
/// busy time)`, one point of the overhead fit.
fn overhead_point(s: &super::summary::Summary) -> (usize, f64, f64) {
    let busy = busy_per_worker(s);
    let billed = s.billed_seconds / f64::from(s.invocations.max(1));
    (s.workers, s.wall_seconds - busy, billed - busy)
}

/// Least squares of `wall - busy = fixed + per_worker * n` over the calibration jobs; the
/// billed extra is their mean.
fn fit_overhead(points: &[(usize, f64, f64)]) -> Overhead {
    let k = points.len().max(1) as f64;
    let mean_n = points.iter().map(|p| p.0 as f64).sum::<f64>() / k;
    let mean_o = points.iter().map(|p| p.1).sum::<f64>() / k;
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mean_n).powi(2)).sum();
    let sxy: f64 = points
        .iter()
        .map(|p| (p.0 as f64 - mean_n) * (p.1 - mean_o))
        .sum();
    let slope = if sxx > 0.0 { (sxy / sxx).max(0.0) } else { 0.0 };
    Overhead {
        fixed_s: (mean_o - slope * mean_n).max(0.0),
        per_worker_s: slope,
        billed_extra_s: (points.iter().map(|p| p.2).sum::<f64>() / k).max(0.0),
    }
}

/// A sync mode from the name `bench channel` reports it under.
struct SyncModeName(SyncMode);

impl std::str::FromStr for SyncModeName {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        use clap::ValueEnum;
        SyncMode::from_str(s, true)
            .map(SyncModeName)
            .map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(sync: SyncMode, workers: usize, bytes: usize, seconds: f64, puts: f64) -> RoundCost {
        RoundCost {
            sync,
            workers,
            bytes,
            seconds,
            requests: Requests {
                puts,
                ..Requests::default()
            },
        }
    }

    fn profile() -> ChannelProfile {
        ChannelProfile {
            scheme: "dir".into(),
            measured_on: "dir:/x".into(),
            rounds: vec![
                point(SyncMode::Reduce, 2, 1000, 0.010, 4.0),
                point(SyncMode::Reduce, 2, 11000, 0.020, 4.0),
                point(SyncMode::Reduce, 4, 1000, 0.030, 8.0),
                point(SyncMode::Reduce, 4, 11000, 0.050, 8.0),
            ],
            background: Requests::default(),
            per_worker: Requests::default(),
            per_epoch: Requests::default(),
            overhead: None,
        }
    }

    #[test]
    fn rounds_are_interpolated_in_size_then_in_workers() {
        let p = profile();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let r = p.round(SyncMode::Reduce, 2, 6000).unwrap();
        assert!(close(r.seconds, 0.015), "{r:?}");
        let r = p.round(SyncMode::Reduce, 3, 1000).unwrap();
        assert!(
            close(r.seconds, 0.020) && close(r.requests.puts, 6.0),
            "{r:?}"
        );
        // Beyond the measured points, along the last piece.
        let r = p.round(SyncMode::Reduce, 8, 1000).unwrap();
        assert!(
            close(r.seconds, 0.070) && close(r.requests.puts, 16.0),
            "{r:?}"
        );
        let r = p.round(SyncMode::Reduce, 2, 21000).unwrap();
        assert!(close(r.seconds, 0.030), "{r:?}");
        // Never below zero, however far back.
        let r = p.round(SyncMode::Reduce, 2, 0).unwrap();
        assert!(r.seconds >= 0.0);
        let e = p.round(SyncMode::Async, 2, 10).unwrap_err().to_string();
        assert!(e.contains("no async rounds"), "{e}");
    }

    #[test]
    fn the_shipped_profiles_parse_and_pass_their_checks() {
        for which in ["local", "aws"] {
            let p = Profile::load(which).unwrap();
            for scheme in ["dir", "s3", "memcached", "redis", "dynamodb"] {
                assert!(
                    p.channels.iter().any(|c| c.scheme == scheme),
                    "{which}: no {scheme}"
                );
            }
        }
    }

    #[test]
    fn requests_are_split_into_once_per_epoch_and_per_second() {
        // Puts: 5 once, 2 per epoch, 3 per second of wall time. Gets: 1 once, 20 per second
        // of the driver's reading, which the long job has less of than its wall time.
        let point = |epochs: f64, wall_s: f64, read_s: f64| Calibrated {
            epochs,
            wall_s,
            read_s,
            requests: Requests {
                puts: 5.0 + 2.0 * epochs + 3.0 * wall_s,
                gets: 1.0 + 20.0 * read_s,
                ..Requests::default()
            },
        };
        let points = [
            point(1.0, 1.0, 1.0),
            point(40.0, 2.0, 2.0),
            point(1.0, 10.0, 6.0),
        ];
        let (once, per_epoch, per_s) = split_requests(&points);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(once.puts, 5.0), "{once:?}");
        assert!(close(per_epoch.puts, 2.0), "{per_epoch:?}");
        assert!(close(per_s.puts, 3.0), "{per_s:?}");
        assert!(close(once.gets, 1.0), "{once:?}");
        assert!(close(per_epoch.gets, 0.0), "{per_epoch:?}");
        assert!(close(per_s.gets, 20.0), "{per_s:?}");
        assert_eq!(once.deletes, 0.0);
    }

    #[test]
    fn a_channel_keeps_the_fixed_overhead_its_jobs_showed() {
        let global = Overhead {
            fixed_s: 0.2,
            per_worker_s: 0.01,
            billed_extra_s: 0.1,
        };
        let o = channel_overhead(&global, &[(2, 0.52, 0.3), (2, 0.62, 0.5)]);
        assert!((o.fixed_s - 0.55).abs() < 1e-12, "{o:?}");
        assert_eq!(o.per_worker_s, 0.01);
        assert!((o.billed_extra_s - 0.4).abs() < 1e-12, "{o:?}");
    }

    #[test]
    fn the_overhead_is_fitted_per_worker() {
        let o = fit_overhead(&[(1, 0.3, 0.1), (4, 0.6, 0.3)]);
        assert!((o.per_worker_s - 0.1).abs() < 1e-12, "{o:?}");
        assert!((o.fixed_s - 0.2).abs() < 1e-12, "{o:?}");
        assert!((o.billed_extra_s - 0.2).abs() < 1e-12, "{o:?}");
    }
}
