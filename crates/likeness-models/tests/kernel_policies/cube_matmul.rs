//! Likeness' matmul op (`kernels::matmul`: Burn's matmul algorithms chosen by name, forward and
//! both gradients) on wgpu against Burn's matmul on the CPU backend, under a unit algorithm (which
//! lavapipe runs) and one it cannot (a tensor-core one: it must leave the matmul to Burn's default
//! and say so in the counts).
#![cfg(feature = "wgpu")]

use crate::common;

use burn::backend::Autodiff;
use burn::tensor::DType;
use common::{assert_close, numbers, tensor, values};
use likeness_models::kernels::conv::{ConvPolicy, set_conv_policy};
use likeness_models::kernels::matmul::{
    MatmulChoice, linear, matmul, matmul_choice, matmul_counts, set_matmul_choice,
};
use likeness_models::nn::in_dtype;

type W = burn::backend::Wgpu<f32>;
type F = burn::backend::Flex;

/// A linear layer's output and the gradients of its input, weight (where it trains: a full
/// fine-tune, not LoRA) and bias under an upstream gradient through `tanh`: x `[2, rows, d_in]`,
/// weight `[d_out, d_in]`, as `nn::Linear` stores it.
fn linear_grads<A: burn::tensor::backend::AutodiffBackend>(
    rows: usize,
    d_in: usize,
    d_out: usize,
    weight_trains: bool,
    seed: u64,
) -> Vec<Vec<f32>> {
    linear_grads_in::<A>(rows, d_in, d_out, weight_trains, seed, DType::F32)
}

/// [`linear_grads`] with input, weight and bias in `dtype` (the values read back as f32).
fn linear_grads_in<A: burn::tensor::backend::AutodiffBackend>(
    rows: usize,
    d_in: usize,
    d_out: usize,
    weight_trains: bool,
    seed: u64,
    dtype: DType,
) -> Vec<Vec<f32>> {
    let x = in_dtype(
        tensor::<A, 3>(&numbers(2 * rows * d_in, seed, 0.0, 1.0), [2, rows, d_in]),
        dtype,
    )
    .require_grad();
    let mut w = in_dtype(
        tensor::<A, 2>(&numbers(d_out * d_in, seed + 1, 0.0, 0.3), [d_out, d_in]),
        dtype,
    );
    if weight_trains {
        w = w.require_grad();
    }
    let b = in_dtype(
        tensor::<A, 1>(&numbers(d_out, seed + 2, 0.1, 0.5), [d_out]),
        dtype,
    )
    .require_grad();
    let y = linear(x.clone(), w.clone(), Some(b.clone()));
    let grads = y.clone().tanh().sum().backward();
    let mut out = vec![values(y), values(x.grad(&grads).expect("x trains"))];
    out.push(values(b.grad(&grads).expect("the bias trains")));
    if weight_trains {
        out.push(values(w.grad(&grads).expect("the weight trains")));
    }
    out
}

/// `[3, m, k] · [3, k, n]` (batched, both operands tracked) and both gradients.
fn batched_grads<A: burn::tensor::backend::AutodiffBackend>(seed: u64) -> Vec<Vec<f32>> {
    let (m, k, n) = (17, 9, 11);
    let a = tensor::<A, 3>(&numbers(3 * m * k, seed, 0.0, 1.0), [3, m, k]).require_grad();
    let b = tensor::<A, 3>(&numbers(3 * k * n, seed + 1, 0.0, 1.0), [3, k, n]).require_grad();
    let y = matmul(a.clone(), b.clone());
    let grads = y.clone().tanh().sum().backward();
    vec![
        values(y),
        values(a.grad(&grads).expect("a trains")),
        values(b.grad(&grads).expect("b trains")),
    ]
}

/// `[ran, fell back]` through the op since `before` (a [`matmul_counts`] reading).
fn counted_since(before: [u64; 2]) -> [u64; 2] {
    let now = matmul_counts();
    [now[0] - before[0], now[1] - before[1]]
}

fn check(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_close(&format!("{what} output {k}"), g, w);
    }
}

#[test]
fn every_algorithm_matches_burns_matmul_forward_and_backward() {
    let _serial = crate::matmuls_serial();
    if common::skip_wgpu() {
        return;
    }
    // The reference: Burn's matmul, on the CPU (the choice applies to CubeCL backends only).
    let cases = [(37, 20, 24, true), (5, 64, 8, false)];
    let want: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, &(r, di, dout, t))| linear_grads::<Autodiff<F>>(r, di, dout, t, 10 * i as u64))
        .collect();
    let want_batched = batched_grads::<Autodiff<F>>(77);
    // The convolutions' im2col tier multiplies through the op too, its weight `[1, o, c·k·k]`
    // broadcast over the samples: a 3×3 convolution of three samples and a pointwise one.
    set_conv_policy(ConvPolicy::Gemm);
    let convs: [common::ConvCase; 2] = [
        ([3, 4, 6, 6], 5, 3, 1, 1, true),
        ([2, 6, 5, 4], 3, 1, 1, 0, true),
    ];
    let want_convs: Vec<_> = convs
        .iter()
        .map(|&c| common::conv_grads::<Autodiff<F>>(c, 5, false))
        .collect();
    // One unit algorithm on every case: the op's own matmuls, which lavapipe runs. Lavapipe's
    // shader compiler takes most of this test's time (a CI run from scratch compiles every
    // kernel), so Burn's default — autotuned: each new shape compiles its candidates — sees
    // the first linear case only, through a tensor-core algorithm (no cooperative matrices on
    // lavapipe: every matmul falls back to it) and as the `burn` choice (not through the op).
    set_matmul_choice(MatmulChoice::DoubleUnitMax);
    assert_eq!(matmul_choice(), MatmulChoice::DoubleUnitMax);
    let before = matmul_counts();
    for (i, &(r, di, dout, t)) in cases.iter().enumerate() {
        let got = linear_grads::<Autodiff<W>>(r, di, dout, t, 10 * i as u64);
        check(
            &format!("double-unit-max linear {:?}", cases[i]),
            &got,
            &want[i],
        );
    }
    let batched = batched_grads::<Autodiff<W>>(77);
    check("double-unit-max batched", &batched, &want_batched);
    // Per linear case: forward, the input's gradient, the weight's where it trains; the batched
    // case: forward and two gradients. None fell back.
    assert_eq!(counted_since(before), [3 + 2 + 3, 0]);
    let mid = matmul_counts();
    for (case, want) in convs.iter().zip(&want_convs) {
        let got = common::conv_grads::<Autodiff<W>>(*case, 5, true);
        check(&format!("double-unit-max conv {case:?}"), &got, want);
    }
    // Forward, data and weight gradients of each: at least one matmul per pass.
    let [ran, fell] = counted_since(mid);
    assert!(
        ran >= 6 && fell == 0,
        "convolutions: ran {ran}, fell back {fell}"
    );

    let (r, di, dout, t) = cases[0];
    for choice in [MatmulChoice::DoubleCyclic, MatmulChoice::Burn] {
        set_matmul_choice(choice);
        let before = matmul_counts();
        let got = linear_grads::<Autodiff<W>>(r, di, dout, t, 0);
        check(
            &format!("{} linear {:?}", choice.name(), cases[0]),
            &got,
            &want[0],
        );
        let counted = counted_since(before);
        if choice == MatmulChoice::Burn {
            assert_eq!(counted, [0, 0], "burn: Burn's own matmul, not the op");
        } else {
            println!("double-cyclic on this adapter: [ran, fell back] {counted:?}");
            assert_eq!(counted[0] + counted[1], 3, "double-cyclic: through the op");
        }
    }
    // Inference: the plain backend runs the op too.
    set_matmul_choice(MatmulChoice::DoubleUnitMax);
    let [ran_before, _] = matmul_counts();
    let x = tensor::<W, 2>(&numbers(30 * 12, 5, 0.0, 1.0), [30, 12]);
    let w = tensor::<W, 2>(&numbers(12 * 7, 6, 0.0, 1.0), [12, 7]);
    let (xf, wf) = (
        tensor::<F, 2>(&numbers(30 * 12, 5, 0.0, 1.0), [30, 12]),
        tensor::<F, 2>(&numbers(12 * 7, 6, 0.0, 1.0), [12, 7]),
    );
    assert_close("inference", &values(matmul(x, w)), &values(xf.matmul(wf)));
    assert_eq!(matmul_counts()[0], ran_before + 1);
    set_matmul_choice(MatmulChoice::Burn);
}

/// Burn's tensor-core matmul (the single-stage cyclic algorithm: Burn's pick without autotune)
/// through the op, in f16 (tiles of f16 into f32): where the runner says the adapter has
/// cooperative matrices (`scripts/lavapipe-coopmat.sh run`), every matmul of a linear layer's
/// forward and gradients runs on them, none left to Burn's default, with the CPU's f32 numbers to
/// f16's precision. Elsewhere (no cooperative matrices: Debian 12's lavapipe) the test above sees
/// the tensor-core algorithms fall back. One algorithm that runs: lavapipe takes ~45 s to compile
/// an algorithm's three kernels (double-cyclic passed too, measured).
#[test]
fn tensor_cores_run_burns_matmul_algorithms_in_half_precision() {
    let _serial = crate::matmuls_serial();
    if common::skip_wgpu() {
        return;
    }
    if std::env::var_os("LIKENESS_EXPECT_CMMA").is_none() {
        eprintln!("no cooperative matrices expected (LIKENESS_EXPECT_CMMA unset): skipping");
        return;
    }
    let (r, di, dout, t) = (37, 20, 24, true);
    let want = linear_grads::<Autodiff<F>>(r, di, dout, t, 3);
    // The specialized cyclic algorithm loads through async copies, which CubeCL has nowhere but
    // on CUDA: refused on a Vulkan adapter, every matmul left to Burn's default.
    for (choice, counts) in [
        (MatmulChoice::SimpleCyclic, [3, 0]),
        (MatmulChoice::SpecializedCyclic, [0, 3]),
    ] {
        set_matmul_choice(choice);
        let before = matmul_counts();
        let got = linear_grads_in::<Autodiff<W>>(r, di, dout, t, 3, DType::F16);
        let counted = counted_since(before);
        set_matmul_choice(MatmulChoice::Burn);
        assert_eq!(counted, counts, "{}: [ran, fell back]", choice.name());
        assert_eq!(got.len(), want.len());
        // f16 inputs and outputs: ≈5e-4 of the largest value each, sums over 20 to 74 terms.
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let e = common::rel_err(g, w);
            println!("{} f16 output {k}: relative error {e:.2e}", choice.name());
            assert!(
                e <= 1e-2,
                "{} output {k}: relative error {e:.3e}",
                choice.name()
            );
        }
    }
}
