//! DreamBooth: teach a model a subject from a few photos, as diffusers'
//! `train_dreambooth_lora.py` does: the photos' VAE latents are noised at random timesteps and
//! the UNet learns to predict the noise (or v) given "a photo of sks dog"; with prior
//! preservation, images the base model made of the class ("a photo of dog") are trained on
//! alongside so the class keeps its look.
//!
//! [`train`] runs a new job or resumes one; the loop in [`run_loop`] is data → noise → model →
//! loss → step, with checkpoints and preview galleries at fixed intervals. What trains (LoRA or
//! every weight) is a [`Trainable`]; optimizer, checkpoints, run folder and events come from
//! their own modules for the other trainers to share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use likeness_models::device::{BackendTask, Placement, Precision};
use likeness_models::lora::{LoraShape, LoraTargets};
use likeness_models::nn::cast_params;
use likeness_models::pipeline::{GenerateParams, SeededNoise, to_rgb8};
use likeness_models::png_meta::{a1111_parameters, save_png};
use likeness_models::rng::randn;
use likeness_models::schedulers::{NoiseSchedule, SchedulerKind};
use likeness_models::sd::{LoadOptions, StableDiffusion};
use likeness_models::vae::AutoencoderKL;
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    CheckpointState, CheckpointWriter, OPTIMIZER_FILE, RngState, TensorFile, latest_checkpoint,
    read_state, remove_partial,
};
use crate::data::{ConceptPhotos, EpochOrder, Stream, TrainRng, load_photos, to_signed_chw};
use crate::error::{Result, TrainError};
use crate::events::{TrainEvent, TrainOutcome};
use crate::optim::{AdamW, AdamWConfig, FlatGrads, LrPlan, LrSchedule, trainable_parameters};
use crate::run_dir::{LossRecord, ModelFingerprint, RunDir};
use crate::trainable::{DiffusionNets, FullTraining, LoraTraining, TrainMode, Trainable};

/// The preview galleries: the same prompts and seeds at every sampled step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SampleSettings {
    /// Empty: the instance prompt.
    pub prompts: Vec<String>,
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub guidance: f64,
    pub negative_prompt: String,
    /// `ddim`, `euler`, `euler-a` or `dpmpp-2m`.
    pub scheduler: String,
}

impl Default for SampleSettings {
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            seeds: vec![0, 1],
            steps: 25,
            guidance: 7.5,
            negative_prompt: String::new(),
            scheduler: "ddim".into(),
        }
    }
}

/// Every setting of a DreamBooth run (stored in the run's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DreamBoothConfig {
    /// The base model: a diffusers folder or a single-file checkpoint.
    pub model: PathBuf,
    /// Treat the model as v-prediction.
    pub v_prediction: bool,
    /// The folder of instance photos.
    pub images: PathBuf,
    /// The rare token that names the subject (`sks`).
    pub token: String,
    /// The subject's class (`dog`).
    pub class: String,
    /// Default: "a photo of {token} {class}".
    pub instance_prompt: Option<String>,
    pub prior_preservation: bool,
    /// How many class images prior preservation uses.
    pub class_images: usize,
    /// Default: "a photo of {class}".
    pub class_prompt: Option<String>,
    pub prior_weight: f64,
    pub mode: TrainMode,
    pub steps: usize,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: usize,
    pub adam: AdamWConfig,
    /// Global-norm gradient clipping (`None`: off).
    pub max_grad_norm: Option<f64>,
    pub batch: usize,
    pub grad_accum: usize,
    /// Pixels per side; `None`: the model's native size.
    pub resolution: Option<usize>,
    pub random_flip: bool,
    pub seed: u64,
    pub noise_offset: f64,
    /// Min-SNR-γ loss weighting (`None`: plain MSE).
    pub min_snr_gamma: Option<f64>,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Preview gallery every this many steps (0: none).
    pub sample_every: usize,
    pub samples: SampleSettings,
    /// Recompute the UNet's layers in backward instead of keeping their activations (less
    /// memory, one more forward pass per step); the text encoder keeps its own.
    pub gradient_checkpointing: bool,
    /// Mixed precision: `bf16`/`f16` keep the frozen weights (and so the activations) in that
    /// dtype while LoRA adapters, their gradients and the optimiser state stay f32 (norms and
    /// the loss in f32); `f32` (the default) runs everything in f32. A full fine-tune keeps the
    /// weights it trains in f32.
    #[serde(default)]
    pub mixed_precision: Precision,
}

impl DreamBoothConfig {
    /// diffusers' defaults for a LoRA run (rank 4, lr 1e-4, 400 steps).
    pub fn new(model: &Path, images: &Path, token: &str, class: &str) -> Self {
        Self {
            model: model.to_path_buf(),
            v_prediction: false,
            images: images.to_path_buf(),
            token: token.into(),
            class: class.into(),
            instance_prompt: None,
            prior_preservation: false,
            class_images: 100,
            class_prompt: None,
            prior_weight: 1.0,
            mode: TrainMode::Lora {
                rank: 4,
                alpha: 4.0,
                unet_targets: LoraTargets::unet_attention(),
                text_targets: None,
            },
            steps: 400,
            lr: 1e-4,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            adam: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            batch: 1,
            grad_accum: 1,
            resolution: None,
            random_flip: false,
            seed: 0,
            noise_offset: 0.0,
            min_snr_gamma: None,
            checkpoint_every: 100,
            sample_every: 100,
            samples: SampleSettings::default(),
            gradient_checkpointing: false,
            mixed_precision: Precision::F32,
        }
    }

    pub fn instance_prompt(&self) -> String {
        self.instance_prompt
            .clone()
            .unwrap_or_else(|| format!("a photo of {} {}", self.token, self.class))
    }

    pub fn class_prompt(&self) -> String {
        self.class_prompt
            .clone()
            .unwrap_or_else(|| format!("a photo of {}", self.class))
    }

    /// Whether the text encoder trains (LoRA on it, or full).
    pub fn trains_text_encoder(&self) -> bool {
        match &self.mode {
            TrainMode::Lora { text_targets, .. } => text_targets.is_some(),
            TrainMode::Full { text_encoder } => *text_encoder,
        }
    }

    /// Checks the settings that make no sense whatever the model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.token.trim().is_empty() && self.instance_prompt.is_none() {
            return bad("--token must not be empty".into());
        }
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.batch == 0 || self.grad_accum == 0 {
            return bad("--batch and --grad-accum must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number (got {})", self.lr));
        }
        if let TrainMode::Lora { rank, alpha, .. } = &self.mode
            && (*rank == 0 || !alpha.is_finite())
        {
            return bad("--lora-rank must be at least 1 and --lora-alpha a number".into());
        }
        if self.prior_preservation && self.class_images == 0 {
            return bad("--class-images must be at least 1 with --prior-preservation".into());
        }
        if self.prior_weight < 0.0 || self.noise_offset < 0.0 {
            return bad("--prior-weight and --noise-offset must not be negative".into());
        }
        if self.max_grad_norm.is_some_and(|m| m <= 0.0)
            || self.min_snr_gamma.is_some_and(|g| g <= 0.0)
        {
            return bad("--max-grad-norm and --min-snr-gamma must be positive".into());
        }
        if self.resolution == Some(0) {
            return bad("--resolution must be positive".into());
        }
        self.samples
            .scheduler
            .parse::<SchedulerKind>()
            .map_err(|e| TrainError::Invalid(format!("sample scheduler: {e}")))?;
        Ok(())
    }
}

/// The run's `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// `dreambooth`.
    pub trainer: String,
    pub likeness_version: String,
    pub base_model: PathBuf,
    pub fingerprint: ModelFingerprint,
    pub dreambooth: DreamBoothConfig,
}

/// What to run: a new run into a fresh folder, or the continuation of one.
#[derive(Debug, Clone)]
pub enum DreamBoothJob {
    New {
        config: Box<DreamBoothConfig>,
        run_dir: PathBuf,
    },
    /// Continues from the last complete checkpoint (from scratch when there is none).
    Resume {
        run_dir: PathBuf,
        /// A new total step count.
        steps: Option<usize>,
        /// The base model moved: its new place (the fingerprint must still match).
        model: Option<PathBuf>,
    },
}

/// A DreamBooth job for [`likeness_models::device::dispatch`]: the backend (device and
/// precision) comes from there. Its output is the run's own result.
pub struct DreamBoothTask<'a> {
    pub job: DreamBoothJob,
    pub events: &'a mut dyn FnMut(TrainEvent),
    pub cancel: std::sync::Arc<AtomicBool>,
}

impl BackendTask for DreamBoothTask<'_> {
    type Output = Result<TrainOutcome>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        tracing::info!("training on {placement}");
        Ok(train::<B>(self.job, &device, self.events, &self.cancel))
    }
}

/// Runs a DreamBooth job on backend `B` (trained through `Autodiff<B>`), reporting to `events`
/// and stopping with a checkpoint when `cancel` becomes true.
pub fn train<B: Backend>(
    job: DreamBoothJob,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    crate::events::with_error_event(run_job::<B>(job, device, events, cancel), events)
}

/// A run ready to train: its folder, settings and where it continues from.
struct Setup {
    run: RunDir,
    config: DreamBoothConfig,
    /// The checkpoint to continue from: step and folder.
    resume: Option<(usize, PathBuf)>,
}

fn run_job<B: Backend>(
    job: DreamBoothJob,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    let (run, mut config, fingerprint, resume) = match job {
        DreamBoothJob::New { config, run_dir } => {
            let config = *config;
            config.validate()?;
            let fingerprint = ModelFingerprint::of(&config.model)?;
            (RunDir::create(&run_dir)?, config, fingerprint, None)
        }
        DreamBoothJob::Resume {
            run_dir,
            steps,
            model,
        } => {
            let run = RunDir::open(&run_dir)?;
            let saved: RunConfig = run.read_config()?;
            let mut config = saved.dreambooth;
            if let Some(m) = model {
                config.model = m;
            }
            let fingerprint = ModelFingerprint::of(&config.model)?;
            if let Some(diff) = saved.fingerprint.difference(&fingerprint) {
                return Err(TrainError::ModelMismatch {
                    run: run_dir,
                    reason: format!(
                        "it was trained from another base model ({}); in {}, {diff}",
                        saved.base_model.display(),
                        config.model.display()
                    ),
                });
            }
            if let Some(s) = steps {
                config.steps = s;
            }
            config.validate()?;
            for p in remove_partial(&run)? {
                tracing::warn!("{}: removed an unfinished checkpoint", p.display());
            }
            let resume = latest_checkpoint(&run)?;
            if resume.is_none() {
                tracing::warn!(
                    "{}: no complete checkpoint; starting over",
                    run.root().display()
                );
            }
            (run, config, fingerprint, resume)
        }
    };
    events(TrainEvent::Status {
        message: format!("loading {}", config.model.display()),
    });
    // LoRA training freezes every base weight: under mixed precision they load straight into
    // the half type (a full fine-tune loads f32 and casts what it does not train).
    let precision = match config.mode {
        TrainMode::Lora { .. } => config.mixed_precision,
        TrainMode::Full { .. } => Precision::F32,
    };
    let opts = LoadOptions {
        v_prediction: config.v_prediction,
        precision,
        ..Default::default()
    };
    let model = StableDiffusion::<B>::load(&config.model, &opts, device)?;
    let model = frozen_in_half(model, &config);
    let resolution = config.resolution.unwrap_or_else(|| model.native_size());
    model.latent_shape(&GenerateParams {
        width: resolution,
        height: resolution,
        count: 1,
        ..Default::default()
    })?;
    config.resolution = Some(resolution);
    run.write_config(&RunConfig {
        trainer: "dreambooth".into(),
        likeness_version: env!("CARGO_PKG_VERSION").into(),
        base_model: config.model.clone(),
        fingerprint,
        dreambooth: config.clone(),
    })?;
    // Steps after the checkpoint are trained again; their old loss lines go.
    run.truncate_losses(resume.as_ref().map_or(0, |(s, _)| *s))?;
    let setup = Setup {
        run,
        config,
        resume,
    };
    match setup.config.mode.clone() {
        TrainMode::Lora {
            rank,
            alpha,
            unet_targets,
            text_targets,
        } => {
            let lora = LoraTraining {
                shape: LoraShape { rank, alpha },
                unet_targets,
                text_targets,
                seed: setup.config.seed,
            };
            run_loop::<B, Autodiff<B>, _>(model, lora, setup, events, cancel)
        }
        TrainMode::Full { text_encoder } => {
            let full = FullTraining { text_encoder };
            run_loop::<B, Autodiff<B>, _>(model, full, setup, events, cancel)
        }
    }
}

/// Under mixed precision, the weights this run does not train in its half dtype: the VAE, the
/// text encoder unless a full fine-tune trains it, and the UNet unless a full fine-tune trains it
/// (LoRA adapters are attached afterwards, in f32).
fn frozen_in_half<B: Backend>(
    mut model: StableDiffusion<B>,
    config: &DreamBoothConfig,
) -> StableDiffusion<B> {
    let Some(dtype) = config.mixed_precision.half_dtype() else {
        return model;
    };
    model.vae = cast_params(model.vae, dtype);
    let (unet, text) = match &config.mode {
        TrainMode::Lora { .. } => (true, true),
        TrainMode::Full { text_encoder } => (false, !text_encoder),
    };
    if unet {
        model.unet = cast_params(model.unet, dtype);
    }
    if text {
        model.text_encoder = cast_params(model.text_encoder, dtype);
    }
    // The f32 weights' pages back to the driver (a GPU pool keeps what it took: at 128 px on
    // lavapipe the step's pool held 4 896 MiB without this, 2 624 MiB with it).
    B::memory_cleanup(&model.unet.conv_in.weight.device());
    model
}

/// The training loop: data → noise → model → loss → step, then checkpoint and previews at
/// their intervals.
fn run_loop<B, AB, T>(
    model: StableDiffusion<B>,
    trainable: T,
    setup: Setup,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome>
where
    B: Backend,
    AB: AutodiffBackend<InnerBackend = B>,
    T: Trainable,
{
    let Setup {
        run,
        config,
        resume,
    } = setup;
    let resolution = config.resolution.unwrap_or_else(|| model.native_size());

    // Pictures and prompts, prepared once.
    let photos = load_photos(&config.images, resolution as u32)?;
    let class_photos = if config.prior_preservation {
        if !ensure_class_images(&model, &run, &config, resolution, events, cancel)? {
            return Ok(cancelled_before_training(resume, events));
        }
        Some(load_photos(&run.class_images_dir(), resolution as u32)?)
    } else {
        None
    };
    events(TrainEvent::Status {
        message: "encoding the photos".into(),
    });
    let mut data = DreamBoothData::new(&model.vae, &photos, class_photos.as_ref(), &config)?;
    let prompts = Prompts::new(&model, &config)?;
    let objective = Denoising {
        schedule: NoiseSchedule::from_config(&model.scheduler_config)?,
        prior_weight: config.prior_weight,
        min_snr_gamma: config.min_snr_gamma,
        noise_offset: config.noise_offset,
    };

    // The networks: frozen base, trainable parts marked by `trainable`.
    // Cloning a module shares its tensors; the previews swap the trained networks in.
    let nets = DiffusionNets::<AB>::from_inner(DiffusionNets {
        unet: model.unet.clone(),
        text_encoder: model.text_encoder.clone(),
    });
    let mut previews = Previews {
        model,
        settings: config.samples.clone(),
        default_prompt: config.instance_prompt(),
        resolution,
    };
    let mut nets = trainable.prepare(nets, resume.as_ref().map(|(_, d)| d.as_path()))?;
    let trained = trainable_parameters(&nets);
    tracing::info!(
        "{} trainable tensors, {} parameters",
        trained.len(),
        trained.iter().map(|(_, n)| n).sum::<usize>()
    );
    // The UNet's dtype: under LoRA the frozen base's (half under mixed precision), which the
    // adapters then stay in between steps; a full fine-tune trains it in f32.
    let mut optim = AdamW::<B>::new(config.adam).keep_masters(nets.unet.compute_dtype());
    let rng = TrainRng::new(config.seed);
    let mut step = 0;
    let mut last_checkpoint: Option<(usize, PathBuf)> = None;
    if let Some((_, dir)) = &resume {
        let state = read_state(dir)?;
        if state.trainable != trainable.kind() || state.rng.seed != config.seed {
            return Err(TrainError::io(
                dir,
                format!(
                    "checkpoint of a {} run with seed {} does not fit this {} run with seed {}",
                    state.trainable,
                    state.rng.seed,
                    trainable.kind(),
                    config.seed
                ),
            ));
        }
        let path = dir.join(OPTIMIZER_FILE);
        optim.load_tensors(&TensorFile::read(&path)?, &path, &nets_device(&previews))?;
        step = state.step;
        last_checkpoint = Some((state.step, dir.clone()));
    }
    let plan = LrPlan {
        lr: config.lr,
        schedule: config.lr_schedule,
        warmup_steps: config.warmup_steps,
        total_steps: config.steps,
    };
    let accum = config.grad_accum;

    events(TrainEvent::Started {
        run_dir: run.root().to_path_buf(),
        start_step: step,
        total_steps: config.steps,
        photos: photos.photos.len(),
        skipped: photos.skipped.clone(),
        upscaled: photos.upscaled.clone(),
    });
    if step == 0 && config.sample_every > 0 {
        let paths = previews.render(nets.valid(), &run.samples_at(0))?;
        events(TrainEvent::Sample { step: 0, paths });
    }

    let mut losses = Vec::new();
    while step < config.steps {
        if cancel.load(Ordering::SeqCst) {
            let path = match &last_checkpoint {
                Some((s, p)) if *s == step => p.clone(),
                _ => {
                    let p =
                        save_checkpoint(&run, step, &trainable, &nets, &optim, &rng, None, 0.0)?;
                    events(TrainEvent::Checkpoint {
                        step,
                        path: p.clone(),
                    });
                    p
                }
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
        let lr = plan.at(step);

        let mut grads = FlatGrads::<B>::default();
        let mut loss_sum = 0.0f32;
        for micro in 0..accum {
            let index = (step * accum + micro) as u64;
            let mut draws = rng.stream(Stream::Batch, index);
            let batch = data.batch::<AB>(index, &mut draws);
            let (value, micro) = objective.grads(
                &nets,
                &prompts,
                batch,
                &mut draws,
                1.0 / accum as f64,
                config.gradient_checkpointing,
            )?;
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: step + 1,
                    value,
                    last_checkpoint: last_checkpoint.map(|(_, p)| p),
                });
            }
            loss_sum += value;
            grads.accumulate(micro);
        }
        let norm = match config.max_grad_norm {
            Some(max) => grads.clip_global_norm(max),
            None => grads.global_norm(),
        };
        if !norm.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: step + 1,
                value: norm as f32,
                last_checkpoint: last_checkpoint.map(|(_, p)| p),
            });
        }
        nets = optim.step(lr, nets, grads);
        step += 1;

        let loss = loss_sum / accum as f32;
        let secs = began.elapsed().as_secs_f64();
        losses.push(loss);
        run.append_loss(&LossRecord {
            step,
            loss,
            lr,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            step_secs: secs,
        })?;
        events(TrainEvent::Step {
            step,
            loss,
            lr,
            secs,
        });

        let last = step == config.steps;
        if last || (config.checkpoint_every > 0 && step.is_multiple_of(config.checkpoint_every)) {
            let path =
                save_checkpoint(&run, step, &trainable, &nets, &optim, &rng, Some(loss), lr)?;
            events(TrainEvent::Checkpoint {
                step,
                path: path.clone(),
            });
            last_checkpoint = Some((step, path));
        }
        if config.sample_every > 0 && (last || step.is_multiple_of(config.sample_every)) {
            let paths = previews.render(nets.valid(), &run.samples_at(step))?;
            events(TrainEvent::Sample { step, paths });
        }
    }
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

fn cancelled_before_training(
    resume: Option<(usize, PathBuf)>,
    events: &mut dyn FnMut(TrainEvent),
) -> TrainOutcome {
    let (step, checkpoint) = match resume {
        Some((s, p)) => (s, Some(p)),
        None => (0, None),
    };
    events(TrainEvent::Finished {
        step,
        cancelled: true,
        checkpoint: checkpoint.clone(),
    });
    TrainOutcome {
        step,
        cancelled: true,
        checkpoint,
        losses: Vec::new(),
    }
}

fn nets_device<B: Backend>(previews: &Previews<B>) -> B::Device {
    previews.model.device()
}

/// Writes `checkpoints/step-NNNNNN`: the trained weights, the optimizer and the RNG state.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_checkpoint<B, AB, T>(
    run: &RunDir,
    step: usize,
    trainable: &T,
    nets: &DiffusionNets<AB>,
    optim: &AdamW<B>,
    rng: &TrainRng,
    loss: Option<f32>,
    lr: f64,
) -> Result<PathBuf>
where
    B: Backend,
    AB: AutodiffBackend<InnerBackend = B>,
    T: Trainable,
{
    let writer = CheckpointWriter::begin(run, step)?;
    // The trained weights' f32 values (the networks may hold them in half precision).
    trainable.save(&optim.masters_into::<AB, _>(nets.clone()), writer.dir())?;
    optim
        .to_tensors()?
        .write(&writer.dir().join(OPTIMIZER_FILE))?;
    writer.commit(&CheckpointState {
        step,
        trainable: trainable.kind().into(),
        rng: RngState {
            seed: rng.seed,
            steps_drawn: step,
        },
        loss,
        lr,
    })
}

/// Makes the missing prior-preservation images (`class_images/class-NNNN.png`) with the base
/// model. Returns false when cancelled.
fn ensure_class_images<B: Backend>(
    model: &StableDiffusion<B>,
    run: &RunDir,
    config: &DreamBoothConfig,
    resolution: usize,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<bool> {
    let dir = run.class_images_dir();
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let missing: Vec<usize> = (0..config.class_images)
        .filter(|i| !class_image_path(&dir, *i).is_file())
        .collect();
    let scheduler = sample_scheduler(&config.samples)?;
    for (done, &i) in missing.iter().enumerate() {
        if cancel.load(Ordering::SeqCst) {
            return Ok(false);
        }
        events(TrainEvent::Status {
            message: format!("class image {} of {}", done + 1, missing.len()),
        });
        let params = GenerateParams {
            prompt: config.class_prompt(),
            negative_prompt: config.samples.negative_prompt.clone(),
            steps: config.samples.steps,
            guidance: config.samples.guidance,
            scheduler,
            seed: config.seed.wrapping_add(i as u64),
            count: 1,
            width: resolution,
            height: resolution,
            clip_skip: 0,
        };
        let image = generate(model, &params)?;
        save_png(
            &class_image_path(&dir, i),
            &image,
            &a1111_parameters(&params, params.seed, &model.info.name, &[]),
        )?;
    }
    Ok(true)
}

fn class_image_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("class-{i:04}.png"))
}

fn sample_scheduler(s: &SampleSettings) -> Result<SchedulerKind> {
    s.scheduler
        .parse::<SchedulerKind>()
        .map_err(|e| TrainError::Invalid(format!("sample scheduler: {e}")))
}

/// One picture from a model with the seeded default noise.
fn generate<B: Backend>(
    model: &StableDiffusion<B>,
    params: &GenerateParams,
) -> Result<image::RgbImage> {
    let mut noise = SeededNoise::new(params.seed, params.count);
    let latents = model.sample(params, None, &mut noise, &mut |_, _| {})?;
    to_rgb8(model.decode(latents))?
        .into_iter()
        .next()
        .ok_or_else(|| TrainError::Invalid("the sampler returned no image".into()))
}

/// The preview galleries: the model (whose UNet and text encoder are replaced by the trained
/// ones at each gallery) plus the prompts and seeds.
struct Previews<B: Backend> {
    model: StableDiffusion<B>,
    settings: SampleSettings,
    default_prompt: String,
    resolution: usize,
}

impl<B: Backend> Previews<B> {
    /// Renders every prompt × seed with the current networks into `dir` (`p00-seed0.png`…).
    fn render(&mut self, nets: DiffusionNets<B>, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        self.model.unet = nets.unet;
        self.model.text_encoder = nets.text_encoder;
        let model = &self.model;
        let prompts = if self.settings.prompts.is_empty() {
            vec![self.default_prompt.clone()]
        } else {
            self.settings.prompts.clone()
        };
        let scheduler = sample_scheduler(&self.settings)?;
        let mut paths = Vec::new();
        for (pi, prompt) in prompts.iter().enumerate() {
            for &seed in &self.settings.seeds {
                let params = GenerateParams {
                    prompt: prompt.clone(),
                    negative_prompt: self.settings.negative_prompt.clone(),
                    steps: self.settings.steps,
                    guidance: self.settings.guidance,
                    scheduler,
                    seed,
                    count: 1,
                    width: self.resolution,
                    height: self.resolution,
                    clip_skip: 0,
                };
                let image = generate(model, &params)?;
                let path = dir.join(format!("p{pi:02}-seed{seed}.png"));
                save_png(
                    &path,
                    &image,
                    &a1111_parameters(&params, seed, &model.info.name, &[]),
                )?;
                paths.push(path);
            }
        }
        Ok(paths)
    }
}

/// The VAE posterior of each training picture (and of its mirror image with random flips),
/// computed once; a latent is drawn from it every time the picture is used.
struct LatentBank<B: Backend> {
    /// Per picture: `[unflipped, flipped?]` of (mean, std), each [1, C, h, w].
    moments: Vec<Vec<(Tensor<B, 4>, Tensor<B, 4>)>>,
    order: EpochOrder,
}

impl<B: Backend> LatentBank<B> {
    fn new(
        vae: &AutoencoderKL<B>,
        photos: &ConceptPhotos,
        flips: bool,
        order: EpochOrder,
    ) -> Result<Self> {
        let device = vae.devices().into_iter().next().unwrap_or_default();
        let mut moments = Vec::with_capacity(photos.photos.len());
        for photo in &photos.photos {
            let mut variants = Vec::new();
            let mut images = vec![photo.image.clone()];
            if flips {
                images.push(image::imageops::flip_horizontal(&photo.image));
            }
            for img in images {
                let (w, h) = img.dimensions();
                let x = Tensor::<B, 4>::from_data(
                    TensorData::new(to_signed_chw(&img), [1, 3, h as usize, w as usize]),
                    &device,
                );
                let posterior = vae.encode(x);
                variants.push((posterior.mean.clone(), posterior.std()));
            }
            moments.push(variants);
        }
        Ok(Self { moments, order })
    }

    /// The scaled latent of the picture at `position` of the epoch order.
    fn draw(&mut self, position: u64, scaling: f64, rng: &mut StdRng) -> Tensor<B, 4> {
        let i = self.order.at(position);
        let variants = &self.moments[i];
        let v = if variants.len() > 1 && rng.random_bool(0.5) {
            1
        } else {
            0
        };
        let (mean, std) = &variants[v];
        let dims = mean.dims();
        let n: usize = dims.iter().product();
        let noise = Tensor::<B, 4>::from_data(TensorData::new(randn(rng, n), dims), &mean.device());
        (mean.clone() + std.clone() * noise) * scaling
    }
}

/// The training pictures of a DreamBooth run: instance photos and, with prior preservation,
/// class images.
struct DreamBoothData<B: Backend> {
    instance: LatentBank<B>,
    class: Option<LatentBank<B>>,
    batch: usize,
    scaling: f64,
}

/// One micro-batch: instance latents first, then as many class latents.
struct Batch<AB: Backend> {
    latents: Tensor<AB, 4>,
    instances: usize,
}

impl<B: Backend> DreamBoothData<B> {
    fn new(
        vae: &AutoencoderKL<B>,
        photos: &ConceptPhotos,
        class: Option<&ConceptPhotos>,
        config: &DreamBoothConfig,
    ) -> Result<Self> {
        let rng = TrainRng::new(config.seed);
        let instance = LatentBank::new(
            vae,
            photos,
            config.random_flip,
            EpochOrder::new(photos.photos.len(), rng, Stream::InstanceOrder),
        )?;
        let class = class
            .map(|c| {
                LatentBank::new(
                    vae,
                    c,
                    config.random_flip,
                    EpochOrder::new(c.photos.len(), rng, Stream::ClassOrder),
                )
            })
            .transpose()?;
        Ok(Self {
            instance,
            class,
            batch: config.batch,
            scaling: vae.scaling_factor(),
        })
    }

    /// The micro-batch `index` (the `index`-th of the whole run).
    fn batch<AB: AutodiffBackend<InnerBackend = B>>(
        &mut self,
        index: u64,
        rng: &mut StdRng,
    ) -> Batch<AB> {
        let mut rows = Vec::with_capacity(2 * self.batch);
        for j in 0..self.batch as u64 {
            rows.push(
                self.instance
                    .draw(index * self.batch as u64 + j, self.scaling, rng),
            );
        }
        if let Some(class) = &mut self.class {
            for j in 0..self.batch as u64 {
                rows.push(class.draw(index * self.batch as u64 + j, self.scaling, rng));
            }
        }
        Batch {
            latents: Tensor::from_inner(Tensor::cat(rows, 0)),
            instances: self.batch,
        }
    }
}

/// The text conditioning of instance and class pictures.
enum Prompts<B: Backend> {
    /// The text encoder is frozen: the embeddings [1, L, D], computed once.
    Fixed {
        instance: Tensor<B, 3>,
        class: Tensor<B, 3>,
    },
    /// The text encoder trains: token ids, encoded at every step.
    Encoded { instance: Vec<i64>, class: Vec<i64> },
}

impl<B: Backend> Prompts<B> {
    fn new(model: &StableDiffusion<B>, config: &DreamBoothConfig) -> Result<Self> {
        let (instance, class) = (config.instance_prompt(), config.class_prompt());
        if config.trains_text_encoder() {
            let ids = |t: &str| {
                model
                    .tokenizer
                    .encode(t)
                    .into_iter()
                    .map(|i| i as i64)
                    .collect()
            };
            Ok(Prompts::Encoded {
                instance: ids(&instance),
                class: ids(&class),
            })
        } else {
            Ok(Prompts::Fixed {
                instance: model.encode_text(&instance, 0)?,
                class: model.encode_text(&class, 0)?,
            })
        }
    }

    /// `encoder_hidden_states` for `instances` instance rows then `classes` class rows.
    fn hidden_states<AB: AutodiffBackend<InnerBackend = B>>(
        &self,
        nets: &DiffusionNets<AB>,
        instances: usize,
        classes: usize,
    ) -> Result<Tensor<AB, 3>> {
        match self {
            Prompts::Fixed { instance, class } => {
                let [_, l, d] = instance.dims();
                let mut parts = vec![instance.clone().expand([instances, l, d])];
                if classes > 0 {
                    parts.push(class.clone().expand([classes, l, d]));
                }
                Ok(Tensor::from_inner(Tensor::cat(parts, 0)))
            }
            Prompts::Encoded { instance, class } => {
                let len = instance.len();
                let mut ids = Vec::with_capacity((instances + classes) * len);
                for _ in 0..instances {
                    ids.extend_from_slice(instance);
                }
                for _ in 0..classes {
                    ids.extend_from_slice(class);
                }
                let device = nets.unet.conv_in.weight.device();
                let ids = Tensor::<AB, 2, Int>::from_data(
                    TensorData::new(ids, [instances + classes, len]),
                    &device,
                );
                Ok(nets.text_encoder.encode_prompt(ids, 0)?)
            }
        }
    }
}

/// The denoising objective: noise the latents at random timesteps and regress the UNet's
/// output on the noise (or v).
struct Denoising {
    schedule: NoiseSchedule,
    prior_weight: f64,
    min_snr_gamma: Option<f64>,
    noise_offset: f64,
}

impl Denoising {
    /// One micro-batch's loss (instance MSE plus `prior_weight` × class MSE) and the gradients
    /// of `scale` × it, with the UNet's layers recomputed in backward when `checkpointing`.
    fn grads<B, AB>(
        &self,
        nets: &DiffusionNets<AB>,
        prompts: &Prompts<B>,
        batch: Batch<AB>,
        rng: &mut StdRng,
        scale: f64,
        checkpointing: bool,
    ) -> Result<(f32, FlatGrads<B>)>
    where
        B: Backend,
        AB: AutodiffBackend<InnerBackend = B>,
    {
        let latents = batch.latents;
        let dims = latents.dims();
        let [n, c, _, _] = dims;
        let device = latents.device();
        let numel: usize = dims.iter().product();
        let mut noise =
            Tensor::<AB, 4>::from_data(TensorData::new(randn(rng, numel), dims), &device);
        if self.noise_offset > 0.0 {
            let offset = Tensor::<AB, 4>::from_data(
                TensorData::new(randn(rng, n * c), [n, c, 1, 1]),
                &device,
            );
            noise = noise + offset * self.noise_offset;
        }
        let timesteps: Vec<usize> = (0..n)
            .map(|_| rng.random_range(0..self.schedule.num_train_timesteps()))
            .collect();
        let noisy = self
            .schedule
            .add_noise(latents.clone(), noise.clone(), &timesteps)?;
        let target = self.schedule.target(latents, noise, &timesteps)?;
        let t = Tensor::<AB, 1>::from_data(
            TensorData::new(timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), [n]),
            &device,
        );
        let context = prompts.hidden_states(nets, batch.instances, n - batch.instances)?;
        let snr_weights = self.min_snr_gamma.map(|gamma| {
            self.schedule
                .min_snr_weights::<AB>(&timesteps, gamma, &device)
        });
        let instances = batch.instances;
        let loss_of = |pred: Tensor<AB, 4>| {
            let per_sample: Tensor<AB, 1> = (pred - target)
                .powi_scalar(2)
                .reshape([n as i64, -1])
                .mean_dim(1)
                .reshape([n]);
            let per_sample = match snr_weights {
                Some(w) => per_sample * w,
                None => per_sample,
            };
            let instance = per_sample.clone().narrow(0, 0, instances).mean();
            if n > instances {
                let prior = per_sample.narrow(0, instances, n - instances).mean();
                instance + prior * self.prior_weight
            } else {
                instance
            }
        };
        let mut loss = None;
        let grads = FlatGrads::of_unet_loss(
            &nets.unet,
            nets,
            noisy,
            t,
            context,
            |pred| {
                let l = loss_of(pred);
                loss = Some(l.clone());
                l * scale
            },
            checkpointing,
        )?;
        let value = loss.map_or(f32::NAN, |l| l.into_scalar().elem());
        Ok((value, grads))
    }
}
