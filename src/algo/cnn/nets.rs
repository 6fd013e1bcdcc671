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
mod weight_gradient_tests {
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

    /// The weight gradient burn computes (with the patched flex backend) for `case`, against
    /// the sum `dW[co][ci][i][j] = sum over n, oy, ox of G[n][co][oy][ox] X[n][c][iy][ix]`
    /// written out here.
    fn check((n, c_in, side, c_out, k, stride, pad, dil, groups): Case) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut draw =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let c_in_g = c_in / groups;
        let out = (side + 2 * pad - dil * (k - 1) - 1) / stride + 1;
        let x = draw(n * c_in * side * side);
        let w = draw(c_out * c_in_g * k * k);
        let r = draw(n * c_out * out * out);
        let device = Device::flex().autodiff();
        let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, c_in, side, side]), &device);
        let wt = Tensor::<4>::from_data(TensorData::new(w, [c_out, c_in_g, k, k]), &device)
            .require_grad();
        let rt = Tensor::<4>::from_data(TensorData::new(r.clone(), [n, c_out, out, out]), &device);
        let options = ConvOptions::new([stride; 2], [pad; 2], [dil; 2], groups);
        let y = conv2d(xt, wt.clone(), None, options);
        assert_eq!(y.dims(), [n, c_out, out, out]);
        let grads = (y * rt).sum().backward();
        let got = wt.grad(&grads).expect("a weight gradient").into_data();
        let got = got.as_slice::<f32>().unwrap();
        let c_out_g = c_out / groups;
        let mut max_err = 0f32;
        for co in 0..c_out {
            let g = co / c_out_g;
            for ci in 0..c_in_g {
                let c = g * c_in_g + ci;
                for i in 0..k {
                    for j in 0..k {
                        let mut want = 0f64;
                        for b in 0..n {
                            for oy in 0..out {
                                for ox in 0..out {
                                    let iy = (oy * stride + i * dil) as isize - pad as isize;
                                    let ix = (ox * stride + j * dil) as isize - pad as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= side as isize
                                        || ix >= side as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * c_in + c) * side + iy as usize) * side
                                        + ix as usize];
                                    let rv = r[((b * c_out + co) * out + oy) * out + ox];
                                    want += f64::from(xv) * f64::from(rv);
                                }
                            }
                        }
                        let at = ((co * c_in_g + ci) * k + i) * k + j;
                        max_err = max_err.max((got[at] - want as f32).abs());
                    }
                }
            }
        }
        assert!(
            max_err < 1e-3,
            "{:?}: the weight gradient is off by {max_err}",
            (n, c_in, side, c_out, k, stride, pad, dil, groups)
        );
    }

    use burn::prelude::*;

    /// The shapes the networks use (3x3 same-padding, strided, 1x1 shortcuts, depthwise) and
    /// a few they do not (dilation, groups of several channels, an odd size).
    #[test]
    fn the_weight_gradient_is_the_sum_it_stands_for() {
        for case in [
            (2, 3, 8, 4, 3, 1, 1, 1, 1),
            (3, 4, 9, 6, 3, 2, 1, 1, 1),
            (2, 8, 8, 4, 1, 2, 0, 1, 1),
            (2, 6, 8, 6, 3, 1, 1, 1, 6),
            (2, 6, 9, 6, 3, 2, 1, 1, 6),
            (2, 4, 7, 8, 3, 1, 1, 1, 2),
            (1, 3, 10, 2, 3, 1, 2, 2, 1),
            (2, 2, 5, 3, 5, 1, 0, 1, 1),
        ] {
            check(case);
        }
    }
}
