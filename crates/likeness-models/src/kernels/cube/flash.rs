//! Burn's attention kernels launched by Likeness for the attentions its own kernels
//! ([`super::attention`]) do not take: Burn's flash kernels (CubeCL's `cubek-attention`) with a
//! strategy chosen here instead of through Burn's autotune, or Burn's own choice — always on
//! contiguous copies of q, k and v.
//!
//! - **The strategy.** A build without Burn's `autotune` feature otherwise runs Burn's *composed*
//!   attention for them (`q·kᵀ`, softmax, `·v`: the score matrix written out): 1.4 ms for SD 1.5's
//!   second-level self-attention `[2, 8, 1024, 80]` in bf16 on an H100 against 0.1 ms for
//!   PyTorch's SDPA (`docs/perf.md`, session 9). Burn's autotune picks among the composed
//!   attention, the tensor-core (`cmma`) flash kernel at 2, 4 or 8 planes and the unit-tile flash
//!   kernel, at a tuning cost on the first call of every shape. Under
//!   [`FlashPolicy::Accelerated`](crate::kernels::attention::FlashPolicy::Accelerated) (the default
//!   without autotune) half-precision attentions go to the tensor-core kernel at 4 planes (2 and 1
//!   where the query rows do not divide into 64 or 32), with head dims its tiles do not divide
//!   (SD 1.5's 40; its instructions take 16 at a time) padded with zeros to the next multiple of
//!   16 and q scaled to keep the softmax's 1/√d, and where it refuses the shape (no `cmma` on the
//!   device) to the composed attention;
//!   under [`FlashPolicy::Unit`](crate::kernels::attention::FlashPolicy::Unit) to the unit-tile
//!   kernel, which needs no tensor cores (what the launch is tested with on lavapipe). The flash
//!   kernels stage q, k, v and the probabilities in f16 tiles with f32 sums, as Burn launches them.
//! - **The layout.** Burn 0.21's flash kernels misread inputs whose batch and head strides are
//!   not in the usual order — exactly what the models pass (heads split from `[b, n, h·d]` and
//!   swapped into place): on lavapipe every head after the first came out wrong (relative error
//!   0.56–1.03) while a contiguous copy gave the right numbers. Burn's autotune may pick those
//!   kernels for such inputs, so Burn's own choice too runs here on contiguous copies
//!   ([`FlashPolicy::Off`](crate::kernels::attention::FlashPolicy::Off), the default with
//!   autotune). A copy of q, k and v costs a fraction of the attention.

use burn::prelude::*;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::attention::{AttentionStrategy, attention};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubek_attention::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

use super::{Apply, KernelOp, enabled};
use crate::kernels::attention::FlashPolicy;
use crate::kernels::{float, wrap};

/// Attentions run by each path in this process (see [`counts`]).
static RUNS: super::Tally<4> = super::Tally::new();

/// How many attentions each path has run in this process: `[tensor-core flash kernel, unit-tile
/// flash kernel, Burn's composed attention after the kernel refused the shape, Burn's own choice
/// (autotuned, or composed without autotune)]`.
pub fn counts() -> [u64; 4] {
    RUNS.get()
}

fn count(path: usize) {
    RUNS.add(path);
}

/// Planes per cube tried in turn for the tensor-core kernel: 4 first (Burn's autotune tries 2, 4
/// and 8); a cube covers `planes` tiles of query rows, which must divide the query count.
const PLANES: [u8; 3] = [4, 2, 1];

/// The flash kernels' head dims are padded to a multiple of this (see [`FlashOp`]).
const HEAD_TILE: usize = 16;

/// `x` with zeros appended along its last dimension up to `to`, contiguous.
fn pad_last<R: CubeRuntime>(x: Tensor<super::Inner<R>, 4>, to: usize) -> CubeTensor<R> {
    let d = x.dims()[3];
    let zeros = x.clone().narrow(3, 0, 1).zeros_like().repeat_dim(3, to - d);
    super::primitive::<R, 4>(Tensor::cat(vec![x, zeros], 3))
}

/// Which kernels [`FlashOp`] tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    TensorCores,
    Unit,
    /// Burn's own choice of attention (`AttentionStrategy::default()`).
    Burn,
}

#[derive(Debug, Clone, Copy)]
struct FlashOp {
    causal: bool,
    path: Path,
}

impl KernelOp<3, 1> for FlashOp {
    fn run<R: CubeRuntime>(&self, inputs: [CubeTensor<R>; 3]) -> [CubeTensor<R>; 1] {
        // Burn 0.21's flash kernels misread q, k and v whose batch and head strides are not in
        // the usual order — as the models hand them over, heads split from `[b, n, h·d]` and
        // swapped into place: every head past the first came out wrong on lavapipe (the test
        // `flash`). One copy each into the plain layout first.
        let [q0, k0, v0] = inputs.map(into_contiguous);
        // The flash kernels' tiles must divide the head dims (16 for the tensor cores' bf16 and
        // f16 instructions): SD 1.5's 40 is padded with zeros to 48, q scaled so that the
        // kernel's 1/√48 comes out as 1/√40, and the output's padding cut off.
        let (d, d_v) = (q0.meta.shape()[3], v0.meta.shape()[3]);
        let padded = self.path != Path::Burn && !(d % HEAD_TILE == 0 && d_v % HEAD_TILE == 0);
        let (q, k, v) = if padded {
            let (dp, dvp) = (
                d.next_multiple_of(HEAD_TILE),
                d_v.next_multiple_of(HEAD_TILE),
            );
            let scale = (dp as f64 / d as f64).sqrt();
            (
                pad_last(super::tensor::<R, 4>(q0.clone()).mul_scalar(scale), dp),
                pad_last(super::tensor::<R, 4>(k0.clone()), dp),
                pad_last(super::tensor::<R, 4>(v0.clone()), dvp),
            )
        } else {
            (q0.clone(), k0.clone(), v0.clone())
        };
        let unpad = |out: CubeTensor<R>| match padded {
            true => into_contiguous(super::primitive::<R, 4>(
                super::tensor::<R, 4>(out).narrow(3, 0, d_v),
            )),
            false => out,
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: self.causal,
        };
        let launch = |strategy| {
            attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                options,
                strategy,
            )
        };
        let first = match self.path {
            Path::Burn => {
                let out = launch(AttentionStrategy::default())
                    .unwrap_or_else(|e| panic!("attention {self:?}: {e:?}"));
                count(3);
                return [out];
            }
            Path::Unit => launch(AttentionStrategy::FlashUnit).ok(),
            Path::TensorCores => PLANES.into_iter().find_map(|num_planes| {
                let strategy = BlackboxAcceleratedStrategy {
                    num_planes,
                    seq_q: 1,
                    seq_kv: 1,
                };
                launch(AttentionStrategy::FlashBlackboxAccelerated(strategy)).ok()
            }),
        };
        if let Some(out) = first {
            count(if self.path == Path::Unit { 1 } else { 0 });
            return [unpad(out)];
        }
        count(2);
        let out = attention(q0, k0, v0, None, None, options, AttentionStrategy::Fallback)
            .unwrap_or_else(|e| panic!("attention {self:?}: {e:?}"));
        [out]
    }
}

/// softmax(q·kᵀ / √d [causal])·v over `[batch, heads, tokens, head_dim]` on contiguous copies of
/// q, k and v, by Burn's flash kernels under `policy` (see the module notes) — under
/// [`FlashPolicy::Off`], and for f32 under [`FlashPolicy::Accelerated`] (tensor cores would round
/// it to tf32; PyTorch's flash kernel takes half precision only too), by Burn's own choice of
/// kernel; `None` where backend `I` is not a CubeCL backend or the kernels are off, and where q,
/// k and v differ in dtype. A causal mask goes to Burn's own choice unless it is square (where its
/// alignment cannot differ from Burn's, bottom-right).
pub fn forward<I: Backend>(
    q: &Tensor<I, 4>,
    k: &Tensor<I, 4>,
    v: &Tensor<I, 4>,
    causal: bool,
    policy: FlashPolicy,
) -> Option<Tensor<I, 4>> {
    let dtype = q.dtype();
    if k.dtype() != dtype || v.dtype() != dtype || !enabled() || !super::applies::<I>() {
        return None;
    }
    let [b, h, n_q, _] = q.dims();
    let half = matches!(dtype, DType::BF16 | DType::F16);
    let masked_off_square = causal && n_q != k.dims()[2];
    let path = match policy {
        _ if masked_off_square => Path::Burn,
        FlashPolicy::Off => Path::Burn,
        FlashPolicy::Accelerated if half => Path::TensorCores,
        FlashPolicy::Accelerated => Path::Burn,
        FlashPolicy::Unit => Path::Unit,
    };
    let d_v = v.dims()[3];
    let [out] = Apply::<I, 3, 1, _> {
        name: "likeness_flash_attention",
        inputs: [float(q.clone()), float(k.clone()), float(v.clone())],
        outputs: [(Shape::new([b, h, n_q, d_v]), dtype)],
        op: FlashOp { causal, path },
    }
    .apply()?;
    Some(wrap::<I, 4>(out))
}
