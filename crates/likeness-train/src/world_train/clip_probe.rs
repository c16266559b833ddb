//! Does the world's CLIP tell a scene's own caption from the same caption with one colour changed?
//! On held-out scenes rendered by the renderer (true pictures, no model in between): for each, the
//! cosine between the picture's CLIP embedding and its canonical caption against the cosine with
//! the caption whose background colour — or whose first object group's colour — is another
//! palette colour. The share of scenes where the true caption wins is the binding rate (chance
//! 0.5). The UNet is conditioned on this CLIP's text tower, and DPO scores TS with it: a colour
//! the text embedding does not carry is one neither can follow.

use std::path::PathBuf;

use burn::prelude::*;
use likeness_models::clip_model::{ClipModel, cosine};
use likeness_models::device::{BackendTask, Placement};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::world::{Colour, Scene, canonical_caption, render};
use crate::world_train::quality::held_out;

/// Scenes embedded at once.
const BATCH: usize = 32;

/// The binding rates (chance 0.5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipBinding {
    pub scenes: usize,
    /// The true caption beats the one with the background colour changed.
    pub background: f32,
    /// The true caption beats the one with the first object group's colour changed.
    pub object_colour: f32,
}

/// The next palette colour after `c` that is none of `avoid`.
fn other_colour(c: Colour, avoid: &[Colour]) -> Colour {
    let all = Colour::ALL;
    (1..all.len())
        .map(|k| all[(c.index() + k) % all.len()])
        .find(|x| *x != c && !avoid.contains(x))
        .unwrap_or(all[(c.index() + 1) % all.len()])
}

/// `scene` with its background colour changed to one no object and no accent has.
pub fn background_swapped(scene: &Scene) -> Scene {
    let mut s = scene.clone();
    let mut avoid: Vec<Colour> = s.groups.iter().map(|g| g.colour).collect();
    avoid.extend(s.background.accent);
    s.background.colour = other_colour(s.background.colour, &avoid);
    s
}

/// `scene` with its first object group's colour changed to one neither the background nor
/// another group has.
pub fn object_swapped(scene: &Scene) -> Scene {
    let mut s = scene.clone();
    let mut avoid = vec![s.background.colour];
    avoid.extend(s.background.accent);
    avoid.extend(s.groups.iter().skip(1).map(|g| g.colour));
    if let Some(g) = s.groups.first_mut() {
        g.colour = other_colour(g.colour, &avoid);
    }
    s
}

/// The binding rates of `clip` over the first `n` held-out scenes, rendered at `size` pixels.
pub fn clip_binding<B: Backend>(clip: &ClipModel<B>, n: usize, size: u32) -> Result<ClipBinding> {
    if n == 0 {
        return Err(TrainError::Invalid(
            "the CLIP probe needs at least 1 scene".into(),
        ));
    }
    let scenes: Vec<Scene> = held_out(n).into_iter().map(|(s, _)| s).collect();
    let (mut bg_wins, mut obj_wins) = (0usize, 0usize);
    for chunk in scenes.chunks(BATCH) {
        let images: Vec<_> = chunk.iter().map(|s| render(s, size)).collect();
        let img = clip.embed_images(&images)?;
        let mut captions = Vec::with_capacity(3 * chunk.len());
        for s in chunk {
            captions.push(canonical_caption(s));
            captions.push(canonical_caption(&background_swapped(s)));
            captions.push(canonical_caption(&object_swapped(s)));
        }
        let text = clip.embed_prompts(&captions)?;
        let sims: Vec<f32> = cosine(img, text)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| TrainError::Invalid(format!("reading similarities: {e:?}")))?;
        let cols = captions.len();
        for i in 0..chunk.len() {
            let row = &sims[i * cols..(i + 1) * cols];
            let (own, bg, obj) = (row[3 * i], row[3 * i + 1], row[3 * i + 2]);
            bg_wins += usize::from(own > bg);
            obj_wins += usize::from(own > obj);
        }
    }
    Ok(ClipBinding {
        scenes: n,
        background: bg_wins as f32 / n as f32,
        object_colour: obj_wins as f32 / n as f32,
    })
}

/// [`clip_binding`] for [`likeness_models::device::dispatch`]: loads the CLIP folder first.
pub struct ClipBindingTask {
    pub clip: PathBuf,
    pub scenes: usize,
}

impl BackendTask for ClipBindingTask {
    type Output = Result<ClipBinding>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        tracing::info!("probing CLIP on {placement}");
        let clip = ClipModel::<B>::from_dir(&self.clip, &device)?;
        let size = clip.image_size() as u32;
        Ok(clip_binding(&clip, self.scenes, size))
    }
}
