//! 2-D convolution forward and backward without Burn's autotune, in three tiers tried in turn:
//!
//! 1. Burn's implicit-GEMM kernels (tensor cores through CubeCL's `cmma`), chosen directly
//!    (under [`ConvPolicy::Gemm`](crate::kernels::conv::ConvPolicy::Gemm) only);
//! 2. im2col + matmul: a kernel of Likeness' own unfolds the input into columns
//!    `[n, c_in·k_h·k_w, h_out·w_out]` and Burn's matmul (the algorithm `LIKENESS_MATMUL` names,
//!    [`crate::kernels::matmul`]; tensor cores where the device has them,
//!    register tiles where not) multiplies them by the weight; the data gradient multiplies by
//!    the transposed weight and folds the columns back (a gather, any stride), the weight
//!    gradient multiplies the output gradient by the columns. Needs no `cmma`, so it runs on
//!    every wgpu adapter too; it holds at most [`COLUMNS_BYTES`] of columns at a time (samples in
//!    chunks), and leaves grouped convolutions and larger single samples to
//! 3. Burn's direct kernels, which run everything.
//!
//! A pointwise convolution (1×1, stride 1, no padding: the UNet's shortcuts and SD 1's
//! transformer projections) is its own columns: each pass is one batched matmul, with no cap,
//! and it starts at tier 2, tier 1 being the same GEMM with more index arithmetic.
//!
//! A build without Burn's `autotune` feature would otherwise run the direct convolution, which
//! took 66 % of an SD 1.5 UNet forward on an H100 (`docs/perf.md`, session 9). All tiers compute
//! the same convolution, so the result never depends on which one ran beyond rounding.

use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::conv::{
    ConvStrategy, conv_data_backward, conv_forward, conv_weight_backward,
};
use burn_cubecl::tensor::CubeTensor;

use super::{Apply, KernelOp, Loads, applies, enabled, missing_for, primitive, tensor};
use crate::kernels::conv::{ConvAlgorithmChoice, Pass};
use burn::prelude::Backend;
use burn_cubecl::kernel::into_contiguous;

/// The most bytes of im2col columns held at once, unless [`set_columns_bytes`] says otherwise:
/// samples are unfolded in chunks within it, and a convolution whose single sample needs more
/// goes to the direct kernels.
pub const COLUMNS_BYTES: usize = 256 << 20;

static COLUMNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(COLUMNS_BYTES);

/// Sets the im2col tier's cap on columns held at once for the rest of the process (lower on a
/// GPU short of memory; the tests lower it to make chunks of few samples).
pub fn set_columns_bytes(bytes: usize) {
    COLUMNS.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// Passes run by each tier in this process: implicit GEMM, im2col, direct.
static TIERS: super::Tally<3> = super::Tally::new();

/// How many convolution passes (forward, data or weight gradient) each tier has run in this
/// process: `[implicit GEMM, im2col (pointwise matmuls among them), direct]`.
pub fn tier_counts() -> [u64; 3] {
    TIERS.get()
}

fn count(tier: usize) {
    TIERS.add(tier);
}

/// The kernels (CubeCL's prelude names `Tensor` and `Float` too, so they live apart).
mod device {
    use cubecl::prelude::*;

    /// `cols[n, k, p]` = the input under kernel tap `k = (c, i, j)` at output position `p`, zero
    /// in the padding; samples from `first_sample` on, `elements` = the chunk's `n·K·L`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn im2col_kernel<F: Float>(
        x: &Tensor<F>,
        cols: &mut Tensor<F>,
        channels: u32,
        height: u32,
        width: u32,
        out_height: u32,
        out_width: u32,
        kernel_h: u32,
        kernel_w: u32,
        stride_h: u32,
        stride_w: u32,
        pad_h: u32,
        pad_w: u32,
        dilation_h: u32,
        dilation_w: u32,
        first_sample: u32,
        elements: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let e = ABSOLUTE_POS;
        if e < elements as usize {
            let taps = (kernel_h * kernel_w) as usize;
            let positions = (out_height * out_width) as usize;
            let depth = channels as usize * taps;
            let p = e % positions;
            let k = (e / positions) % depth;
            let n = e / (positions * depth) + first_sample as usize;
            let c = k / taps;
            let i = (k % taps) / kernel_w as usize;
            let j = k % kernel_w as usize;
            // Padded coordinates: unsigned, the padding subtracted only once inside.
            let hp = (p / out_width as usize) * stride_h as usize + i * dilation_h as usize;
            let wp = (p % out_width as usize) * stride_w as usize + j * dilation_w as usize;
            let (ph, pw) = (pad_h as usize, pad_w as usize);
            let mut value = F::new(0.0);
            if hp >= ph && hp < height as usize + ph && wp >= pw && wp < width as usize + pw {
                let row = (n * channels as usize + c) * height as usize + hp - ph;
                value = x[row * width as usize + wp - pw];
            }
            cols[e] = value;
        }
    }

    /// The fold of column gradients back onto the input: `dx[n, c, h, w]` = the sum over kernel
    /// taps `(i, j)` of `dcols[n, (c, i, j), p]` at the output position `p` whose tap covers
    /// `(h, w)`, if any (a gather: no atomics, any stride). Writes the chunk's samples from
    /// `first_sample` on, `elements` = the chunk's `n·c·h·w`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn col2im_kernel<F: Float>(
        dcols: &Tensor<F>,
        dx: &mut Tensor<F>,
        channels: u32,
        height: u32,
        width: u32,
        out_height: u32,
        out_width: u32,
        kernel_h: u32,
        kernel_w: u32,
        stride_h: u32,
        stride_w: u32,
        pad_h: u32,
        pad_w: u32,
        dilation_h: u32,
        dilation_w: u32,
        first_sample: u32,
        elements: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let e = ABSOLUTE_POS;
        if e < elements as usize {
            let taps = (kernel_h * kernel_w) as usize;
            let positions = (out_height * out_width) as usize;
            let depth = channels as usize * taps;
            let w = e % width as usize;
            let h = (e / width as usize) % height as usize;
            let c = (e / (width * height) as usize) % channels as usize;
            let n = e / (width * height * channels) as usize;
            let hp = h + pad_h as usize;
            let wp = w + pad_w as usize;
            let mut sum = f32::new(0.0);
            // Tap (i, j) covers (h, w) from output (oh, ow) where oh·stride + i·dilation = h + pad.
            for i in 0..kernel_h as usize {
                let reach_h = i * dilation_h as usize;
                if hp >= reach_h {
                    let off_h = hp - reach_h;
                    let oh = off_h / stride_h as usize;
                    if oh * stride_h as usize == off_h && oh < out_height as usize {
                        for j in 0..kernel_w as usize {
                            let reach_w = j * dilation_w as usize;
                            if wp >= reach_w {
                                let off_w = wp - reach_w;
                                let ow = off_w / stride_w as usize;
                                if ow * stride_w as usize == off_w && ow < out_width as usize {
                                    let k = c * taps + i * kernel_w as usize + j;
                                    let p = oh * out_width as usize + ow;
                                    sum += f32::cast_from(dcols[(n * depth + k) * positions + p]);
                                }
                            }
                        }
                    }
                }
            }
            let offset = first_sample * channels * height * width;
            dx[offset as usize + e] = F::cast_from(sum);
        }
    }
}

/// A convolution's settings and the shape of what it produces, copyable into a stream op.
#[derive(Debug, Clone, Copy)]
struct Conv {
    pass: Pass,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    /// The output's shape: y's, x's or w's.
    out: [usize; 4],
    /// Whether Burn's implicit GEMM is tried first.
    implicit_gemm: bool,
}

impl Conv {
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new(self.stride, self.padding, self.dilation, self.groups)
    }

    /// The input's and the weight's shapes, `[n, c, h, w]` and `[o, c, kh, kw]`, from the pass's
    /// operands `a`, `b` and its output.
    fn shapes<R: CubeRuntime>(&self, a: &CubeTensor<R>, b: &CubeTensor<R>) -> [[usize; 4]; 2] {
        let dims = |t: &CubeTensor<R>| t.meta.shape().dims::<4>();
        match self.pass {
            Pass::Forward => [dims(a), dims(b)],
            Pass::Data => [self.out, dims(b)],
            Pass::Weight => [dims(a), self.out],
        }
    }

    /// Whether the convolution is pointwise: a 1×1 kernel, stride 1, no padding, one group — a
    /// matmul over channels at every position.
    fn pointwise<R: CubeRuntime>(&self, a: &CubeTensor<R>, b: &CubeTensor<R>) -> bool {
        let [_, [_, _, kh, kw]] = self.shapes(a, b);
        (kh, kw) == (1, 1) && self.stride == [1, 1] && self.padding == [0, 0] && self.groups == 1
    }
}

impl KernelOp<2, 1> for Conv {
    fn run<R: CubeRuntime>(&self, [a, b]: [CubeTensor<R>; 2]) -> [CubeTensor<R>; 1] {
        let attempt = |strategy: ConvStrategy| match self.pass {
            Pass::Forward => {
                conv_forward::<R, 2>(a.clone(), b.clone(), None, self.options(), strategy)
            }
            Pass::Data => conv_data_backward::<R, 2>(
                a.clone(),
                b.clone(),
                Shape::new(self.out),
                self.options(),
                strategy,
            ),
            Pass::Weight => conv_weight_backward::<R, 2>(
                a.clone(),
                b.clone(),
                Shape::new(self.out),
                self.options(),
                strategy,
            ),
        };
        // A pointwise convolution is a matmul already: it goes straight to the tier that runs one.
        let gemm = if self.implicit_gemm && !self.pointwise(&a, &b) {
            chosen_gemm(self, &a, &b)
                .or_else(|| attempt(ConvStrategy::ImplicitGemm).ok())
                .inspect(|_| count(0))
        } else {
            None
        };
        let out = gemm
            .or_else(|| im2col(self, a.clone(), b.clone()).inspect(|_| count(1)))
            .unwrap_or_else(|| {
                count(2);
                attempt(ConvStrategy::Direct)
                    .unwrap_or_else(|e| panic!("convolution {self:?}: {e:?}"))
            });
        [out]
    }
}

/// Passes the chosen implicit-GEMM algorithm ran, and those it left to Burn's.
static ALGORITHMS: super::Tally<2> = super::Tally::new();

/// `[ran the chosen algorithm, left it to Burn's]` (see [`ConvAlgorithmChoice`]).
pub fn algorithm_counts() -> [u64; 2] {
    ALGORITHMS.get()
}

/// The pass on the implicit-GEMM algorithm `LIKENESS_CONV_ALGORITHM` names, through cubek's
/// launcher on NHWC copies (as Burn's implicit GEMM runs); `None` under
/// [`ConvAlgorithmChoice::Burn`] and where the algorithm refuses the pass (no tensor cores, a
/// stride the data gradient's GEMM does not take, …).
fn chosen_gemm<R: CubeRuntime>(
    conv: &Conv,
    a: &CubeTensor<R>,
    b: &CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    use ConvAlgorithmChoice as C;
    use burn_cubecl::ops::{
        permute_nchw_to_nhwc, permute_nchw_to_nhwc_shape, permute_nhwc_to_nchw,
    };
    use cubek::convolution::{
        AcceleratedTileKind as Kind, ConvAlgorithm as Algo, ConvolutionArgs, ConvolutionInputs,
        Strategy, launch_ref,
    };
    use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
    use cubek::std::InputBinding;

    let choice = crate::kernels::conv::conv_algorithm();
    let (algorithm, tile_kind) = match choice {
        C::Burn => return None,
        C::SyncCyclic => (Algo::SimpleSyncCyclic, Kind::Cmma),
        C::SyncStridedMma => (Algo::SimpleSyncStrided, Kind::Mma),
        C::AsyncCyclic => (Algo::SimpleAsyncCyclic, Kind::Cmma),
        C::AsyncCyclicMma => (Algo::SimpleAsyncCyclic, Kind::Mma),
        C::AsyncStrided => (Algo::SimpleAsyncStrided, Kind::Cmma),
        C::AsyncStridedMma => (Algo::SimpleAsyncStrided, Kind::Mma),
        C::Tma => (Algo::SimpleAsyncTma, Kind::Cmma),
        C::TmaMma => (Algo::SimpleAsyncTma, Kind::Mma),
        C::SpecializedCyclic => (Algo::SpecializedAsyncCyclic, Kind::Cmma),
        C::SpecializedTma => (Algo::SpecializedTma, Kind::Cmma),
    };
    // Burn's launcher refuses these before cubek sees them (the data gradient's GEMM takes
    // stride 1 only).
    let strided_data = conv.pass == Pass::Data && conv.stride != [1, 1];
    if conv.groups != 1 || a.dtype != b.dtype || strided_data {
        return None;
    }
    let loads = match choice {
        C::AsyncCyclic
        | C::AsyncCyclicMma
        | C::AsyncStrided
        | C::AsyncStridedMma
        | C::SpecializedCyclic => Loads::Async,
        C::Tma | C::TmaMma | C::SpecializedTma => Loads::Tma,
        _ => Loads::Sync,
    };
    if let Some(missing) = missing_for(a, loads) {
        tracing::debug!(
            "conv algorithm {choice:?} refused {:?}: {missing}",
            conv.pass
        );
        ALGORITHMS.add(1);
        return None;
    }
    let strategy = Strategy::Inferred {
        algorithm,
        tile_kind,
    };
    let args = ConvolutionArgs {
        stride: conv.stride,
        padding: conv.padding,
        dilation: conv.dilation,
    };
    let dtype = a.dtype;
    let dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: dtype.into(),
        rhs: dtype.into(),
        out: dtype.into(),
    });
    let input = |t: CubeTensor<R>| InputBinding::new(t.binding(), dtype.into());
    let client = a.client.clone();
    let nhwc_out = permute_nchw_to_nhwc_shape(Shape::new(conv.out));
    let out = super::empty(a, nhwc_out, dtype);
    let (a, b) = (
        permute_nchw_to_nhwc(a.clone()),
        permute_nchw_to_nhwc(b.clone()),
    );
    let inputs = match conv.pass {
        Pass::Forward => ConvolutionInputs::Forward {
            input: input(a),
            weight: input(b),
            bias: None,
            out: out.clone().binding(),
        },
        Pass::Data => ConvolutionInputs::BackwardData {
            out_grad: input(a),
            weights: input(b),
            in_grad: out.clone().binding(),
        },
        Pass::Weight => ConvolutionInputs::BackwardWeight {
            input: input(a),
            out_grad: input(b),
            weight_grad: out.clone().binding(),
        },
    };
    match launch_ref::<R, 2>(&strategy, &client, inputs, args, dtypes) {
        Ok(()) => {
            ALGORITHMS.add(0);
            Some(permute_nhwc_to_nchw(out))
        }
        Err(err) => {
            tracing::debug!(
                "conv algorithm {choice:?} refused {:?} ({err:?})",
                conv.pass
            );
            ALGORITHMS.add(1);
            None
        }
    }
}

/// Runs `pass` of a convolution on `a` and `b` (see [`Pass`]) as one stream operation, producing
/// `out` in `dtype`, Burn's implicit GEMM first if `implicit_gemm`, else im2col first; `None` where backend `I` is not a CubeCL backend or the kernels are off.
pub(crate) fn launch<I: Backend>(
    implicit_gemm: bool,
    pass: Pass,
    a: FloatTensor<I>,
    b: FloatTensor<I>,
    options: &ConvOptions<2>,
    out: [usize; 4],
    dtype: DType,
) -> Option<FloatTensor<I>> {
    if !enabled() || !applies::<I>() {
        return None;
    }
    let op = Conv {
        pass,
        stride: options.stride,
        padding: options.padding,
        dilation: options.dilation,
        groups: options.groups,
        out,
        implicit_gemm,
    };
    let [y] = Apply::<I, 2, 1, _> {
        name: "likeness_conv2d",
        inputs: [a, b],
        outputs: [(Shape::new(out), dtype)],
        op,
    }
    .apply()?;
    Some(y)
}

/// A convolution's geometry as the kernels take it: `[c, h, w, oh, ow, kh, kw, stride_h,
/// stride_w, pad_h, pad_w, dilation_h, dilation_w]`.
type Geometry = [u32; 13];

/// `conv`'s pass by im2col + matmul (see the module notes); `None` where that tier does not take
/// it: groups, operands of two dtypes, sizes past 32-bit indices, or one sample's columns over
/// the cap ([`COLUMNS_BYTES`], [`set_columns_bytes`]).
fn im2col<R: CubeRuntime>(
    conv: &Conv,
    a: CubeTensor<R>,
    b: CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    if conv.groups != 1 || a.dtype != b.dtype {
        return None;
    }
    if conv.pointwise(&a, &b) {
        return Some(pointwise(conv, a, b));
    }
    let dtype = a.dtype;
    let cap = COLUMNS.load(std::sync::atomic::Ordering::Relaxed);
    // The three shapes, whichever the pass: x `[n, c, h, w]`, w `[o, c, kh, kw]`, y `[n, o, oh, ow]`.
    let [x_shape, w_shape] = conv.shapes(&a, &b);
    let [n, c, h, w] = x_shape;
    let [o, _, kh, kw] = w_shape;
    let [_, _, oh, ow] = crate::kernels::conv::output_shape(x_shape, w_shape, &conv.options());
    let (depth, positions) = (c * kh * kw, oh * ow);
    let per_sample = depth.checked_mul(positions)?;
    let fits = |e: Option<usize>| e.is_some_and(|e| e < u32::MAX as usize);
    if !fits(n.checked_mul(per_sample))
        || !fits(n.checked_mul(c * h * w))
        || !fits(n.checked_mul(o * positions))
        || per_sample == 0
        || per_sample * dtype.size() > cap
    {
        return None;
    }
    let chunk = (cap / (per_sample * dtype.size())).clamp(1, n);
    let u = |v: usize| v as u32;
    let [stride_h, stride_w] = conv.stride.map(u);
    let [pad_h, pad_w] = conv.padding.map(u);
    let [dilation_h, dilation_w] = conv.dilation.map(u);
    let geometry: Geometry = [
        u(c),
        u(h),
        u(w),
        u(oh),
        u(ow),
        u(kh),
        u(kw),
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dilation_h,
        dilation_w,
    ];
    let chunks = (0..n)
        .step_by(chunk)
        .map(|first| (first, chunk.min(n - first)));
    match conv.pass {
        Pass::Forward => {
            let x = into_contiguous(a);
            let weight = tensor::<R, 4>(b).reshape([1, o, depth]);
            let mut parts: Vec<_> = chunks
                .map(|(first, samples)| {
                    mm(
                        weight.clone(),
                        unfold(&x, first, samples, depth, positions, geometry),
                    )
                })
                .collect();
            let y = if parts.len() == 1 {
                parts.remove(0)
            } else {
                burn::prelude::Tensor::cat(parts, 0)
            };
            Some(primitive(y.reshape([n, o, oh, ow])))
        }
        Pass::Data => {
            let dx = super::empty(&a, Shape::new([n, c, h, w]), dtype);
            let dy = tensor::<R, 4>(a).reshape([n, o, positions]);
            let weight_t = tensor::<R, 4>(b).reshape([1, o, depth]).swap_dims(1, 2);
            for (first, samples) in chunks {
                let dcols = mm(weight_t.clone(), dy.clone().narrow(0, first, samples));
                fold(
                    into_contiguous(primitive(dcols)),
                    &dx,
                    first,
                    samples,
                    geometry,
                );
            }
            Some(dx)
        }
        Pass::Weight => {
            let x = into_contiguous(a);
            let dy = tensor::<R, 4>(b).reshape([n, o, positions]);
            let dw = chunks
                .map(|(first, samples)| {
                    let cols = unfold(&x, first, samples, depth, positions, geometry);
                    mm(dy.clone().narrow(0, first, samples), cols.swap_dims(1, 2)).sum_dim(0)
                })
                .reduce(|sum, part| sum + part)?;
            Some(primitive(dw.reshape([o, c, kh, kw])))
        }
    }
}

/// `conv`'s pass for a pointwise convolution (see [`Conv::pointwise`]): the input is its own
/// columns `[n, c, h·w]`, so each pass is one batched matmul, with neither unfolding nor folding
/// nor a cap on columns.
fn pointwise<R: CubeRuntime>(conv: &Conv, a: CubeTensor<R>, b: CubeTensor<R>) -> CubeTensor<R> {
    let [[n, c, h, w], [o, ..]] = conv.shapes(&a, &b);
    let positions = h * w;
    let weight = |t: CubeTensor<R>| tensor::<R, 4>(t).reshape([1, o, c]);
    let y = match conv.pass {
        // y = W·x per sample.
        Pass::Forward => {
            mm(weight(b), tensor::<R, 4>(a).reshape([n, c, positions])).reshape([n, o, h, w])
        }
        // dx = Wᵀ·dy per sample.
        Pass::Data => mm(
            weight(b).swap_dims(1, 2),
            tensor::<R, 4>(a).reshape([n, o, positions]),
        )
        .reshape([n, c, h, w]),
        // dW = Σₙ dy·xᵀ.
        Pass::Weight => mm(
            tensor::<R, 4>(b).reshape([n, o, positions]),
            tensor::<R, 4>(a).reshape([n, c, positions]).swap_dims(1, 2),
        )
        .sum_dim(0)
        .reshape([o, c, 1, 1]),
    };
    primitive(y)
}

/// `a · b` (batched, batch dimensions broadcast) by the matmul algorithm `LIKENESS_MATMUL` names
/// ([`crate::kernels::matmul`]), Burn's matmul by default.
fn mm<R: CubeRuntime>(
    a: burn::prelude::Tensor<super::Inner<R>, 3>,
    b: burn::prelude::Tensor<super::Inner<R>, 3>,
) -> burn::prelude::Tensor<super::Inner<R>, 3> {
    let choice = crate::kernels::matmul::matmul_choice();
    match super::matmul::matmul_on(choice, primitive(a.clone()), primitive(b.clone())) {
        Some(out) => tensor(out),
        None => a.matmul(b),
    }
}

/// The columns `[samples, depth, positions]` of `x`'s samples `first..first + samples`.
fn unfold<R: CubeRuntime>(
    x: &CubeTensor<R>,
    first: usize,
    samples: usize,
    depth: usize,
    positions: usize,
    g: Geometry,
) -> burn::prelude::Tensor<super::Inner<R>, 3> {
    let cols = super::empty(x, Shape::new([samples, depth, positions]), x.dtype);
    let elements = samples * depth * positions;
    let (count, dim) = super::elementwise(x, elements);
    device::im2col_kernel::launch::<R>(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        cols.clone().into_tensor_arg(),
        g[0],
        g[1],
        g[2],
        g[3],
        g[4],
        g[5],
        g[6],
        g[7],
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        first as u32,
        elements as u32,
        x.dtype.into(),
    );
    tensor::<R, 3>(cols)
}

/// Folds the column gradients `dcols` of samples `first..first + samples` into `dx`.
fn fold<R: CubeRuntime>(
    dcols: CubeTensor<R>,
    dx: &CubeTensor<R>,
    first: usize,
    samples: usize,
    g: Geometry,
) {
    let elements = samples * (g[0] * g[1] * g[2]) as usize;
    let (count, dim) = super::elementwise(dx, elements);
    device::col2im_kernel::launch::<R>(
        &dx.client,
        count,
        dim,
        dcols.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        g[0],
        g[1],
        g[2],
        g[3],
        g[4],
        g[5],
        g[6],
        g[7],
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        first as u32,
        elements as u32,
        dx.dtype.into(),
    );
}
