//! Likeness' networks in Burn, named as diffusers/transformers name them.

pub mod error;
pub mod nn;
pub mod schedulers;
pub mod weights;

pub use error::{ModelError, Result};
