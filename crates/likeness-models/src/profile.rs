//! Per-layer timing of a forward pass, and of the backward of Likeness' own autodiff ops
//! (convolution, attention, GroupNorm/LayerNorm: kinds named `… bwd`), for finding where GPU
//! time goes. Off unless switched on (`likeness bench --profile`); then every instrumented layer
//! waits for the device before and after itself, which serialises the queue, so profiled runs
//! are slower than real ones and only their proportions are meaningful.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::prelude::Backend;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, OpTime>> = Mutex::new(BTreeMap::new());

/// Accumulated time of one kind of layer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTime {
    /// Calls since the last [`take`].
    pub calls: usize,
    /// Wall time of those calls, device work included, in milliseconds.
    pub ms: f64,
}

/// Switches timing on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether layers are being timed.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `f`, and when timing is on, adds its device-synchronised wall time to `name`.
pub fn span<B: Backend, T>(device: &B::Device, name: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let _ = B::sync(device);
    let start = Instant::now();
    let out = f();
    let _ = B::sync(device);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if let Ok(mut table) = TABLE.lock() {
        let entry = table.entry(name).or_default();
        entry.calls += 1;
        entry.ms += ms;
    }
    out
}

/// The times gathered so far, by layer kind, and clears them.
pub fn take() -> Vec<(&'static str, OpTime)> {
    match TABLE.lock() {
        Ok(mut table) => std::mem::take(&mut *table).into_iter().collect(),
        Err(_) => Vec::new(),
    }
}
