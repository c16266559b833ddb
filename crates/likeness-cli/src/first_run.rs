//! The first-run notice: work that has not run on this GPU before tunes its kernels first
//! (`likeness_models::device::tuning`).

use likeness_models::device::{DeviceChoice, tuning};

/// Says on stderr that this run tunes kernels first, when it does; returns what to record
/// once the run has taken a step.
pub fn announce(device: DeviceChoice, work: String) -> Option<(DeviceChoice, String)> {
    tuning::needs_tuning(device, &work).then(|| {
        eprintln!("note: {}", tuning::NOTICE);
        (device, work)
    })
}

/// Records an announced first run as tuned.
pub fn record(first_run: Option<(DeviceChoice, String)>) {
    if let Some((device, work)) = first_run
        && let Err(e) = tuning::mark_tuned(device, &work)
    {
        tracing::warn!("recording kernel tuning: {e}");
    }
}
