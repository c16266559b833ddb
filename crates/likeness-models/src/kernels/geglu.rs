//! diffusers' GEGLU gate, `value · gelu(gate)` over `h = [value | gate]` (the last dimension's
//! two halves), as one autodiff op.
//!
//! Burn differentiates the exact GELU op by op — a division, `erf`, an addition and two
//! products, each saving an activation-sized tensor of the feed-forward's hidden width (the
//! widest activation of a transformer block: `4·C` per token) — and the two `narrow`s'
//! backwards each fill a zero tensor of `h`'s size and write their half into it. This op saves
//! only `h` and computes, with `Φ` and `φ` the standard normal's distribution and density,
//!
//! `out = v · g·Φ(g)`, `dv = dout · g·Φ(g)`, `dg = dout · v · (Φ(g) + g·φ(g))`,
//!
//! written as `dh = [dv | dg]`: on the CubeCL backends one element-wise launch each way (in f32
//! whatever the dtype, as PyTorch computes GELU in half precision), elsewhere Burn's ops
//! ([`forward_burn`], [`backward_burn`]). Which backends take the op: see the [module](super)
//! notes; elsewhere [`reference`] runs.

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

/// `value · gelu(gate)` for `h` `[.., 2·n]` (value the first half, gate the second) → `[.., n]`.
pub fn geglu<B: Backend, const D: usize>(h: Tensor<B, D>) -> Tensor<B, D> {
    let dims = h.dims();
    let width = dims[D - 1];
    if !width.is_multiple_of(2) {
        // Not a GEGLU input; Burn's narrow reports the mismatch as it always has.
        return reference(h);
    }
    let rows: usize = dims[..D - 1].iter().product();
    let mut out_dims = dims;
    out_dims[D - 1] = width / 2;
    let flat: Tensor<B, 2> = h.reshape([rows, width]);
    let out = if super::enabled() {
        dispatch(&flat).or_else(|| {
            // Not an autodiff backend of ours: the forward kernel still runs on a plain CubeCL
            // backend (inference on the GPU).
            #[cfg(any(feature = "cuda", feature = "wgpu"))]
            {
                super::cube::geglu_forward(&flat)
            }
            #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
            None
        })
    } else {
        None
    };
    out.unwrap_or_else(|| reference(flat)).reshape(out_dims)
}

/// The same with Burn's tensor ops (differentiated op by op under autodiff).
pub fn reference<B: Backend, const D: usize>(h: Tensor<B, D>) -> Tensor<B, D> {
    let half = h.dims()[D - 1] / 2;
    let gate = h.clone().narrow(D - 1, half, half);
    h.narrow(D - 1, 0, half) * burn::tensor::activation::gelu(gate)
}

fn dispatch<B: Backend>(h: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    macro_rules! attempt {
        ($inner:ty, $strategy:ty) => {
            if let Some(out) = attempt::<B, $inner, $strategy>(h) {
                return Some(out);
            }
        };
    }
    for_each_autodiff_backend!(attempt);
    None
}

fn attempt<B: Backend, I: Backend, C: CheckpointStrategy>(
    h: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    type A<I, C> = Autodiff<I, C>;
    let h = downcast::<B, A<I, C>, 2>(h)?;
    let out = wrap::<A<I, C>, 2>(tracked::<I, C>(float(h)));
    downcast(&out)
}

/// Forward on the inner backend, `[rows, 2·n]` → `[rows, n]` in `h`'s dtype: the CubeCL kernel
/// where it applies, else [`forward_burn`].
pub fn forward<B: Backend>(h: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let Some(out) = super::cube::geglu_forward(&h) {
        return out;
    }
    forward_burn(h)
}

/// [`forward`] with Burn's tensor ops, in f32.
pub fn forward_burn<B: Backend>(h: Tensor<B, 2>) -> Tensor<B, 2> {
    let dtype = h.dtype();
    reference(h.to_dtype(DType::F32)).to_dtype(dtype)
}

/// The gradient of [`forward`] with respect to `h`, in `h`'s dtype: the CubeCL kernel where it
/// applies, else [`backward_burn`].
pub fn backward<B: Backend>(h: Tensor<B, 2>, grad: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let Some(dh) = super::cube::geglu_backward(&h, &grad) {
        return dh;
    }
    backward_burn(h, grad)
}

/// [`backward`] with Burn's tensor ops, in f32.
pub fn backward_burn<B: Backend>(h: Tensor<B, 2>, grad: Tensor<B, 2>) -> Tensor<B, 2> {
    let dtype = h.dtype();
    let [_, width] = h.dims();
    let half = width / 2;
    let h = h.to_dtype(DType::F32);
    let dy = grad.to_dtype(DType::F32);
    let value = h.clone().narrow(1, 0, half);
    let gate = h.narrow(1, half, half);
    let cdf = (gate.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() * 0.5 + 0.5;
    let pdf = (gate.clone().powi_scalar(2) * -0.5).exp()
        * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    let d_value = dy.clone() * gate.clone() * cdf.clone();
    let d_gate = dy * value * (cdf + gate * pdf);
    Tensor::cat(vec![d_value, d_gate], 1).to_dtype(dtype)
}

#[derive(Debug)]
struct Geglu;

impl<I: Backend> Backward<I, 1> for Geglu {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_h] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let Some(node) = node_h else {
            return;
        };
        let h = wrap::<I, 2>(cp.retrieve_node_output(ops.state));
        let device = h.device();
        let dh =
            crate::profile::span::<I, _>(&device, "geglu bwd", || backward(h, wrap::<I, 2>(grad)));
        grads.register::<I>(node.id, float(dh));
    }
}

fn tracked<I: Backend, C: CheckpointStrategy>(
    h: FloatTensor<Autodiff<I, C>>,
) -> FloatTensor<Autodiff<I, C>> {
    let run = |h| float(forward::<I>(wrap::<I, 2>(h)));
    match Geglu
        .prepare::<C>([h.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&h);
            let out = run(h.primitive);
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(run(h.primitive)),
    }
}
