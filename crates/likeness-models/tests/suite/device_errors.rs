//! A task that panics on its backend (as GPU runtimes do when a launch fails or memory runs
//! out) ends in a one-line error from `dispatch`.

use burn::prelude::*;
use likeness_models::device::{BackendTask, DeviceChoice, Placement, Precision, dispatch};

struct Panics(&'static str);

impl BackendTask for Panics {
    type Output = ();
    fn run<B: Backend>(self, _: B::Device, _: Placement) -> likeness_models::error::Result<()> {
        std::panic::panic_any(self.0.to_string())
    }
}

fn message(text: &'static str) -> String {
    let err = dispatch(DeviceChoice::Cpu, Precision::F32, Panics(text)).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg:?}");
    msg
}

#[test]
fn out_of_memory_becomes_advice_in_one_line() {
    let msg = message(
        "An out-of-memory error happened during launch\nCaused by:\n  allocation of 2147483648 \
         bytes\nBacktrace\n   0: cubecl_runtime::server",
    );
    assert!(msg.contains("ran out of memory"), "{msg}");
    assert!(msg.contains("gradient checkpointing"), "{msg}");
}

#[test]
fn other_panics_keep_their_first_line() {
    let msg = message("\nA compilation error happened during launch\nCaused by:\n  bad shader");
    assert_eq!(
        msg,
        "internal error: A compilation error happened during launch"
    );
}
