//! Errors of the model crate: every message names the file and, where there is one, the key.

use std::path::PathBuf;

/// Anything that can go wrong while reading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: not a safetensors file ({message})")]
    NotSafetensors { path: PathBuf, message: String },
    #[error("{path}: missing weight `{key}`")]
    MissingWeight { path: PathBuf, key: String },
    #[error("{path}: weight `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: weight `{key}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unsupported config value `{field}` = {value}")]
    Unsupported {
        path: PathBuf,
        field: String,
        value: String,
    },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        ModelError::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Config {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn unsupported(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        value: impl std::fmt::Display,
    ) -> Self {
        ModelError::Unsupported {
            path: path.into(),
            field: field.into(),
            value: value.to_string(),
        }
    }
}

/// Reads and parses a JSON config file, naming the file on any failure.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::config(path, e.to_string()))
}
