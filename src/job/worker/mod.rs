//! One worker invocation: load the partition, resume from a checkpoint if told to, train
//! round after round, and before the invocation's deadline checkpoint and re-invoke itself.
//!
//! `Session` holds what every model shares (channel, the collective, deadline,
//! checkpoint, records); `train` is the one training loop, driving any
//! [`crate::algo::learner::Learner`]. A round's state is only changed after its
//! collective returns, so an invocation cut off inside a collective checkpoints the state
//! *before* the round, and its successor re-runs the round, rewriting the same keys with
//! the same bytes.

mod train;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::data_source;
use super::event::{Invocation, WorkerEvent};
use super::liveness::{self, Fenced, Pulse, Stop};
use super::records::{
    self, Checkpoint, EpochAcc, EpochRecord, Progress, WorkerFailure, WorkerResult,
};
use crate::algo::{self, learner::Learner};
use crate::channel::meter::{self, Usage};
use crate::channel::{self, Channel};
use crate::comm::{self, Collective, CommError, CommStats, Member};
use crate::data::libsvm::Layout;

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Training finished; the result is on the channel.
    Finished,
    /// The deadline was near: checkpointed and re-invoked.
    Reinvoked,
    /// The invocation found the job aborted and stopped without training.
    Aborted,
}

/// Runs one invocation. On error, a failure record is left for the driver (best effort).
pub async fn run(event: WorkerEvent, deadline: Option<SystemTime>) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let usage_base = meter::snapshot();
    let spec = &event.job;
    let raw =
        channel::open_with(&spec.channel, super::driver::channel_options(&spec.config)).await?;
    let pulse = Pulse::start(&event);
    let channel: Arc<dyn Channel> = Arc::new(Fenced::new(raw.clone(), &pulse));
    // An invocation of an aborted job stops here, and says so, so that the driver knows it
    // has stopped before it deletes the job's keys: a re-invocation whose predecessor was cut
    // off before it could see the flag (short invocations rarely wait long enough to look),
    // or a first invocation that started late.
    let aborted = liveness::aborted(raw.as_ref(), pulse.state(), &spec.job_id).await;
    if aborted.is_err() {
        // The pulse is stopped before the process ends, so no beat is cut off half written.
        pulse.stop(raw.as_ref()).await;
    }
    if aborted? {
        tracing::info!("the job was aborted: not resuming");
        pulse.stop(raw.as_ref()).await;
        let stopped = WorkerFailure {
            worker: event.worker,
            message: format!(
                "{}: invocation {} stopped",
                CommError::Aborted,
                event.invocation
            ),
            residual_keys: Vec::new(),
            lost: false,
            generation: event.generation,
            invocation: event.invocation,
        };
        let key = records::key(&spec.job_id, records::FAILURE, event.worker);
        records::put(channel.as_ref(), &key, &stopped).await?;
        return Ok(Outcome::Aborted);
    }
    let mut session = None;
    let result = async {
        within_bounds(&event, event.invocation)?;
        let links = Links {
            channel: channel.clone(),
            raw: raw.clone(),
            pulse: pulse.clone(),
        };
        let (s, mut learner) = Session::start(&event, links, deadline, started, usage_base).await?;
        train::train(session.insert(s), learner.as_mut()).await
    }
    .await;
    // Finishing and re-invoking stopped it before their last writes already.
    pulse.stop(raw.as_ref()).await;
    if let Err(e) = &result {
        let residual = session
            .as_ref()
            .map(|s| s.collective.residual_keys())
            .unwrap_or_default();
        if pulse.state().stopped() == Some(Stop::DriverGone) {
            // Nobody reads a failure record any more: the job's keys are this worker's to
            // delete.
            let round = session.as_ref().map_or(0, |s| s.state.round);
            let keep = session.as_ref().map_or(1, |s| s.keep_rounds);
            liveness::abandon(raw.as_ref(), &event, round, keep, residual).await;
            return result;
        }
        let failure = WorkerFailure {
            worker: event.worker,
            message: format!("{e:#}"),
            residual_keys: residual,
            lost: false,
            generation: event.generation,
            invocation: event.invocation,
        };
        let key = records::key(&spec.job_id, records::FAILURE, event.worker);
        if let Err(put_err) = records::put(raw.as_ref(), &key, &failure).await {
            tracing::error!("could not report the failure to the channel: {put_err}");
        }
    }
    result
}

/// The channel as an invocation uses it, fenced ([`Fenced`]) and raw, and its pulse.
struct Links {
    channel: Arc<dyn Channel>,
    raw: Arc<dyn Channel>,
    pulse: Pulse,
}

/// Reports an invocation that ended without a word (killed, out of memory, past its
/// deadline), as its platform saw it: `why` and the last lines of its log become the
/// worker's failure record, unless the worker left a result or a failure of its own.
pub async fn report_lost(event: &WorkerEvent, why: &str, log_tail: &str) -> anyhow::Result<()> {
    let spec = &event.job;
    let options = channel::OpenOptions {
        retry: channel::RetryPolicy {
            budget: Duration::from_secs(30),
            ..Default::default()
        },
        ..super::driver::channel_options(&spec.config)
    };
    let channel = channel::open_with(&spec.channel, options).await?;
    let w = event.worker;
    let job = &spec.job_id;
    if channel
        .get(&records::key(job, records::RESULT, w))
        .await?
        .is_some()
    {
        return Ok(());
    }
    // A failure this invocation reported itself, or a newer invocation of the worker: there
    // is nothing to say (an older generation's report is overwritten).
    let failure_key = records::key(job, records::FAILURE, w);
    if let Some(f) = records::get::<WorkerFailure>(channel.as_ref(), &failure_key).await?
        && f.generation >= event.generation
    {
        return Ok(());
    }
    let generation_key = liveness::generation_key(job, w);
    if records::get::<u32>(channel.as_ref(), &generation_key)
        .await?
        .is_some_and(|g| g > event.generation)
    {
        return Ok(());
    }
    let mut message = format!("invocation {} of worker {w} {why}", event.invocation);
    if !log_tail.is_empty() {
        message.push_str("; the last lines of its log:\n");
        message.push_str(log_tail);
    }
    let failure = WorkerFailure {
        worker: w,
        message,
        residual_keys: Vec::new(),
        lost: true,
        generation: event.generation,
        invocation: event.invocation,
    };
    records::put(channel.as_ref(), &failure_key, &failure).await?;
    Ok(())
}

/// The machinery of one invocation, shared by every model.
struct Session<'a> {
    event: &'a WorkerEvent,
    /// The job's channel, fenced by the pulse.
    channel: Arc<dyn Channel>,
    /// The same, unfenced: for the pulse's own last look.
    raw: Arc<dyn Channel>,
    pulse: Pulse,
    /// Rounds per checkpoint block (see [`crate::comm::Member::keep_rounds`]).
    keep_rounds: u64,
    /// The block of the latest checkpoint (of this invocation or the one resumed).
    checkpoint_block: u64,
    /// The job's collective, chosen once from the sync mode.
    collective: Box<dyn Collective>,
    state: Checkpoint,
    deadline: Option<Instant>,
    margin: Duration,
    longest_round: Duration,
    /// When this invocation started (what Lambda bills from).
    started: Instant,
    /// The meter when this invocation started, and when the last epoch record was taken.
    usage_base: Usage,
    usage_mark: Usage,
    /// Collective waiting already attributed to an epoch.
    wait_mark: f64,
}

impl<'a> Session<'a> {
    /// Loads the partition, opens the collective, takes up the checkpoint when resuming,
    /// and builds the model's learner.
    async fn start(
        event: &'a WorkerEvent,
        links: Links,
        deadline: Option<SystemTime>,
        started: Instant,
        usage_base: Usage,
    ) -> anyhow::Result<(Self, Box<dyn Learner>)> {
        let spec = &event.job;
        let cfg = &spec.config;
        let w = event.worker;
        let Links {
            channel,
            raw,
            pulse,
        } = links;
        let layout = if cfg.model.is_sparse() {
            Layout::Sparse
        } else {
            Layout::Dense
        };
        let before_data = meter::snapshot();
        let pulse_before = meter::apart_snapshot();
        let manifest = data_source::read_manifest(&spec.data_location).await?;
        // Before the partition is allocated: a worker started by anything but this driver
        // (or on a different manifest) is checked as well.
        super::plan::check_memory(cfg, &manifest, spec.n_features, Some(w))?;
        let data =
            data_source::load_partition(&spec.data_location, &manifest, w, spec.n_features, layout)
                .await?;
        let test = match &spec.test_location {
            Some(location) => {
                let manifest = data_source::read_manifest(location)
                    .await
                    .context("reading the test set's manifest")?;
                let part =
                    data_source::load_partition(location, &manifest, w, spec.n_features, layout)
                        .await
                        .context("loading the test set")?;
                Some(part)
            }
            None => None,
        };
        // Data reads go to S3 whatever the channel is: counted apart, and out of the channel's.
        // The pulse's requests are in both counts, but one it makes between the two reads is
        // in one only: a plain difference overflowed (a worker of the CI panicked here).
        let pulse_usage = meter::apart_snapshot() - pulse_before;
        let data_usage = (meter::snapshot() - before_data).saturating_sub(pulse_usage);
        let usage_base = usage_base + data_usage;
        let margin = Duration::from_secs_f64(cfg.margin());
        // SystemTime -> Instant: the deadline is wall-clock (set by the platform), waits use
        // the monotonic clock.
        let deadline = deadline
            .map(|d| Instant::now() + d.duration_since(SystemTime::now()).unwrap_or_default());
        let train_spec = spec.train_spec(w);
        if train_spec.threads > 1 && train_spec.model.loss().is_some() {
            tracing::info!(
                "computing on {} threads (memory_mb {})",
                train_spec.threads,
                cfg.memory_mb
            );
        }
        let learner = algo::build(&train_spec, data, test)?;
        let n_params: usize = learner.segments().iter().map(|seg| seg.len).sum();
        // The same on every worker: it decides which keys are kept for a recovering peer.
        let keep_rounds = cfg.checkpoint_rounds(n_params);
        let member = Member {
            channel: channel.clone(),
            job: spec.job_id.clone(),
            worker: w,
            workers: cfg.workers,
            wait_timeout: Duration::from_secs_f64(cfg.wait_timeout),
            keep_rounds,
        };
        let mut collective = comm::open(cfg.sync, spec.ps_target().as_ref(), member).await?;
        collective.set_deadline(deadline.map(|d| d.checked_sub(margin / 2).unwrap_or(d)));
        let ckpt_key = records::key(&spec.job_id, records::CHECKPOINT, w);
        let found: Option<Checkpoint> = if event.resume || event.recover {
            records::get(channel.as_ref(), &ckpt_key).await?
        } else {
            None
        };
        if event.resume && found.is_none() {
            anyhow::bail!("checkpoint '{ckpt_key}' is missing");
        }
        let mut state = if let Some(mut ckpt) = found {
            collective.restore(std::mem::take(&mut ckpt.collective));
            ckpt.invocations = event.invocation + 1;
            // The previous invocation wrote this checkpoint after reading its meter.
            ckpt.usage.puts += 1;
            ckpt
        } else {
            Checkpoint {
                model: Default::default(),
                training_done: false,
                epoch: 0,
                step: 0,
                round: 0,
                acc: EpochAcc::default(),
                history: Vec::new(),
                collective: Default::default(),
                invocations: event.invocation + 1,
                comm: Default::default(),
                usage: Usage::default(),
                billed_s: 0.0,
                data_usage: Usage::default(),
                layout: None,
            }
        };
        state.data_usage = state.data_usage + data_usage;
        state.acc.load_s += started.elapsed().as_secs_f64();
        tracing::info!(
            worker = w,
            invocation = event.invocation,
            generation = event.generation,
            recovered = event.recover,
            epoch = state.epoch,
            step = state.step,
            round = state.round,
            "worker started"
        );
        pulse.state().set_position(state.round, state.epoch);
        let session = Session {
            event,
            channel,
            raw,
            pulse,
            keep_rounds,
            checkpoint_block: state.round / keep_rounds,
            collective,
            state,
            deadline,
            margin,
            longest_round: Duration::ZERO,
            started,
            usage_base,
            usage_mark: usage_base,
            wait_mark: 0.0,
        };
        Ok((session, learner))
    }

    /// Fails when the invocation must stop: the job was aborted or its driver is gone (the
    /// pulse saw it; a worker in fast rounds may never wait long enough to look itself).
    fn check_stop(&self) -> anyhow::Result<()> {
        match self.pulse.state().stopped() {
            Some(Stop::Aborted) => Err(CommError::Aborted.into()),
            Some(why) => Err(anyhow::anyhow!("{why}")),
            None => Ok(()),
        }
    }

    /// Writes a checkpoint before the first round of each block of `keep_rounds` rounds:
    /// a worker that dies is re-run from there, and its peers keep the block's keys for it.
    /// Called only where the state is whole (where a re-invocation may happen).
    async fn checkpoint_if_due(&mut self) -> anyhow::Result<()> {
        self.check_stop()?;
        let block = self.state.round / self.keep_rounds;
        if block <= self.checkpoint_block {
            return Ok(());
        }
        records::put(
            self.channel.as_ref(),
            &self.checkpoint_key(),
            &self.snapshot(),
        )
        .await
        .context("writing the checkpoint")?;
        self.checkpoint_block = block;
        Ok(())
    }

    /// Where this worker's checkpoint lives.
    fn checkpoint_key(&self) -> String {
        records::key(
            &self.event.job.job_id,
            records::CHECKPOINT,
            self.event.worker,
        )
    }

    /// The state as a checkpoint: what this invocation did so far, with its traffic and
    /// billed time.
    fn snapshot(&self) -> Checkpoint {
        let now = meter::snapshot();
        let mut snapshot = Checkpoint {
            collective: self.collective.state(),
            comm: self.state.comm + self.comm_stats(),
            usage: self.state.usage + (now - self.usage_base),
            billed_s: self.state.billed_s + billed(self.started),
            ..self.state.clone()
        };
        snapshot.acc.usage = snapshot.acc.usage + (now - self.usage_mark);
        snapshot
    }

    /// True when the time left is too short for another round plus a checkpoint.
    fn should_yield(&self) -> bool {
        self.deadline.is_some_and(|d| {
            d.saturating_duration_since(Instant::now()) < self.margin + 2 * self.longest_round
        })
    }

    /// The mean of `values` over the workers in this round; `None` when the invocation's
    /// deadline interrupted it (the caller re-invokes, and the round is re-run).
    async fn mean(&mut self, values: &[f32]) -> anyhow::Result<Option<Vec<f32>>> {
        let started = Instant::now();
        let result = self.collective.mean(self.state.round, values).await;
        self.after_round(started, result)
    }

    /// A synchronous SGD step of the model's parameters with this worker's `grad`
    /// (`None`: interrupted, as above, with the parameters unchanged).
    async fn grad_step(&mut self, grad: &[f32], lr: f32) -> anyhow::Result<Option<()>> {
        let started = Instant::now();
        let params = &mut self.state.model.params;
        let result = self
            .collective
            .grad_step(self.state.round, params, grad, lr)
            .await;
        self.after_round(started, result)
    }

    /// Worker 0's vector on every worker (`None`: interrupted).
    async fn broadcast(
        &mut self,
        own: Option<&[f32]>,
        len: usize,
    ) -> anyhow::Result<Option<Vec<f32>>> {
        match self.collective.broadcast(0, own, len).await {
            Ok(v) => Ok(Some(v)),
            Err(e) => interrupted(e),
        }
    }

    /// Traffic of this invocation's collectives.
    fn comm_stats(&self) -> CommStats {
        self.collective.stats()
    }

    fn after_round<T>(
        &mut self,
        started: Instant,
        result: Result<T, CommError>,
    ) -> anyhow::Result<Option<T>> {
        match result {
            Ok(v) => {
                let took = started.elapsed();
                self.state.acc.comm_s += took.as_secs_f64();
                self.state.acc.rounds += 1;
                self.state.acc.round_max_s = self.state.acc.round_max_s.max(took.as_secs_f64());
                let waited = self.comm_stats().wait_seconds;
                self.state.acc.wait_s += waited - self.wait_mark;
                self.wait_mark = waited;
                self.longest_round = self.longest_round.max(took);
                self.state.round += 1;
                self.pulse
                    .state()
                    .set_position(self.state.round, self.state.epoch);
                Ok(Some(v))
            }
            Err(e) => interrupted(e),
        }
    }

    /// The record of the epoch just finished, with timings and counters filled in.
    fn epoch_record(&mut self, train_loss: f64, n_train: usize, n_val: usize) -> EpochRecord {
        let acc = std::mem::take(&mut self.state.acc);
        let now = meter::snapshot();
        let usage = acc.usage + (now - self.usage_mark);
        self.usage_mark = now;
        EpochRecord {
            worker: self.event.worker,
            epoch: self.state.epoch + 1,
            train_loss,
            val_loss: None,
            val_accuracy: None,
            test_loss: None,
            test_accuracy: None,
            objective: None,
            primal_residual: None,
            dual_residual: None,
            n_train: n_train as u64,
            n_val: n_val as u64,
            n_test: 0,
            compute_s: acc.compute_s,
            comm_s: acc.comm_s,
            wait_s: acc.wait_s,
            load_s: acc.load_s,
            usage,
            rounds: acc.rounds,
            round_max_s: acc.round_max_s,
            epoch_s: acc.wall_s,
            invocation: self.event.invocation,
            peak_rss_mb: crate::platform::local::memory_of(std::process::id())
                .map(|m| m.peak_kb as f64 / 1024.0),
        }
    }

    /// Stores the epoch's record, moves to the next epoch and reports progress.
    async fn finish_epoch(&mut self, record: EpochRecord) -> anyhow::Result<()> {
        tracing::info!(
            epoch = record.epoch,
            train_loss = record.train_loss,
            val_accuracy = record.val_accuracy,
            test_accuracy = record.test_accuracy,
            objective = record.objective,
            "epoch done"
        );
        self.state.history.push(record.clone());
        self.state.epoch += 1;
        self.state.step = 0;
        let progress = Progress {
            epochs_done: self.state.epoch,
            last: Some(record),
            invocations: self.state.invocations,
        };
        let key = records::key(&self.event.job.job_id, records::PROGRESS, self.event.worker);
        records::put(self.channel.as_ref(), &key, &progress).await?;
        Ok(())
    }

    /// Writes the checkpoint, invokes the next invocation through the platform.
    async fn reinvoke(&mut self) -> anyhow::Result<Outcome> {
        let spec = &self.event.job;
        let w = self.event.worker;
        let key = records::key(&spec.job_id, records::CHECKPOINT, w);
        let snapshot = self.snapshot();
        within_bounds(self.event, self.event.invocation + 1)?;
        self.pulse.stop(self.raw.as_ref()).await;
        // Before the checkpoint, which may be as slow as a round: the driver expects silence
        // while it is written and while the next invocation starts.
        let quiet = liveness::start_grace(&spec.config, &spec.channel) + self.transfer_allowance();
        self.hand_over(quiet).await?;
        records::put(self.channel.as_ref(), &key, &snapshot)
            .await
            .context("writing the checkpoint")?;
        let next = WorkerEvent {
            invocation: self.event.invocation + 1,
            resume: true,
            recover: false,
            ..self.event.clone()
        };
        let payload = serde_json::to_vec(&Invocation::Train(Box::new(next.clone())))
            .expect("events serialise");
        spec.platform
            .connect()
            .await
            .invoke(&format!("worker-{w}"), &payload)
            .await
            .context("re-invoking the worker")?;
        tracing::info!(
            epoch = self.state.epoch,
            step = self.state.step,
            next_invocation = next.invocation,
            "checkpointed and re-invoked"
        );
        Ok(Outcome::Reinvoked)
    }

    /// Writes the result record with the final model.
    async fn finish(&mut self, params: Vec<f32>) -> anyhow::Result<Outcome> {
        // A worker whose driver is gone cleans up instead: nobody would collect its result.
        self.check_stop()?;
        // No beat may land after the result: the driver deletes the job's keys once it has
        // every result.
        self.pulse.stop(self.raw.as_ref()).await;
        let spec = &self.event.job;
        let w = self.event.worker;
        let digest = super::summary::digest(&params);
        let params = if w == 0 { params } else { Vec::new() };
        if !params.is_empty() {
            // The model rides in the result: the driver expects silence while it travels.
            let quiet = spec.config.dead_time(&spec.channel) + self.transfer_allowance();
            self.hand_over(quiet).await?;
        }
        let result = WorkerResult {
            worker: w,
            params,
            digest,
            history: self.state.history.clone(),
            invocations: self.state.invocations,
            residual_keys: self.collective.residual_keys(),
            comm: self.state.comm + self.comm_stats(),
            usage: self.state.usage + (meter::snapshot() - self.usage_base),
            billed_s: self.state.billed_s + billed(self.started),
            data_usage: self.state.data_usage,
            layout: self.state.layout,
        };
        let key = records::key(&spec.job_id, records::RESULT, w);
        records::put(self.channel.as_ref(), &key, &result).await?;
        tracing::info!("worker finished");
        Ok(Outcome::Finished)
    }

    /// How long writing a model-sized value may take: twice the slowest round so far (a
    /// round moves at least a vector each way), at least a second.
    fn transfer_allowance(&self) -> Duration {
        (2 * self.longest_round).max(Duration::from_secs(1))
    }

    /// Writes a beat asking the driver to expect silence for `quiet`: the pulse has
    /// stopped, and what follows (a checkpoint or a result of a large model, then maybe the
    /// next invocation's start) may take longer than the silence a dead worker is known by.
    async fn hand_over(&self, quiet: Duration) -> anyhow::Result<()> {
        liveness::hand_over(
            self.channel.as_ref(),
            self.event,
            self.pulse.instance(),
            self.state.round,
            self.state.epoch,
            quiet,
        )
        .await
        .context("telling the driver to expect silence")
    }
}

/// Fails when invocation `invocation` (0-based) of the event's worker may not run: past the
/// job's `max_invocations`, or past its `max_job_seconds` since the driver started it. These
/// bounds hold whatever happens to the driver, so nothing runs or bills forever.
fn within_bounds(event: &WorkerEvent, invocation: u32) -> anyhow::Result<()> {
    let cfg = &event.job.config;
    if invocation >= cfg.max_invocations {
        anyhow::bail!(
            "worker {} reached its limit of {} invocations (--max-invocations): stopping",
            event.worker,
            cfg.max_invocations
        );
    }
    let age_s = super::event::unix_ms().saturating_sub(event.job.started_unix_ms) as f64 / 1e3;
    if age_s > cfg.max_job_seconds {
        anyhow::bail!(
            "the job started {age_s:.0} s ago, past its limit of {} s (--max-job-seconds): \
             stopping",
            cfg.max_job_seconds
        );
    }
    Ok(())
}

/// Seconds since `started`, rounded up to the millisecond as Lambda bills.
fn billed(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1000.0).ceil() / 1000.0
}

/// Maps a deadline interruption to `Ok(None)`; other errors pass through.
fn interrupted<T>(e: CommError) -> anyhow::Result<Option<T>> {
    match e {
        CommError::Interrupted { key } => {
            tracing::info!(%key, "deadline reached inside a collective");
            Ok(None)
        }
        e => Err(e.into()),
    }
}
