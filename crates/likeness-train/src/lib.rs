//! Likeness' trainers: DreamBooth (LoRA and full) and Diffusion-DPO, scoring, pairs, export.

pub mod world;
