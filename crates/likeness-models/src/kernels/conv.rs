//! 2-D convolution: Burn's `conv2d`, or — on CUDA and wgpu, under [`ConvPolicy::Gemm`] — one
//! autodiff op whose forward and backward run Burn's implicit-GEMM convolution kernels
//! ([`super::cube::conv`]) chosen directly instead of through Burn's autotune.
//!
//! Why: a build without Burn's `autotune` feature (no minutes of first-launch tuning) runs
//! Burn's *direct* convolution, whose 3×3 convolutions took 463 of the 698 ms of an SD 1.5 UNet
//! forward on an H100 (`docs/perf.md`, session 9); with autotune on, the first launch on a GPU
//! tunes every convolution shape (forward, data and weight gradients; 148 of 372 tuned shapes
//! in the built-in world's training). The implicit GEMM is one of the candidates autotune picks
//! among, on tensor cores, without the tuning.
//!
//! Which backends take the op: see the [module](super) notes; elsewhere Burn's convolution runs.

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

/// Which convolution kernels run on CUDA and wgpu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPolicy {
    /// Burn's `conv2d` (autotuned in builds with the `autotune` feature, direct without).
    Burn,
    /// Burn's implicit-GEMM kernels, chosen without tuning (direct where they cannot run).
    Gemm,
}

static POLICY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// The policy in force: set by [`set_conv_policy`], else `LIKENESS_CONV` (`gemm` or `burn`), else
/// [`ConvPolicy::Gemm`] in builds without the `autotune` feature and [`ConvPolicy::Burn`] in
/// builds with it (where Burn's autotune picks among the same kernels and more; which is faster
/// once tuned is for the GPU benchmark to say).
pub fn conv_policy() -> ConvPolicy {
    use std::sync::atomic::Ordering;
    match POLICY.load(Ordering::Relaxed) {
        0 => ConvPolicy::Burn,
        1 => ConvPolicy::Gemm,
        _ => {
            let policy = match std::env::var("LIKENESS_CONV").as_deref() {
                Ok("gemm") => ConvPolicy::Gemm,
                Ok("burn") => ConvPolicy::Burn,
                _ if cfg!(feature = "autotune") => ConvPolicy::Burn,
                _ => ConvPolicy::Gemm,
            };
            let _ = POLICY.compare_exchange(
                u8::MAX,
                policy as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            conv_policy()
        }
    }
}

/// Sets the policy for the rest of the process.
pub fn set_conv_policy(policy: ConvPolicy) {
    POLICY.store(policy as u8, std::sync::atomic::Ordering::Relaxed);
}

/// `torch.nn.functional.conv2d`: `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in / groups, k_h, k_w]`.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    if super::enabled()
        && conv_policy() == ConvPolicy::Gemm
        && let Some(y) = gemm::<B>(&x, &weight, &options)
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

/// The op without bias, where backend `B` (or the inner backend of its autodiff) runs CubeCL.
fn gemm<B: Backend>(
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
    if !applies::<I>() {
        return None;
    }
    let out = wrap::<A<I, C>, 4>(tracked::<I, C>(x, w, options));
    downcast(&out)
}

/// Whether the kernels run on backend `I`.
fn applies<I: Backend>() -> bool {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::enabled() && super::cube::applies::<I>();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = std::marker::PhantomData::<I>;
        false
    }
}

fn kernel_forward<I: Backend>(
    x: FloatTensor<I>,
    w: FloatTensor<I>,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    options: &ConvOptions<2>,
) -> Option<FloatTensor<I>> {
    let dtype = wrap::<I, 4>(x.clone()).dtype();
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::conv::forward::<I>(x, w, x_shape, w_shape, options, dtype);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (x, w, x_shape, w_shape, options, dtype);
        None
    }
}

fn kernel_data_backward<I: Backend>(
    dy: FloatTensor<I>,
    w: FloatTensor<I>,
    x_shape: [usize; 4],
    options: &ConvOptions<2>,
    dtype: DType,
) -> Option<FloatTensor<I>> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::conv::data_backward::<I>(dy, w, x_shape, options, dtype);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (dy, w, x_shape, options, dtype);
        None
    }
}

fn kernel_weight_backward<I: Backend>(
    x: FloatTensor<I>,
    dy: FloatTensor<I>,
    w_shape: [usize; 4],
    options: &ConvOptions<2>,
    dtype: DType,
) -> Option<FloatTensor<I>> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::conv::weight_backward::<I>(x, dy, w_shape, options, dtype);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (x, dy, w_shape, options, dtype);
        None
    }
}

#[derive(Debug)]
struct GemmConv;

/// x and w (checkpointed), their shapes and dtypes, and the options.
type SavedState = (
    NodeId,
    NodeId,
    [usize; 4],
    [usize; 4],
    [DType; 2],
    ConvOptions<2>,
);

impl<I: Backend> Backward<I, 2> for GemmConv {
    type State = SavedState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy: FloatTensor<I> = grads.consume::<I>(&ops.node);
        let (x_state, w_state, x_shape, w_shape, [x_dtype, w_dtype], options) = ops.state;
        let x: FloatTensor<I> = cp.retrieve_node_output(x_state);
        let w: FloatTensor<I> = cp.retrieve_node_output(w_state);
        if let Some(node) = node_w {
            let dw = kernel_weight_backward::<I>(x.clone(), dy.clone(), w_shape, &options, w_dtype)
                .unwrap_or_else(|| {
                    I::conv2d_weight_backward(x.clone(), w.clone(), dy.clone(), options.clone())
                });
            grads.register::<I>(node.id, dw);
        }
        if let Some(node) = node_x {
            let dx = kernel_data_backward::<I>(dy.clone(), w.clone(), x_shape, &options, x_dtype)
                .unwrap_or_else(|| I::conv2d_x_backward(x, w, dy, options.clone()));
            grads.register::<I>(node.id, dx);
        }
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
    match GemmConv
        .prepare::<C>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let w_state = prep.checkpoint(&w);
            let y = forward(x.primitive, w.primitive);
            prep.finish(
                (x_state, w_state, x_shape, w_shape, dtypes, options.clone()),
                y,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, w.primitive)),
    }
}
