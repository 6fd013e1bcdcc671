//! The optimizers (gradient averaging, model averaging, consensus ADMM) for any model that
//! can give a minibatch gradient: the optimizer x sync-mode matrix written once.
//!
//! | optimizer | a local step | end of epoch |
//! |---|---|---|
//! | `grad_avg` | gradient, then a synchronous step through the collective | nothing |
//! | `model_avg` | gradient and a local SGD step | the models averaged |
//! | `admm` | gradient of the loss plus the proximal term, a local SGD step, `local_epochs` passes | `mean(w_i + u_i)`, then the z- and u-updates ([`super::admm`]) |
//!
//! With the AdaGrad step rule, grad_avg averages the raw gradients and every worker
//! preconditions the mean by the running sum of squared means (the same on every worker, so
//! their models stay identical, and a feature seen by one worker is stepped as far as on one
//! worker); model_avg and ADMM precondition each worker's own gradient before its local
//! step. The sums live in `aux` after the optimizer's own state, so checkpoints carry them.

use super::admm;
use super::learner::{
    EpochSync, Init, Learner, LearnerState, Metrics, ModelError, Segment, Step, StepSync,
};
use super::sgd;
use super::{OptimKind, StepRule, learner::TrainSpec};

/// A model trained by minibatch gradients on its own partition.
pub trait Differentiable: Send {
    /// The segments of the parameter vector.
    fn segments(&self) -> Vec<Segment>;
    /// Starting parameters (the same on every worker).
    fn initial_params(&self) -> Vec<f32>;
    /// Rows of the partition.
    fn n_rows(&self) -> usize;
    /// Writes the gradient of the objective on `rows` into `grad` and returns the batch's
    /// mean loss before the step.
    fn gradient(&self, params: &[f32], rows: &[u32], grad: &mut [f32]) -> f32;
    /// Loss and accuracy on `rows`.
    fn evaluate(&self, params: &[f32], rows: &[u32]) -> Metrics;
    /// Loss and accuracy on the test set (`--test-data`), in the `test_` fields; nothing
    /// without one.
    fn evaluate_test(&self, _params: &[f32]) -> Metrics {
        Metrics::default()
    }
    /// Rows of the test set (0 without one).
    fn test_rows(&self) -> usize {
        0
    }
}

/// A [`Differentiable`] model with its optimizer: a [`Learner`].
pub struct Optimized<M> {
    model: M,
    optim: OptimKind,
    rule: StepRule,
    lr: f32,
    lam: f32,
    reg: admm::Reg,
    rho: f32,
    tol: f64,
    seed: u64,
    worker: usize,
    workers: usize,
    steps: usize,
    passes: usize,
    train_rows: Vec<u32>,
    val_rows: Vec<u32>,
    /// The shuffled order of the current pass (recomputed from the seed when it changes).
    order: Option<(usize, Vec<u32>)>,
}

impl<M: Differentiable> Optimized<M> {
    /// `model` trained with the optimizer and hyper-parameters of `spec`. With ADMM the
    /// regulariser belongs to the z-update: `model` should then leave it out.
    pub fn new(model: M, spec: &TrainSpec) -> Self {
        let (val_rows, train_rows) =
            sgd::train_val_split(model.n_rows(), spec.val_ratio, spec.seed, spec.worker);
        let passes = if spec.optim == OptimKind::Admm {
            spec.local_epochs as usize
        } else {
            1
        };
        Optimized {
            model,
            optim: spec.optim,
            rule: spec.step,
            lr: spec.lr,
            lam: spec.lam,
            reg: spec.reg,
            rho: spec.rho,
            tol: spec.tol,
            seed: spec.seed,
            worker: spec.worker,
            workers: spec.workers,
            steps: spec.steps_per_epoch,
            passes,
            train_rows,
            val_rows,
            order: None,
        }
    }
}

/// ADMM's state in `aux`: `[z (p), u (p), ||w_i - z|| of the last round (1)]` (then, with
/// AdaGrad, its sums).
struct AdmmState<'s> {
    z: &'s mut [f32],
    u: &'s mut [f32],
    last_primal: &'s mut f32,
}

fn split_admm(aux: &mut [f32], p: usize) -> AdmmState<'_> {
    let (z, rest) = aux.split_at_mut(p);
    let (u, last) = rest.split_at_mut(p);
    AdmmState {
        z,
        u,
        last_primal: &mut last[0],
    }
}

impl<M: Differentiable> Optimized<M> {
    /// With AdaGrad, divides `grad` coordinate-wise by the root of its running sum of
    /// squares (kept at the end of `aux`, so checkpoints carry it).
    fn precondition(&self, state: &mut LearnerState, grad: &mut [f32]) {
        if self.rule == StepRule::Adagrad {
            let sums = state.aux.len() - state.params.len();
            sgd::adagrad(grad, &mut state.aux[sums..]);
        }
    }

    /// model_avg and ADMM: a step of this worker's own (preconditioned) gradient.
    fn local_step(&self, state: &mut LearnerState, grad: &mut [f32]) -> StepSync {
        self.precondition(state, grad);
        sgd::step(&mut state.params, grad, self.lr);
        StepSync::Local
    }
}

impl<M: Differentiable> Learner for Optimized<M> {
    fn segments(&self) -> Vec<Segment> {
        self.model.segments()
    }

    fn init(&self) -> Result<Init, ModelError> {
        let params = self.model.initial_params();
        let mut aux = match self.optim {
            OptimKind::Admm => vec![0.0; 2 * params.len() + 1],
            OptimKind::GradAvg | OptimKind::ModelAvg => Vec::new(),
        };
        if self.rule == StepRule::Adagrad {
            aux.resize(aux.len() + params.len(), 0.0);
        }
        Ok(Init::Ready(LearnerState { params, aux }))
    }

    fn steps_per_epoch(&self) -> usize {
        self.steps * self.passes
    }

    fn step(
        &mut self,
        state: &mut LearnerState,
        epoch: u32,
        step: usize,
        grad: &mut Vec<f32>,
    ) -> Step {
        let p = state.params.len();
        grad.resize(p, 0.0);
        let pass = epoch as usize * self.passes + step / self.steps;
        if self.order.as_ref().is_none_or(|(p, _)| *p != pass) {
            let o = sgd::epoch_order(&self.train_rows, self.seed, self.worker, pass as u32);
            self.order = Some((pass, o));
        }
        let order = &self.order.as_ref().expect("order set above").1;
        let rows = &order[sgd::batch_bounds(order.len(), self.steps, step % self.steps)];
        let loss = self.model.gradient(&state.params, rows, grad);
        if self.optim == OptimKind::Admm {
            let a = split_admm(&mut state.aux, p);
            admm::add_proximal_gradient(grad, &state.params, a.z, a.u, self.rho);
        }
        let sync = match (self.optim, self.rule) {
            (OptimKind::GradAvg, StepRule::Sgd) => StepSync::Gradient { lr: self.lr },
            (OptimKind::GradAvg, StepRule::Adagrad) => StepSync::MeanGradient,
            (OptimKind::ModelAvg | OptimKind::Admm, _) => self.local_step(state, grad),
        };
        Step { loss, sync }
    }

    fn apply_mean_gradient(&self, state: &mut LearnerState, mean: &mut [f32]) {
        self.precondition(state, mean);
        sgd::step(&mut state.params, mean, self.lr);
    }

    fn syncs_each_epoch(&self) -> bool {
        self.optim != OptimKind::GradAvg
    }

    fn epoch_vector(&self, state: &LearnerState) -> Vec<f32> {
        match self.optim {
            OptimKind::GradAvg | OptimKind::ModelAvg => state.params.clone(),
            // Averaged: w_i + u_i, and (riding along, one round late) ||w_i - z||.
            OptimKind::Admm => {
                let p = state.params.len();
                let u = &state.aux[p..2 * p];
                let mut v: Vec<f32> = state.params.iter().zip(u).map(|(w, u)| w + u).collect();
                v.push(state.aux[2 * p]);
                v
            }
        }
    }

    fn apply_epoch_mean(&self, state: &mut LearnerState, mean: &[f32]) -> EpochSync {
        match self.optim {
            OptimKind::GradAvg | OptimKind::ModelAvg => {
                state.params = mean.to_vec();
                EpochSync::default()
            }
            OptimKind::Admm => {
                let p = state.params.len();
                let a = split_admm(&mut state.aux, p);
                let z_prev = a.z.to_vec();
                admm::z_update(&mean[..p], self.reg, self.lam, self.rho, self.workers, a.z);
                admm::u_update(a.u, &state.params, a.z);
                *a.last_primal = admm::distance(&state.params, a.z) as f32;
                EpochSync {
                    current: Metrics {
                        dual_residual: Some(self.rho as f64 * admm::distance(a.z, &z_prev)),
                        ..Metrics::default()
                    },
                    // The previous round's primal residual arrived with this round.
                    previous: Metrics {
                        primal_residual: Some(mean[p] as f64),
                        ..Metrics::default()
                    },
                }
            }
        }
    }

    fn evaluate(&self, state: &LearnerState) -> Metrics {
        let params = match self.optim {
            OptimKind::Admm => &state.aux[..state.params.len()],
            OptimKind::GradAvg | OptimKind::ModelAvg => &state.params[..],
        };
        self.model
            .evaluate(params, &self.val_rows)
            .or(self.model.evaluate_test(params))
    }

    /// ADMM stops when both residuals of the last complete round are below the tolerance.
    fn converged(&self, previous: Option<&Metrics>, _current: &Metrics) -> bool {
        self.optim == OptimKind::Admm
            && self.tol > 0.0
            && previous.is_some_and(|prev| {
                prev.primal_residual.is_some_and(|r| r < self.tol)
                    && prev.dual_residual.is_some_and(|r| r < self.tol)
            })
    }

    /// ADMM's last primal residual needs one more (one-value) round.
    fn closing_vector(&self, state: &LearnerState) -> Option<Vec<f32>> {
        (self.optim == OptimKind::Admm).then(|| vec![state.aux[2 * state.params.len()]])
    }

    fn apply_closing_mean(&self, mean: &[f32]) -> Metrics {
        Metrics {
            primal_residual: Some(mean[0] as f64),
            ..Metrics::default()
        }
    }

    fn result(&self, state: &LearnerState) -> Vec<f32> {
        match self.optim {
            OptimKind::Admm => state.aux[..state.params.len()].to_vec(),
            OptimKind::GradAvg | OptimKind::ModelAvg => state.params.clone(),
        }
    }

    fn rows(&self) -> (usize, usize) {
        (self.train_rows.len(), self.val_rows.len())
    }

    fn test_rows(&self) -> usize {
        self.model.test_rows()
    }

    fn divergence_hint(&self) -> String {
        let rho = match self.optim {
            OptimKind::Admm => format!(" and rho (--rho {}): keep lr x rho well below 1", self.rho),
            OptimKind::GradAvg | OptimKind::ModelAvg => String::new(),
        };
        format!(
            "try a smaller learning rate (--lr {}){rho}, or scale the features",
            self.lr
        )
    }
}
