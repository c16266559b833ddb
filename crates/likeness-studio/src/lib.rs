//! The core of the Likeness desktop app, free of any UI toolkit: the workspace (a folder with a
//! SQLite database and the project files), projects, base models, photo import, the training
//! job queue, seed-matched galleries and LoRA export. The Tauri shell and the CLI call it; it
//! calls the trainers and models, never the other way round.
//!
//! [`workspace`] opens the database, migrates it and holds the typed API for projects, photos and
//! base models; [`import`] checks, normalizes and flags the photos a user brings in; [`jobs`]
//! runs DreamBooth, DPO and gallery jobs one at a time with progress events, cancel and resume;
//! [`gallery`] and [`compare`] make and read the seed-matched galleries, scatter and loss
//! curves; [`export`] writes a run's LoRA for other tools.

pub mod compare;
pub mod error;
pub mod export;
pub mod gallery;
pub mod import;
pub mod jobs;
pub mod workspace;

pub use compare::{CompareCell, CompareColumn, CompareTable, LossPoint, ScatterPoint};
pub use error::{Result, StudioError};
pub use export::ExportResult;
pub use gallery::GallerySettings;
pub use import::{ImportOptions, ImportReport, ImportedPhoto, SkipReason, SkippedFile};
pub use jobs::{
    CandidatePoint, ChosenPair, DpoSettings, DreamBoothSettings, Job, JobEvent, JobId, JobKind,
    JobRunner, JobStatus, ListenerId, Run, RunId, RunKind,
};
pub use likeness_models::device::{DeviceChoice, Precision};
pub use likeness_models::lora_files::LoraFormat;
pub use workspace::{
    BaseModel, BaseModelId, BaseModelKind, Photo, PhotoFlags, PhotoId, Project, ProjectId,
    SCHEMA_VERSION, Workspace, default_dir,
};
