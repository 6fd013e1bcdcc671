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
    /// Reorders the partition's rows (features and targets alike) so that row `i` becomes
    /// what row `order[i]` was. [`Optimized`] calls it once, before training, to lay the
    /// training rows out in a shuffled sequence and the validation rows after them.
    fn arrange_rows(&mut self, order: &[u32]);
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
    /// Training rows: `0..n_train` of the arranged partition.
    n_train: usize,
    /// Validation rows: the rest.
    val_rows: Vec<u32>,
    /// The shuffled order of the current pass (recomputed from the seed when it changes).
    order: Option<(usize, Vec<u32>)>,
}

impl<M: Differentiable> Optimized<M> {
    /// `model` trained with the optimizer and hyper-parameters of `spec`. With ADMM the
    /// regulariser belongs to the z-update: `model` should then leave it out.
    ///
    /// The partition's rows are rearranged once: the training rows first, in the seeded
    /// shuffle of the split, then the validation rows. An epoch then visits blocks of
    /// consecutive training rows ([`sgd::block_order`]), which are random groups, and reads
    /// memory in sequence; validation reads one stretch.
    pub fn new(mut model: M, spec: &TrainSpec) -> Self {
        let n = model.n_rows();
        let (val, train) = sgd::train_val_split(n, spec.val_ratio, spec.seed, spec.worker);
        let n_train = train.len();
        let mut layout = train;
        layout.extend(val);
        model.arrange_rows(&layout);
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
            n_train,
            val_rows: (n_train as u32..n as u32).collect(),
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
            let o = sgd::block_order(self.n_train, self.seed, self.worker, pass as u32);
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
        (self.n_train, self.val_rows.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::ModelKind;
    use crate::algo::admm::Reg;
    use std::sync::Mutex;

    /// A model whose rows are their original numbers: it records which rows each gradient
    /// and evaluation saw, as numbered before [`Differentiable::arrange_rows`].
    struct Recording {
        ids: Vec<u32>,
        trained: Mutex<Vec<u32>>,
        evaluated: Mutex<Vec<u32>>,
    }

    impl Differentiable for Recording {
        fn segments(&self) -> Vec<Segment> {
            vec![Segment::new("w", 1)]
        }
        fn initial_params(&self) -> Vec<f32> {
            vec![0.0]
        }
        fn n_rows(&self) -> usize {
            self.ids.len()
        }
        fn arrange_rows(&mut self, order: &[u32]) {
            self.ids = order.iter().map(|&r| self.ids[r as usize]).collect();
        }
        fn gradient(&self, _: &[f32], rows: &[u32], grad: &mut [f32]) -> f32 {
            let ids = rows.iter().map(|&r| self.ids[r as usize]);
            self.trained.lock().unwrap().extend(ids);
            grad.fill(0.0);
            0.0
        }
        fn evaluate(&self, _: &[f32], rows: &[u32]) -> Metrics {
            let ids = rows.iter().map(|&r| self.ids[r as usize]);
            self.evaluated.lock().unwrap().extend(ids);
            Metrics::default()
        }
    }

    fn spec(n: usize) -> TrainSpec {
        TrainSpec {
            model: ModelKind::Lr,
            optim: OptimKind::ModelAvg,
            n_features: 1,
            labels: None,
            lr: 0.1,
            step: StepRule::Sgd,
            lam: 0.0,
            reg: Reg::L2,
            rho: 1.0,
            local_epochs: 1,
            tol: 0.0,
            k: 0,
            init_centroids: None,
            seed: 3,
            val_ratio: 0.2,
            worker: 1,
            workers: 2,
            steps_per_epoch: 7,
            total_rows: n,
            threads: 1,
            images: None,
            momentum: 0.0,
            width: 1.0,
            epochs: 2,
        }
    }

    /// Laying the rows out for block order changes where rows are, not which rows train and
    /// which validate: an epoch trains on every row of the seeded split's training set once,
    /// and validation sees exactly its held-out rows.
    #[test]
    fn an_epoch_trains_on_the_split_s_training_rows_once_and_validates_the_rest() {
        let n = 1000;
        let spec = spec(n);
        let model = Recording {
            ids: (0..n as u32).collect(),
            trained: Mutex::default(),
            evaluated: Mutex::default(),
        };
        let (mut val, mut train) = sgd::train_val_split(n, spec.val_ratio, spec.seed, spec.worker);
        let mut learner = Optimized::new(model, &spec);
        let Ok(Init::Ready(mut state)) = learner.init() else {
            panic!("a model without setup is ready at once");
        };
        let mut grad = Vec::new();
        for epoch in 0..2 {
            learner.model.trained.lock().unwrap().clear();
            for step in 0..learner.steps_per_epoch() {
                learner.step(&mut state, epoch, step, &mut grad);
            }
            let mut seen = learner.model.trained.lock().unwrap().clone();
            assert_ne!(seen, train, "rows are visited in a shuffled order");
            seen.sort();
            train.sort();
            assert_eq!(seen, train, "epoch {epoch}");
        }
        learner.evaluate(&state);
        let mut evaluated = learner.model.evaluated.lock().unwrap().clone();
        evaluated.sort();
        val.sort();
        assert_eq!(evaluated, val);
    }
}
