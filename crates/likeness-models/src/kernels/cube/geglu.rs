//! The GEGLU gate ([`crate::kernels::geglu`]) as one element-wise launch each way: a unit per
//! output element reads its value and its gate from `h`'s row, computes in f32, and writes the
//! output (forward) or both halves of `dh` (backward).

use burn::prelude::*;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{Apply, KernelOp, applies, elementwise, empty, enabled};
use crate::kernels::{ToDtype, float, wrap};

mod device {
    use cubecl::prelude::*;

    /// `(g·Φ(g), Φ(g) + g·φ(g))`: the exact GELU and its derivative.
    #[cube]
    fn gelu_and_slope(g: f32) -> (f32, f32) {
        let cdf = f32::new(0.5)
            * (f32::new(1.0) + Erf::erf(g * f32::new(std::f32::consts::FRAC_1_SQRT_2)));
        // 1/√(2π)
        let pdf = (f32::new(-0.5) * g * g).exp() * f32::new(0.398_942_3);
        (g * cdf, cdf + g * pdf)
    }

    /// Where output element `i` (of `[rows, half]`) finds its value and its gate in the row
    /// `[value | gate]` of `h` (`[rows, 2·half]`).
    #[cube]
    fn halves(i: usize, half: u32) -> (usize, usize) {
        let n = half as usize;
        let value = i + (i / n) * n;
        (value, value + n)
    }

    /// `out[r, j] = h[r, j] · gelu(h[r, n + j])` for `elements = rows·n` outputs.
    #[cube(launch)]
    pub(super) fn forward_kernel<F: Float>(
        h: &Tensor<F>,
        out: &mut Tensor<F>,
        elements: u32,
        half: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i < elements as usize {
            let (value, gate) = halves(i, half);
            let (gelu, _) = gelu_and_slope(f32::cast_from(h[gate]));
            out[i] = F::cast_from(f32::cast_from(h[value]) * gelu);
        }
    }

    /// `dh[r, j] = dy[r, j] · gelu(g)`, `dh[r, n + j] = dy[r, j] · v · gelu'(g)` with
    /// `v = h[r, j]`, `g = h[r, n + j]`.
    #[cube(launch)]
    pub(super) fn backward_kernel<F: Float>(
        h: &Tensor<F>,
        dy: &Tensor<F>,
        dh: &mut Tensor<F>,
        elements: u32,
        half: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i < elements as usize {
            let (value, gate) = halves(i, half);
            let v = f32::cast_from(h[value]);
            let (gelu, slope) = gelu_and_slope(f32::cast_from(h[gate]));
            let d = f32::cast_from(dy[i]);
            dh[value] = F::cast_from(d * gelu);
            dh[gate] = F::cast_from(d * v * slope);
        }
    }
}

/// `[h]` → `[out]`.
#[derive(Debug, Clone, Copy)]
struct ForwardOp;

impl KernelOp<1, 1> for ForwardOp {
    fn run<R: CubeRuntime>(&self, [h]: [CubeTensor<R>; 1]) -> [CubeTensor<R>; 1] {
        let h = into_contiguous(h);
        let l = Launch::of(&h);
        let out = empty(&h, Shape::new([l.rows, l.half]), l.dtype);
        device::forward_kernel::launch::<R>(
            &h.client.clone(),
            l.count,
            l.dim,
            h.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            l.elements,
            l.half as u32,
            l.dtype.into(),
        );
        [out]
    }
}

/// `[h, dy]` → `[dh]`.
#[derive(Debug, Clone, Copy)]
struct BackwardOp;

impl KernelOp<2, 1> for BackwardOp {
    fn run<R: CubeRuntime>(&self, [h, dy]: [CubeTensor<R>; 2]) -> [CubeTensor<R>; 1] {
        let (h, dy) = (into_contiguous(h), into_contiguous(dy));
        let l = Launch::of(&h);
        let dh = empty(&h, Shape::new([l.rows, 2 * l.half]), l.dtype);
        device::backward_kernel::launch::<R>(
            &h.client.clone(),
            l.count,
            l.dim,
            h.into_tensor_arg(),
            dy.into_tensor_arg(),
            dh.clone().into_tensor_arg(),
            l.elements,
            l.half as u32,
            l.dtype.into(),
        );
        [dh]
    }
}

/// The launch both ways: a unit per output element of `[rows, half]` for a contiguous `h`
/// `[rows, 2·half]`.
struct Launch {
    rows: usize,
    half: usize,
    elements: u32,
    dtype: DType,
    count: CubeCount,
    dim: CubeDim,
}

impl Launch {
    fn of<R: CubeRuntime>(h: &CubeTensor<R>) -> Self {
        let [rows, width] = h.meta.shape().dims::<2>();
        let half = width / 2;
        let (count, dim) = elementwise(h, rows * half);
        Self {
            rows,
            half,
            // `takes` checked that `h`'s indices fit.
            elements: (rows * half) as u32,
            dtype: h.dtype,
            count,
            dim,
        }
    }
}

/// Whether the kernels take `h` `[rows, 2·n]`: a CubeCL backend, kernels on, a float dtype
/// the kernels are compiled for, and indices within `u32`.
fn takes<I: Backend>(h: &Tensor<I, 2>) -> bool {
    let [rows, width] = h.dims();
    enabled()
        && applies::<I>()
        && width.is_multiple_of(2)
        && width > 0
        && rows * width <= u32::MAX as usize
        && matches!(h.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// [`crate::kernels::geglu::forward`] by the kernel; `None` where it does not apply.
pub(in crate::kernels) fn geglu_forward<I: Backend>(h: &Tensor<I, 2>) -> Option<Tensor<I, 2>> {
    if !takes(h) {
        return None;
    }
    let [rows, width] = h.dims();
    let [out] = Apply::<I, 1, 1, _> {
        name: "likeness_geglu_forward",
        inputs: [float(h.clone())],
        outputs: [(Shape::new([rows, width / 2]), h.dtype())],
        op: ForwardOp,
    }
    .apply()?;
    Some(wrap(out))
}

/// [`crate::kernels::geglu::backward`] by the kernel; `None` where it does not apply.
pub(in crate::kernels) fn geglu_backward<I: Backend>(
    h: &Tensor<I, 2>,
    grad: &Tensor<I, 2>,
) -> Option<Tensor<I, 2>> {
    if !takes(h) {
        return None;
    }
    let [out] = Apply::<I, 2, 1, _> {
        name: "likeness_geglu_backward",
        inputs: [
            float(h.clone()),
            float::<I, 2>(grad.clone().to_dtype(h.dtype())),
        ],
        outputs: [(Shape::new(h.dims()), h.dtype())],
        op: BackwardOp,
    }
    .apply()?;
    Some(wrap(out))
}
