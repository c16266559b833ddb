//! Helpers shared by the CLI tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// A path under tests/fixtures/data.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .join(rel)
}

/// The `likeness` binary under test.
pub fn likeness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_likeness"))
}
