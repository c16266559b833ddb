//! Flash attention forward and backward on tensor cores (CubeCL's `cmma`: WMMA on CUDA, Vulkan's
//! cooperative matrices through SPIR-V), for half-precision attentions on devices that multiply
//! square tiles of the tensors' dtype into f32 — 16×16×16 on NVIDIA's tensor cores, 8×8×8 on
//! Mesa's lavapipe (which CI runs them on).
//!
//! Below, `t` is the tile's side.
//!
//! The same algorithm and interface as the scalar kernels of [`super::attention`] — output and the
//! rows' log-sum-exp `L` forward; `Δ = rowsum(dO ∘ O)`, then a kernel per block of keys for `dK`,
//! `dV` and one per block of queries for `dQ` backward, probabilities recomputed from `L` — with
//! every product of a query or key block on `t`×`t` tiles: a plane (warp) owns `t` rows, its scores
//! go through shared memory in f32 for the softmax (which a tile's opaque register layout cannot
//! do in place), and its probabilities come back as the tensors' dtype for the next product, as
//! FlashAttention-2 does. Head dims are padded to a multiple of `t` with zeros in shared memory
//! (SD 1.5's 40 → 48 on 16-wide tiles: the scores do not change). The forward's output accumulator lives in shared
//! memory (each key block rescales its rows); the backward's `dK`, `dV` and `dQ` stay in the
//! tiles' accumulators for the whole loop. Every sum is f32.
//!
//! Parity: `tests/kernel_policies/cube_attention.rs`, on a lavapipe with cooperative matrices
//! (`scripts/lavapipe-coopmat.sh`).

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, FloatKind, StorageType};
use cubecl::prelude::{CubeCount, CubeDim};

use super::attention::Sizes;
use super::{cubes, empty};

/// The tiles' sides (M = N = K) tried in turn: NVIDIA's tensor cores take 16 (WMMA), Mesa's
/// lavapipe (what CI tests on) 8.
const TILES: [u32; 2] = [16, 8];

/// Where every shared array starts, in bytes: WMMA's loads and stores need 256-bit aligned
/// pointers.
const SHARED_ALIGN: usize = 32;

mod device {
    use super::SHARED_ALIGN;
    use cubecl::prelude::*;

    /// The keys that query `i` sees: all `n_k`, or under the (bottom-right aligned) causal mask
    /// `i + n_k − n_q + 1`, clamped to `[0, n_k]`.
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

    /// Rows `start..start + rows` of `[n, d]` matrix `source` (from `base`) into `shared` as
    /// `[rows, dp]` in the tiles' type, zeros past `n` and past `d`; the whole cube takes part.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_rows<F: Float, E: Float>(
        source: &Tensor<F>,
        shared: &mut SharedMemory<E>,
        base: usize,
        start: usize,
        n: usize,
        #[comptime] rows: usize,
        #[comptime] d: usize,
        #[comptime] dp: usize,
    ) {
        let mut e = UNIT_POS as usize;
        while e < rows * dp {
            let (r, c) = (e / dp, e % dp);
            let mut value = E::new(0.0);
            if start + r < n && c < d {
                value = E::cast_from(source[base + (start + r) * d + c]);
            }
            shared[e] = value;
            e += CUBE_DIM as usize;
        }
    }

    /// `out += a · bᵀ` over a `t`-row block: `a` `[t, dp]` and `b` `[t, dp]` row-major in shared
    /// memory (from `a_at` and `b_at`), `dp / t` tile products.
    #[cube]
    fn product_transposed<E: Float>(
        a: &SharedMemory<E>,
        a_at: usize,
        b: &SharedMemory<E>,
        b_at: usize,
        out: &cmma::Matrix<f32>,
        #[comptime] dp: usize,
        #[comptime] t: usize,
    ) {
        #[unroll]
        for c in 0..dp / t {
            let ma = unsafe {
                cmma::Matrix::<E>::uninitialized(
                    cmma::MatrixIdent::A,
                    t,
                    t,
                    t,
                    cmma::MatrixLayout::RowMajor,
                )
            };
            let mb = unsafe {
                cmma::Matrix::<E>::uninitialized(
                    cmma::MatrixIdent::B,
                    t,
                    t,
                    t,
                    cmma::MatrixLayout::ColMajor,
                )
            };
            let (sa, sb) = (a_at + c * t, b_at + c * t);
            cmma::load(&ma, &a.slice(sa, sa + (t - 1) * dp + t), dp as u32);
            cmma::load(&mb, &b.slice(sb, sb + (t - 1) * dp + t), dp as u32);
            cmma::execute::<E, E, f32, f32>(&ma, &mb, out, out);
        }
    }

    /// `out += a · b` for one `t`-wide column tile of `b`: `a` `[t, k]` row-major with row stride
    /// `a_stride`, `b` `[k, ·]` row-major with row stride `b_stride` (from `b_at`, the tile's
    /// first column), `k / t` tile products.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn product<E: Float>(
        a: &SharedMemory<E>,
        a_at: usize,
        b: &SharedMemory<E>,
        b_at: usize,
        out: &cmma::Matrix<f32>,
        #[comptime] k: usize,
        #[comptime] a_stride: usize,
        #[comptime] b_stride: usize,
        #[comptime] t: usize,
    ) {
        #[unroll]
        for kk in 0..k / t {
            let ma = unsafe {
                cmma::Matrix::<E>::uninitialized(
                    cmma::MatrixIdent::A,
                    t,
                    t,
                    t,
                    cmma::MatrixLayout::RowMajor,
                )
            };
            let mb = unsafe {
                cmma::Matrix::<E>::uninitialized(
                    cmma::MatrixIdent::B,
                    t,
                    t,
                    t,
                    cmma::MatrixLayout::RowMajor,
                )
            };
            let sa = a_at + kk * t;
            let sb = b_at + kk * t * b_stride;
            cmma::load(
                &ma,
                &a.slice(sa, sa + (t - 1) * a_stride + t),
                a_stride as u32,
            );
            cmma::load(
                &mb,
                &b.slice(sb, sb + (t - 1) * b_stride + t),
                b_stride as u32,
            );
            cmma::execute::<E, E, f32, f32>(&ma, &mb, out, out);
        }
    }

    /// A zero f32 accumulator tile.
    #[cube]
    fn zeros(#[comptime] t: usize) -> cmma::Matrix<f32> {
        cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            t,
            t,
            t,
            cmma::MatrixLayout::Undefined,
            0.0,
        )
    }

    /// The cube's batch·head and first row: a cube per (batch·head, block of `span` rows);
    /// `heads` past the last block.
    #[cube]
    fn block_of(heads: u32, rows: u32, #[comptime] span: usize) -> (usize, usize) {
        let blocks = (rows as usize).div_ceil(span);
        let mut bh = heads as usize;
        let mut first = 0;
        if CUBE_POS < heads as usize * blocks {
            bh = CUBE_POS / blocks;
            first = (CUBE_POS % blocks) * span;
        }
        (bh, first)
    }

    /// Forward: `out` and the rows' log-sum-exp `lse` (`[bh, n_q]`). A plane per `t` query rows
    /// (`UNIT_POS_Y`), `keys` keys a step through shared memory.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_kernel<F: Float, E: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        out: &mut Tensor<F>,
        lse: &mut Tensor<f32>,
        heads: u32,
        n_q: u32,
        n_k: u32,
        scale: f32,
        #[comptime] d: usize,
        #[comptime] dp: usize,
        #[comptime] planes: usize,
        #[comptime] t: usize,
        #[comptime] keys: usize,
        #[comptime] causal: bool,
        #[define(F, E)] _types: [StorageType; 2],
    ) {
        let (bh, first_row) = block_of(heads, n_q, planes * t);
        // Uniform per cube: its barriers are reached by all of its units or none.
        if bh < heads as usize {
            let (nq, nk) = (n_q as usize, n_k as usize);
            let plane = UNIT_POS_Y as usize;
            let lane = UNIT_POS_X as usize;
            let lanes = PLANE_DIM as usize;
            let (q_base, kv_base) = (bh * nq * d, bh * nk * d);
            let mut qs = SharedMemory::<E>::new_aligned(planes * t * dp, SHARED_ALIGN);
            let mut ks = SharedMemory::<E>::new_aligned(keys * dp, SHARED_ALIGN);
            let mut vs = SharedMemory::<E>::new_aligned(keys * dp, SHARED_ALIGN);
            // Per plane: its scores (then probabilities in f32), probabilities in E, output
            // accumulator, and its rows' running max, sum and rescale factor.
            let mut ss = SharedMemory::<f32>::new_aligned(planes * t * keys, SHARED_ALIGN);
            let mut ps = SharedMemory::<E>::new_aligned(planes * t * keys, SHARED_ALIGN);
            let mut os = SharedMemory::<f32>::new_aligned(planes * t * dp, SHARED_ALIGN);
            let mut ms = SharedMemory::<f32>::new_aligned(planes * t, SHARED_ALIGN);
            let mut ls = SharedMemory::<f32>::new_aligned(planes * t, SHARED_ALIGN);
            let mut alphas = SharedMemory::<f32>::new_aligned(planes * t, SHARED_ALIGN);
            load_rows::<F, E>(q, &mut qs, q_base, first_row, nq, planes * t, d, dp);
            let (s_at, o_at, r_at) = (plane * t * keys, plane * t * dp, plane * t);
            let mut e = lane;
            while e < t * dp {
                os[o_at + e] = f32::new(0.0);
                e += lanes;
            }
            let mut r = lane;
            while r < t {
                // Finite, so that exp(m_old − m_new) is 1, not NaN, while a row has seen no key.
                ms[r_at + r] = f32::new(-3.0e38);
                ls[r_at + r] = f32::new(0.0);
                r += lanes;
            }
            let last_row = min(first_row + planes * t, nq) - 1;
            let key_end = visible_keys(last_row, nq, nk, causal);
            let row0 = first_row + plane * t;
            let mut start = 0;
            while start < key_end {
                load_rows::<F, E>(k, &mut ks, kv_base, start, nk, keys, d, dp);
                load_rows::<F, E>(v, &mut vs, kv_base, start, nk, keys, d, dp);
                sync_cube();
                // S = Q·Kᵀ, `t` keys at a time, into the plane's scores.
                #[unroll]
                for j in 0..keys / t {
                    let acc = zeros(t);
                    product_transposed::<E>(&qs, plane * t * dp, &ks, j * t * dp, &acc, dp, t);
                    let at = s_at + j * t;
                    cmma::store(
                        &mut ss.slice_mut(at, at + (t - 1) * keys + t),
                        &acc,
                        keys as u32,
                        cmma::MatrixLayout::RowMajor,
                    );
                }
                sync_plane();
                // The rows' new maxima over the keys they see, and the factor for the old sums.
                let mut r = lane;
                while r < t {
                    let seen = visible_keys(row0 + r, nq, nk, causal);
                    let m_old = ms[r_at + r];
                    let mut m_new = m_old;
                    for c in 0..keys {
                        if start + c < seen {
                            m_new = max(m_new, ss[s_at + r * keys + c] * scale);
                        }
                    }
                    ms[r_at + r] = m_new;
                    alphas[r_at + r] = (m_old - m_new).exp();
                    r += lanes;
                }
                sync_plane();
                let mut e = lane;
                while e < t * keys {
                    let r = e / keys;
                    let mut p = f32::new(0.0);
                    if start + e % keys < visible_keys(row0 + r, nq, nk, causal) {
                        p = (ss[s_at + e] * scale - ms[r_at + r]).exp();
                    }
                    ss[s_at + e] = p;
                    ps[s_at + e] = E::cast_from(p);
                    e += lanes;
                }
                let mut e = lane;
                while e < t * dp {
                    os[o_at + e] *= alphas[r_at + e / dp];
                    e += lanes;
                }
                sync_plane();
                let mut r = lane;
                while r < t {
                    let mut sum = f32::new(0.0);
                    for c in 0..keys {
                        sum += ss[s_at + r * keys + c];
                    }
                    ls[r_at + r] = ls[r_at + r] * alphas[r_at + r] + sum;
                    r += lanes;
                }
                sync_plane();
                // O += P·V, a `t`-wide column tile at a time through the accumulator.
                #[unroll]
                for col in 0..dp / t {
                    let acc = unsafe {
                        cmma::Matrix::<f32>::uninitialized(
                            cmma::MatrixIdent::Accumulator,
                            t,
                            t,
                            t,
                            cmma::MatrixLayout::Undefined,
                        )
                    };
                    let at = o_at + col * t;
                    cmma::load_with_layout(
                        &acc,
                        &os.slice(at, at + (t - 1) * dp + t),
                        dp as u32,
                        cmma::MatrixLayout::RowMajor,
                    );
                    product::<E>(&ps, s_at, &vs, col * t, &acc, keys, keys, dp, t);
                    cmma::store(
                        &mut os.slice_mut(at, at + (t - 1) * dp + t),
                        &acc,
                        dp as u32,
                        cmma::MatrixLayout::RowMajor,
                    );
                }
                sync_cube();
                start += keys;
            }
            let mut e = lane;
            while e < t * d {
                let (r, c) = (e / d, e % d);
                let i = row0 + r;
                if i < nq {
                    let l = ls[r_at + r];
                    let mut value = f32::new(0.0);
                    if l > f32::new(0.0) {
                        value = os[o_at + r * dp + c] / l;
                    }
                    out[q_base + i * d + c] = F::cast_from(value);
                }
                e += lanes;
            }
            let mut r = lane;
            while r < t {
                let i = row0 + r;
                if i < nq {
                    let l = ls[r_at + r];
                    // A row that sees no key: an L that makes every recomputed p zero.
                    let mut row_lse = f32::new(3.0e38);
                    if l > f32::new(0.0) {
                        row_lse = ms[r_at + r] + l.ln();
                    }
                    lse[bh * nq + i] = row_lse;
                }
                r += lanes;
            }
        }
    }

    /// Writes a plane's `[t, dp]` result (accumulator tiles, times `factor`) to rows
    /// `row0..row0 + t` of `[n, d]` matrix `out` (from `base`), staging each tile through the
    /// plane's `[t, t]` f32 scratch at `at`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn write_rows<F: Float>(
        tiles: &Sequence<cmma::Matrix<f32>>,
        scratch: &mut SharedMemory<f32>,
        at: usize,
        out: &mut Tensor<F>,
        base: usize,
        row0: usize,
        n: usize,
        factor: f32,
        #[comptime] d: usize,
        #[comptime] dp: usize,
        #[comptime] t: usize,
    ) {
        let (lane, lanes) = (UNIT_POS_X as usize, PLANE_DIM as usize);
        #[unroll]
        for col in 0..dp / t {
            cmma::store(
                &mut scratch.slice_mut(at, at + t * t),
                tiles.index(col),
                t as u32,
                cmma::MatrixLayout::RowMajor,
            );
            sync_plane();
            let mut e = lane;
            while e < t * t {
                let (r, c) = (e / t, col * t + e % t);
                if row0 + r < n && c < d {
                    out[base + (row0 + r) * d + c] = F::cast_from(scratch[at + e] * factor);
                }
                e += lanes;
            }
            sync_plane();
        }
    }

    /// `dK` and `dV`: a plane per `t` keys, accumulating over `t` query rows a step (the rows,
    /// their output gradients, `L` and `Δ` through shared memory).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn key_grads_kernel<F: Float, E: Float>(
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
        #[comptime] d: usize,
        #[comptime] dp: usize,
        #[comptime] planes: usize,
        #[comptime] t: usize,
        #[comptime] causal: bool,
        #[define(F, E)] _types: [StorageType; 2],
    ) {
        let (bh, first_key) = block_of(heads, n_k, planes * t);
        if bh < heads as usize {
            let (nq, nk) = (n_q as usize, n_k as usize);
            let plane = UNIT_POS_Y as usize;
            let lane = UNIT_POS_X as usize;
            let lanes = PLANE_DIM as usize;
            let (q_base, kv_base) = (bh * nq * d, bh * nk * d);
            let mut ks = SharedMemory::<E>::new_aligned(planes * t * dp, SHARED_ALIGN);
            let mut vs = SharedMemory::<E>::new_aligned(planes * t * dp, SHARED_ALIGN);
            let mut qs = SharedMemory::<E>::new_aligned(t * dp, SHARED_ALIGN);
            let mut gs = SharedMemory::<E>::new_aligned(t * dp, SHARED_ALIGN);
            let mut row_lse = SharedMemory::<f32>::new_aligned(t, SHARED_ALIGN);
            let mut row_delta = SharedMemory::<f32>::new_aligned(t, SHARED_ALIGN);
            // Per plane: Sᵀ and dPᵀ in f32, then Pᵀ and dSᵀ in E.
            let mut st = SharedMemory::<f32>::new_aligned(planes * t * t, SHARED_ALIGN);
            let mut dpt = SharedMemory::<f32>::new_aligned(planes * t * t, SHARED_ALIGN);
            let mut pt = SharedMemory::<E>::new_aligned(planes * t * t, SHARED_ALIGN);
            let mut dst = SharedMemory::<E>::new_aligned(planes * t * t, SHARED_ALIGN);
            load_rows::<F, E>(k, &mut ks, kv_base, first_key, nk, planes * t, d, dp);
            load_rows::<F, E>(v, &mut vs, kv_base, first_key, nk, planes * t, d, dp);
            let mut dk_acc = Sequence::<cmma::Matrix<f32>>::new();
            let mut dv_acc = Sequence::<cmma::Matrix<f32>>::new();
            #[unroll]
            for _ in 0..dp / t {
                dk_acc.push(zeros(t));
                dv_acc.push(zeros(t));
            }
            let (at, key0) = (plane * t * t, first_key + plane * t);
            // Under the causal mask the first query rows see none of these keys.
            let mut start = 0;
            if causal && first_key + nq > nk {
                start = first_key + nq - nk;
            }
            start -= start % t;
            while start < nq {
                load_rows::<F, E>(q, &mut qs, q_base, start, nq, t, d, dp);
                load_rows::<F, E>(grad, &mut gs, q_base, start, nq, t, d, dp);
                let mut e = UNIT_POS as usize;
                while e < t {
                    let mut l = f32::new(3.0e38);
                    let mut dl = f32::new(0.0);
                    if start + e < nq {
                        l = lse[bh * nq + start + e];
                        dl = delta[bh * nq + start + e];
                    }
                    row_lse[e] = l;
                    row_delta[e] = dl;
                    e += CUBE_DIM as usize;
                }
                sync_cube();
                let s = zeros(t);
                product_transposed::<E>(&ks, plane * t * dp, &qs, 0, &s, dp, t);
                cmma::store(
                    &mut st.slice_mut(at, at + t * t),
                    &s,
                    t as u32,
                    cmma::MatrixLayout::RowMajor,
                );
                let dpm = zeros(t);
                product_transposed::<E>(&vs, plane * t * dp, &gs, 0, &dpm, dp, t);
                cmma::store(
                    &mut dpt.slice_mut(at, at + t * t),
                    &dpm,
                    t as u32,
                    cmma::MatrixLayout::RowMajor,
                );
                sync_plane();
                let mut e = lane;
                while e < t * t {
                    // Row: a key of this plane; column: a query of the block.
                    let (j, c) = (key0 + e / t, e % t);
                    let i = start + c;
                    let mut p = f32::new(0.0);
                    if i < nq && j < visible_keys(i, nq, nk, causal) {
                        p = (st[at + e] * scale - row_lse[c]).exp();
                    }
                    pt[at + e] = E::cast_from(p);
                    dst[at + e] = E::cast_from(p * (dpt[at + e] - row_delta[c]));
                    e += lanes;
                }
                sync_plane();
                #[unroll]
                for col in 0..dp / t {
                    product::<E>(&pt, at, &gs, col * t, dv_acc.index(col), t, t, dp, t);
                    product::<E>(&dst, at, &qs, col * t, dk_acc.index(col), t, t, dp, t);
                }
                sync_cube();
                start += t;
            }
            write_rows::<F>(&dk_acc, &mut st, at, dk, kv_base, key0, nk, scale, d, dp, t);
            write_rows::<F>(&dv_acc, &mut st, at, dv, kv_base, key0, nk, 1.0, d, dp, t);
        }
    }

    /// `dQ`: a plane per `t` query rows, accumulating over `t` keys a step.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn query_grads_kernel<F: Float, E: Float>(
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
        #[comptime] d: usize,
        #[comptime] dp: usize,
        #[comptime] planes: usize,
        #[comptime] t: usize,
        #[comptime] causal: bool,
        #[define(F, E)] _types: [StorageType; 2],
    ) {
        let (bh, first_row) = block_of(heads, n_q, planes * t);
        if bh < heads as usize {
            let (nq, nk) = (n_q as usize, n_k as usize);
            let plane = UNIT_POS_Y as usize;
            let lane = UNIT_POS_X as usize;
            let lanes = PLANE_DIM as usize;
            let (q_base, kv_base) = (bh * nq * d, bh * nk * d);
            let mut qs = SharedMemory::<E>::new_aligned(planes * t * dp, SHARED_ALIGN);
            let mut gs = SharedMemory::<E>::new_aligned(planes * t * dp, SHARED_ALIGN);
            let mut ks = SharedMemory::<E>::new_aligned(t * dp, SHARED_ALIGN);
            let mut vs = SharedMemory::<E>::new_aligned(t * dp, SHARED_ALIGN);
            let mut row_lse = SharedMemory::<f32>::new_aligned(planes * t, SHARED_ALIGN);
            let mut row_delta = SharedMemory::<f32>::new_aligned(planes * t, SHARED_ALIGN);
            let mut ss = SharedMemory::<f32>::new_aligned(planes * t * t, SHARED_ALIGN);
            let mut dps = SharedMemory::<f32>::new_aligned(planes * t * t, SHARED_ALIGN);
            let mut dss = SharedMemory::<E>::new_aligned(planes * t * t, SHARED_ALIGN);
            load_rows::<F, E>(q, &mut qs, q_base, first_row, nq, planes * t, d, dp);
            load_rows::<F, E>(grad, &mut gs, q_base, first_row, nq, planes * t, d, dp);
            let mut e = UNIT_POS as usize;
            while e < planes * t {
                let i = first_row + e;
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
            let mut dq_acc = Sequence::<cmma::Matrix<f32>>::new();
            #[unroll]
            for _ in 0..dp / t {
                dq_acc.push(zeros(t));
            }
            let (at, row0) = (plane * t * t, first_row + plane * t);
            let last_row = min(first_row + planes * t, nq) - 1;
            let key_end = visible_keys(last_row, nq, nk, causal);
            let mut start = 0;
            while start < key_end {
                load_rows::<F, E>(k, &mut ks, kv_base, start, nk, t, d, dp);
                load_rows::<F, E>(v, &mut vs, kv_base, start, nk, t, d, dp);
                sync_cube();
                let s = zeros(t);
                product_transposed::<E>(&qs, plane * t * dp, &ks, 0, &s, dp, t);
                cmma::store(
                    &mut ss.slice_mut(at, at + t * t),
                    &s,
                    t as u32,
                    cmma::MatrixLayout::RowMajor,
                );
                let dpm = zeros(t);
                product_transposed::<E>(&gs, plane * t * dp, &vs, 0, &dpm, dp, t);
                cmma::store(
                    &mut dps.slice_mut(at, at + t * t),
                    &dpm,
                    t as u32,
                    cmma::MatrixLayout::RowMajor,
                );
                sync_plane();
                let mut e = lane;
                while e < t * t {
                    let (r, c) = (e / t, e % t);
                    let i = row0 + r;
                    let mut ds = f32::new(0.0);
                    if i < nq && start + c < visible_keys(i, nq, nk, causal) {
                        let p = (ss[at + e] * scale - row_lse[plane * t + r]).exp();
                        ds = p * (dps[at + e] - row_delta[plane * t + r]);
                    }
                    dss[at + e] = E::cast_from(ds);
                    e += lanes;
                }
                sync_plane();
                #[unroll]
                for col in 0..dp / t {
                    product::<E>(&dss, at, &ks, col * t, dq_acc.index(col), t, t, dp, t);
                }
                sync_cube();
                start += t;
            }
            write_rows::<F>(&dq_acc, &mut ss, at, dq, q_base, row0, nq, scale, d, dp, t);
        }
    }
}

/// The tiles' element type for tensors of `dtype`: the dtype itself for bf16 and f16 (f32 stays
/// off tensor cores, whose f32 inputs would round to tf32, as PyTorch's flash kernels do).
fn tile_type(dtype: DType) -> Option<StorageType> {
    match dtype {
        DType::BF16 => Some(ElemType::Float(FloatKind::BF16).into()),
        DType::F16 => Some(ElemType::Float(FloatKind::F16).into()),
        _ => None,
    }
}

/// How the kernels are laid out on this device: `None` where it has no square tiles of the
/// tensors' dtype into f32 of a side in [`TILES`], no fixed plane size, or too little shared
/// memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    elem: StorageType,
    plane: u32,
    /// The tiles' side, rows per plane.
    tile: usize,
    /// Padded head dim.
    dp: usize,
    /// Planes per cube, forward and backward.
    planes: usize,
    /// Keys a forward step.
    keys: usize,
}

impl Layout {
    pub(super) fn of<R: CubeRuntime>(like: &CubeTensor<R>, s: &Sizes) -> Option<Self> {
        let elem = tile_type(like.dtype)?;
        let props = like.client.properties();
        let hardware = &props.hardware;
        let plane = hardware.plane_size_max;
        if plane == 0 || hardware.plane_size_min != plane {
            return None;
        }
        let tile = TILES.into_iter().find(|&side| {
            props
                .features
                .matmul
                .cmma
                .contains(&cubecl::ir::features::MmaConfig {
                    a_type: elem,
                    b_type: elem,
                    cd_type: ElemType::Float(FloatKind::F32).into(),
                    m: side,
                    n: side,
                    k: side,
                })
        })? as usize;
        let dp = s.d.next_multiple_of(tile);
        let (t, half) = (tile, 2);
        // Every shared array starts on `SHARED_ALIGN` bytes (CUDA packs the arrays into one block
        // by their liveness): up to that much padding before each of the kernels' (at most 12)
        // arrays.
        let padding = 12 * SHARED_ALIGN;
        // Shared memory. Forward: the cube's queries, a step's keys and values, the planes'
        // scores (f32 and the tiles' type), output accumulators and row statistics.
        let forward = |planes: usize, keys: usize| {
            planes * t * dp * half
                + 2 * keys * dp * half
                + planes * t * keys * (4 + half)
                + planes * t * dp * 4
                + 3 * planes * t * 4
                + padding
        };
        // Backward (the key-gradient kernel, the larger): the cube's keys and values, a step's
        // queries and output gradients with their L and Δ, the planes' Sᵀ, dPᵀ, Pᵀ and dSᵀ.
        let backward = |planes: usize| {
            2 * planes * t * dp * half
                + 2 * t * dp * half
                + 8 * t
                + planes * t * t * (8 + 2 * half)
                + padding
        };
        let limit = hardware.max_shared_memory_size.min(48 * 1024);
        let units = hardware.max_units_per_cube as usize;
        // Keys a step: a multiple of the tile, 64 where it fits.
        [(4, 64), (4, 32), (2, 32), (2, 16), (1, 16), (1, 8)]
            .into_iter()
            .filter(|&(_, keys)| keys % t == 0)
            .find(|&(planes, keys)| {
                forward(planes, keys) <= limit
                    && backward(planes) <= limit
                    && planes * plane as usize <= units
            })
            .map(|(planes, keys)| Self {
                elem,
                plane,
                tile,
                dp,
                planes,
                keys,
            })
    }

    fn launch<R: CubeRuntime>(
        &self,
        like: &CubeTensor<R>,
        s: &Sizes,
        rows: usize,
    ) -> (CubeCount, CubeDim) {
        let count = s.heads * rows.div_ceil(self.planes * self.tile);
        (
            cubes(like, count),
            CubeDim::new_2d(self.plane, self.planes as u32),
        )
    }
}

/// Forward on contiguous `[q, k, v]` → `[out, lse]`.
pub(super) fn forward_on<R: CubeRuntime>(
    [q, k, v]: [CubeTensor<R>; 3],
    s: Sizes,
    layout: Layout,
) -> [CubeTensor<R>; 2] {
    let client = q.client.clone();
    let dtype = q.dtype;
    let out = empty(&q, Shape::new([s.heads, s.n_q, s.d]), dtype);
    let lse = empty(&q, Shape::new([s.heads, s.n_q]), DType::F32);
    let (count, dim) = layout.launch(&q, &s, s.n_q);
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
        s.d,
        layout.dp,
        layout.planes,
        layout.tile,
        layout.keys,
        s.causal,
        [dtype.into(), layout.elem],
    );
    [out, lse]
}

/// Backward's gradients from contiguous `[q, k, v, grad]`, `L` and `Δ` → `[dq, dk, dv]`.
pub(super) fn gradients_on<R: CubeRuntime>(
    [q, k, v, grad]: [CubeTensor<R>; 4],
    lse: CubeTensor<R>,
    delta: CubeTensor<R>,
    s: Sizes,
    layout: Layout,
) -> [CubeTensor<R>; 3] {
    let client = q.client.clone();
    let dtype = q.dtype;
    let dk = empty(&q, Shape::new([s.heads, s.n_k, s.d]), dtype);
    let dv = empty(&q, Shape::new([s.heads, s.n_k, s.d]), dtype);
    let (count, dim) = layout.launch(&q, &s, s.n_k);
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
        s.d,
        layout.dp,
        layout.planes,
        layout.tile,
        s.causal,
        [dtype.into(), layout.elem],
    );
    let dq = empty(&q, Shape::new([s.heads, s.n_q, s.d]), dtype);
    let (count, dim) = layout.launch(&q, &s, s.n_q);
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
        s.d,
        layout.dp,
        layout.planes,
        layout.tile,
        s.causal,
        [dtype.into(), layout.elem],
    );
    [dq, dk, dv]
}
