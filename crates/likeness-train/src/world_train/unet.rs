//! Trains the world's `UNet2DConditionModel` from random weights on the latents of the world's
//! trained VAE, conditioned on its trained CLIP's text tower (both frozen), with the
//! epsilon-prediction loss of Stable Diffusion; writes a whole diffusers pipeline folder
//! (`model_index.json`, `scheduler/`, `tokenizer/`, `text_encoder/`, `unet/`, `vae/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use likeness_models::clip_text::ClipTextModel;
use likeness_models::png_meta::write_atomic;
use likeness_models::presets::scheduler_json;
use likeness_models::schedulers::{NoiseSchedule, SchedulerConfig};
use likeness_models::single_file::Family;
use likeness_models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use likeness_models::vae::AutoencoderKL;
use likeness_models::weights::{VarBuilder, WeightStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use serde_json::{Value, json};

use super::WorldModelSpec;
use super::clip::{CLIP_MODEL_FILE, WorldClip};
use super::run::{OpenedRun, Plan, finish, open_run, train_loop};
use super::tokenizer::{world_tokenizer, write_tokenizer_files};
use super::vae::VAE_WEIGHTS;
use crate::data::to_signed_chw;
use crate::error::{Result, TrainError};
use crate::events::{TrainEvent, TrainOutcome};
use crate::optim::{AdamW, AdamWConfig, LrSchedule};
use crate::trainable::{load_by_path, weights_by_path};
use crate::world::{WorldSpec, dataset_item, object_cells, render};

/// The UNet weights of a checkpoint, with diffusers' key names.
pub const UNET_FILE: &str = "unet.safetensors";

/// Settings of a UNet run; stored in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetTrainConfig {
    pub spec: WorldModelSpec,
    /// The trained VAE's diffusers folder.
    pub vae_dir: PathBuf,
    /// The trained CLIP's transformers folder (its text tower conditions the UNet).
    pub clip_dir: PathBuf,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// How the rate moves: constant (the default, so a run extended by `--resume` repeats the
    /// uninterrupted one) or half a cosine to zero over `steps`.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from zero.
    #[serde(default)]
    pub warmup_steps: usize,
    pub seed: u64,
    /// Step `k` takes dataset items `k·batch ..`, modulo `pool` when set.
    pub pool: Option<usize>,
    /// Share of captions replaced by the empty prompt, so classifier-free guidance works.
    pub caption_dropout: f64,
    /// Min-SNR-γ loss weighting (`min(snr, γ) / snr` per picture; Hang et al. 2023): the
    /// low-noise timesteps, where the loss is about fine detail, count less than the high-noise
    /// ones that decide layout and colours. `None` (the default): every timestep counts alike.
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
    /// Loss weight of the latent cells that hold part of an object (the others weigh 1; each
    /// picture's weighted mean, so every picture still counts alike). The world's objects touch
    /// about 28 % of the 8×8 cells, so with equal weights the background's cells carry most of
    /// the loss; `None` (the default) weighs every cell alike.
    #[serde(default)]
    pub object_weight: Option<f64>,
    pub checkpoint_every: usize,
    pub adam: AdamWConfig,
}

impl UNetTrainConfig {
    /// Defaults: batch 32, lr 3e-4, caption dropout 0.1, PyTorch's AdamW (decay 1e-2).
    pub fn new(spec: WorldModelSpec, vae_dir: PathBuf, clip_dir: PathBuf, steps: usize) -> Self {
        Self {
            spec,
            vae_dir,
            clip_dir,
            steps,
            batch: 32,
            lr: 3e-4,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            seed: 0,
            pool: None,
            caption_dropout: 0.1,
            min_snr_gamma: None,
            object_weight: None,
            checkpoint_every: 500,
            adam: AdamWConfig::default(),
        }
    }
}

/// The diffusers pipeline folder a finished UNet run writes.
pub fn pipeline_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("pipeline")
}

/// Trains (or continues) the world's UNet on backend `B` through `Autodiff<B>`, then writes
/// `run_dir/pipeline/`. On resume the saved settings are kept except `steps` and, when given,
/// `min_snr_gamma` and `object_weight`.
pub fn train_unet<B: Backend>(
    config: &UNetTrainConfig,
    run_dir: &Path,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    crate::events::with_error_event(
        run_unet::<B>(config, run_dir, device, events, cancel),
        events,
    )
}

fn run_unet<B: Backend>(
    config: &UNetTrainConfig,
    run_dir: &Path,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    type AB<B> = Autodiff<B>;
    if config
        .min_snr_gamma
        .is_some_and(|g| !(g > 0.0 && g.is_finite()))
    {
        return Err(TrainError::Invalid(
            "the Min-SNR γ must be a positive number".into(),
        ));
    }
    if config
        .object_weight
        .is_some_and(|w| !(w > 0.0 && w.is_finite()))
    {
        return Err(TrainError::Invalid(
            "the object cells' loss weight must be a positive number".into(),
        ));
    }
    let OpenedRun {
        run,
        settings: config,
        resume,
    } = open_run(run_dir, "world-unet", config, |saved: UNetTrainConfig| {
        UNetTrainConfig {
            steps: config.steps,
            min_snr_gamma: config.min_snr_gamma.or(saved.min_snr_gamma),
            object_weight: config.object_weight.or(saved.object_weight),
            ..saved
        }
    })?;
    let spec = &config.spec;
    let vae = AutoencoderKL::<B>::load_from_dir(&config.vae_dir, device)?;
    let clip = WorldClip::<B>::random(spec, 0, device)?;
    let clip = load_by_path(clip, &config.clip_dir.join(CLIP_MODEL_FILE))?;
    let text_encoder = ClipTextModel {
        text_model: clip.text_model,
    };
    let tokenizer = world_tokenizer()?;
    let sched_path = Path::new("<world scheduler>");
    let schedule = NoiseSchedule::from_config(&SchedulerConfig::from_value(
        scheduler_json(Family::Sd1),
        sched_path,
    )?)?;
    let unet_cfg: UNet2DConditionConfig = serde_json::from_value(spec.unet_config())
        .map_err(|e| TrainError::io(run.config_path(), format!("UNet config: {e}")))?;
    unet_cfg.validate(run.config_path())?;
    let vb = VarBuilder::<AB<B>>::new(Arc::new(WeightStore::random(config.seed)), device);
    let unet = UNet2DConditionModel::load(&vb, &unet_cfg)?;
    let plan = Plan {
        steps: config.steps,
        lr: config.lr,
        schedule: config.lr_schedule,
        warmup_steps: config.warmup_steps,
        seed: config.seed,
        checkpoint_every: config.checkpoint_every,
        weights_file: UNET_FILE,
    };
    let world = WorldSpec::default();
    let size = spec.image_size;
    let (lc, ls) = (spec.latent_channels, spec.latent_size());
    let sf = vae.scaling_factor();
    let timesteps = schedule.num_train_timesteps();
    let loss_at = |unet: &UNet2DConditionModel<AB<B>>, step: usize| {
        let n = config.batch;
        let mut rng = StdRng::seed_from_u64(config.seed ^ (step as u64).rotate_left(23));
        let mut pixels = Vec::with_capacity(n * 3 * size * size);
        let mut ids = Vec::new();
        let mut cell_weights = Vec::new();
        for i in step * n..(step + 1) * n {
            let index = config.pool.map_or(i, |p| i % p.max(1)) as u64;
            let (scene, caption) = dataset_item(config.seed, index, &world);
            let drawn = render(&scene, size as u32);
            pixels.extend(to_signed_chw(&drawn));
            if let Some(w) = config.object_weight {
                let cells = object_cells(&drawn, &scene.background, (size / ls) as u32);
                cell_weights.extend(cells.iter().map(|&o| if o { w as f32 } else { 1.0 }));
            }
            let caption = if rng.random::<f64>() < config.caption_dropout {
                String::new()
            } else {
                caption
            };
            ids.extend(tokenizer.encode(&caption).into_iter().map(i64::from));
        }
        let images = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n, 3, size, size]), device);
        let draw = |rng: &mut StdRng| {
            Tensor::<B, 4>::from_data(
                TensorData::new(
                    likeness_models::rng::randn(rng, n * lc * ls * ls),
                    [n, lc, ls, ls],
                ),
                device,
            )
        };
        // The frozen networks run on the inner backend: no graph, no gradients.
        let latents = vae.encode(images).sample(draw(&mut rng)) * sf;
        let noise = draw(&mut rng);
        let ts: Vec<usize> = (0..n).map(|_| rng.random_range(0..timesteps)).collect();
        let noisy = schedule.add_noise(latents.clone(), noise.clone(), &ts)?;
        let target = schedule.target(latents, noise, &ts)?;
        let len = tokenizer.max_length();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, len]), device);
        let hidden = text_encoder.encode_prompt(ids, 0)?;
        let t = Tensor::<B, 1>::from_data(
            TensorData::new(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), [n]),
            device,
        );
        let pred = unet.forward(
            Tensor::from_inner(noisy),
            Tensor::from_inner(t),
            Tensor::from_inner(hidden),
        );
        let squared = (pred - Tensor::from_inner(target)).powi_scalar(2);
        let per_picture: Tensor<AB<B>, 1> = if config.object_weight.is_some() {
            // Each picture's mean over channels and cells, a cell's error counted `w` times.
            let w = Tensor::<AB<B>, 4>::from_data(
                TensorData::new(cell_weights, [n, 1, ls, ls]),
                device,
            );
            let total = w.clone().sum_dim(2).sum_dim(3).reshape([n]) * lc as f32;
            (squared * w)
                .reshape([n as i64, -1])
                .sum_dim(1)
                .reshape([n])
                / total
        } else {
            squared.reshape([n as i64, -1]).mean_dim(1).reshape([n])
        };
        Ok(match config.min_snr_gamma {
            None => per_picture.mean(),
            Some(gamma) => {
                let weights = schedule.min_snr_weights::<AB<B>>(&ts, gamma, device);
                (per_picture * weights).mean()
            }
        })
    };
    let (unet, outcome) = train_loop(
        &run,
        &plan,
        unet,
        AdamW::<B>::new(config.adam),
        resume,
        device,
        loss_at,
        events,
        cancel,
    )?;
    if !outcome.cancelled {
        let dir = pipeline_dir(run.root());
        events(TrainEvent::Status {
            message: format!("writing {}", dir.display()),
        });
        write_pipeline(&config, &unet.valid(), &text_encoder, &dir)?;
    }
    finish(&outcome, events);
    Ok(outcome)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::io(path, e))?;
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| TrainError::io(from, e))?;
    write_atomic(to, &bytes)?;
    Ok(())
}

/// Writes the diffusers `StableDiffusionPipeline` folder of the world's models.
fn write_pipeline<B: Backend>(
    config: &UNetTrainConfig,
    unet: &UNet2DConditionModel<B>,
    text_encoder: &ClipTextModel<B>,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let part = |name: &str| -> Result<PathBuf> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).map_err(|e| TrainError::io(&d, e))?;
        Ok(d)
    };
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.35.2",
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
    )?;
    write_json(
        &part("scheduler")?.join("scheduler_config.json"),
        &scheduler_json(Family::Sd1),
    )?;
    write_tokenizer_files(&part("tokenizer")?)?;
    let te = part("text_encoder")?;
    let vocab = world_tokenizer()?.vocab_size();
    write_json(&te.join("config.json"), &config.spec.text_config(vocab))?;
    let mut weights = weights_by_path(text_encoder)?;
    weights.metadata.insert("format".into(), "pt".into());
    weights.write(&te.join("model.safetensors"))?;
    let un = part("unet")?;
    write_json(&un.join("config.json"), &config.spec.unet_config())?;
    let mut weights = weights_by_path(unet)?;
    weights.metadata.insert("format".into(), "pt".into());
    weights.write(&un.join(VAE_WEIGHTS))?;
    let vae = part("vae")?;
    for name in ["config.json", VAE_WEIGHTS] {
        copy(&config.vae_dir.join(name), &vae.join(name))?;
    }
    Ok(())
}
