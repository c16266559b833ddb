//! Trains the world's `AutoencoderKL` from random weights: reconstruction (MSE of the decoded
//! posterior sample) plus a small KL term, on world pictures rendered on the fly, with AdamW and
//! resumable checkpoints; writes a diffusers `vae/` folder at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::ElementConversion;
use likeness_models::png_meta::write_atomic;
use likeness_models::vae::{AutoencoderKL, AutoencoderKLConfig};
use likeness_models::weights::{VarBuilder, WeightStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::WorldModelSpec;
use super::run::{OpenedRun, Plan, finish, open_run, train_loop};
use crate::data::to_signed_chw;
use crate::error::{Result, TrainError};
use crate::events::{TrainEvent, TrainOutcome};
use crate::optim::{AdamW, AdamWConfig, LrSchedule};
use crate::trainable::weights_by_path;
use crate::world::{WorldSpec, dataset_item, render};

/// The VAE weights of a checkpoint, with diffusers' key names.
pub const VAE_FILE: &str = "vae.safetensors";
/// The diffusers weight file name inside `vae/`.
pub const VAE_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
/// The dataset seed offset of the held-out pictures (never trained on).
const HELD_OUT_SEED: u64 = 0x5eed_0f4e_1d00_0000u64;

/// Settings of a VAE run; stored in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeTrainConfig {
    pub spec: WorldModelSpec,
    /// Optimizer steps in all.
    pub steps: usize,
    /// Pictures per step.
    pub batch: usize,
    pub lr: f64,
    /// How the rate moves: constant (the default, so a run extended by `--resume` repeats the
    /// uninterrupted one) or half a cosine to zero over `steps`.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from zero.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Seeds the initial weights, the pictures and the posterior noise.
    pub seed: u64,
    /// Weight of the KL term (summed over latent elements, averaged over the batch), as the
    /// KL-f8 autoencoder of Stable Diffusion uses.
    pub kl_weight: f64,
    /// Steps between checkpoints (0: only the last one).
    pub checkpoint_every: usize,
    /// Held-out pictures that set `scaling_factor`.
    pub held_out: usize,
    pub adam: AdamWConfig,
}

impl VaeTrainConfig {
    /// Defaults for `spec`: batch 8, lr 1e-3, KL weight 1e-6.
    pub fn new(spec: WorldModelSpec, steps: usize) -> Self {
        Self {
            spec,
            steps,
            batch: 8,
            lr: 1e-3,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            seed: 0,
            kl_weight: 1e-6,
            checkpoint_every: 500,
            held_out: 32,
            adam: AdamWConfig {
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
        }
    }

    fn validate(&self) -> Result<()> {
        let s = &self.spec;
        let f = s.vae_downscale();
        if s.image_size == 0 || !s.image_size.is_multiple_of(f) {
            return Err(TrainError::Invalid(format!(
                "image size {} is not a positive multiple of the VAE's downscale {f}",
                s.image_size
            )));
        }
        if self.batch == 0 || self.held_out == 0 {
            return Err(TrainError::Invalid(
                "batch and held-out count must be positive".into(),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(TrainError::Invalid(format!(
                "learning rate {} is not positive",
                self.lr
            )));
        }
        Ok(())
    }

    /// The model config with a placeholder scaling factor (set at the end of the run).
    fn model_config(&self, path: &Path) -> Result<AutoencoderKLConfig> {
        let cfg: AutoencoderKLConfig = serde_json::from_value(self.spec.vae_config(1.0))
            .map_err(|e| TrainError::io(path, format!("VAE config: {e}")))?;
        cfg.validate(path)?;
        Ok(cfg)
    }
}

/// The `vae/` folder a finished run writes.
pub fn vae_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("vae")
}

/// World pictures `first .. first + n` of the dataset `seed` as a batch in [-1, 1].
pub fn world_images<B: Backend>(
    seed: u64,
    first: u64,
    n: usize,
    size: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let spec = WorldSpec::default();
    let mut values = Vec::with_capacity(n * 3 * size * size);
    for i in 0..n as u64 {
        let (scene, _) = dataset_item(seed, first + i, &spec);
        values.extend(to_signed_chw(&render(&scene, size as u32)));
    }
    Tensor::from_data(TensorData::new(values, [n, 3, size, size]), device)
}

/// Held-out pictures of a run with `seed` (never in a training batch).
pub fn held_out_images<B: Backend>(
    seed: u64,
    n: usize,
    size: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    world_images(seed ^ HELD_OUT_SEED, 0, n, size, device)
}

/// Mean squared error between `vae`'s reconstruction (of the posterior mean) and `images`.
pub fn reconstruction_mse<B: Backend>(vae: &AutoencoderKL<B>, images: Tensor<B, 4>) -> f32 {
    reconstruct(vae, images).1
}

/// `vae`'s reconstruction (of the posterior mean) of `images`, on [-1, 1], and its mean squared
/// error.
pub fn reconstruct<B: Backend>(
    vae: &AutoencoderKL<B>,
    images: Tensor<B, 4>,
) -> (Tensor<B, 4>, f32) {
    let recon = vae.forward(images.clone());
    let mse = (recon.clone() - images)
        .powi_scalar(2)
        .mean()
        .into_scalar()
        .elem();
    (recon, mse)
}

/// Trains (or, when `run_dir` holds a VAE run, continues from its latest checkpoint) the world's
/// VAE on backend `B` through `Autodiff<B>`, then writes `run_dir/vae/`. On resume the saved
/// settings are kept except `steps`, taken from `config`.
pub fn train_vae<B: Backend>(
    config: &VaeTrainConfig,
    run_dir: &Path,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    crate::events::with_error_event(run::<B>(config, run_dir, device, events, cancel), events)
}

fn run<B: Backend>(
    config: &VaeTrainConfig,
    run_dir: &Path,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    type AB<B> = Autodiff<B>;
    let OpenedRun {
        run,
        settings: config,
        resume,
    } = open_run(run_dir, "world-vae", config, |saved: VaeTrainConfig| {
        VaeTrainConfig {
            steps: config.steps,
            ..saved
        }
    })?;
    config.validate()?;
    let model_cfg = config.model_config(&run.config_path())?;
    let vb = VarBuilder::<AB<B>>::new(Arc::new(WeightStore::random(config.seed)), device);
    let vae = AutoencoderKL::load(&vb, &model_cfg)?;
    let plan = Plan {
        steps: config.steps,
        lr: config.lr,
        schedule: config.lr_schedule,
        warmup_steps: config.warmup_steps,
        seed: config.seed,
        checkpoint_every: config.checkpoint_every,
        weights_file: VAE_FILE,
    };
    let size = config.spec.image_size;
    let latent = config.spec.latent_size();
    let lc = config.spec.latent_channels;
    // Pictures and noise of a step depend on (seed, step) only, so a resumed run sees exactly
    // what the uninterrupted one would have.
    let loss_at = |vae: &AutoencoderKL<AB<B>>, step: usize| {
        let images = world_images::<AB<B>>(
            config.seed,
            (step * config.batch) as u64,
            config.batch,
            size,
            device,
        );
        let mut rng = StdRng::seed_from_u64(config.seed ^ (step as u64).rotate_left(17));
        let n = config.batch * lc * latent * latent;
        let noise = Tensor::<AB<B>, 4>::from_data(
            TensorData::new(
                likeness_models::rng::randn(&mut rng, n),
                [config.batch, lc, latent, latent],
            ),
            device,
        );
        Ok(vae_loss(vae, images, noise, config.kl_weight))
    };
    let (vae, outcome) = train_loop(
        &run,
        &plan,
        vae,
        AdamW::<B>::new(config.adam),
        resume,
        device,
        loss_at,
        events,
        cancel,
    )?;
    if !outcome.cancelled {
        events(TrainEvent::Status {
            message: format!("writing {}", vae_dir(run.root()).display()),
        });
        write_vae_dir(&vae.valid(), &config, &vae_dir(run.root()))?;
    }
    finish(&outcome, events);
    Ok(outcome)
}

/// MSE of the decoded posterior sample plus `kl_weight` × KL(posterior ‖ N(0, 1)) summed over
/// latent elements and averaged over the batch (the LDM autoencoder's loss without the
/// perceptual and adversarial terms).
pub fn vae_loss<B: Backend>(
    vae: &AutoencoderKL<B>,
    images: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    kl_weight: f64,
) -> Tensor<B, 1> {
    let n = images.dims()[0];
    let posterior = vae.encode(images.clone());
    let recon = vae.decode(posterior.sample(noise));
    let mse = (recon - images).powi_scalar(2).mean();
    let var = posterior.logvar.clone().exp();
    let kl = (posterior.mean.clone().powi_scalar(2) + var - 1.0 - posterior.logvar.clone()).sum()
        * (0.5 / n as f64);
    mse + kl * kl_weight
}

/// Writes `dir/config.json` and `dir/diffusion_pytorch_model.safetensors`, with
/// `scaling_factor` = 1 / std of the posterior means of the held-out pictures (so scaled
/// latents have unit variance, as SD's 0.18215 was chosen). Returns the factor.
pub fn write_vae_dir<B: Backend>(
    vae: &AutoencoderKL<B>,
    config: &VaeTrainConfig,
    dir: &Path,
) -> Result<f64> {
    let device = vae.encoder.conv_in.weight.val().device();
    let images = held_out_images::<B>(
        config.seed,
        config.held_out,
        config.spec.image_size,
        &device,
    );
    let latents = vae.encode(images).mode();
    let n = latents.shape().num_elements();
    let mean: f64 = latents.clone().mean().into_scalar().elem();
    let var: f64 = (latents - mean)
        .powi_scalar(2)
        .sum()
        .into_scalar()
        .elem::<f64>()
        / (n.max(2) - 1) as f64;
    let std = var.sqrt();
    if !(std.is_finite() && std > 0.0) {
        return Err(TrainError::Invalid(format!(
            "latents of the held-out pictures have std {std}; cannot set scaling_factor"
        )));
    }
    let scaling_factor = 1.0 / std;
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut weights = weights_by_path(vae)?;
    weights.metadata.insert("format".into(), "pt".into());
    weights.write(&dir.join(VAE_WEIGHTS))?;
    let cfg = config.spec.vae_config(scaling_factor);
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| TrainError::io(dir, e))?;
    let path = dir.join("config.json");
    write_atomic(&path, text.as_bytes())?;
    Ok(scaling_factor)
}
