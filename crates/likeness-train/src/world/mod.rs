//! Likeness' built-in small world: captioned synthetic scenes, subjects ("concepts") the base model
//! never saw, and a pixel-based check of pictures against prompts. It lets artists and CI watch
//! DreamBooth + DPO work without downloading Stable Diffusion. See `docs/world.md`.

mod caption;
pub mod check;
mod concepts;
mod parse;
mod prompts;
mod render;
mod scene;

use std::path::PathBuf;

use image::RgbImage;
use rand::RngCore;

pub use caption::{canonical_caption, caption, caption_vocabulary};
pub use concepts::{
    CONCEPT_PHOTO_COUNT, CONCEPTS, Concept, ConceptPose, ConceptScene, Marking, concept,
    concept_scene, render_concept_in_context, render_concept_in_prompt, render_concept_photo,
    render_concept_scene, write_concept_photos,
};
pub use parse::{BackgroundRequest, GroupRequest, ParsedPrompt, parse_caption};
pub use prompts::{concept_template_split, concept_templates};
pub use render::{object_cells, render, render_background};
pub use scene::{
    Background, Colour, ObjectGroup, Pattern, Placement, Position, Rect, Scene, Shape, Size,
    WorldSpec, rgb_distance,
};

/// Picture side the world is meant to be trained at; any size renders.
pub const DEFAULT_IMAGE_SIZE: u32 = 64;

/// Errors of the world: unreadable prompts, unknown concepts, files that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("prompt `{prompt}`: {message}")]
    Prompt { prompt: String, message: String },
    #[error("unknown concept `{0}` (known: star-creature, ring-creature, heart-creature)")]
    UnknownConcept(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] likeness_models::ModelError),
}

/// The world's random source: SplitMix64, so a seed gives the same scenes whatever `rand` version
/// is in use.
#[derive(Debug, Clone)]
pub struct WorldRng {
    state: u64,
}

impl WorldRng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        WorldRng { state: seed }
    }
}

impl RngCore for WorldRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A seed derived from a name and a number (FNV-1a over both), so streams do not collide.
pub(crate) fn seed_for(name: &str, n: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(n.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The scene and caption of item `index` of the dataset with `seed` (random access).
pub fn dataset_item(seed: u64, index: u64, spec: &WorldSpec) -> (Scene, String) {
    let mut rng = WorldRng::new(seed_for("caption-dataset", seed ^ index.rotate_left(32)));
    let scene = Scene::random(&mut rng, spec);
    let text = caption(&scene, &mut rng);
    (scene, text)
}

/// `n` rendered pictures with paraphrased captions, the same for the same seed.
pub fn caption_dataset(n: usize, seed: u64, size: u32) -> impl Iterator<Item = (RgbImage, String)> {
    let spec = WorldSpec::default();
    (0..n as u64).map(move |i| {
        let (scene, text) = dataset_item(seed, i, &spec);
        (render(&scene, size), text)
    })
}
