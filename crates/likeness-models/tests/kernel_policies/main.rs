//! The CubeCL kernel tests on wgpu that set a process-wide policy for their op — every attention
//! to the flash-attention kernels, every convolution to the GEMM tiers under a lowered im2col cap,
//! every linear layer's matmul to one algorithm after another —
//! in a test binary of their own, apart from the suite whose tests take the default policies. The
//! policies touch different ops (the matmul choice: linear layers, which neither of the others
//! runs), so they share this one.

#[path = "../common/mod.rs"]
mod common;

mod cube_attention;
mod cube_conv;
mod cube_matmul;
