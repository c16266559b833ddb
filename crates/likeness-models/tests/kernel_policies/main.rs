//! The CubeCL kernel tests on wgpu that set a process-wide policy for their op — every attention
//! to the flash-attention kernels, every convolution to the GEMM tiers under a lowered im2col cap —
//! in a test binary of their own, apart from the suite whose tests take the default policies. The
//! two policies touch different ops, so they share this one.

#[path = "../common/mod.rs"]
mod common;

mod cube_attention;
mod cube_conv;
