//! Likeness' CubeCL GroupNorm kernels (`kernels::cube`) against Burn's tensor ops: on the same
//! wgpu device (in CI Mesa's CPU Vulkan driver, lavapipe) op for op, and through autodiff against
//! Burn's own differentiation on the CPU backend.
#![cfg(feature = "wgpu")]

use crate::common;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::Distribution;
use common::{assert_close, numbers, skip_wgpu as skip, tensor, values};
use likeness_models::kernels::cube;
use likeness_models::kernels::group_norm::{self, GroupNormOptions};

type W = burn::backend::Wgpu<f32>;
type F = burn::backend::Flex;

/// Shapes `[n, c, l]`, groups, SiLU, and the inputs' mean. Channels of 32 positions or more
/// take the per-channel kernels: longer than a cube's 256 units, in between (a cube of 64
/// units, some idle), a large common offset (the two-pass variance), a single group. Shorter
/// ones take the row kernels: LayerNorm's `[tokens, channels, 1]` (one of 601 rows of 300
/// channels, longer than a cube, with an offset, and whose weight gradients are summed over
/// chunks of 3 samples, the last chunk short), one group per channel, several positions per
/// channel.
const CASES: [([usize; 3], usize, bool, f32); 10] = [
    ([2, 8, 15], 4, true, 0.5),
    ([2, 32, 300], 8, true, 0.0),
    ([3, 12, 5], 12, false, 0.0),
    ([1, 6, 1], 2, true, 0.0),
    ([2, 16, 64], 4, false, 40.0),
    ([1, 6, 700], 1, true, -1.0),
    ([2, 4, 40], 2, true, 0.3),
    ([50, 32, 1], 1, false, 0.2),
    ([601, 300, 1], 1, false, 40.0),
    ([70, 12, 3], 4, true, 0.0),
];

fn options(groups: usize, silu: bool) -> GroupNormOptions {
    GroupNormOptions {
        groups,
        eps: 1e-5,
        silu,
    }
}

#[test]
fn the_kernels_take_the_wgpu_backend_not_its_autodiff_or_the_cpu() {
    if skip() {
        return;
    }
    assert!(cube::applies::<W>());
    assert!(!cube::applies::<F>());
    assert!(!cube::applies::<Autodiff<W>>());
}

/// The kernels' forward and backward on wgpu against the same functions computed with Burn's
/// tensor ops on the CPU backend. (Not against Burn's ops on the same device: with Burn's
/// `fusion` on, fused Burn ops get this backward wrong for channels of one position.)
#[test]
fn forward_and_backward_match_burns_ops() {
    if skip() {
        return;
    }
    for (i, (shape, groups, silu, offset)) in CASES.into_iter().enumerate() {
        let [n, c, l] = shape;
        let seed = 100 * i as u64;
        let x = numbers(n * c * l, seed, offset, 2.0);
        let w = numbers(c, seed + 1, 1.0, 0.5);
        let b = numbers(c, seed + 2, 0.0, 0.5);
        let dy = numbers(n * c * l, seed + 3, 0.0, 1.0);
        let opts = options(groups, silu);
        let what = format!("{shape:?} groups={groups} silu={silu} offset={offset}");

        let (xw, ww, bw, dyw) = (
            tensor::<W, 3>(&x, shape),
            tensor::<W, 1>(&w, [c]),
            tensor::<W, 1>(&b, [c]),
            tensor::<W, 3>(&dy, shape),
        );
        let (y, mean, rstd) = group_norm::forward(xw.clone(), ww.clone(), bw.clone(), opts);
        assert_eq!(mean.dims(), [n, groups, 1]);
        let (dx, params) = group_norm::backward(
            xw.clone(),
            ww.clone(),
            bw.clone(),
            mean.clone(),
            rstd.clone(),
            dyw.clone(),
            opts,
            true,
        );
        let (dw, db) = params.expect("the parameters' gradients");
        // A frozen norm's backward: the same dx, no parameter sums.
        let (dx_frozen, none) =
            group_norm::backward(xw, ww, bw, mean.clone(), rstd.clone(), dyw, opts, false);
        assert!(none.is_none(), "{what}");
        assert_eq!(
            values(dx_frozen),
            values(dx.clone()),
            "dx without parameter sums {what}"
        );

        let (xf, wf, bf, dyf) = (
            tensor::<F, 3>(&x, shape),
            tensor::<F, 1>(&w, [c]),
            tensor::<F, 1>(&b, [c]),
            tensor::<F, 3>(&dy, shape),
        );
        let (y_ref, mean_ref, rstd_ref) =
            group_norm::forward_burn(xf.clone(), wf.clone(), bf.clone(), opts);
        let (dx_ref, params) = group_norm::backward_burn(
            xf,
            wf,
            bf,
            mean_ref.clone(),
            rstd_ref.clone(),
            dyf,
            opts,
            true,
        );
        let (dw_ref, db_ref) = params.expect("the parameters' gradients");

        assert_close(&format!("y {what}"), &values(y), &values(y_ref));
        assert_close(&format!("mean {what}"), &values(mean), &values(mean_ref));
        assert_close(&format!("rstd {what}"), &values(rstd), &values(rstd_ref));
        assert_close(&format!("dx {what}"), &values(dx), &values(dx_ref));
        assert_close(&format!("dweight {what}"), &values(dw), &values(dw_ref));
        assert_close(&format!("dbias {what}"), &values(db), &values(db_ref));
    }
}

/// Through the autodiff op on wgpu (the kernels inside) against Burn's op-by-op autodiff of the
/// same GroupNorm on the CPU backend: output and every gradient.
#[test]
fn training_on_wgpu_matches_burns_autodiff_on_the_cpu() {
    if skip() {
        return;
    }
    fn grads<A: burn::tensor::backend::AutodiffBackend>(
        case: ([usize; 3], usize, bool, f32),
        seed: u64,
        reference: bool,
    ) -> [Vec<f32>; 4] {
        let (shape, groups, silu, offset) = case;
        let [n, c, l] = shape;
        let x = tensor::<A, 3>(&numbers(n * c * l, seed, offset, 2.0), shape).require_grad();
        let w = tensor::<A, 1>(&numbers(c, seed + 1, 1.0, 0.5), [c]).require_grad();
        let b = tensor::<A, 1>(&numbers(c, seed + 2, 0.0, 0.5), [c]).require_grad();
        let up = tensor::<A, 3>(&numbers(n * c * l, seed + 3, 0.0, 1.0), shape);
        let opts = options(groups, silu);
        let y = if reference {
            group_norm::reference(x.clone(), w.clone(), b.clone(), opts)
        } else {
            group_norm::group_norm(x.clone(), w.clone(), b.clone(), opts)
        };
        let g = (y.clone() * up).sum().backward();
        [
            values(y.inner()),
            values(x.grad(&g).expect("dx")),
            values(w.grad(&g).expect("dweight")),
            values(b.grad(&g).expect("dbias")),
        ]
    }
    for (i, case) in CASES.into_iter().enumerate() {
        let seed = 7 + 10 * i as u64;
        let want = grads::<Autodiff<F>>(case, seed, true);
        let got = grads::<Autodiff<W>>(case, seed, false);
        for (k, name) in ["out", "dx", "dweight", "dbias"].iter().enumerate() {
            assert_close(&format!("{name} {case:?}"), &got[k], &want[k]);
        }
    }
}

/// Inference on the plain wgpu backend runs the forward kernel: the same numbers as Burn's ops.
#[test]
fn inference_on_wgpu_runs_the_forward_kernel() {
    if skip() {
        return;
    }
    let device = Default::default();
    let x = Tensor::<W, 4>::random([2, 8, 6, 5], Distribution::Normal(0.3, 1.2), &device);
    let w = Tensor::<W, 1>::random([8], Distribution::Normal(1.0, 0.2), &device);
    let b = Tensor::<W, 1>::random([8], Distribution::Normal(0.0, 0.2), &device);
    let opts = options(4, true);
    let got = group_norm::group_norm(x.clone(), w.clone(), b.clone(), opts);
    let want = group_norm::reference(x.reshape([2, 8, 30]), w, b, opts).reshape([2, 8, 6, 5]);
    assert_close("inference", &values(got), &values(want));
}

/// The kernels in half precision (where the adapter has it) follow the f32 kernels: statistics
/// in f32 inside, the output and `dx` in f16.
#[test]
fn half_precision_follows_f32() {
    use burn::tensor::DType;
    if skip() {
        return;
    }
    let device = Default::default();
    if !W::supports_dtype(&device, DType::F16) {
        eprintln!("this adapter has no f16: skipping");
        return;
    }
    let shape = [2, 32, 300];
    let [n, c, l] = shape;
    let x = tensor::<W, 3>(&numbers(n * c * l, 5, 0.5, 2.0), shape);
    let w = tensor::<W, 1>(&numbers(c, 6, 1.0, 0.5), [c]);
    let b = tensor::<W, 1>(&numbers(c, 7, 0.0, 0.5), [c]);
    let dy = tensor::<W, 3>(&numbers(n * c * l, 8, 0.0, 1.0), shape);
    let opts = options(8, true);
    let run = |dtype: DType| {
        let (x, w, b, dy) = (
            x.clone().cast(dtype),
            w.clone().cast(dtype),
            b.clone().cast(dtype),
            dy.clone().cast(dtype),
        );
        let (y, mean, rstd) = group_norm::forward(x.clone(), w.clone(), b.clone(), opts);
        assert_eq!(y.dtype(), dtype);
        let (dx, params) = group_norm::backward(x, w, b, mean, rstd, dy, opts, true);
        let (dw, db) = params.expect("the parameters' gradients");
        assert_eq!(dx.dtype(), dtype);
        [y, dx]
            .map(|t| values(t.cast(DType::F32)))
            .into_iter()
            .chain([dw, db].map(|t| values(t.cast(DType::F32))))
            .collect::<Vec<_>>()
    };
    let want = run(DType::F32);
    let got = run(DType::F16);
    for (k, name) in ["y", "dx", "dweight", "dbias"].iter().enumerate() {
        let e = common::rel_err(&got[k], &want[k]);
        println!("{name} f16 vs f32: relative error {e:.3e}");
        assert!(e > 0.0 && e < 1e-2, "{name}: f16 relative error {e:.3e}");
    }
}

/// `device::pool_usage` reads the wgpu runtime's memory pool: a live 4 MiB tensor is in use and
/// the pool has reserved at least that; the CPU has no pool.
#[test]
fn the_gpu_pool_reports_what_tensors_hold() {
    use likeness_models::device::{DeviceChoice, pool_usage};
    if skip() {
        return;
    }
    let t = Tensor::<W, 2>::ones([1024, 1024], &Default::default());
    assert_eq!(t.clone().sum().into_scalar(), 1024.0 * 1024.0);
    let (in_use, reserved) = pool_usage(DeviceChoice::Wgpu).expect("the wgpu pool");
    assert!(in_use >= 4 << 20, "in use {in_use}");
    assert!(reserved >= in_use, "reserved {reserved} < in use {in_use}");
    assert_eq!(pool_usage(DeviceChoice::Cpu), None);
    drop(t);
}

/// The GEGLU kernels (`kernels::geglu` on wgpu: one launch each way) against Burn's ops on the
/// CPU, forward and backward, in f32 and in f16 (within f16's rounding).
#[test]
fn geglu_kernels_match_burns_ops() {
    use likeness_models::kernels::geglu;
    if skip() {
        return;
    }
    // Rows of one, an odd half (units straddle rows), more outputs than a cube's units.
    for (rows, n) in [(1, 1), (7, 5), (33, 40)] {
        let h = numbers(rows * 2 * n, rows as u64, 0.1, 3.0);
        let dy = numbers(rows * n, rows as u64 + 1, 0.0, 1.0);
        let want_out = values(geglu::forward_burn(tensor::<F, 2>(&h, [rows, 2 * n])));
        let want_dh = values(geglu::backward_burn(
            tensor::<F, 2>(&h, [rows, 2 * n]),
            tensor::<F, 2>(&dy, [rows, n]),
        ));
        let (hw, dyw) = (
            tensor::<W, 2>(&h, [rows, 2 * n]),
            tensor::<W, 2>(&dy, [rows, n]),
        );
        let what = format!("rows={rows} n={n}");
        assert_close(
            &format!("geglu forward {what}"),
            &values(geglu::forward(hw.clone())),
            &want_out,
        );
        assert_close(
            &format!("geglu backward {what}"),
            &values(geglu::backward(hw.clone(), dyw.clone())),
            &want_dh,
        );
        // f16: the kernels read and write f16 and compute in f32.
        let half = |t: Tensor<W, 2>| t.cast(burn::tensor::DType::F16);
        let out16 = geglu::forward(half(hw.clone()));
        assert_eq!(out16.dtype(), burn::tensor::DType::F16);
        let dh16 = geglu::backward(half(hw), half(dyw));
        for (name, got, want) in [
            ("forward", values(out16), &want_out),
            ("backward", values(dh16), &want_dh),
        ] {
            let err = common::rel_err(&got, want);
            assert!(err < 4e-3, "geglu {name} f16 {what}: rel err {err}");
        }
    }
    // Training through the op on wgpu against Burn's autodiff on the CPU.
    let (rows, n) = (6, 9);
    let h = numbers(rows * 2 * n, 5, 0.0, 2.0);
    let up = numbers(rows * n, 6, 0.0, 1.0);
    fn grads<A: burn::tensor::backend::AutodiffBackend>(
        h: &[f32],
        up: &[f32],
        rows: usize,
        n: usize,
        f: impl Fn(Tensor<A, 2>) -> Tensor<A, 2>,
    ) -> [Vec<f32>; 2] {
        let h = tensor::<A, 2>(h, [rows, 2 * n]).require_grad();
        let out = f(h.clone());
        let g = (out.clone() * tensor::<A, 2>(up, [rows, n]))
            .sum()
            .backward();
        [values(out), values(h.grad(&g).unwrap())]
    }
    let want = grads::<Autodiff<F>>(&h, &up, rows, n, geglu::reference);
    let got = grads::<Autodiff<W>>(&h, &up, rows, n, geglu::geglu);
    assert_close("geglu training out", &got[0], &want[0]);
    assert_close("geglu training dh", &got[1], &want[1]);
}
