//! Likeness' trainers: DreamBooth (LoRA and full) and Diffusion-DPO, scoring, pairs, export.
//!
//! The pieces every trainer shares live in their own modules: [`optim`] (AdamW, learning-rate
//! schedules, global-norm clipping, gradient accumulation), [`checkpoint`] (atomic checkpoint
//! folders), [`run_dir`] (the run folder and the base model's fingerprint), [`events`] (progress
//! for the CLI and the app) and [`trainable`] (what trains: LoRA adapters or whole networks).
//! [`dreambooth`] is the first trainer built from them.

pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod dpo;
pub mod dpo_loss;
pub mod dreambooth;
pub mod error;
pub mod eval;
pub mod events;
pub mod optim;
pub mod pairs;
pub mod plot;
pub mod prompts;
pub mod run_dir;
pub mod scoring;
pub mod trainable;
pub mod world;
pub mod world_train;

pub use error::{Result, TrainError};
pub use events::{TrainEvent, TrainOutcome};
