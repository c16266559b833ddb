//! The integration tests of `likeness-train`, one module a file, in one test binary: every binary
//! links and instantiates the whole Burn stack again, so one per crate instead of one per file
//! takes minutes off each CI build (docs/perf.md, session 13).

mod dpo;
mod dpo_loss;
mod dreambooth;
mod optim;
mod scoring;
mod world;
mod world_train;
