//! The quality bar of the world's base model, measured without CLIP: pictures generated for held-out
//! captions are checked from their pixels (background colour, object colour) against the scene each
//! caption describes, and against a shuffled scene as the rate that chance alone gives.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use likeness_models::device::{BackendTask, Placement};
use likeness_models::pipeline::{GenerateParams, to_rgb8};
use likeness_models::schedulers::SchedulerKind;
use likeness_models::sd::{LoadOptions, StableDiffusion};
use serde::{Deserialize, Serialize};

use crate::data::to_signed_chw;
use crate::dpo::{GeneratedImage, generate_set};
use crate::error::{Result, TrainError};
use crate::events::TrainEvent;
use crate::scoring::load_rgb;
use crate::world::check::{CheckRates, scene_check_rates};
use crate::world::{
    CONCEPT_PHOTO_COUNT, CONCEPTS, Scene, WorldSpec, dataset_item, render, render_concept_photo,
};
use crate::world_train::vae::reconstruct;
use image::RgbImage;
use likeness_models::vae::AutoencoderKL;

/// The dataset seed of the held-out captions. The world trainers draw their scenes from the run
/// seed (0 unless set), so these scenes are new to the model.
pub const HELD_OUT_SEED: u64 = 0x4E1D_0B7E;

/// Settings of a quality measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityConfig {
    /// The world's diffusers folder.
    pub model: PathBuf,
    /// Held-out captions, one picture each.
    pub pictures: usize,
    pub steps: usize,
    pub guidance: f64,
    /// Where the pictures (`images/`), `index.jsonl` and `quality.json` go.
    pub out: PathBuf,
}

impl QualityConfig {
    /// 200 pictures, 30 DDIM steps at guidance 4.
    pub fn new(model: &Path, out: &Path) -> Self {
        Self {
            model: model.to_path_buf(),
            pictures: 200,
            steps: 30,
            guidance: 4.0,
            out: out.to_path_buf(),
        }
    }
}

/// What the measurement found; written as `quality.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub config: QualityConfig,
    /// Pass rates against the scene each caption asked for.
    pub asked: CheckRates,
    /// Pass rates of the same pictures against another caption's scene (the picture set rotated
    /// by half its length): what the checks give by chance.
    pub chance: CheckRates,
    /// How well the model's VAE alone reproduces pictures (absent from reports written before
    /// it was measured).
    #[serde(default)]
    pub reconstruction: Option<Reconstruction>,
}

/// How well the model's VAE alone reproduces pictures: the mean squared error, on the [-1, 1]
/// scale, between a picture and the decoded mean of its latent, and the pixel checks on those
/// decodings — the most the checks can give for pictures that pass through this VAE.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reconstruction {
    /// Over the held-out captions' scenes.
    pub scenes: f32,
    /// Over every concept's photos ([`CONCEPT_PHOTO_COUNT`] each).
    pub concept_photos: f32,
    /// The checks on the held-out scenes' decodings against their own scenes (absent from
    /// reports written before they were measured).
    #[serde(default)]
    pub scene_checks: Option<CheckRates>,
}

/// [`Reconstruction`] of `vae` at `size` pixels over `scenes` and the concept photos.
pub fn reconstruction<B: Backend>(
    vae: &AutoencoderKL<B>,
    scenes: &[&Scene],
    size: usize,
    device: &B::Device,
) -> Result<Reconstruction> {
    // In batches of at most 16 so that a large model's activations stay small; the error is the
    // mean over all pictures (per-batch means weighted by batch size).
    let run = |images: Vec<RgbImage>| -> Result<(f32, Vec<RgbImage>)> {
        let total = images.len().max(1);
        let mut sum = 0.0;
        let mut decoded = Vec::with_capacity(images.len());
        for chunk in images.chunks(16) {
            let n = chunk.len();
            let values: Vec<f32> = chunk.iter().flat_map(to_signed_chw).collect();
            let x = Tensor::<B, 4>::from_data(TensorData::new(values, [n, 3, size, size]), device);
            let (recon, mse) = reconstruct(vae, x);
            sum += mse * n as f32;
            decoded.extend(to_rgb8((recon / 2.0 + 0.5).clamp(0.0, 1.0))?);
        }
        Ok((sum / total as f32, decoded))
    };
    let scene_images = scenes
        .iter()
        .map(|scene| render(scene, size as u32))
        .collect();
    let photos = CONCEPTS
        .iter()
        .flat_map(|c| {
            (0..CONCEPT_PHOTO_COUNT as u64).map(|i| render_concept_photo(c, i, size as u32))
        })
        .collect();
    let (scenes_mse, decoded) = run(scene_images)?;
    let (photos_mse, _) = run(photos)?;
    Ok(Reconstruction {
        scenes: scenes_mse,
        concept_photos: photos_mse,
        scene_checks: Some(scene_check_rates(
            decoded.iter().zip(scenes.iter().copied()),
        )),
    })
}

/// The held-out caption set: (scene, caption) for index 0..n.
pub fn held_out(n: usize) -> Vec<(Scene, String)> {
    let spec = WorldSpec::default();
    (0..n as u64)
        .map(|i| dataset_item(HELD_OUT_SEED, i, &spec))
        .collect()
}

/// A measurement for [`likeness_models::device::dispatch`]; `Ok(None)` when cancelled.
pub struct QualityTask<'a> {
    pub config: QualityConfig,
    pub events: &'a mut dyn FnMut(TrainEvent),
    pub cancel: std::sync::Arc<AtomicBool>,
}

impl BackendTask for QualityTask<'_> {
    type Output = Result<Option<QualityReport>>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        tracing::info!("measuring on {placement}");
        Ok(measure::<B>(
            self.config,
            self.events,
            &self.cancel,
            &device,
        ))
    }
}

fn measure<B: Backend>(
    config: QualityConfig,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
    device: &B::Device,
) -> Result<Option<QualityReport>> {
    if config.pictures < 2 {
        return Err(TrainError::Invalid(
            "the quality check needs at least 2 pictures".into(),
        ));
    }
    let model = StableDiffusion::<B>::load(&config.model, &LoadOptions::default(), device)?;
    let size = model.native_size();
    let set = held_out(config.pictures);
    let items: Vec<GeneratedImage> = set
        .iter()
        .enumerate()
        .map(|(i, (_, caption))| GeneratedImage {
            file: format!("{i:05}.png"),
            prompt: caption.clone(),
            seed: i as u64,
        })
        .collect();
    let base = GenerateParams {
        prompt: String::new(),
        negative_prompt: String::new(),
        steps: config.steps,
        guidance: config.guidance,
        scheduler: SchedulerKind::Ddim,
        seed: 0,
        count: 1,
        width: size,
        height: size,
        clip_skip: 0,
    };
    let dir = config.out.join("images");
    if !generate_set(&model, &items, &dir, None, &base, events, cancel)? {
        return Ok(None);
    }
    let images = items
        .iter()
        .map(|it| {
            let path = dir.join(&it.file);
            load_rgb(&path).map_err(|e| TrainError::io(&path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let scenes: Vec<&Scene> = set.iter().map(|(s, _)| s).collect();
    let asked = scene_check_rates(images.iter().zip(scenes.iter().copied()));
    let half = scenes.len() / 2;
    let rotated = scenes.iter().cycle().skip(half).copied();
    let chance = scene_check_rates(images.iter().zip(rotated));
    let reconstruction = Some(reconstruction(&model.vae, &scenes, size, device)?);
    let report = QualityReport {
        config,
        asked,
        chance,
        reconstruction,
    };
    let path = report.config.out.join("quality.json");
    let text = serde_json::to_string_pretty(&report).map_err(|e| TrainError::io(&path, e))?;
    likeness_models::png_meta::write_atomic(&path, text.as_bytes())
        .map_err(|e| TrainError::io(&path, e))?;
    Ok(Some(report))
}
