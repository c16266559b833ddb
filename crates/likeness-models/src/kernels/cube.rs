//! CubeCL kernels for GroupNorm (+SiLU), shared by the CUDA and wgpu backends.
//!
//! Burn's tensor ops run a GroupNorm as a chain of reductions and element-wise passes, each
//! reading and writing an activation-sized tensor (and, before the op's own backward, each kept
//! for autodiff). These kernels do it in three launches at most:
//!
//! - forward: one cube per (sample, group) row, two passes over the row for the mean and the
//!   variance (as PyTorch, not the one-pass Σx² that loses digits when |μ| ≫ σ), a third that
//!   writes `y = silu?(γ·x̂ + β)`; the mean and 1/σ come out for the backward;
//! - backward: one cube per (sample, channel) sums `dz` and `dz·x̂` over positions (`dz` the
//!   gradient before SiLU, recomputed from `x`), a few small tensor ops turn those sums into `dγ`,
//!   `dβ` and the two per-group means, and one element-wise launch writes `dx`.
//!
//! Every statistic is accumulated in f32 whatever the tensors' dtype. They run on plain
//! `CubeBackend` tensors (`CubeTensor`); other backends — Flex, and fused (`Fusion<…>`) GPU
//! backends, whose tensors are not `CubeTensor`s — keep the Burn-op path of
//! [`super::group_norm`]. Parity with that path: `tests/kernels_cube.rs` (lavapipe through wgpu).

use std::any::{Any, TypeId};

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorPrimitive};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim};
use cubecl::server::CubeCountSelection;

use super::ToDtype;
use super::group_norm::GroupNormOptions;
use device::{
    group_norm_backward_input_kernel, group_norm_backward_sums_kernel, group_norm_forward_kernel,
};

/// Units per cube of the reduction kernels: a power of two (the tree reduction halves it).
const BLOCK: u32 = 256;

/// The kernels themselves (CubeCL's prelude names `Tensor` and `Float` too, so they live apart).
mod device {
    use cubecl::prelude::*;

    /// The sum of every unit's `value` over the cube (all units must call it: it synchronises).
    #[cube]
    fn cube_sum(shared: &mut SharedMemory<f32>, value: f32) -> f32 {
        let unit = UNIT_POS as usize;
        shared[unit] = value;
        sync_cube();
        let mut stride = CUBE_DIM / 2;
        while stride > 0 {
            if UNIT_POS < stride {
                let other = shared[unit + stride as usize];
                shared[unit] += other;
            }
            sync_cube();
            stride /= 2;
        }
        let total = shared[0];
        // Nobody may overwrite `shared` for the next sum before every unit has read this one.
        sync_cube();
        total
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

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn group_norm_forward_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<f32>,
        bias: &Tensor<f32>,
        y: &mut Tensor<F>,
        mean_out: &mut Tensor<f32>,
        rstd_out: &mut Tensor<f32>,
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
            let m = channels_per_group as usize * len as usize;
            let base = row * m;
            let first_channel = (row % groups as usize) * channels_per_group as usize;
            let step = CUBE_DIM as usize;
            let mut shared = SharedMemory::<f32>::new(block as usize);

            let mut sum = f32::new(0.0);
            let mut i = UNIT_POS as usize;
            while i < m {
                sum += f32::cast_from(x[base + i]);
                i += step;
            }
            let mean = cube_sum(&mut shared, sum) / f32::cast_from(m);

            let mut squares = f32::new(0.0);
            i = UNIT_POS as usize;
            while i < m {
                let d = f32::cast_from(x[base + i]) - mean;
                squares += d * d;
                i += step;
            }
            let rstd = (cube_sum(&mut shared, squares) / f32::cast_from(m) + eps).inverse_sqrt();

            i = UNIT_POS as usize;
            while i < m {
                let c = first_channel + i / len as usize;
                let z = (f32::cast_from(x[base + i]) - mean) * rstd * weight[c] + bias[c];
                let mut out = z;
                if silu {
                    out = z / (f32::new(1.0) + (-z).exp());
                }
                y[base + i] = F::cast_from(out);
                i += step;
            }
            if UNIT_POS == 0 {
                mean_out[row] = mean;
                rstd_out[row] = rstd;
            }
        }
    }

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn group_norm_backward_sums_kernel<F: Float>(
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
            let c = nc % channels as usize;
            let n = nc / channels as usize;
            let groups = (channels / channels_per_group) as usize;
            let group_row = n * groups + c / channels_per_group as usize;
            let mu = mean[group_row];
            let r = rstd[group_row];
            let w = weight[c];
            let b = bias[c];
            let base = nc * len as usize;
            let step = CUBE_DIM as usize;
            let mut shared = SharedMemory::<f32>::new(block as usize);

            let mut s_dz = f32::new(0.0);
            let mut s_dz_normed = f32::new(0.0);
            let mut i = UNIT_POS as usize;
            while i < len as usize {
                let normed = (f32::cast_from(x[base + i]) - mu) * r;
                let dz = pre_activation_grad(f32::cast_from(dy[base + i]), normed * w + b, silu);
                s_dz += dz;
                s_dz_normed += dz * normed;
                i += step;
            }
            let total_dz = cube_sum(&mut shared, s_dz);
            let total_dz_normed = cube_sum(&mut shared, s_dz_normed);
            if UNIT_POS == 0 {
                sum_dz[nc] = total_dz;
                sum_dz_normed[nc] = total_dz_normed;
            }
        }
    }

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn group_norm_backward_input_kernel<F: Float>(
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
            let nc = i / len as usize;
            let c = nc % channels as usize;
            let n = nc / channels as usize;
            let groups = (channels / channels_per_group) as usize;
            let row = n * groups + c / channels_per_group as usize;
            let r = rstd[row];
            let normed = (f32::cast_from(x[i]) - mean[row]) * r;
            let w = weight[c];
            let dz = pre_activation_grad(f32::cast_from(dy[i]), normed * w + bias[c], silu);
            dx[i] = F::cast_from(r * (w * dz - mean_d[row] - normed * mean_dx[row]));
        }
    }
}

/// `a` as a `B`, if `A` is `B`.
fn cast_same<A: 'static, B: 'static>(a: A) -> Option<B> {
    let mut slot = Some(a);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B>>()
        .and_then(Option::take)
}

/// The CubeCL runtime whose tensors backend `I` uses, if it is one of the GPU backends' (not
/// fused).
pub(super) trait CubeCall {
    /// Runs `f` with `R` set to the runtime of `I`'s float tensors, if those are `CubeTensor<R>`.
    fn call<I: Backend, T>(f: impl CubeFn<I, T>) -> Option<T>;
}

/// A computation generic over the CubeCL runtime.
pub(super) trait CubeFn<I: Backend, T> {
    fn run<R: CubeRuntime>(self) -> T;
}

/// The runtimes compiled in.
pub(super) struct Runtimes;

impl CubeCall for Runtimes {
    fn call<I: Backend, T>(f: impl CubeFn<I, T>) -> Option<T> {
        #[cfg(feature = "wgpu")]
        if is_runtime::<I, burn::backend::wgpu::WgpuRuntime>() {
            return Some(f.run::<burn::backend::wgpu::WgpuRuntime>());
        }
        #[cfg(feature = "cuda")]
        if is_runtime::<I, cubecl::cuda::CudaRuntime>() {
            return Some(f.run::<cubecl::cuda::CudaRuntime>());
        }
        let _ = f;
        None
    }
}

fn is_runtime<I: Backend, R: CubeRuntime>() -> bool {
    TypeId::of::<FloatTensor<I>>() == TypeId::of::<CubeTensor<R>>()
}

/// Whether backend `I`'s GroupNorm runs these kernels.
pub fn applies<I: Backend>() -> bool {
    struct Probe;
    impl<I: Backend> CubeFn<I, ()> for Probe {
        fn run<R: CubeRuntime>(self) {}
    }
    super::enabled() && Runtimes::call::<I, ()>(Probe).is_some()
}

fn to_cube<I: Backend, R: CubeRuntime, const D: usize>(t: Tensor<I, D>) -> CubeTensor<R> {
    let primitive: FloatTensor<I> = t.into_primitive().tensor();
    into_contiguous(
        cast_same::<FloatTensor<I>, CubeTensor<R>>(primitive)
            .expect("called only for the backend of this runtime"),
    )
}

fn from_cube<I: Backend, R: CubeRuntime, const D: usize>(t: CubeTensor<R>) -> Tensor<I, D> {
    let primitive = cast_same::<CubeTensor<R>, FloatTensor<I>>(t)
        .expect("called only for the backend of this runtime");
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// Cubes for `count` items of work, within the device's per-dimension limit.
fn cubes<R: CubeRuntime>(like: &CubeTensor<R>, count: usize) -> Option<CubeCount> {
    let count = u32::try_from(count).ok()?;
    Some(CubeCountSelection::new(&like.client, count).cube_count())
}

/// Threads per cube for the reductions, within the device's limit (a power of two).
fn block<R: CubeRuntime>(like: &CubeTensor<R>) -> u32 {
    let max = like.client.properties().hardware.max_units_per_cube;
    let mut block = BLOCK;
    while block > max && block > 1 {
        block /= 2;
    }
    block
}

/// Sizes of a `[n, c, l]` GroupNorm, as the kernels take them; `None` where they do not fit
/// the kernels' 32-bit indices.
#[derive(Clone, Copy)]
struct Sizes {
    n: usize,
    c: usize,
    l: usize,
    groups: usize,
}

impl Sizes {
    fn of(dims: [usize; 3], options: GroupNormOptions) -> Option<Self> {
        let [n, c, l] = dims;
        let fits = (n * c * l) < u32::MAX as usize
            && options.groups > 0
            && c.is_multiple_of(options.groups);
        fits.then_some(Self {
            n,
            c,
            l,
            groups: options.groups,
        })
    }

    fn per_group(&self) -> u32 {
        (self.c / self.groups) as u32
    }
}

/// Forward: `(y, mean, rstd)` as [`super::group_norm`]'s Burn path returns them (`y` in `x`'s
/// dtype, the statistics `[n, groups, 1]` in f32); `None` when backend `I` is not a plain
/// CubeCL backend or the sizes do not suit the kernels.
pub(super) fn forward<I: Backend>(
    x: &Tensor<I, 3>,
    weight: &Tensor<I, 1>,
    bias: &Tensor<I, 1>,
    options: GroupNormOptions,
) -> Option<(Tensor<I, 3>, Tensor<I, 3>, Tensor<I, 3>)> {
    struct Forward<'a, I: Backend> {
        x: &'a Tensor<I, 3>,
        weight: &'a Tensor<I, 1>,
        bias: &'a Tensor<I, 1>,
        options: GroupNormOptions,
        sizes: Sizes,
    }
    impl<I: Backend> CubeFn<I, Option<(Tensor<I, 3>, Tensor<I, 3>, Tensor<I, 3>)>> for Forward<'_, I> {
        fn run<R: CubeRuntime>(self) -> Option<(Tensor<I, 3>, Tensor<I, 3>, Tensor<I, 3>)> {
            let Sizes { n, c, l, groups } = self.sizes;
            let x = to_cube::<I, R, 3>(self.x.clone());
            let weight = to_cube::<I, R, 1>(self.weight.clone().to_dtype(DType::F32));
            let bias = to_cube::<I, R, 1>(self.bias.clone().to_dtype(DType::F32));
            let rows = n * groups;
            let count = cubes(&x, rows)?;
            let block = block(&x);
            let y = empty_device_contiguous_dtype(
                x.client.clone(),
                x.device.clone(),
                Shape::new([n, c, l]),
                x.dtype,
            );
            let mean = empty_f32(&x, Shape::new([n, groups, 1]));
            let rstd = empty_f32(&x, Shape::new([n, groups, 1]));
            let dtype = x.dtype;
            group_norm_forward_kernel::launch::<R>(
                &x.client.clone(),
                count,
                CubeDim::new_1d(block),
                x.into_tensor_arg(),
                weight.into_tensor_arg(),
                bias.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                mean.clone().into_tensor_arg(),
                rstd.clone().into_tensor_arg(),
                rows as u32,
                groups as u32,
                self.sizes.per_group(),
                l as u32,
                self.options.eps as f32,
                block,
                self.options.silu,
                dtype.into(),
            );
            Some((from_cube(y), from_cube(mean), from_cube(rstd)))
        }
    }
    if !super::enabled() {
        return None;
    }
    let sizes = Sizes::of(x.dims(), options)?;
    Runtimes::call::<I, _>(Forward {
        x,
        weight,
        bias,
        options,
        sizes,
    })
    .flatten()
}

/// Backward: `(dx, dweight, dbias)` in their inputs' dtypes, as the Burn path's
/// [`super::group_norm::backward`]; `None` where [`forward`] would be.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<I: Backend>(
    x: &Tensor<I, 3>,
    weight: &Tensor<I, 1>,
    bias: &Tensor<I, 1>,
    mean: &Tensor<I, 3>,
    rstd: &Tensor<I, 3>,
    grad: &Tensor<I, 3>,
    options: GroupNormOptions,
) -> Option<(Tensor<I, 3>, Tensor<I, 1>, Tensor<I, 1>)> {
    struct Backward<'a, I: Backend> {
        x: &'a Tensor<I, 3>,
        weight: &'a Tensor<I, 1>,
        bias: &'a Tensor<I, 1>,
        mean: &'a Tensor<I, 3>,
        rstd: &'a Tensor<I, 3>,
        grad: &'a Tensor<I, 3>,
        options: GroupNormOptions,
        sizes: Sizes,
    }
    type Grads<I> = (Tensor<I, 3>, Tensor<I, 1>, Tensor<I, 1>);
    impl<I: Backend> CubeFn<I, Option<Grads<I>>> for Backward<'_, I> {
        fn run<R: CubeRuntime>(self) -> Option<Grads<I>> {
            let Sizes { n, c, l, groups } = self.sizes;
            let per_group = self.sizes.per_group();
            let silu = self.options.silu;
            let x_dtype = self.x.dtype();
            let x = to_cube::<I, R, 3>(self.x.clone());
            let dy = to_cube::<I, R, 3>(self.grad.clone().to_dtype(x_dtype));
            let weight_f32 = self.weight.clone().to_dtype(DType::F32);
            let weight = to_cube::<I, R, 1>(weight_f32.clone());
            let bias = to_cube::<I, R, 1>(self.bias.clone().to_dtype(DType::F32));
            let mean = to_cube::<I, R, 3>(self.mean.clone());
            let rstd = to_cube::<I, R, 3>(self.rstd.clone());
            let client = x.client.clone();
            let block = block(&x);

            let sum_dz = empty_f32(&x, Shape::new([n, c, 1]));
            let sum_dz_normed = empty_f32(&x, Shape::new([n, c, 1]));
            group_norm_backward_sums_kernel::launch::<R>(
                &client,
                cubes(&x, n * c)?,
                CubeDim::new_1d(block),
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
                per_group,
                l as u32,
                block,
                silu,
                x_dtype.into(),
            );

            // The per-channel sums give dβ and dγ (over the batch) and, weighted by γ, the
            // per-group means of dx̂ = γ·dz and of dx̂·x̂ that the closed form needs.
            let sum_dz = from_cube::<I, R, 3>(sum_dz);
            let sum_dz_normed = from_cube::<I, R, 3>(sum_dz_normed);
            let dbias = sum_dz.clone().sum_dim(0).reshape([c]);
            let dweight = sum_dz_normed.clone().sum_dim(0).reshape([c]);
            let w = weight_f32.reshape([1, c, 1]);
            let m = (c / groups * l) as f64;
            let group_mean = |t: Tensor<I, 3>| {
                (t * w.clone())
                    .reshape([n, groups, c / groups])
                    .sum_dim(2)
                    .div_scalar(m)
            };
            let mean_d = to_cube::<I, R, 3>(group_mean(sum_dz));
            let mean_dx = to_cube::<I, R, 3>(group_mean(sum_dz_normed));

            let elements = n * c * l;
            let cube_dim = CubeDim::new_1d(block);
            let count = cubecl::calculate_cube_count_elemwise(&client, elements, cube_dim);
            let dx = empty_device_contiguous_dtype(
                client.clone(),
                x.device.clone(),
                Shape::new([n, c, l]),
                x_dtype,
            );
            group_norm_backward_input_kernel::launch::<R>(
                &client,
                count,
                cube_dim,
                x.into_tensor_arg(),
                dy.into_tensor_arg(),
                weight.into_tensor_arg(),
                bias.into_tensor_arg(),
                mean.into_tensor_arg(),
                rstd.into_tensor_arg(),
                mean_d.into_tensor_arg(),
                mean_dx.into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                elements as u32,
                c as u32,
                per_group,
                l as u32,
                silu,
                x_dtype.into(),
            );
            Some((
                from_cube(dx),
                dweight.to_dtype(self.weight.dtype()),
                dbias.to_dtype(self.bias.dtype()),
            ))
        }
    }
    if !super::enabled() {
        return None;
    }
    let sizes = Sizes::of(x.dims(), options)?;
    Runtimes::call::<I, _>(Backward {
        x,
        weight,
        bias,
        mean,
        rstd,
        grad,
        options,
        sizes,
    })
    .flatten()
}
