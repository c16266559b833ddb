//! 2-D convolution as one autodiff op of Likeness' own, on the autodiff backends Likeness runs
//! (see the [module](super) notes; elsewhere, and with `LIKENESS_KERNELS=0`, Burn's `conv2d`).
//!
//! - **Memory:** Burn's autodiff convolution keeps its input, weight and bias for the backward
//!   whatever needs a gradient; this op keeps the input only when the weight takes a gradient. In
//!   LoRA training every convolution is frozen, so no convolution input is kept for it (those that
//!   another op keeps anyway stay, of course).
//! - **Kernels:** under [`ConvPolicy::Gemm`], on CUDA and wgpu, its forward, data and weight
//!   gradients run Burn's implicit-GEMM kernels (tensor cores through `cmma`) chosen directly
//!   instead of through Burn's autotune, else Likeness' im2col + matmul, else Burn's direct
//!   kernels ([`super::cube::conv`]); under [`ConvPolicy::Im2col`] the same without the first;
//!   under [`ConvPolicy::Burn`] the backend's own `conv2d` and its two backward ops, as Burn's
//!   autodiff would call them.
//!
//! Why the GEMM: a build without Burn's `autotune` feature (no minutes of first-launch tuning)
//! runs Burn's *direct* convolution, whose 3×3 convolutions took 463 of the 698 ms of an SD 1.5
//! UNet forward on an H100 (`docs/perf.md`, session 9); with autotune on, the first launch on a
//! GPU tunes every convolution shape (forward, data and weight gradients; 148 of 372 tuned
//! shapes in the built-in world's training). The implicit GEMM is one of the candidates autotune
//! picks among, without the tuning.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::{ConvOptions, FloatTensor};

use super::{downcast, float, for_each_autodiff_backend, wrap};

/// Which convolution runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPolicy {
    /// The op, on the backend's own `conv2d` and its backward ops (autotuned in builds with the
    /// `autotune` feature, Burn's direct kernels without).
    Burn,
    /// The op, on Burn's implicit-GEMM kernels chosen without tuning (im2col + matmul, then its
    /// direct kernels, where those cannot run); on backends without CubeCL as
    /// [`ConvPolicy::Burn`].
    Gemm,
    /// Not the op: Burn's `conv2d` and Burn's autodiff of it (`LIKENESS_CONV=off`, to measure the
    /// op against it).
    Off,
    /// The op, on im2col + matmul (Burn's direct kernels where that cannot run), without trying
    /// the implicit GEMM: the tier under it, to measure and to fall back to by hand.
    Im2col,
}

static POLICY: super::Setting = super::Setting::new();

/// The policy in force: set by [`set_conv_policy`], else `LIKENESS_CONV` (`gemm`, `im2col`, `burn`,
/// `off`), else
/// [`ConvPolicy::Gemm`] in builds without the `autotune` feature and [`ConvPolicy::Burn`] in
/// builds with it (where Burn's autotune picks among the same kernels and more; which is faster
/// once tuned is for the GPU benchmark to say).
pub fn conv_policy() -> ConvPolicy {
    let from_env = || match std::env::var("LIKENESS_CONV").as_deref() {
        Ok("gemm") => ConvPolicy::Gemm,
        Ok("burn") => ConvPolicy::Burn,
        Ok("off") => ConvPolicy::Off,
        Ok("im2col") => ConvPolicy::Im2col,
        _ if cfg!(feature = "autotune") => ConvPolicy::Burn,
        _ => ConvPolicy::Gemm,
    };
    match POLICY.get(|| from_env() as u8) {
        0 => ConvPolicy::Burn,
        1 => ConvPolicy::Gemm,
        2 => ConvPolicy::Off,
        _ => ConvPolicy::Im2col,
    }
}

named_choices! {
    /// Which of Burn's implicit-GEMM algorithms the GEMM tier runs (`LIKENESS_CONV_ALGORITHM`
    /// takes the names; "-mma": PTX `mma` tiles, CUDA only, else CubeCL's `cmma`; "tma": Hopper's
    /// tensor memory accelerator). Burn runs one without autotune (the simple synchronous cyclic
    /// one on `cmma`); with autotune it times six (synchronous, asynchronous and TMA loading, each
    /// on `cmma` or `mma`). The others run through a launch of Likeness' own with the same layout
    /// changes as Burn's (NCHW to NHWC and back), and leave a pass they cannot run to Burn's.
    pub enum ConvAlgorithmChoice {
        /// Burn's own implicit GEMM (the default).
        Burn = "burn",
        SyncCyclic = "sync-cyclic",
        SyncStridedMma = "sync-strided-mma",
        AsyncCyclic = "async-cyclic",
        AsyncCyclicMma = "async-cyclic-mma",
        AsyncStrided = "async-strided",
        AsyncStridedMma = "async-strided-mma",
        Tma = "tma",
        TmaMma = "tma-mma",
        SpecializedCyclic = "specialized-cyclic",
        SpecializedTma = "specialized-tma",
    }
}

static ALGORITHM: super::Setting = super::Setting::new();

/// The implicit-GEMM algorithm in force: set by [`set_conv_algorithm`], else
/// `LIKENESS_CONV_ALGORITHM` (an unknown name is warned about and ignored), else
/// [`ConvAlgorithmChoice::Burn`].
pub fn conv_algorithm() -> ConvAlgorithmChoice {
    super::named_choice(
        &ALGORITHM,
        "LIKENESS_CONV_ALGORITHM",
        ConvAlgorithmChoice::ALL,
        ConvAlgorithmChoice::name,
    )
}

/// Sets the implicit-GEMM algorithm for the rest of the process.
pub fn set_conv_algorithm(choice: ConvAlgorithmChoice) {
    ALGORITHM.set(choice as u8);
}

/// How many passes ran the chosen implicit-GEMM algorithm and how many it left to Burn's:
/// `[ran, fell back]` (zero without the CubeCL backends).
pub fn algorithm_counts() -> [u64; 2] {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::conv::algorithm_counts();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    [0; 2]
}

/// How many convolution passes (forward, data or weight gradient) each tier under
/// [`ConvPolicy::Gemm`] / [`ConvPolicy::Im2col`] has run in this process: `[implicit GEMM,
/// im2col (pointwise convolutions' matmuls among them), direct]` (all zero without the CubeCL
/// backends).
pub fn tier_counts() -> [u64; 3] {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::conv::tier_counts();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    [0; 3]
}

/// Sets the im2col tier's cap on the columns it holds at once, in bytes, for the rest of the
/// process (256 MiB unless set; samples are unfolded in chunks within it, and a convolution
/// whose single sample needs more runs on Burn's direct kernels).
pub fn set_im2col_bytes(bytes: usize) {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    super::cube::conv::set_columns_bytes(bytes);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    let _ = bytes;
}

/// Sets the policy for the rest of the process.
pub fn set_conv_policy(policy: ConvPolicy) {
    POLICY.set(policy as u8);
}

/// `torch.nn.functional.conv2d`: `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in / groups, k_h, k_w]`.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    if super::enabled()
        && conv_policy() != ConvPolicy::Off
        && let Some(y) = op::<B>(&x, &weight, &options)
    {
        return match bias {
            Some(b) => {
                let c = b.dims()[0];
                y + b.reshape([1, c, 1, 1])
            }
            None => y,
        };
    }
    burn::tensor::module::conv2d(x, weight, bias, options)
}

/// The op without bias: the autodiff op on the autodiff backends recognised, the GEMM kernels'
/// forward on a plain CubeCL backend under [`ConvPolicy::Gemm`], else `None`.
fn op<B: Backend>(
    x: &Tensor<B, 4>,
    w: &Tensor<B, 4>,
    options: &ConvOptions<2>,
) -> Option<Tensor<B, 4>> {
    macro_rules! attempt {
        ($inner:ty, $strategy:ty) => {
            if let Some(out) = attempt::<B, $inner, $strategy>(x, w, options) {
                return Some(out);
            }
        };
    }
    for_each_autodiff_backend!(attempt);
    // Not an autodiff backend: inference on the plain backend.
    if !matches!(conv_policy(), ConvPolicy::Gemm | ConvPolicy::Im2col) {
        return None;
    }
    let y = kernel_forward::<B>(
        float(x.clone()),
        float(w.clone()),
        x.dims(),
        w.dims(),
        options,
    )?;
    Some(wrap(y))
}

fn attempt<B: Backend, I: Backend, C: CheckpointStrategy>(
    x: &Tensor<B, 4>,
    w: &Tensor<B, 4>,
    options: &ConvOptions<2>,
) -> Option<Tensor<B, 4>> {
    type A<I, C> = Autodiff<I, C>;
    let (x, w) = (downcast::<B, A<I, C>, 4>(x)?, downcast::<B, A<I, C>, 4>(w)?);
    let out = wrap::<A<I, C>, 4>(tracked::<I, C>(x, w, options));
    downcast(&out)
}

/// Which of a convolution's three computations a kernel launch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// `(x, w) → y`.
    Forward,
    /// `(dy, w) → dx`.
    Data,
    /// `(x, dy) → dw`.
    Weight,
}

/// `[n, c_out, h_out, w_out]` of a convolution of `x` (`[n, c_in, h, w]`) by `w`
/// (`[c_out, c_in / groups, k_h, k_w]`).
pub fn output_shape(x: [usize; 4], w: [usize; 4], options: &ConvOptions<2>) -> [usize; 4] {
    let side = |i: usize| {
        let span = options.dilation[i] * (w[2 + i] - 1) + 1;
        (x[2 + i] + 2 * options.padding[i]).saturating_sub(span) / options.stride[i] + 1
    };
    [x[0], w[0], side(0), side(1)]
}

/// `pass` on the GEMM tiers, producing a tensor of shape `out` and dtype `dtype`; `None` unless
/// the policy is [`ConvPolicy::Gemm`] or [`ConvPolicy::Im2col`] and backend `I` runs CubeCL with
/// the kernels on.
fn kernel<I: Backend>(
    pass: Pass,
    a: FloatTensor<I>,
    b: FloatTensor<I>,
    out: [usize; 4],
    options: &ConvOptions<2>,
    dtype: DType,
) -> Option<FloatTensor<I>> {
    let implicit_gemm = match conv_policy() {
        ConvPolicy::Gemm => true,
        ConvPolicy::Im2col => false,
        ConvPolicy::Burn | ConvPolicy::Off => return None,
    };
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::conv::launch::<I>(implicit_gemm, pass, a, b, options, out, dtype);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (implicit_gemm, pass, a, b, out, options, dtype);
        None
    }
}

/// The forward on the GEMM kernels, in x's dtype (see [`kernel`]).
fn kernel_forward<I: Backend>(
    x: FloatTensor<I>,
    w: FloatTensor<I>,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    options: &ConvOptions<2>,
) -> Option<FloatTensor<I>> {
    let dtype = wrap::<I, 4>(x.clone()).dtype();
    let out = output_shape(x_shape, w_shape, options);
    kernel::<I>(Pass::Forward, x, w, out, options, dtype)
}

#[derive(Debug)]
struct Conv;

/// x (checkpointed, only where the weight takes a gradient), w (only where x does), their shapes
/// and dtypes, and the options.
type SavedState = (
    Option<NodeId>,
    Option<NodeId>,
    [usize; 4],
    [usize; 4],
    [DType; 2],
    ConvOptions<2>,
);

impl<I: Backend> Backward<I, 2> for Conv {
    type State = SavedState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy: FloatTensor<I> = grads.consume::<I>(&ops.node);
        let (x_state, w_state, x_shape, w_shape, [x_dtype, w_dtype], options) = ops.state;
        let x: Option<FloatTensor<I>> = x_state.map(|s| cp.retrieve_node_output(s));
        let w: Option<FloatTensor<I>> = w_state.map(|s| cp.retrieve_node_output(s));
        let name = if w_shape[3] == 1 {
            "conv1x1 bwd"
        } else {
            "conv3x3 bwd"
        };
        let device = I::float_device(&dy);
        crate::profile::span::<I, _>(&device, name, || {
            if let (Some(node), Some(x)) = (node_w, x.clone()) {
                let dw = kernel::<I>(
                    Pass::Weight,
                    x.clone(),
                    dy.clone(),
                    w_shape,
                    &options,
                    w_dtype,
                )
                .unwrap_or_else(|| {
                    // Burn's backward op reads the weight only for its shape and dtype.
                    let w = w.clone().unwrap_or_else(|| {
                        I::float_zeros(Shape::new(w_shape), &I::float_device(&x), w_dtype.into())
                    });
                    I::conv2d_weight_backward(x, w, dy.clone(), options.clone())
                });
                grads.register::<I>(node.id, dw);
            }
            if let (Some(node), Some(w)) = (node_x, w) {
                let dx = kernel::<I>(
                    Pass::Data,
                    dy.clone(),
                    w.clone(),
                    x_shape,
                    &options,
                    x_dtype,
                )
                .unwrap_or_else(|| {
                    // Burn's backward op reads the input only for its shape and dtype.
                    let x = x.unwrap_or_else(|| {
                        I::float_zeros(Shape::new(x_shape), &I::float_device(&w), x_dtype.into())
                    });
                    I::conv2d_x_backward(x, w, dy, options.clone())
                });
                grads.register::<I>(node.id, dx);
            }
        });
    }
}

fn tracked<I: Backend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 4>,
    w: Tensor<Autodiff<I, C>, 4>,
    options: &ConvOptions<2>,
) -> FloatTensor<Autodiff<I, C>> {
    let (x_shape, w_shape) = (x.dims(), w.dims());
    let dtypes = [x.dtype(), w.dtype()];
    let (x, w) = (float(x), float(w));
    let forward = |x: FloatTensor<I>, w: FloatTensor<I>| {
        kernel_forward::<I>(x.clone(), w.clone(), x_shape, w_shape, options)
            .unwrap_or_else(|| I::conv2d(x, w, None, options.clone()))
    };
    match Conv
        .prepare::<C>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            // The weight's gradient needs x; the input's needs w.
            let x_state = (!w.node.requirement.is_none()).then(|| prep.checkpoint(&x));
            let w_state = (!x.node.requirement.is_none()).then(|| prep.checkpoint(&w));
            let y = forward(x.primitive, w.primitive);
            prep.finish(
                (x_state, w_state, x_shape, w_shape, dtypes, options.clone()),
                y,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, w.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use super::ConvAlgorithmChoice;

    /// Names round-trip and are distinct; the setting's stored discriminant indexes `ALL`.
    #[test]
    fn algorithm_names_round_trip_in_discriminant_order() {
        let mut names = std::collections::HashSet::new();
        for (i, &c) in ConvAlgorithmChoice::ALL.iter().enumerate() {
            assert_eq!(ConvAlgorithmChoice::from_name(c.name()), Some(c));
            assert!(names.insert(c.name()));
            assert_eq!(c as usize, i);
        }
    }
}
