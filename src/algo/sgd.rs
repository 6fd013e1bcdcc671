//! Plain minibatch SGD and the per-epoch shuffle/batching plan shared by all workers.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// `params -= lr * grad`.
pub fn step(params: &mut [f32], grad: &[f32], lr: f32) {
    for (p, g) in params.iter_mut().zip(grad) {
        *p -= lr * g;
    }
}

/// AdaGrad's preconditioning: `sum_sq += g^2`, then `g /= sqrt(sum_sq) + eps`, coordinate by
/// coordinate, so a rare feature's step is not drowned by the frequent ones'.
pub fn adagrad(grad: &mut [f32], sum_sq: &mut [f32]) {
    const EPS: f32 = 1e-8;
    for (g, s) in grad.iter_mut().zip(sum_sq) {
        if *g != 0.0 {
            *s += *g * *g;
            *g /= s.sqrt() + EPS;
        }
    }
}

/// The order in which worker `worker` visits `rows` in `epoch`: a permutation derived from
/// (seed, worker, epoch) alone, so a resumed invocation recomputes exactly the same batches
/// without storing any RNG state.
pub fn epoch_order(rows: &[u32], seed: u64, worker: usize, epoch: u32) -> Vec<u32> {
    let mut order = rows.to_vec();
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((worker as u64) << 32 | epoch as u64);
    order.shuffle(&mut StdRng::seed_from_u64(mix));
    order
}

/// Bounds of batch `step` of `steps` over `len` rows: contiguous, sizes differ by at most one,
/// so every row is used once per epoch and all workers run the same number of steps even when
/// their partitions differ in size.
pub fn batch_bounds(len: usize, steps: usize, step: usize) -> std::ops::Range<usize> {
    crate::data::chunk_bounds(len, steps, step)
}

/// Splits `n` rows into (validation, training) row indices: a seeded shuffle, the first
/// `floor(val_ratio * n)` rows held out.
pub fn train_val_split(n: usize, val_ratio: f64, seed: u64, worker: usize) -> (Vec<u32>, Vec<u32>) {
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(
        seed ^ (0xA5A5_0000 + worker as u64),
    ));
    let n_val = (val_ratio * n as f64).floor() as usize;
    let train = idx.split_off(n_val);
    (idx, train)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_deterministic_permutation() {
        let rows: Vec<u32> = (0..100).collect();
        let a = epoch_order(&rows, 1, 2, 3);
        assert_eq!(a, epoch_order(&rows, 1, 2, 3));
        assert_ne!(a, epoch_order(&rows, 1, 2, 4));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, rows);
    }

    #[test]
    fn adagrad_steps_rare_and_small_coordinates_as_far_as_large_ones() {
        let mut sums = vec![0.0; 3];
        let mut g = vec![0.001, 100.0, 0.0];
        adagrad(&mut g, &mut sums);
        assert!(
            (g[0] - 1.0).abs() < 1e-4 && (g[1] - 1.0).abs() < 1e-6,
            "{g:?}"
        );
        assert_eq!(g[2], 0.0, "a coordinate without gradient does not move");
        let mut again = vec![0.001, 100.0, 0.0];
        adagrad(&mut again, &mut sums);
        // The second step of the same size is 1/sqrt(2) of the first.
        assert!(
            (again[1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6,
            "{again:?}"
        );
    }

    #[test]
    fn split_holds_out_the_ratio() {
        let (val, train) = train_val_split(105, 0.1, 1, 0);
        assert_eq!((val.len(), train.len()), (10, 95));
    }
}
