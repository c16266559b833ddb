//! Errors of the trainers: each is one line naming the file, the step or the setting at fault.

use std::path::PathBuf;

use likeness_models::ModelError;

/// Anything that stops a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{dir}: no usable images (PNG or JPEG){skipped}")]
    NoImages { dir: PathBuf, skipped: String },
    #[error(
        "the loss became {value} at step {step}; training stopped{}",
        match last_checkpoint {
            Some(p) => format!(", the last good checkpoint is {}", p.display()),
            None => ", no checkpoint was written yet".to_string(),
        }
    )]
    NonFiniteLoss {
        step: usize,
        value: f32,
        last_checkpoint: Option<PathBuf>,
    },
    #[error("{run}: refusing to resume: {reason}")]
    ModelMismatch { run: PathBuf, reason: String },
    #[error("{0}: no complete checkpoint to resume from")]
    NoCheckpoint(PathBuf),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        TrainError::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }
}
