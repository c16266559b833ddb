//! Matmul with a choice of Burn's matmul algorithms, forward and backward: the linear layers'
//! (and the im2col convolution tier's) matmuls.
//!
//! A build without Burn's `autotune` feature runs one algorithm for every matmul (the simple
//! cyclic tensor-core one at default tiles); the single-op benchmark on an H100 put the
//! feed-forward's `[8192, 320] × [320, 2560]` at 1.6 ms forward in f32 against PyTorch's 0.2 in
//! bf16 (`docs/perf.md`, session 14). Under [`MatmulChoice::Burn`] (the default) Burn's
//! matmul runs (the linear layers' still through the op under autodiff, for their weight
//! gradients' layout: [`linear`]); any other choice runs that algorithm for the forward and
//! both gradients (`likeness bench --only matmuls` times them all in one process), as one
//! autodiff op that keeps what Burn's keeps (the left operand only where the right one takes a
//! gradient and vice versa), and marks its backward as `linear bwd` in the step profile.
//! Elsewhere than on the CubeCL backends, and for shapes it does not take (broadcast batch
//! dimensions, mixed dtypes), Burn's matmul runs.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;

use super::{downcast, float, for_each_autodiff_backend, wrap};

named_choices! {
    /// Which of Burn's matmul algorithms runs (`LIKENESS_MATMUL` takes the names). "cmma"
    /// algorithms (no suffix) use the tensor cores through CubeCL's `cmma` (CUDA, and Vulkan
    /// where the driver offers cooperative matrices), "-mma" ones through PTX `mma` (CUDA), "tma"
    /// ones Hopper's tensor memory accelerator; the "unit" ones no tensor cores.
    pub enum MatmulChoice {
        /// Burn's matmul as Burn calls it (the default).
        Burn = "burn",
        /// Burn's default algorithm through Likeness' op: what the op itself costs.
        Auto = "auto",
        SimpleCyclic = "simple-cyclic",
        SimpleCyclicMultiRow = "simple-cyclic-multirow",
        SimpleCyclicMma = "simple-cyclic-mma",
        DoubleCyclic = "double-cyclic",
        DoubleCyclicSpecialized = "double-cyclic-specialized",
        DoubleCyclicMma = "double-cyclic-mma",
        OrderedDouble4 = "ordered-double-4",
        OrderedDouble8 = "ordered-double-8",
        OrderedDouble8Mma = "ordered-double-8-mma",
        SpecializedCyclic = "specialized-cyclic",
        SpecializedCyclicMma = "specialized-cyclic-mma",
        SimpleTma = "simple-tma",
        SimpleTmaMultiRow = "simple-tma-multirow",
        SpecializedTma = "specialized-tma",
        SimpleUnitMax = "simple-unit-max",
        SimpleUnitMin = "simple-unit-min",
        DoubleUnitMax = "double-unit-max",
        DoubleUnitMin = "double-unit-min",
    }
}

static CHOICE: super::Setting = super::Setting::new();

/// The choice in force: set by [`set_matmul_choice`], else `LIKENESS_MATMUL` (a name of
/// [`MatmulChoice::name`]; an unknown one is warned about and ignored), else
/// [`MatmulChoice::Burn`].
pub fn matmul_choice() -> MatmulChoice {
    super::named_choice(
        &CHOICE,
        "LIKENESS_MATMUL",
        MatmulChoice::ALL,
        MatmulChoice::name,
    )
}

/// Sets the choice for the rest of the process.
pub fn set_matmul_choice(choice: MatmulChoice) {
    CHOICE.set(choice as u8);
}

/// How many matmuls ran the chosen algorithm and how many fell back to Burn's default one (it
/// refused the shape, dtype or device): `[ran, fell back]` (zero without the CubeCL backends).
pub fn matmul_counts() -> [u64; 2] {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::matmul::counts();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    [0; 2]
}

/// `x @ weightᵀ + bias` over `x`'s last dimension, `weight` `[out, in]` (PyTorch's layout, as
/// `nn::Linear` stores it), as `burn::tensor::module::linear` on the transposed weight, with
/// the matmul by [`matmul`]'s algorithm. Always as one 2-D product over `x`'s rows: Burn's
/// `linear` broadcasts the weight over `x`'s leading dimensions, so its weight gradient is a
/// batched product followed by a sum over them (a reduction launched for every trained linear in
/// every step). Under autodiff the product is one op whose weight gradient is `gradᵀ · x`,
/// `[out, in]` like the weight and contiguous; Burn's matmul on the transposed weight gives the
/// gradient of the transpose, `xᵀ · grad`, as a transposed view, which the optimizer copies to
/// flatten (one copy per trained weight per step: 256 for SD 1.5's attention LoRA).
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let [d_out, d_in] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut out = dims;
    out[D - 1] = d_out;
    let x = x.reshape([rows, d_in]);
    let y = if !super::enabled() {
        burn::tensor::module::linear(x, weight.transpose(), bias)
    } else {
        let y = times_transposed(x, weight);
        match bias {
            Some(b) => y + b.reshape([1, d_out]),
            None => y,
        }
    };
    y.reshape(out)
}

/// `x · wᵀ` for `x` `[rows, in]` and `w` `[out, in]`: under a recognised autodiff backend one
/// op with the gradients `grad · w` and `gradᵀ · x`; elsewhere [`matmul`] on the transposed
/// weight.
fn times_transposed<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    if x.dtype() == w.dtype() {
        let choice = matmul_choice();
        macro_rules! attempt {
            ($inner:ty, $strategy:ty) => {
                if let Some(out) = attempt::<B, $inner, $strategy, 2>(&x, &w, choice, true) {
                    return out;
                }
            };
        }
        for_each_autodiff_backend!(attempt);
    }
    matmul(x, w.transpose())
}

/// `lhs · rhs` over the last two dimensions: by the algorithm of [`matmul_choice`] on the CubeCL
/// backends (autodiff included) where it applies, else Burn's `matmul`.
pub fn matmul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    let choice = matmul_choice();
    if choice != MatmulChoice::Burn
        && super::enabled()
        && let Some(out) = op::<B, D>(&lhs, &rhs, choice)
    {
        return out;
    }
    lhs.matmul(rhs)
}

fn op<B: Backend, const D: usize>(
    lhs: &Tensor<B, D>,
    rhs: &Tensor<B, D>,
    choice: MatmulChoice,
) -> Option<Tensor<B, D>> {
    // Equal batch dimensions only: the gradients then need no sums over broadcast ones.
    let (l, r) = (lhs.dims(), rhs.dims());
    if D < 2 || l[..D - 2] != r[..D - 2] || lhs.dtype() != rhs.dtype() {
        return None;
    }
    macro_rules! attempt {
        ($inner:ty, $strategy:ty) => {
            if let Some(out) = attempt::<B, $inner, $strategy, D>(lhs, rhs, choice, false) {
                return Some(out);
            }
        };
    }
    for_each_autodiff_backend!(attempt);
    // Not an autodiff backend: the plain one, where it runs CubeCL.
    inner::<B>(float(lhs.clone()), float(rhs.clone()), choice).map(wrap)
}

/// The op on autodiff backend `Autodiff<I, C>` if `B` is it. A plain product (a chosen
/// algorithm) only where `I` runs CubeCL, else Burn's autodiff matmul is as good; a product by
/// the transposed right operand (a linear layer's) on every such backend, for its gradient's
/// layout.
fn attempt<B: Backend, I: Backend, C: CheckpointStrategy, const D: usize>(
    lhs: &Tensor<B, D>,
    rhs: &Tensor<B, D>,
    choice: MatmulChoice,
    rhs_transposed: bool,
) -> Option<Tensor<B, D>> {
    type A<I, C> = Autodiff<I, C>;
    let (lhs, rhs) = (
        downcast::<B, A<I, C>, D>(lhs)?,
        downcast::<B, A<I, C>, D>(rhs)?,
    );
    if !rhs_transposed && !super::cube_applies::<I>() {
        return None;
    }
    let out = wrap::<A<I, C>, D>(tracked::<I, C, D>(lhs, rhs, choice, rhs_transposed));
    downcast(&out)
}

/// `lhs · rhs` on backend `I` by the chosen algorithm; `None` off the CubeCL backends or where
/// the shapes do not multiply.
fn inner<I: Backend>(
    lhs: FloatTensor<I>,
    rhs: FloatTensor<I>,
    choice: MatmulChoice,
) -> Option<FloatTensor<I>> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::matmul_apply::<I>(lhs, rhs, choice);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (lhs, rhs, choice);
        None
    }
}

/// [`inner`], else Burn's matmul.
fn compute<I: Backend>(
    lhs: FloatTensor<I>,
    rhs: FloatTensor<I>,
    choice: MatmulChoice,
) -> FloatTensor<I> {
    inner::<I>(lhs.clone(), rhs.clone(), choice).unwrap_or_else(|| I::float_matmul(lhs, rhs))
}

/// `lhs · rhs`, or with `rhs_transposed` `lhs · rhsᵀ` (the gradients then in the operands' own
/// layouts: `grad · rhs` and `gradᵀ · lhs`).
#[derive(Debug)]
struct Matmul {
    rhs_transposed: bool,
}

/// The left operand (only where the right one takes a gradient), the right one (only where the
/// left one does), and the algorithm.
type SavedState = (Option<NodeId>, Option<NodeId>, MatmulChoice);

impl<I: Backend> Backward<I, 2> for Matmul {
    type State = SavedState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_lhs, node_rhs] = ops.parents;
        let grad: FloatTensor<I> = grads.consume::<I>(&ops.node);
        let (lhs_state, rhs_state, choice) = ops.state;
        let lhs: Option<FloatTensor<I>> = lhs_state.map(|s| cp.retrieve_node_output(s));
        let rhs: Option<FloatTensor<I>> = rhs_state.map(|s| cp.retrieve_node_output(s));
        let device = I::float_device(&grad);
        let transposed = self.rhs_transposed;
        crate::profile::span::<I, _>(&device, "linear bwd", || {
            if let (Some(node), Some(rhs)) = (node_lhs, rhs) {
                let rhs = if transposed {
                    rhs
                } else {
                    I::float_transpose(rhs)
                };
                let d_lhs = compute::<I>(grad.clone(), rhs, choice);
                grads.register::<I>(node.id, d_lhs);
            }
            if let (Some(node), Some(lhs)) = (node_rhs, lhs) {
                let d_rhs = if transposed {
                    compute::<I>(I::float_transpose(grad), lhs, choice)
                } else {
                    compute::<I>(I::float_transpose(lhs), grad, choice)
                };
                grads.register::<I>(node.id, d_rhs);
            }
        });
    }
}

fn tracked<I: Backend, C: CheckpointStrategy, const D: usize>(
    lhs: Tensor<Autodiff<I, C>, D>,
    rhs: Tensor<Autodiff<I, C>, D>,
    choice: MatmulChoice,
    rhs_transposed: bool,
) -> FloatTensor<Autodiff<I, C>> {
    let (lhs, rhs) = (float(lhs), float(rhs));
    let product = |lhs, rhs| {
        let rhs = if rhs_transposed {
            I::float_transpose(rhs)
        } else {
            rhs
        };
        compute::<I>(lhs, rhs, choice)
    };
    match (Matmul { rhs_transposed })
        .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let lhs_state = (!rhs.node.requirement.is_none()).then(|| prep.checkpoint(&lhs));
            let rhs_state = (!lhs.node.requirement.is_none()).then(|| prep.checkpoint(&rhs));
            let out = product(lhs.primitive, rhs.primitive);
            prep.finish((lhs_state, rhs_state, choice), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(product(lhs.primitive, rhs.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use super::MatmulChoice;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut names = std::collections::HashSet::new();
        for &c in MatmulChoice::ALL {
            assert_eq!(MatmulChoice::from_name(c.name()), Some(c));
            assert!(names.insert(c.name()));
        }
        assert_eq!(MatmulChoice::from_name("fastest"), None);
        // The setting stores the discriminant and reads it back through ALL.
        for (i, &c) in MatmulChoice::ALL.iter().enumerate() {
            assert_eq!(c as usize, i);
        }
    }
}
