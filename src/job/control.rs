//! `lambdaml job status|attach|cancel`: a running job seen and steered from any machine
//! that reaches its channel, since everything about it lives there (the driver's
//! [`JobRecord`], the workers' records and heartbeats, the driver's heartbeat).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::driver::{self, JobOutcome, JobProgress};
use super::event::{JobSpec, unix_ms};
use super::follow::{self, Followed};
use super::liveness::{self, Beat, DriverBeat};
use super::records::{self, JobRecord, WorkerFailure};
use crate::channel::{self, Channel, ChannelUrl};
use crate::comm::Keys;

/// The job `job` as its driver recorded it.
pub async fn read_job(ch: &dyn Channel, job: &str) -> anyhow::Result<(JobRecord, JobSpec)> {
    let key = records::job_key(job);
    let record: JobRecord = records::get(ch, &key).await?.with_context(|| {
        format!(
            "no job '{job}' on {} (its record '{key}' is absent: the job finished and was \
             cleaned up, never started, or runs on another channel)",
            ch.url()
        )
    })?;
    let spec: JobSpec = serde_json::from_str(&record.spec_json)
        .with_context(|| format!("the record '{key}' does not describe a job"))?;
    Ok((record, spec))
}

/// What `lambdaml job status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// The job id.
    pub job_id: String,
    /// Model, optimizer and sync mode, as in the job id.
    pub what: String,
    /// Seconds since the job started.
    pub age_s: f64,
    /// Seconds since the driver's last heartbeat (`None`: it never beat).
    pub driver_silent_s: Option<f64>,
    /// True when the driver beat within the dead-worker threshold.
    pub driver_alive: bool,
    /// True when the abort flag is up (failed or cancelled).
    pub aborting: bool,
    /// Each worker.
    pub workers: Vec<WorkerStatus>,
}

/// One worker in [`JobStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// Worker index.
    pub worker: usize,
    /// `running`, `finished`, `failed`, `lost` (silent past the threshold) or `starting`.
    pub state: &'static str,
    /// Its current generation (re-invocations after a loss).
    pub generation: u32,
    /// Epochs done.
    pub epochs_done: u32,
    /// Its latest heartbeat.
    pub beat: Option<Beat>,
    /// Seconds since that heartbeat.
    pub silent_s: Option<f64>,
    /// Its failure, if it failed.
    pub failure: Option<String>,
}

/// Seconds since `unix_ms` (a record's timestamp; another machine's clock).
fn age_s(then_ms: u64) -> f64 {
    unix_ms().saturating_sub(then_ms) as f64 / 1e3
}

/// The state of job `job` on `ch`.
pub async fn status(ch: &dyn Channel, job: &str) -> anyhow::Result<JobStatus> {
    let (record, spec) = read_job(ch, job).await?;
    let cfg = &spec.config;
    let dead_s = cfg.dead_time(&spec.channel).as_secs_f64();
    let driver: Option<DriverBeat> = records::get(ch, &liveness::driver_key(job)).await?;
    let driver_silent_s = driver.map(|d| age_s(d.unix_ms));
    let mut workers = Vec::new();
    for w in 0..cfg.workers {
        let follow::WorkerState {
            result,
            failure,
            progress,
            beat,
        } = follow::read_worker(ch, job, w).await?;
        let generation: u32 = records::get(ch, &liveness::generation_key(job, w))
            .await?
            .unwrap_or(0);
        let silent_s = beat.map(|b| age_s(b.unix_ms));
        let failure = failure.filter(|f| f.generation >= generation);
        let state = if result.is_some() {
            "finished"
        } else if failure.as_ref().is_some_and(|f| !f.lost) {
            "failed"
        } else if failure.is_some()
            || silent_s.is_some_and(|s| s > dead_s)
                && beat.is_some_and(|b| b.quiet_until_unix_ms < unix_ms())
        {
            "lost"
        } else if beat.is_none() {
            "starting"
        } else {
            "running"
        };
        workers.push(WorkerStatus {
            worker: w,
            state,
            generation,
            epochs_done: result
                .as_ref()
                .map(|r| r.history.len() as u32)
                .or(progress.map(|p| p.epochs_done))
                .unwrap_or(0),
            beat,
            silent_s,
            failure: failure.map(|f| f.message),
        });
    }
    Ok(JobStatus {
        job_id: job.to_string(),
        what: format!("{} {} {}", cfg.model, cfg.optim, cfg.sync),
        age_s: age_s(record.started_unix_ms),
        driver_silent_s,
        driver_alive: driver_silent_s.is_some_and(|s| s <= dead_s),
        aborting: ch.get(&Keys::new(job).abort()).await?.is_some(),
        workers,
    })
}

/// The age in seconds of the last heartbeat of `job`'s driver, if it beat within `dead`.
async fn live_driver(ch: &dyn Channel, job: &str, dead: Duration) -> anyhow::Result<Option<f64>> {
    let driver: Option<DriverBeat> = records::get(ch, &liveness::driver_key(job)).await?;
    Ok(driver
        .map(|d| age_s(d.unix_ms))
        .filter(|&age| age <= dead.as_secs_f64()))
}

/// `status` as a table.
pub fn render_status(s: &JobStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let driver = match (s.driver_silent_s, s.driver_alive) {
        (Some(silent), true) => format!("alive (last heartbeat {silent:.1} s ago)"),
        (Some(silent), false) => format!("gone (silent for {silent:.0} s)"),
        (None, _) => "never beat".to_string(),
    };
    let _ = writeln!(out, "job      {} ({})", s.job_id, s.what);
    let _ = writeln!(out, "started  {:.0} s ago", s.age_s);
    let _ = writeln!(out, "driver   {driver}");
    if s.aborting {
        let _ = writeln!(out, "aborting (failed or cancelled)");
    }
    let _ = writeln!(
        out,
        "{:>6}  {:<9} {:>10} {:>6} {:>8} {:>10}",
        "worker", "state", "generation", "epochs", "round", "heartbeat"
    );
    for w in &s.workers {
        let _ = writeln!(
            out,
            "{:>6}  {:<9} {:>10} {:>6} {:>8} {:>10}",
            w.worker,
            w.state,
            w.generation,
            w.epochs_done,
            w.beat.map_or("-".to_string(), |b| b.round.to_string()),
            w.silent_s
                .map_or("-".to_string(), |s| format!("{s:.1} s ago")),
        );
        if let Some(f) = &w.failure {
            let _ = writeln!(out, "        {}", f.lines().next().unwrap_or_default());
        }
    }
    out
}

/// Takes over following job `job` on `url` from a driver that is gone: recovers its lost
/// workers, waits for the rest, cleans up and writes the run folder (under `runs_dir`, by
/// default where the job's driver wrote it). Refused while the job's driver is alive,
/// unless `force`.
pub async fn attach(
    url: &ChannelUrl,
    job: &str,
    runs_dir: Option<PathBuf>,
    ps_token: Option<String>,
    force: bool,
    ui: &dyn JobProgress,
) -> anyhow::Result<JobOutcome> {
    let usage_base = crate::channel::meter::snapshot();
    let probe = channel::open(url).await?;
    let (_, mut spec) = read_job(probe.as_ref(), job).await?;
    // The record holds neither: this driver brings its own.
    spec.channel = url.clone();
    spec.ps_token = ps_token;
    let cfg = spec.config.clone();
    let ch = channel::open_with(url, driver::channel_options(&cfg)).await?;
    let dead = cfg.dead_time(&spec.channel);
    if let Some(age) = live_driver(ch.as_ref(), job, dead).await?
        && !force
    {
        anyhow::bail!(
            "job {job} still has a live driver (its last heartbeat {age:.1} s ago): attach \
             once it is gone, or take over anyway with --force"
        );
    }
    let mut generations = Vec::with_capacity(cfg.workers);
    for w in 0..cfg.workers {
        let g: Option<u32> = records::get(ch.as_ref(), &liveness::generation_key(job, w)).await?;
        generations.push(g.unwrap_or(0));
    }
    let runs_dir = runs_dir.unwrap_or_else(|| cfg.runs_dir.clone());
    let run_dir = runs_dir.join(job);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating the run folder {}", run_dir.display()))?;
    let config_path = run_dir.join("config.toml");
    if !config_path.exists()
        && let Ok(text) = toml::to_string(&cfg)
    {
        let _ = std::fs::write(&config_path, text);
    }
    tracing::info!(job, "attached: following the job");
    let prices = crate::cost::Prices::load(cfg.prices.as_deref())?;
    let platform = spec.platform.connect().await;
    ui.training(cfg.workers as u64 * cfg.epochs as u64);
    let start = follow::Start {
        invoked: Instant::now(),
        generations,
        interrupted: None,
    };
    let outcome = follow::follow(&spec, ch.as_ref(), platform.as_ref(), ui, start).await;
    ui.finished();
    let wall = age_s(spec.started_unix_ms);
    let concluded = driver::conclude(
        &spec,
        ch.as_ref(),
        outcome,
        &run_dir,
        wall,
        usage_base,
        &prices,
    )
    .await;
    // Partitions the job's driver made for it in its run folder go with the job, as they
    // would have with that driver.
    let made_for_the_job = cfg.runs_dir.join(job).join("partitions");
    if spec.data_location.local() == Some(made_for_the_job.as_path()) {
        let _ = std::fs::remove_dir_all(&made_for_the_job);
    }
    concluded
}

/// What `lambdaml job cancel` did.
#[derive(Debug, Clone, Serialize)]
pub struct Cancelled {
    /// The job.
    pub job_id: String,
    /// True when the job's driver stopped the workers and cleaned up; false when this
    /// command did (the driver was gone).
    pub by_driver: bool,
    /// Seconds it took.
    pub seconds: f64,
}

/// The abort flag's value when `lambdaml job cancel` raised it (the driver raises it empty).
pub const CANCEL_FLAG: &[u8] = b"cancel";

/// Cancels job `job`: raises its abort flag; a live driver stops the workers and deletes
/// the job's keys (waited for, up to `limit`); without one, this waits for every worker to
/// stop or fall silent and deletes the keys itself.
pub async fn cancel(url: &ChannelUrl, job: &str, limit: Duration) -> anyhow::Result<Cancelled> {
    let started = Instant::now();
    let probe = channel::open(url).await?;
    let (_, spec) = read_job(probe.as_ref(), job).await?;
    let cfg = &spec.config;
    let ch = channel::open_with(url, driver::channel_options(cfg)).await?;
    ch.put(
        &Keys::new(job).abort(),
        bytes::Bytes::from_static(CANCEL_FLAG),
    )
    .await
    .context("raising the job's abort flag")?;
    let dead = cfg.dead_time(&spec.channel);
    let record_key = records::job_key(job);
    if live_driver(ch.as_ref(), job, dead).await?.is_some() {
        // The driver cleans up; its job record goes last but one.
        while ch.get(&record_key).await?.is_some() {
            anyhow::ensure!(
                started.elapsed() < limit,
                "the job's driver has not finished cancelling job {job} after {:.0} s",
                limit.as_secs_f64()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        return Ok(Cancelled {
            job_id: job.to_string(),
            by_driver: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    // No driver: wait until no worker beats any more (each stops within a beat of seeing
    // the flag), then delete everything.
    loop {
        let s = status(ch.as_ref(), job).await?;
        let still: Vec<usize> = s
            .workers
            .iter()
            .filter(|w| {
                matches!(w.state, "running" | "starting")
                    && w.silent_s.is_none_or(|silent| silent < dead.as_secs_f64())
            })
            .map(|w| w.worker)
            .collect();
        if still.is_empty() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "workers {still:?} of job {job} still run {:.0} s after the cancel",
            limit.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // What the stopped workers reported they left, and every key of the rounds they were
    // last seen in (a channel that cannot list has no other way to find them).
    let keys = Keys::new(job);
    let mut residual = Vec::new();
    let mut rounds = Vec::new();
    for w in 0..cfg.workers {
        let failure: Option<WorkerFailure> =
            records::get(ch.as_ref(), &records::key(job, records::FAILURE, w)).await?;
        residual.extend(failure.into_iter().flat_map(|f| f.residual_keys));
        let beat: Option<Beat> = records::get(ch.as_ref(), &liveness::alive_key(job, w)).await?;
        rounds.extend(beat.map(|b| b.round));
        residual.push(keys.async_model(w));
    }
    if let (Some(&lo), Some(&hi)) = (rounds.iter().min(), rounds.iter().max()) {
        let keep = cfg.checkpoint_every.unwrap_or(50).max(1);
        let first = (lo / keep).saturating_sub(1) * keep;
        residual.extend((first..=hi + 1).flat_map(|r| keys.round_keys(r, cfg.workers)));
    }
    let outcome = Followed::Failed {
        error: anyhow::anyhow!("cancelled"),
        residual,
    };
    driver::delete_job_keys(ch.as_ref(), &spec, &outcome).await?;
    Ok(Cancelled {
        job_id: job.to_string(),
        by_driver: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}
