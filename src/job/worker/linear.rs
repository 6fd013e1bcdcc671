//! Training loop of the linear models (LR, SVM; dense and sparse) with grad_avg, model_avg
//! and ADMM.

use std::time::Instant;

use anyhow::Context;

use super::{Outcome, Session};
use crate::algo::linear::Linear;
use crate::algo::{OptimKind, admm, sgd};
use crate::comm::SyncMode;

/// ADMM's optimizer state `[z (p), u (p), ||w_i - z|| of the last round (1)]`.
struct AdmmState<'s> {
    z: &'s mut [f32],
    u: &'s mut [f32],
    last_primal: &'s mut f32,
}

fn split_admm(opt: &mut [f32], p: usize) -> AdmmState<'_> {
    let (z, rest) = opt.split_at_mut(p);
    let (u, last) = rest.split_at_mut(p);
    AdmmState {
        z,
        u,
        last_primal: &mut last[0],
    }
}

pub(super) async fn train(s: &mut Session<'_>) -> anyhow::Result<Outcome> {
    let spec = &s.event.job;
    let cfg = spec.config.clone();
    let labels = spec.labels.context("a classifier needs two label values")?;
    let admm_on = cfg.optim == OptimKind::Admm;
    let model = Linear {
        loss: cfg.model.loss().context("not a linear model")?,
        n_features: spec.n_features,
        // With ADMM the regulariser belongs to the z-update, not to the local problems.
        lam: if admm_on { 0.0 } else { cfg.lam },
    };
    let p = model.n_params();
    let targets = model.targets(&s.data.labels, labels);
    let (val_rows, train_rows) =
        sgd::train_val_split(s.data.n_rows(), cfg.val_ratio, cfg.seed, s.event.worker);
    if s.state.params.is_empty() {
        s.state.params = vec![0.0; p];
        if admm_on {
            s.state.opt_state = vec![0.0; 2 * p + 1];
        }
    }
    anyhow::ensure!(
        s.state.params.len() == p,
        "checkpoint holds {} parameters, the model has {p}",
        s.state.params.len()
    );
    let steps = spec.steps_per_epoch;
    let passes = if admm_on {
        cfg.local_epochs as usize
    } else {
        1
    };
    let mut grad = vec![0f32; p];
    let mut order: Option<(usize, Vec<u32>)> = None;

    while !s.state.training_done {
        while s.state.step < steps * passes {
            if s.should_yield() {
                return s.reinvoke().await;
            }
            let started = Instant::now();
            let pass = s.state.epoch as usize * passes + s.state.step / steps;
            if order.as_ref().is_none_or(|(p, _)| *p != pass) {
                let o = sgd::epoch_order(&train_rows, cfg.seed, s.event.worker, pass as u32);
                order = Some((pass, o));
            }
            let rows = {
                let o = &order.as_ref().expect("order set above").1;
                &o[sgd::batch_bounds(o.len(), steps, s.state.step % steps)]
            };
            let loss = model.gradient(&s.state.params, &s.data.features, &targets, rows, &mut grad);
            if admm_on {
                let a = split_admm(&mut s.state.opt_state, p);
                admm::add_proximal_gradient(&mut grad, &s.state.params, a.z, a.u, cfg.rho);
            }
            let compute = started.elapsed().as_secs_f64();
            match (cfg.optim, cfg.sync) {
                (OptimKind::GradAvg, SyncMode::Async) => {
                    let mut next = s.state.params.clone();
                    sgd::step(&mut next, &grad, cfg.lr);
                    match s.collective(&next).await? {
                        Some(mean) => s.state.params = mean,
                        None => return s.reinvoke().await,
                    }
                }
                (OptimKind::GradAvg, SyncMode::Ps) => match s.ps_grad_step(&grad, cfg.lr).await? {
                    Some(model) => s.state.params = model,
                    None => return s.reinvoke().await,
                },
                (OptimKind::GradAvg, _) => match s.collective(&grad).await? {
                    Some(mean) => sgd::step(&mut s.state.params, &mean, cfg.lr),
                    None => return s.reinvoke().await,
                },
                (OptimKind::ModelAvg | OptimKind::Admm, _) => {
                    sgd::step(&mut s.state.params, &grad, cfg.lr)
                }
            }
            let acc = &mut s.state.acc;
            acc.compute_s += compute;
            acc.loss_sum += loss as f64;
            acc.batches += 1;
            acc.wall_s += started.elapsed().as_secs_f64();
            s.state.step += 1;
        }

        let started = Instant::now();
        let mut residuals = None;
        match cfg.optim {
            OptimKind::GradAvg => {}
            OptimKind::ModelAvg => {
                if s.should_yield() {
                    return s.reinvoke().await;
                }
                let params = s.state.params.clone();
                match s.collective(&params).await? {
                    Some(mean) => s.state.params = mean,
                    None => return s.reinvoke().await,
                }
            }
            OptimKind::Admm => {
                if s.should_yield() {
                    return s.reinvoke().await;
                }
                // Averaged: w_i + u_i, and (riding along, one round late) ||w_i - z||.
                let mut v: Vec<f32> = {
                    let a = split_admm(&mut s.state.opt_state, p);
                    s.state
                        .params
                        .iter()
                        .zip(a.u.iter())
                        .map(|(w, u)| w + u)
                        .collect()
                };
                v.push(s.state.opt_state[2 * p]);
                let Some(mean) = s.collective(&v).await? else {
                    return s.reinvoke().await;
                };
                let n = cfg.workers;
                let a = split_admm(&mut s.state.opt_state, p);
                let z_prev = a.z.to_vec();
                admm::z_update(&mean[..p], cfg.reg, cfg.lam, cfg.rho, n, a.z);
                admm::u_update(a.u, &s.state.params, a.z);
                *a.last_primal = admm::distance(&s.state.params, a.z) as f32;
                let dual = cfg.rho as f64 * admm::distance(a.z, &z_prev);
                // The previous round's primal residual arrived with this round.
                if let Some(prev) = s.state.history.last_mut() {
                    prev.primal_residual = Some(mean[p] as f64);
                }
                residuals = Some(dual);
            }
        }
        s.state.acc.wall_s += started.elapsed().as_secs_f64();

        let eval_params = if admm_on {
            &s.state.opt_state[..p]
        } else {
            &s.state.params[..]
        };
        let eval = model.evaluate(eval_params, &s.data.features, &targets, &val_rows);
        let batches = s.state.acc.batches.max(1) as f64;
        let train_loss = s.state.acc.loss_sum / batches;
        let mut record = s.epoch_record(train_loss, train_rows.len(), val_rows.len());
        record.val_loss = Some(eval.loss());
        record.val_accuracy = Some(eval.accuracy());
        record.dual_residual = residuals;
        // Stop when both residuals of the last complete round are below the tolerance.
        let converged = admm_on
            && cfg.tol > 0.0
            && s.state.history.last().is_some_and(|prev| {
                prev.primal_residual.is_some_and(|r| r < cfg.tol)
                    && prev.dual_residual.is_some_and(|r| r < cfg.tol)
            });
        s.finish_epoch(record).await?;
        if converged || s.state.epoch >= cfg.epochs {
            s.state.training_done = true;
        }
    }

    if !admm_on {
        let params = s.state.params.clone();
        return s.finish(params).await;
    }
    // The last round's primal residual needs one more (one-value) collective.
    if s.state
        .history
        .last()
        .is_some_and(|r| r.primal_residual.is_none())
    {
        let local = s.state.opt_state[2 * p];
        let Some(mean) = s.collective(&[local]).await? else {
            return s.reinvoke().await;
        };
        if let Some(last) = s.state.history.last_mut() {
            last.primal_residual = Some(mean[0] as f64);
        }
    }
    let z = s.state.opt_state[..p].to_vec();
    s.finish(z).await
}
