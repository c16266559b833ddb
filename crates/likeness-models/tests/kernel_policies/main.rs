//! The CubeCL kernel tests on wgpu that set a process-wide policy for their op — every attention
//! to the flash-attention kernels, every convolution to the GEMM tiers under a lowered im2col cap,
//! every linear layer's matmul to one algorithm after another —
//! in a test binary of their own, apart from the suite whose tests take the default policies. The
//! policies touch different ops (the matmul choice: linear layers, which neither of the others
//! runs), so they share this one.

#[path = "../common/mod.rs"]
mod common;

/// Held by the tests whose matmuls go through Likeness' matmul op (the convolutions' im2col tier,
/// the linear layers) while one of them changes its algorithm and counts its launches.
pub static MATMULS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`MATMULS`], also after a test that held it failed.
pub fn matmuls_serial() -> std::sync::MutexGuard<'static, ()> {
    MATMULS.lock().unwrap_or_else(|e| e.into_inner())
}

mod cube_attention;
mod cube_conv;
mod cube_matmul;
