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
    order.shuffle(&mut epoch_rng(seed, worker, epoch));
    order
}

/// Consecutive rows that [`block_order`] keeps together.
///
/// A row of a dense partition is a few cache lines, and an epoch in row-by-row random order
/// waits on memory for each: 200k rows of 28 values ran at about 26 M rows/s where the same
/// kernel on rows in sequence runs at 50 and more. Whole blocks of 32 rows (3.5 KiB of
/// HIGGS) are read in sequence, which the CPU's prefetchers follow. The rows were shuffled
/// once when they were laid out (see [`super::optim::Differentiable::arrange_rows`]), so a
/// block is a random group of rows, and a minibatch of `b` rows is `b / 32` random groups.
pub const ORDER_BLOCK: usize = 32;

/// The order in which worker `worker` visits rows `0..n` in `epoch`: blocks of
/// [`ORDER_BLOCK`] consecutive rows (the last one shorter) in a random order, the rows of a
/// block in sequence. Derived from (seed, worker, epoch) alone, as [`epoch_order`] is.
pub fn block_order(n: usize, seed: u64, worker: usize, epoch: u32) -> Vec<u32> {
    let mut blocks: Vec<u32> = (0..n.div_ceil(ORDER_BLOCK) as u32).collect();
    blocks.shuffle(&mut epoch_rng(seed, worker, epoch));
    let mut order = Vec::with_capacity(n);
    for b in blocks {
        let start = b as usize * ORDER_BLOCK;
        order.extend(start as u32..(start + ORDER_BLOCK).min(n) as u32);
    }
    order
}

/// The generator of worker `worker`'s shuffle in `epoch`.
fn epoch_rng(seed: u64, worker: usize, epoch: u32) -> StdRng {
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((worker as u64) << 32 | epoch as u64);
    StdRng::seed_from_u64(mix)
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
    fn block_order_visits_every_row_once_in_shuffled_runs() {
        let n = 10 * ORDER_BLOCK + 5;
        let a = block_order(n, 1, 2, 3);
        assert_eq!(a, block_order(n, 1, 2, 3));
        assert_ne!(a, block_order(n, 1, 2, 4));
        assert_ne!(a, block_order(n, 1, 3, 3));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
        // Blocks start on multiples of ORDER_BLOCK and run in sequence; the short last one
        // (5 rows) is somewhere among them.
        let mut at = 0;
        while at < n {
            let start = a[at] as usize;
            assert_eq!(start % ORDER_BLOCK, 0, "{a:?}");
            let len = ORDER_BLOCK.min(n - start);
            assert_eq!(
                &a[at..at + len],
                &(start as u32..(start + len) as u32).collect::<Vec<_>>()[..]
            );
            at += len;
        }
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
