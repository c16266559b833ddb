//! Flash attention forward and backward as CubeCL kernels, for the CUDA and wgpu backends.
//!
//! `out = softmax(s·q·kᵀ [causal])·v` over `[batch, heads, tokens, head_dim]`, without ever
//! writing a score matrix:
//!
//! - forward: a cube per block of query rows, two rows per unit up to head dim 64 (each key
//!   element read from shared memory then feeds two multiply-adds), else one; keys and values pass
//!   through shared memory a tile at a time and each unit keeps its rows' running maxima, softmax
//!   denominators and output accumulators (the online softmax); it writes the output and the rows'
//!   log-sum-exp `L = m + ln Σ exp(s − m)`, which is all the backward needs of the forward;
//! - backward: `Δ = rowsum(dO ∘ O)` (one unit per row), then a cube per block of *key* rows
//!   accumulates `dV = Σᵢ pᵢⱼ·dOᵢ` and `dK = s·Σᵢ dSᵢⱼ·qᵢ` while query rows pass through shared
//!   memory, and a cube per block of query rows accumulates `dQ = s·Σⱼ dSᵢⱼ·kⱼ`, with the
//!   probabilities recomputed from `L` (`pᵢⱼ = exp(s·qᵢ·kⱼ − Lᵢ)`, `dSᵢⱼ = pᵢⱼ·(dOᵢ·vⱼ − Δᵢ)`).
//!   Two kernels rather than one with atomic adds: each output row has one writer.
//!
//! Every sum runs in f32 whatever the tensors' dtype; the head dimension is a compile-time
//! constant (a kernel per head size, its row held by the unit). The causal mask is bottom-right
//! aligned, as Burn's: query `i` sees keys `j ≤ i + n_k − n_q`; a row that sees no key gets a zero
//! output and zero gradients. These kernels use no tensor cores; what they save is the score
//! matrices' memory and traffic, and autotuning: Burn tunes its attention per shape (a minute on a
//! first call). In bf16 and f16, on a device with cooperative matrices (tensor cores), the same
//! passes run on them instead ([`super::attention_mma`]; `LIKENESS_ATTENTION_TENSOR_CORES=off`
//! keeps them here).
//! Parity: `tests/kernel_policies/cube_attention.rs`.

use burn::prelude::*;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use super::attention_mma::{self, Layout};
use super::{Apply, KernelOp, cubes, elementwise, empty, enabled};
use crate::kernels::attention::{TensorCores, tensor_cores};
use crate::kernels::{ToDtype, float, wrap};

/// Units per cube of the row kernels (one query row each for dQ, one key row for dK/dV, one or
/// two query rows forward).
const ROWS: u32 = 64;
/// f32 elements of one shared-memory tile (`tile` rows of `head_dim`): 8 KiB.
const TILE_ELEMENTS: usize = 2048;
/// The largest head dimension the kernels take (a unit holds up to four rows of it).
pub const MAX_HEAD_DIM: usize = 256;

mod device {
    use cubecl::prelude::*;

    /// Head dimensions up to this have their loops unrolled: a row's numbers stay in registers on
    /// a GPU, and a key costs one loop iteration (lavapipe ends a shader's loops after 65 535
    /// iterations, all loops counted together). Unrolled at 160, lavapipe's compiler overflows its
    /// thread's stack.
    const UNROLL_UP_TO: u32 = 128;

    /// Keys that query row `i` sees: all `n_k`, or under the causal mask `i + n_k − n_q + 1`
    /// (clamped to `[0, n_k]`).
    #[cube]
    fn visible_keys(i: usize, n_q: usize, n_k: usize, #[comptime] causal: bool) -> usize {
        let mut count = n_k;
        if causal {
            count = 0;
            if i + n_k + 1 > n_q {
                count = min(i + n_k + 1 - n_q, n_k);
            }
        }
        count
    }

    /// The first query row that sees key `j`: 0, or under the causal mask `j + n_q − n_k`.
    #[cube]
    fn first_query(j: usize, n_q: usize, n_k: usize, #[comptime] causal: bool) -> usize {
        let mut first = 0;
        if causal && j + n_q > n_k {
            first = j + n_q - n_k;
        }
        first
    }

    /// Copies rows `start..start + tile` of `[rows, d]` matrix `head` (elements from `base`) into
    /// `shared` as f32, zeros past `rows`; every unit of the cube takes part.
    #[cube]
    fn load_tile<F: Float>(
        source: &Tensor<F>,
        shared: &mut SharedMemory<f32>,
        base: usize,
        start: usize,
        rows: usize,
        #[comptime] tile: u32,
        #[comptime] d: u32,
    ) {
        let dim = d as usize;
        let mut e = UNIT_POS as usize;
        while e < (tile * d) as usize {
            let row = start + e / dim;
            let mut value = f32::new(0.0);
            if row < rows {
                value = f32::cast_from(source[base + row * dim + e % dim]);
            }
            shared[e] = value;
            e += CUBE_DIM as usize;
        }
    }

    /// Row `row` of `[rows, d]` matrix `source` (elements from `base`) as f32, times `scale`.
    #[cube]
    fn load_row<F: Float>(
        source: &Tensor<F>,
        base: usize,
        row: usize,
        scale: f32,
        valid: bool,
        #[comptime] d: u32,
    ) -> Array<f32> {
        let mut out = Array::<f32>::new(d as usize);
        #[unroll(d <= UNROLL_UP_TO)]
        for c in 0..d as usize {
            let mut value = f32::new(0.0);
            if valid {
                value = f32::cast_from(source[base + row * d as usize + c]) * scale;
            }
            out[c] = value;
        }
        out
    }

    /// `a · shared[offset..offset + d]`.
    #[cube]
    fn dot(a: &Array<f32>, shared: &SharedMemory<f32>, offset: usize, #[comptime] d: u32) -> f32 {
        let mut sum = f32::new(0.0);
        #[unroll(d <= UNROLL_UP_TO)]
        for c in 0..d as usize {
            sum += a[c] * shared[offset + c];
        }
        sum
    }

    /// `acc += weight · shared[offset..offset + d]`.
    #[cube]
    fn add_scaled(
        acc: &mut Array<f32>,
        weight: f32,
        shared: &SharedMemory<f32>,
        offset: usize,
        #[comptime] d: u32,
    ) {
        #[unroll(d <= UNROLL_UP_TO)]
        for c in 0..d as usize {
            acc[c] += weight * shared[offset + c];
        }
    }

    /// A cube per (batch·head, block of `CUBE_DIM · group` rows): the batch·head and the block's
    /// first row; `None`-like (`heads`) past the last block.
    #[cube]
    fn block_of(heads: u32, rows: u32, #[comptime] group: u32) -> (usize, usize) {
        let span = CUBE_DIM * group;
        let blocks = rows.div_ceil(span) as usize;
        let cube = CUBE_POS;
        let mut bh = heads as usize;
        let mut first = 0;
        if cube < heads as usize * blocks {
            bh = cube / blocks;
            first = (cube % blocks) * span as usize;
        }
        (bh, first)
    }

    /// Forward: `out` and the rows' log-sum-exp `lse` (of the scaled scores, `[bh, n_q]`). Each
    /// unit takes `group` query rows (`CUBE_DIM` apart), so that every key element read from
    /// shared memory feeds `group` multiply-adds.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        out: &mut Tensor<F>,
        lse: &mut Tensor<f32>,
        heads: u32,
        n_q: u32,
        n_k: u32,
        scale: f32,
        #[comptime] d: u32,
        #[comptime] tile: u32,
        #[comptime] group: u32,
        #[comptime] causal: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let (bh, first_row) = block_of(heads, n_q, group);
        // Uniform per cube, so the barriers below are reached by all of its units or none.
        if bh < heads as usize {
            let (nq, nk, dim) = (n_q as usize, n_k as usize, d as usize);
            let span = (CUBE_DIM * group) as usize;
            let last_row = min(first_row + span, nq) - 1;
            let key_end = visible_keys(last_row, nq, nk, causal);
            let q_base = bh * nq * dim;
            let kv_base = bh * nk * dim;
            // Per row of this unit: its keys, scaled query, accumulator, running max and sum.
            let mut mine = Array::<u32>::new(group as usize);
            let mut qr = Array::<f32>::new((group * d) as usize);
            let mut acc = Array::<f32>::new((group * d) as usize);
            let mut m = Array::<f32>::new(group as usize);
            let mut l = Array::<f32>::new(group as usize);
            let mut m_new = Array::<f32>::new(group as usize);
            let mut s = Array::<f32>::new(group as usize);
            #[unroll]
            for r in 0..group as usize {
                let i = first_row + UNIT_POS as usize + r * CUBE_DIM as usize;
                let valid = i < nq;
                let mut keys_seen = 0;
                if valid {
                    keys_seen = visible_keys(i, nq, nk, causal);
                }
                mine[r] = keys_seen as u32;
                let row = load_row::<F>(q, q_base, i, scale, valid, d);
                #[unroll(d <= UNROLL_UP_TO)]
                for c in 0..d as usize {
                    qr[r * dim + c] = row[c];
                    acc[r * dim + c] = f32::new(0.0);
                }
                // Finite, so that exp(m_old − m_new) is 1, not NaN, while a row has seen no key.
                m[r] = f32::new(-3.0e38);
                l[r] = f32::new(0.0);
            }
            let mut scores = Array::<f32>::new((group * tile) as usize);
            let mut keys = SharedMemory::<f32>::new((tile * d) as usize);
            let mut values = SharedMemory::<f32>::new((tile * d) as usize);
            let mut start = 0;
            while start < key_end {
                load_tile::<F>(k, &mut keys, kv_base, start, nk, tile, d);
                load_tile::<F>(v, &mut values, kv_base, start, nk, tile, d);
                sync_cube();
                let count = min(key_end - start, tile as usize);
                #[unroll]
                for r in 0..group as usize {
                    m_new[r] = m[r];
                }
                for jj in 0..count {
                    #[unroll]
                    for r in 0..group as usize {
                        s[r] = f32::new(0.0);
                    }
                    #[unroll(d <= UNROLL_UP_TO)]
                    for c in 0..d as usize {
                        let key = keys[jj * dim + c];
                        #[unroll]
                        for r in 0..group as usize {
                            s[r] += qr[r * dim + c] * key;
                        }
                    }
                    #[unroll]
                    for r in 0..group as usize {
                        scores[r * tile as usize + jj] = s[r];
                        if start + jj < mine[r] as usize {
                            m_new[r] = max(m_new[r], s[r]);
                        }
                    }
                }
                #[unroll]
                for r in 0..group as usize {
                    let correction = (m[r] - m_new[r]).exp();
                    l[r] *= correction;
                    #[unroll(d <= UNROLL_UP_TO)]
                    for c in 0..d as usize {
                        acc[r * dim + c] *= correction;
                    }
                    m[r] = m_new[r];
                }
                for jj in 0..count {
                    #[unroll]
                    for r in 0..group as usize {
                        let mut p = f32::new(0.0);
                        if start + jj < mine[r] as usize {
                            p = (scores[r * tile as usize + jj] - m[r]).exp();
                        }
                        s[r] = p;
                        l[r] += p;
                    }
                    #[unroll(d <= UNROLL_UP_TO)]
                    for c in 0..d as usize {
                        let value = values[jj * dim + c];
                        #[unroll]
                        for r in 0..group as usize {
                            acc[r * dim + c] += s[r] * value;
                        }
                    }
                }
                sync_cube();
                start += tile as usize;
            }
            #[unroll]
            for r in 0..group as usize {
                let i = first_row + UNIT_POS as usize + r * CUBE_DIM as usize;
                if i < nq {
                    let mut inverse = f32::new(0.0);
                    // A row that sees no key: zero output, and an L that makes every p zero.
                    let mut row_lse = f32::new(3.0e38);
                    if l[r] > f32::new(0.0) {
                        inverse = f32::new(1.0) / l[r];
                        row_lse = m[r] + l[r].ln();
                    }
                    #[unroll(d <= UNROLL_UP_TO)]
                    for c in 0..d as usize {
                        out[q_base + i * dim + c] = F::cast_from(acc[r * dim + c] * inverse);
                    }
                    lse[bh * nq + i] = row_lse;
                }
            }
        }
    }

    /// `Δ = rowsum(dO ∘ O)` in f32, a unit per row.
    #[cube(launch)]
    pub(super) fn delta_kernel<F: Float>(
        out: &Tensor<F>,
        grad: &Tensor<F>,
        delta: &mut Tensor<f32>,
        rows: u32,
        #[comptime] d: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = ABSOLUTE_POS;
        if row < rows as usize {
            let base = row * d as usize;
            let mut sum = f32::new(0.0);
            #[unroll(d <= UNROLL_UP_TO)]
            for c in 0..d as usize {
                sum += f32::cast_from(out[base + c]) * f32::cast_from(grad[base + c]);
            }
            delta[row] = sum;
        }
    }

    /// `dK` and `dV`: a cube per block of key rows, a unit per key; query rows, their output
    /// gradients, `L` and `Δ` pass through shared memory.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn key_grads_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        grad: &Tensor<F>,
        lse: &Tensor<f32>,
        delta: &Tensor<f32>,
        dk: &mut Tensor<F>,
        dv: &mut Tensor<F>,
        heads: u32,
        n_q: u32,
        n_k: u32,
        scale: f32,
        #[comptime] d: u32,
        #[comptime] tile: u32,
        #[comptime] causal: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let (bh, first_key) = block_of(heads, n_k, 1u32);
        if bh < heads as usize {
            let (nq, nk, dim) = (n_q as usize, n_k as usize, d as usize);
            let j = first_key + UNIT_POS as usize;
            let valid = j < nk;
            let q_base = bh * nq * dim;
            let kv_base = bh * nk * dim;
            let kr = load_row::<F>(k, kv_base, j, scale, valid, d);
            let vr = load_row::<F>(v, kv_base, j, f32::new(1.0), valid, d);
            let mut dkr = Array::<f32>::new(d as usize);
            let mut dvr = Array::<f32>::new(d as usize);
            #[unroll(d <= UNROLL_UP_TO)]
            for c in 0..d as usize {
                dkr[c] = f32::new(0.0);
                dvr[c] = f32::new(0.0);
            }
            let mut queries = SharedMemory::<f32>::new((tile * d) as usize);
            let mut grads = SharedMemory::<f32>::new((tile * d) as usize);
            let mut row_lse = SharedMemory::<f32>::new(tile as usize);
            let mut row_delta = SharedMemory::<f32>::new(tile as usize);
            let mut mine = nq;
            if valid {
                mine = first_query(j, nq, nk, causal);
            }
            let mut start = first_query(first_key, nq, nk, causal);
            start -= start % tile as usize;
            while start < nq {
                load_tile::<F>(q, &mut queries, q_base, start, nq, tile, d);
                load_tile::<F>(grad, &mut grads, q_base, start, nq, tile, d);
                let mut e = UNIT_POS as usize;
                while e < tile as usize {
                    let i = start + e;
                    let mut l = f32::new(3.0e38);
                    let mut dl = f32::new(0.0);
                    if i < nq {
                        l = lse[bh * nq + i];
                        dl = delta[bh * nq + i];
                    }
                    row_lse[e] = l;
                    row_delta[e] = dl;
                    e += CUBE_DIM as usize;
                }
                sync_cube();
                let end = min(start + tile as usize, nq);
                let mut i = max(start, mine);
                while i < end {
                    let ii = i - start;
                    // kr carries the scale: s = (s·k)·q.
                    let p = (dot(&kr, &queries, ii * dim, d) - row_lse[ii]).exp();
                    add_scaled(&mut dvr, p, &grads, ii * dim, d);
                    let dp = dot(&vr, &grads, ii * dim, d);
                    let ds = p * (dp - row_delta[ii]);
                    add_scaled(&mut dkr, ds, &queries, ii * dim, d);
                    i += 1;
                }
                sync_cube();
                start += tile as usize;
            }
            if valid {
                let base = kv_base + j * dim;
                #[unroll(d <= UNROLL_UP_TO)]
                for c in 0..d as usize {
                    dk[base + c] = F::cast_from(dkr[c] * scale);
                    dv[base + c] = F::cast_from(dvr[c]);
                }
            }
        }
    }

    /// `dQ`: a cube per block of query rows, a unit per row; keys and values pass through shared
    /// memory.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn query_grads_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        grad: &Tensor<F>,
        lse: &Tensor<f32>,
        delta: &Tensor<f32>,
        dq: &mut Tensor<F>,
        heads: u32,
        n_q: u32,
        n_k: u32,
        scale: f32,
        #[comptime] d: u32,
        #[comptime] tile: u32,
        #[comptime] causal: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let (bh, first_row) = block_of(heads, n_q, 1u32);
        if bh < heads as usize {
            let (nq, nk, dim) = (n_q as usize, n_k as usize, d as usize);
            let i = first_row + UNIT_POS as usize;
            let valid = i < nq;
            let last_row = min(first_row + CUBE_DIM as usize, nq) - 1;
            let key_end = visible_keys(last_row, nq, nk, causal);
            let mut mine = 0;
            let mut l = f32::new(0.0);
            let mut dl = f32::new(0.0);
            if valid {
                mine = visible_keys(i, nq, nk, causal);
                l = lse[bh * nq + i];
                dl = delta[bh * nq + i];
            }
            let q_base = bh * nq * dim;
            let kv_base = bh * nk * dim;
            let qr = load_row::<F>(q, q_base, i, scale, valid, d);
            let gr = load_row::<F>(grad, q_base, i, f32::new(1.0), valid, d);
            let mut dqr = Array::<f32>::new(d as usize);
            #[unroll(d <= UNROLL_UP_TO)]
            for c in 0..d as usize {
                dqr[c] = f32::new(0.0);
            }
            let mut keys = SharedMemory::<f32>::new((tile * d) as usize);
            let mut values = SharedMemory::<f32>::new((tile * d) as usize);
            let mut start = 0;
            while start < key_end {
                load_tile::<F>(k, &mut keys, kv_base, start, nk, tile, d);
                load_tile::<F>(v, &mut values, kv_base, start, nk, tile, d);
                sync_cube();
                if mine > start {
                    let count = min(mine - start, tile as usize);
                    for jj in 0..count {
                        let p = (dot(&qr, &keys, jj * dim, d) - l).exp();
                        let dp = dot(&gr, &values, jj * dim, d);
                        add_scaled(&mut dqr, p * (dp - dl), &keys, jj * dim, d);
                    }
                }
                sync_cube();
                start += tile as usize;
            }
            if valid {
                #[unroll(d <= UNROLL_UP_TO)]
                for c in 0..d as usize {
                    dq[q_base + i * dim + c] = F::cast_from(dqr[c] * scale);
                }
            }
        }
    }
}

/// Sizes of an attention over `[batch·heads, tokens, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizes {
    pub(super) heads: usize,
    pub(super) n_q: usize,
    pub(super) n_k: usize,
    pub(super) d: usize,
    pub(super) causal: bool,
}

impl Sizes {
    /// `None` where the kernels do not apply: an empty or too large head dimension, no tokens,
    /// sizes beyond 32-bit indices, keys and values of different lengths.
    fn of(q: [usize; 4], k: [usize; 4], v: [usize; 4], causal: bool) -> Option<Self> {
        let [b, h, n_q, d] = q;
        let n_k = k[2];
        let same = k == [b, h, n_k, d] && v == k;
        let fits = [n_q, n_k].iter().all(|&n| {
            (b * h)
                .checked_mul(n)
                .and_then(|x| x.checked_mul(d))
                .is_some_and(|e| e < u32::MAX as usize)
        });
        (same && fits && (1..=MAX_HEAD_DIM).contains(&d) && n_q > 0 && n_k > 0 && b * h > 0)
            .then_some(Self {
                heads: b * h,
                n_q,
                n_k,
                d,
                causal,
            })
    }

    pub(super) fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    /// Rows of a shared-memory tile.
    fn tile(&self) -> u32 {
        let rows = (TILE_ELEMENTS / self.d).clamp(1, 64);
        // A power of two.
        (1usize << rows.ilog2()) as u32
    }

    /// Query rows per unit in the forward: two while two rows' numbers fit a GPU unit's
    /// registers with room to spare (head dims up to 64), else one.
    fn group(&self) -> u32 {
        if self.d <= 64 { 2 } else { 1 }
    }
}

/// A cube of [`ROWS`] units (fewer where the device allows fewer), and enough of them for
/// `rows` rows of every batch·head.
fn row_launch<R: CubeRuntime>(
    like: &CubeTensor<R>,
    heads: usize,
    rows: usize,
    group: u32,
) -> (cubecl::prelude::CubeCount, CubeDim) {
    let units = ROWS.min(super::block(like));
    let count = heads * rows.div_ceil((units * group) as usize);
    (cubes(like, count), CubeDim::new_1d(units))
}

/// Passes run on tensor cores in this process: `[forward, backward]`.
static TENSOR_CORE_RUNS: super::Tally<2> = super::Tally::new();

/// How many forward and backward passes ran on tensor cores ([`attention_mma`]) in this process.
pub fn tensor_core_counts() -> [u64; 2] {
    TENSOR_CORE_RUNS.get()
}

/// The tensor-core kernels' layout for these tensors, where they are on and the device and dtype
/// take them.
fn tensor_core_layout<R: CubeRuntime>(like: &CubeTensor<R>, s: &Sizes) -> Option<Layout> {
    (tensor_cores() == TensorCores::On)
        .then(|| Layout::of(like, s))
        .flatten()
}

/// Forward on `R`'s tensors: `[q, k, v]` → `[out, lse]`.
fn forward_on<R: CubeRuntime>(inputs: [CubeTensor<R>; 3], s: Sizes) -> [CubeTensor<R>; 2] {
    let [q, k, v] = inputs.map(into_contiguous);
    if let Some(layout) = tensor_core_layout(&q, &s) {
        TENSOR_CORE_RUNS.add(0);
        return attention_mma::forward_on([q, k, v], s, layout);
    }
    let client = q.client.clone();
    let dtype = q.dtype;
    let out = empty(&q, Shape::new([s.heads, s.n_q, s.d]), dtype);
    let lse = empty(&q, Shape::new([s.heads, s.n_q]), DType::F32);
    let (count, dim) = row_launch(&q, s.heads, s.n_q, s.group());
    device::forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        s.heads as u32,
        s.n_q as u32,
        s.n_k as u32,
        s.scale(),
        s.d as u32,
        s.tile(),
        s.group(),
        s.causal,
        dtype.into(),
    );
    [out, lse]
}

/// Backward on `R`'s tensors: `[q, k, v, out, lse, grad]` → `[dq, dk, dv]`.
fn backward_on<R: CubeRuntime>(inputs: [CubeTensor<R>; 6], s: Sizes) -> [CubeTensor<R>; 3] {
    let [q, k, v, out, lse, grad] = inputs.map(into_contiguous);
    let client = q.client.clone();
    let dtype = q.dtype;
    let rows = s.heads * s.n_q;
    let delta = empty(&q, Shape::new([s.heads, s.n_q]), DType::F32);
    let (count, dim) = elementwise(&q, rows);
    device::delta_kernel::launch::<R>(
        &client,
        count,
        dim,
        out.into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        rows as u32,
        s.d as u32,
        dtype.into(),
    );
    if let Some(layout) = tensor_core_layout(&q, &s) {
        TENSOR_CORE_RUNS.add(1);
        return attention_mma::gradients_on([q, k, v, grad], lse, delta, s, layout);
    }
    let dk = empty(&q, Shape::new([s.heads, s.n_k, s.d]), dtype);
    let dv = empty(&q, Shape::new([s.heads, s.n_k, s.d]), dtype);
    let (count, dim) = row_launch(&q, s.heads, s.n_k, 1);
    device::key_grads_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        s.heads as u32,
        s.n_q as u32,
        s.n_k as u32,
        s.scale(),
        s.d as u32,
        s.tile(),
        s.causal,
        dtype.into(),
    );
    let dq = empty(&q, Shape::new([s.heads, s.n_q, s.d]), dtype);
    let (count, dim) = row_launch(&q, s.heads, s.n_q, 1);
    device::query_grads_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        grad.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        s.heads as u32,
        s.n_q as u32,
        s.n_k as u32,
        s.scale(),
        s.d as u32,
        s.tile(),
        s.causal,
        dtype.into(),
    );
    [dq, dk, dv]
}

#[derive(Debug, Clone, Copy)]
struct ForwardOp(Sizes);

impl KernelOp<3, 2> for ForwardOp {
    fn run<R: CubeRuntime>(&self, inputs: [CubeTensor<R>; 3]) -> [CubeTensor<R>; 2] {
        forward_on(inputs, self.0)
    }
}

#[derive(Debug, Clone, Copy)]
struct BackwardOp(Sizes);

impl KernelOp<6, 3> for BackwardOp {
    fn run<R: CubeRuntime>(&self, inputs: [CubeTensor<R>; 6]) -> [CubeTensor<R>; 3] {
        backward_on(inputs, self.0)
    }
}

/// The kernels' sizes for these tensors, if the kernels are on, backend `I` is a CubeCL backend
/// and the tensors suit them (one dtype, supported sizes).
fn sizes<I: Backend>(
    q: &Tensor<I, 4>,
    k: &Tensor<I, 4>,
    v: &Tensor<I, 4>,
    causal: bool,
) -> Option<Sizes> {
    if !enabled() || !super::applies::<I>() {
        return None;
    }
    let dtype = q.dtype();
    if k.dtype() != dtype || v.dtype() != dtype {
        return None;
    }
    Sizes::of(q.dims(), k.dims(), v.dims(), causal)
}

/// Forward: the output `[b, h, n_q, d]` in q's dtype and the rows' log-sum-exp `[b, h, n_q]` in
/// f32 (what [`backward`] takes); `None` where the kernels do not apply (Burn's attention then).
pub fn forward<I: Backend>(
    q: &Tensor<I, 4>,
    k: &Tensor<I, 4>,
    v: &Tensor<I, 4>,
    causal: bool,
) -> Option<(Tensor<I, 4>, Tensor<I, 3>)> {
    let s = sizes(q, k, v, causal)?;
    let [b, h, n_q, d] = q.dims();
    let flat = |t: &Tensor<I, 4>, n: usize| float(t.clone().reshape([b * h, n, d]));
    let [out, lse] = Apply::<I, 3, 2, _> {
        name: "likeness_attention_forward",
        inputs: [flat(q, n_q), flat(k, s.n_k), flat(v, s.n_k)],
        outputs: [
            (Shape::new([s.heads, n_q, d]), q.dtype()),
            (Shape::new([s.heads, n_q]), DType::F32),
        ],
        op: ForwardOp(s),
    }
    .apply()?;
    Some((
        wrap::<I, 3>(out).reshape([b, h, n_q, d]),
        wrap::<I, 2>(lse).reshape([b, h, n_q]),
    ))
}

/// Backward: `(dq, dk, dv)` in the inputs' dtype, from the forward's output and log-sum-exp and
/// the output's gradient; `None` where [`forward`] would be.
pub fn backward<I: Backend>(
    [q, k, v]: [&Tensor<I, 4>; 3],
    out: &Tensor<I, 4>,
    lse: &Tensor<I, 3>,
    grad: &Tensor<I, 4>,
    causal: bool,
) -> Option<[Tensor<I, 4>; 3]> {
    let s = sizes(q, k, v, causal)?;
    let [b, h, n_q, d] = q.dims();
    let dtype = q.dtype();
    let flat = |t: &Tensor<I, 4>, n: usize| float(t.clone().to_dtype(dtype).reshape([b * h, n, d]));
    let grads = Apply::<I, 6, 3, _> {
        name: "likeness_attention_backward",
        inputs: [
            flat(q, n_q),
            flat(k, s.n_k),
            flat(v, s.n_k),
            flat(out, n_q),
            float(lse.clone().to_dtype(DType::F32).reshape([b * h, n_q])),
            flat(grad, n_q),
        ],
        outputs: [
            (Shape::new([s.heads, n_q, d]), dtype),
            (Shape::new([s.heads, s.n_k, d]), dtype),
            (Shape::new([s.heads, s.n_k, d]), dtype),
        ],
        op: BackwardOp(s),
    }
    .apply()?;
    let [dq, dk, dv] = grads.map(wrap::<I, 3>);
    Some([
        dq.reshape([b, h, n_q, d]),
        dk.reshape([b, h, s.n_k, d]),
        dv.reshape([b, h, s.n_k, d]),
    ])
}
