//! The networks: ResNet-20 and ResNet-18 for CIFAR-sized images, and MobileNet v1 for 32x32
//! inputs, each with a width multiplier (tests train tiny variants of the same graphs).
//!
//! Every convolution is followed by BatchNorm, so convolutions carry no bias. Global average
//! pooling before the classifier lets one network take 32x32 colour (CIFAR) and 28x28 grey
//! (Fashion-MNIST) images alike.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// What the learner needs from a network.
pub trait Net: Module + Clone + Send + Sync + std::fmt::Debug + 'static {
    /// Logits `[batch, classes]` of images `[batch, channels, height, width]`.
    fn forward(&self, images: Tensor<4>) -> Tensor<2>;
}

/// The shape of a network: its input and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetShape {
    /// Image channels (3 for CIFAR, 1 for MNIST).
    pub channels: usize,
    /// Output classes.
    pub classes: usize,
    /// Multiplies every layer's channel count (1 = the published network).
    pub width: f32,
}

impl NetShape {
    /// `channels` scaled by the width multiplier, never below one.
    fn scaled(&self, channels: usize) -> usize {
        ((channels as f32 * self.width).round() as usize).max(1)
    }
}

fn conv(
    inputs: usize,
    outputs: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([inputs, outputs], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        .with_bias(false)
        .init(device)
}

fn norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels).init(device)
}

/// Global average pooling: `[b, c, h, w]` to `[b, c]`.
fn pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([b, c])
}

/// The 1x1 convolution and norm that match a shortcut to a block's new shape.
#[derive(Module, Debug)]
pub struct Projection {
    conv: Conv2d,
    norm: BatchNorm,
}

/// A residual block of two 3x3 convolutions.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    norm1: BatchNorm,
    conv2: Conv2d,
    norm2: BatchNorm,
    shortcut: Option<Projection>,
}

impl BasicBlock {
    fn new(inputs: usize, outputs: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (stride != 1 || inputs != outputs).then(|| Projection {
            conv: conv(inputs, outputs, 1, stride, 1, device),
            norm: norm(outputs, device),
        });
        BasicBlock {
            conv1: conv(inputs, outputs, 3, stride, 1, device),
            norm1: norm(outputs, device),
            conv2: conv(outputs, outputs, 3, 1, 1, device),
            norm2: norm(outputs, device),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = relu(self.norm1.forward(self.conv1.forward(x.clone())));
        let y = self.norm2.forward(self.conv2.forward(y));
        let skip = match &self.shortcut {
            Some(p) => p.norm.forward(p.conv.forward(x)),
            None => x,
        };
        relu(y + skip)
    }
}

/// A ResNet for small images: a 3x3 stem (no max-pool), stages of basic blocks, global
/// pooling and a linear classifier.
#[derive(Module, Debug)]
pub struct ResNet {
    stem: Conv2d,
    stem_norm: BatchNorm,
    blocks: Vec<BasicBlock>,
    classifier: Linear,
}

impl ResNet {
    /// ResNet-20 (He et al. 2016, CIFAR): stages of 16, 32, 64 channels, three blocks each;
    /// about 0.27 M parameters at width 1.
    pub fn resnet20(shape: NetShape, device: &Device) -> Self {
        Self::new(shape, 16, &[(16, 3, 1), (32, 3, 2), (64, 3, 2)], device)
    }

    /// ResNet-18 in its CIFAR form: stages of 64 to 512 channels, two blocks each; about
    /// 11.2 M parameters at width 1.
    pub fn resnet18(shape: NetShape, device: &Device) -> Self {
        Self::new(
            shape,
            64,
            &[(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)],
            device,
        )
    }

    /// `stages`: (channels, blocks, stride of the first block).
    fn new(
        shape: NetShape,
        stem: usize,
        stages: &[(usize, usize, usize)],
        device: &Device,
    ) -> Self {
        let stem = shape.scaled(stem);
        let mut blocks = Vec::new();
        let mut inputs = stem;
        for &(channels, count, stride) in stages {
            let outputs = shape.scaled(channels);
            for b in 0..count {
                blocks.push(BasicBlock::new(
                    inputs,
                    outputs,
                    if b == 0 { stride } else { 1 },
                    device,
                ));
                inputs = outputs;
            }
        }
        ResNet {
            stem: conv(shape.channels, stem, 3, 1, 1, device),
            stem_norm: norm(stem, device),
            blocks,
            classifier: LinearConfig::new(inputs, shape.classes).init(device),
        }
    }
}

impl Net for ResNet {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem_norm.forward(self.stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.classifier.forward(pool(x))
    }
}

/// A depthwise 3x3 convolution then a pointwise 1x1 one, each with norm and ReLU.
#[derive(Module, Debug)]
pub struct Separable {
    depthwise: Conv2d,
    norm1: BatchNorm,
    pointwise: Conv2d,
    norm2: BatchNorm,
}

impl Separable {
    fn new(inputs: usize, outputs: usize, stride: usize, device: &Device) -> Self {
        Separable {
            depthwise: conv(inputs, inputs, 3, stride, inputs, device),
            norm1: norm(inputs, device),
            pointwise: conv(inputs, outputs, 1, 1, 1, device),
            norm2: norm(outputs, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.norm1.forward(self.depthwise.forward(x)));
        relu(self.norm2.forward(self.pointwise.forward(x)))
    }
}

/// MobileNet v1 (Howard et al. 2017) for 32x32 inputs: a stride-1 3x3 stem and 13
/// depthwise-separable blocks; about 3.2 M parameters at width 1.
#[derive(Module, Debug)]
pub struct MobileNet {
    stem: Conv2d,
    stem_norm: BatchNorm,
    blocks: Vec<Separable>,
    classifier: Linear,
}

impl MobileNet {
    /// The network for `shape`.
    pub fn new(shape: NetShape, device: &Device) -> Self {
        const BLOCKS: [(usize, usize); 13] = [
            (64, 1),
            (128, 2),
            (128, 1),
            (256, 2),
            (256, 1),
            (512, 2),
            (512, 1),
            (512, 1),
            (512, 1),
            (512, 1),
            (512, 1),
            (1024, 2),
            (1024, 1),
        ];
        let stem = shape.scaled(32);
        let mut inputs = stem;
        let blocks = BLOCKS
            .iter()
            .map(|&(channels, stride)| {
                let outputs = shape.scaled(channels);
                let block = Separable::new(inputs, outputs, stride, device);
                inputs = outputs;
                block
            })
            .collect();
        MobileNet {
            stem: conv(shape.channels, stem, 3, 1, 1, device),
            stem_norm: norm(stem, device),
            blocks,
            classifier: LinearConfig::new(inputs, shape.classes).init(device),
        }
    }
}

impl Net for MobileNet {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem_norm.forward(self.stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.classifier.forward(pool(x))
    }
}

#[cfg(test)]
mod convolution_tests {
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use rand::{Rng, SeedableRng};

    /// One convolution's sizes: (batch, input channels, side, output channels, kernel,
    /// stride, padding, dilation, groups).
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    );

    /// The output, input gradient and weight gradient burn computes (with the patched flex
    /// backend) for `case`, against the sums written out here:
    /// `Y[n][co][oy][ox] = sum over ci, i, j of W[co][ci][i][j] X[n][c][iy][ix]`, and its
    /// adjoints `dX[n][c][iy][ix] += G[n][co][oy][ox] W[co][ci][i][j]`,
    /// `dW[co][ci][i][j] += G[n][co][oy][ox] X[n][c][iy][ix]` over the same taps.
    fn check((n, c_in, side, c_out, k, stride, pad, dil, groups): Case) {
        let case = (n, c_in, side, c_out, k, stride, pad, dil, groups);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut draw =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let c_in_g = c_in / groups;
        let c_out_g = c_out / groups;
        let out = (side + 2 * pad - dil * (k - 1) - 1) / stride + 1;
        let x = draw(n * c_in * side * side);
        let w = draw(c_out * c_in_g * k * k);
        let r = draw(n * c_out * out * out);
        let device = Device::flex().autodiff();
        let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, c_in, side, side]), &device)
            .require_grad();
        let wt = Tensor::<4>::from_data(TensorData::new(w.clone(), [c_out, c_in_g, k, k]), &device)
            .require_grad();
        let rt = Tensor::<4>::from_data(TensorData::new(r.clone(), [n, c_out, out, out]), &device);
        let options = ConvOptions::new([stride; 2], [pad; 2], [dil; 2], groups);
        let y = conv2d(xt.clone(), wt.clone(), None, options);
        assert_eq!(y.dims(), [n, c_out, out, out]);
        let y_got = y.clone().into_data();
        let y_got = y_got.as_slice::<f32>().unwrap();
        let grads = (y * rt).sum().backward();
        let dw_got = wt.grad(&grads).expect("a weight gradient").into_data();
        let dw_got = dw_got.as_slice::<f32>().unwrap();
        let dx_got = xt.grad(&grads).expect("an input gradient").into_data();
        let dx_got = dx_got.as_slice::<f32>().unwrap();

        let mut y_want = vec![0f64; y_got.len()];
        let mut dx_want = vec![0f64; x.len()];
        let mut dw_want = vec![0f64; w.len()];
        for b in 0..n {
            for co in 0..c_out {
                let c0 = co / c_out_g * c_in_g;
                for oy in 0..out {
                    for ox in 0..out {
                        let yi = ((b * c_out + co) * out + oy) * out + ox;
                        for ci in 0..c_in_g {
                            for i in 0..k {
                                for j in 0..k {
                                    let iy = (oy * stride + i * dil) as isize - pad as isize;
                                    let ix = (ox * stride + j * dil) as isize - pad as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= side as isize
                                        || ix >= side as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((b * c_in + c0 + ci) * side + iy as usize) * side
                                        + ix as usize;
                                    let wi = ((co * c_in_g + ci) * k + i) * k + j;
                                    y_want[yi] += f64::from(w[wi]) * f64::from(x[xi]);
                                    dx_want[xi] += f64::from(r[yi]) * f64::from(w[wi]);
                                    dw_want[wi] += f64::from(r[yi]) * f64::from(x[xi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        for (what, got, want) in [
            ("output", y_got, &y_want),
            ("input gradient", dx_got, &dx_want),
            ("weight gradient", dw_got, &dw_want),
        ] {
            let max_err = got
                .iter()
                .zip(want.iter())
                .map(|(g, w)| (g - *w as f32).abs())
                .fold(0f32, f32::max);
            assert!(max_err < 1e-3, "{case:?}: the {what} is off by {max_err}");
        }
    }

    use burn::prelude::*;

    /// The shapes the networks use (3x3 same-padding, strided, 1x1 shortcuts, 1x1 pointwise,
    /// depthwise), small planes that several images share a GEMM for (with a last chunk
    /// of fewer images), and a few shapes they do not use (dilation, groups of several
    /// channels, an odd size).
    #[test]
    fn convolution_and_its_gradients_are_the_sums_they_stand_for() {
        for case in [
            (2, 3, 8, 4, 3, 1, 1, 1, 1),
            (3, 4, 9, 6, 3, 2, 1, 1, 1),
            (2, 8, 8, 4, 1, 2, 0, 1, 1),
            (2, 6, 8, 6, 3, 1, 1, 1, 6),
            (2, 6, 9, 6, 3, 2, 1, 1, 6),
            (2, 4, 7, 8, 3, 1, 1, 1, 2),
            (1, 3, 10, 2, 3, 1, 2, 2, 1),
            (2, 2, 5, 3, 5, 1, 0, 1, 1),
            (3, 6, 6, 5, 1, 1, 0, 1, 1),
            (2, 6, 16, 4, 1, 1, 0, 1, 2),
            (2, 3, 16, 4, 3, 1, 1, 1, 1),
            (21, 4, 4, 6, 3, 1, 1, 1, 1),
            (37, 3, 3, 4, 1, 1, 0, 1, 1),
            (18, 4, 8, 6, 1, 2, 0, 1, 1),
            (19, 5, 4, 5, 3, 2, 1, 1, 5),
        ] {
            check(case);
        }
    }
}

#[cfg(test)]
mod batch_norm_tests {
    use burn::prelude::*;
    use burn::tensor::TensorData;
    use burn::tensor::module::batch_norm_train;
    use rand::{Rng, SeedableRng};

    /// Batch normalization with the batch's statistics (the patched flex backend's fused
    /// kernels) against the formulas written out in `f64`: the output, the statistics, and
    /// the gradients of `sum(y * r)` with respect to the input, gamma and beta.
    #[test]
    fn batch_norm_and_its_gradients_are_the_formulas_they_stand_for() {
        let (n, c, h, w) = (3, 4, 5, 6);
        let p = h * w;
        let eps = 1e-5;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut draw = |len: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(lo..hi)).collect()
        };
        let x = draw(n * c * p, -2.0, 3.0);
        let gamma = draw(c, 0.5, 1.5);
        let beta = draw(c, -1.0, 1.0);
        let r = draw(n * c * p, -1.0, 1.0);
        let device = Device::flex().autodiff();
        let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, c, h, w]), &device)
            .require_grad();
        let gt =
            Tensor::<1>::from_data(TensorData::new(gamma.clone(), [c]), &device).require_grad();
        let bt = Tensor::<1>::from_data(TensorData::new(beta.clone(), [c]), &device).require_grad();
        let rt = Tensor::<4>::from_data(TensorData::new(r.clone(), [n, c, h, w]), &device);
        let out = batch_norm_train(xt.clone(), gt.clone(), bt.clone(), eps);
        let data = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        let data1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        let y_got = data(out.output.clone());
        let mean_got = data1(out.mean);
        let var_got = data1(out.variance);
        let grads = (out.output * rt).sum().backward();
        let dx_got = data(xt.grad(&grads).expect("an input gradient"));
        let dg_got = data1(gt.grad(&grads).expect("a gamma gradient"));
        let db_got = data1(bt.grad(&grads).expect("a beta gradient"));

        let m = (n * p) as f64;
        let at = |b: usize, ch: usize, i: usize| (b * c + ch) * p + i;
        let mut errs = [0f64; 6];
        for ch in 0..c {
            let values = || (0..n).flat_map(move |b| (0..p).map(move |i| at(b, ch, i)));
            let mean = values().map(|k| f64::from(x[k])).sum::<f64>() / m;
            let var = values()
                .map(|k| (f64::from(x[k]) - mean).powi(2))
                .sum::<f64>()
                / m;
            let inv_std = 1.0 / (var + eps).sqrt();
            let xhat = |k: usize| (f64::from(x[k]) - mean) * inv_std;
            let g = f64::from(gamma[ch]);
            let sum_r = values().map(|k| f64::from(r[k])).sum::<f64>();
            let sum_r_xhat = values().map(|k| f64::from(r[k]) * xhat(k)).sum::<f64>();
            errs[0] = errs[0].max((f64::from(mean_got[ch]) - mean).abs());
            errs[1] = errs[1].max((f64::from(var_got[ch]) - var).abs());
            errs[2] = errs[2].max((f64::from(dg_got[ch]) - sum_r_xhat).abs());
            errs[3] = errs[3].max((f64::from(db_got[ch]) - sum_r).abs());
            for k in values() {
                let y = xhat(k) * g + f64::from(beta[ch]);
                let dx = g * inv_std * (f64::from(r[k]) - sum_r / m - xhat(k) * sum_r_xhat / m);
                errs[4] = errs[4].max((f64::from(y_got[k]) - y).abs());
                errs[5] = errs[5].max((f64::from(dx_got[k]) - dx).abs());
            }
        }
        for (what, err) in [
            "mean",
            "variance",
            "gamma gradient",
            "beta gradient",
            "output",
            "input gradient",
        ]
        .iter()
        .zip(errs)
        {
            assert!(err < 1e-4, "batch norm: the {what} is off by {err}");
        }
    }
}
