//! Following a running job from the channel: the workers' records and heartbeats, the
//! driver's own heartbeat, recovery of dead workers, and the abort of a failed job.
//!
//! A worker is **lost** when its platform reported it gone (a failure record marked
//! `lost`: killed, out of memory, past its deadline) or when it sent no heartbeat for
//! `dead_after` beats (on Lambda nobody else can tell). A lost worker is re-invoked as a
//! new generation, continuing from its checkpoint, up to `max_retries` times; its peers
//! wait for it meanwhile. An invocation of an older generation cannot write any more
//! (see [`super::liveness`]), and its late reports are ignored here.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::driver::JobProgress;
use super::event::{Invocation, JobSpec, WorkerEvent, unix_ms};
use super::liveness::{self, Beat, DriverBeat};
use super::records::{self, Progress, WorkerFailure, WorkerResult};
use crate::channel::Channel;
use crate::comm::Keys;
use crate::platform::Platform;

/// How a followed job ended.
pub enum Followed {
    /// Every worker finished.
    Done {
        /// Their results, in worker order.
        results: Vec<WorkerResult>,
        /// The workers that were lost and re-invoked on the way.
        recoveries: Vec<Recovery>,
    },
    /// The job failed (and was aborted).
    Failed {
        /// Why, naming the worker.
        error: anyhow::Error,
        /// Keys the workers reported left behind.
        residual: Vec<String>,
    },
}

/// A lost worker re-invoked from its checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recovery {
    /// The worker.
    pub worker: usize,
    /// The generation re-invoked (1 for the first recovery of a worker).
    pub generation: u32,
    /// Why the worker was found lost.
    pub cause: String,
    /// Seconds after the job started that it was found lost.
    pub at_s: f64,
    /// Seconds between its last sign of life and the driver finding it lost.
    pub silent_s: f64,
    /// Seconds from finding it lost to the first heartbeat of the new generation.
    pub back_after_s: Option<f64>,
}

/// What the driver knows of one worker.
struct Tracked {
    result: Option<WorkerResult>,
    /// A failure that ends the job (the worker's own error, or lost too often).
    failure: Option<WorkerFailure>,
    /// Lost after the job was aborted: nothing will come from it any more.
    gone: bool,
    epochs_done: u32,
    /// Seconds of the slowest round of its last reported epoch.
    round_max_s: f64,
    generation: u32,
    retries: u32,
    /// The latest invocation known to have run.
    invocation: u32,
    /// The last beat of the current generation, if it beat yet.
    beat: Option<Beat>,
    /// When the current generation was invoked or last showed a sign of life.
    last_sign: Instant,
    /// When the driver last read its records.
    last_read: Instant,
    /// The recovery waiting for the new generation's first beat (index in the list).
    returning: Option<(usize, Instant)>,
}

impl Tracked {
    fn settled(&self) -> bool {
        self.result.is_some() || self.failure.is_some() || self.gone
    }
}

/// Where following starts: a new job, or one taken over from another driver.
pub struct Start {
    /// When the workers' current invocations were sent (or, taking over, now).
    pub invoked: Instant,
    /// Each worker's current generation (all 0 for a new job); also the retries it used.
    pub generations: Vec<u32>,
    /// Set when the user interrupted the driver (Ctrl-C): the job is stopped as by
    /// `lambdaml job cancel`.
    pub interrupted: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Polls the workers' records until all have finished or the job failed, recovering lost
/// workers on the way.
pub async fn follow(
    spec: &JobSpec,
    ch: &dyn Channel,
    platform: &dyn Platform,
    ui: &dyn JobProgress,
    start: Start,
) -> Followed {
    let invoked = start.invoked;
    let cfg = &spec.config;
    let n = cfg.workers;
    let job = &spec.job_id;
    let dead_time = cfg.dead_time(&spec.channel);
    let grace = liveness::start_grace(cfg, &spec.channel);
    let interval = cfg.heartbeat(&spec.channel);
    let mut workers: Vec<Tracked> = (0..n)
        .map(|w| Tracked {
            result: None,
            failure: None,
            gone: false,
            epochs_done: 0,
            round_max_s: 0.0,
            generation: start.generations.get(w).copied().unwrap_or(0),
            retries: start.generations.get(w).copied().unwrap_or(0),
            invocation: 0,
            beat: None,
            last_sign: invoked,
            last_read: Instant::now(),
            returning: None,
        })
        .collect();
    let mut recoveries: Vec<Recovery> = Vec::new();
    let mut last_move = Instant::now();
    // A worker that beats but does not move (stuck in a loop, or waiting for a peer that
    // cannot come) is noticed once nothing moved for this long.
    let stall_limit = Duration::from_secs_f64(cfg.wait_timeout.max(cfg.invocation_timeout) + 30.0);
    // After an abort, every invocation says it stopped within one invocation.
    let settle_limit = Duration::from_secs_f64(cfg.invocation_timeout + 10.0);
    let mut aborted_at: Option<Instant> = None;
    let quickest = ch.poll_policy().max.max(QUICKEST_READ);
    let mut poll = quickest;
    let driver = DriverBeat {
        driver: rand::random(),
        seq: 0,
        unix_ms: 0,
    };
    let mut driver_beats = DriverHeartbeat::new(ch, job, driver, interval);
    let mut cancelled = false;
    let mut interrupted = false;
    loop {
        if !interrupted
            && aborted_at.is_none()
            && start
                .interrupted
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
        {
            tracing::warn!("interrupted: stopping the workers and deleting the job's keys");
            let _ = ch.put(&Keys::new(job).abort(), bytes::Bytes::new()).await;
            interrupted = true;
            aborted_at = Some(Instant::now());
        }
        if driver_beats.beat_if_due().await && aborted_at.is_none() {
            // Someone else raised the abort flag: `lambdaml job cancel`.
            if let Ok(Some(_)) = ch.get(&Keys::new(job).abort()).await {
                tracing::warn!("the job was cancelled: stopping its workers");
                cancelled = true;
                aborted_at = Some(Instant::now());
            }
        }
        for w in 0..n {
            if workers[w].settled() {
                continue;
            }
            let state = match read_worker(ch, job, w).await {
                Ok(state) => state,
                Err(e) => {
                    return Followed::Failed {
                        error: e.context("reading worker records"),
                        residual: Vec::new(),
                    };
                }
            };
            let t = &mut workers[w];
            // Silence the driver could not see (the channel did not answer it either, or it
            // was itself stopped) says nothing about the worker: its clock starts again.
            if t.last_read.elapsed() > interval.max(poll * 4) {
                t.last_sign = Instant::now();
            }
            t.last_read = Instant::now();
            let lost = match state.failure {
                _ if state.result.is_some() => None,
                Some(f) if f.generation < t.generation => None,
                Some(f) if f.lost => {
                    t.invocation = t.invocation.max(f.invocation);
                    Some((f.message, Duration::ZERO))
                }
                Some(f) => {
                    t.failure = Some(f);
                    last_move = Instant::now();
                    continue;
                }
                None => None,
            };
            if let Some(r) = state.result {
                t.epochs_done = r.history.len() as u32;
                t.result = Some(*r);
                last_move = Instant::now();
                let done = workers.iter().map(|t| t.epochs_done as u64).sum();
                ui.trained(
                    done,
                    workers[w].result.as_ref().and_then(|r| r.history.last()),
                );
                continue;
            }
            if let Some(p) = state.progress
                && p.epochs_done != t.epochs_done
            {
                t.epochs_done = p.epochs_done;
                t.round_max_s = p.last.as_ref().map_or(0.0, |r| r.round_max_s);
                last_move = Instant::now();
                let done = workers.iter().map(|t| t.epochs_done as u64).sum();
                ui.trained(done, p.last.as_ref());
            }
            let t = &mut workers[w];
            if let Some(b) = state.beat.filter(|b| b.generation == t.generation)
                && t.beat != Some(b)
            {
                t.beat = Some(b);
                t.invocation = t.invocation.max(b.invocation);
                t.last_sign = Instant::now();
                if let Some((i, since)) = t.returning.take() {
                    recoveries[i].back_after_s = Some(since.elapsed().as_secs_f64());
                }
            }
            let silence = t.last_sign.elapsed();
            let quiet = t.beat.map_or(0, |b| b.quiet_until_unix_ms) > unix_ms();
            // A worker done training stops beating and writes its result (worker 0's
            // carries the model, as slow to write as a round): it says so with a quiet
            // beat, and until that is seen its last epoch's slowest round is allowed twice,
            // as the worker allows itself.
            let finishing = t.epochs_done >= cfg.epochs;
            let limit = match t.beat {
                None => grace,
                Some(_) if finishing => {
                    dead_time + Duration::from_secs_f64(2.0 * t.round_max_s.clamp(0.5, 3600.0))
                }
                Some(_) => dead_time,
            };
            let lost = lost.or_else(|| {
                (silence > limit && !quiet).then(|| {
                    let what = if t.beat.is_none() {
                        format!(
                            "invocation {} of worker {w} sent no heartbeat within {:.0} s of \
                             being invoked (it did not start, or died at once)",
                            t.invocation,
                            limit.as_secs_f64()
                        )
                    } else {
                        format!(
                            "invocation {} of worker {w} sent no heartbeat for {:.1} s \
                             (killed, out of memory, or frozen?)",
                            t.invocation,
                            silence.as_secs_f64()
                        )
                    };
                    let tail = spec.platform.log_tail(&format!("worker-{w}"), 5);
                    let cause = if tail.is_empty() {
                        what
                    } else {
                        format!("{what}; the last lines of its log:\n{tail}")
                    };
                    (cause, silence)
                })
            });
            let Some((cause, silent)) = lost else {
                continue;
            };
            last_move = Instant::now();
            if aborted_at.is_some() {
                t.gone = true;
                continue;
            }
            if t.retries >= cfg.max_retries {
                t.failure = Some(given_up(w, t, cfg.max_retries, cause));
                t.gone = true;
                continue;
            }
            match recover(spec, ch, platform, w, t).await {
                Ok(()) => {
                    tracing::warn!(
                        "worker {w} was lost ({}): re-invoked from its checkpoint as \
                         generation {} (retry {} of {})",
                        cause.lines().next().unwrap_or_default(),
                        t.generation,
                        t.retries,
                        cfg.max_retries
                    );
                    t.returning = Some((recoveries.len(), Instant::now()));
                    recoveries.push(Recovery {
                        worker: w,
                        generation: t.generation,
                        cause,
                        at_s: invoked.elapsed().as_secs_f64(),
                        silent_s: silent.as_secs_f64(),
                        back_after_s: None,
                    });
                }
                Err(e) => {
                    t.failure = Some(given_up(
                        w,
                        t,
                        cfg.max_retries,
                        format!("{cause}; re-invoking it failed: {e:#}"),
                    ));
                    t.gone = true;
                }
            }
        }
        if workers.iter().all(|t| t.result.is_some()) {
            return Followed::Done {
                results: workers.into_iter().filter_map(|t| t.result).collect(),
                recoveries,
            };
        }
        let first_failure = workers.iter().find_map(|t| t.failure.as_ref());
        let stalled = last_move.elapsed() > stall_limit;
        if (first_failure.is_some() || stalled) && aborted_at.is_none() {
            // Workers that stopped at a flag `lambdaml job cancel` raised may report it
            // before this driver's next beat looks at the flag: that is a cancel too.
            match ch.get(&Keys::new(job).abort()).await {
                Ok(Some(flag)) if flag.as_ref() == super::control::CANCEL_FLAG => cancelled = true,
                _ => {
                    let _ = ch.put(&Keys::new(job).abort(), bytes::Bytes::new()).await;
                }
            }
            aborted_at = Some(Instant::now());
        }
        if let Some(at) = aborted_at {
            let unsettled: Vec<usize> = (0..n).filter(|&w| !workers[w].settled()).collect();
            // The keys are deleted once every worker has said it stopped: running workers
            // see the abort flag within a heartbeat, and any later invocation sees it when
            // it starts, so each says so within an invocation. A lost worker says nothing,
            // and a stalled job's silent workers are presumed gone.
            if unsettled.is_empty() || stalled || at.elapsed() > settle_limit {
                if !unsettled.is_empty() && !stalled {
                    tracing::warn!(
                        workers = ?unsettled,
                        "workers did not say they stopped within {:.0} s of the abort; what \
                         they write later is left behind (it expires on caches)",
                        settle_limit.as_secs_f64()
                    );
                }
                let residual = workers
                    .iter()
                    .flat_map(|t| {
                        let failed = t.failure.iter().flat_map(|f| f.residual_keys.clone());
                        let done = t.result.iter().flat_map(|r| r.residual_keys.clone());
                        failed.chain(done).collect::<Vec<_>>()
                    })
                    .chain(last_rounds_keys(spec, &workers))
                    .collect();
                let failures = workers.iter().filter_map(|t| t.failure.as_ref());
                let error = match failures.clone().find(|f| !is_abort_echo(f)) {
                    _ if interrupted => anyhow::anyhow!("the job was interrupted (Ctrl-C)"),
                    _ if cancelled => {
                        anyhow::anyhow!("the job was cancelled (lambdaml job cancel)")
                    }
                    Some(f) => anyhow::anyhow!("worker {} failed: {}", f.worker, f.message),
                    None => match failures.clone().next() {
                        Some(f) => anyhow::anyhow!("worker {} stopped: {}", f.worker, f.message),
                        None => anyhow::anyhow!(
                            "no progress for {:.0} s from workers {unsettled:?}: they stopped \
                             without reporting (killed or crashed?)",
                            stall_limit.as_secs_f64()
                        ),
                    },
                };
                return Followed::Failed { error, residual };
            }
        }
        let finishing = workers
            .iter()
            .any(|t| t.result.is_some() || t.failure.is_some());
        poll = follow_poll(quickest, interval, invoked.elapsed(), finishing);
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = platform.invocation_ended() => {}
        }
    }
}

/// The driver's shortest pause between two reads of the workers' records. Every backend's
/// poll policy tops out at or below it, so it is the pause of every channel.
pub const QUICKEST_READ: Duration = Duration::from_millis(50);

/// Seconds of reading at the quickest pace ([`QUICKEST_READ`]) that hold as many reads of
/// the workers' records as the driver makes in a job of `wall` seconds with heartbeats
/// every `heartbeat`: the integral of one read per pause between reads. What the driver
/// reads grows with this, not with the wall time: `wall` for the first 2.5 s, then
/// logarithmically, then linearly at one read per half heartbeat.
pub fn read_seconds(heartbeat: Duration, wall: f64) -> f64 {
    let q = QUICKEST_READ.as_secs_f64();
    let h = (heartbeat.as_secs_f64() / 2.0).max(q);
    let (fast_until, slow_from) = (q * AGE_PER_PAUSE, h * AGE_PER_PAUSE);
    let wall = wall.max(0.0);
    let reads = if wall <= fast_until {
        wall / q
    } else if wall <= slow_from {
        fast_until / q + AGE_PER_PAUSE * (wall / fast_until).ln()
    } else {
        fast_until / q + AGE_PER_PAUSE * (slow_from / fast_until).ln() + (wall - slow_from) / h
    };
    reads * q
}

/// The job's age over the pause between two reads of its records (between the quickest
/// and half a heartbeat): a read is at most 2% of the job's age late.
const AGE_PER_PAUSE: f64 = 50.0;

/// Time between two reads of the workers' records: each read is a request per record and
/// worker (4 GETs per worker on S3), so a driver reading every 50 ms added 60% to a 2 GB
/// worker's price on S3, and loaded a local server its workers were using. The pause grows
/// with the job's age (a read at most 2% of the job late) up to half a heartbeat, so no
/// beat is missed; once a worker has ended, the others are close behind and are read as
/// quickly as the channel allows.
fn follow_poll(
    quickest: Duration,
    heartbeat: Duration,
    age: Duration,
    finishing: bool,
) -> Duration {
    let slowest = (heartbeat / 2).max(quickest);
    if finishing {
        return quickest;
    }
    age.div_f64(AGE_PER_PAUSE).clamp(quickest, slowest)
}

/// The failure of worker `w`, lost once more than `max_retries` allow.
fn given_up(w: usize, t: &Tracked, max_retries: u32, cause: String) -> WorkerFailure {
    let message = if max_retries == 0 {
        format!("{cause}\n(not re-invoked: --max-retries is 0)")
    } else {
        format!(
            "it was lost {} times, more than --max-retries {max_retries} allows; the last \
             time: {cause}",
            t.retries + 1
        )
    };
    WorkerFailure {
        worker: w,
        message,
        residual_keys: Vec::new(),
        lost: true,
        generation: t.generation,
        invocation: t.invocation,
    }
}

/// Re-invokes worker `w` as its next generation: the generation is written first, so that
/// the lost invocation, should it come back, finds itself replaced before it writes.
async fn recover(
    spec: &JobSpec,
    ch: &dyn Channel,
    platform: &dyn Platform,
    w: usize,
    t: &mut Tracked,
) -> anyhow::Result<()> {
    let generation = t.generation + 1;
    records::put(ch, &liveness::generation_key(&spec.job_id, w), &generation).await?;
    let event = Invocation::Train(Box::new(WorkerEvent {
        job: spec.clone(),
        worker: w,
        invocation: t.invocation + 1,
        resume: false,
        generation,
        recover: true,
    }));
    let payload = serde_json::to_vec(&event).expect("events serialise");
    platform.invoke(&format!("worker-{w}"), &payload).await?;
    t.generation = generation;
    t.retries += 1;
    t.invocation += 1;
    t.beat = None;
    t.last_sign = Instant::now();
    Ok(())
}

/// Keys of the rounds the workers were last seen in, for a channel that cannot list: a lost
/// worker cannot report what it wrote.
fn last_rounds_keys(spec: &JobSpec, workers: &[Tracked]) -> Vec<String> {
    let keys = Keys::new(&spec.job_id);
    let n = spec.config.workers;
    let rounds: Vec<u64> = workers
        .iter()
        .filter_map(|t| t.beat.map(|b| b.round))
        .collect();
    let (Some(&lo), Some(&hi)) = (rounds.iter().min(), rounds.iter().max()) else {
        return Vec::new();
    };
    (lo.saturating_sub(1)..=hi + 1)
        .flat_map(|r| keys.round_keys(r, n))
        .chain((0..n).map(|w| keys.async_model(w)))
        .collect()
}

/// A failure that only says "the driver aborted me" is an echo of another failure.
fn is_abort_echo(f: &WorkerFailure) -> bool {
    f.message.contains("aborted by the driver")
}

/// What the channel holds about one worker.
pub(super) struct WorkerState {
    pub(super) result: Option<Box<WorkerResult>>,
    pub(super) failure: Option<WorkerFailure>,
    pub(super) progress: Option<Progress>,
    pub(super) beat: Option<Beat>,
}

/// Reads worker `w`'s records in one request where the backend batches reads.
pub(super) async fn read_worker(
    ch: &dyn Channel,
    job: &str,
    w: usize,
) -> anyhow::Result<WorkerState> {
    let keys = [
        records::key(job, records::RESULT, w),
        records::key(job, records::FAILURE, w),
        records::key(job, records::PROGRESS, w),
        liveness::alive_key(job, w),
    ];
    let values = ch.get_many(&keys).await?;
    fn decoded<T: serde::de::DeserializeOwned>(
        key: &str,
        v: &Option<bytes::Bytes>,
    ) -> anyhow::Result<Option<T>> {
        Ok(v.as_ref().map(|b| records::decode(key, b)).transpose()?)
    }
    Ok(WorkerState {
        result: decoded::<WorkerResult>(&keys[0], &values[0])?.map(Box::new),
        failure: decoded(&keys[1], &values[1])?,
        progress: decoded(&keys[2], &values[2])?,
        beat: decoded(&keys[3], &values[3])?,
    })
}

/// The driver's heartbeat while it follows a job.
struct DriverHeartbeat<'a> {
    ch: &'a dyn Channel,
    key: String,
    beat: DriverBeat,
    interval: Duration,
    next: Instant,
}

impl<'a> DriverHeartbeat<'a> {
    /// The driver's heartbeat for job `job`, due at once.
    fn new(ch: &'a dyn Channel, job: &str, beat: DriverBeat, interval: Duration) -> Self {
        DriverHeartbeat {
            ch,
            key: liveness::driver_key(job),
            beat,
            interval,
            next: Instant::now(),
        }
    }

    /// Beats if a beat is due; true when it did.
    async fn beat_if_due(&mut self) -> bool {
        if Instant::now() < self.next {
            return false;
        }
        self.next = Instant::now() + self.interval;
        self.beat.seq += 1;
        self.beat.unix_ms = unix_ms();
        if let Err(e) = records::put(self.ch, &self.key, &self.beat).await {
            tracing::warn!("the driver's heartbeat was not written: {e}");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slow_down_with_the_job_age_up_to_half_a_heartbeat() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let poll = |age, finishing| follow_poll(ms(50), s(5), age, finishing);
        assert_eq!(poll(s(1), false), ms(50));
        assert_eq!(poll(s(10), false), ms(200));
        assert_eq!(poll(s(3600), false), ms(2500));
        assert_eq!(poll(s(3600), true), ms(50));
        // A heartbeat quicker than the channel's quickest read.
        assert_eq!(follow_poll(ms(50), ms(20), s(60), false), ms(50));
    }

    /// The forecast's count of the driver's reads is what the driver's loop does.
    #[test]
    fn read_seconds_count_the_reads_the_driver_makes() {
        for (heartbeat, wall) in [
            (1.0, 1.0),
            (1.0, 10.0),
            (1.0, 300.0),
            (5.0, 60.0),
            (5.0, 900.0),
        ] {
            let hb = Duration::from_secs_f64(heartbeat);
            let mut age = Duration::ZERO;
            let mut reads = 0u32;
            while age.as_secs_f64() < wall {
                reads += 1;
                age += follow_poll(QUICKEST_READ, hb, age, false);
            }
            let simulated = f64::from(reads) * QUICKEST_READ.as_secs_f64();
            let model = read_seconds(hb, wall);
            assert!(
                (model - simulated).abs() <= 0.03 * simulated,
                "heartbeat {heartbeat} s, {wall} s: {model} against {simulated}"
            );
        }
        assert!(read_seconds(Duration::from_secs(1), 600.0) < 600.0 / 5.0);
    }
}
