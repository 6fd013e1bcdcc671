//! Batch normalization with the batch's own statistics, and its gradients, over NCHW `f32`
//! (lambdaml's patch to burn-flex 0.22.1).
//!
//! Burn's default `batch_norm_train` and `batch_norm_train_backward` reduce over every axis
//! but the channels by swapping the batch and channel axes and reshaping, which copies the
//! whole activation for each statistic: in a MobileNet step those copies were 15% of the
//! time. Here each channel's statistics are read in place, plane by plane (sums in `f64`), and
//! the elementwise passes run over the planes of the tensor as they lie, on rayon's threads.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::{Bytes, Shape};

use super::for_each_chunk_mut;
use crate::{FlexTensor, Layout};

/// The sizes of a `[batch, channels, ...]` tensor: batch, channels, and the elements of
/// one channel's plane in one image.
fn planes(shape: &Shape) -> (usize, usize, usize) {
    let (n, c) = (shape[0], shape[1]);
    (n, c, shape.num_elements() / (n * c).max(1))
}

/// `f(channel)` for every channel, collected in order (on rayon's threads when flex has
/// them).
fn per_channel<T: Send>(channels: usize, f: impl Fn(usize) -> T + Send + Sync) -> Vec<T> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    (0..channels).map(f).collect()
}

/// `sum over images n of f(plane n of channel c)` in `f64`.
fn channel_sum(
    x: &[f32],
    (n, c, p): (usize, usize, usize),
    ch: usize,
    f: impl Fn(&[f32]) -> f64,
) -> f64 {
    (0..n).map(|i| f(&x[(i * c + ch) * p..][..p])).sum()
}

fn tensor(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// The output of batch normalization of `x` (`[batch, channels, ...]`) with its own
/// statistics, and those statistics (the mean and the biased variance, `[channels]`).
pub fn batch_norm_train_f32(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = x.to_contiguous();
    let (gamma, beta) = (gamma.to_contiguous(), beta.to_contiguous());
    let shape = x.layout().shape().clone();
    let dims = planes(&shape);
    let (n, c, p) = dims;
    let count = (n * p).max(1) as f64;
    let xs: &[f32] = x.storage();
    let (gs, bs): (&[f32], &[f32]) = (gamma.storage(), beta.storage());
    let stats = per_channel(c, |ch| {
        let mean = channel_sum(xs, dims, ch, |v| v.iter().map(|&a| f64::from(a)).sum()) / count;
        let var = channel_sum(xs, dims, ch, |v| {
            v.iter().map(|&a| (f64::from(a) - mean).powi(2)).sum()
        }) / count;
        (mean, var)
    });
    // y = (x - mean) / sqrt(var + eps) * gamma + beta = x * scale + shift
    let affine: Vec<(f32, f32)> = stats
        .iter()
        .zip(gs.iter().zip(bs))
        .map(|(&(mean, var), (&g, &b))| {
            let scale = f64::from(g) / (var + epsilon).sqrt();
            (scale as f32, (f64::from(b) - mean * scale) as f32)
        })
        .collect();
    let mut out = vec![0f32; xs.len()];
    for_each_chunk_mut(&mut out, p, |i, plane| {
        let (scale, shift) = affine[i % c];
        plane
            .iter_mut()
            .zip(&xs[i * p..][..p])
            .for_each(|(y, &a)| *y = a * scale + shift);
    });
    let mean = stats.iter().map(|s| s.0 as f32).collect();
    let var = stats.iter().map(|s| s.1 as f32).collect();
    (
        tensor(out, shape),
        tensor(mean, Shape::new([c])),
        tensor(var, Shape::new([c])),
    )
}

/// The gradients of [`batch_norm_train_f32`] with respect to `x`, `gamma` and `beta`, given
/// the gradient of its output and the statistics it returned:
/// `dx = gamma / std * (dy - mean(dy) - xhat * mean(dy * xhat))`, `dgamma = sum(dy * xhat)`,
/// `dbeta = sum(dy)`, with `xhat = (x - mean) / std` and sums over all but the channels.
pub fn batch_norm_train_backward_f32(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = x.to_contiguous();
    let dy = output_grad.to_contiguous();
    let (gamma, mean, variance) = (
        gamma.to_contiguous(),
        mean.to_contiguous(),
        variance.to_contiguous(),
    );
    let shape = x.layout().shape().clone();
    let dims = planes(&shape);
    let (n, c, p) = dims;
    let count = (n * p).max(1) as f64;
    let (xs, dys): (&[f32], &[f32]) = (x.storage(), dy.storage());
    let (gs, ms, vs): (&[f32], &[f32], &[f32]) =
        (gamma.storage(), mean.storage(), variance.storage());
    let inv_std: Vec<f64> = vs
        .iter()
        .map(|&v| 1.0 / (f64::from(v) + epsilon).sqrt())
        .collect();
    // Per channel: (sum dy, sum dy * xhat).
    let sums = per_channel(c, |ch| {
        let (m, is) = (f64::from(ms[ch]), inv_std[ch]);
        let mut sum_dy = 0f64;
        let mut sum_dy_xhat = 0f64;
        for i in 0..n {
            let at = (i * c + ch) * p;
            for (&g, &a) in dys[at..at + p].iter().zip(&xs[at..at + p]) {
                sum_dy += f64::from(g);
                sum_dy_xhat += f64::from(g) * (f64::from(a) - m) * is;
            }
        }
        (sum_dy, sum_dy_xhat)
    });
    // dx = k * (dy - a - xhat * b) = k * dy - k * b * is * x + k * (b * is * m - a)
    let coeffs: Vec<(f32, f32, f32)> = (0..c)
        .map(|ch| {
            let (sum_dy, sum_dy_xhat) = sums[ch];
            let (a, b) = (sum_dy / count, sum_dy_xhat / count);
            let (m, is) = (f64::from(ms[ch]), inv_std[ch]);
            let k = f64::from(gs[ch]) * is;
            (
                k as f32,
                (-k * b * is) as f32,
                (k * (b * is * m - a)) as f32,
            )
        })
        .collect();
    let mut dx = vec![0f32; xs.len()];
    for_each_chunk_mut(&mut dx, p, |i, plane| {
        let (k, kx, k0) = coeffs[i % c];
        let at = i * p;
        plane
            .iter_mut()
            .zip(dys[at..at + p].iter().zip(&xs[at..at + p]))
            .for_each(|(d, (&g, &a))| *d = k * g + kx * a + k0);
    });
    let dgamma = sums.iter().map(|s| s.1 as f32).collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (
        tensor(dx, shape),
        tensor(dgamma, Shape::new([c])),
        tensor(dbeta, Shape::new([c])),
    )
}
