//! `lambdaml bench cnn`: the time of one training step of a CNN on this machine (forward,
//! backward and the momentum update, as a worker runs it: loading the network from its flat
//! vector and flattening the gradient included), at a batch size and thread count.

use std::time::Instant;

use serde::Serialize;

use crate::algo::learner::{Init, TrainSpec};
use crate::algo::{ModelKind, OptimKind, StepRule, admm::Reg};
use crate::data::images::{ImageShape, synth_cifar};

/// What `lambdaml bench cnn` measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepTimes {
    /// The network.
    pub model: ModelKind,
    /// Its width multiplier.
    pub width: f32,
    /// Images per step.
    pub batch: usize,
    /// Compute threads.
    pub threads: usize,
    /// Values in the network's vector (weights and BatchNorm statistics).
    pub params: usize,
    /// Measured steps (after one warm-up step).
    pub steps: usize,
    /// Median wall seconds per step.
    pub step_s_median: f64,
    /// Fastest step.
    pub step_s_min: f64,
}

/// Times `steps` training steps of `model` at `batch` images of 3x32x32 on `threads` threads.
pub fn measure(
    model: ModelKind,
    width: f32,
    batch: usize,
    threads: usize,
    steps: usize,
) -> anyhow::Result<StepTimes> {
    anyhow::ensure!(model.is_cnn(), "--model {model} is not a CNN");
    anyhow::ensure!((1..=4096).contains(&batch), "--batch must be 1 to 4096");
    anyhow::ensure!((1..=1000).contains(&steps), "--steps must be 1 to 1000");
    anyhow::ensure!((1..=64).contains(&threads), "--threads must be 1 to 64");
    let set = synth_cifar(batch, 1);
    let data = crate::data::images::decode_part(
        &set.records(0..set.len()),
        std::path::Path::new("synthetic"),
        ImageShape::CIFAR.pixels(),
    )?;
    let spec = TrainSpec {
        model,
        optim: OptimKind::ModelAvg,
        n_features: ImageShape::CIFAR.pixels(),
        labels: None,
        lr: 0.01,
        step: StepRule::Sgd,
        lam: 5e-4,
        reg: Reg::L2,
        rho: 1.0,
        local_epochs: 1,
        tol: 0.0,
        k: 0,
        init_centroids: None,
        seed: 1,
        val_ratio: 0.0,
        worker: 0,
        workers: 1,
        steps_per_epoch: 1,
        total_rows: batch,
        threads,
        images: Some(set.facts()),
        momentum: 0.9,
        width,
        epochs: 1_000_000,
    };
    let mut learner = crate::algo::build(&spec, data, None)?;
    let Init::Broadcast {
        own: Some(init), ..
    } = learner.init()?
    else {
        anyhow::bail!("a CNN's worker 0 proposes its initial network");
    };
    let params = init.len();
    let mut state = learner.state_from_broadcast(init);
    let mut grad = Vec::new();
    let mut times = Vec::with_capacity(steps);
    for i in 0..=steps {
        let started = Instant::now();
        learner.step(&mut state, i as u32, 0, &mut grad);
        if i > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(StepTimes {
        model,
        width,
        batch,
        threads,
        params,
        steps,
        step_s_median: times[times.len() / 2],
        step_s_min: times[0],
    })
}
