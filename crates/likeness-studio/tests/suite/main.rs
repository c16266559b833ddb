//! The integration tests of `likeness-studio`, one module a file, in one test binary: every binary
//! links and instantiates the whole Burn stack again, so one per crate instead of one per file
//! takes minutes off each CI build (docs/perf.md, session 13).

#[path = "../common/mod.rs"]
mod common;

mod import;
mod jobs;
mod workspace;
