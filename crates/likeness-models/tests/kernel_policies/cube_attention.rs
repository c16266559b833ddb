//! Likeness' CubeCL flash-attention kernels (`kernels::cube::attention`) on wgpu (in CI Mesa's CPU
//! Vulkan driver, lavapipe) against attention written out in Burn's tensor ops —
//! `softmax(s·q·kᵀ [causal])·v` — on the CPU backend, forward and (through autodiff) backward.
#![cfg(feature = "wgpu")]

use crate::common;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use common::{assert_close, tensor, values};
use likeness_models::kernels::attention::{KernelPolicy, attention, set_kernel_policy};
use likeness_models::kernels::cube;

type W = burn::backend::Wgpu<f32>;

/// Whether to skip (no wgpu adapter); otherwise gives the kernels every attention, however small
/// (by default they take only the large ones; these tests' sizes are small).
fn skip() -> bool {
    set_kernel_policy(KernelPolicy::Always);
    common::skip_wgpu()
}
type F = burn::backend::Flex;

/// `[b, h, n_q, n_k, d]`, causal, and the spread of q and k (large spreads: peaked softmaxes,
/// where an online softmax without its running maximum would overflow). Between them: one cube
/// of rows and several, rows past the last full cube, fewer keys than a tile and several tiles,
/// the causal mask on a square (CLIP's text tower) and with fewer queries than keys, head sizes
/// from the world's 8 to SD's 40, 64, 80 and 160, several cubes of two rows per unit (the forward
/// at head dims up to 64) under a causal mask, and rows of 3000 keys (a unit's loops over
/// them and their head dimension run ~2·10⁵ iterations unless the latter are unrolled: lavapipe
/// silently stops a shader's loops after 65 535 iterations, measured here).
const CASES: [([usize; 5], bool, f32); 10] = [
    ([1, 2, 77, 77, 8], true, 1.0),
    ([2, 2, 64, 64, 40], false, 1.0),
    ([1, 2, 100, 13, 16], false, 2.0),
    ([1, 1, 5, 9, 64], true, 1.0),
    ([1, 1, 70, 40, 160], false, 0.7),
    ([2, 1, 33, 70, 80], true, 1.5),
    ([1, 3, 17, 300, 24], false, 4.0),
    ([1, 1, 1, 1, 40], false, 1.0),
    ([1, 1, 4, 3000, 40], false, 1.0),
    ([1, 2, 200, 210, 32], true, 1.0),
];

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    up: Vec<f32>,
}

fn inputs(case: ([usize; 5], bool, f32), seed: u64) -> Inputs {
    let ([b, h, n_q, n_k, d], _, spread) = case;
    let numbers = |len, seed, scale| common::numbers(len, seed, 0.0, scale);
    Inputs {
        q: numbers(b * h * n_q * d, seed, spread),
        k: numbers(b * h * n_k * d, seed + 1, spread),
        v: numbers(b * h * n_k * d, seed + 2, 1.0),
        up: numbers(b * h * n_q * d, seed + 3, 1.0),
    }
}

/// The kernels' forward on wgpu: output and log-sum-exp as the reference's on the CPU.
#[test]
fn the_forward_kernel_matches_attention_in_tensor_ops() {
    if skip() {
        return;
    }
    assert!(cube::applies::<W>());
    for (i, case) in CASES.into_iter().enumerate() {
        let ([b, h, n_q, n_k, d], causal, _) = case;
        let x = inputs(case, 10 * i as u64);
        let (qs, ks) = ([b, h, n_q, d], [b, h, n_k, d]);
        let (out, lse) = cube::attention::forward(
            &tensor::<W, 4>(&x.q, qs),
            &tensor::<W, 4>(&x.k, ks),
            &tensor::<W, 4>(&x.v, ks),
            causal,
        )
        .expect("the kernels take these sizes");
        let (out_ref, lse_ref) = common::attention_reference(
            tensor::<F, 4>(&x.q, qs),
            tensor::<F, 4>(&x.k, ks),
            tensor::<F, 4>(&x.v, ks),
            causal,
        );
        assert_close(&format!("out {case:?}"), &values(out), &values(out_ref));
        assert_close(&format!("lse {case:?}"), &values(lse), &values(lse_ref));
    }
}

/// Output and gradients of `Σ up ∘ attention(q, k, v)` with respect to q, k and v.
fn grads<A: AutodiffBackend>(
    case: ([usize; 5], bool, f32),
    x: &Inputs,
    ours: bool,
) -> [Vec<f32>; 4] {
    let ([b, h, n_q, n_k, d], causal, _) = case;
    let (qs, ks) = ([b, h, n_q, d], [b, h, n_k, d]);
    let q = tensor::<A, 4>(&x.q, qs).require_grad();
    let k = tensor::<A, 4>(&x.k, ks).require_grad();
    let v = tensor::<A, 4>(&x.v, ks).require_grad();
    let out = if ours {
        attention(q.clone(), k.clone(), v.clone(), causal)
    } else {
        common::attention_reference(q.clone(), k.clone(), v.clone(), causal).0
    };
    let g = (out.clone() * tensor::<A, 4>(&x.up, qs)).sum().backward();
    [
        values(out.inner()),
        values(q.grad(&g).expect("dq")),
        values(k.grad(&g).expect("dk")),
        values(v.grad(&g).expect("dv")),
    ]
}

/// Training on wgpu (Likeness' autodiff attention, the kernels both ways) against Burn's
/// op-by-op autodiff of the tensor-op attention on the CPU: output and every gradient.
#[test]
fn training_on_wgpu_matches_burns_autodiff_on_the_cpu() {
    if skip() {
        return;
    }
    for (i, case) in CASES.into_iter().enumerate() {
        let x = inputs(case, 7 + 10 * i as u64);
        let want = grads::<Autodiff<F>>(case, &x, false);
        let got = grads::<Autodiff<W>>(case, &x, true);
        for (k, name) in ["out", "dq", "dk", "dv"].iter().enumerate() {
            assert_close(&format!("{name} {case:?}"), &got[k], &want[k]);
        }
    }
}

/// Inference on the plain wgpu backend (no autodiff): the forward kernel, the reference's numbers.
#[test]
fn inference_on_wgpu_runs_the_forward_kernel() {
    if skip() {
        return;
    }
    let case = CASES[5];
    let ([b, h, n_q, n_k, d], causal, _) = case;
    let x = inputs(case, 3);
    let (qs, ks) = ([b, h, n_q, d], [b, h, n_k, d]);
    let got = attention(
        tensor::<W, 4>(&x.q, qs),
        tensor::<W, 4>(&x.k, ks),
        tensor::<W, 4>(&x.v, ks),
        causal,
    );
    let (want, _) = common::attention_reference(
        tensor::<F, 4>(&x.q, qs),
        tensor::<F, 4>(&x.k, ks),
        tensor::<F, 4>(&x.v, ks),
        causal,
    );
    assert_close("inference", &values(got), &values(want));
}

/// Sizes the kernels leave to Burn: a head dimension above their limit, keys and values of
/// different lengths, mixed dtypes.
#[test]
fn unsuited_sizes_fall_back() {
    if skip() {
        return;
    }
    let device = Default::default();
    let big = cube::attention::MAX_HEAD_DIM + 8;
    let q = Tensor::<W, 4>::zeros([1, 1, 3, big], &device);
    assert!(cube::attention::forward(&q, &q, &q, false).is_none());
    let q = Tensor::<W, 4>::zeros([1, 1, 3, 8], &device);
    let v = Tensor::<W, 4>::zeros([1, 1, 4, 8], &device);
    assert!(cube::attention::forward(&q, &q, &v, false).is_none());
    if W::supports_dtype(&device, DType::F16) {
        assert!(cube::attention::forward(&q, &q, &q.clone().cast(DType::F16), false).is_none());
    }
    assert!(cube::attention::forward(&q, &q, &q, false).is_some());
}

/// In half precision (where the adapter has it) the kernels follow the f32 kernels: sums in f32
/// inside, the output and gradients in f16.
#[test]
fn half_precision_follows_f32() {
    if skip() {
        return;
    }
    let device = Default::default();
    if !W::supports_dtype(&device, DType::F16) {
        eprintln!("this adapter has no f16: skipping");
        return;
    }
    let case = CASES[1];
    let ([b, h, n_q, n_k, d], causal, _) = case;
    let x = inputs(case, 11);
    let (qs, ks) = ([b, h, n_q, d], [b, h, n_k, d]);
    let run = |dtype: DType| {
        let t = |v: &[f32], s| tensor::<W, 4>(v, s).cast(dtype);
        let (q, k, v, up) = (t(&x.q, qs), t(&x.k, ks), t(&x.v, ks), t(&x.up, qs));
        let (out, lse) = cube::attention::forward(&q, &k, &v, causal).expect("forward");
        assert_eq!(out.dtype(), dtype);
        assert_eq!(lse.dtype(), DType::F32);
        let grads =
            cube::attention::backward([&q, &k, &v], &out, &lse, &up, causal).expect("backward");
        std::iter::once(out)
            .chain(grads)
            .map(|t| {
                assert_eq!(t.dtype(), dtype);
                values(t.cast(DType::F32))
            })
            .collect::<Vec<_>>()
    };
    let want = run(DType::F32);
    let got = run(DType::F16);
    for (k, name) in ["out", "dq", "dk", "dv"].iter().enumerate() {
        let e = common::rel_err(&got[k], &want[k]);
        println!("{name} f16 vs f32: relative error {e:.3e}");
        assert!(e > 0.0 && e < 1e-2, "{name}: f16 relative error {e:.3e}");
    }
}

/// Whether the adapter multiplies f16 tiles on cooperative matrices (tensor cores): said by
/// `scripts/lavapipe-coopmat.sh run`, under which the tests run on a lavapipe that has them.
fn expect_tensor_cores() -> bool {
    std::env::var_os("LIKENESS_EXPECT_CMMA").is_some()
}

/// The tensor-core kernels (`kernels::cube::attention_mma`, f16 tiles into f32) against the
/// reference on the CPU from the same f16-rounded inputs, forward and backward, beside the scalar
/// kernels in f16 on the same inputs. Cases: SD 1.5's head dim 40 (padded to 48) over full tiles,
/// CLIP's causal square with a head dim of 8 and partial tiles, a causal mask over fewer queries
/// than keys at 80, several cubes of rows and several key blocks at 16, and SD's widest head, 160
/// (the scalar kernels on the first too, for comparison). Measured on lavapipe with 8×8×8
/// cooperative matrices: 2.6e-4 to 7.4e-4 (the scalar kernels in f16 2.0e-4 to 6.0e-4).
/// Where the adapter has no cooperative matrices (Debian 12's lavapipe) the scalar kernels run
/// both passes; under `scripts/lavapipe-coopmat.sh run` every pass must run on tensor cores.
#[test]
fn tensor_cores_match_attention_in_tensor_ops_in_half_precision() {
    use likeness_models::kernels::attention::{TensorCores, set_tensor_cores, tensor_core_counts};
    if skip() {
        return;
    }
    let device = Default::default();
    if !W::supports_dtype(&device, DType::F16) {
        assert!(
            !expect_tensor_cores(),
            "a cooperative-matrix adapter without f16"
        );
        eprintln!("this adapter has no f16: skipping");
        return;
    }
    let cases: [([usize; 5], bool, f32); 5] = [
        ([2, 2, 64, 64, 40], false, 1.0),
        ([1, 2, 77, 77, 8], true, 1.0),
        ([1, 1, 33, 70, 80], true, 1.5),
        ([1, 1, 100, 130, 16], false, 2.0),
        ([1, 1, 40, 30, 160], false, 0.7),
    ];
    let half =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
    for (i, case) in cases.into_iter().enumerate() {
        let ([b, h, n_q, n_k, d], causal, _) = case;
        let raw = inputs(case, 50 + 10 * i as u64);
        let x = Inputs {
            q: half(&raw.q),
            k: half(&raw.k),
            v: half(&raw.v),
            up: half(&raw.up),
        };
        let (qs, ks) = ([b, h, n_q, d], [b, h, n_k, d]);
        let want = grads::<Autodiff<F>>(case, &x, false);
        let (_, lse_want) = common::attention_reference(
            tensor::<F, 4>(&x.q, qs),
            tensor::<F, 4>(&x.k, ks),
            tensor::<F, 4>(&x.v, ks),
            causal,
        );
        let run = |choice: TensorCores| {
            set_tensor_cores(choice);
            let t = |v: &[f32], s| tensor::<W, 4>(v, s).cast(DType::F16);
            let (q, k, v, up) = (t(&x.q, qs), t(&x.k, ks), t(&x.v, ks), t(&x.up, qs));
            let before = tensor_core_counts();
            let (out, lse) = cube::attention::forward(&q, &k, &v, causal).expect("forward");
            let grads =
                cube::attention::backward([&q, &k, &v], &out, &lse, &up, causal).expect("backward");
            let after = tensor_core_counts();
            let mut got: Vec<Vec<f32>> = std::iter::once(out)
                .chain(grads)
                .map(|t| values(t.cast(DType::F32)))
                .collect();
            got.push(values(lse));
            (got, [after[0] - before[0], after[1] - before[1]])
        };
        // The scalar kernels beside them on SD's case only (each case is three kernels for
        // lavapipe to compile, the test's time).
        let scalar = (i == 0).then(|| {
            let (scalar, none) = run(TensorCores::Off);
            assert_eq!(none, [0, 0], "off: no tensor-core pass");
            scalar
        });
        let (tiles, passes) = run(TensorCores::On);
        set_tensor_cores(TensorCores::On);
        // Both passes or neither (an adapter without cooperative matrices); both where the
        // runner says the adapter has them.
        assert!(
            passes == [1, 1] || (passes == [0, 0] && !expect_tensor_cores()),
            "{case:?}: tensor-core passes [forward, backward] {passes:?} (cooperative matrices \
             expected: {})",
            expect_tensor_cores()
        );
        let mut want = want.to_vec();
        want.push(values(lse_want));
        // Outputs and gradients in f16 (≈1e-3 of the largest value), the probabilities and dS
        // rounded to f16 before their products (the tiles), sums in f32.
        for (k, (name, bound)) in [
            ("out", 4e-3),
            ("dq", 1e-2),
            ("dk", 1e-2),
            ("dv", 4e-3),
            ("lse", 1e-4),
        ]
        .into_iter()
        .enumerate()
        {
            let e_tiles = common::rel_err(&tiles[k], &want[k]);
            match &scalar {
                Some(scalar) => println!(
                    "{case:?} {name}: tensor cores {e_tiles:.2e}, scalar f16 {:.2e}",
                    common::rel_err(&scalar[k], &want[k])
                ),
                None => println!("{case:?} {name}: tensor cores {e_tiles:.2e}"),
            }
            assert!(
                e_tiles <= bound,
                "{case:?} {name}: relative error {e_tiles:.3e} > {bound:.0e}"
            );
        }
    }
}
