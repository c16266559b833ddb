//! The integration tests of `likeness-cli`, one module a file, in one test binary: every binary
//! links and instantiates the whole Burn stack again, so one per crate instead of one per file
//! takes minutes off each CI build (docs/perf.md, session 13).

#[path = "../common/mod.rs"]
mod common;

mod demo_cli;
mod dpo_cli;
mod dreambooth_cli;
mod export_cli;
mod generate_cli;
mod lora_cli;
mod world_cli;
