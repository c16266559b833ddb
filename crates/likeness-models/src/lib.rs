//! Likeness' networks in Burn, named as diffusers/transformers name them.

pub mod clip_text;
pub mod error;
pub mod nn;
pub mod tokenizer;
pub mod weights;

pub use error::{ModelError, Result};
