//! Liveness: how a running invocation shows it is alive, how it learns that it has been
//! replaced, and how it stops writing once it may have been.
//!
//! Workers and driver cannot see each other's processes (on Lambda there is nothing to
//! see), so everything goes through the channel, at a cadence priced for it
//! ([`JobConfig::heartbeat`]):
//!
//! - every invocation runs a [`Pulse`], a thread of its own (the worker's async runtime has
//!   one thread, busy computing) that each beat reads the worker's generation, the abort
//!   flag and the driver's heartbeat in one request, then writes the worker's [`Beat`];
//! - the driver declares a worker dead after `dead_after` beats without a change, bumps its
//!   generation and re-invokes it from its checkpoint;
//! - **fencing**: every write of the invocation goes through [`Fenced`], which lets it
//!   through only while the pulse confirmed, less than a lease ago, that the invocation is
//!   still its worker's current generation. The lease is one beat shorter than the silence
//!   after which the driver declares a worker dead, so an invocation that was paused (or cut
//!   off from the channel) long enough to be replaced cannot write before its pulse has
//!   looked again, and the pulse ends the process the moment it sees a newer generation.
//!   Two invocations of one worker alive at once thus never both write;
//! - the driver beats too: workers whose driver stayed silent for `driver_lease` stop and
//!   delete the job's keys (`lambdaml job attach` within the lease takes the job over).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::config::JobConfig;
use super::event::{WorkerEvent, unix_ms};
use super::records;
use crate::channel::{self, Channel, ChannelError, PollPolicy};
use crate::comm::Keys;

/// Exit status of an invocation that found itself replaced by a newer generation: it
/// stopped on purpose, without writing, and nobody needs to report it.
pub const SUPERSEDED_EXIT: i32 = crate::platform::local::SUPERSEDED_EXIT;

/// One heartbeat of a running invocation, at `{job}/worker/alive/{w}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Beat {
    /// The invocation's generation.
    pub generation: u32,
    /// The invocation (0-based, counting re-invocations).
    pub invocation: u32,
    /// Drawn at random by each running copy of an invocation: two copies of one event
    /// (Lambda delivers an event twice, rarely) tell each other apart by it.
    pub instance: u64,
    /// Beats of this invocation so far: any change of the record is a sign of life.
    pub seq: u64,
    /// The next collective round of the worker.
    pub round: u64,
    /// The worker's current epoch (0-based).
    pub epoch: u32,
    /// When it was written (milliseconds since the Unix epoch), for `lambdaml job status`.
    pub unix_ms: u64,
    /// Until then (milliseconds since the Unix epoch) silence is expected: the invocation
    /// handed over to its successor, which has not started beating yet.
    pub quiet_until_unix_ms: u64,
}

/// The driver's heartbeat, at `{job}/control/driver`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DriverBeat {
    /// Which driver (a new one attaching to the job has another id).
    pub driver: u64,
    /// Beats so far.
    pub seq: u64,
    /// When it was written (milliseconds since the Unix epoch), for `lambdaml job status`.
    pub unix_ms: u64,
}

/// Key of worker `w`'s heartbeat.
pub fn alive_key(job: &str, w: usize) -> String {
    records::key(job, records::ALIVE, w)
}

/// Key of worker `w`'s current generation (written by the driver).
pub fn generation_key(job: &str, w: usize) -> String {
    records::key(job, records::GENERATION, w)
}

/// Key of the driver's heartbeat.
pub fn driver_key(job: &str) -> String {
    format!("{job}/control/driver")
}

/// How long a handed-over worker may stay silent while its next invocation starts (Lambda
/// queues an asynchronous invocation, then starts a cold instance).
pub fn start_grace(cfg: &JobConfig, channel: &channel::ChannelUrl) -> Duration {
    Duration::from_secs(30).max(cfg.dead_time(channel))
}

/// Why an invocation stops before its work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stop {
    /// The driver raised the job's abort flag.
    Aborted = 1,
    /// The driver has not beaten for longer than its lease.
    DriverGone = 2,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Aborted => "the job was aborted by the driver",
            Stop::DriverGone => {
                "the job's driver is gone: no heartbeat from it for longer than its lease \
                 (--driver-lease)"
            }
        })
    }
}

/// What the pulse and the invocation share.
#[derive(Debug)]
pub struct PulseState {
    base: Instant,
    /// When the pulse last confirmed the invocation is current, in ms since `base`, plus
    /// one (0: never).
    confirmed_ms: AtomicU64,
    stop: AtomicU8,
    round: AtomicU64,
    epoch: AtomicU32,
    done: AtomicBool,
    /// Writes are let through this long after a confirmation.
    lease: Duration,
    /// How long a write waits for a confirmation before it fails.
    wait_limit: Duration,
}

impl PulseState {
    fn new(lease: Duration, wait_limit: Duration) -> Self {
        PulseState {
            base: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
            stop: AtomicU8::new(0),
            round: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
            done: AtomicBool::new(false),
            lease,
            wait_limit,
        }
    }

    /// Why the invocation must stop, if it must.
    pub fn stopped(&self) -> Option<Stop> {
        match self.stop.load(Ordering::SeqCst) {
            1 => Some(Stop::Aborted),
            2 => Some(Stop::DriverGone),
            _ => None,
        }
    }

    fn set_stop(&self, why: Stop) {
        let _ = self
            .stop
            .compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Records where the worker is, for its next beat.
    pub fn set_position(&self, round: u64, epoch: u32) {
        self.round.store(round, Ordering::Relaxed);
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// The invocation was found current at `at`.
    fn confirm(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.base).as_millis() as u64;
        self.confirmed_ms.fetch_max(ms + 1, Ordering::SeqCst);
    }

    fn confirmed_recently(&self) -> bool {
        match self.confirmed_ms.load(Ordering::SeqCst) {
            0 => false,
            ms => self.base.elapsed() < Duration::from_millis(ms - 1) + self.lease,
        }
    }

    /// Waits until a write is safe: the invocation was confirmed current less than a lease
    /// ago. Fails after `wait_limit` without a confirmation, or when the driver is gone.
    async fn may_write(&self, key: &str, channel: &str) -> Result<(), ChannelError> {
        let started = Instant::now();
        loop {
            if self.stopped() == Some(Stop::DriverGone) {
                return Err(refused(channel, "put", key, Stop::DriverGone.to_string()));
            }
            if self.confirmed_recently() {
                return Ok(());
            }
            if started.elapsed() > self.wait_limit {
                return Err(refused(
                    channel,
                    "put",
                    key,
                    format!(
                        "this invocation could not confirm for {:.0} s that it is still its \
                         worker's current one (its heartbeats fail)",
                        self.wait_limit.as_secs_f64()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn refused(channel: &str, op: &'static str, key: &str, why: String) -> ChannelError {
    ChannelError::Backend {
        channel: channel.to_string(),
        op,
        key: key.to_string(),
        source: why.into(),
    }
}

/// The heartbeat thread of one invocation.
#[derive(Debug, Clone)]
pub struct Pulse {
    state: Arc<PulseState>,
    instance: u64,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    job: String,
    worker: usize,
    generation: u32,
}

impl Pulse {
    /// Starts beating for `event`'s invocation.
    pub fn start(event: &WorkerEvent) -> Pulse {
        let cfg = &event.job.config;
        let interval = cfg.heartbeat(&event.job.channel);
        let lease = interval * cfg.dead_after.saturating_sub(1).max(1);
        let state = Arc::new(PulseState::new(
            lease,
            Duration::from_secs_f64(cfg.wait_timeout),
        ));
        let instance = rand::random();
        let thread = {
            let state = state.clone();
            let event = event.clone();
            std::thread::Builder::new()
                .name("pulse".into())
                .spawn(move || beat_until_done(&event, &state, interval, instance))
                .ok()
        };
        if thread.is_none() {
            tracing::error!("could not start the heartbeat thread");
        }
        Pulse {
            state,
            instance,
            thread: Arc::new(Mutex::new(thread)),
            job: event.job.job_id.clone(),
            worker: event.worker,
            generation: event.generation,
        }
    }

    /// This running copy's id ([`Beat::instance`]).
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// What the invocation shares with its pulse.
    pub fn state(&self) -> &Arc<PulseState> {
        &self.state
    }

    /// Stops beating (no beat is written once this returns), then confirms from the
    /// caller that the invocation is still current, so that its last writes (a result, a
    /// checkpoint, a failure) are fenced like the others. Ends the process when it is not.
    pub async fn stop(&self, channel: &dyn Channel) {
        self.state.done.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            t.thread().unpark();
            let _ = t.join();
        }
        if let Err(e) = confirm_current(
            channel,
            &self.state,
            &self.job,
            self.worker,
            self.generation,
        )
        .await
        {
            tracing::warn!("could not read the worker's generation: {e}");
        }
    }
}

/// Reads `worker`'s generation key: ends the process when a newer generation than
/// `generation` runs, else records the invocation as confirmed current.
async fn confirm_current(
    channel: &dyn Channel,
    state: &PulseState,
    job: &str,
    worker: usize,
    generation: u32,
) -> Result<(), ChannelError> {
    let at = Instant::now();
    let value = channel.get(&generation_key(job, worker)).await?;
    exit_if_superseded(value.as_deref(), job, worker, generation);
    state.confirm(at);
    Ok(())
}

/// Whether `job` was aborted, as an invocation asks before it starts work. Its pulse may
/// have read the flag first, and a fenced channel then refuses every read: a late invocation
/// that asked through it failed without saying it stopped, and ended its process while its
/// pulse was still writing a beat. So the pulse's word counts, and the flag is read unfenced.
pub async fn aborted(
    raw: &dyn Channel,
    state: &PulseState,
    job: &str,
) -> Result<bool, ChannelError> {
    if state.stopped() == Some(Stop::Aborted) {
        return Ok(true);
    }
    Ok(raw.get(&Keys::new(job).abort()).await?.is_some())
}

/// Ends the process when `value` (the generation key's) names a newer generation than
/// `mine`: a newer invocation of this worker runs, and this one must not write anything.
fn exit_if_superseded(value: Option<&[u8]>, job: &str, worker: usize, mine: u32) {
    let key = generation_key(job, worker);
    let Some(current) = value.and_then(|v| records::decode::<u32>(&key, v).ok()) else {
        return;
    };
    if current > mine {
        tracing::warn!(
            worker,
            generation = mine,
            current,
            "superseded: the driver re-invoked this worker as generation {current} (this \
             invocation was silent too long); exiting without writing"
        );
        std::process::exit(SUPERSEDED_EXIT);
    }
}

/// Ends the process when `value` (the worker's heartbeat key's) is the beat of another copy
/// of this very invocation with a smaller instance id: of two copies of one event, the one
/// with the smaller id carries on, the other stops (their writes until then were the same
/// bytes to the same keys).
fn exit_if_duplicate(value: Option<&[u8]>, event: &WorkerEvent, instance: u64) {
    let key = alive_key(&event.job.job_id, event.worker);
    let Some(beat) = value.and_then(|v| records::decode::<Beat>(&key, v).ok()) else {
        return;
    };
    if beat.generation == event.generation
        && beat.invocation == event.invocation
        && beat.instance < instance
    {
        tracing::warn!(
            worker = event.worker,
            invocation = event.invocation,
            "a duplicate: another copy of this invocation runs (its event was delivered \
             twice); exiting"
        );
        std::process::exit(SUPERSEDED_EXIT);
    }
}

/// The pulse thread: beats every `interval` until told to stop.
fn beat_until_done(event: &WorkerEvent, state: &PulseState, interval: Duration, instance: u64) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("heartbeat thread: no runtime: {e}");
            return;
        }
    };
    // Its requests are billed with the worker's, but are not the data's it loads meanwhile.
    crate::channel::meter::count_this_thread_apart();
    rt.block_on(async {
        let spec = &event.job;
        let cfg = &spec.config;
        // A beat that fails is retried only until the next one is due.
        let options = channel::OpenOptions {
            retry: channel::RetryPolicy {
                budget: interval,
                quiet: true,
                ..Default::default()
            },
            ..super::driver::channel_options(cfg)
        };
        let ch = match channel::open_with(&spec.channel, options).await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::error!("heartbeat thread: cannot open the channel: {e}");
                return;
            }
        };
        let (job, w) = (&spec.job_id, event.worker);
        let beat_key = alive_key(job, w);
        let control = [
            generation_key(job, w),
            Keys::new(job).abort(),
            driver_key(job),
            beat_key.clone(),
            records::job_key(job),
        ];
        let driver_lease = Duration::from_secs_f64(cfg.driver_lease);
        let mut driver_seen: Option<Bytes> = None;
        let mut driver_changed = Instant::now();
        let mut seq = 0u64;
        let mut failures = 0u32;
        while !state.done.load(Ordering::SeqCst) {
            let at = Instant::now();
            match ch.get_many(&control).await {
                Ok(values) => {
                    exit_if_superseded(values[0].as_deref(), job, w, event.generation);
                    exit_if_duplicate(values[3].as_deref(), event, instance);
                    if values[4].is_none() {
                        // The driver writes the job's record before any worker starts and
                        // deletes it last: the job is over (an invocation paused until after
                        // its end, its replacement done and cleaned up).
                        tracing::warn!(
                            worker = w,
                            "the job is over (its record is gone): exiting without writing"
                        );
                        std::process::exit(SUPERSEDED_EXIT);
                    }
                    state.confirm(at);
                    if values[1].is_some() {
                        state.set_stop(Stop::Aborted);
                    }
                    if values[2] != driver_seen {
                        driver_seen = values[2].clone();
                        driver_changed = at;
                    } else if driver_changed.elapsed() > driver_lease {
                        state.set_stop(Stop::DriverGone);
                    }
                    seq += 1;
                    let beat = Beat {
                        generation: event.generation,
                        invocation: event.invocation,
                        instance,
                        seq,
                        round: state.round.load(Ordering::Relaxed),
                        epoch: state.epoch.load(Ordering::Relaxed),
                        unix_ms: unix_ms(),
                        quiet_until_unix_ms: 0,
                    };
                    if state.done.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Err(e) = records::put(ch.as_ref(), &beat_key, &beat).await {
                        failures += 1;
                        tracing::warn!(failures, "heartbeat not written: {e}");
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(failures, "heartbeat: cannot read the job's state: {e}");
                }
            }
            let next = at + interval;
            // `stop` unparks this thread, so an ending invocation does not wait out a beat.
            while !state.done.load(Ordering::SeqCst) && Instant::now() < next {
                std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
            }
        }
    });
}

/// Writes a beat that asks the driver to expect silence until `quiet_for` from now: the
/// invocation hands over to its successor (re-invocation at the deadline).
pub async fn hand_over(
    ch: &dyn Channel,
    event: &WorkerEvent,
    instance: u64,
    round: u64,
    epoch: u32,
    quiet_for: Duration,
) -> Result<(), ChannelError> {
    let beat = Beat {
        generation: event.generation,
        invocation: event.invocation,
        instance,
        seq: u64::MAX,
        round,
        epoch,
        unix_ms: unix_ms(),
        quiet_until_unix_ms: unix_ms() + quiet_for.as_millis() as u64,
    };
    records::put(ch, &alive_key(&event.job.job_id, event.worker), &beat).await
}

/// Deletes what a worker whose driver is gone may have left of the job: its records, its
/// collectives' keys, every key of the rounds around `round` (a peer's in-flight round
/// included: nobody is left to report them), and the job's control keys. Every worker does
/// it (deletes are idempotent), after waiting two beats so that its peers, which see the
/// driver gone within a beat of it, have stopped writing.
pub async fn abandon(
    ch: &dyn Channel,
    event: &WorkerEvent,
    round: u64,
    keep_rounds: u64,
    residual: Vec<String>,
) {
    let spec = &event.job;
    let (job, w, n) = (&spec.job_id, event.worker, spec.config.workers);
    tracing::warn!("{}: deleting the job's keys and stopping", Stop::DriverGone);
    tokio::time::sleep(spec.config.heartbeat(&spec.channel) * 2).await;
    let keys_of = Keys::new(job);
    let first = (round / keep_rounds).saturating_sub(1) * keep_rounds;
    let mut keys: Vec<String> = records::ALL
        .iter()
        .map(|what| records::key(job, what, w))
        .chain(residual)
        .chain((first..=round + 1).flat_map(|r| keys_of.round_keys(r, n)))
        .chain([
            keys_of.async_model(w),
            keys_of.abort(),
            driver_key(job),
            records::job_key(job),
            format!("{job}/control/probe"),
        ])
        .collect();
    if let Ok(Some(listed)) = ch.list(&keys_of.prefix()).await {
        keys.extend(listed);
    }
    keys.sort();
    keys.dedup();
    for chunk in keys.chunks(1000) {
        if let Err(e) = ch.delete(chunk).await {
            tracing::error!("could not delete the job's keys: {e}");
        }
    }
}

/// The job's channel as one invocation sees it: writes and deletes wait for the pulse to
/// have confirmed, less than a lease ago, that the invocation is current; once the job is
/// aborted or its driver gone, reads fail too, so that a worker waiting for a peer stops.
#[derive(Debug)]
pub struct Fenced {
    inner: Arc<dyn Channel>,
    state: Arc<PulseState>,
    job: String,
    worker: usize,
    generation: u32,
}

impl Fenced {
    /// `inner`, fenced by `pulse`.
    pub fn new(inner: Arc<dyn Channel>, pulse: &Pulse) -> Self {
        Fenced {
            inner,
            state: pulse.state().clone(),
            job: pulse.job.clone(),
            worker: pulse.worker,
            generation: pulse.generation,
        }
    }

    /// Waits until a write is safe. Once the pulse has stopped nobody else confirms, and
    /// the last writes (a result or a checkpoint, whose encoding alone may outlast the lease
    /// on a loaded machine) would wait for nothing: such a write confirms the invocation
    /// itself, with one read of the generation key.
    async fn may_write(&self, key: &str) -> Result<(), ChannelError> {
        if self.state.done.load(Ordering::SeqCst)
            && !self.state.confirmed_recently()
            && self.state.stopped() != Some(Stop::DriverGone)
        {
            confirm_current(
                self.inner.as_ref(),
                &self.state,
                &self.job,
                self.worker,
                self.generation,
            )
            .await
            .map_err(|e| {
                refused(
                    self.inner.url(),
                    "put",
                    key,
                    format!("could not confirm that this invocation is still current: {e}"),
                )
            })?;
        }
        self.state.may_write(key, self.inner.url()).await
    }

    fn readable(&self, key: &str) -> Result<(), ChannelError> {
        match self.state.stopped() {
            Some(why) => Err(refused(self.inner.url(), "get", key, why.to_string())),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Channel for Fenced {
    fn url(&self) -> &str {
        self.inner.url()
    }

    fn poll_policy(&self) -> PollPolicy {
        self.inner.poll_policy()
    }

    fn reads_are_cheap(&self) -> bool {
        self.inner.reads_are_cheap()
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError> {
        self.may_write(key).await?;
        self.inner.put(key, value).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError> {
        self.readable(key)?;
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
        self.readable(keys.first().map_or("", String::as_str))?;
        self.inner.get_many(keys).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError> {
        self.may_write(keys.first().map_or("", String::as_str))
            .await?;
        self.inner.delete(keys).await
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        self.inner.list(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_needs_a_recent_confirmation() {
        let state = PulseState::new(Duration::from_millis(200), Duration::from_secs(1));
        assert!(!state.confirmed_recently(), "never confirmed");
        state.confirm(Instant::now());
        assert!(state.confirmed_recently());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!state.confirmed_recently(), "the lease ran out");
    }

    #[test]
    fn the_first_stop_reason_wins() {
        let state = PulseState::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(state.stopped(), None);
        state.set_stop(Stop::DriverGone);
        state.set_stop(Stop::Aborted);
        assert_eq!(state.stopped(), Some(Stop::DriverGone));
    }

    #[tokio::test]
    async fn a_fenced_write_waits_for_the_pulse_and_fails_without_it() {
        let state = Arc::new(PulseState::new(
            Duration::from_millis(100),
            Duration::from_millis(150),
        ));
        let err = state.may_write("k", "mem:x").await.unwrap_err();
        assert!(err.to_string().contains("put 'k'"), "{err}");
        let confirmer = state.clone();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            confirmer.confirm(Instant::now());
        });
        state.may_write("k", "mem:x").await.unwrap();
        later.await.unwrap();
    }

    /// A result encoded slowly on a loaded machine (2.4 s for ResNet-18's 45 MB, longer than
    /// a 2 s lease) was put after the stopped pulse's confirmation had lapsed: the write
    /// waited for a confirmation nobody would give, and the driver took the worker for lost.
    #[tokio::test]
    async fn a_write_after_the_pulse_stopped_confirms_itself_once_the_lease_lapsed() {
        let raw: Arc<dyn Channel> = Arc::new(crate::channel::mem::MemChannel::named(""));
        let state = Arc::new(PulseState::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ));
        let fenced = Fenced {
            inner: raw.clone(),
            state: state.clone(),
            job: "j".into(),
            worker: 1,
            generation: 2,
        };
        state.confirm(Instant::now());
        state.done.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(80));
        assert!(!state.confirmed_recently(), "the lease ran out");
        let at = Instant::now();
        fenced.put("k", Bytes::from_static(b"v")).await.unwrap();
        assert!(
            at.elapsed() < Duration::from_millis(400),
            "{:?}",
            at.elapsed()
        );
        assert!(
            state.confirmed_recently(),
            "the write confirmed the invocation"
        );
        // A live pulse confirms on its own: the write waits for it instead.
        let live = Arc::new(PulseState::new(
            Duration::from_millis(50),
            Duration::from_millis(100),
        ));
        let fenced = Fenced {
            inner: raw,
            state: live,
            job: "j".into(),
            worker: 1,
            generation: 2,
        };
        assert!(fenced.put("k", Bytes::from_static(b"v")).await.is_err());
    }

    #[tokio::test]
    async fn an_abort_seen_by_the_pulse_first_is_an_abort() {
        let raw = crate::channel::mem::MemChannel::named("");
        let state = PulseState::new(Duration::from_secs(1), Duration::from_secs(1));
        assert!(
            !aborted(&raw, &state, "j").await.unwrap(),
            "no flag, no stop"
        );
        state.set_stop(Stop::Aborted);
        assert!(
            aborted(&raw, &state, "j").await.unwrap(),
            "the pulse saw the flag"
        );
        let state = PulseState::new(Duration::from_secs(1), Duration::from_secs(1));
        raw.put(&Keys::new("j").abort(), Bytes::new())
            .await
            .unwrap();
        assert!(aborted(&raw, &state, "j").await.unwrap(), "the flag is up");
    }
}
