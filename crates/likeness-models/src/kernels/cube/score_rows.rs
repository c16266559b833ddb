//! The softmax step of the blocked attention backward ([`crate::kernels::attention::backward`])
//! as one launch: a cube per query row reads the row's raw scores `S = q·kᵀ` and `dP = dO·vᵀ`
//! (both in the products' dtype), and the row's `O` and `dO`, and writes
//!
//! `P = softmax(s·S [causal])` and `dS = s · P ∘ (dP − Δ)`, `Δ = rowsum(dO ∘ O)`,
//!
//! in the products' dtype, computing in f32 (the row's maximum, its sum of exponentials and `Δ`
//! are cube reductions). Burn's ops take some fifteen launches for the same: casts of `S` and
//! `dP` to f32, the scale, the softmax's reductions and passes, `Δ`'s product and sum, and the
//! casts back.

use burn::prelude::*;
use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use super::{Apply, KernelOp, applies, empty, enabled, row_launch};
use crate::kernels::{ToDtype, float, wrap};

mod device {
    use cubecl::prelude::*;

    use super::super::device::{cube_max, cube_sum};

    /// Row `row` of `[rows, n_k]` scores (rows ordered as (batch·head, query of the block)):
    /// `p` and `ds` as the module notes write them. Under `causal`, query `first + row % per_head`
    /// of `n_q` sees the keys `j` with `j + n_q ≤ query + n_k` (bottom-right aligned, as Burn's
    /// mask); the others get `p = ds = 0`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn score_rows_kernel<F: Float>(
        s: &Tensor<F>,
        dp: &Tensor<F>,
        out: &Tensor<F>,
        grad: &Tensor<F>,
        p: &mut Tensor<F>,
        ds: &mut Tensor<F>,
        rows: u32,
        n_k: u32,
        d: u32,
        scale: f32,
        per_head: u32,
        first: u32,
        n_q: u32,
        #[comptime] block: u32,
        #[comptime] causal: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS;
        // The same for every unit of a cube, so the barriers inside stay uniform.
        if row < rows as usize {
            let mut shared = SharedMemory::<f32>::new(block as usize);
            let base = row * n_k as usize;
            let mut seen = n_k as usize;
            if causal {
                let query = (first as usize + row % per_head as usize) + n_k as usize;
                seen = 0;
                if query >= n_q as usize {
                    seen = min(query - n_q as usize + 1, n_k as usize);
                }
            }
            let mut local = f32::new(-3.0e38);
            let mut j = UNIT_POS as usize;
            while j < seen {
                local = max(local, f32::cast_from(s[base + j]) * scale);
                j += CUBE_DIM as usize;
            }
            let m = cube_max(&mut shared, local);
            let mut sum = f32::new(0.0);
            j = UNIT_POS as usize;
            while j < seen {
                sum += (f32::cast_from(s[base + j]) * scale - m).exp();
                j += CUBE_DIM as usize;
            }
            let inverse = f32::new(1.0) / cube_sum(&mut shared, sum);
            let row_base = row * d as usize;
            let mut dot = f32::new(0.0);
            let mut c = UNIT_POS as usize;
            while c < d as usize {
                dot += f32::cast_from(out[row_base + c]) * f32::cast_from(grad[row_base + c]);
                c += CUBE_DIM as usize;
            }
            let delta = cube_sum(&mut shared, dot);
            j = UNIT_POS as usize;
            while j < n_k as usize {
                let mut prob = f32::new(0.0);
                if j < seen {
                    prob = (f32::cast_from(s[base + j]) * scale - m).exp() * inverse;
                }
                p[base + j] = F::cast_from(prob);
                ds[base + j] = F::cast_from(prob * (f32::cast_from(dp[base + j]) - delta) * scale);
                j += CUBE_DIM as usize;
            }
        }
    }
}

/// The block's shape and mask: rows `first..first + per_head` of `n_q` queries in each of
/// `heads` batch·heads, over `n_k` keys of head dim `d`.
#[derive(Debug, Clone, Copy)]
pub(in crate::kernels) struct Rows {
    pub heads: usize,
    pub per_head: usize,
    pub first: usize,
    pub n_q: usize,
    pub n_k: usize,
    pub d: usize,
    pub scale: f32,
    pub causal: bool,
}

/// `[s, dp, out, grad]` → `[p, ds]`.
#[derive(Debug, Clone, Copy)]
struct ScoreRowsOp(Rows);

impl KernelOp<4, 2> for ScoreRowsOp {
    fn run<R: CubeRuntime>(&self, inputs: [CubeTensor<R>; 4]) -> [CubeTensor<R>; 2] {
        let r = self.0;
        let [s, dp, out, grad] = inputs.map(into_contiguous);
        let rows = r.heads * r.per_head;
        let dtype = s.dtype;
        let p = empty(&s, Shape::new([rows, r.n_k]), dtype);
        let ds = empty(&s, Shape::new([rows, r.n_k]), dtype);
        let (count, dim, block) = row_launch(&s, rows, r.n_k);
        device::score_rows_kernel::launch::<R>(
            &s.client.clone(),
            count,
            dim,
            s.into_tensor_arg(),
            dp.into_tensor_arg(),
            out.into_tensor_arg(),
            grad.into_tensor_arg(),
            p.clone().into_tensor_arg(),
            ds.clone().into_tensor_arg(),
            rows as u32,
            r.n_k as u32,
            r.d as u32,
            r.scale,
            r.per_head as u32,
            r.first as u32,
            r.n_q as u32,
            block,
            r.causal,
            dtype.into(),
        );
        RUNS.add(0);
        [p, ds]
    }
}

/// Launches of the kernel in this process.
static RUNS: super::Tally<1> = super::Tally::new();

/// How many blocks the kernel has run in this process.
pub fn runs() -> u64 {
    RUNS.get()[0]
}

/// `(P, dS)` `[heads·per_head, n_k]` in the scores' dtype for the block's scores `s` and `dp`
/// `[heads, per_head, n_k]` and its output rows `out` and `grad` `[heads, per_head, d]`; `None`
/// where the kernel does not apply (not a CubeCL backend, kernels off, indices past `u32`, a
/// dtype it is not compiled for).
pub(in crate::kernels) fn score_rows<I: Backend>(
    s: Tensor<I, 3>,
    dp: Tensor<I, 3>,
    out: Tensor<I, 3>,
    grad: Tensor<I, 3>,
    rows: Rows,
) -> Option<(Tensor<I, 3>, Tensor<I, 3>)> {
    let dtype = s.dtype();
    let fits = |n: usize| n <= u32::MAX as usize;
    let total = rows.heads * rows.per_head;
    let ok = enabled()
        && applies::<I>()
        && matches!(
            dtype,
            burn::tensor::DType::F32 | burn::tensor::DType::F16 | burn::tensor::DType::BF16
        )
        && total > 0
        && rows.n_k > 0
        && fits(total.saturating_mul(rows.n_k))
        && fits(total.saturating_mul(rows.d))
        && fits(rows.n_q + rows.n_k + 1);
    if !ok {
        return None;
    }
    let flat = |t: Tensor<I, 3>| {
        let [a, b, c] = t.dims();
        float(t.to_dtype(dtype).reshape([a * b, c]))
    };
    let [p, ds] = Apply::<I, 4, 2, _> {
        name: "likeness_attention_score_rows",
        inputs: [flat(s), flat(dp), flat(out), flat(grad)],
        outputs: [
            (Shape::new([total, rows.n_k]), dtype),
            (Shape::new([total, rows.n_k]), dtype),
        ],
        op: ScoreRowsOp(rows),
    }
    .apply()?;
    let shape = [rows.heads, rows.per_head, rows.n_k];
    Some((
        wrap::<I, 2>(p).reshape(shape),
        wrap::<I, 2>(ds).reshape(shape),
    ))
}
