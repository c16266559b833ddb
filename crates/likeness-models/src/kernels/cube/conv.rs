//! 2-D convolution forward and backward on Burn's implicit-GEMM kernels (tensor cores through
//! CubeCL's `cmma`), chosen without autotuning: a build without Burn's `autotune` feature would
//! otherwise run its direct convolution, which took 66 % of an SD 1.5 UNet forward on an H100
//! (`docs/perf.md`, session 9). Where the implicit GEMM cannot run (no `cmma` on the adapter,
//! grouped convolutions, a strided data gradient) Burn's direct kernels and fallbacks run instead,
//! inside the same operation, so the result never depends on which one ran beyond rounding.

use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::conv::{
    ConvStrategy, conv_data_backward, conv_forward, conv_weight_backward,
};
use burn_cubecl::tensor::CubeTensor;

use super::{Apply, KernelOp, applies, enabled};
use crate::kernels::conv::Pass;
use burn::prelude::Backend;

/// A convolution's settings and the shape of what it produces, copyable into a stream op.
#[derive(Debug, Clone, Copy)]
struct Conv {
    pass: Pass,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    /// The output's shape: y's, x's or w's.
    out: [usize; 4],
}

impl Conv {
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new(self.stride, self.padding, self.dilation, self.groups)
    }
}

impl KernelOp<2, 1> for Conv {
    fn run<R: CubeRuntime>(&self, [a, b]: [CubeTensor<R>; 2]) -> [CubeTensor<R>; 1] {
        let attempt = |strategy: ConvStrategy| match self.pass {
            Pass::Forward => {
                conv_forward::<R, 2>(a.clone(), b.clone(), None, self.options(), strategy)
            }
            Pass::Data => conv_data_backward::<R, 2>(
                a.clone(),
                b.clone(),
                Shape::new(self.out),
                self.options(),
                strategy,
            ),
            Pass::Weight => conv_weight_backward::<R, 2>(
                a.clone(),
                b.clone(),
                Shape::new(self.out),
                self.options(),
                strategy,
            ),
        };
        let out = attempt(ConvStrategy::ImplicitGemm)
            .or_else(|_| attempt(ConvStrategy::Direct))
            .unwrap_or_else(|e| panic!("convolution {self:?}: {e:?}"));
        [out]
    }
}

/// Runs `pass` of a convolution on `a` and `b` (see [`Pass`]) as one stream operation, producing
/// `out` in `dtype`; `None` where backend `I` is not a CubeCL backend or the kernels are off.
pub(crate) fn launch<I: Backend>(
    pass: Pass,
    a: FloatTensor<I>,
    b: FloatTensor<I>,
    options: &ConvOptions<2>,
    out: [usize; 4],
    dtype: DType,
) -> Option<FloatTensor<I>> {
    if !enabled() || !applies::<I>() {
        return None;
    }
    let op = Conv {
        pass,
        stride: options.stride,
        padding: options.padding,
        dilation: options.dilation,
        groups: options.groups,
        out,
    };
    let [y] = Apply::<I, 2, 1, _> {
        name: "likeness_conv2d",
        inputs: [a, b],
        outputs: [(Shape::new(out), dtype)],
        op,
    }
    .apply()?;
    Some(y)
}
