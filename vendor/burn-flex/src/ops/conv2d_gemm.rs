//! 2D convolution as im2col + GEMM in NCHW: forward, input gradient and weight gradient
//! (lambdaml's patch to burn-flex 0.22.1).
//!
//! Flex's own dense convolution converts the input to NHWC, builds im2col tiles of 512
//! output positions per image, multiplies into a fresh buffer and scatters the result back to
//! NCHW; its input gradient is a transposed convolution through the same machinery; and the
//! weight gradient it inherits from Burn is a convolution whose kernel is the output gradient,
//! once per group. Profiled in lambdaml's CNN workers, two thirds of a dense convolution's
//! time went to those copies rather than to arithmetic, and the weight gradient alone was 53%
//! of a MobileNet step. Here each is one GEMM over an NCHW im2col buffer, with no layout
//! conversion:
//!
//! - forward: `Y_n (Cout_g x S) = W_g (Cout_g x Cin_g*K) * col(X_n) (Cin_g*K x S)`
//! - input gradient: `col2im(W_g^T * G_n)`, accumulated into `dX_n`
//! - weight gradient: `dW_g += G_n * col(X_n)^T`
//!
//! where `S` is the output plane and `K` the kernel's positions. When a plane is small (the
//! late stages of a ResNet: 4x4 or 8x8), several images share one GEMM (their columns side
//! by side) so that its inner dimension stays long enough to run at speed, instead of paying
//! a full pass over the weights per 16 output positions. Depthwise kernels (one input and one
//! output channel per group) are direct loops over shifted planes instead (a GEMM with one row
//! would be all overhead); flex's own depthwise forward is already direct and is kept. Chunks
//! of images run on rayon's threads; every chunk's arithmetic is the same whatever the thread
//! count, except the weight gradient's sum over the chunks.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape};

use super::conv::valid_out_range;
use super::for_each_chunk_mut;
use crate::{FlexTensor, Layout};

/// Output positions a GEMM should have at least: below this a chunk takes several images.
const MIN_GEMM_COLUMNS: usize = 256;

/// True for a depthwise convolution (one input and one output channel per group), which
/// [`conv2d_f32`] leaves to flex's direct kernel.
pub fn is_depthwise(x_shape: &Shape, w_shape: &Shape, groups: usize) -> bool {
    w_shape[1] == 1 && groups == x_shape[1] && w_shape[0] == x_shape[1]
}

/// `conv2d(x, weight) + bias` for `f32` tensors with symmetric padding.
pub fn conv2d_f32(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let w = weight.to_contiguous();
    let xs = x.layout().shape().clone();
    let ws = w.layout().shape().clone();
    let geo = Geometry::new(&xs, &ws, None, options);
    let x_data: &[f32] = x.storage();
    let w_data: &[f32] = w.storage();
    let mut out = vec![0f32; geo.batch * geo.c_out * geo.s()];
    let per = geo.images_per_gemm();
    for_each_chunk_mut(&mut out, per * geo.c_out * geo.s(), |chunk, dst| {
        geo.forward(x_data, w_data, chunk * per, dst);
    });
    if let Some(bias) = bias {
        let bias = bias.to_contiguous();
        let b: &[f32] = bias.storage();
        for (i, plane) in out.chunks_mut(geo.s()).enumerate() {
            let v = b[i % geo.c_out];
            plane.iter_mut().for_each(|y| *y += v);
        }
    }
    let shape = Shape::from(vec![geo.batch, geo.c_out, geo.oh, geo.ow]);
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// The gradient of `conv2d(x, weight)` with respect to `x` (of shape `x_shape`), given the
/// gradient of its output; `weight` and `output_grad` are `f32`. Asymmetric padding needs
/// nothing special: only the padding before the input decides which input a tap reads.
pub fn conv2d_x_grad_f32(
    x_shape: Shape,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let w = weight.to_contiguous();
    let g = output_grad.to_contiguous();
    let ws = w.layout().shape().clone();
    let geo = Geometry::new(&x_shape, &ws, Some(g.layout().shape()), options);
    let w_data: &[f32] = w.storage();
    let g_data: &[f32] = g.storage();
    let mut dx = vec![0f32; geo.batch * geo.c_in * geo.h * geo.w];
    let per = geo.images_per_gemm();
    for_each_chunk_mut(&mut dx, per * geo.c_in * geo.h * geo.w, |chunk, dst| {
        geo.input_grad(w_data, g_data, chunk * per, dst);
    });
    FlexTensor::new(
        Bytes::from_elems(dx),
        Layout::contiguous(x_shape),
        DType::F32,
    )
}

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
    let xs = x.layout().shape().clone();
    let geo = Geometry::new(&xs, &weight_shape, Some(g.layout().shape()), options);
    let x_data: &[f32] = x.storage();
    let g_data: &[f32] = g.storage();
    let len = geo.c_out * geo.c_in_g * geo.kh * geo.kw;
    let per = geo.images_per_gemm();
    let chunks = geo.batch.div_ceil(per);

    #[cfg(feature = "rayon")]
    let grad = {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads().clamp(1, chunks.max(1));
        let chunks_per_thread = chunks.div_ceil(threads);
        (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut part = vec![0f32; len];
                let mut scratch = Scratch::take();
                for c in t * chunks_per_thread..((t + 1) * chunks_per_thread).min(chunks) {
                    geo.weight_grad(x_data, g_data, c * per, &mut part, &mut scratch);
                }
                scratch.give_back();
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
        let mut scratch = Scratch::default();
        for c in 0..chunks {
            geo.weight_grad(x_data, g_data, c * per, &mut grad, &mut scratch);
        }
        grad
    };
    let grad = geo.weight_layout(grad);
    FlexTensor::new(
        Bytes::from_elems(grad),
        Layout::contiguous(weight_shape),
        DType::F32,
    )
}

/// Buffers one chunk of images reuses: its im2col columns, its gathered output gradient
/// (or forward result) when the chunk holds several images, and an image moved to
/// channels-last.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    rows: Vec<f32>,
    nhwc: Vec<f32>,
}

impl Scratch {
    /// This thread's buffers, grown by earlier convolutions: a fresh multi-megabyte buffer
    /// per image would be mapped and faulted in anew each time.
    fn take() -> Scratch {
        #[cfg(feature = "std")]
        return SCRATCH.with(|s| s.take());
        #[cfg(not(feature = "std"))]
        Scratch::default()
    }

    /// Keeps the buffers for this thread's next convolution.
    fn give_back(self) {
        #[cfg(feature = "std")]
        SCRATCH.with(|s| s.set(self));
    }
}

#[cfg(feature = "std")]
std::thread_local! {
    /// See [`Scratch::take`].
    static SCRATCH: core::cell::Cell<Scratch> = core::cell::Cell::new(Scratch::default());
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
    /// The geometry of a convolution of an input of shape `xs` with a weight of shape `ws`;
    /// the output plane is `out`'s when given (a gradient), else computed from the options.
    fn new(xs: &Shape, ws: &Shape, out: Option<&Shape>, options: &ConvOptions<2>) -> Self {
        let pad = options.padding_begin();
        let size = |i: usize, k: usize| {
            let extent = options.dilation[i] * (k - 1) + 1;
            let padded = xs[2 + i] + 2 * pad[i];
            assert!(
                extent <= padded,
                "conv2d: a kernel spanning {extent} is larger than the padded input ({padded})"
            );
            (padded - extent) / options.stride[i] + 1
        };
        let (oh, ow) = match out {
            Some(gs) => {
                assert_eq!(gs[0], xs[0], "conv2d gradient: batch sizes differ");
                assert_eq!(gs[1], ws[0], "conv2d gradient: output channels differ");
                (gs[2], gs[3])
            }
            None => (size(0, ws[2]), size(1, ws[3])),
        };
        assert_eq!(
            ws[1] * options.groups,
            xs[1],
            "conv2d: input channels differ from the weight's"
        );
        Geometry {
            batch: xs[0],
            c_in: xs[1],
            h: xs[2],
            w: xs[3],
            c_out: ws[0],
            oh,
            ow,
            c_in_g: ws[1],
            kh: ws[2],
            kw: ws[3],
            groups: options.groups,
            stride: options.stride,
            pad,
            dilation: options.dilation,
        }
    }

    /// Positions of one output plane.
    fn s(&self) -> usize {
        self.oh * self.ow
    }

    /// Rows of an im2col buffer: input channels of a group times kernel positions.
    fn col_rows(&self) -> usize {
        self.c_in_g * self.kh * self.kw
    }

    /// True for a depthwise kernel (one input and one output channel per group).
    fn depthwise(&self) -> bool {
        self.c_in_g == 1 && self.c_out == self.groups
    }

    /// True when the input plane is the im2col buffer itself (1x1, stride 1, no padding).
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0, 0]
    }

    /// Images one GEMM takes together: enough for `MIN_GEMM_COLUMNS` output positions.
    fn images_per_gemm(&self) -> usize {
        MIN_GEMM_COLUMNS
            .div_ceil(self.s().max(1))
            .clamp(1, self.batch.max(1))
    }

    /// Calls `f(row, ci, y range, offset y, x range, offset x)` for every row of an im2col
    /// buffer: input channel `ci` of the group and kernel tap `(i, j)`.
    fn for_each_tap(
        &self,
        mut f: impl FnMut(usize, usize, (usize, usize), isize, (usize, usize), isize),
    ) {
        for ci in 0..self.c_in_g {
            for i in 0..self.kh {
                let off_y = (i * self.dilation[0]) as isize - self.pad[0] as isize;
                let ys = valid_out_range(
                    i,
                    self.dilation[0],
                    self.pad[0],
                    self.stride[0],
                    self.h,
                    self.oh,
                );
                for j in 0..self.kw {
                    let off_x = (j * self.dilation[1]) as isize - self.pad[1] as isize;
                    let xs = valid_out_range(
                        j,
                        self.dilation[1],
                        self.pad[1],
                        self.stride[1],
                        self.w,
                        self.ow,
                    );
                    f((ci * self.kh + i) * self.kw + j, ci, ys, off_y, xs, off_x);
                }
            }
        }
    }

    /// Writes image `x`'s (the group's channels) im2col columns at column `at` of `col`,
    /// whose rows are `ld` long: `col[(ci * kh + i) * kw + j][at + oy * ow + ox] =
    /// x[ci][iy][ix]`, 0 in the padding.
    fn im2col(&self, x: &[f32], col: &mut [f32], ld: usize, at: usize) {
        let s = self.s();
        let sw = self.stride[1];
        self.for_each_tap(|row, ci, (y_lo, y_hi), off_y, (x_lo, x_hi), off_x| {
            let plane = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            let dst = &mut col[row * ld + at..][..s];
            dst[..y_lo * self.ow].fill(0.0);
            dst[y_hi * self.ow..].fill(0.0);
            for oy in y_lo..y_hi {
                let iy = ((oy * self.stride[0]) as isize + off_y) as usize;
                let src = &plane[iy * self.w..][..self.w];
                let out = &mut dst[oy * self.ow..][..self.ow];
                out[..x_lo].fill(0.0);
                out[x_hi..].fill(0.0);
                if sw == 1 {
                    let ix = (x_lo as isize + off_x) as usize;
                    out[x_lo..x_hi].copy_from_slice(&src[ix..ix + (x_hi - x_lo)]);
                } else {
                    for ox in x_lo..x_hi {
                        out[ox] = src[((ox * sw) as isize + off_x) as usize];
                    }
                }
            }
        });
    }

    /// Adds im2col columns (at column `at` of `col`, rows `ld` long) back into image `dx`
    /// (the group's channels): the adjoint of [`Self::im2col`].
    fn col2im(&self, col: &[f32], ld: usize, at: usize, dx: &mut [f32]) {
        let sw = self.stride[1];
        self.for_each_tap(|row, ci, (y_lo, y_hi), off_y, (x_lo, x_hi), off_x| {
            let plane = &mut dx[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            let src = &col[row * ld + at..][..self.s()];
            for oy in y_lo..y_hi {
                let iy = ((oy * self.stride[0]) as isize + off_y) as usize;
                let dst = &mut plane[iy * self.w..][..self.w];
                let from = &src[oy * self.ow..][..self.ow];
                if sw == 1 {
                    let ix = (x_lo as isize + off_x) as usize;
                    dst[ix..ix + (x_hi - x_lo)]
                        .iter_mut()
                        .zip(&from[x_lo..x_hi])
                        .for_each(|(d, v)| *d += v);
                } else {
                    for ox in x_lo..x_hi {
                        dst[((ox * sw) as isize + off_x) as usize] += from[ox];
                    }
                }
            }
        });
    }

    /// The images `first..` of a chunk: how many, and the length of a GEMM row over them.
    fn chunk(&self, first: usize) -> (usize, usize) {
        let n = self.images_per_gemm().min(self.batch - first);
        (n, n * self.s())
    }

    /// The forward convolution of the chunk of images from `first` into `dst` (their
    /// outputs, NCHW).
    fn forward(&self, x: &[f32], w: &[f32], first: usize, dst: &mut [f32]) {
        let (n, ld) = self.chunk(first);
        let (s, ck, c_out_g) = (self.s(), self.col_rows(), self.c_out / self.groups);
        let mut scratch = Scratch::take();
        for gr in 0..self.groups {
            let w_g = &w[gr * c_out_g * ck..][..c_out_g * ck];
            let image =
                |b: usize| &x[((first + b) * self.c_in + gr * self.c_in_g) * self.h * self.w..];
            let rhs: &[f32] = if self.pointwise() && n == 1 {
                image(0)
            } else {
                scratch.col.resize(ck * ld, 0.0);
                for b in 0..n {
                    self.im2col(image(b), &mut scratch.col, ld, b * s);
                }
                &scratch.col
            };
            if n == 1 {
                // Straight into the image's output channels of the group.
                let out = &mut dst[gr * c_out_g * s..][..c_out_g * s];
                gemm_f32(c_out_g, s, ck, out, s, false, w_g, (1, ck), rhs, (1, s));
            } else {
                scratch.rows.resize(c_out_g * ld, 0.0);
                let rows = &mut scratch.rows;
                gemm_f32(c_out_g, ld, ck, rows, ld, false, w_g, (1, ck), rhs, (1, ld));
                for b in 0..n {
                    for co in 0..c_out_g {
                        dst[(b * self.c_out + gr * c_out_g + co) * s..][..s]
                            .copy_from_slice(&rows[co * ld + b * s..][..s]);
                    }
                }
            }
        }
        scratch.give_back();
    }

    /// The output gradient of the chunk of images from `first`, group `gr`, as one matrix
    /// (`c_out_g` rows of `ld`): the image's own slice when the chunk is one image, else
    /// gathered into `rows`.
    fn gathered<'a>(
        &self,
        g: &'a [f32],
        first: usize,
        gr: usize,
        rows: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        let (n, ld) = self.chunk(first);
        let (s, c_out_g) = (self.s(), self.c_out / self.groups);
        if n == 1 {
            return &g[(first * self.c_out + gr * c_out_g) * s..][..c_out_g * s];
        }
        rows.resize(c_out_g * ld, 0.0);
        for b in 0..n {
            for co in 0..c_out_g {
                rows[co * ld + b * s..][..s]
                    .copy_from_slice(&g[((first + b) * self.c_out + gr * c_out_g + co) * s..][..s]);
            }
        }
        rows
    }

    /// The input gradient of the chunk of images from `first`, added into `dx` (their
    /// input planes, NCHW, zeroed by the caller).
    fn input_grad(&self, w: &[f32], g: &[f32], first: usize, dx: &mut [f32]) {
        let (n, ld) = self.chunk(first);
        let (s, ck, c_out_g) = (self.s(), self.col_rows(), self.c_out / self.groups);
        let plane = self.h * self.w;
        if self.depthwise() {
            for b in 0..n {
                for c in 0..self.c_in {
                    let g_plane = &g[((first + b) * self.c_out + c) * s..][..s];
                    let taps = &w[c * self.kh * self.kw..][..self.kh * self.kw];
                    self.depthwise_input_grad(
                        g_plane,
                        taps,
                        &mut dx[(b * self.c_in + c) * plane..][..plane],
                    );
                }
            }
            return;
        }
        let mut scratch = Scratch::take();
        for gr in 0..self.groups {
            let w_g = &w[gr * c_out_g * ck..][..c_out_g * ck];
            let g_rows = self.gathered(g, first, gr, &mut scratch.rows);
            let image = |b: usize| (b * self.c_in + gr * self.c_in_g) * plane;
            if self.pointwise() && n == 1 {
                let out = &mut dx[image(0)..][..self.c_in_g * plane];
                gemm_f32(ck, s, c_out_g, out, s, false, w_g, (ck, 1), g_rows, (1, s));
                continue;
            }
            scratch.col.resize(ck * ld, 0.0);
            let col = &mut scratch.col;
            gemm_f32(
                ck,
                ld,
                c_out_g,
                col,
                ld,
                false,
                w_g,
                (ck, 1),
                g_rows,
                (1, ld),
            );
            for b in 0..n {
                self.col2im(col, ld, b * s, &mut dx[image(b)..]);
            }
        }
        scratch.give_back();
    }

    /// Adds the input gradient of one depthwise channel: each tap's weight times the output
    /// gradient plane, shifted back to the input positions it read.
    fn depthwise_input_grad(&self, g: &[f32], taps: &[f32], dx: &mut [f32]) {
        let [sh, sw] = self.stride;
        for i in 0..self.kh {
            let off_y = (i * self.dilation[0]) as isize - self.pad[0] as isize;
            let (y_lo, y_hi) =
                valid_out_range(i, self.dilation[0], self.pad[0], sh, self.h, self.oh);
            for j in 0..self.kw {
                let off_x = (j * self.dilation[1]) as isize - self.pad[1] as isize;
                let (x_lo, x_hi) =
                    valid_out_range(j, self.dilation[1], self.pad[1], sw, self.w, self.ow);
                let t = taps[i * self.kw + j];
                for oy in y_lo..y_hi {
                    let iy = ((oy * sh) as isize + off_y) as usize;
                    let dst = &mut dx[iy * self.w..][..self.w];
                    let from = &g[oy * self.ow..][..self.ow];
                    if sw == 1 {
                        let ix = (x_lo as isize + off_x) as usize;
                        dst[ix..ix + (x_hi - x_lo)]
                            .iter_mut()
                            .zip(&from[x_lo..x_hi])
                            .for_each(|(d, v)| *d += t * v);
                    } else {
                        for ox in x_lo..x_hi {
                            dst[((ox * sw) as isize + off_x) as usize] += t * from[ox];
                        }
                    }
                }
            }
        }
    }

    /// Adds the weight gradient of the chunk of images from `first` to `grad`, whose kernels'
    /// values are tap-major (`[co][(i * kw + j) * c_in_g + ci]`, see
    /// [`Self::weight_layout`]).
    ///
    /// The sum runs over output positions, which are contiguous in NCHW: a GEMM packs both of
    /// its operands along that axis, and packing an `[row][position]` im2col buffer gathered
    /// 16 rows at a stride (a fifth of a ResNet-20 step). So the columns here are built
    /// position-major, from the image moved to channels-last, whose taps are contiguous runs.
    fn weight_grad(
        &self,
        x: &[f32],
        g: &[f32],
        first: usize,
        grad: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let (n, ld) = self.chunk(first);
        let (s, ck, c_out_g) = (self.s(), self.col_rows(), self.c_out / self.groups);
        for gr in 0..self.groups {
            let image =
                |b: usize| &x[((first + b) * self.c_in + gr * self.c_in_g) * self.h * self.w..];
            let dst = &mut grad[gr * c_out_g * ck..][..c_out_g * ck];
            if self.depthwise() {
                for b in 0..n {
                    let g_plane = &g[((first + b) * self.c_out + gr) * s..][..s];
                    self.depthwise_weight_grad(image(b), g_plane, dst);
                }
                continue;
            }
            let g_rows = self.gathered(g, first, gr, &mut scratch.rows);
            let col_t: &[f32] = if self.pointwise() && n == 1 {
                self.channels_last(image(0), &mut scratch.nhwc);
                &scratch.nhwc
            } else {
                scratch.col.resize(ld * ck, 0.0);
                for b in 0..n {
                    self.channels_last(image(b), &mut scratch.nhwc);
                    self.im2col_rows(&scratch.nhwc, &mut scratch.col, b * s);
                }
                &scratch.col
            };
            // dst (c_out_g x ck) += G (c_out_g x ld) * col_t (ld x ck)
            gemm_f32(
                c_out_g,
                ck,
                ld,
                dst,
                ck,
                true,
                g_rows,
                (1, ld),
                col_t,
                (1, ck),
            );
        }
    }

    /// A weight gradient accumulated tap-major by [`Self::weight_grad`], in the weight's
    /// own layout `[co][ci][i][j]`.
    fn weight_layout(&self, tap_major: Vec<f32>) -> Vec<f32> {
        let (c, k) = (self.c_in_g, self.kh * self.kw);
        if c == 1 || k == 1 {
            return tap_major;
        }
        let mut out = vec![0f32; tap_major.len()];
        for (dst, src) in out.chunks_mut(c * k).zip(tap_major.chunks(c * k)) {
            for t in 0..k {
                for ci in 0..c {
                    dst[ci * k + t] = src[t * c + ci];
                }
            }
        }
        out
    }

    /// Image `x`'s channels of the group moved last: `out[(iy * w + ix) * c_in_g + ci]`.
    fn channels_last(&self, x: &[f32], out: &mut Vec<f32>) {
        const BLOCK: usize = 64;
        let (c, hw) = (self.c_in_g, self.h * self.w);
        out.resize(c * hw, 0.0);
        for p0 in (0..hw).step_by(BLOCK) {
            let p1 = (p0 + BLOCK).min(hw);
            for ci in 0..c {
                for (p, v) in (p0..p1).zip(&x[ci * hw + p0..ci * hw + p1]) {
                    out[p * c + ci] = *v;
                }
            }
        }
    }

    /// Writes the patches of an image (channels last, `x_t`) as rows of `col_t` from row
    /// `at`: `col_t[at + oy * ow + ox][(i * kw + j) * c_in_g + ci] = x[ci][iy][ix]`, 0 in
    /// the padding.
    fn im2col_rows(&self, x_t: &[f32], col_t: &mut [f32], at: usize) {
        let (c, ck) = (self.c_in_g, self.col_rows());
        let [sh, sw] = self.stride;
        let [dh, dw] = self.dilation;
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                let row = &mut col_t[(at + oy * self.ow + ox) * ck..][..ck];
                let x0 = (ox * sw) as isize - self.pad[1] as isize;
                // The taps j whose column ox * sw + j * dw - pad lies inside the image.
                let (j_lo, j_hi) = valid_out_range(ox, sw, self.pad[1], dw, self.w, self.kw);
                for i in 0..self.kh {
                    let iy = (oy * sh + i * dh) as isize - self.pad[0] as isize;
                    let taps = &mut row[i * self.kw * c..][..self.kw * c];
                    if iy < 0 || iy >= self.h as isize || j_lo == j_hi {
                        taps.fill(0.0);
                        continue;
                    }
                    taps[..j_lo * c].fill(0.0);
                    taps[j_hi * c..].fill(0.0);
                    let pixel =
                        |j: usize| (iy as usize * self.w + (x0 + (j * dw) as isize) as usize) * c;
                    if dw == 1 {
                        taps[j_lo * c..j_hi * c]
                            .copy_from_slice(&x_t[pixel(j_lo)..][..(j_hi - j_lo) * c]);
                    } else {
                        for j in j_lo..j_hi {
                            taps[j * c..(j + 1) * c].copy_from_slice(&x_t[pixel(j)..][..c]);
                        }
                    }
                }
            }
        }
    }

    /// Adds one depthwise channel's kernel gradient: each tap's value is one dot product of
    /// the output gradient plane with the input plane shifted by the tap.
    fn depthwise_weight_grad(&self, x: &[f32], g: &[f32], dst: &mut [f32]) {
        let [sh, sw] = self.stride;
        for i in 0..self.kh {
            let off_y = (i * self.dilation[0]) as isize - self.pad[0] as isize;
            let (y_lo, y_hi) =
                valid_out_range(i, self.dilation[0], self.pad[0], sh, self.h, self.oh);
            for j in 0..self.kw {
                let off_x = (j * self.dilation[1]) as isize - self.pad[1] as isize;
                let (x_lo, x_hi) =
                    valid_out_range(j, self.dilation[1], self.pad[1], sw, self.w, self.ow);
                let mut acc = 0f32;
                for oy in y_lo..y_hi {
                    let iy = ((oy * sh) as isize + off_y) as usize;
                    let src = &x[iy * self.w..(iy + 1) * self.w];
                    let gr = &g[oy * self.ow..(oy + 1) * self.ow];
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
                dst[i * self.kw + j] += acc;
            }
        }
    }
}

/// `dst (m x n, rows ld apart) = [dst +] lhs (m x k) * rhs (k x n)`, one thread, with
/// `lhs` and `rhs` given by (column stride, row stride).
///
/// Panics unless every element the strides address lies inside its slice.
#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ld: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: &[f32],
    (rhs_cs, rhs_rs): (usize, usize),
) {
    // Checked always: a GEMM's cost dwarfs three comparisons, and a wrong stride would read
    // or write outside the slices.
    assert!(m == 0 || n == 0 || (m - 1) * ld + n <= dst.len());
    assert!(m == 0 || k == 0 || (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len());
    assert!(k == 0 || n == 0 || (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len());
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// True when `LAMBDAML_CONV=burn` asks for flex's and Burn's own 2D convolution (forward,
/// input gradient, weight gradient) instead of this module's (read once): what `lambdaml
/// bench cnn` alternates with to measure the patch.
#[cfg(feature = "std")]
pub fn burn_default_requested() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var("LAMBDAML_CONV").is_ok_and(|v| v == "burn"))
}

/// Without `std` there is no environment: always this module's convolution.
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

/// Burn 0.22.1's default input gradient (`conv2d_x_backward` of burn-backend, which flex
/// does not override upstream), for symmetric padding, copied for the measurement above: a
/// transposed convolution of the output gradient with the weight.
pub fn conv2d_x_grad_burn(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    use crate::Flex;
    use burn_backend::ops::conv::calculate_padding_out;
    use burn_backend::ops::{ConvTransposeOptions, ModuleOps};
    assert!(
        !options.is_asymmetric(),
        "LAMBDAML_CONV=burn: asymmetric padding is not measured"
    );
    let (xs, ws, gs) = (
        x.layout().shape().clone(),
        weight.layout().shape().clone(),
        output_grad.layout().shape().clone(),
    );
    let pad = options.padding_begin();
    let padding_out = [0, 1].map(|i| {
        calculate_padding_out(
            ws[2 + i],
            options.stride[i],
            pad[i],
            options.dilation[i],
            xs[2 + i],
            gs[2 + i],
        )
    });
    Flex::conv_transpose2d(
        output_grad,
        weight,
        None,
        ConvTransposeOptions::new(
            options.stride,
            pad,
            padding_out,
            options.dilation,
            options.groups,
        ),
    )
}
