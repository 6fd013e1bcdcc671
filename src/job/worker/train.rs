//! The training loop of every model: local steps, the epoch's synchronisation, evaluation,
//! records, and a checkpoint with re-invocation whenever the deadline comes near. What a
//! model does is its [`Learner`]'s business; how workers combine is the collective's.

use std::time::Instant;

use super::{Outcome, Session};
use crate::algo::learner::{EpochSync, Init, Learner, Metrics, StepSync};

pub(super) async fn train(
    s: &mut Session<'_>,
    learner: &mut dyn Learner,
) -> anyhow::Result<Outcome> {
    let key = s.checkpoint_key();
    s.state.adopt_layout(learner.layout_hash(), &key)?;
    if s.state.model.params.is_empty() {
        s.state.model = match learner.init()? {
            Init::Ready(state) => state,
            Init::Broadcast { own, len } => match s.broadcast(own.as_deref(), len).await? {
                Some(values) => learner.state_from_broadcast(values),
                None => return s.reinvoke().await,
            },
        };
    }
    let p: usize = learner.segments().iter().map(|seg| seg.len).sum();
    anyhow::ensure!(
        s.state.model.params.len() == p,
        "checkpoint holds {} parameters, the model has {p}",
        s.state.model.params.len()
    );
    let steps = learner.steps_per_epoch();
    let epochs = s.event.job.config.epochs;
    // Validated at the edge: only model_avg averages within an epoch.
    let sync_every = s
        .event
        .job
        .config
        .sync_every
        .filter(|_| learner.syncs_each_epoch());
    let mut grad = Vec::new();

    while !s.state.training_done {
        while s.state.step < steps {
            if s.should_yield() {
                return s.reinvoke().await;
            }
            s.checkpoint_if_due().await?;
            if sync_every.is_some_and(|k| s.state.step > 0 && s.state.step.is_multiple_of(k)) {
                // model_avg's average within the epoch, before the step that follows it, so
                // that a re-invocation in its round redoes it from the same state.
                if average(s, learner).await?.is_none() {
                    return s.reinvoke().await;
                }
            }
            let started = Instant::now();
            let step = learner.step(&mut s.state.model, s.state.epoch, s.state.step, &mut grad);
            let compute = started.elapsed().as_secs_f64();
            if !step.loss.is_finite() {
                return Err(diverged(
                    s,
                    learner,
                    format!("the loss of step {} is {}", s.state.step + 1, step.loss),
                ));
            }
            match step.sync {
                StepSync::Local => {}
                StepSync::Gradient { lr } => {
                    if s.grad_step(&grad, lr).await?.is_none() {
                        return s.reinvoke().await;
                    }
                }
                StepSync::MeanGradient => {
                    let Some(mut mean) = s.mean(&grad).await? else {
                        return s.reinvoke().await;
                    };
                    learner.apply_mean_gradient(&mut s.state.model, &mut mean);
                }
            }
            let acc = &mut s.state.acc;
            acc.compute_s += compute;
            acc.loss_sum += step.loss as f64;
            acc.batches += 1;
            acc.wall_s += started.elapsed().as_secs_f64();
            s.state.step += 1;
        }

        let mut sync = EpochSync::default();
        if learner.syncs_each_epoch() {
            if s.should_yield() {
                return s.reinvoke().await;
            }
            s.checkpoint_if_due().await?;
            let Some(averaged) = average(s, learner).await? else {
                return s.reinvoke().await;
            };
            sync = averaged;
        }
        let started = Instant::now();
        let metrics = learner.evaluate(&s.state.model).or(sync.current);
        let took = started.elapsed().as_secs_f64();
        s.state.acc.compute_s += took;
        s.state.acc.wall_s += took;

        if let Some(bad) = not_finite(&metrics, &s.state.model.params) {
            return Err(diverged(s, learner, bad));
        }
        if let Some(prev) = s.state.history.last_mut() {
            prev.set_metrics(sync.previous);
        }
        let previous = s.state.history.last().map(|r| r.metrics());
        let converged = learner.converged(previous.as_ref(), &metrics);
        let (n_train, n_val) = learner.rows();
        let mean_batch_loss = s.state.acc.loss_sum / s.state.acc.batches.max(1) as f64;
        let mut record = s.epoch_record(
            metrics.train_loss.unwrap_or(mean_batch_loss),
            n_train,
            n_val,
        );
        record.set_metrics(metrics);
        record.n_test = learner.test_rows() as u64;
        s.finish_epoch(record).await?;
        if converged || s.state.epoch >= epochs {
            s.state.training_done = true;
        }
    }

    if let Some(vector) = learner.closing_vector(&s.state.model) {
        s.checkpoint_if_due().await?;
        let Some(mean) = s.mean(&vector).await? else {
            return s.reinvoke().await;
        };
        let closing = learner.apply_closing_mean(&mean);
        if let Some(last) = s.state.history.last_mut() {
            last.set_metrics(closing);
        }
    }
    let result = learner.result(&s.state.model);
    s.finish(result).await
}

/// Averages the learner's epoch vector (model_avg: the model) over the workers and applies
/// the mean; `None` when the deadline interrupted the round (the caller re-invokes, and the
/// round is re-run from the same state).
async fn average(s: &mut Session<'_>, learner: &dyn Learner) -> anyhow::Result<Option<EpochSync>> {
    let started = Instant::now();
    let vector = learner.epoch_vector(&s.state.model);
    s.state.acc.compute_s += started.elapsed().as_secs_f64();
    let Some(mean) = s.mean(&vector).await? else {
        return Ok(None);
    };
    let sync = learner.apply_epoch_mean(&mut s.state.model, &mean);
    s.state.acc.wall_s += started.elapsed().as_secs_f64();
    Ok(Some(sync))
}

/// What is not a finite number after an epoch, if anything: a diverged model must fail the
/// job, not be reported as trained.
fn not_finite(metrics: &Metrics, params: &[f32]) -> Option<String> {
    let named = [
        ("training loss", metrics.train_loss),
        ("validation loss", metrics.val_loss),
        ("objective", metrics.objective),
    ];
    if let Some((name, Some(v))) = named
        .iter()
        .find(|(_, v)| v.is_some_and(|v| !v.is_finite()))
    {
        return Some(format!("the {name} is {v}"));
    }
    let bad = params.iter().filter(|p| !p.is_finite()).count();
    (bad > 0).then(|| format!("{bad} of {} parameters are not finite", params.len()))
}

/// The error of a model that diverged in the current epoch, saying what to try.
fn diverged(s: &Session<'_>, learner: &dyn Learner, what: String) -> anyhow::Error {
    anyhow::anyhow!(
        "the model diverged in epoch {}: {what}; {}",
        s.state.epoch + 1,
        learner.divergence_hint()
    )
}
