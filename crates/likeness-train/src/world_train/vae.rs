//! Trains the world's `AutoencoderKL` from random weights: reconstruction (MSE of the decoded
//! posterior sample) plus a small KL term, on world pictures rendered on the fly, with AdamW and
//! resumable checkpoints; writes a diffusers `vae/` folder at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use likeness_models::png_meta::write_atomic;
use likeness_models::vae::{AutoencoderKL, AutoencoderKLConfig};
use likeness_models::weights::{VarBuilder, WeightStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::WorldModelSpec;
use crate::checkpoint::{
    CheckpointState, CheckpointWriter, OPTIMIZER_FILE, RngState, TensorFile, latest_checkpoint,
    read_state, remove_partial,
};
use crate::data::to_signed_chw;
use crate::error::{Result, TrainError};
use crate::events::{TrainEvent, TrainOutcome};
use crate::optim::{AdamW, AdamWConfig, FlatGrads, require_grad_all};
use crate::run_dir::{LossRecord, RunDir};
use crate::trainable::{load_by_path, weights_by_path};
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

/// `config.json` of a VAE run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VaeRunConfig {
    trainer: String,
    likeness_version: String,
    vae: VaeTrainConfig,
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
    let recon = vae.forward(images.clone());
    (recon - images).powi_scalar(2).mean().into_scalar().elem()
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
    let result = run::<B>(config, run_dir, device, events, cancel);
    if let Err(e) = &result {
        events(TrainEvent::Error {
            message: e.to_string(),
        });
    }
    result
}

fn run<B: Backend>(
    config: &VaeTrainConfig,
    run_dir: &Path,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    type AB<B> = Autodiff<B>;
    let (run, config, resume) = if run_dir.join("config.json").is_file() {
        let run = RunDir::open(run_dir)?;
        let saved: VaeRunConfig = run.read_config()?;
        if saved.trainer != "world-vae" {
            return Err(TrainError::io(
                run.config_path(),
                format!("a `{}` run, not a world VAE run", saved.trainer),
            ));
        }
        for p in remove_partial(&run)? {
            tracing::warn!("{}: removed an unfinished checkpoint", p.display());
        }
        let resume = latest_checkpoint(&run)?;
        let config = VaeTrainConfig {
            steps: config.steps,
            ..saved.vae
        };
        (run, config, resume)
    } else {
        (RunDir::create(run_dir)?, config.clone(), None)
    };
    config.validate()?;
    run.write_config(&VaeRunConfig {
        trainer: "world-vae".into(),
        likeness_version: env!("CARGO_PKG_VERSION").into(),
        vae: config.clone(),
    })?;
    run.truncate_losses(resume.as_ref().map_or(0, |(s, _)| *s))?;

    let model_cfg = model_config_for(&config, &run)?;
    let vb = VarBuilder::<AB<B>>::new(Arc::new(WeightStore::random(config.seed)), device);
    let mut vae = AutoencoderKL::load(&vb, &model_cfg)?;
    let mut optim = AdamW::<B>::new(config.adam);
    let mut step = 0;
    let mut last_checkpoint: Option<(usize, PathBuf)> = None;
    if let Some((_, dir)) = &resume {
        let state = read_state(dir)?;
        if state.rng.seed != config.seed {
            return Err(TrainError::io(
                dir,
                format!(
                    "checkpoint of a run with seed {}, not {}",
                    state.rng.seed, config.seed
                ),
            ));
        }
        vae = load_by_path(vae, &dir.join(VAE_FILE))?;
        let path = dir.join(OPTIMIZER_FILE);
        optim.load_tensors(&TensorFile::read(&path)?, &path, device)?;
        step = state.step;
        last_checkpoint = Some((step, dir.clone()));
    }
    let mut vae = require_grad_all(vae);

    events(TrainEvent::Started {
        run_dir: run.root().to_path_buf(),
        start_step: step,
        total_steps: config.steps,
        photos: 0,
        skipped: Vec::new(),
        upscaled: Vec::new(),
    });
    let mut losses = Vec::new();
    let size = config.spec.image_size;
    let latent = config.spec.latent_size();
    let lc = config.spec.latent_channels;
    while step < config.steps {
        if cancel.load(Ordering::SeqCst) {
            let path = match &last_checkpoint {
                Some((s, p)) if *s == step => p.clone(),
                _ => save(&run, step, &vae, &optim, &config, None, config.lr)?,
            };
            events(TrainEvent::Finished {
                step,
                cancelled: true,
                checkpoint: Some(path.clone()),
            });
            return Ok(TrainOutcome {
                step,
                cancelled: true,
                checkpoint: Some(path),
                losses,
            });
        }
        let began = Instant::now();
        // Pictures and noise of a step depend on (seed, step) only, so a resumed run sees
        // exactly what the uninterrupted one would have.
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
        let loss = vae_loss(&vae, images, noise, config.kl_weight);
        let value: f32 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: step + 1,
                value,
                last_checkpoint: last_checkpoint.map(|(_, p)| p),
            });
        }
        let grads = FlatGrads::from_loss(loss, &vae);
        vae = optim.step(config.lr, vae, grads);
        step += 1;
        let secs = began.elapsed().as_secs_f64();
        losses.push(value);
        run.append_loss(&LossRecord {
            step,
            loss: value,
            lr: config.lr,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            step_secs: secs,
        })?;
        events(TrainEvent::Step {
            step,
            loss: value,
            lr: config.lr,
            secs,
        });
        let last = step == config.steps;
        if last || (config.checkpoint_every > 0 && step.is_multiple_of(config.checkpoint_every)) {
            let path = save(&run, step, &vae, &optim, &config, Some(value), config.lr)?;
            events(TrainEvent::Checkpoint {
                step,
                path: path.clone(),
            });
            last_checkpoint = Some((step, path));
        }
    }
    events(TrainEvent::Status {
        message: format!("writing {}", vae_dir(run.root()).display()),
    });
    write_vae_dir(&vae.valid(), &config, &vae_dir(run.root()))?;
    let checkpoint = last_checkpoint.map(|(_, p)| p);
    events(TrainEvent::Finished {
        step,
        cancelled: false,
        checkpoint: checkpoint.clone(),
    });
    Ok(TrainOutcome {
        step,
        cancelled: false,
        checkpoint,
        losses,
    })
}

fn model_config_for(config: &VaeTrainConfig, run: &RunDir) -> Result<AutoencoderKLConfig> {
    config.model_config(&run.config_path())
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

fn save<AB: AutodiffBackend>(
    run: &RunDir,
    step: usize,
    vae: &AutoencoderKL<AB>,
    optim: &AdamW<AB::InnerBackend>,
    config: &VaeTrainConfig,
    loss: Option<f32>,
    lr: f64,
) -> Result<PathBuf> {
    let writer = CheckpointWriter::begin(run, step)?;
    let mut weights = weights_by_path(&vae.valid())?;
    weights.metadata.insert("format".into(), "pt".into());
    weights.write(&writer.dir().join(VAE_FILE))?;
    optim
        .to_tensors()?
        .write(&writer.dir().join(OPTIMIZER_FILE))?;
    writer.commit(&CheckpointState {
        step,
        trainable: "full".into(),
        rng: RngState {
            seed: config.seed,
            steps_drawn: step,
        },
        loss,
        lr,
    })
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
