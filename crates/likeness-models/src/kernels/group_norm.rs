//! GroupNorm, optionally followed by SiLU, as one autodiff op.
//!
//! Burn's autodiff differentiates `GroupNorm` op by op: the mean, the variance, the subtraction,
//! the division, the affine and (in the ResNet blocks) the SiLU after it each save their inputs,
//! several activation-sized f32 tensors per norm, and the backward runs one reduction per
//! op. This op saves only its input (in its own dtype) and the per-group mean and 1/σ, and its
//! backward is the closed form (per group of `m` elements, `x̂ = (x − μ)·r`, `z = γ·x̂ + β`):
//!
//! `dz = dy ∘ σ(z)·(1 + z·(1 − σ(z)))` with SiLU, else `dy`;
//! `dβ = Σ dz`, `dγ = Σ dz ∘ x̂` (over batch and positions);
//! `dx = r · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ∘ x̂))` with `dx̂ = γ·dz` (means over the group).
//!
//! Statistics, affine and SiLU run in f32 whatever the input's dtype, as PyTorch's autocast runs
//! `group_norm`; the output has the input's dtype. Which backends take this path: see the
//! [module](super) notes; elsewhere [`fn@reference`] runs.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;

use super::{ToDtype, downcast, float, for_each_autodiff_backend, wrap};

/// The settings of one GroupNorm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormOptions {
    pub groups: usize,
    pub eps: f64,
    /// SiLU after the affine.
    pub silu: bool,
}

/// GroupNorm over `x`'s channels (dimension 1) with `weight` and `bias` per channel, then SiLU
/// if asked; `x` is `[batch, channels, …]`.
pub fn group_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    options: GroupNormOptions,
) -> Tensor<B, D> {
    let dims = x.dims();
    let flat: Tensor<B, 3> = x.reshape([dims[0] as i64, dims[1] as i64, -1]);
    let out = if super::enabled() {
        dispatch(&flat, &weight, &bias, options).or_else(|| {
            // Not an autodiff backend of ours: on a plain CubeCL backend (inference on the GPU)
            // the forward kernel still runs.
            #[cfg(any(feature = "cuda", feature = "wgpu"))]
            {
                super::cube::forward(&flat, &weight, &bias, options).map(|(y, _, _)| y)
            }
            #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
            None
        })
    } else {
        None
    };
    out.unwrap_or_else(|| reference(flat, weight, bias, options))
        .reshape(dims)
}

/// The same computed with Burn's tensor ops (differentiated op by op under autodiff): the op's
/// own forward, without its statistics.
pub fn reference<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    options: GroupNormOptions,
) -> Tensor<B, 3> {
    forward_burn(x, weight, bias, options).0
}

fn dispatch<B: Backend>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    options: GroupNormOptions,
) -> Option<Tensor<B, 3>> {
    macro_rules! attempt {
        ($inner:ty, $strategy:ty) => {
            if let Some(out) = attempt::<B, $inner, $strategy>(x, weight, bias, options) {
                return Some(out);
            }
        };
    }
    for_each_autodiff_backend!(attempt);
    None
}

fn attempt<B: Backend, I: Backend, C: CheckpointStrategy>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    options: GroupNormOptions,
) -> Option<Tensor<B, 3>> {
    type A<I, C> = Autodiff<I, C>;
    let x = downcast::<B, A<I, C>, 3>(x)?;
    let weight = downcast::<B, A<I, C>, 1>(weight)?;
    let bias = downcast::<B, A<I, C>, 1>(bias)?;
    let out = wrap::<A<I, C>, 3>(fused::<I, C>(float(x), float(weight), float(bias), options));
    downcast(&out)
}

/// Forward on the inner backend: the output in `x`'s dtype, the group means and 1/σ `[n, g, 1]`
/// — by the CubeCL kernels where they apply ([`super::cube`]), else by [`forward_burn`].
pub fn forward<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    options: GroupNormOptions,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let Some(out) = super::cube::forward(&x, &weight, &bias, options) {
        return out;
    }
    forward_burn(x, weight, bias, options)
}

/// [`forward`] with Burn's tensor ops.
pub fn forward_burn<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    options: GroupNormOptions,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let dtype = x.dtype();
    let [n, c, l] = x.dims();
    let grouped = x
        .to_dtype(DType::F32)
        .reshape([n, options.groups, (c / options.groups) * l]);
    let (var, mean) = grouped.clone().var_mean_bias(2);
    let rstd = (var + options.eps).sqrt().recip();
    let normed = ((grouped - mean.clone()) * rstd.clone()).reshape([n, c, l]);
    let z = affine(normed, weight, bias);
    let y = if options.silu {
        burn::tensor::activation::silu(z)
    } else {
        z
    };
    (y.to_dtype(dtype), mean, rstd)
}

fn affine<B: Backend>(
    normed: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let c = weight.dims()[0];
    normed * weight.to_dtype(DType::F32).reshape([1, c, 1])
        + bias.to_dtype(DType::F32).reshape([1, c, 1])
}

/// The weight's and bias's gradients, each in its parameter's dtype.
pub type ParamGrads<B> = Option<(Tensor<B, 1>, Tensor<B, 1>)>;

/// Gradients of the forward with respect to x and, with `param_grads`, weight and bias (a
/// frozen norm's are not summed at all), each in its input's dtype — by the CubeCL kernels
/// where they apply ([`super::cube`]), else by [`backward_burn`].
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    mean: Tensor<B, 3>,
    rstd: Tensor<B, 3>,
    grad: Tensor<B, 3>,
    options: GroupNormOptions,
    param_grads: bool,
) -> (Tensor<B, 3>, ParamGrads<B>) {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let Some(out) = super::cube::backward(
        &x,
        &weight,
        &bias,
        &mean,
        &rstd,
        &grad,
        options,
        param_grads,
    ) {
        return out;
    }
    backward_burn(x, weight, bias, mean, rstd, grad, options, param_grads)
}

/// [`backward`] with Burn's tensor ops.
#[allow(clippy::too_many_arguments)]
pub fn backward_burn<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    mean: Tensor<B, 3>,
    rstd: Tensor<B, 3>,
    grad: Tensor<B, 3>,
    options: GroupNormOptions,
    param_grads: bool,
) -> (Tensor<B, 3>, ParamGrads<B>) {
    let [n, c, l] = x.dims();
    let (x_dtype, w_dtype, b_dtype) = (x.dtype(), weight.dtype(), bias.dtype());
    let g = options.groups;
    let m = (c / g) * l;
    let normed =
        ((x.to_dtype(DType::F32).reshape([n, g, m]) - mean) * rstd.clone()).reshape([n, c, l]);
    let dy = grad.to_dtype(DType::F32);
    let dz = if options.silu {
        let z = affine(normed.clone(), weight.clone(), bias);
        let s = burn::tensor::activation::sigmoid(z.clone());
        dy * s.clone() * (z * (s.neg() + 1.0) + 1.0)
    } else {
        dy
    };
    // Two reductions over positions give every sum the closed form needs: per (sample,
    // channel) Σ dz and Σ dz·x̂; the per-group means of dx̂ = γ·dz and of dx̂·x̂ are γ-weighted
    // sums of those over the group's channels.
    let w = weight.to_dtype(DType::F32).reshape([1, c, 1]);
    let sum_dz = dz.clone().sum_dim(2);
    let sum_dz_normed = (dz.clone() * normed.clone()).sum_dim(2);
    let params = param_grads.then(|| {
        (
            sum_dz_normed
                .clone()
                .sum_dim(0)
                .reshape([c])
                .to_dtype(w_dtype),
            sum_dz.clone().sum_dim(0).reshape([c]).to_dtype(b_dtype),
        )
    });
    let group_mean = |t: Tensor<B, 3>| (t * w.clone()).reshape([n, g, c / g]).sum_dim(2) / m as f64;
    let mean_d = group_mean(sum_dz);
    let mean_dx = group_mean(sum_dz_normed);
    let dnormed = (dz * w.clone()).reshape([n, g, m]);
    let dx = ((dnormed - mean_d - normed.reshape([n, g, m]) * mean_dx) * rstd).reshape([n, c, l]);
    (dx.to_dtype(x_dtype), params)
}

#[derive(Debug)]
struct FusedGroupNorm;

impl<I: Backend> Backward<I, 3> for FusedGroupNorm {
    type State = (
        NodeId,
        NodeId,
        NodeId,
        FloatTensor<I>,
        FloatTensor<I>,
        GroupNormOptions,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let (x_state, w_state, b_state, mean, rstd, options) = ops.state;
        let x = wrap::<I, 3>(cp.retrieve_node_output(x_state));
        let weight = wrap::<I, 1>(cp.retrieve_node_output(w_state));
        let bias = wrap::<I, 1>(cp.retrieve_node_output(b_state));
        // LayerNorm runs as this op with one group (`nn::LayerNorm`).
        let name = if options.groups == 1 {
            "layer_norm bwd"
        } else {
            "group_norm bwd"
        };
        let device = x.device();
        // A frozen norm (LoRA training) needs only dx.
        let param_grads = node_w.is_some() || node_b.is_some();
        let (dx, params) = crate::profile::span::<I, _>(&device, name, || {
            let (mean, rstd, grad) = (wrap(mean), wrap(rstd), wrap(grad));
            backward(x, weight, bias, mean, rstd, grad, options, param_grads)
        });
        if let Some(node) = node_x {
            grads.register::<I>(node.id, float(dx));
        }
        if let Some((dw, db)) = params {
            if let Some(node) = node_w {
                grads.register::<I>(node.id, float(dw));
            }
            if let Some(node) = node_b {
                grads.register::<I>(node.id, float(db));
            }
        }
    }
}

fn fused<I: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<I, C>>,
    weight: FloatTensor<Autodiff<I, C>>,
    bias: FloatTensor<Autodiff<I, C>>,
    options: GroupNormOptions,
) -> FloatTensor<Autodiff<I, C>> {
    let run = |x, w, b| forward::<I>(wrap::<I, 3>(x), wrap::<I, 1>(w), wrap::<I, 1>(b), options);
    match FusedGroupNorm
        .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let w_state = prep.checkpoint(&weight);
            let b_state = prep.checkpoint(&bias);
            let (y, mean, rstd) = run(x.primitive, weight.primitive, bias.primitive);
            prep.finish(
                (x_state, w_state, b_state, float(mean), float(rstd), options),
                float(y),
            )
        }
        OpsKind::UnTracked(prep) => {
            let (y, _, _) = run(x.primitive, weight.primitive, bias.primitive);
            prep.finish(float(y))
        }
    }
}
