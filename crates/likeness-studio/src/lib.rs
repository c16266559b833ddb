//! The core of the Likeness desktop app, free of any UI toolkit: the workspace (a folder with a
//! SQLite database and the project files), projects, base models and photo import. The Tauri
//! shell and the CLI call it; it calls the trainers and models, never the other way round.
//!
//! [`workspace`] opens the database, migrates it and holds the typed API for projects, photos and
//! base models; [`import`] checks, normalizes and flags the photos a user brings in.

pub mod error;
pub mod import;
pub mod workspace;

pub use error::{Result, StudioError};
pub use import::{ImportOptions, ImportReport, ImportedPhoto, SkipReason, SkippedFile};
pub use workspace::{
    BaseModel, BaseModelId, BaseModelKind, Photo, PhotoFlags, PhotoId, Project, ProjectId,
    SCHEMA_VERSION, Workspace, default_dir,
};
