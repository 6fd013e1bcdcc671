//! Weight gradient of a 2D convolution (lambdaml's patch to burn-flex 0.22.1).
//!
//! Burn's default `conv2d_weight_backward` computes the gradient as another convolution,
//! with the batch as channels and the output gradient as a kernel as large as the image:
//! flex runs that through its generic im2col path with a huge kernel, and for grouped
//! (depthwise) convolutions once per group. Profiled in lambdaml's CNN workers it was 31%
//! of a ResNet-20 step and 53% of a MobileNet step. Here it is the textbook form instead:
//!
//! `dW[co, ci, kh, kw] = sum over n, oh, ow of G[n, co, oh, ow] * X[n, ci, ih, iw]`
//!
//! as one GEMM per image and group (`G_n (Cout_g x S) * im2col(X_n)^T (S x Cin_g*K)`,
//! accumulated), and for depthwise kernels (one input channel per group) as direct dot
//! products. Images are split over rayon's threads, each accumulating its own partial
//! gradient.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// The gradient of `conv2d(x, weight)` with respect to `weight` (of shape `weight_shape`),
/// given the gradient of its output; `x` and `output_grad` are `f32`.
pub fn conv2d_weight_grad_f32(
    x: FlexTensor,
    output_grad: FlexTensor,
    weight_shape: Shape,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let g = output_grad.to_contiguous();
    let xs = x.layout().shape();
    let gs = g.layout().shape();
    let geo = Geometry {
        batch: xs[0],
        c_in: xs[1],
        h: xs[2],
        w: xs[3],
        c_out: gs[1],
        oh: gs[2],
        ow: gs[3],
        c_in_g: weight_shape[1],
        kh: weight_shape[2],
        kw: weight_shape[3],
        groups: options.groups,
        stride: options.stride,
        pad: options.padding_begin(),
        dilation: options.dilation,
    };
    assert_eq!(gs[0], geo.batch, "conv2d weight grad: batch sizes differ");
    assert_eq!(
        weight_shape[0], geo.c_out,
        "conv2d weight grad: output channels differ"
    );
    assert_eq!(
        geo.c_in_g * geo.groups,
        geo.c_in,
        "conv2d weight grad: input channels differ"
    );
    let x_data: &[f32] = x.storage();
    let g_data: &[f32] = g.storage();
    let len = geo.c_out * geo.c_in_g * geo.kh * geo.kw;

    #[cfg(feature = "rayon")]
    let grad = {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads().clamp(1, geo.batch.max(1));
        let per = geo.batch.div_ceil(threads);
        (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut part = vec![0f32; len];
                let images = t * per..((t + 1) * per).min(geo.batch);
                geo.accumulate(x_data, g_data, images, &mut part);
                part
            })
            .reduce(
                || vec![0f32; len],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            )
    };
    #[cfg(not(feature = "rayon"))]
    let grad = {
        let mut grad = vec![0f32; len];
        geo.accumulate(x_data, g_data, 0..geo.batch, &mut grad);
        grad
    };
    FlexTensor::new(
        Bytes::from_elems(grad),
        Layout::contiguous(weight_shape),
        DType::F32,
    )
}

/// Sizes of one convolution.
struct Geometry {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    oh: usize,
    ow: usize,
    c_in_g: usize,
    kh: usize,
    kw: usize,
    groups: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dilation: [usize; 2],
}

impl Geometry {
    /// The output positions `lo..hi` along one axis whose input position
    /// `o * stride + k * dilation - pad` lies inside `0..size`.
    fn valid(size: usize, out: usize, stride: usize, offset: isize) -> (usize, usize) {
        // in = o * stride + offset must satisfy 0 <= in < size.
        let lo = if offset >= 0 {
            0
        } else {
            ((-offset) as usize).div_ceil(stride)
        };
        let hi = if (size as isize) <= offset {
            0
        } else {
            ((size as isize - offset) as usize).div_ceil(stride)
        };
        (lo.min(out), hi.min(out).max(lo.min(out)))
    }

    /// Adds the weight gradient of `images` to `grad`.
    fn accumulate(&self, x: &[f32], g: &[f32], images: core::ops::Range<usize>, grad: &mut [f32]) {
        let c_out_g = self.c_out / self.groups;
        let k = self.kh * self.kw;
        let s = self.oh * self.ow;
        let depthwise = self.c_in_g == 1;
        let mut col = if depthwise {
            Vec::new()
        } else {
            vec![0f32; self.c_in_g * k * s]
        };
        for n in images {
            for gr in 0..self.groups {
                let x_img = &x[(n * self.c_in + gr * self.c_in_g) * self.h * self.w..];
                let g_img = &g[(n * self.c_out + gr * c_out_g) * s..];
                let dst = &mut grad[gr * c_out_g * self.c_in_g * k..];
                if depthwise {
                    self.depthwise(x_img, g_img, c_out_g, dst);
                } else {
                    self.im2col(x_img, &mut col);
                    let n_cols = self.c_in_g * k;
                    // dst (c_out_g x n_cols) += G (c_out_g x s) * col^T (s x n_cols)
                    unsafe {
                        gemm::gemm(
                            c_out_g,
                            n_cols,
                            s,
                            dst.as_mut_ptr(),
                            1,
                            n_cols as isize,
                            true,
                            g_img.as_ptr(),
                            1,
                            s as isize,
                            col.as_ptr(),
                            s as isize,
                            1,
                            1.0f32,
                            1.0f32,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
            }
        }
    }

    /// `col[(ci * kh + i) * kw + j][oy * ow + ox] = x[ci][iy][ix]`, 0 in the padding.
    fn im2col(&self, x: &[f32], col: &mut [f32]) {
        let s = self.oh * self.ow;
        let [sh, sw] = self.stride;
        for ci in 0..self.c_in_g {
            let plane = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            for i in 0..self.kh {
                let off_y = (i * self.dilation[0]) as isize - self.pad[0] as isize;
                let (y_lo, y_hi) = Self::valid(self.h, self.oh, sh, off_y);
                for j in 0..self.kw {
                    let off_x = (j * self.dilation[1]) as isize - self.pad[1] as isize;
                    let (x_lo, x_hi) = Self::valid(self.w, self.ow, sw, off_x);
                    let row = &mut col[((ci * self.kh + i) * self.kw + j) * s..][..s];
                    row.fill(0.0);
                    for oy in y_lo..y_hi {
                        let iy = (oy * sh) as isize + off_y;
                        let src = &plane[iy as usize * self.w..][..self.w];
                        let out = &mut row[oy * self.ow..][..self.ow];
                        if sw == 1 {
                            let ix = (x_lo as isize + off_x) as usize;
                            out[x_lo..x_hi].copy_from_slice(&src[ix..ix + (x_hi - x_lo)]);
                        } else {
                            for ox in x_lo..x_hi {
                                out[ox] = src[((ox * sw) as isize + off_x) as usize];
                            }
                        }
                    }
                }
            }
        }
    }

    /// Depthwise (one input channel per group): each of the group's `c_out_g` kernels'
    /// values is one dot product of an output gradient plane with a shifted input plane.
    fn depthwise(&self, x: &[f32], g: &[f32], c_out_g: usize, dst: &mut [f32]) {
        let s = self.oh * self.ow;
        let [sh, sw] = self.stride;
        let k = self.kh * self.kw;
        for co in 0..c_out_g {
            let g_plane = &g[co * s..(co + 1) * s];
            for i in 0..self.kh {
                let off_y = (i * self.dilation[0]) as isize - self.pad[0] as isize;
                let (y_lo, y_hi) = Self::valid(self.h, self.oh, sh, off_y);
                for j in 0..self.kw {
                    let off_x = (j * self.dilation[1]) as isize - self.pad[1] as isize;
                    let (x_lo, x_hi) = Self::valid(self.w, self.ow, sw, off_x);
                    let mut acc = 0f32;
                    for oy in y_lo..y_hi {
                        let iy = ((oy * sh) as isize + off_y) as usize;
                        let src = &x[iy * self.w..(iy + 1) * self.w];
                        let gr = &g_plane[oy * self.ow..(oy + 1) * self.ow];
                        if sw == 1 {
                            let ix = (x_lo as isize + off_x) as usize;
                            acc += gr[x_lo..x_hi]
                                .iter()
                                .zip(&src[ix..ix + (x_hi - x_lo)])
                                .map(|(a, b)| a * b)
                                .sum::<f32>();
                        } else {
                            for ox in x_lo..x_hi {
                                acc += gr[ox] * src[((ox * sw) as isize + off_x) as usize];
                            }
                        }
                    }
                    dst[co * k + i * self.kw + j] += acc;
                }
            }
        }
    }
}

/// True when `LAMBDAML_CONV_WGRAD=burn` asks for Burn's own weight gradient instead (read
/// once): what `lambdaml bench cnn` alternates with to measure the patch.
#[cfg(feature = "std")]
pub fn burn_default_requested() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var("LAMBDAML_CONV_WGRAD").is_ok_and(|v| v == "burn"))
}

/// Without `std` there is no environment: always the patched gradient.
#[cfg(not(feature = "std"))]
pub fn burn_default_requested() -> bool {
    false
}

/// Burn 0.22.1's default weight gradient (`conv2d_weight_backward_symmetric` of
/// burn-backend, which flex does not override upstream), copied for the measurement above:
/// a convolution of the input with the output gradient as its kernel, batch and channels
/// swapped, once per group.
pub fn conv2d_weight_grad_burn(
    x: FlexTensor,
    weight_shape: Shape,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    use crate::Flex;
    use burn_backend::ops::{FloatTensorOps, ModuleOps, conv::pad_asymmetric_conv_input};
    use burn_std::Slice;
    let (x, options) = pad_asymmetric_conv_input::<Flex, 2>(x, options);
    let [c_out, c_in_g, kh, kw] = [
        weight_shape[0],
        weight_shape[1],
        weight_shape[2],
        weight_shape[3],
    ];
    let c_out_g = c_out / options.groups;
    let x_swapped = Flex::float_swap_dims(x, 0, 1);
    let grad_swapped = Flex::float_swap_dims(output_grad, 0, 1);
    let swapped_options =
        ConvOptions::new(options.dilation, options.padding_begin(), options.stride, 1);
    let mut weight_grad = FlexTensor::new(
        Bytes::from_elems(vec![0f32; c_out * c_in_g * kh * kw]),
        Layout::contiguous(weight_shape),
        DType::F32,
    );
    for g in 0..options.groups {
        let x = Flex::float_slice(
            x_swapped.clone(),
            &[Slice::from(g * c_in_g..(g + 1) * c_in_g)],
        );
        let grad = Flex::float_slice(
            grad_swapped.clone(),
            &[Slice::from(g * c_out_g..(g + 1) * c_out_g)],
        );
        let part = Flex::conv2d(x, grad, None, swapped_options.clone());
        let part = Flex::float_swap_dims(part, 0, 1);
        let part = Flex::float_slice(
            part,
            &[
                Slice::from(0..c_out_g),
                Slice::from(0..c_in_g),
                Slice::from(0..kh),
                Slice::from(0..kw),
            ],
        );
        weight_grad = Flex::float_slice_assign(
            weight_grad,
            &[
                Slice::from(g * c_out_g..(g + 1) * c_out_g),
                Slice::from(0..c_in_g),
                Slice::from(0..kh),
                Slice::from(0..kw),
            ],
            part,
        );
    }
    weight_grad
}
