//! Likeness' trainers: DreamBooth (LoRA and full) and Diffusion-DPO, scoring, pairs, export.
