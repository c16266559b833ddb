//! Scaled dot-product attention with its own backward.
//!
//! Under `Autodiff`, Burn 0.21 decomposes attention into matmul → softmax → matmul on the autodiff
//! graph: the forward materialises the `[batch, heads, n_q, n_k]` scores with every op's saved
//! inputs (one score-sized tensor per op, kept until the backward), and the inner backend's flash
//! attention kernel never runs while training. Here attention is one autodiff op instead:
//!
//! - on CUDA and wgpu, Likeness' flash-attention kernels ([`super::cube::attention`]; on tensor
//!   cores in bf16 and f16 where the device has them, [`TensorCores`]) both ways:
//!   the forward saves q, k, v, the output and the rows' log-sum-exp, the backward never writes a
//!   score matrix (also the inference forward there, without autotuning); the attentions they
//!   leave to Burn (the smaller ones, [`KernelPolicy`]) take a forward by Burn's kernels under
//!   [`FlashPolicy`] ([`super::cube::flash`]: its tensor-core flash kernel chosen directly in half
//!   precision in builds without autotune; always on contiguous copies) and the blocked backward
//!   below;
//! - elsewhere (Flex, or where the kernels do not apply or are switched off): forward by the inner
//!   backend's own `attention`, saving q, k, v and the output; backward with the scores recomputed
//!   in blocks of query rows small enough to bound memory, softmax in f32, and the gradients
//!   following the flash-attention identities
//!   `dV = Pᵀ·dO`, `dS = P ∘ (dO·Vᵀ − rowsum(dO ∘ O))`, `dQ = s·dS·K`, `dK = s·dSᵀ·Q`.
//!
//! Which backends take this path: see the [module](super) notes.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::{AttentionModuleOptions, FloatTensor};

use super::{ToDtype, downcast, float, for_each_autodiff_backend, wrap};

/// Scores computed at once in the backward: blocks of query rows are sized so that one block's
/// `[batch, heads, rows, n_k]` f32 scores stay under this many elements (128 MiB; about four
/// such tensors live at once, so SD 1.5's largest attention at 512 px, batch 1, takes four blocks
/// of 1024 rows and ~0.5 GiB of transient memory).
pub const BACKWARD_BLOCK_ELEMENTS: usize = 1 << 25;

/// softmax(q·kᵀ / √d)·v over `[batch, heads, tokens, head_dim]`, causal (bottom-right aligned,
/// as Burn's) when asked; differentiated by [`backward`] on the autodiff backends Likeness runs.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    let fused = if super::enabled() {
        dispatch::<B>(&q, &k, &v, options)
            .or_else(|| kernel_forward(&q, &k, &v, causal).map(|r| r.0))
            .or_else(|| flash_forward(&q, &k, &v, causal))
    } else {
        None
    };
    match fused {
        Some(out) => out,
        None => burn::tensor::module::attention(q, k, v, None, None, options),
    }
}

fn dispatch<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    options: AttentionModuleOptions,
) -> Option<Tensor<B, 4>> {
    macro_rules! attempt {
        ($inner:ty, $strategy:ty) => {
            if let Some(out) = attempt::<B, $inner, $strategy>(q, k, v, options) {
                return Some(out);
            }
        };
    }
    for_each_autodiff_backend!(attempt);
    None
}

/// Runs the op if `B` is `Autodiff<I, C>`.
fn attempt<B: Backend, I: Backend, C: CheckpointStrategy>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    options: AttentionModuleOptions,
) -> Option<Tensor<B, 4>> {
    type A<I, C> = Autodiff<I, C>;
    let (q, k, v) = (
        downcast::<B, A<I, C>, 4>(q)?,
        downcast::<B, A<I, C>, 4>(k)?,
        downcast::<B, A<I, C>, 4>(v)?,
    );
    let out = wrap::<A<I, C>, 4>(fused::<I, C>(float(q), float(k), float(v), options));
    downcast(&out)
}

#[derive(Debug)]
struct FusedAttention;

/// Scores per head (`n_q · n_k`) from which the CubeCL kernels take an attention under the default
/// [`KernelPolicy::BySize`]. Measured on an H100 in bf16 at SD 1.5's shapes, batch 2, 8 heads
/// (`docs/perf.md`, session 9), forward + backward: at 4096 × 4096 keys, head dim 40, the kernels
/// took 16.1 ms against 22.2 ms for Burn's ops (score-block recompute in the backward); at
/// 1024 × 1024 / 80 6.0 against 2.5, at 256 × 256 / 160 13.1 against 1.8, and at 4096 × 77 / 40
/// (cross-attention) 5.1 against 2.8. The kernels parallelise over query rows only, so small
/// attentions leave most of the GPU idle; large ones are where they win, and where materialising
/// the scores would cost the most memory.
pub const KERNEL_MIN_SCORES: usize = 1 << 22;

named_choices! {
    /// Which attentions the CubeCL kernels take (where they apply at all).
    pub enum KernelPolicy {
        /// Those with at least [`KERNEL_MIN_SCORES`] scores per head (the default).
        BySize = "by-size",
        /// Every one (`LIKENESS_ATTENTION_KERNEL=always`; the kernels' tests and benchmarks).
        Always = "always",
        /// None (`LIKENESS_ATTENTION_KERNEL=never`): every attention to Burn's kernels under the
        /// [`FlashPolicy`] and the blocked backward — on tensor cores in half precision, where the
        /// kernels here run none (to measure one against the other at SD's largest attention).
        Never = "never",
    }
}

static POLICY: super::Setting = super::Setting::new();

/// The policy in force: set by [`set_kernel_policy`], else `LIKENESS_ATTENTION_KERNEL` (a name
/// of [`KernelPolicy::name`]; an unknown one is warned about and ignored), else
/// [`KernelPolicy::BySize`].
pub fn kernel_policy() -> KernelPolicy {
    super::named_choice(
        &POLICY,
        "LIKENESS_ATTENTION_KERNEL",
        KernelPolicy::ALL,
        KernelPolicy::name,
    )
}

/// Sets the policy for the rest of the process.
pub fn set_kernel_policy(policy: KernelPolicy) {
    POLICY.set(policy as u8);
}

/// Whether the kernels take an attention of `n_q` queries over `n_k` keys under `policy`.
pub fn kernels_take(policy: KernelPolicy, n_q: usize, n_k: usize) -> bool {
    match policy {
        KernelPolicy::Always => true,
        KernelPolicy::Never => false,
        KernelPolicy::BySize => n_q.saturating_mul(n_k) >= KERNEL_MIN_SCORES,
    }
}

named_choices! {
    /// Whether Likeness' attention kernels run on tensor cores where they can: bf16 and f16
    /// attentions on a device with 16×16×16 tiles of that type into f32
    /// ([`super::cube::attention_mma`]); the scalar kernels otherwise.
    pub enum TensorCores {
        /// Where the device and the dtype allow (the default).
        On = "on",
        /// Never (`LIKENESS_ATTENTION_TENSOR_CORES=off`): the scalar kernels, to measure one
        /// against the other.
        Off = "off",
    }
}

static TENSOR_CORES: super::Setting = super::Setting::new();

/// Whether the kernels use tensor cores: set by [`set_tensor_cores`], else
/// `LIKENESS_ATTENTION_TENSOR_CORES` (`on`, `off`), else on.
pub fn tensor_cores() -> TensorCores {
    super::named_choice(
        &TENSOR_CORES,
        "LIKENESS_ATTENTION_TENSOR_CORES",
        TensorCores::ALL,
        TensorCores::name,
    )
}

/// Sets [`tensor_cores`] for the rest of the process.
pub fn set_tensor_cores(choice: TensorCores) {
    TENSOR_CORES.set(choice as u8);
}

/// How many forward and backward passes Likeness' kernels ran on tensor cores in this process
/// (all zero without the CubeCL backends).
pub fn tensor_core_counts() -> [u64; 2] {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::attention::tensor_core_counts();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    [0; 2]
}

/// Which of Burn's attention kernels Likeness launches, on CubeCL backends, for the attentions its
/// own kernels do not take ([`super::cube::flash`]; always on contiguous copies of q, k and v,
/// which Burn 0.21's flash kernels need).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashPolicy {
    /// Burn's own choice: autotuned among its flash kernels and its composed attention in builds
    /// with the `autotune` feature, the composed attention (scores written out) without.
    Off,
    /// Burn's tensor-core (`cmma`) flash kernel for bf16 and f16 attentions, its composed
    /// attention where that kernel refuses the shape or the device; f32 as under
    /// [`FlashPolicy::Off`].
    Accelerated,
    /// Burn's unit-tile flash kernel (no tensor cores) for every dtype: to test and measure.
    Unit,
}

static FLASH: super::Setting = super::Setting::new();

/// The flash policy in force: set by [`set_flash_policy`], else `LIKENESS_FLASH` (`accelerated`,
/// `unit`, `off`), else [`FlashPolicy::Accelerated`] in builds without the `autotune` feature and
/// [`FlashPolicy::Off`] in builds with it (where Burn's autotune picks among the same kernels).
pub fn flash_policy() -> FlashPolicy {
    let from_env = || match std::env::var("LIKENESS_FLASH").as_deref() {
        Ok("accelerated") => FlashPolicy::Accelerated,
        Ok("unit") => FlashPolicy::Unit,
        Ok("off") => FlashPolicy::Off,
        _ if cfg!(feature = "autotune") => FlashPolicy::Off,
        _ => FlashPolicy::Accelerated,
    };
    match FLASH.get(|| from_env() as u8) {
        0 => FlashPolicy::Off,
        1 => FlashPolicy::Accelerated,
        _ => FlashPolicy::Unit,
    }
}

/// Sets the flash policy for the rest of the process.
pub fn set_flash_policy(policy: FlashPolicy) {
    FLASH.set(policy as u8);
}

/// How many attentions [`flash`] ran in this process (the routing of [`attention`] included):
/// `[tensor-core flash kernel, unit-tile flash kernel, composed attention after the kernel
/// refused the shape, Burn's own choice]` (all zero without the CubeCL backends).
pub fn flash_counts() -> [u64; 4] {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::flash::counts();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    [0; 4]
}

/// softmax(q·kᵀ / √d [causal])·v on a CubeCL backend by Burn's kernels under `policy`, without
/// autodiff, on contiguous copies of q, k and v; `None` off the CubeCL backends, with the kernels
/// switched off, or for inputs of mixed dtypes.
pub fn flash<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    causal: bool,
    policy: FlashPolicy,
) -> Option<Tensor<B, 4>> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::flash::forward(q, k, v, causal, policy);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (q, k, v, causal, policy);
        None
    }
}

/// [`flash`] under the policy in force.
fn flash_forward<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    causal: bool,
) -> Option<Tensor<B, 4>> {
    flash(q, k, v, causal, flash_policy())
}

/// The CubeCL kernels' forward (output, log-sum-exp), where they apply and the policy gives them
/// the attention.
fn kernel_forward<I: Backend>(
    q: &Tensor<I, 4>,
    k: &Tensor<I, 4>,
    v: &Tensor<I, 4>,
    causal: bool,
) -> Option<(Tensor<I, 4>, Tensor<I, 3>)> {
    if !kernels_take(kernel_policy(), q.dims()[2], k.dims()[2]) {
        return None;
    }
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::attention::forward(q, k, v, causal);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (q, k, v, causal);
        None
    }
}

/// The CubeCL kernels' backward, given the forward's log-sum-exp.
fn kernel_backward<I: Backend>(
    qkv: [&Tensor<I, 4>; 3],
    out: &Tensor<I, 4>,
    lse: &Tensor<I, 3>,
    grad: &Tensor<I, 4>,
    causal: bool,
) -> Option<[Tensor<I, 4>; 3]> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::attention::backward(qkv, out, lse, grad, causal);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (qkv, out, lse, grad, causal);
        None
    }
}

/// What the backward keeps: q, k, v (checkpointed), the output, the kernels' log-sum-exp when
/// they ran the forward, and whether the attention is causal.
type SavedState<I> = (
    NodeId,
    NodeId,
    NodeId,
    FloatTensor<I>,
    Option<FloatTensor<I>>,
    bool,
);

impl<I: Backend> Backward<I, 3> for FusedAttention {
    type State = SavedState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let (q_state, k_state, v_state, out, lse, causal) = ops.state;
        let q = wrap::<I, 4>(cp.retrieve_node_output(q_state));
        let k = wrap::<I, 4>(cp.retrieve_node_output(k_state));
        let v = wrap::<I, 4>(cp.retrieve_node_output(v_state));
        let (out, grad) = (wrap::<I, 4>(out), wrap::<I, 4>(grad));
        let device = q.device();
        let [dq, dk, dv] = crate::profile::span::<I, _>(&device, "attention bwd", || {
            let kernels =
                lse.and_then(|lse| kernel_backward([&q, &k, &v], &out, &wrap(lse), &grad, causal));
            match kernels {
                Some(grads) => grads,
                None => backward(q, k, v, out, grad, causal, BACKWARD_BLOCK_ELEMENTS),
            }
        });
        if let Some(node) = node_q {
            grads.register::<I>(node.id, float(dq));
        }
        if let Some(node) = node_k {
            grads.register::<I>(node.id, float(dk));
        }
        if let Some(node) = node_v {
            grads.register::<I>(node.id, float(dv));
        }
    }
}

fn fused<I: Backend, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<I, C>>,
    k: FloatTensor<Autodiff<I, C>>,
    v: FloatTensor<Autodiff<I, C>>,
    options: AttentionModuleOptions,
) -> FloatTensor<Autodiff<I, C>> {
    match FusedAttention
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let q_state = prep.checkpoint(&q);
            let k_state = prep.checkpoint(&k);
            let v_state = prep.checkpoint(&v);
            let (out, lse) = inner_forward::<I>(q.primitive, k.primitive, v.primitive, options);
            prep.finish(
                (
                    q_state,
                    k_state,
                    v_state,
                    out.clone(),
                    lse,
                    options.is_causal,
                ),
                out,
            )
        }
        OpsKind::UnTracked(prep) => {
            let (out, _) = inner_forward::<I>(q.primitive, k.primitive, v.primitive, options);
            prep.finish(out)
        }
    }
}

/// The forward on the inner backend: the kernels' (with the log-sum-exp) where they apply, else
/// the backend's own attention.
fn inner_forward<I: Backend>(
    q: FloatTensor<I>,
    k: FloatTensor<I>,
    v: FloatTensor<I>,
    options: AttentionModuleOptions,
) -> (FloatTensor<I>, Option<FloatTensor<I>>) {
    let (qt, kt, vt) = (wrap::<I, 4>(q), wrap::<I, 4>(k), wrap::<I, 4>(v));
    match kernel_forward(&qt, &kt, &vt, options.is_causal) {
        Some((out, lse)) => (float(out), Some(float(lse))),
        None => match flash_forward(&qt, &kt, &vt, options.is_causal) {
            Some(out) => (float(out), None),
            None => (
                I::attention(float(qt), float(kt), float(vt), None, None, options),
                None,
            ),
        },
    }
}

/// Gradients of `out = softmax(q·kᵀ/√d [causal])·v` with respect to q, k and v, given `out` and
/// its gradient; scores are recomputed in blocks of query rows of at most `block_elements`
/// elements each. The products run in v's dtype, softmax and the row sums in f32 (on the CubeCL
/// backends one launch per block, [`score_grads`]); each gradient has its input's dtype. One
/// block (the usual case) writes its gradients directly; several accumulate `dK` and `dV` in
/// f32.
pub fn backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    grad: Tensor<B, 4>,
    causal: bool,
    block_elements: usize,
) -> [Tensor<B, 4>; 3] {
    let [b, h, n_q, d] = q.dims();
    let n_k = k.dims()[2];
    let (q_dtype, k_dtype, v_dtype) = (q.dtype(), k.dtype(), v.dtype());
    let work = v_dtype;
    let kt = k.clone().to_dtype(work).swap_dims(2, 3);
    let vt = v.clone().to_dtype(work).swap_dims(2, 3);
    let k_w = k.to_dtype(work);
    let rows = (block_elements / (b * h * n_k).max(1)).clamp(1, n_q.max(1));
    let block = |start: usize, end: usize| {
        let rows = |t: &Tensor<B, 4>| t.clone().slice([0..b, 0..h, start..end, 0..d]);
        let q_blk = rows(&q).to_dtype(work);
        let do_blk = rows(&grad).to_dtype(work);
        let scores = q_blk.clone().matmul(kt.clone());
        let dp = do_blk.clone().matmul(vt.clone());
        let at = Block {
            start,
            end,
            n_q,
            causal,
        };
        let (p, ds) = score_grads(scores, dp, rows(&out), rows(&grad), at);
        let dv = p.swap_dims(2, 3).matmul(do_blk);
        let dq = ds.clone().matmul(k_w.clone());
        let dk = ds.swap_dims(2, 3).matmul(q_blk);
        (dq, dk, dv)
    };
    if rows >= n_q {
        let (dq, dk, dv) = block(0, n_q);
        return [
            dq.to_dtype(q_dtype),
            dk.to_dtype(k_dtype),
            dv.to_dtype(v_dtype),
        ];
    }
    let f32_of = |t: Tensor<B, 4>| t.to_dtype(DType::F32);
    let mut dq_blocks = Vec::with_capacity(n_q.div_ceil(rows));
    let mut sums: Option<(Tensor<B, 4>, Tensor<B, 4>)> = None;
    let mut start = 0;
    while start < n_q {
        let end = (start + rows).min(n_q);
        let (dq, dk, dv) = block(start, end);
        dq_blocks.push(dq);
        let (dk, dv) = (f32_of(dk), f32_of(dv));
        sums = Some(match sums {
            Some((sk, sv)) => (sk + dk, sv + dv),
            None => (dk, dv),
        });
        start = end;
    }
    let (dk, dv) = sums.expect("n_q > rows ≥ 1: at least two blocks");
    [
        Tensor::cat(dq_blocks, 2).to_dtype(q_dtype),
        dk.to_dtype(k_dtype),
        dv.to_dtype(v_dtype),
    ]
}

/// How many blocks of [`backward`] have had their softmax step done by the CubeCL kernel in this
/// process (the rest by Burn's ops).
pub fn score_rows_runs() -> u64 {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return super::cube::score_rows_runs();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    0
}

/// Which query rows a block of the backward holds: `start..end` of `n_q`.
#[derive(Debug, Clone, Copy)]
struct Block {
    start: usize,
    end: usize,
    n_q: usize,
    causal: bool,
}

/// `(P, s·dS)` for a block's raw scores `q·kᵀ` and `dP = dO·vᵀ` (`[b, h, rows, n_k]`, in the
/// products' dtype) and its rows of `out` and `dO`, in the products' dtype: `P` the softmax of
/// `s·q·kᵀ` (`s = 1/√d`), `dS = P ∘ (dP − rowsum(dO ∘ O))`, both computed in f32 — by one
/// CubeCL launch where it applies, else by Burn's ops. The scale is folded into `dS` before its
/// rounding, so `dQ = (s·dS)·K` and `dK = (s·dS)ᵀ·Q` take no further pass.
fn score_grads<B: Backend>(
    scores: Tensor<B, 4>,
    dp: Tensor<B, 4>,
    out: Tensor<B, 4>,
    grad: Tensor<B, 4>,
    at: Block,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, h, rows, n_k] = scores.dims();
    let d = out.dims()[3];
    let scale = 1.0 / (d as f64).sqrt();
    let work = scores.dtype();
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    {
        let of = super::cube::Rows {
            heads: b * h,
            per_head: rows,
            first: at.start,
            n_q: at.n_q,
            n_k,
            d,
            scale: scale as f32,
            causal: at.causal,
        };
        let flat = |t: &Tensor<B, 4>| {
            let [_, _, r, c] = t.dims();
            t.clone().reshape([b * h, r, c])
        };
        if let Some((p, ds)) =
            super::cube::score_rows(flat(&scores), flat(&dp), flat(&out), flat(&grad), of)
        {
            return (p.reshape([b, h, rows, n_k]), ds.reshape([b, h, rows, n_k]));
        }
    }
    let f32_of = |t: Tensor<B, 4>| t.to_dtype(DType::F32);
    // Δ = rowsum(dO ∘ O): the softmax backward's subtrahend, [b, h, rows, 1].
    let delta = (f32_of(grad) * f32_of(out)).sum_dim(3);
    let mut scores = f32_of(scores) * scale;
    if at.causal {
        let device = scores.device();
        let mask = causal_mask::<B>(at.start, at.end, at.n_q, n_k, &device);
        scores = scores.mask_fill(mask.expand([b, h, rows, n_k]), f32::NEG_INFINITY);
    }
    let p = burn::tensor::activation::softmax(scores, 3);
    let ds = p.clone() * (f32_of(dp) - delta) * scale;
    (p.to_dtype(work), ds.to_dtype(work))
}

/// `[1, 1, end - start, n_k]`, true where a query row may not see a key: column > row + n_k − n_q.
fn causal_mask<B: Backend>(
    start: usize,
    end: usize,
    n_q: usize,
    n_k: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let offset = n_k as i64 - n_q as i64;
    let rows = Tensor::<B, 1, Int>::arange(start as i64..end as i64, device)
        .reshape([end - start, 1])
        .add_scalar(offset);
    let cols = Tensor::<B, 1, Int>::arange(0..n_k as i64, device).reshape([1, n_k]);
    rows.lower(cols).reshape([1, 1, end - start, n_k])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default gives the kernels the attentions they won on the H100 and leaves the rest to
    /// Burn's ops (the measurements at [`KERNEL_MIN_SCORES`]).
    #[test]
    fn by_size_follows_the_measurements() {
        let by_size = |n_q, n_k| kernels_take(KernelPolicy::BySize, n_q, n_k);
        assert!(
            by_size(4096, 4096),
            "SD 1.5 self-attention at 64×64 latents"
        );
        assert!(by_size(9216, 9216), "at 96×96 latents (768 px)");
        assert!(!by_size(1024, 1024), "at 32×32 latents");
        assert!(!by_size(256, 256), "at 16×16 latents");
        assert!(!by_size(4096, 77), "cross-attention to the prompt");
        assert!(!by_size(64, 64), "the built-in world's UNet");
        assert!(by_size(usize::MAX, 2), "no overflow");
        assert!(kernels_take(KernelPolicy::Always, 1, 1));
        assert!(!kernels_take(KernelPolicy::Never, 9216, 9216));
    }
}
