//! One worker invocation: load the partition, resume from a checkpoint if told to, train
//! round after round, and before the invocation's deadline checkpoint and re-invoke itself.
//!
//! A round's state is only changed after its collective returns, so an invocation cut off
//! inside a collective checkpoints the state *before* the round, and its successor re-runs
//! the round, rewriting the same keys with the same bytes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::event::WorkerEvent;
use super::records::{
    self, Checkpoint, EpochAcc, EpochRecord, Progress, WorkerFailure, WorkerResult,
};
use crate::algo::linear::Linear;
use crate::algo::{OptimKind, sgd};
use crate::channel::{self, Channel};
use crate::comm::{Comm, CommError, SyncMode};
use crate::data::Dataset;
use crate::data::libsvm::Layout;
use crate::data::partition;

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Training finished; the result is on the channel.
    Finished,
    /// The deadline was near: checkpointed and re-invoked.
    Reinvoked,
}

/// Runs one invocation. On error, a failure record is left for the driver (best effort).
pub async fn run(event: WorkerEvent, deadline: Option<SystemTime>) -> anyhow::Result<Outcome> {
    let spec = &event.job;
    let channel = channel::open(&spec.channel)?;
    let mut trainer = None;
    let result = async {
        let t = Trainer::start(&event, channel.clone(), deadline).await?;
        trainer.insert(t).run().await
    }
    .await;
    if let Err(e) = &result {
        let failure = WorkerFailure {
            worker: event.worker,
            message: format!("{e:#}"),
            residual_keys: trainer.map(|t| t.comm.residual_keys()).unwrap_or_default(),
        };
        let key = records::key(&spec.job_id, records::FAILURE, event.worker);
        if let Err(put_err) = records::put(channel.as_ref(), &key, &failure).await {
            tracing::error!("could not report the failure to the channel: {put_err}");
        }
    }
    result
}

struct Trainer<'a> {
    event: &'a WorkerEvent,
    channel: Arc<dyn Channel>,
    comm: Comm,
    data: Dataset,
    targets: Vec<f32>,
    train_rows: Vec<u32>,
    val_rows: Vec<u32>,
    model: Linear,
    state: Checkpoint,
    deadline: Option<Instant>,
    margin: Duration,
    longest_round: Duration,
}

impl<'a> Trainer<'a> {
    async fn start(
        event: &'a WorkerEvent,
        channel: Arc<dyn Channel>,
        deadline: Option<SystemTime>,
    ) -> anyhow::Result<Self> {
        let spec = &event.job;
        let cfg = &spec.config;
        let w = event.worker;
        let layout = if cfg.model.is_sparse() {
            Layout::Sparse
        } else {
            Layout::Dense
        };
        let manifest = partition::read_manifest(&spec.data_location)?;
        let data =
            partition::load_partition(&spec.data_location, &manifest, w, spec.n_features, layout)?;
        let model = Linear {
            loss: cfg.model.loss(),
            n_features: spec.n_features,
            lam: cfg.lam,
        };
        let targets = model.targets(&data.labels, spec.labels);
        let (val_rows, train_rows) =
            sgd::train_val_split(data.n_rows(), cfg.val_ratio, cfg.seed, w);
        let margin = Duration::from_secs_f64(cfg.margin());
        // SystemTime -> Instant: the deadline is wall-clock (set by the platform), waits use
        // the monotonic clock.
        let deadline = deadline
            .map(|d| Instant::now() + d.duration_since(SystemTime::now()).unwrap_or_default());
        let mut comm = Comm::new(
            channel.clone(),
            &spec.job_id,
            w,
            cfg.workers,
            Duration::from_secs_f64(cfg.wait_timeout),
        );
        comm.set_deadline(deadline.map(|d| d.checked_sub(margin / 2).unwrap_or(d)));
        let ckpt_key = records::key(&spec.job_id, records::CHECKPOINT, w);
        let state = if event.resume {
            let mut ckpt: Checkpoint = records::get(channel.as_ref(), &ckpt_key)
                .await?
                .with_context(|| format!("checkpoint '{ckpt_key}' is missing"))?;
            anyhow::ensure!(
                ckpt.params.len() == model.n_params(),
                "checkpoint '{ckpt_key}' holds {} parameters, the model has {}",
                ckpt.params.len(),
                model.n_params()
            );
            comm.restore_pending(std::mem::take(&mut ckpt.pending));
            ckpt.invocations = event.invocation + 1;
            ckpt
        } else {
            Checkpoint {
                params: vec![0.0; model.n_params()],
                epoch: 0,
                step: 0,
                round: 0,
                acc: EpochAcc::default(),
                history: Vec::new(),
                pending: Vec::new(),
                invocations: 1,
                comm: Default::default(),
            }
        };
        tracing::info!(
            worker = w,
            invocation = event.invocation,
            rows = data.n_rows(),
            epoch = state.epoch,
            step = state.step,
            "worker started"
        );
        Ok(Trainer {
            event,
            channel,
            comm,
            data,
            targets,
            train_rows,
            val_rows,
            model,
            state,
            deadline,
            margin,
            longest_round: Duration::ZERO,
        })
    }

    fn should_yield(&self) -> bool {
        self.deadline.is_some_and(|d| {
            d.saturating_duration_since(Instant::now()) < self.margin + 2 * self.longest_round
        })
    }

    /// Runs one collective; `None` when the invocation's deadline interrupted it.
    async fn collective(&mut self, values: &[f32]) -> anyhow::Result<Option<Vec<f32>>> {
        let cfg = &self.event.job.config;
        let started = Instant::now();
        match self
            .comm
            .all_reduce_mean(cfg.sync, self.state.round, values)
            .await
        {
            Ok(v) => {
                let took = started.elapsed();
                self.state.acc.comm_s += took.as_secs_f64();
                self.longest_round = self.longest_round.max(took);
                self.state.round += 1;
                Ok(Some(v))
            }
            Err(CommError::Interrupted { key }) => {
                tracing::info!(%key, "deadline reached inside a collective");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn run(&mut self) -> anyhow::Result<Outcome> {
        let cfg = self.event.job.config.clone();
        let steps = self.event.job.steps_per_epoch;
        let mut grad = vec![0f32; self.model.n_params()];
        while self.state.epoch < cfg.epochs {
            let order = sgd::epoch_order(
                &self.train_rows,
                cfg.seed,
                self.event.worker,
                self.state.epoch,
            );
            while self.state.step < steps {
                if self.should_yield() {
                    return self.reinvoke().await;
                }
                let started = Instant::now();
                let rows = &order[sgd::batch_bounds(order.len(), steps, self.state.step)];
                let loss = self.model.gradient(
                    &self.state.params,
                    &self.data.features,
                    &self.targets,
                    rows,
                    &mut grad,
                );
                let compute = started.elapsed().as_secs_f64();
                match (cfg.optim, cfg.sync) {
                    (OptimKind::GradAvg, SyncMode::Async) => {
                        let mut next = self.state.params.clone();
                        sgd::step(&mut next, &grad, cfg.lr);
                        match self.collective(&next).await? {
                            Some(mean) => self.state.params = mean,
                            None => return self.reinvoke().await,
                        }
                    }
                    (OptimKind::GradAvg, _) => match self.collective(&grad).await? {
                        Some(mean) => sgd::step(&mut self.state.params, &mean, cfg.lr),
                        None => return self.reinvoke().await,
                    },
                    (OptimKind::ModelAvg, _) => sgd::step(&mut self.state.params, &grad, cfg.lr),
                }
                let acc = &mut self.state.acc;
                acc.compute_s += compute;
                acc.loss_sum += loss as f64;
                acc.batches += 1;
                acc.wall_s += started.elapsed().as_secs_f64();
                self.state.step += 1;
            }
            if cfg.optim == OptimKind::ModelAvg {
                if self.should_yield() {
                    return self.reinvoke().await;
                }
                let started = Instant::now();
                let params = self.state.params.clone();
                match self.collective(&params).await? {
                    Some(mean) => self.state.params = mean,
                    None => return self.reinvoke().await,
                }
                self.state.acc.wall_s += started.elapsed().as_secs_f64();
            }
            self.finish_epoch().await?;
        }
        self.finish().await
    }

    async fn finish_epoch(&mut self) -> anyhow::Result<()> {
        let spec = &self.event.job;
        let eval = self.model.evaluate(
            &self.state.params,
            &self.data.features,
            &self.targets,
            &self.val_rows,
        );
        let acc = std::mem::take(&mut self.state.acc);
        let record = EpochRecord {
            worker: self.event.worker,
            epoch: self.state.epoch + 1,
            train_loss: acc.loss_sum / acc.batches.max(1) as f64,
            val_loss: eval.loss(),
            val_accuracy: eval.accuracy(),
            n_train: self.train_rows.len() as u64,
            n_val: self.val_rows.len() as u64,
            compute_s: acc.compute_s,
            comm_s: acc.comm_s,
            epoch_s: acc.wall_s,
            invocation: self.event.invocation,
        };
        tracing::info!(
            epoch = record.epoch,
            train_loss = record.train_loss,
            val_accuracy = record.val_accuracy,
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
        let key = records::key(&spec.job_id, records::PROGRESS, self.event.worker);
        records::put(self.channel.as_ref(), &key, &progress).await?;
        Ok(())
    }

    fn snapshot(&self) -> Checkpoint {
        Checkpoint {
            pending: self.comm.pending().to_vec(),
            comm: self.state.comm + self.comm.stats(),
            ..self.state.clone()
        }
    }

    async fn reinvoke(&mut self) -> anyhow::Result<Outcome> {
        let spec = &self.event.job;
        let w = self.event.worker;
        let key = records::key(&spec.job_id, records::CHECKPOINT, w);
        records::put(self.channel.as_ref(), &key, &self.snapshot())
            .await
            .context("writing the checkpoint")?;
        let next = WorkerEvent {
            invocation: self.event.invocation + 1,
            resume: true,
            ..self.event.clone()
        };
        let payload = serde_json::to_vec(&next).expect("events serialise");
        spec.platform
            .build()
            .invoke(&format!("worker-{w}"), &payload)
            .context("re-invoking the worker")?;
        tracing::info!(
            epoch = self.state.epoch,
            step = self.state.step,
            next_invocation = next.invocation,
            "checkpointed and re-invoked"
        );
        Ok(Outcome::Reinvoked)
    }

    async fn finish(&mut self) -> anyhow::Result<Outcome> {
        let spec = &self.event.job;
        let w = self.event.worker;
        let result = WorkerResult {
            worker: w,
            params: self.state.params.clone(),
            history: self.state.history.clone(),
            invocations: self.state.invocations,
            residual_keys: self.comm.residual_keys(),
            comm: self.state.comm + self.comm.stats(),
        };
        let key = records::key(&spec.job_id, records::RESULT, w);
        records::put(self.channel.as_ref(), &key, &result).await?;
        tracing::info!("worker finished");
        Ok(Outcome::Finished)
    }
}
