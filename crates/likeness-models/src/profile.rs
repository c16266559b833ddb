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
static MEMORY: Mutex<Option<MemoryWatch>> = Mutex::new(None);

/// The highest reading of a memory probe after any timed layer, and which layer it followed.
struct MemoryWatch {
    probe: fn() -> Option<u64>,
    peak: Option<(u64, &'static str)>,
}

/// While timing is on, reads `probe` (bytes in use, e.g. the GPU pool's live tensors) after
/// every timed layer and keeps the highest reading; `None` stops watching.
pub fn watch_memory(probe: Option<fn() -> Option<u64>>) {
    if let Ok(mut watch) = MEMORY.lock() {
        *watch = probe.map(|probe| MemoryWatch { probe, peak: None });
    }
}

/// The highest reading since [`watch_memory`], in bytes, and the layer after which it was read.
pub fn memory_peak() -> Option<(u64, &'static str)> {
    MEMORY.lock().ok()?.as_ref()?.peak
}

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
    if let Ok(mut watch) = MEMORY.lock()
        && let Some(w) = watch.as_mut()
        && let Some(bytes) = (w.probe)()
        && w.peak.is_none_or(|(peak, _)| bytes > peak)
    {
        w.peak = Some((bytes, name));
    }
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
