//! Likeness' convolution op under `ConvPolicy::Gemm` (`kernels::conv`: Burn's implicit-GEMM kernels
//! chosen without autotune, else Likeness' im2col + matmul, else Burn's direct kernels — on
//! lavapipe, which has no `cmma`, the im2col tier) on wgpu against Burn's `conv2d` on the CPU
//! backend: forward and, through autodiff, the gradients of input, weight and bias.
#![cfg(feature = "wgpu")]

use crate::common;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;
use common::{ConvCase, assert_close, numbers, tensor, values};
use likeness_models::kernels::conv::{
    ConvAlgorithmChoice, ConvPolicy, algorithm_counts, conv2d, set_conv_algorithm, set_conv_policy,
    set_im2col_bytes, tier_counts,
};

type W = burn::backend::Wgpu<f32>;
type F = burn::backend::Flex;

/// The im2col tier's cap on columns held at once, lowered from 256 MiB so that the three
/// samples of a case here (28.8 KB of f32 columns each) are unfolded two, then one, while the
/// largest single sample (83 KB) still fits.
const COLUMNS_BYTES: usize = 84_000;

fn skip() -> bool {
    set_conv_policy(ConvPolicy::Gemm);
    set_im2col_bytes(COLUMNS_BYTES);
    common::skip_wgpu()
}

/// `[n, c_in, h, w]`, c_out, kernel, stride, padding, and whether the weight takes a gradient
/// (a full fine-tune) or not (LoRA: frozen convolutions). Between them: the UNet's 3×3 and 1×1
/// convolutions, its strided downsampler (whose input gradient Burn computes without the GEMM),
/// odd sizes and channel counts that fill no tile, a strided convolution without padding that
/// leaves the input's last column and row out (their gradient is zero), and three samples that
/// im2col unfolds in two chunks; and a pointwise convolution of three samples whose columns
/// would each be over the cap (96 KB), which needs none (the input is its own columns).
const CASES: [ConvCase; 8] = [
    ([1, 4, 9, 9], 8, 3, 1, 1, true),
    ([1, 5, 7, 10], 3, 3, 2, 0, true),
    ([2, 8, 8, 8], 8, 3, 2, 1, true),
    ([1, 6, 5, 7], 6, 1, 1, 0, true),
    ([2, 3, 16, 16], 5, 3, 1, 1, false),
    ([1, 16, 12, 12], 32, 3, 1, 1, true),
    ([3, 8, 10, 10], 4, 3, 1, 1, true),
    ([3, 12, 40, 50], 7, 1, 1, 0, true),
];

fn options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1)
}

#[test]
fn training_on_wgpu_matches_burns_conv_on_the_cpu() {
    let _serial = crate::matmuls_serial();
    if skip() {
        return;
    }
    for (i, case) in CASES.into_iter().enumerate() {
        let seed = 11 + 10 * i as u64;
        let want = common::conv_grads::<Autodiff<F>>(case, seed, false);
        let got = common::conv_grads::<Autodiff<W>>(case, seed, true);
        assert_eq!(got.len(), want.len(), "{case:?}");
        for (k, name) in ["out", "dx", "dbias", "dweight"]
            .iter()
            .take(got.len())
            .enumerate()
        {
            assert_close(&format!("{name} {case:?}"), &got[k], &want[k]);
        }
    }
    assert_gemm_tiers();
}

/// Every pass ran on a GEMM tier (the implicit GEMM where the adapter has `cmma`, im2col where
/// not), none on Burn's direct kernels: no case here is beyond them.
fn assert_gemm_tiers() {
    let [gemm, im2col, direct] = tier_counts();
    assert!(gemm + im2col > 0, "no pass ran on a GEMM tier");
    assert_eq!(direct, 0, "passes on the direct kernels");
}

/// Inference on the plain wgpu backend (no autodiff): the op's forward, Burn's numbers.
#[test]
fn inference_on_wgpu_matches_burns_conv_on_the_cpu() {
    let _serial = crate::matmuls_serial();
    if skip() {
        return;
    }
    for (i, case) in CASES.into_iter().enumerate() {
        let (xs, c_out, k, stride, padding, _) = case;
        let ws = [c_out, xs[1], k, k];
        let seed = 5 + 10 * i as u64;
        let x = numbers(xs.iter().product(), seed, 0.0, 1.0);
        let w = numbers(ws.iter().product(), seed + 1, 0.0, 0.3);
        let b = numbers(c_out, seed + 2, 0.0, 0.5);
        let got = conv2d(
            tensor::<W, 4>(&x, xs),
            tensor::<W, 4>(&w, ws),
            Some(tensor::<W, 1>(&b, [c_out])),
            options(stride, padding),
        );
        let want = burn::tensor::module::conv2d(
            tensor::<F, 4>(&x, xs),
            tensor::<F, 4>(&w, ws),
            Some(tensor::<F, 1>(&b, [c_out])),
            options(stride, padding),
        );
        assert_eq!(got.dims(), want.dims(), "{case:?}");
        assert_close(&format!("inference {case:?}"), &values(got), &values(want));
    }
    assert_gemm_tiers();
}

/// Under an implicit-GEMM algorithm of Likeness' choosing (`LIKENESS_CONV_ALGORITHM`): where it
/// cannot run (lavapipe has no tensor cores) every pass is left to Burn's implicit GEMM and then
/// the tiers under it, with Burn's numbers; the counts say which happened.
#[test]
fn a_chosen_gemm_algorithm_runs_or_leaves_the_pass_to_burns() {
    let _serial = crate::matmuls_serial();
    if skip() {
        return;
    }
    set_conv_algorithm(ConvAlgorithmChoice::AsyncCyclic);
    let [ran_before, fell_before] = algorithm_counts();
    // A 3×3 convolution and a strided one (every new shape is kernels for lavapipe to compile:
    // CI's time); the training test covers the rest under Burn's GEMM.
    for i in [0, 2] {
        let case = CASES[i];
        let seed = 31 + 10 * i as u64;
        let want = common::conv_grads::<Autodiff<F>>(case, seed, false);
        let got = common::conv_grads::<Autodiff<W>>(case, seed, true);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("async-cyclic {case:?} output {k}"), g, w);
        }
    }
    let [ran, fell] = algorithm_counts();
    set_conv_algorithm(ConvAlgorithmChoice::Burn);
    println!(
        "async-cyclic: ran {}, left to Burn's {}",
        ran - ran_before,
        fell - fell_before
    );
    // Each a forward, a data and a weight gradient — but the strided case's data gradient,
    // refused before any launch (not counted): 3 + 2 passes.
    assert!(
        (ran - ran_before) + (fell - fell_before) >= 5,
        "{ran} {fell} {ran_before} {fell_before}"
    );
}

/// The output shape the op declares for its stream entry is the one Burn's convolution produces.
#[test]
fn output_shapes_follow_burns() {
    let device = Default::default();
    for (xs, c_out, k, stride, padding, _) in CASES {
        let x = Tensor::<F, 4>::zeros(xs, &device);
        let w = Tensor::<F, 4>::zeros([c_out, xs[1], k, k], &device);
        let opts = options(stride, padding);
        let want = burn::tensor::module::conv2d(x, w, None, opts.clone()).dims();
        let got = likeness_models::kernels::conv::output_shape(xs, [c_out, xs[1], k, k], &opts);
        assert_eq!(got, want);
    }
}

/// Burn's tensor-core implicit-GEMM algorithms in f16 where the runner says the adapter has
/// cooperative matrices (`scripts/lavapipe-coopmat.sh run`): every pass of a 3×3 convolution and
/// of a wider one runs on the synchronous algorithm, none left to Burn's, with the CPU's f32
/// numbers to f16's precision. An asynchronous one, on an adapter without async copies (Vulkan:
/// CubeCL has none there), is refused pass by pass — cubek compiles it empty and its launcher
/// answers Ok (errors of 4e3 before the op refused it) — and Burn's numbers come back.
#[test]
fn tensor_cores_run_burns_conv_algorithms_in_half_precision() {
    let _serial = crate::matmuls_serial();
    if skip() {
        return;
    }
    if std::env::var_os("LIKENESS_EXPECT_CMMA").is_none() {
        eprintln!("no cooperative matrices expected (LIKENESS_EXPECT_CMMA unset): skipping");
        return;
    }
    let runs = [
        (
            ConvAlgorithmChoice::SyncCyclic,
            [CASES[0], CASES[5]].as_slice(),
            true,
        ),
        (
            ConvAlgorithmChoice::AsyncCyclic,
            [CASES[5]].as_slice(),
            false,
        ),
    ];
    for (choice, cases, runs_here) in runs {
        set_conv_algorithm(choice);
        let [ran_before, fell_before] = algorithm_counts();
        for (i, &case) in cases.iter().enumerate() {
            let seed = 71 + 10 * i as u64;
            let want = common::conv_grads::<Autodiff<F>>(case, seed, false);
            let got = common::conv_grads_in::<Autodiff<W>>(case, seed, true, DType::F16);
            assert_eq!(got.len(), want.len(), "{case:?}");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let e = common::rel_err(g, w);
                println!(
                    "{} f16 {case:?} output {k}: relative error {e:.2e}",
                    choice.name()
                );
                assert!(e <= 1e-2, "{} {case:?} output {k}: {e:.3e}", choice.name());
            }
        }
        let [ran, fell] = algorithm_counts();
        set_conv_algorithm(ConvAlgorithmChoice::Burn);
        // A forward, a data and a weight gradient each: all on the chosen algorithm, or (async
        // copies missing) all left to Burn's.
        let passes = 3 * cases.len() as u64;
        let want = if runs_here { [passes, 0] } else { [0, passes] };
        assert_eq!(
            [ran - ran_before, fell - fell_before],
            want,
            "{}: [ran, left to Burn's]",
            choice.name()
        );
    }
}
