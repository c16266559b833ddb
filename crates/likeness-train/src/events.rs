//! What a training run reports while it runs, for the terminal and the app.
//!
//! A trainer takes `&mut dyn FnMut(TrainEvent)` and calls it on its own thread, in order. An app
//! that trains on a worker thread forwards the events through a channel with [`channel_sink`];
//! it stops a run by setting the `Arc<AtomicBool>` cancel flag it passed in, after which the
//! trainer finishes the current step, writes a checkpoint and returns [`TrainOutcome`] with
//! `cancelled: true`.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

/// One thing that happened in a training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    /// Data and model are ready; steps `start_step + 1 ..= total_steps` follow.
    Started {
        run_dir: PathBuf,
        start_step: usize,
        total_steps: usize,
        /// Training photos used.
        photos: usize,
        /// Files of the photo folder that are not images, with the reason.
        skipped: Vec<(PathBuf, String)>,
        /// Photos smaller than the resolution (upscaled).
        upscaled: Vec<PathBuf>,
    },
    /// Preparation progress worth showing (class images, latents).
    Status { message: String },
    /// One optimizer step done: the mean loss of its batches, the learning rate it used and the
    /// seconds it took.
    Step {
        step: usize,
        loss: f32,
        lr: f64,
        secs: f64,
    },
    /// A checkpoint folder was written.
    Checkpoint { step: usize, path: PathBuf },
    /// Preview images were written.
    Sample { step: usize, paths: Vec<PathBuf> },
    /// The run ended at `step`: all steps done, or cancelled.
    Finished {
        step: usize,
        cancelled: bool,
        checkpoint: Option<PathBuf>,
    },
    /// The run stopped with an error (also returned as `Err`).
    Error { message: String },
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// The last step taken.
    pub step: usize,
    /// Whether the cancel flag stopped it early.
    pub cancelled: bool,
    /// The last checkpoint written (the final one).
    pub checkpoint: Option<PathBuf>,
    /// The loss of every step this call ran.
    pub losses: Vec<f32>,
}

/// An event sink that sends every event down a channel (ignoring a closed receiver).
pub fn channel_sink(tx: Sender<TrainEvent>) -> impl FnMut(TrainEvent) {
    move |e| {
        let _ = tx.send(e);
    }
}

/// Sends a failed run's error as its last event and hands the result back unchanged, so every
/// trainer's public entry point reports failures the same way.
pub fn with_error_event<T>(
    result: crate::Result<T>,
    events: &mut dyn FnMut(TrainEvent),
) -> crate::Result<T> {
    if let Err(e) = &result {
        events(TrainEvent::Error {
            message: e.to_string(),
        });
    }
    result
}
