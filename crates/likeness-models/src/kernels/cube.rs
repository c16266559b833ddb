//! CubeCL kernels shared by the CUDA and wgpu backends: GroupNorm (+SiLU) here, flash attention
//! in [`attention`], the GEGLU gate in `geglu`.
//!
//! Burn's tensor ops run a GroupNorm as a chain of reductions and element-wise passes, each
//! reading and writing an activation-sized tensor (and, before the op's own backward, each kept
//! for autodiff). These kernels do it in three launches each way:
//!
//! - forward: one cube per (sample, channel) computes the channel's mean and sum of squared
//!   deviations (two passes, as PyTorch, not the one-pass Σx² that loses digits when |μ| ≫ σ);
//!   one unit per (sample, group) merges its channels' (Chan et al.'s pairwise formula) into the
//!   group's mean and 1/σ; one element-wise launch writes `y = silu?(γ·x̂ + β)`;
//! - backward: one cube per (sample, channel) sums `dz` and `dz·x̂` over positions (`dz` the
//!   gradient before SiLU, recomputed from `x`), a few small tensor ops turn those sums into `dγ`,
//!   `dβ` and the two per-group means, and one element-wise launch writes `dx`.
//!
//! Work is spread over channels rather than groups so that a batch of one at SD's 32 groups
//! still fills a GPU's multiprocessors. Channels of few positions — a LayerNorm, which runs as a
//! one-group GroupNorm over `[tokens, channels, 1]`, and the smallest latents — take the row
//! kernels instead, where the (sample, group) rows are many and the channels too short for a
//! cube: the forward is one launch (a cube per row: both statistics, then `y`), the backward two
//! (a cube per row writes `dx`; a unit per (chunk of samples, channel) sums `dz` and `dz·x̂` for
//! `dγ` and `dβ`). Every statistic is accumulated in f32 whatever the
//! tensors' dtype. They run on the CubeCL backends' tensors, plain (`CubeTensor`) and, with the
//! `fusion` feature, fused (`FusionTensor`, as a custom operation in the stream: the fusers stop
//! at it); Flex keeps the Burn-op path of [`super::group_norm`]. Parity with that path:
//! `tests/suite/kernels_cube.rs` (lavapipe through wgpu).

use std::any::{Any, TypeId};

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};
use cubecl::prelude::{CubeCount, CubeDim};
use cubecl::server::CubeCountSelection;

pub mod attention;
mod attention_mma;
pub mod conv;
pub mod flash;
mod geglu;
pub mod matmul;
mod score_rows;

pub(super) use geglu::{geglu_backward, geglu_forward};
pub(super) use score_rows::{Rows, runs as score_rows_runs, score_rows};

/// Per-process counts of which path ran, `N` paths (the conv tiers, the flash paths).
struct Tally<const N: usize>([std::sync::atomic::AtomicU64; N]);

impl<const N: usize> Tally<N> {
    const fn new() -> Self {
        Self([const { std::sync::atomic::AtomicU64::new(0) }; N])
    }

    fn add(&self, path: usize) {
        self.0[path].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> [u64; N] {
        self.0
            .each_ref()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

use super::group_norm::GroupNormOptions;
use super::{ToDtype, float, wrap};

/// Units per cube of the reduction kernels: a power of two (the tree reduction halves it).
const BLOCK: u32 = 256;
/// Channels of fewer positions than this take the row kernels (a cube per (sample, group), the
/// group's channels in one contiguous row) rather than a cube per channel.
const ROW_KERNELS_BELOW: usize = 32;
/// Units per cube of the element-wise kernels.
const ELEMENTWISE: u32 = 256;

/// The kernels themselves (CubeCL's prelude names `Tensor` and `Float` too, so they live apart).
mod device {
    use cubecl::prelude::*;

    /// The sum of every unit's `value` over the cube (all units must call it: it synchronises).
    #[cube]
    pub(super) fn cube_sum(shared: &mut SharedMemory<f32>, value: f32) -> f32 {
        cube_reduce(shared, value, false)
    }

    /// The maximum of every unit's `value` over the cube (as [`cube_sum`]).
    #[cube]
    pub(super) fn cube_max(shared: &mut SharedMemory<f32>, value: f32) -> f32 {
        cube_reduce(shared, value, true)
    }

    /// The tree reduction of [`cube_sum`] and [`cube_max`].
    #[cube]
    fn cube_reduce(shared: &mut SharedMemory<f32>, value: f32, #[comptime] max_of: bool) -> f32 {
        let unit = UNIT_POS as usize;
        shared[unit] = value;
        sync_cube();
        let mut stride = CUBE_DIM / 2;
        while stride > 0 {
            if UNIT_POS < stride {
                let other = shared[unit + stride as usize];
                if max_of {
                    shared[unit] = max(shared[unit], other);
                } else {
                    shared[unit] += other;
                }
            }
            sync_cube();
            stride /= 2;
        }
        let total = shared[0];
        // Nobody may overwrite `shared` for the next reduction before every unit has read this
        // one.
        sync_cube();
        total
    }

    /// The channel of (sample, channel) row `nc` and the (sample, group) row of its group.
    #[cube]
    fn channel_and_group(nc: usize, channels: u32, channels_per_group: u32) -> (usize, usize) {
        let c = nc % channels as usize;
        let per_group = channels_per_group as usize;
        (c, (nc - c) / per_group + c / per_group)
    }

    /// `dL/dz` from `dL/dy` where `y = silu(z)` (or `y = z`).
    #[cube]
    fn pre_activation_grad(dy: f32, z: f32, #[comptime] silu: bool) -> f32 {
        let mut dz = dy;
        if silu {
            let s = f32::new(1.0) / (f32::new(1.0) + (-z).exp());
            dz = dy * s * (f32::new(1.0) + z * (f32::new(1.0) - s));
        }
        dz
    }

    /// Per (sample, channel): the mean over positions and the sum of squared deviations from it.
    #[cube(launch)]
    pub(super) fn channel_stats_kernel<F: Float>(
        x: &Tensor<F>,
        mean: &mut Tensor<f32>,
        m2: &mut Tensor<f32>,
        rows: u32,
        len: u32,
        #[comptime] block: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS;
        // The same for every unit of a cube, so the barriers inside stay uniform.
        if row < rows as usize {
            let base = row * len as usize;
            let mut shared = SharedMemory::<f32>::new(block as usize);
            let mut sum = f32::new(0.0);
            let mut i = UNIT_POS as usize;
            while i < len as usize {
                sum += f32::cast_from(x[base + i]);
                i += CUBE_DIM as usize;
            }
            let mu = cube_sum(&mut shared, sum) / f32::cast_from(len);
            let mut squares = f32::new(0.0);
            i = UNIT_POS as usize;
            while i < len as usize {
                let d = f32::cast_from(x[base + i]) - mu;
                squares += d * d;
                i += CUBE_DIM as usize;
            }
            let total = cube_sum(&mut shared, squares);
            if UNIT_POS == 0 {
                mean[row] = mu;
                m2[row] = total;
            }
        }
    }

    /// Per (sample, group): its channels' statistics merged into the group's mean and 1/σ.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn group_stats_kernel(
        channel_mean: &Tensor<f32>,
        channel_m2: &Tensor<f32>,
        mean: &mut Tensor<f32>,
        rstd: &mut Tensor<f32>,
        rows: u32,
        channels_per_group: u32,
        len: u32,
        eps: f32,
    ) {
        let row = ABSOLUTE_POS;
        if row < rows as usize {
            let first = row * channels_per_group as usize;
            let mut sum = f32::new(0.0);
            for k in 0..channels_per_group as usize {
                sum += channel_mean[first + k];
            }
            let mu = sum / f32::cast_from(channels_per_group);
            // Σ over channels of (M2_c + len·(μ_c − μ)²): the group's sum of squared deviations.
            let mut m2 = f32::new(0.0);
            for k in 0..channels_per_group as usize {
                let d = channel_mean[first + k] - mu;
                m2 += channel_m2[first + k] + f32::cast_from(len) * d * d;
            }
            let count = f32::cast_from(channels_per_group) * f32::cast_from(len);
            mean[row] = mu;
            rstd[row] = (m2 / count + eps).inverse_sqrt();
        }
    }

    /// `y = silu?(γ·(x − μ)/σ + β)`, element-wise.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn normalize_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<f32>,
        bias: &Tensor<f32>,
        mean: &Tensor<f32>,
        rstd: &Tensor<f32>,
        y: &mut Tensor<F>,
        elements: u32,
        channels: u32,
        channels_per_group: u32,
        len: u32,
        #[comptime] silu: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i < elements as usize {
            let (c, row) = channel_and_group(i / len as usize, channels, channels_per_group);
            let z = (f32::cast_from(x[i]) - mean[row]) * rstd[row] * weight[c] + bias[c];
            let mut out = z;
            if silu {
                out = z / (f32::new(1.0) + (-z).exp());
            }
            y[i] = F::cast_from(out);
        }
    }

    /// Per (sample, channel): Σ dz and Σ dz·x̂ over positions, a cube per channel.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_sums_kernel<F: Float>(
        x: &Tensor<F>,
        dy: &Tensor<F>,
        weight: &Tensor<f32>,
        bias: &Tensor<f32>,
        mean: &Tensor<f32>,
        rstd: &Tensor<f32>,
        sum_dz: &mut Tensor<f32>,
        sum_dz_normed: &mut Tensor<f32>,
        rows: u32,
        channels: u32,
        channels_per_group: u32,
        len: u32,
        #[comptime] block: u32,
        #[comptime] silu: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let nc = CUBE_POS;
        if nc < rows as usize {
            let (c, group_row) = channel_and_group(nc, channels, channels_per_group);
            let mu = mean[group_row];
            let r = rstd[group_row];
            let w = weight[c];
            let b = bias[c];
            let base = nc * len as usize;
            let mut shared = SharedMemory::<f32>::new(block as usize);

            let mut s_dz = f32::new(0.0);
            let mut s_dz_normed = f32::new(0.0);
            let mut i = UNIT_POS as usize;
            while i < len as usize {
                let normed = (f32::cast_from(x[base + i]) - mu) * r;
                let dz = pre_activation_grad(f32::cast_from(dy[base + i]), normed * w + b, silu);
                s_dz += dz;
                s_dz_normed += dz * normed;
                i += CUBE_DIM as usize;
            }
            let total_dz = cube_sum(&mut shared, s_dz);
            let total_dz_normed = cube_sum(&mut shared, s_dz_normed);
            if UNIT_POS == 0 {
                sum_dz[nc] = total_dz;
                sum_dz_normed[nc] = total_dz_normed;
            }
        }
    }

    /// `dx = (γ·dz − mean(γ·dz) − x̂·mean(γ·dz·x̂)) / σ`, element-wise.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_input_kernel<F: Float>(
        x: &Tensor<F>,
        dy: &Tensor<F>,
        weight: &Tensor<f32>,
        bias: &Tensor<f32>,
        mean: &Tensor<f32>,
        rstd: &Tensor<f32>,
        mean_d: &Tensor<f32>,
        mean_dx: &Tensor<f32>,
        dx: &mut Tensor<F>,
        elements: u32,
        channels: u32,
        channels_per_group: u32,
        len: u32,
        #[comptime] silu: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i < elements as usize {
            let (c, row) = channel_and_group(i / len as usize, channels, channels_per_group);
            let r = rstd[row];
            let normed = (f32::cast_from(x[i]) - mean[row]) * r;
            let w = weight[c];
            let dz = pre_activation_grad(f32::cast_from(dy[i]), normed * w + bias[c], silu);
            dx[i] = F::cast_from(r * (w * dz - mean_d[row] - normed * mean_dx[row]));
        }
    }

    /// Row `row` of the row kernels: its length `m`, its first element, and its first channel.
    #[cube]
    fn row_extent(
        row: usize,
        groups: u32,
        channels_per_group: u32,
        len: u32,
    ) -> (usize, usize, usize) {
        let m = (channels_per_group * len) as usize;
        (
            m,
            row * m,
            (row % groups as usize) * channels_per_group as usize,
        )
    }

    /// Per (sample, group) — `m = channels_per_group·len` contiguous elements, a cube each — for
    /// channels of few positions: the group's mean and 1/σ (two passes over the row) and then
    /// `y = silu?(γ·x̂ + β)`, in one launch.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn row_forward_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<f32>,
        bias: &Tensor<f32>,
        y: &mut Tensor<F>,
        mean: &mut Tensor<f32>,
        rstd: &mut Tensor<f32>,
        rows: u32,
        groups: u32,
        channels_per_group: u32,
        len: u32,
        eps: f32,
        #[comptime] block: u32,
        #[comptime] silu: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS;
        // The same for every unit of a cube, so the barriers inside stay uniform.
        if row < rows as usize {
            let (m, base, first_channel) = row_extent(row, groups, channels_per_group, len);
            let mut shared = SharedMemory::<f32>::new(block as usize);
            let mut sum = f32::new(0.0);
            let mut i = UNIT_POS as usize;
            while i < m {
                sum += f32::cast_from(x[base + i]);
                i += CUBE_DIM as usize;
            }
            let mu = cube_sum(&mut shared, sum) / f32::cast_from(channels_per_group * len);
            let mut squares = f32::new(0.0);
            i = UNIT_POS as usize;
            while i < m {
                let d = f32::cast_from(x[base + i]) - mu;
                squares += d * d;
                i += CUBE_DIM as usize;
            }
            let r = (cube_sum(&mut shared, squares) / f32::cast_from(channels_per_group * len)
                + eps)
                .inverse_sqrt();
            i = UNIT_POS as usize;
            while i < m {
                let c = first_channel + i / len as usize;
                let z = (f32::cast_from(x[base + i]) - mu) * r * weight[c] + bias[c];
                let mut out = z;
                if silu {
                    out = z / (f32::new(1.0) + (-z).exp());
                }
                y[base + i] = F::cast_from(out);
                i += CUBE_DIM as usize;
            }
            if UNIT_POS == 0 {
                mean[row] = mu;
                rstd[row] = r;
            }
        }
    }

    /// The input gradient of [`row_forward_kernel`], a cube per (sample, group): the group's
    /// means of `γ·dz` and `γ·dz·x̂` (one pass), then `dx` (a second).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn row_backward_kernel<F: Float>(
        x: &Tensor<F>,
        dy: &Tensor<F>,
        weight: &Tensor<f32>,
        bias: &Tensor<f32>,
        mean: &Tensor<f32>,
        rstd: &Tensor<f32>,
        dx: &mut Tensor<F>,
        rows: u32,
        groups: u32,
        channels_per_group: u32,
        len: u32,
        #[comptime] block: u32,
        #[comptime] silu: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS;
        if row < rows as usize {
            let (m, base, first_channel) = row_extent(row, groups, channels_per_group, len);
            let mu = mean[row];
            let r = rstd[row];
            let mut shared = SharedMemory::<f32>::new(block as usize);
            let mut s_d = f32::new(0.0);
            let mut s_dx = f32::new(0.0);
            let mut i = UNIT_POS as usize;
            while i < m {
                let c = first_channel + i / len as usize;
                let w = weight[c];
                let normed = (f32::cast_from(x[base + i]) - mu) * r;
                let dz =
                    pre_activation_grad(f32::cast_from(dy[base + i]), normed * w + bias[c], silu);
                s_d += w * dz;
                s_dx += w * dz * normed;
                i += CUBE_DIM as usize;
            }
            let mean_d = cube_sum(&mut shared, s_d) / f32::cast_from(channels_per_group * len);
            let mean_dx = cube_sum(&mut shared, s_dx) / f32::cast_from(channels_per_group * len);
            i = UNIT_POS as usize;
            while i < m {
                let c = first_channel + i / len as usize;
                let w = weight[c];
                let normed = (f32::cast_from(x[base + i]) - mu) * r;
                let dz =
                    pre_activation_grad(f32::cast_from(dy[base + i]), normed * w + bias[c], silu);
                dx[base + i] = F::cast_from(r * (w * dz - mean_d - normed * mean_dx));
                i += CUBE_DIM as usize;
            }
        }
    }

    /// The weight and bias gradients' partial sums for [`row_backward_kernel`]: a unit per
    /// (chunk of `chunk` samples, channel) sums `dz` and `dz·x̂` over its samples and the
    /// channel's positions into `[chunks, channels]` (neighbouring units read neighbouring
    /// channels, so a LayerNorm's `[tokens, channels, 1]` is read coalesced).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn param_sums_kernel<F: Float>(
        x: &Tensor<F>,
        dy: &Tensor<F>,
        weight: &Tensor<f32>,
        bias: &Tensor<f32>,
        mean: &Tensor<f32>,
        rstd: &Tensor<f32>,
        sum_dz: &mut Tensor<f32>,
        sum_dz_normed: &mut Tensor<f32>,
        samples: u32,
        channels: u32,
        channels_per_group: u32,
        len: u32,
        chunk: u32,
        chunks: u32,
        #[comptime] silu: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let unit = ABSOLUTE_POS;
        if unit < (chunks * channels) as usize {
            let c = unit % channels as usize;
            let first = (unit / channels as usize) * chunk as usize;
            let mut end = first + chunk as usize;
            if end > samples as usize {
                end = samples as usize;
            }
            let groups = (channels / channels_per_group) as usize;
            let g = c / channels_per_group as usize;
            let w = weight[c];
            let b = bias[c];
            let mut s_dz = f32::new(0.0);
            let mut s_dz_normed = f32::new(0.0);
            let mut n = first;
            while n < end {
                let mu = mean[n * groups + g];
                let r = rstd[n * groups + g];
                let base = (n * channels as usize + c) * len as usize;
                for p in 0..len as usize {
                    let normed = (f32::cast_from(x[base + p]) - mu) * r;
                    let dz =
                        pre_activation_grad(f32::cast_from(dy[base + p]), normed * w + b, silu);
                    s_dz += dz;
                    s_dz_normed += dz * normed;
                }
                n += 1;
            }
            sum_dz[unit] = s_dz;
            sum_dz_normed[unit] = s_dz_normed;
        }
    }
}

/// A plain CubeCL backend of runtime `R`: what the kernels' host code computes its small tensor
/// ops with (any float/int/bool element types would do: a `CubeTensor` carries its own dtype).
type Inner<R> = CubeBackend<R, f32, i32, u8>;

/// Sizes of a `[n, c, l]` GroupNorm.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    n: usize,
    c: usize,
    l: usize,
    groups: usize,
    silu: bool,
    eps: f32,
    /// Whether the backward sums the weight's and bias's gradients (else their outputs are
    /// left unwritten: a frozen norm's are not used).
    param_grads: bool,
}

impl Sizes {
    /// `None` where the kernels do not apply: sizes beyond their 32-bit indices, or channels
    /// that do not split into the groups.
    fn of(dims: [usize; 3], options: GroupNormOptions) -> Option<Self> {
        let [n, c, l] = dims;
        let fits = n
            .checked_mul(c)
            .and_then(|nc| nc.checked_mul(l))
            .is_some_and(|e| e < u32::MAX as usize);
        let splits = options.groups > 0 && c.is_multiple_of(options.groups);
        (fits && splits && l > 0).then_some(Self {
            n,
            c,
            l,
            groups: options.groups,
            silu: options.silu,
            eps: options.eps as f32,
            param_grads: true,
        })
    }

    fn per_group(&self) -> u32 {
        (self.c / self.groups) as u32
    }
}

fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, dtype)
}

/// How one of Burn's (cubek's) matmul or implicit-GEMM algorithms loads its tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loads {
    /// Plain loads: every device.
    Sync,
    /// Async copies and barriers.
    Async,
    /// The Tensor Memory Accelerator.
    Tma,
}

/// What the device lacks for `loads`, if anything. cubek's loaders check it inside the kernel as
/// it is expanded: where it is missing, the kernel is compiled empty and cubek's launcher still
/// answers Ok, its output never written (seen with the asynchronous convolution algorithms on a
/// Vulkan adapter: errors of 4e3 against Burn's numbers). CubeCL has neither feature outside
/// CUDA, so the matmul and convolution ops ask before they launch.
fn missing_for<R: CubeRuntime>(like: &CubeTensor<R>, loads: Loads) -> Option<&'static str> {
    let features = &like.client.properties().features;
    match loads {
        Loads::Async if !features.copy_async => Some("the device has no async copies"),
        Loads::Tma if features.tma.is_empty() => Some("the device has no TMA"),
        _ => None,
    }
}

/// Cubes for `count` items of work (a cube each), spread within the device's limits.
fn cubes<R: CubeRuntime>(like: &CubeTensor<R>, count: usize) -> CubeCount {
    CubeCountSelection::new(&like.client, count as u32).cube_count()
}

/// Units per cube for the reductions, within the device's limit (a power of two).
fn block<R: CubeRuntime>(like: &CubeTensor<R>) -> u32 {
    let max = like.client.properties().hardware.max_units_per_cube;
    let mut block = BLOCK;
    while block > max && block > 1 {
        block /= 2;
    }
    block
}

/// The launch of a reduction over `rows` rows of `len` elements, a cube each (of about `len`
/// units: a power of two, at most [`block`]). Returns the cube count and size, and `block`.
fn reduce_launch<R: CubeRuntime>(
    like: &CubeTensor<R>,
    rows: usize,
    len: usize,
) -> (CubeCount, CubeDim, u32) {
    let block = (len.next_power_of_two() as u32).min(block(like));
    (cubes(like, rows), CubeDim::new_1d(block), block)
}

/// Elements each unit of a row kernel's cube takes, about: the cube is the power of two at or
/// above `len /` this, at least [`ROW_UNITS_MIN`] and at most [`block`]. Measured on lavapipe
/// (`LayerNorm(320)` over [2, 256, 320], `docs/perf.md` session 12), a cube of 256 for a
/// 320-element row took 2.9× the time of one of 32 forward, 3.1× forward and backward (128: 2.1×,
/// 2.1×; 64: 1.5×, 1.6×); on a GPU a warp per row of a few hundred elements is the usual layout.
const ROW_ELEMENTS_PER_UNIT: usize = 16;
/// The smallest cube of the row kernels: a warp on NVIDIA GPUs.
const ROW_UNITS_MIN: u32 = 32;

/// The launch of the row kernels over `rows` rows of `len` elements, a cube each (see
/// [`ROW_ELEMENTS_PER_UNIT`]). Returns the cube count and size, and the size.
fn row_launch<R: CubeRuntime>(
    like: &CubeTensor<R>,
    rows: usize,
    len: usize,
) -> (CubeCount, CubeDim, u32) {
    let units = len.div_ceil(ROW_ELEMENTS_PER_UNIT).next_power_of_two() as u32;
    let block = units.max(ROW_UNITS_MIN).min(block(like));
    (cubes(like, rows), CubeDim::new_1d(block), block)
}

/// Cube count and size for `elements` units of element-wise work.
fn elementwise<R: CubeRuntime>(like: &CubeTensor<R>, elements: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(ELEMENTWISE.min(block(like).max(1)));
    (
        cubecl::calculate_cube_count_elemwise(&like.client, elements, dim),
        dim,
    )
}

/// Forward on `R`'s tensors: `[x, weight (f32), bias (f32)]` → `[y, mean, rstd]`.
fn forward_on<R: CubeRuntime>(inputs: [CubeTensor<R>; 3], s: Sizes) -> [CubeTensor<R>; 3] {
    let [x, weight, bias] = inputs.map(into_contiguous);
    if s.l < ROW_KERNELS_BELOW {
        return forward_rows(x, weight, bias, s);
    }
    let Sizes {
        n, c, l, groups, ..
    } = s;
    let client = x.client.clone();
    let channel_mean = empty(&x, Shape::new([n * c]), DType::F32);
    let channel_m2 = empty(&x, Shape::new([n * c]), DType::F32);
    let (count, dim, block) = reduce_launch(&x, n * c, l);
    device::channel_stats_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        channel_mean.clone().into_tensor_arg(),
        channel_m2.clone().into_tensor_arg(),
        (n * c) as u32,
        l as u32,
        block,
        x.dtype.into(),
    );
    let mean = empty(&x, Shape::new([n, groups, 1]), DType::F32);
    let rstd = empty(&x, Shape::new([n, groups, 1]), DType::F32);
    let (count, dim) = elementwise(&x, n * groups);
    device::group_stats_kernel::launch::<R>(
        &client,
        count,
        dim,
        channel_mean.into_tensor_arg(),
        channel_m2.into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        (n * groups) as u32,
        s.per_group(),
        l as u32,
        s.eps,
    );
    let y = empty(&x, Shape::new([n, c, l]), x.dtype);
    let (count, dim) = elementwise(&x, n * c * l);
    let dtype = x.dtype;
    device::normalize_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        y.clone().into_tensor_arg(),
        (n * c * l) as u32,
        c as u32,
        s.per_group(),
        l as u32,
        s.silu,
        dtype.into(),
    );
    [y, mean, rstd]
}

/// Backward on `R`'s tensors: `[x, dy, weight (f32), bias (f32), mean, rstd]` →
/// `[dx, dweight (f32), dbias (f32)]`.
fn backward_on<R: CubeRuntime>(inputs: [CubeTensor<R>; 6], s: Sizes) -> [CubeTensor<R>; 3] {
    let inputs = inputs.map(into_contiguous);
    if s.l < ROW_KERNELS_BELOW {
        return backward_rows(inputs, s);
    }
    let [x, dy, weight, bias, mean, rstd] = inputs;
    let Sizes {
        n, c, l, groups, ..
    } = s;
    let client = x.client.clone();
    let dtype = x.dtype;

    let sum_dz = empty(&x, Shape::new([n, c, 1]), DType::F32);
    let sum_dz_normed = empty(&x, Shape::new([n, c, 1]), DType::F32);
    let (count, dim, block) = reduce_launch(&x, n * c, l);
    device::backward_sums_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        weight.clone().into_tensor_arg(),
        bias.clone().into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        sum_dz.clone().into_tensor_arg(),
        sum_dz_normed.clone().into_tensor_arg(),
        (n * c) as u32,
        c as u32,
        s.per_group(),
        l as u32,
        block,
        s.silu,
        dtype.into(),
    );

    // The per-channel sums give dβ and dγ (over the batch) and, weighted by γ, the per-group
    // means of dx̂ = γ·dz and of dx̂·x̂ that the closed form needs.
    let sum_dz = tensor::<R, 3>(sum_dz);
    let sum_dz_normed = tensor::<R, 3>(sum_dz_normed);
    let [dweight, dbias] = if s.param_grads {
        [&sum_dz_normed, &sum_dz].map(|t| primitive(t.clone().sum_dim(0).reshape([c])))
    } else {
        [(); 2].map(|_| empty(&x, Shape::new([c]), DType::F32))
    };
    let w = tensor::<R, 1>(weight.clone()).reshape([1, c, 1]);
    let m = (c / groups * l) as f64;
    let group_mean = |t: Tensor<Inner<R>, 3>| {
        let t = (t * w.clone())
            .reshape([n, groups, c / groups])
            .sum_dim(2)
            .div_scalar(m);
        into_contiguous(primitive(t))
    };
    let mean_d = group_mean(sum_dz);
    let mean_dx = group_mean(sum_dz_normed);

    let dx = empty(&x, Shape::new([n, c, l]), dtype);
    let (count, dim) = elementwise(&x, n * c * l);
    device::backward_input_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        dy.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        mean.into_tensor_arg(),
        rstd.into_tensor_arg(),
        mean_d.into_tensor_arg(),
        mean_dx.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        (n * c * l) as u32,
        c as u32,
        s.per_group(),
        l as u32,
        s.silu,
        dtype.into(),
    );
    [dx, dweight, dbias]
}

/// [`forward_on`] for channels of fewer than [`ROW_KERNELS_BELOW`] positions (a LayerNorm's
/// `[tokens, channels, 1]`): one launch of [`device::row_forward_kernel`].
fn forward_rows<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: CubeTensor<R>,
    s: Sizes,
) -> [CubeTensor<R>; 3] {
    let Sizes {
        n, c, l, groups, ..
    } = s;
    let client = x.client.clone();
    let dtype = x.dtype;
    let y = empty(&x, Shape::new([n, c, l]), dtype);
    let mean = empty(&x, Shape::new([n, groups, 1]), DType::F32);
    let rstd = empty(&x, Shape::new([n, groups, 1]), DType::F32);
    let (count, dim, block) = row_launch(&x, n * groups, c / groups * l);
    device::row_forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        (n * groups) as u32,
        groups as u32,
        s.per_group(),
        l as u32,
        s.eps,
        block,
        s.silu,
        dtype.into(),
    );
    [y, mean, rstd]
}

/// Units the weight and bias gradients' partial sums aim for: samples are split into chunks
/// until `chunks · channels` reaches about this many.
const PARAM_UNITS: usize = 1 << 16;

/// [`backward_on`] for the shapes [`forward_rows`] takes: `dx` by
/// [`device::row_backward_kernel`], `dγ` and `dβ` by [`device::param_sums_kernel`]'s partial
/// sums over chunks of samples, added up.
fn backward_rows<R: CubeRuntime>(inputs: [CubeTensor<R>; 6], s: Sizes) -> [CubeTensor<R>; 3] {
    let [x, dy, weight, bias, mean, rstd] = inputs;
    let Sizes {
        n, c, l, groups, ..
    } = s;
    let client = x.client.clone();
    let dtype = x.dtype;

    let dx = empty(&x, Shape::new([n, c, l]), dtype);
    let (count, dim, block) = row_launch(&x, n * groups, c / groups * l);
    device::row_backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        weight.clone().into_tensor_arg(),
        bias.clone().into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        (n * groups) as u32,
        groups as u32,
        s.per_group(),
        l as u32,
        block,
        s.silu,
        dtype.into(),
    );

    if !s.param_grads {
        let unused = || empty(&x, Shape::new([c]), DType::F32);
        return [dx, unused(), unused()];
    }
    let chunk = n.div_ceil((PARAM_UNITS / c).clamp(1, n));
    let chunks = n.div_ceil(chunk);
    let sum_dz = empty(&x, Shape::new([chunks, c]), DType::F32);
    let sum_dz_normed = empty(&x, Shape::new([chunks, c]), DType::F32);
    let (count, dim) = elementwise(&x, chunks * c);
    device::param_sums_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        dy.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        mean.into_tensor_arg(),
        rstd.into_tensor_arg(),
        sum_dz.clone().into_tensor_arg(),
        sum_dz_normed.clone().into_tensor_arg(),
        n as u32,
        c as u32,
        s.per_group(),
        l as u32,
        chunk as u32,
        chunks as u32,
        s.silu,
        dtype.into(),
    );
    let total = |t: CubeTensor<R>| primitive(tensor::<R, 2>(t).sum_dim(0).reshape([c]));
    [dx, total(sum_dz_normed), total(sum_dz)]
}

fn tensor<R: CubeRuntime, const D: usize>(t: CubeTensor<R>) -> Tensor<Inner<R>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn primitive<R: CubeRuntime, const D: usize>(t: Tensor<Inner<R>, D>) -> CubeTensor<R> {
    t.into_primitive().tensor()
}

/// `a` as a `B`, if `A` is `B`.
fn cast_same<A: 'static, B: 'static>(a: A) -> Option<B> {
    let mut slot = Some(a);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B>>()
        .and_then(Option::take)
}

/// How backend `I`'s float tensors reach a CubeCL runtime.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    /// `CubeTensor<R>`: launched at once.
    Plain,
    /// `FusionTensor<FusionCubeRuntime<R>>`: registered as a custom operation in the stream.
    #[cfg(feature = "fusion")]
    Fused,
}

/// A computation over the CubeCL runtime of backend `I`.
trait OnRuntime<T> {
    fn run<R: CubeRuntime>(self, route: Route) -> T;
}

/// Runs `f` on the runtime of `I`'s float tensors, if it is one compiled in.
fn on_runtime<I: Backend, T>(f: impl OnRuntime<T>) -> Option<T> {
    fn route<I: Backend, R: CubeRuntime>() -> Option<Route> {
        let float = TypeId::of::<FloatTensor<I>>();
        if float == TypeId::of::<CubeTensor<R>>() {
            return Some(Route::Plain);
        }
        #[cfg(feature = "fusion")]
        if float == TypeId::of::<fused::Tensor<R>>() {
            return Some(Route::Fused);
        }
        None
    }
    #[cfg(feature = "wgpu")]
    if let Some(r) = route::<I, burn::backend::wgpu::WgpuRuntime>() {
        return Some(f.run::<burn::backend::wgpu::WgpuRuntime>(r));
    }
    #[cfg(feature = "cuda")]
    if let Some(r) = route::<I, cubecl::cuda::CudaRuntime>() {
        return Some(f.run::<cubecl::cuda::CudaRuntime>(r));
    }
    let _ = f;
    None
}

/// Whether these kernels are on: yes unless [`super::enabled`] is not or `LIKENESS_CUBE_KERNELS`
/// is `0`, `off` or `false` (to measure them against the same autodiff ops on Burn's tensor ops,
/// in one binary).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    super::enabled()
        && *ON.get_or_init(|| {
            !matches!(
                std::env::var("LIKENESS_CUBE_KERNELS").as_deref(),
                Ok("0" | "off" | "false")
            )
        })
}

/// Whether backend `I`'s GroupNorm runs these kernels (when [`enabled`]).
pub fn applies<I: Backend>() -> bool {
    struct Probe;
    impl OnRuntime<()> for Probe {
        fn run<R: CubeRuntime>(self, _: Route) {}
    }
    on_runtime::<I, ()>(Probe).is_some()
}

/// Runs `op` on the runtime tensors of `inputs` and returns its outputs (of the shapes and
/// dtypes given) as `I`'s tensors.
struct Apply<I: Backend, const NI: usize, const NO: usize, Op> {
    name: &'static str,
    inputs: [FloatTensor<I>; NI],
    outputs: [(Shape, DType); NO],
    op: Op,
}

/// An operation on one runtime's tensors, whatever the runtime.
trait KernelOp<const NI: usize, const NO: usize>:
    Send + Sync + Copy + std::fmt::Debug + 'static
{
    fn run<R: CubeRuntime>(&self, inputs: [CubeTensor<R>; NI]) -> [CubeTensor<R>; NO];
}

impl<I: Backend, const NI: usize, const NO: usize, Op: KernelOp<NI, NO>>
    OnRuntime<[FloatTensor<I>; NO]> for Apply<I, NI, NO, Op>
{
    fn run<R: CubeRuntime>(self, route: Route) -> [FloatTensor<I>; NO] {
        let expect = "the route was chosen for this type";
        match route {
            Route::Plain => {
                let inputs = self
                    .inputs
                    .map(|t| cast_same::<FloatTensor<I>, CubeTensor<R>>(t).expect(expect));
                self.op
                    .run::<R>(inputs)
                    .map(|t| cast_same::<CubeTensor<R>, FloatTensor<I>>(t).expect(expect))
            }
            #[cfg(feature = "fusion")]
            Route::Fused => {
                let inputs = self
                    .inputs
                    .map(|t| cast_same::<FloatTensor<I>, fused::Tensor<R>>(t).expect(expect));
                fused::register::<R, NI, NO, Op>(self.name, inputs, self.outputs, self.op)
                    .map(|t| cast_same::<fused::Tensor<R>, FloatTensor<I>>(t).expect(expect))
            }
        }
    }
}

impl<I: Backend, const NI: usize, const NO: usize, Op: KernelOp<NI, NO>> Apply<I, NI, NO, Op> {
    fn apply(self) -> Option<[FloatTensor<I>; NO]> {
        // `outputs` and `name` are read on the fused route only.
        let _ = (&self.outputs, self.name);
        on_runtime::<I, _>(self)
    }
}

/// `lhs · rhs` by the algorithm of `choice` ([`matmul`]), in `lhs`'s dtype; `None` when backend
/// `I` is not a CubeCL backend, the kernels are off, or the tensors do not multiply (shapes,
/// dtypes).
pub(super) fn matmul_apply<I: Backend>(
    lhs: FloatTensor<I>,
    rhs: FloatTensor<I>,
    choice: super::matmul::MatmulChoice,
) -> Option<FloatTensor<I>> {
    use burn::tensor::TensorMetadata;
    if !enabled() || !applies::<I>() || choice == super::matmul::MatmulChoice::Burn {
        return None;
    }
    let dtype = lhs.dtype();
    if rhs.dtype() != dtype {
        return None;
    }
    let shape = matmul::output_shape(lhs.shape().as_slice(), rhs.shape().as_slice())?;
    let [out] = Apply::<I, 2, 1, _> {
        name: "likeness_matmul",
        inputs: [lhs, rhs],
        outputs: [(Shape::from(shape), dtype)],
        op: matmul::MatmulOp(choice),
    }
    .apply()?;
    Some(out)
}

#[derive(Debug, Clone, Copy)]
struct ForwardOp(Sizes);

impl KernelOp<3, 3> for ForwardOp {
    fn run<R: CubeRuntime>(&self, inputs: [CubeTensor<R>; 3]) -> [CubeTensor<R>; 3] {
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

/// Forward: `(y, mean, rstd)` as [`super::group_norm::forward_burn`] returns them (`y` in `x`'s
/// dtype, the statistics `[n, groups, 1]` in f32); `None` when backend `I` is not a CubeCL
/// backend, the kernels are off, or the sizes do not suit them.
pub(super) fn forward<I: Backend>(
    x: &Tensor<I, 3>,
    weight: &Tensor<I, 1>,
    bias: &Tensor<I, 1>,
    options: GroupNormOptions,
) -> Option<(Tensor<I, 3>, Tensor<I, 3>, Tensor<I, 3>)> {
    if !enabled() || !applies::<I>() {
        return None;
    }
    let s = Sizes::of(x.dims(), options)?;
    let stats = Shape::new([s.n, s.groups, 1]);
    let [y, mean, rstd] = Apply::<I, 3, 3, _> {
        name: "likeness_group_norm_forward",
        inputs: [
            float(x.clone()),
            float(weight.clone().to_dtype(DType::F32)),
            float(bias.clone().to_dtype(DType::F32)),
        ],
        outputs: [
            (Shape::new([s.n, s.c, s.l]), x.dtype()),
            (stats.clone(), DType::F32),
            (stats, DType::F32),
        ],
        op: ForwardOp(s),
    }
    .apply()?;
    Some((wrap(y), wrap(mean), wrap(rstd)))
}

/// Backward: `(dx, dweight, dbias)` in their inputs' dtypes, as
/// [`super::group_norm::backward_burn`]; `None` where [`forward`] would be.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<I: Backend>(
    x: &Tensor<I, 3>,
    weight: &Tensor<I, 1>,
    bias: &Tensor<I, 1>,
    mean: &Tensor<I, 3>,
    rstd: &Tensor<I, 3>,
    grad: &Tensor<I, 3>,
    options: GroupNormOptions,
    param_grads: bool,
) -> Option<(Tensor<I, 3>, super::group_norm::ParamGrads<I>)> {
    if !enabled() || !applies::<I>() {
        return None;
    }
    let s = Sizes {
        param_grads,
        ..Sizes::of(x.dims(), options)?
    };
    let [dx, dweight, dbias] = Apply::<I, 6, 3, _> {
        name: "likeness_group_norm_backward",
        inputs: [
            float(x.clone()),
            float(grad.clone().to_dtype(x.dtype())),
            float(weight.clone().to_dtype(DType::F32)),
            float(bias.clone().to_dtype(DType::F32)),
            float(mean.clone().to_dtype(DType::F32)),
            float(rstd.clone().to_dtype(DType::F32)),
        ],
        outputs: [
            (Shape::new([s.n, s.c, s.l]), x.dtype()),
            (Shape::new([s.c]), DType::F32),
            (Shape::new([s.c]), DType::F32),
        ],
        op: BackwardOp(s),
    }
    .apply()?;
    let params = param_grads.then(|| {
        (
            wrap::<I, 1>(dweight).to_dtype(weight.dtype()),
            wrap::<I, 1>(dbias).to_dtype(bias.dtype()),
        )
    });
    Some((wrap(dx), params))
}

/// The kernels inside a fused backend's stream: a custom operation that the fusers stop at,
/// executed in stream order on the inner backend's tensors (as `burn-vision` runs its CubeCL
/// kernels under fusion).
#[cfg(feature = "fusion")]
mod fused {
    use std::marker::PhantomData;

    use burn::tensor::{DType, Shape};
    use burn_cubecl::CubeRuntime;
    use burn_cubecl::fusion::FusionCubeRuntime;
    use burn_cubecl::tensor::CubeTensor;
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{FusionRuntime, FusionTensor};
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

    use super::{Inner, KernelOp};

    pub(super) type Tensor<R> = FusionTensor<FusionCubeRuntime<R>>;

    struct Custom<R, const NI: usize, const NO: usize, Op> {
        desc: CustomOpIr,
        op: Op,
        _runtime: PhantomData<fn() -> R>,
    }

    impl<R, const NI: usize, const NO: usize, Op: std::fmt::Debug> std::fmt::Debug
        for Custom<R, NI, NO, Op>
    {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Custom")
                .field("id", &self.desc.id)
                .field("op", &self.op)
                .finish()
        }
    }

    impl<R: CubeRuntime, const NI: usize, const NO: usize, Op: KernelOp<NI, NO>>
        Operation<FusionCubeRuntime<R>> for Custom<R, NI, NO, Op>
    {
        fn execute(
            &self,
            handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
        ) {
            let (inputs, outputs) = self.desc.as_fixed::<NI, NO>();
            let inputs: [CubeTensor<R>; NI] = inputs
                .each_ref()
                .map(|ir| handles.get_float_tensor::<Inner<R>>(ir));
            let results = self.op.run::<R>(inputs);
            for (ir, tensor) in outputs.iter().zip(results) {
                handles.register_float_tensor::<Inner<R>>(&ir.id, tensor);
            }
        }
    }

    pub(super) fn register<R: CubeRuntime, const NI: usize, const NO: usize, Op>(
        name: &'static str,
        inputs: [Tensor<R>; NI],
        outputs: [(Shape, DType); NO],
        op: Op,
    ) -> [Tensor<R>; NO]
    where
        Op: KernelOp<NI, NO>,
    {
        let client = inputs[0].client.clone();
        let streams = OperationStreams::with_inputs(inputs.iter());
        let outputs = outputs
            .map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape, dtype));
        let inputs = inputs.map(|t| t.into_ir());
        let desc = CustomOpIr::new(name, &inputs, &outputs);
        let custom = Custom::<R, NI, NO, Op> {
            desc: desc.clone(),
            op,
            _runtime: PhantomData,
        };
        let tensors = client.register(streams, OperationIr::Custom(desc), custom);
        match <[Tensor<R>; NO]>::try_from(tensors) {
            Ok(tensors) => tensors,
            Err(_) => unreachable!("a custom operation returns the outputs it was given"),
        }
    }
}
