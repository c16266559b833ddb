//! Likeness' networks in Burn, named as diffusers/transformers name them.

pub mod clip_model;
pub mod clip_text;
pub mod clip_vision;
pub mod device;
pub mod error;
pub mod image_preprocess;
pub mod kernels;
pub mod lora;
pub mod lora_files;
pub mod nn;
pub mod pipeline;
pub mod png_meta;
pub mod presets;
pub mod profile;
pub mod rng;
pub mod schedulers;
pub mod sd;
pub mod single_file;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vit;
pub mod weights;

pub use error::{ModelError, Result};
