//! The integration tests of `likeness-models`, one module a file, in one test binary: every binary
//! links and instantiates the whole Burn stack again, so one per crate instead of one per file
//! takes minutes off each CI build (docs/perf.md, session 13).
//!
//! The wgpu kernel tests that set process-wide policies (`kernel_policies`: cube attention
//! and conv), the switch read once (`kernels_cube_off`) and the tuning counters and
//! marks (environment and subscriber of their own) stay binaries of their own beside it.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod checkpointing;
mod clip_text_parity;
mod clip_vision_parity;
mod device_errors;
mod flash;
mod half_precision;
mod kernels;
mod kernels_cube;
mod lora_core;
mod lora_interop;
mod mixed_precision;
mod pipeline_parity;
mod preprocess_parity;
mod profile;
mod scheduler_parity;
mod tokenizer_parity;
mod unet_parity;
mod vae_parity;
mod vit_parity;
