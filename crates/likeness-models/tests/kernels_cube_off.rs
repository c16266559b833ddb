//! `LIKENESS_CUBE_KERNELS=0` turns the CubeCL GroupNorm and attention kernels off (its own test process: the
//! switch is read once).
#![cfg(feature = "wgpu")]

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use likeness_models::kernels::cube;
use likeness_models::kernels::group_norm::{self, GroupNormOptions};

#[test]
fn the_switch_sends_group_norm_and_attention_back_to_burns_ops() {
    if common::skip_wgpu() {
        return;
    }
    // SAFETY: the only test of this process; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("LIKENESS_CUBE_KERNELS", "0") };
    type W = burn::backend::Wgpu<f32>;
    assert!(!cube::enabled());
    assert!(
        likeness_models::kernels::enabled(),
        "the autodiff ops stay on"
    );
    let device = Default::default();
    let x = Tensor::<W, 3>::random([2, 8, 40], Distribution::Normal(0.5, 1.0), &device);
    let w = Tensor::<W, 1>::random([8], Distribution::Normal(1.0, 0.2), &device);
    let b = Tensor::<W, 1>::random([8], Distribution::Normal(0.0, 0.2), &device);
    let opts = GroupNormOptions {
        groups: 4,
        eps: 1e-5,
        silu: true,
    };
    let (y, mean, rstd) = group_norm::forward(x.clone(), w.clone(), b.clone(), opts);
    let (y_ref, mean_ref, rstd_ref) = group_norm::forward_burn(x, w, b, opts);
    // Bit for bit: the same Burn ops ran.
    for (got, want) in [(y, y_ref), (mean, mean_ref), (rstd, rstd_ref)] {
        assert_eq!(got.into_data(), want.into_data());
    }
    // Attention goes back to Burn's: bit for bit the same as calling it directly.
    let q = Tensor::<W, 4>::random([1, 2, 9, 8], Distribution::Normal(0.0, 1.0), &device);
    assert!(cube::attention::forward(&q, &q, &q, false).is_none());
    let got = likeness_models::kernels::attention::attention(q.clone(), q.clone(), q.clone(), true);
    let options = burn::tensor::ops::AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: true,
    };
    let want = burn::tensor::module::attention(q.clone(), q.clone(), q, None, None, options);
    assert_eq!(got.into_data(), want.into_data());
}
