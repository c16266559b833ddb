//! A real tuning is counted: its own test process, so that the count and the kernel cache
//! are its own.

use likeness_models::device::tuning;
use tracing_subscriber::prelude::*;

/// The real thing: a matmul of a shape not tuned before makes CubeCL tune on wgpu (in CI,
/// Mesa's lavapipe), and the count moves.
#[cfg(all(feature = "wgpu", feature = "autotune"))]
#[test]
fn a_real_tuning_on_wgpu_is_counted() {
    use burn::tensor::{Tensor, TensorData};
    if std::env::var_os("LIKENESS_SKIP_WGPU").is_some() {
        eprintln!("LIKENESS_SKIP_WGPU set: skipping");
        return;
    }
    // A kernel cache of its own, so nothing is tuned already.
    let cache = std::env::temp_dir().join(format!("likeness-tuning-count-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    // SAFETY: the only test of this process; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("LIKENESS_KERNEL_CACHE", &cache) };
    likeness_models::device::kernel_cache::configure();
    let _ = tracing_subscriber::registry()
        .with(tuning::counter_layer())
        .try_init();
    type W = burn::backend::Wgpu<f32>;
    let device = Default::default();
    let a = Tensor::<W, 2>::from_data(TensorData::new(vec![0.5f32; 37 * 53], [37, 53]), &device);
    let b = Tensor::<W, 2>::from_data(TensorData::new(vec![0.25f32; 53 * 29], [53, 29]), &device);
    let before = tuning::kernels_tuned();
    let c = a.matmul(b).into_data();
    assert_eq!(c.num_elements(), 37 * 29);
    assert!(
        tuning::kernels_tuned() > before,
        "no tuning seen (before {before})"
    );
    let _ = std::fs::remove_dir_all(&cache);
}
