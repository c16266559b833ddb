//! Burn's attention kernels as Likeness launches them for the attentions its own kernels leave
//! (`kernels::attention::flash`: contiguous copies of q, k and v, a flash strategy chosen without
//! autotune or Burn's own choice) on wgpu — in CI Mesa's CPU Vulkan driver, lavapipe, which has
//! no tensor cores, so the unit-tile flash kernel, whose head dims are padded as the tensor-core
//! kernel's are — against attention written out in Burn's tensor ops on the CPU backend.
#![cfg(feature = "wgpu")]

use crate::common;

use common::{attention_reference, numbers, rel_err, tensor, values};
use likeness_models::kernels::attention::{FlashPolicy, flash, flash_counts};

type W = burn::backend::Wgpu<f32>;
type F = burn::backend::Flex;

/// `[b, h, n_q, n_k, d]` and causal: SD 1.5's head dim 40 (padded to 48) over full tiles, and in
/// a cross-attention to 77 tokens with a query count that fills no tile; CLIP's causal square
/// with a head dim of 8 (padded); a head dim the tiles divide (no padding); a causal mask over
/// fewer queries than keys (Burn's own choice takes it); a head dim of 6. Every case is a kernel
/// lavapipe compiles (2–30 s each, the test's time in CI): 80, 64 and 160 are left out, the same
/// code paths as 16 (no padding) at longer compiles.
const CASES: [([usize; 5], bool); 6] = [
    ([2, 2, 64, 64, 40], false),
    ([1, 1, 33, 77, 40], false),
    ([1, 2, 77, 77, 8], true),
    ([1, 1, 20, 20, 16], false),
    ([1, 2, 9, 20, 16], true),
    ([1, 1, 16, 16, 6], false),
];

/// The flash kernels stage q, k, v and the probabilities in f16 tiles (with f32 sums), as Burn
/// launches them: max error over max value up to this against f32 (measured: 3e-4 to 6e-4).
const F16_TILES: f32 = 2e-3;

/// Runs every case under `policy` with q, k and v laid out as the models hand them over (heads
/// split from `[b, n, h·d]` and swapped into place: not contiguous, batch and head strides out of
/// order); returns the change in [`flash_counts`].
fn check(policy: FlashPolicy, cases: &[usize]) -> [u64; 4] {
    let before = flash_counts();
    for &i in cases {
        let ([b, h, n_q, n_k, d], causal) = CASES[i];
        let seed = 100 + 10 * i as u64;
        let q = numbers(b * h * n_q * d, seed, 0.0, 1.0);
        let k = numbers(b * h * n_k * d, seed + 1, 0.0, 1.0);
        let v = numbers(b * h * n_k * d, seed + 2, 0.0, 1.0);
        let as_models_pass = |x: &[f32], n: usize| {
            tensor::<W, 4>(x, [b, h, n, d])
                .swap_dims(1, 2)
                .reshape([b, n, h * d])
                .reshape([b, n, h, d])
                .swap_dims(1, 2)
        };
        let got = flash(
            &as_models_pass(&q, n_q),
            &as_models_pass(&k, n_k),
            &as_models_pass(&v, n_k),
            causal,
            policy,
        )
        .expect("a CubeCL backend takes it");
        let (want, _) = attention_reference(
            tensor::<F, 4>(&q, [b, h, n_q, d]),
            tensor::<F, 4>(&k, [b, h, n_k, d]),
            tensor::<F, 4>(&v, [b, h, n_k, d]),
            causal,
        );
        assert_eq!(got.dims(), [b, h, n_q, d]);
        let err = rel_err(&values(got), &values(want));
        let what = format!("{policy:?} {:?} causal={causal}", [b, h, n_q, n_k, d]);
        eprintln!("{what}: max error / max {err:.1e}");
        assert!(err <= F16_TILES, "{what}: {err:.3e}");
    }
    let after = flash_counts();
    [0, 1, 2, 3].map(|i| after[i] - before[i])
}

/// The three paths in turn (one test: the counts are the process's, and other tests' attentions
/// on wgpu add to Burn's choice meanwhile, so only lower bounds hold for it).
#[test]
fn each_path_matches_attention_written_out() {
    if common::skip_wgpu() {
        return;
    }
    let all: Vec<usize> = (0..CASES.len()).collect();
    let runs = check(FlashPolicy::Unit, &all);
    eprintln!("Unit: runs [tensor cores, unit, refused, Burn's choice]: {runs:?}");
    assert_eq!(runs[0], 0, "only the unit kernel was asked for");
    // Every square or unmasked case on the unit kernel, none refused: the head dims that its
    // tiles do not divide (40, 8, 6) padded to a multiple of 16, q scaled to keep 1/√d.
    assert_eq!(runs[1..3], [5, 0], "{runs:?}");
    assert!(
        runs[3] >= 1,
        "the off-square causal mask went to Burn's choice"
    );

    // Burn's own choice (autotuned in this build) on the same inputs, through the same copies:
    // the causal cases only — the off-square one the unit pass sent there (tuned once) and CLIP's
    // square (each new shape is an autotune of Burn's candidates on lavapipe).
    let burns: Vec<usize> = all.iter().copied().filter(|&i| CASES[i].1).collect();
    let runs = check(FlashPolicy::Off, &burns);
    assert_eq!(runs[..3], [0, 0, 0]);
    assert!(runs[3] >= burns.len() as u64);

    // Lavapipe has no tensor cores, and f32 stays off them anyway (it would round to tf32):
    // Burn's own choice takes it.
    let runs = check(FlashPolicy::Accelerated, &burns);
    assert_eq!(runs[..3], [0, 0, 0]);
    assert!(runs[3] >= burns.len() as u64);

    // Backends without CubeCL take nothing.
    let c = tensor::<F, 4>(&numbers(2 * 16 * 8, 7, 0.0, 1.0), [1, 2, 16, 8]);
    assert!(flash(&c, &c, &c, false, FlashPolicy::Unit).is_none());
}
