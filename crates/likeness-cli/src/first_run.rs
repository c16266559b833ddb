//! The first-run notice: work that has not run on this GPU before tunes its kernels first
//! (`likeness_models::device::tuning`); while it does, a line every so often says how many.

use std::time::Duration;

use likeness_models::device::{DeviceChoice, tuning};

/// An announced first run: what to record once it has taken a step, and the ticker that
/// reports the tuning until then.
pub struct FirstRun {
    device: DeviceChoice,
    work: String,
    _ticker: tuning::Ticker,
}

/// How often the count of tuned kernels is reported (when it has changed).
const REPORT_EVERY: Duration = Duration::from_secs(15);

/// Says on stderr that this run tunes kernels first, when it does, and reports the count of
/// kernels tuned every [`REPORT_EVERY`] until the first step is recorded.
pub fn announce(device: DeviceChoice, work: String) -> Option<FirstRun> {
    tuning::needs_tuning(device, &work).then(|| {
        eprintln!("note: {}", tuning::NOTICE);
        FirstRun {
            device,
            work,
            _ticker: tuning::Ticker::start(REPORT_EVERY, |n| {
                eprintln!("note: {n} kernels tuned so far")
            }),
        }
    })
}

/// Records an announced first run as tuned (and stops its reports).
pub fn record(first_run: Option<FirstRun>) {
    if let Some(FirstRun { device, work, .. }) = first_run
        && let Err(e) = tuning::mark_tuned(device, &work)
    {
        tracing::warn!("recording kernel tuning: {e}");
    }
}
