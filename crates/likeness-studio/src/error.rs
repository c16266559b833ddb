//! Errors of the studio core: each is one line naming the file, the database or the item at fault.

use std::path::PathBuf;

/// Anything that stops a workspace operation.
#[derive(Debug, thiserror::Error)]
pub enum StudioError {
    /// A file or folder could not be read or written.
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// The workspace database refused a statement.
    #[error("{path}: database error: {message}")]
    Database { path: PathBuf, message: String },
    /// The database was written by a newer Likeness than this one.
    #[error(
        "{path}: the database is at schema version {found}, newer than this Likeness knows \
         ({known}); update Likeness to open it"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// A value given by the user is not acceptable (empty name, token with spaces…).
    #[error("{0}")]
    Invalid(String),
    /// No row with this id.
    #[error("no {what} with id {id}")]
    NotFound { what: &'static str, id: i64 },
    /// A folder or file given as a base model is not one the loader understands.
    #[error("not a Stable Diffusion model: {0}")]
    NotAModel(String),
    /// The base model is already in the workspace.
    #[error("{path}: already added as base model {id}")]
    DuplicateModel { path: PathBuf, id: i64 },
    /// A stored picture could not be decoded.
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    /// A trainer stopped with an error (its message names the file, step or setting).
    #[error(transparent)]
    Train(#[from] likeness_train::TrainError),
    /// The model code refused a model, a file or a device.
    #[error(transparent)]
    Model(#[from] likeness_models::ModelError),
    /// A job cannot do what was asked in its current state (resume a finished job…).
    #[error("job {id} is {status}: {message}")]
    JobState {
        id: i64,
        status: &'static str,
        message: String,
    },
    /// Another process runs the jobs of this workspace.
    #[error("{path}: another Likeness is running the jobs of this workspace")]
    Busy { path: PathBuf },
}

/// The studio's result type.
pub type Result<T> = std::result::Result<T, StudioError>;

impl StudioError {
    /// An I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        StudioError::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }

    /// A database failure on the database at `path`.
    pub fn db(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        StudioError::Database {
            path: path.into(),
            message: err.to_string(),
        }
    }
}
