//! DreamBooth-DPO (arXiv 2505.20975): rounds of self-generated preference pairs. Each stage
//! makes M images for each of N prompts with the current model, scores them (likeness IS,
//! prompt following TS), keeps the ordered pairs whose score difference points into the
//! artist's angle window and trains the LoRA with the Diffusion-DPO loss against the model the
//! stage started from.
//!
//! The run folder holds `config.json` and one folder per stage, `stage-1`, `stage-2`, … (stage
//! folder `stage-K` is stage index `K − 1` in the seed and prompt-slice formulas):
//! `images/` (PNG with parameters, `index.jsonl`), `latents/` (the sampler's final latents,
//! trained on directly so no decode/encode round trip blurs the pairs), `scores.jsonl`,
//! `pairs.jsonl`, `loss.jsonl`, `checkpoints/` and, when the stage is done, `lora.safetensors`
//! (diffusers layout, loadable by `likeness generate --lora`).
//!
//! A run may start from a full fine-tune DreamBooth run: its weights become the base and fresh
//! adapters train on them, so that stage LoRA only reproduces the model on top of those weights
//! (`likeness eval` applies them; `likeness generate --lora` on the original base does not).
//!
//! The reference model shares the frozen base weights (Burn's module clones share tensors) and
//! carries its own copy of the stage-start adapters, run on the inner backend without autodiff,
//! so it costs the adapters' memory only.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use likeness_models::device::{BackendTask, Placement, Precision};
use likeness_models::lora::{self, Linears, LoraSet, LoraShape, LoraTargets};
use likeness_models::lora_files::{ExportInfo, LoraFormat, read_lora_file, write_lora_file};
use likeness_models::pipeline::{GenerateParams, SeededNoise, to_rgb8};
use likeness_models::png_meta::{a1111_parameters, save_png, write_atomic};
use likeness_models::rng::randn;
use likeness_models::schedulers::{NoiseSchedule, SchedulerKind};
use likeness_models::sd::{LoadOptions, StableDiffusion};
use likeness_models::unet::UNet2DConditionModel;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    ADAPTERS_FILE, OPTIMIZER_FILE, TensorFile, latest_checkpoint, lora_from_tensors,
    lora_to_tensors, read_state, remove_partial,
};
use crate::data::{EpochOrder, Stream, TrainRng};
use crate::dpo_loss::{DpoTerms, diffusion_dpo_loss, implicit_accuracy_and_margin, per_sample_mse};
use crate::dreambooth::save_checkpoint;
use crate::error::{Result, TrainError};
use crate::events::TrainEvent;
use crate::optim::{AdamW, AdamWConfig, FlatGrads, LrPlan, LrSchedule};
use crate::pairs::{Pair, PairFilter, ScoredImage, angle_histogram};
use crate::prompts::PromptSet;
use crate::run_dir::{ModelFingerprint, RunDir};
use crate::scoring::{Scorer, load_concept, score_folder};
use crate::trainable::{DiffusionNets, TEXT_ENCODER_FILE, Trainable, UNET_FILE, load_by_path};

/// The LoRA a DPO run starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "lowercase")]
pub enum DpoSource {
    /// A DreamBooth run folder: its latest checkpoint (LoRA adapters, or full weights that then
    /// become the base of fresh adapters).
    Run(PathBuf),
    /// A LoRA file in any layout `read_lora_file` reads.
    Lora(PathBuf),
}

/// Every setting of a DPO run (stored in the run's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    /// The base model: a diffusers folder or a single-file checkpoint.
    pub model: PathBuf,
    pub v_prediction: bool,
    pub source: DpoSource,
    /// Photos of the subject (likeness is measured against them).
    pub concept: PathBuf,
    /// A CLIP model folder (transformers layout).
    pub clip: PathBuf,
    /// A DINO ViT folder, for the extra DINO likeness score.
    pub dino: Option<PathBuf>,
    pub token: String,
    pub class: String,
    /// A prompt-template file; `None`: the shipped training contexts.
    pub prompts: Option<PathBuf>,
    pub stages: usize,
    pub prompts_per_stage: usize,
    pub samples_per_prompt: usize,
    pub filter: PairFilter,
    pub beta: f64,
    pub steps_per_stage: usize,
    pub lr: f64,
    pub adam: AdamWConfig,
    /// Global-norm gradient clipping (`None`: off).
    pub max_grad_norm: Option<f64>,
    /// Pairs per optimizer step.
    pub batch: usize,
    pub sample_steps: usize,
    pub guidance: f64,
    /// `ddim`, `euler`, `euler-a` or `dpmpp-2m`.
    pub scheduler: String,
    pub seed: u64,
    /// Pixels per side; `None`: the model's native size.
    pub resolution: Option<usize>,
    /// Checkpoint every this many steps within a stage (0: only at the end).
    pub checkpoint_every: usize,
    /// Rank and alpha of fresh adapters when the source is a full fine-tune.
    pub full_source_lora: LoraShape,
    /// Mixed precision: `bf16`/`f16` keep the frozen weights (and so the activations) in that
    /// dtype while LoRA adapters, their gradients and the optimiser state stay f32 (norms and
    /// the loss in f32); `f32` (the default) runs everything in f32.
    #[serde(default)]
    pub mixed_precision: Precision,
    /// Recompute the UNet's layers in backward instead of keeping their activations (less
    /// memory, a second forward pass of time).
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

impl DpoConfig {
    /// The paper's defaults: 2 stages of 100 prompts × 8 samples, window 20°–70°, β 5000,
    /// 500 steps at 1e-5.
    pub fn new(
        model: &Path,
        source: DpoSource,
        concept: &Path,
        clip: &Path,
        token: &str,
        class: &str,
    ) -> Self {
        Self {
            model: model.to_path_buf(),
            v_prediction: false,
            source,
            concept: concept.to_path_buf(),
            clip: clip.to_path_buf(),
            dino: None,
            token: token.into(),
            class: class.into(),
            prompts: None,
            stages: 2,
            prompts_per_stage: 100,
            samples_per_prompt: 8,
            filter: PairFilter::default(),
            beta: 5000.0,
            steps_per_stage: 500,
            lr: 1e-5,
            adam: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            batch: 1,
            sample_steps: 50,
            guidance: 7.5,
            scheduler: "ddim".into(),
            seed: 0,
            resolution: None,
            checkpoint_every: 100,
            full_source_lora: LoraShape {
                rank: 4,
                alpha: 4.0,
            },
            mixed_precision: Precision::F32,
            gradient_checkpointing: false,
        }
    }

    /// Checks the settings that make no sense whatever the model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.token.trim().is_empty() {
            return bad("--token must not be empty".into());
        }
        if self.stages == 0 || self.prompts_per_stage == 0 || self.steps_per_stage == 0 {
            return bad(
                "--stages, --prompts-per-stage and --steps-per-stage must be at least 1".into(),
            );
        }
        if self.samples_per_prompt < 2 {
            return bad("--samples-per-prompt must be at least 2 (pairs need two images)".into());
        }
        if self.batch == 0 || self.sample_steps == 0 {
            return bad("--batch and --sample-steps must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number (got {})", self.lr));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad(format!(
                "--beta must be a positive number (got {})",
                self.beta
            ));
        }
        if self.resolution == Some(0) {
            return bad("--resolution must be positive".into());
        }
        self.filter.validate().map_err(TrainError::Invalid)?;
        self.scheduler
            .parse::<SchedulerKind>()
            .map_err(|e| TrainError::Invalid(format!("sampler: {e}")))?;
        Ok(())
    }

    /// The prompt templates stages draw their slices from.
    pub fn prompt_set(&self) -> Result<PromptSet> {
        match &self.prompts {
            Some(p) => PromptSet::from_file(p).map_err(|e| TrainError::Invalid(e.to_string())),
            None => Ok(PromptSet::training()),
        }
    }

    /// The prompts of stage index `stage` (0-based): the slice `[stage·N, (stage+1)·N)` of the
    /// set, wrapping, with the subject in place.
    pub fn stage_prompts(&self, set: &PromptSet, stage: usize) -> Vec<String> {
        set.slice(stage * self.prompts_per_stage, self.prompts_per_stage)
            .with_subject(&self.token, &self.class)
    }
}

/// The seed of sample `sample` of prompt `prompt` (index within the stage) in stage index
/// `stage` (0-based): every stage is reproducible on its own.
pub fn sample_seed(base: u64, stage: usize, prompt: usize, sample: usize) -> u64 {
    base.wrapping_add(stage as u64 * 1_000_000)
        .wrapping_add(prompt as u64 * 1000)
        .wrapping_add(sample as u64)
}

/// The run's `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpoRunConfig {
    /// `dpo`.
    pub trainer: String,
    pub likeness_version: String,
    pub fingerprint: ModelFingerprint,
    pub dpo: DpoConfig,
}

/// The `config.json` of a stage folder (which is a run folder of its own, so checkpoints and
/// `load_checkpoint_lora` work on it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageConfig {
    /// `dpo-stage`.
    pub trainer: String,
    /// 1-based, as the folder name.
    pub stage: usize,
    pub prompts: Vec<String>,
}

/// The folder of stage number `stage` (1-based).
pub fn stage_dir(run: &Path, stage: usize) -> PathBuf {
    run.join(format!("stage-{stage}"))
}

/// The LoRA file a finished stage leaves.
pub const STAGE_LORA_FILE: &str = "lora.safetensors";

/// What to run: a new run into a fresh folder, or the continuation of one.
#[derive(Debug, Clone)]
pub enum DpoJob {
    New {
        config: Box<DpoConfig>,
        run_dir: PathBuf,
    },
    /// Continues where the run stopped: finished stages are kept, generated images and scores
    /// are reused, training continues from the stage's last checkpoint.
    Resume { run_dir: PathBuf },
}

/// How a DPO run that did not fail ended.
#[derive(Debug, Clone, PartialEq)]
pub struct DpoOutcome {
    /// Stages finished (all of them unless cancelled).
    pub stages_done: usize,
    pub cancelled: bool,
    /// The LoRA file of each finished stage.
    pub loras: Vec<PathBuf>,
}

/// A DPO job for [`likeness_models::device::dispatch`].
pub struct DpoTask<'a> {
    pub job: DpoJob,
    pub events: &'a mut dyn FnMut(TrainEvent),
    pub cancel: std::sync::Arc<AtomicBool>,
}

impl BackendTask for DpoTask<'_> {
    type Output = Result<DpoOutcome>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        tracing::info!("DPO on {placement}");
        Ok(train_dpo::<B>(self.job, &device, self.events, &self.cancel))
    }
}

/// Runs a DPO job on backend `B` (trained through `Autodiff<B>`).
pub fn train_dpo<B: Backend>(
    job: DpoJob,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<DpoOutcome> {
    crate::events::with_error_event(run_job::<B>(job, device, events, cancel), events)
}

fn score_err(e: crate::scoring::ScoreError) -> TrainError {
    TrainError::Invalid(e.to_string())
}

fn run_job<B: Backend>(
    job: DpoJob,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<DpoOutcome> {
    let (run, config) = match job {
        DpoJob::New { config, run_dir } => {
            let config = *config;
            config.validate()?;
            let fingerprint = ModelFingerprint::of(&config.model)?;
            let run = RunDir::create(&run_dir)?;
            run.write_config(&DpoRunConfig {
                trainer: "dpo".into(),
                likeness_version: env!("CARGO_PKG_VERSION").into(),
                fingerprint,
                dpo: config.clone(),
            })?;
            (run, config)
        }
        DpoJob::Resume { run_dir } => {
            let run = RunDir::open(&run_dir)?;
            let saved: DpoRunConfig = run.read_config()?;
            if saved.trainer != "dpo" {
                return Err(TrainError::io(
                    &run_dir,
                    format!("a {} run, not a DPO run", saved.trainer),
                ));
            }
            let fingerprint = ModelFingerprint::of(&saved.dpo.model)?;
            if let Some(diff) = saved.fingerprint.difference(&fingerprint) {
                return Err(TrainError::ModelMismatch {
                    run: run_dir,
                    reason: format!(
                        "the base model changed; in {}, {diff}",
                        saved.dpo.model.display()
                    ),
                });
            }
            saved.dpo.validate()?;
            (run, saved.dpo)
        }
    };
    let prompt_set = config.prompt_set()?;

    // Bad scorer inputs fail before any image is made.
    events(TrainEvent::Status {
        message: "loading the scorers".into(),
    });
    let concept = load_concept(&config.concept).map_err(score_err)?;
    let scorer = Scorer::<B>::new(
        &config.clip,
        config.dino.as_deref(),
        &concept,
        &config.token,
        device,
    )
    .map_err(score_err)?;

    events(TrainEvent::Status {
        message: format!("loading {}", config.model.display()),
    });
    let (mut model, source) = load_base::<B>(&config, device)?;
    let resolution = config.resolution.unwrap_or_else(|| model.native_size());
    model.latent_shape(&GenerateParams {
        width: resolution,
        height: resolution,
        count: 1,
        ..Default::default()
    })?;

    let mut loras = Vec::new();
    let mut start = source.unet;
    for stage in 1..=config.stages {
        let dir = stage_dir(run.root(), stage);
        let lora_path = dir.join(STAGE_LORA_FILE);
        if lora_path.is_file() {
            // A finished stage: the next one starts from its LoRA.
            start = read_stage_lora(&lora_path, &mut model)?;
            loras.push(lora_path);
            continue;
        }
        let stage_run = if dir.join("config.json").is_file() {
            RunDir::open(&dir)?
        } else {
            let r = RunDir::create(&dir)?;
            r.write_config(&StageConfig {
                trainer: "dpo-stage".into(),
                stage,
                prompts: config.stage_prompts(&prompt_set, stage - 1),
            })?;
            r
        };
        let ctx = StageContext {
            config: &config,
            run: &stage_run,
            stage,
            prompts: config.stage_prompts(&prompt_set, stage - 1),
            resolution,
        };
        let Some(pairs) = ctx.prepare_pairs(&mut model, &start, &scorer, events, cancel)? else {
            return Ok(cancelled(loras, events));
        };
        let finished = ctx.train::<B, Autodiff<B>>(
            &model,
            &start,
            &source.text_encoder,
            &pairs,
            events,
            cancel,
        )?;
        if !finished {
            return Ok(cancelled(loras, events));
        }
        start = read_stage_lora(&lora_path, &mut model)?;
        loras.push(lora_path);
    }
    events(TrainEvent::Finished {
        step: config.stages * config.steps_per_stage,
        cancelled: false,
        checkpoint: loras.last().cloned(),
    });
    Ok(DpoOutcome {
        stages_done: loras.len(),
        cancelled: false,
        loras,
    })
}

fn cancelled(loras: Vec<PathBuf>, events: &mut dyn FnMut(TrainEvent)) -> DpoOutcome {
    events(TrainEvent::Finished {
        step: 0,
        cancelled: true,
        checkpoint: loras.last().cloned(),
    });
    DpoOutcome {
        stages_done: loras.len(),
        cancelled: true,
        loras,
    }
}

/// The source adapters split by network.
struct SourceLora {
    /// UNet layers: what DPO trains.
    unet: LoraSet,
    /// Text-encoder layers: merged into the (frozen) text encoder and written back unchanged
    /// into every stage's file.
    text_encoder: LoraSet,
}

fn split_set(set: LoraSet) -> SourceLora {
    let (unet, te): (Vec<_>, Vec<_>) = set.layers.into_iter().partition(|l| l.network == "unet");
    SourceLora {
        unet: LoraSet {
            layers: unet,
            metadata: set.metadata.clone(),
        },
        text_encoder: LoraSet {
            layers: te,
            metadata: BTreeMap::new(),
        },
    }
}

/// Loads the base model and the source LoRA; text-encoder layers are merged into the model,
/// full fine-tuned weights replace the base's.
fn load_base<B: Backend>(
    config: &DpoConfig,
    device: &B::Device,
) -> Result<(StableDiffusion<B>, SourceLora)> {
    let opts = LoadOptions {
        v_prediction: config.v_prediction,
        ..Default::default()
    };
    let mut model = StableDiffusion::<B>::load(&config.model, &opts, device)?;
    let mut set = match &config.source {
        DpoSource::Lora(path) => read_lora_file(path)?,
        DpoSource::Run(dir) => {
            let run = RunDir::open(dir)?;
            let (_, ckpt) =
                latest_checkpoint(&run)?.ok_or_else(|| TrainError::NoCheckpoint(dir.clone()))?;
            if ckpt.join(ADAPTERS_FILE).is_file() {
                let path = ckpt.join(ADAPTERS_FILE);
                lora_from_tensors(&TensorFile::read(&path)?, &path)?
            } else if ckpt.join(UNET_FILE).is_file() {
                // A full fine-tune: its weights are the base; DPO trains fresh adapters on it.
                model.unet = load_by_path(model.unet, &ckpt.join(UNET_FILE))?;
                if ckpt.join(TEXT_ENCODER_FILE).is_file() {
                    model.text_encoder =
                        load_by_path(model.text_encoder, &ckpt.join(TEXT_ENCODER_FILE))?;
                }
                let (mut unet, paths) = lora::attach(
                    model.unet.clone(),
                    &LoraTargets::unet_attention(),
                    config.full_source_lora,
                    config.seed,
                );
                if paths.is_empty() {
                    return Err(TrainError::Invalid(
                        "no UNet attention layer to put LoRA adapters on".into(),
                    ));
                }
                let mut s = LoraSet::default();
                s.add_adapters("unet", &mut unet)?;
                s
            } else {
                return Err(TrainError::io(
                    &ckpt,
                    "holds neither LoRA adapters nor UNet weights",
                ));
            }
        }
    };
    let unresolved = set.resolve_kohya(&model.unet.linears(), &model.text_encoder.linears());
    if let Some(first) = unresolved.first() {
        return Err(TrainError::Invalid(format!(
            "{} LoRA layers match no layer of the model, e.g. `{first}`",
            unresolved.len()
        )));
    }
    let source = split_set(set);
    if source.unet.layers.is_empty() {
        return Err(TrainError::Invalid(
            "the source LoRA has no UNet layers to train".into(),
        ));
    }
    let left = source
        .text_encoder
        .merge_into("text_encoder", &mut model.text_encoder, 1.0);
    if let Some(first) = left.first() {
        return Err(TrainError::Invalid(format!(
            "LoRA layer `{first}` found no place in the text encoder"
        )));
    }
    // Mixed precision: every base weight is frozen here (DPO trains adapters only).
    let model = model.with_precision(config.mixed_precision);
    Ok((model, source))
}

/// The UNet layers of a finished stage's LoRA file.
fn read_stage_lora<B: Backend>(path: &Path, model: &mut StableDiffusion<B>) -> Result<LoraSet> {
    let mut set = read_lora_file(path)?;
    set.resolve_kohya(&model.unet.linears(), &model.text_encoder.linears());
    Ok(split_set(set).unet)
}

/// One line of a generated folder's `index.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedImage {
    pub file: String,
    pub prompt: String,
    pub seed: u64,
}

/// Makes every missing image of `items` into `dir` (PNG with parameters; with `latents_dir`
/// also the final latents as `<stem>.safetensors`), then writes `dir/index.jsonl`. Images whose
/// files exist are kept, so an interrupted set continues. Returns false when cancelled.
#[allow(clippy::too_many_arguments)]
pub fn generate_set<B: Backend>(
    model: &StableDiffusion<B>,
    items: &[GeneratedImage],
    dir: &Path,
    latents_dir: Option<&Path>,
    base: &GenerateParams,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<bool> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    if let Some(l) = latents_dir {
        std::fs::create_dir_all(l).map_err(|e| TrainError::io(l, e))?;
    }
    let latent_path =
        |file: &str| latents_dir.map(|l| l.join(Path::new(file).with_extension("safetensors")));
    let todo: Vec<&GeneratedImage> = items
        .iter()
        .filter(|it| {
            !dir.join(&it.file).is_file() || latent_path(&it.file).is_some_and(|p| !p.is_file())
        })
        .collect();
    for (done, it) in todo.iter().enumerate() {
        if cancel.load(Ordering::SeqCst) {
            return Ok(false);
        }
        events(TrainEvent::Status {
            message: format!(
                "image {} of {} into {}",
                done + 1,
                todo.len(),
                dir.display()
            ),
        });
        let params = GenerateParams {
            prompt: it.prompt.clone(),
            seed: it.seed,
            count: 1,
            ..base.clone()
        };
        let mut noise = SeededNoise::new(params.seed, 1);
        let latents = model.sample(&params, None, &mut noise, &mut |_, _| {})?;
        let image = to_rgb8(model.decode(latents.clone()))?
            .into_iter()
            .next()
            .ok_or_else(|| TrainError::Invalid("the sampler returned no image".into()))?;
        save_png(
            &dir.join(&it.file),
            &image,
            &a1111_parameters(&params, params.seed, &model.info.name, &[]),
        )?;
        if let Some(path) = latent_path(&it.file) {
            let shape = latents.dims().to_vec();
            let values = latents
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| TrainError::io(&path, format!("{e:?}")))?;
            let mut file = TensorFile::default();
            file.insert("latents", shape, values);
            file.write(&path)?;
        }
    }
    let mut text = String::new();
    for it in items {
        text.push_str(&serde_json::to_string(it).map_err(|e| TrainError::io(dir, e))?);
        text.push('\n');
    }
    write_atomic(&dir.join("index.jsonl"), text.as_bytes())?;
    Ok(true)
}

/// Writes one JSON object per line, atomically.
fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).map_err(|e| TrainError::io(path, e))?);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Reads a JSON-lines file, naming the bad line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::io(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// The histogram of pair angles, compactly: `[-180,-135):4 …`, empty bins left out.
pub fn format_histogram(images: &[ScoredImage]) -> String {
    let bins: Vec<String> = angle_histogram(images, 8)
        .into_iter()
        .filter(|(_, _, c)| *c > 0)
        .map(|(a, b, c)| format!("[{a:.0}°,{b:.0}°):{c}"))
        .collect();
    if bins.is_empty() {
        "no pair has a score difference".into()
    } else {
        bins.join(" ")
    }
}

/// One line of a stage's `loss.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoLossRecord {
    pub step: usize,
    pub loss: f32,
    /// Fraction of the step's pairs the model prefers more than the reference does.
    pub implicit_accuracy: f64,
    /// Mean −β/2·((L_w − L_l) − (L_w,ref − L_l,ref)).
    pub reward_margin: f64,
    pub lr: f64,
    pub time: f64,
    pub step_secs: f64,
}

/// Pairs of one optimizer step, as latents: winners and losers share noise and timesteps.
#[derive(Debug, Clone)]
pub struct DpoBatch<B: Backend> {
    /// Scaled latents [P, C, h, w].
    pub winners: Tensor<B, 4>,
    pub losers: Tensor<B, 4>,
    /// Prompt embeddings [P, L, D].
    pub context: Tensor<B, 3>,
    pub noise: Tensor<B, 4>,
    pub timesteps: Vec<usize>,
}

impl<B: Backend> DpoBatch<B> {
    /// A batch with noise and timesteps drawn from `rng`.
    pub fn draw(
        winners: Tensor<B, 4>,
        losers: Tensor<B, 4>,
        context: Tensor<B, 3>,
        schedule: &NoiseSchedule,
        rng: &mut impl Rng,
    ) -> Self {
        let dims = winners.dims();
        let n: usize = dims.iter().product();
        let noise = Tensor::from_data(TensorData::new(randn(rng, n), dims), &winners.device());
        let timesteps = (0..dims[0])
            .map(|_| rng.random_range(0..schedule.num_train_timesteps()))
            .collect();
        Self {
            winners,
            losers,
            context,
            noise,
            timesteps,
        }
    }
}

/// The Diffusion-DPO objective of a batch: four UNet passes (model on winners and losers with
/// gradients, reference on both without).
pub fn dpo_terms<B, AB>(
    schedule: &NoiseSchedule,
    beta: f64,
    unet: &UNet2DConditionModel<AB>,
    reference: &UNet2DConditionModel<B>,
    batch: &DpoBatch<B>,
) -> Result<DpoTerms<AB>>
where
    B: Backend,
    AB: AutodiffBackend<InnerBackend = B>,
{
    let pass = DpoPass::new(schedule, beta, reference, batch)?;
    let (noisy, t, context) = pass.inputs();
    Ok(pass.terms(unet.forward(noisy, t, context)))
}

/// [`dpo_terms`] and the gradients of its loss for the parameters of `module` (which holds
/// `unet`), with the UNet's layers recomputed in backward when `checkpointing`.
pub fn dpo_grads<B, AB, M>(
    schedule: &NoiseSchedule,
    beta: f64,
    unet: &UNet2DConditionModel<AB>,
    reference: &UNet2DConditionModel<B>,
    batch: &DpoBatch<B>,
    module: &M,
    checkpointing: bool,
) -> Result<(DpoTerms<AB>, FlatGrads<B>)>
where
    B: Backend,
    AB: AutodiffBackend<InnerBackend = B>,
    M: burn::module::Module<AB>,
{
    let pass = DpoPass::new(schedule, beta, reference, batch)?;
    let (noisy, t, context) = pass.inputs();
    let mut terms = None;
    let grads = FlatGrads::of_unet_loss(
        unet,
        module,
        noisy,
        t,
        context,
        |pred| {
            let t = pass.terms(pred);
            let loss = t.loss.clone();
            terms = Some(t);
            loss
        },
        checkpointing,
    )?;
    let terms = terms.ok_or_else(|| TrainError::Invalid("the DPO loss was not computed".into()))?;
    Ok((terms, grads))
}

/// One batch's UNet inputs (winners then losers, shared noise and timesteps), its targets and
/// the reference's errors: everything of the objective but the trained model's pass.
struct DpoPass<B: Backend> {
    noisy: Tensor<B, 4>,
    t: Tensor<B, 1>,
    context: Tensor<B, 3>,
    target: Tensor<B, 4>,
    ref_err: Tensor<B, 1>,
    pairs: usize,
    beta: f64,
}

impl<B: Backend> DpoPass<B> {
    fn new(
        schedule: &NoiseSchedule,
        beta: f64,
        reference: &UNet2DConditionModel<B>,
        batch: &DpoBatch<B>,
    ) -> Result<Self> {
        let p = batch.winners.dims()[0];
        let ts = [batch.timesteps.clone(), batch.timesteps.clone()].concat();
        let latents = Tensor::cat(vec![batch.winners.clone(), batch.losers.clone()], 0);
        let noise = Tensor::cat(vec![batch.noise.clone(), batch.noise.clone()], 0);
        let noisy = schedule.add_noise(latents.clone(), noise.clone(), &ts)?;
        let target = schedule.target(latents, noise, &ts)?;
        let t = Tensor::<B, 1>::from_data(
            TensorData::new(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), [2 * p]),
            &noisy.device(),
        );
        let context = Tensor::cat(vec![batch.context.clone(), batch.context.clone()], 0);
        let ref_pred = reference.forward(noisy.clone(), t.clone(), context.clone());
        let ref_err = per_sample_mse(ref_pred, target.clone());
        Ok(Self {
            noisy,
            t,
            context,
            target,
            ref_err,
            pairs: p,
            beta,
        })
    }

    /// The trained model's inputs: noised latents, timesteps, text context.
    fn inputs<AB: AutodiffBackend<InnerBackend = B>>(
        &self,
    ) -> (Tensor<AB, 4>, Tensor<AB, 1>, Tensor<AB, 3>) {
        (
            Tensor::from_inner(self.noisy.clone()),
            Tensor::from_inner(self.t.clone()),
            Tensor::from_inner(self.context.clone()),
        )
    }

    /// The objective's terms given the trained model's prediction.
    fn terms<AB: AutodiffBackend<InnerBackend = B>>(&self, pred: Tensor<AB, 4>) -> DpoTerms<AB> {
        let p = self.pairs;
        let ref_w = Tensor::<AB, 1>::from_inner(self.ref_err.clone().narrow(0, 0, p));
        let ref_l = Tensor::<AB, 1>::from_inner(self.ref_err.clone().narrow(0, p, p));
        let err = per_sample_mse(pred, Tensor::from_inner(self.target.clone()));
        let model_w = err.clone().narrow(0, 0, p);
        let model_l = err.narrow(0, p, p);
        diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, self.beta)
    }
}

/// What trains in a stage: the UNet adapters, starting from the stage-start LoRA (or the
/// stage's checkpoint when resuming).
struct StageLora {
    start: LoraSet,
}

impl Trainable for StageLora {
    fn kind(&self) -> &'static str {
        "lora"
    }

    fn prepare<AB: AutodiffBackend>(
        &self,
        nets: DiffusionNets<AB>,
        checkpoint: Option<&Path>,
    ) -> Result<DiffusionNets<AB>> {
        let set = match checkpoint {
            Some(dir) => {
                let path = dir.join(ADAPTERS_FILE);
                lora_from_tensors(&TensorFile::read(&path)?, &path)?
            }
            None => self.start.clone(),
        };
        Ok(DiffusionNets {
            unet: set.attach_to("unet", nets.unet)?,
            text_encoder: nets.text_encoder.no_grad(),
        })
    }

    fn save<AB: AutodiffBackend>(&self, nets: &DiffusionNets<AB>, dir: &Path) -> Result<()> {
        let mut valid = nets.valid();
        let mut set = LoraSet::default();
        set.add_adapters("unet", &mut valid.unet)?;
        set.metadata
            .insert("format".into(), "likeness-checkpoint-lora".into());
        lora_to_tensors(&set).write(&dir.join(ADAPTERS_FILE))
    }
}

/// One stage's settings and folder.
struct StageContext<'a> {
    config: &'a DpoConfig,
    run: &'a RunDir,
    /// 1-based.
    stage: usize,
    prompts: Vec<String>,
    resolution: usize,
}

impl StageContext<'_> {
    fn images_dir(&self) -> PathBuf {
        self.run.root().join("images")
    }

    fn latents_dir(&self) -> PathBuf {
        self.run.root().join("latents")
    }

    /// Generates (what is missing), scores (unless done) and pairs. `None` when cancelled.
    fn prepare_pairs<B: Backend>(
        &self,
        model: &mut StableDiffusion<B>,
        start: &LoraSet,
        scorer: &Scorer<B>,
        events: &mut dyn FnMut(TrainEvent),
        cancel: &AtomicBool,
    ) -> Result<Option<Vec<Pair>>> {
        let c = self.config;
        let items: Vec<GeneratedImage> = self
            .prompts
            .iter()
            .enumerate()
            .flat_map(|(pi, prompt)| {
                (0..c.samples_per_prompt).map(move |s| GeneratedImage {
                    file: format!("p{pi:03}-s{s:02}.png"),
                    prompt: prompt.clone(),
                    seed: sample_seed(c.seed, self.stage - 1, pi, s),
                })
            })
            .collect();
        let scheduler = c
            .scheduler
            .parse::<SchedulerKind>()
            .map_err(|e| TrainError::Invalid(format!("sampler: {e}")))?;
        let params = GenerateParams {
            steps: c.sample_steps,
            guidance: c.guidance,
            scheduler,
            width: self.resolution,
            height: self.resolution,
            ..Default::default()
        };
        // Generate with the stage-start adapters attached, then put the bare base back.
        let base_unet = model.unet.clone();
        model.unet = start.attach_to("unet", base_unet.clone())?;
        let done = generate_set(
            model,
            &items,
            &self.images_dir(),
            Some(&self.latents_dir()),
            &params,
            events,
            cancel,
        );
        model.unet = base_unet;
        if !done? {
            return Ok(None);
        }

        let scores_path = self.run.root().join("scores.jsonl");
        let scores: Vec<ScoredImage> = if scores_path.is_file() {
            read_jsonl(&scores_path)?
        } else {
            events(TrainEvent::Status {
                message: format!("scoring stage {}", self.stage),
            });
            let s = score_folder(scorer, &self.images_dir()).map_err(score_err)?;
            write_jsonl(&scores_path, &s)?;
            s
        };
        let pairs = c.filter.pairs(&scores);
        write_jsonl(&self.run.root().join("pairs.jsonl"), &pairs)?;
        if pairs.is_empty() {
            return Err(TrainError::Invalid(format!(
                "stage {}: no pair of images has a score difference within {}°..{}° (min margin {}); \
                 angles of all pairs: {}; widen --angle-min/--angle-max or lower --min-margin",
                self.stage,
                c.filter.angle_min,
                c.filter.angle_max,
                c.filter.min_margin,
                format_histogram(&scores)
            )));
        }
        events(TrainEvent::Status {
            message: format!(
                "stage {}: {} pairs from {} images",
                self.stage,
                pairs.len(),
                scores.len()
            ),
        });
        Ok(Some(pairs))
    }

    /// Trains the stage and writes its LoRA file. Returns false when cancelled (after a
    /// checkpoint).
    fn train<B, AB>(
        &self,
        model: &StableDiffusion<B>,
        start: &LoraSet,
        text_layers: &LoraSet,
        pairs: &[Pair],
        events: &mut dyn FnMut(TrainEvent),
        cancel: &AtomicBool,
    ) -> Result<bool>
    where
        B: Backend,
        AB: AutodiffBackend<InnerBackend = B>,
    {
        let c = self.config;
        let run = self.run;
        let device = model.device();
        for p in remove_partial(run)? {
            tracing::warn!("{}: removed an unfinished checkpoint", p.display());
        }
        let resume = latest_checkpoint(run)?;

        // Latents and prompt embeddings of the paired images, loaded once.
        let mut latents: HashMap<String, Tensor<B, 4>> = HashMap::new();
        let mut contexts: HashMap<String, Tensor<B, 3>> = HashMap::new();
        for pair in pairs {
            for file in [&pair.winner, &pair.loser] {
                if latents.contains_key(file) {
                    continue;
                }
                let path = self
                    .latents_dir()
                    .join(Path::new(file).with_extension("safetensors"));
                let t = TensorFile::read(&path)?;
                let (shape, values) = t
                    .get("latents")
                    .ok_or_else(|| TrainError::io(&path, "no `latents` tensor"))?;
                let dims: [usize; 4] = shape
                    .try_into()
                    .map_err(|_| TrainError::io(&path, "latents are not 4-D"))?;
                latents.insert(
                    file.clone(),
                    Tensor::from_data(TensorData::new(values.to_vec(), dims), &device),
                );
            }
            if !contexts.contains_key(&pair.prompt) {
                contexts.insert(pair.prompt.clone(), model.encode_text(&pair.prompt, 0)?);
            }
        }
        let schedule = NoiseSchedule::from_config(&model.scheduler_config)?;
        let reference = start.attach_to("unet", model.unet.clone())?;

        let trainable = StageLora {
            start: start.clone(),
        };
        let nets = DiffusionNets::<AB>::from_inner(DiffusionNets {
            unet: model.unet.clone(),
            text_encoder: model.text_encoder.clone(),
        });
        let mut nets = trainable.prepare(nets, resume.as_ref().map(|(_, d)| d.as_path()))?;
        let mut optim = AdamW::<B>::new(c.adam).keep_masters(nets.unet.compute_dtype());
        let rng = TrainRng::new(c.seed.wrapping_add(self.stage as u64));
        let mut step = 0;
        let mut last_checkpoint: Option<(usize, PathBuf)> = None;
        if let Some((_, dir)) = &resume {
            let state = read_state(dir)?;
            if state.rng.seed != rng.seed {
                return Err(TrainError::io(
                    dir,
                    "checkpoint of another seed does not fit this run",
                ));
            }
            let path = dir.join(OPTIMIZER_FILE);
            optim.load_tensors(&TensorFile::read(&path)?, &path, &device)?;
            step = state.step;
            last_checkpoint = Some((state.step, dir.clone()));
        }
        truncate_dpo_losses(run, step)?;
        let plan = LrPlan {
            lr: c.lr,
            schedule: LrSchedule::Constant,
            warmup_steps: 0,
            total_steps: c.steps_per_stage,
        };
        let mut order = EpochOrder::new(pairs.len(), rng, Stream::InstanceOrder);
        events(TrainEvent::Started {
            run_dir: run.root().to_path_buf(),
            start_step: step,
            total_steps: c.steps_per_stage,
            photos: pairs.len(),
            skipped: Vec::new(),
            upscaled: Vec::new(),
        });
        while step < c.steps_per_stage {
            if cancel.load(Ordering::SeqCst) {
                if last_checkpoint.as_ref().is_none_or(|(s, _)| *s != step) {
                    let p = save_checkpoint(run, step, &trainable, &nets, &optim, &rng, None, 0.0)?;
                    events(TrainEvent::Checkpoint { step, path: p });
                }
                return Ok(false);
            }
            let began = Instant::now();
            let lr = plan.at(step);
            let chosen: Vec<&Pair> = (0..c.batch)
                .map(|j| &pairs[order.at((step * c.batch + j) as u64)])
                .collect();
            let pick = |f: &dyn Fn(&Pair) -> &String| {
                Tensor::cat(chosen.iter().map(|p| latents[f(p)].clone()).collect(), 0)
            };
            let winners = pick(&|p| &p.winner);
            let losers = pick(&|p| &p.loser);
            let context = Tensor::cat(
                chosen.iter().map(|p| contexts[&p.prompt].clone()).collect(),
                0,
            );
            let mut draws = rng.stream(Stream::Batch, step as u64);
            let batch = DpoBatch::draw(winners, losers, context, &schedule, &mut draws);
            let (terms, mut grads) = dpo_grads(
                &schedule,
                c.beta,
                &nets.unet,
                &reference,
                &batch,
                &nets,
                c.gradient_checkpointing,
            )?;
            let loss: f32 = terms.loss.clone().into_scalar().elem();
            if !loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: step + 1,
                    value: loss,
                    last_checkpoint: last_checkpoint.map(|(_, p)| p),
                });
            }
            let inside = terms
                .inside
                .clone()
                .inner()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| TrainError::Invalid(format!("reading the DPO margin: {e:?}")))?;
            let (implicit_accuracy, reward_margin) = implicit_accuracy_and_margin(&inside);
            let norm = match c.max_grad_norm {
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
            let secs = began.elapsed().as_secs_f64();
            append_dpo_loss(
                run,
                &DpoLossRecord {
                    step,
                    loss,
                    implicit_accuracy,
                    reward_margin,
                    lr,
                    time: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                    step_secs: secs,
                },
            )?;
            events(TrainEvent::Step {
                step,
                loss,
                lr,
                secs,
            });
            let last = step == c.steps_per_stage;
            if last || (c.checkpoint_every > 0 && step.is_multiple_of(c.checkpoint_every)) {
                let path =
                    save_checkpoint(run, step, &trainable, &nets, &optim, &rng, Some(loss), lr)?;
                events(TrainEvent::Checkpoint {
                    step,
                    path: path.clone(),
                });
                last_checkpoint = Some((step, path));
            }
        }

        // The stage's LoRA: trained UNet adapters (their f32 values) plus the source's
        // text-encoder layers.
        let mut valid = optim.masters_into::<AB, _>(nets).valid();
        let mut set = LoraSet::default();
        set.add_adapters("unet", &mut valid.unet)?;
        set.layers.extend(text_layers.layers.iter().cloned());
        let mut info = ExportInfo::for_model(model);
        info.steps = Some(c.steps_per_stage as u64);
        info.learning_rate = Some(c.lr);
        info.seed = Some(c.seed);
        info.trigger_phrase = Some(format!("{} {}", c.token, c.class));
        info.comment = Some(format!("Likeness DreamBooth-DPO stage {}", self.stage));
        write_lora_file(
            &run.root().join(STAGE_LORA_FILE),
            &set,
            LoraFormat::Diffusers,
            &info,
        )?;
        Ok(true)
    }
}

fn append_dpo_loss(run: &RunDir, record: &DpoLossRecord) -> Result<()> {
    let path = run.loss_log();
    let mut line = serde_json::to_string(record).map_err(|e| TrainError::io(&path, e))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| TrainError::io(&path, e))?;
    f.write_all(line.as_bytes())
        .map_err(|e| TrainError::io(&path, e))
}

/// Keeps the loss lines up to `step` (a resume repeats the later ones).
fn truncate_dpo_losses(run: &RunDir, step: usize) -> Result<()> {
    let path = run.loss_log();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::io(&path, e)),
    };
    let kept: Vec<DpoLossRecord> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<DpoLossRecord>(l).ok())
        .filter(|r| r.step <= step)
        .collect();
    write_jsonl(&path, &kept)
}
