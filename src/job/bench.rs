//! `lambdaml bench channel`: put/get latency and all-reduce rounds over a channel, measured by
//! real worker processes started through the local platform, as a job's workers would be.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::event::Invocation;
use super::{records, summary};
use crate::channel::meter::Usage;
use crate::channel::{self, Channel, ChannelUrl, RetryPolicy, codec};
use crate::comm::{self, Comm, Keys, Member, PsTarget, SyncMode};
use crate::platform::{FunctionSpec, PlatformChoice, PlatformSpec};

/// Rounds run before measuring (connections, caches, allocations).
const WARMUP: usize = 3;

/// What every bench worker gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchEvent {
    /// Namespace of the bench's keys.
    pub job_id: String,
    /// Channel URL.
    pub channel: ChannelUrl,
    /// Number of workers.
    pub workers: usize,
    /// This worker.
    pub worker: usize,
    /// Bytes per vector.
    pub size: usize,
    /// Measured rounds per sync mode.
    pub rounds: usize,
    /// A parameter server to measure as well (push + pull rounds).
    #[serde(default)]
    pub ps_addr: Option<String>,
    /// Its token.
    #[serde(default)]
    pub ps_token: Option<String>,
    /// Seed of the vectors every worker contributes (new for every bench run, so a value
    /// left by another run cannot pass for this one's).
    #[serde(default)]
    pub seed: u64,
    /// How rounds are timed.
    #[serde(default)]
    pub timing: RoundTiming,
}

/// How the bench times its rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundTiming {
    /// Each round on its own, every worker starting it together after a barrier: the
    /// latency of one round (`bench channel`).
    #[default]
    Each,
    /// Rounds back to back as a training job runs them, a round being a worker's elapsed
    /// time over all of them divided by their number: a round's share of a job's time (what
    /// `profile` measures). A barrier before each round would add the workers' skew in
    /// leaving it, which rounds that follow each other do not have: on Redis with 2 workers
    /// a barrier-aligned round of 1 KB took 0.54 ms, a job's round 0.25-0.37 ms.
    BackToBack,
}

/// One worker's measurements, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BenchSamples {
    put_ms: Vec<f64>,
    get_ms: Vec<f64>,
    /// Round times per sync mode (`reduce`, `reduce_scatter`, `ps`).
    round_ms: std::collections::BTreeMap<String, Vec<f64>>,
    /// Channel requests of this worker in the measured rounds, per sync mode.
    #[serde(default)]
    requests: std::collections::BTreeMap<String, u64>,
    /// What those requests were (kinds, bytes, DynamoDB units), per sync mode.
    #[serde(default)]
    usage: std::collections::BTreeMap<String, Usage>,
    residual_keys: Vec<String>,
    /// The first round whose mean was not the exact mean, in words.
    #[serde(default)]
    wrong: Option<String>,
    /// The error that stopped this worker, in words (its other fields are then empty).
    #[serde(default)]
    failed: Option<String>,
}

/// Median and 95th percentile, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// 95th percentile.
    pub p95: f64,
}

/// The report of `lambdaml bench channel`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchReport {
    /// Channel URL.
    pub channel: ChannelUrl,
    /// Worker processes.
    pub workers: usize,
    /// Bytes per vector.
    pub size_bytes: usize,
    /// Measured rounds per sync mode.
    pub rounds: usize,
    /// Latency of one put of `size_bytes`.
    pub put_ms: Stat,
    /// Latency of one get of `size_bytes`.
    pub get_ms: Stat,
    /// One all-reduce round, per sync mode (the slowest worker of each round).
    pub round_ms: std::collections::BTreeMap<String, Stat>,
    /// Median of `round_ms`, per sync mode.
    pub round_ms_median: std::collections::BTreeMap<String, f64>,
    /// Channel requests of all workers together per round, per sync mode (the parameter
    /// server's calls are not channel requests).
    pub requests_per_round: std::collections::BTreeMap<String, f64>,
    /// Everything those requests did over the measured rounds, all workers together, per
    /// sync mode (divide by `rounds` for one round): what the cost model prices.
    #[serde(default)]
    pub usage: std::collections::BTreeMap<String, Usage>,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Stat {
        median: at(0.5),
        p95: at(0.95),
    }
}

fn result_key(job: &str, w: usize) -> String {
    records::key(job, "bench", w)
}

/// What a bench measures.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// The channel.
    pub channel: ChannelUrl,
    /// Workers taking part.
    pub workers: usize,
    /// Bytes of each worker's vector.
    pub size: usize,
    /// Measured rounds per sync mode.
    pub rounds: usize,
    /// A parameter server to measure as well: its address and token.
    pub ps: Option<(String, Option<String>)>,
    /// How rounds are timed.
    pub timing: RoundTiming,
}

/// Runs the bench: starts `plan.workers` processes of `exe`, collects their samples,
/// deletes its keys and reports.
pub async fn run(
    plan: BenchPlan,
    platform: PlatformChoice,
    exe: PathBuf,
) -> anyhow::Result<BenchReport> {
    let BenchPlan {
        channel: target,
        workers,
        size,
        rounds,
        ps,
        timing,
    } = plan;
    let url = &target;
    anyhow::ensure!(
        workers >= 1 && rounds >= 1,
        "need at least one worker and one round"
    );
    let ch = channel::open(url).await?;
    let job_id = format!(
        "bench-{}-{:04x}",
        chrono::Local::now().format("%Y%m%d-%H%M%S"),
        rand::random::<u16>()
    );
    let log_dir = std::env::temp_dir().join(&job_id);
    let function = FunctionSpec {
        supervisor: std::env::current_exe()?,
        exe,
        log_dir: log_dir.clone(),
        timeout_s: 900.0,
        memory_mb: 10_240,
    };
    let platform = PlatformSpec::new(&platform, function).connect().await;
    let seed: u64 = rand::random::<u32>().into();
    for w in 0..workers {
        let event = Invocation::BenchChannel(BenchEvent {
            job_id: job_id.clone(),
            channel: url.clone(),
            workers,
            worker: w,
            size,
            rounds,
            ps_addr: ps.as_ref().map(|p| p.0.clone()),
            ps_token: ps.as_ref().and_then(|p| p.1.clone()),
            seed,
            timing,
        });
        platform
            .invoke(&format!("bench-{w}"), &serde_json::to_vec(&event)?)
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut samples: Vec<Option<BenchSamples>> = vec![None; workers];
    while samples.iter().any(Option::is_none) {
        for (w, slot) in samples.iter_mut().enumerate().filter(|(_, s)| s.is_none()) {
            *slot = records::get(ch.as_ref(), &result_key(&job_id, w)).await?;
        }
        // A failed worker leaves the others waiting on it until their own timeouts: its
        // error is the answer, now rather than at the deadline.
        if let Some((w, error)) = samples
            .iter()
            .enumerate()
            .find_map(|(w, s)| Some((w, s.as_ref()?.failed.clone()?)))
        {
            // Cleaning up is best effort here: the worker's error is what the user needs.
            let _ = clean_up(ch.as_ref(), &job_id, workers, Vec::new(), ps.as_ref()).await;
            anyhow::bail!(
                "bench worker {w} failed: {error} (the other workers' logs: {})",
                log_dir.display()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "bench workers did not finish in 10 minutes (logs: {})",
            log_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let samples: Vec<BenchSamples> = samples.into_iter().flatten().collect();
    let wrong = samples
        .iter()
        .enumerate()
        .find_map(|(w, s)| Some((w, s.wrong.clone()?)));
    let residual = samples
        .iter()
        .flat_map(|s| s.residual_keys.clone())
        .collect();
    clean_up(ch.as_ref(), &job_id, workers, residual, ps.as_ref()).await?;
    let _ = std::fs::remove_dir_all(&log_dir);
    if let Some((w, wrong)) = wrong {
        anyhow::bail!("the bench's all-reduce gave a wrong result on worker {w}: {wrong}");
    }
    // Each round counts as long as its slowest worker took.
    let round_ms: std::collections::BTreeMap<String, Stat> = samples[0]
        .round_ms
        .keys()
        .map(|mode| {
            let slowest = (0..rounds)
                .map(|r| {
                    samples
                        .iter()
                        .map(|s| s.round_ms.get(mode).and_then(|v| v.get(r)).copied())
                        .fold(0.0, |a, b| b.map_or(f64::NAN, |b| a.max(b)))
                })
                .collect();
            (mode.clone(), stat(slowest))
        })
        .collect();
    Ok(BenchReport {
        channel: url.without_secrets(),
        workers,
        size_bytes: size,
        rounds,
        put_ms: stat(samples.iter().flat_map(|s| s.put_ms.clone()).collect()),
        get_ms: stat(samples.iter().flat_map(|s| s.get_ms.clone()).collect()),
        round_ms_median: round_ms
            .iter()
            .map(|(k, v)| (k.clone(), v.median))
            .collect(),
        usage: round_ms
            .keys()
            .map(|mode| {
                let all = samples
                    .iter()
                    .filter_map(|s| s.usage.get(mode))
                    .fold(Usage::default(), |a, b| a + *b);
                (mode.clone(), all)
            })
            .collect(),
        requests_per_round: round_ms
            .keys()
            .map(|mode| {
                let all: u64 = samples.iter().filter_map(|s| s.requests.get(mode)).sum();
                (mode.clone(), all as f64 / rounds as f64)
            })
            .collect(),
        round_ms,
    })
}

/// Deletes the bench's keys (the workers' results, the `residual` keys they named, and
/// whatever a listing of the job finds) and drops its job from the parameter server.
async fn clean_up(
    ch: &dyn Channel,
    job_id: &str,
    workers: usize,
    residual: Vec<String>,
    ps: Option<&(String, Option<String>)>,
) -> anyhow::Result<()> {
    let mut keys: Vec<String> = (0..workers).map(|w| result_key(job_id, w)).collect();
    keys.extend(residual);
    if let Some(listed) = ch.list(&Keys::new(job_id).prefix()).await? {
        keys.extend(listed);
    }
    ch.delete(&keys).await?;
    if let Some((addr, token)) = ps {
        let mut c = crate::ps::client::PsClient::connect(addr, token.as_deref()).await?;
        c.drop_job(job_id).await?;
    }
    Ok(())
}

/// One bench worker (a process started by [`run`]): its measurements, or the error that
/// stopped it, go to the coordinator through the channel.
pub async fn worker(e: BenchEvent) -> anyhow::Result<()> {
    let ch = channel::open_with(&e.channel, RetryPolicy::default()).await?;
    let key = result_key(&e.job_id, e.worker);
    match measure(&e, &ch).await {
        Ok(samples) => records::put(ch.as_ref(), &key, &samples).await?,
        Err(error) => {
            let failed = BenchSamples {
                failed: Some(format!("{error:#}")),
                ..BenchSamples::default()
            };
            if let Err(put) = records::put(ch.as_ref(), &key, &failed).await {
                tracing::warn!("could not report this worker's failure: {put:#}");
            }
            return Err(error);
        }
    }
    Ok(())
}

/// The measurements of bench worker `e.worker` over `ch`.
async fn measure(e: &BenchEvent, ch: &Arc<dyn Channel>) -> anyhow::Result<BenchSamples> {
    let mut comm = Comm::new(
        ch.clone(),
        &e.job_id,
        e.worker,
        e.workers,
        Duration::from_secs(120),
    );
    let values = vec![0.5f32; (e.size / 4).max(1)];
    let frame = codec::encode_f32(&values);
    let mine = format!("{}/putget/data/{}", e.job_id, e.worker);
    let mut s = BenchSamples::default();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for i in 0..WARMUP + e.rounds {
        let t = Instant::now();
        ch.put(&mine, frame.clone()).await?;
        let put = ms(t);
        let t = Instant::now();
        ch.get(&mine)
            .await?
            .context("a value just written is missing")?;
        if i >= WARMUP {
            s.put_ms.push(put);
            s.get_ms.push(ms(t));
        }
    }
    ch.delete(std::slice::from_ref(&mine)).await?;
    let mut round = 0u64;
    let member = Member {
        channel: ch.clone(),
        job: e.job_id.clone(),
        worker: e.worker,
        workers: e.workers,
        wait_timeout: Duration::from_secs(120),
        keep_rounds: 1,
    };
    let ps = e.ps_addr.as_ref().map(|addr| PsTarget {
        addr: addr.clone(),
        token: e.ps_token.clone(),
    });
    let mut modes = vec![SyncMode::Reduce, SyncMode::ReduceScatter, SyncMode::Async];
    modes.extend(ps.is_some().then_some(SyncMode::Ps));
    for mode in modes {
        let mut collective = comm::open(mode, ps.as_ref(), member.clone()).await?;
        let mut times = Vec::with_capacity(e.rounds);
        let mut usage = Usage::default();
        let back_to_back = e.timing == RoundTiming::BackToBack;
        let mut measured_from = (Instant::now(), crate::channel::meter::snapshot());
        // (measured round, round, digest of its mean), checked after the last round:
        // rebuilding the exact mean costs a multiple of the round's own arithmetic, and done
        // between rounds it ran while the slower workers were still in theirs, on the same
        // cores (13% of all CPU in an 8-worker Redis run of 1 MB).
        let mut digests = Vec::new();
        for i in 0..WARMUP + e.rounds {
            let mine = contribution(e.seed, round, e.worker, values.len());
            if !back_to_back || i == 0 {
                comm.barrier(round).await?;
            }
            if back_to_back && i == WARMUP {
                measured_from = (Instant::now(), crate::channel::meter::snapshot());
            }
            let before = crate::channel::meter::snapshot();
            let t = Instant::now();
            let mean = collective.mean(round, &mine).await?;
            if i >= WARMUP && !back_to_back {
                times.push(ms(t));
                usage = usage + (crate::channel::meter::snapshot() - before);
            }
            // `async` averages with the latest model of each peer, whichever round that was.
            if mode != SyncMode::Async {
                digests.push((i, round, summary::digest(&mean)));
            }
            round += 1;
        }
        if s.wrong.is_none() {
            s.wrong = digests.into_iter().find_map(|(i, round, found)| {
                let want = summary::digest(&exact_mean(e.seed, round, e.workers, values.len()));
                (found != want).then(|| {
                    format!(
                        "{mode}, round {i}: the mean is not the exact mean (CRC-32 {found}, \
                         the exact mean's {want})"
                    )
                })
            });
        }
        if back_to_back {
            let share = ms(measured_from.0) / e.rounds as f64;
            times = vec![share; e.rounds];
            usage = crate::channel::meter::snapshot() - measured_from.1;
        }
        s.residual_keys.extend(collective.residual_keys());
        s.round_ms.insert(mode.to_string(), times);
        s.requests.insert(mode.to_string(), usage.requests());
        s.usage.insert(mode.to_string(), usage);
    }
    comm.barrier(round).await?;
    s.residual_keys.extend(comm.residual_keys());
    Ok(s)
}

/// Worker `w`'s vector in round `round`: values that differ by worker, round and index,
/// so that a mean made of the wrong contributions (another round's, a missing worker's, a
/// chunk out of place) cannot pass for the right one. Multiples of 1/1024, so every sum is
/// exact in `f32` and the mean is off by at most one rounding.
fn contribution(seed: u64, round: u64, w: usize, len: usize) -> Vec<f32> {
    let base = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(round.wrapping_mul(1_000_003))
        .wrapping_add(w as u64 * 7919);
    (0..len as u64)
        .map(|i| (base.wrapping_add(i.wrapping_mul(2_654_435_761)) % 4096) as f32 / 1024.0)
        .collect()
}

/// The exact mean of the round's contributions in `f32`. Contributions are multiples of
/// 1/1024 below 4, so every partial sum is exact in whatever order it is taken, and the
/// division rounds once: every collective must give exactly these bits (their contract).
fn exact_mean(seed: u64, round: u64, workers: usize, len: usize) -> Vec<f32> {
    let mut sum = vec![0f32; len];
    for w in 0..workers {
        for (s, v) in sum.iter_mut().zip(contribution(seed, round, w, len)) {
            *s += v;
        }
    }
    let n = workers as f32;
    sum.iter_mut().for_each(|s| *s /= n);
    sum
}

/// The report as a table.
pub fn render(r: &BenchReport) -> String {
    let mut out = format!(
        "{} workers, {} bytes, {} rounds over {}\n{:<22} {:>10} {:>10}\n",
        r.workers, r.size_bytes, r.rounds, r.channel, "operation", "median ms", "p95 ms"
    );
    let mut row = |name: &str, s: &Stat| {
        out.push_str(&format!("{name:<22} {:>10.3} {:>10.3}\n", s.median, s.p95))
    };
    row("put", &r.put_ms);
    row("get", &r.get_ms);
    for (mode, s) in &r.round_ms {
        match mode.as_str() {
            "ps" => row("push+pull (ps)", s),
            "async" => row("exchange (async)", s),
            _ => row(&format!("all-reduce ({mode})"), s),
        }
    }
    out.push_str("every all-reduce round's result checked against the exact mean\nchannel requests per round (all workers):");
    for (mode, n) in &r.requests_per_round {
        out.push_str(&format!(" {mode} {n:.1}"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_mean_is_the_correctly_rounded_mean() {
        for workers in [1, 3, 8, 13] {
            let mean = exact_mean(7, 5, workers, 1000);
            for (i, &got) in mean.iter().enumerate() {
                let sum: f64 = (0..workers)
                    .map(|w| f64::from(contribution(7, 5, w, 1000)[i]))
                    .sum();
                assert_eq!(got, (sum / workers as f64) as f32, "value {i}");
            }
        }
    }
}
