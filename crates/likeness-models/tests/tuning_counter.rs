//! The count of kernel tunings that a first run shows: CubeCL's `Tuning <key>` lines reach the
//! counting layer through the `log` bridge, and the ticker reports changes until dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use likeness_models::device::tuning::{self, Ticker};
use tracing_subscriber::prelude::*;

/// Waits (up to 5 s) until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tuning_lines_are_counted_and_the_ticker_reports_them() {
    // One test holds every exact count: the counter is one number for the whole process.
    tracing_subscriber::registry()
        .with(tuning::counter_layer())
        .try_init()
        .expect("first subscriber of this test process");
    let before = tuning::kernels_tuned();
    assert_eq!(tuning::notice_since(before), tuning::NOTICE);

    // CubeCL's tuner logs through `log` from this module; only its "Tuning" lines count.
    log::info!(target: "cubecl_runtime::tune::tuner", "Tuning MatmulAutotuneKey {{ m: 64 }}");
    log::info!(target: "cubecl_runtime::tune::tuner", "Fastest result matmul_simple");
    log::debug!(target: "cubecl_runtime::tune::tuner", "Tuning below the layer's level");
    log::info!(target: "wgpu_core::device", "Tuning of something else");
    tracing::info!(target: "cubecl_runtime::tune::local", "Tuning ConvAutotuneKey");
    assert_eq!(tuning::kernels_tuned(), before + 2);
    assert_eq!(
        tuning::notice_since(before),
        format!("{}; 2 tuned so far", tuning::NOTICE)
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let ticker = {
        let seen = seen.clone();
        Ticker::start(Duration::from_millis(10), move |n| {
            seen.lock().unwrap().push(n)
        })
    };
    std::thread::sleep(Duration::from_millis(40));
    assert!(seen.lock().unwrap().is_empty(), "no change, no report");
    tuning::count_tuning();
    eventually("the first tuning is reported", || {
        seen.lock().unwrap().last() == Some(&1)
    });
    tuning::count_tuning();
    tuning::count_tuning();
    eventually("three tunings are reported", || {
        seen.lock().unwrap().last() == Some(&3)
    });
    let reports = seen.lock().unwrap().clone();
    assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
    drop(ticker);
    let after_drop = seen.lock().unwrap().len();
    tuning::count_tuning();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        seen.lock().unwrap().len(),
        after_drop,
        "a dropped ticker is silent"
    );
}
