//! Convolutional networks (ResNet-20, ResNet-18, MobileNet v1) trained with burn's `flex`
//! CPU backend, behind the same [`Learner`] trait as every other model.
//!
//! The network lives in the flat vector of [`LearnerState::params`] ([`flat`]); each step
//! loads it into a burn module, runs forward and backward on one augmented minibatch, and
//! writes one vector to combine across workers: the gradient (plus weight decay) at the
//! trainable values and the batch-updated BatchNorm running statistics at the others.
//! Applying a (mean) vector takes an SGD step with momentum at the trainable values and sets
//! the statistics to the (mean) statistics. Every worker applies the same mean to the same
//! state with the same plain loop, so grad_avg keeps their models bit-identical, statistics
//! included. Momentum lives in [`LearnerState::aux`], so checkpoints carry it.

pub mod flat;
pub mod nets;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::learner::{
    EpochSync, Init, Learner, LearnerState, Metrics, ModelError, Segment, Step, StepSync, TrainSpec,
};
use super::{ModelKind, OptimKind, sgd};
use crate::data::images::{Augment, ImageFacts, fill_batch};
use crate::data::{Dataset, Features};
use nets::{MobileNet, Net, NetShape, ResNet};

/// Images evaluated per forward pass when measuring validation loss and accuracy.
const EVAL_BATCH: usize = 256;

/// The learner of the CNN `spec.model` on this worker's images `data`, measured on its
/// share of the test images `test` after every epoch when given.
pub fn learner(
    spec: &TrainSpec,
    data: Dataset,
    test: Option<Dataset>,
) -> Result<Box<dyn Learner>, ModelError> {
    let facts = spec.images.clone().ok_or_else(|| {
        ModelError::Invalid(format!(
            "--model {} trains on images: split a CIFAR-10 or IDX file with `lambdaml data split`",
            spec.model
        ))
    })?;
    if spec.optim == OptimKind::Admm {
        return Err(ModelError::Invalid(format!(
            "ADMM is for convex models; train --model {} with grad_avg or model_avg",
            spec.model
        )));
    }
    check_facts(&facts)?;
    let data = Images::of(data, &facts, "partition")?;
    let test = test
        .map(|t| Images::of(t, &facts, "test set"))
        .transpose()?;
    let shape = NetShape {
        channels: facts.shape.channels,
        classes: facts.classes,
        width: spec.width,
    };
    let device = Device::flex().autodiff();
    device.seed(spec.seed);
    let sets = (data, test);
    Ok(match spec.model {
        ModelKind::Resnet20 => Box::new(Cnn::new(
            ResNet::resnet20(shape, &device),
            device,
            sets,
            spec,
        )),
        ModelKind::Resnet18 => Box::new(Cnn::new(
            ResNet::resnet18(shape, &device),
            device,
            sets,
            spec,
        )),
        ModelKind::Mobilenet => {
            Box::new(Cnn::new(MobileNet::new(shape, &device), device, sets, spec))
        }
        other => unreachable!("{other} is not a CNN"),
    })
}

/// Checks what a manifest (a file anyone may have edited) says of the images before a
/// network is sized from it.
fn check_facts(facts: &ImageFacts) -> Result<(), ModelError> {
    let s = facts.shape;
    let fits = (1..=16).contains(&s.channels)
        && (1..=1024).contains(&s.height)
        && (1..=1024).contains(&s.width)
        && (2..=crate::data::images::MAX_CLASSES).contains(&facts.classes)
        && facts.mean.len() == s.channels
        && facts.std.len() == s.channels
        && facts.mean.iter().all(|m| m.is_finite())
        && facts.std.iter().all(|d| d.is_finite() && *d > 0.0);
    if fits {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "the manifest's images are not usable: {s} images (at most 16 channels, 1024 x \
             1024 pixels), {} classes (2 to {}), {} means and {} standard deviations (one \
             finite value per channel, deviations > 0)",
            facts.classes,
            crate::data::images::MAX_CLASSES,
            facts.mean.len(),
            facts.std.len()
        )))
    }
}

/// A worker's images: pixels (0-255 as `f32`, one image per row) and class labels.
struct Images {
    pixels: Vec<f32>,
    labels: Vec<i64>,
    facts: ImageFacts,
}

impl Images {
    /// The images of `data` (`what`: which set, for errors), checked against what the
    /// manifest says of them.
    fn of(data: Dataset, facts: &ImageFacts, what: &str) -> Result<Images, ModelError> {
        let Features::Dense(pixels) = data.features else {
            return Err(ModelError::Invalid(format!(
                "the {what}'s images load as dense pixels"
            )));
        };
        if pixels.n_features != facts.shape.pixels() {
            return Err(ModelError::Invalid(format!(
                "images of {} have {} pixels, the {what}'s rows {}",
                facts.shape,
                facts.shape.pixels(),
                pixels.n_features
            )));
        }
        if let Some(bad) = data.labels.iter().find(|&&l| l as usize >= facts.classes) {
            return Err(ModelError::Invalid(format!(
                "label {bad} in the {what}, but the manifest says {} classes (0 to {})",
                facts.classes,
                facts.classes - 1
            )));
        }
        Ok(Images {
            pixels: pixels.values,
            labels: data.labels.iter().map(|&l| l as i64).collect(),
            facts: facts.clone(),
        })
    }

    /// Images `rows`, normalised (and cropped and flipped at random from `augment`), as a
    /// `[batch, channels, height, width]` tensor on `device`.
    fn tensor(&self, rows: &[u32], augment: Option<&mut StdRng>, device: &Device) -> Tensor<4> {
        let s = self.facts.shape;
        let mut pixels = Vec::new();
        fill_batch(
            &self.pixels,
            &self.facts,
            rows,
            augment.map(|rng| (Augment::CIFAR, rng)),
            &mut pixels,
        );
        Tensor::from_data(
            TensorData::new(pixels, [rows.len(), s.channels, s.height, s.width]),
            device,
        )
    }
}

/// A network with its optimizer and its partition.
struct Cnn<N: Net> {
    /// The network's structure on the autodiff device; its values are replaced from the
    /// flat vector at every step.
    net: N,
    device: Device,
    layout: flat::Layout,
    trainable: Vec<bool>,
    data: Images,
    /// This worker's share of the test set.
    test: Option<Images>,
    optim: OptimKind,
    lr: f32,
    /// The rate of the current step: `lr` decayed along a cosine over the whole run.
    step_lr: f32,
    epochs: u32,
    momentum: f32,
    weight_decay: f32,
    seed: u64,
    worker: usize,
    steps: usize,
    train_rows: Vec<u32>,
    val_rows: Vec<u32>,
    order: Option<(u32, Vec<u32>)>,
    pool: rayon::ThreadPool,
}

impl<N: Net> Cnn<N> {
    fn new(
        net: N,
        device: Device,
        (data, test): (Images, Option<Images>),
        spec: &TrainSpec,
    ) -> Self {
        let layout = flat::Layout::of(&net);
        let (val_rows, train_rows) =
            sgd::train_val_split(data.labels.len(), spec.val_ratio, spec.seed, spec.worker);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(spec.threads.max(1))
            .thread_name(|i| format!("cnn-{i}"))
            .build()
            .expect("a thread pool starts");
        Cnn {
            trainable: layout.trainable_mask(),
            layout,
            net,
            device,
            data,
            test,
            optim: spec.optim,
            lr: spec.lr,
            step_lr: spec.lr,
            epochs: spec.epochs,
            momentum: spec.momentum,
            weight_decay: spec.lam,
            seed: spec.seed,
            worker: spec.worker,
            steps: spec.steps_per_epoch,
            train_rows,
            val_rows,
            order: None,
            pool,
        }
    }

    /// Steps `state` with `vector`: momentum SGD at trainable values, statistics replaced.
    fn apply(&self, state: &mut LearnerState, vector: &[f32]) {
        let (lr, mu) = (self.step_lr, self.momentum);
        let velocity = &mut state.aux;
        for (i, (w, &v)) in state.params.iter_mut().zip(vector).enumerate() {
            if self.trainable[i] {
                velocity[i] = mu * velocity[i] + v;
                *w -= lr * velocity[i];
            } else {
                *w = v;
            }
        }
    }

    /// The cosine-decayed rate of `step` of `epoch` (SGDR without restarts): large steps
    /// early, small ones at the end, so the weights and the BatchNorm statistics settle
    /// instead of ending wherever the last large step left them.
    fn decayed_lr(&self, epoch: u32, step: usize) -> f32 {
        let total = (self.epochs as usize * self.steps).max(1) as f64;
        let done = (epoch as usize * self.steps + step) as f64;
        (f64::from(self.lr) * 0.5 * (1.0 + (std::f64::consts::PI * done / total).cos())) as f32
    }

    /// Mean cross-entropy and accuracy of `net` (in evaluation mode) on images `rows` of
    /// `set`.
    fn measure(&self, net: &N, set: &Images, rows: &[u32]) -> (f64, f64) {
        let device = Device::flex();
        let (mut loss, mut correct) = (0f64, 0usize);
        for rows in rows.chunks(EVAL_BATCH) {
            let x = set.tensor(rows, None, &device);
            let logits = self.pool.install(|| net.forward(x)).into_data();
            let logits = logits.as_slice::<f32>().expect("f32 logits");
            let classes = logits.len() / rows.len();
            for (z, &r) in logits.chunks_exact(classes).zip(rows) {
                let label = set.labels[r as usize] as usize;
                let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let log_sum = z.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
                loss += f64::from(log_sum - z[label]);
                let best = z
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, v)| if *v > z[b] { i } else { b });
                correct += usize::from(best == label);
            }
        }
        let n = rows.len().max(1) as f64;
        (loss / n, correct as f64 / n)
    }

    /// A seed for the augmentation of one step, so a resumed invocation replays it.
    fn step_seed(&self, epoch: u32, step: usize) -> u64 {
        self.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((self.worker as u64) << 40)
            .wrapping_add(u64::from(epoch) << 20)
            .wrapping_add(step as u64)
    }
}

impl<N: Net> Learner for Cnn<N> {
    fn segments(&self) -> Vec<Segment> {
        self.layout.segments()
    }

    /// The flat layout's own hash, which also tells trainable values from statistics.
    fn layout_hash(&self) -> u64 {
        self.layout.hash()
    }

    /// Worker 0's freshly initialised network, broadcast so every worker starts from it.
    fn init(&self) -> Result<Init, ModelError> {
        let own = (self.worker == 0).then(|| flat::flatten(&self.net.valid()));
        Ok(Init::Broadcast {
            own,
            len: self.layout.len(),
        })
    }

    fn state_from_broadcast(&self, values: Vec<f32>) -> LearnerState {
        let aux = vec![0.0; values.len()];
        LearnerState {
            params: values,
            aux,
        }
    }

    fn steps_per_epoch(&self) -> usize {
        self.steps
    }

    fn step(
        &mut self,
        state: &mut LearnerState,
        epoch: u32,
        step: usize,
        grad: &mut Vec<f32>,
    ) -> Step {
        self.step_lr = self.decayed_lr(epoch, step);
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let o = sgd::epoch_order(&self.train_rows, self.seed, self.worker, epoch);
            self.order = Some((epoch, o));
        }
        let order = &self.order.as_ref().expect("order set above").1;
        let rows = &order[sgd::batch_bounds(order.len(), self.steps, step)];
        let loss = if rows.is_empty() {
            // Nothing to learn from: no gradient, statistics as they are.
            grad.clear();
            grad.extend(
                state
                    .params
                    .iter()
                    .zip(&self.trainable)
                    .map(|(&w, &t)| if t { 0.0 } else { w }),
            );
            0.0
        } else {
            let mut rng = StdRng::seed_from_u64(self.step_seed(epoch, step));
            let x = self.data.tensor(rows, Some(&mut rng), &self.device);
            let labels = rows.iter().map(|&r| self.data.labels[r as usize]).collect();
            let y =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [rows.len()]), &self.device);
            let net = flat::load(self.net.clone(), &state.params);
            let loss = self.pool.install(|| {
                let logits = net.forward(x);
                let loss = CrossEntropyLossConfig::new()
                    .init(&self.device)
                    .forward(logits, y);
                let value = loss.clone().into_scalar::<f32>();
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                flat::flatten_grads(&net, &grads, grad);
                value
            });
            // The batch-updated statistics take their places; weight decay joins the gradient.
            flat::copy_statistics(&net.valid(), &self.layout, grad);
            for ((g, &w), &t) in grad.iter_mut().zip(&state.params).zip(&self.trainable) {
                if t {
                    *g += self.weight_decay * w;
                }
            }
            loss
        };
        let sync = match self.optim {
            OptimKind::GradAvg => StepSync::MeanGradient,
            OptimKind::ModelAvg | OptimKind::Admm => {
                self.apply(state, grad);
                StepSync::Local
            }
        };
        Step { loss, sync }
    }

    fn apply_mean_gradient(&self, state: &mut LearnerState, mean: &mut [f32]) {
        self.apply(state, mean);
    }

    fn syncs_each_epoch(&self) -> bool {
        self.optim == OptimKind::ModelAvg
    }

    fn epoch_vector(&self, state: &LearnerState) -> Vec<f32> {
        state.params.clone()
    }

    fn apply_epoch_mean(&self, state: &mut LearnerState, mean: &[f32]) -> EpochSync {
        state.params = mean.to_vec();
        EpochSync::default()
    }

    fn evaluate(&self, state: &LearnerState) -> Metrics {
        if self.val_rows.is_empty() && self.test.is_none() {
            return Metrics::default();
        }
        let net = flat::load(self.net.clone(), &state.params).valid();
        let mut metrics = Metrics::default();
        if !self.val_rows.is_empty() {
            let (loss, accuracy) = self.measure(&net, &self.data, &self.val_rows);
            metrics.val_loss = Some(loss);
            metrics.val_accuracy = Some(accuracy);
        }
        if let Some(test) = self.test.as_ref().filter(|t| !t.labels.is_empty()) {
            let rows: Vec<u32> = (0..test.labels.len() as u32).collect();
            let (loss, accuracy) = self.measure(&net, test, &rows);
            metrics.test_loss = Some(loss);
            metrics.test_accuracy = Some(accuracy);
        }
        metrics
    }

    fn converged(&self, _previous: Option<&Metrics>, _current: &Metrics) -> bool {
        false
    }

    fn result(&self, state: &LearnerState) -> Vec<f32> {
        state.params.clone()
    }

    fn rows(&self) -> (usize, usize) {
        (self.train_rows.len(), self.val_rows.len())
    }

    fn test_rows(&self) -> usize {
        self.test.as_ref().map_or(0, |t| t.labels.len())
    }

    fn divergence_hint(&self) -> String {
        format!(
            "try a smaller learning rate (--lr {}) or momentum (--momentum {})",
            self.lr, self.momentum
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::StepRule;
    use crate::algo::admm::Reg;
    use crate::data::images::synth_cifar;

    fn spec(worker: usize) -> TrainSpec {
        let set = synth_cifar(64, 1);
        TrainSpec {
            model: ModelKind::Resnet20,
            optim: OptimKind::GradAvg,
            n_features: 3072,
            labels: None,
            lr: 0.05,
            step: StepRule::Sgd,
            lam: 5e-4,
            reg: Reg::L2,
            rho: 1.0,
            local_epochs: 1,
            tol: 0.0,
            k: 0,
            init_centroids: None,
            seed: 7,
            val_ratio: 0.25,
            worker,
            workers: 2,
            steps_per_epoch: 3,
            total_rows: 128,
            threads: 1,
            images: Some(set.facts()),
            momentum: 0.9,
            width: 0.125,
            epochs: 2,
        }
    }

    fn learner_on(worker: usize, seed: u64) -> Box<dyn Learner> {
        let set = synth_cifar(64, seed);
        let data = crate::data::images::decode_part(
            &set.records(0..set.len()),
            std::path::Path::new("p"),
            3072,
        )
        .unwrap();
        learner(&spec(worker), data, None).unwrap()
    }

    /// What a manifest says is checked before a network is sized from it, and labels past
    /// its classes are refused instead of indexing past the logits.
    #[test]
    fn manifest_facts_and_labels_are_checked() {
        let set = synth_cifar(16, 1);
        let data = || {
            crate::data::images::decode_part(
                &set.records(0..set.len()),
                std::path::Path::new("p"),
                3072,
            )
            .unwrap()
        };
        let mut s = spec(0);
        s.images.as_mut().unwrap().classes = 1_000_000_000;
        let err = learner(&s, data(), None).err().unwrap().to_string();
        assert!(err.contains("1000000000 classes"), "{err}");
        let mut s = spec(0);
        s.images.as_mut().unwrap().classes = 3;
        let err = learner(&s, data(), None).err().unwrap().to_string();
        assert!(err.contains("but the manifest says 3 classes"), "{err}");
        assert!(learner(&spec(0), data(), None).is_ok());
    }

    /// A step's vector holds gradients at trainable values and the batch-updated running
    /// statistics at the others; two workers on different images that apply the same mean
    /// end in the same state, statistics included.
    #[test]
    fn statistics_ride_with_the_gradient_and_the_mean_makes_workers_equal() {
        let mut a = learner_on(0, 1);
        let mut b = learner_on(1, 2);
        let Init::Broadcast {
            own: Some(init), ..
        } = a.init().unwrap()
        else {
            panic!("worker 0 proposes the initial network")
        };
        let mut sa = a.state_from_broadcast(init.clone());
        let mut sb = b.state_from_broadcast(init.clone());
        let (mut ga, mut gb) = (Vec::new(), Vec::new());
        let step = a.step(&mut sa, 0, 0, &mut ga);
        assert!(step.loss.is_finite() && step.loss > 0.0);
        assert_eq!(step.sync, StepSync::MeanGradient);
        b.step(&mut sb, 0, 0, &mut gb);
        let mask = flat::Layout::of(&ResNet::resnet20(
            NetShape {
                channels: 3,
                classes: 10,
                width: 0.125,
            },
            &Device::flex().autodiff(),
        ))
        .trainable_mask();
        let moved = |g: &[f32]| {
            mask.iter()
                .zip(g.iter().zip(&init))
                .filter(|(t, (v, w))| !**t && v != w)
                .count()
        };
        assert!(moved(&ga) > 0, "running statistics did not move");
        assert_ne!(ga, gb, "different images, same vector");
        let mut mean: Vec<f32> = ga.iter().zip(&gb).map(|(x, y)| (x + y) / 2.0).collect();
        a.apply_mean_gradient(&mut sa, &mut mean.clone());
        b.apply_mean_gradient(&mut sb, &mut mean);
        assert_eq!(sa, sb);
        for (i, t) in mask.iter().enumerate() {
            if !t {
                assert_eq!(sa.params[i], (ga[i] + gb[i]) / 2.0);
            }
        }
    }
}
