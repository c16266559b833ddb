//! Likeness' trainers: DreamBooth (LoRA and full) and Diffusion-DPO, scoring, pairs, export.

pub mod dpo_loss;
pub mod pairs;
pub mod plot;
pub mod prompts;
pub mod scoring;
pub mod world;
