//! The world's CLIP: a transformers `CLIPModel` (text tower a `CLIPTextModel`, vision tower a
//! `CLIPVisionModel`) trained from random weights with the symmetric contrastive loss over a
//! batch of world pictures and their captions, with a learned temperature.
//!
//! The tokenizer is OpenAI CLIP's BPE from the bundled merges ([`super::tokenizer`], 49 408
//! tokens, length 77), written into the folder: every caption word is in it and SD pipelines use
//! it. Its cost is a 49 408-row token embedding.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, Param};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use likeness_models::clip_model::{ClipModelConfig, l2_normalize};
use likeness_models::clip_text::ClipTextTransformer;
use likeness_models::clip_vision::ClipVisionTransformer;
use likeness_models::image_preprocess::Preprocessor;
use likeness_models::nn::Linear;
use likeness_models::png_meta::write_atomic;
use likeness_models::tokenizer::ClipTokenizer;
use likeness_models::weights::{VarBuilder, WeightStore};
use serde::{Deserialize, Serialize};

use super::WorldModelSpec;
use super::run::{OpenedRun, Plan, finish, open_run, train_loop};
use super::tokenizer::world_tokenizer;
use crate::error::{Result, TrainError};
use crate::events::{TrainEvent, TrainOutcome};
use crate::optim::{AdamW, AdamWConfig, LrSchedule};
use crate::trainable::weights_by_path;
use crate::world::{WorldSpec, dataset_item, render};

/// A trainable `CLIPModel`; field paths are transformers' weight keys.
#[derive(Module, Debug)]
pub struct WorldClip<B: Backend> {
    pub text_model: ClipTextTransformer<B>,
    pub vision_model: ClipVisionTransformer<B>,
    pub visual_projection: Linear<B>,
    pub text_projection: Linear<B>,
    /// Log temperature, shape [1] here ([] in the written file, as transformers stores it).
    pub logit_scale: Param<Tensor<B, 1>>,
}

impl<B: Backend> WorldClip<B> {
    /// Random weights seeded by `seed`, sized by `spec`.
    pub fn random(spec: &WorldModelSpec, seed: u64, device: &B::Device) -> Result<Self> {
        let cfg = clip_config(spec)?;
        let vb = VarBuilder::<B>::new(Arc::new(WeightStore::random(seed)), device);
        let d = cfg.projection_dim;
        Ok(Self {
            text_model: ClipTextTransformer::load(&vb.pp("text_model"), &cfg.text)?,
            vision_model: ClipVisionTransformer::load(&vb.pp("vision_model"), &cfg.vision)?,
            visual_projection: Linear::load(
                &vb.pp("visual_projection"),
                cfg.vision.hidden_size,
                d,
                false,
            )?,
            text_projection: Linear::load(
                &vb.pp("text_projection"),
                cfg.text.hidden_size,
                d,
                false,
            )?,
            logit_scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![cfg.logit_scale_init_value as f32], [1]),
                device,
            )),
        })
    }

    /// L2-normalised image and text embeddings of normalised pixels and token ids.
    pub fn embeddings(
        &self,
        pixels: Tensor<B, 4>,
        input_ids: Tensor<B, 2, Int>,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
        let image = self
            .visual_projection
            .forward(self.vision_model.forward(pixels)?.pooler_output);
        let text = self
            .text_projection
            .forward(self.text_model.forward(input_ids)?.pooler_output);
        Ok((l2_normalize(image), l2_normalize(text)))
    }

    /// CLIP's loss: the mean of the cross-entropies of text→image and image→text logits
    /// `exp(logit_scale) · cosine`, the matching pair being the target.
    pub fn contrastive_loss(
        &self,
        pixels: Tensor<B, 4>,
        input_ids: Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 1>> {
        let n = pixels.dims()[0];
        let device = pixels.device();
        let (image, text) = self.embeddings(pixels, input_ids)?;
        let scale = self.logit_scale.val().exp().reshape([1, 1]);
        let logits = text.matmul(image.transpose()) * scale;
        let mut eye = vec![0f32; n * n];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        let eye = Tensor::<B, 2>::from_data(TensorData::new(eye, [n, n]), &device);
        let per_text = (log_softmax(logits.clone(), 1) * eye.clone()).sum();
        let per_image = (log_softmax(logits.transpose(), 1) * eye).sum();
        Ok((per_text + per_image) * (-0.5 / n as f64))
    }

    /// Writes a transformers `CLIPModel` folder: `config.json`, `model.safetensors`,
    /// `preprocessor_config.json` and the tokenizer files.
    pub fn save_dir(&self, spec: &WorldModelSpec, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let mut weights = weights_by_path(self)?;
        if let Some((shape, _)) = weights.tensors.get_mut("logit_scale") {
            shape.clear();
        }
        weights.metadata.insert("format".into(), "pt".into());
        weights.write(&dir.join(CLIP_MODEL_FILE))?;
        super::write_tokenizer_files(dir)?;
        let vocab = world_tokenizer()?.vocab_size();
        for (name, value) in [
            ("config.json", spec.clip_config(vocab)),
            ("preprocessor_config.json", spec.preprocessor_config()),
        ] {
            let path = dir.join(name);
            let text =
                serde_json::to_string_pretty(&value).map_err(|e| TrainError::io(&path, e))?;
            write_atomic(&path, text.as_bytes())?;
        }
        Ok(())
    }
}

fn clip_config(spec: &WorldModelSpec) -> Result<ClipModelConfig> {
    let vocab = world_tokenizer()?.vocab_size();
    Ok(ClipModelConfig::from_value(
        &spec.clip_config(vocab),
        Path::new("<world CLIP config>"),
    )?)
}

/// Items `indices` of the dataset `seed`: pictures preprocessed for the CLIP, captions tokenised.
pub fn clip_batch<B: Backend>(
    spec: &WorldModelSpec,
    tokenizer: &ClipTokenizer,
    seed: u64,
    indices: &[u64],
    device: &B::Device,
) -> Result<(Tensor<B, 4>, Tensor<B, 2, Int>)> {
    let n = indices.len();
    let world = WorldSpec::default();
    let preprocessor =
        Preprocessor::from_value(&spec.preprocessor_config(), Path::new("<world CLIP>"))?;
    let mut images = Vec::with_capacity(n);
    let mut ids = Vec::new();
    for &index in indices {
        let (scene, caption) = dataset_item(seed, index, &world);
        images.push(render(&scene, spec.image_size as u32));
        ids.extend(tokenizer.encode(&caption).into_iter().map(i64::from));
    }
    let len = tokenizer.max_length();
    let pixels = preprocessor.batch::<B>(&images, device)?;
    let ids = Tensor::from_data(TensorData::new(ids, [n, len]), device);
    Ok((pixels, ids))
}

/// Settings of a CLIP run; stored in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTrainConfig {
    pub spec: WorldModelSpec,
    /// Optimizer steps in all.
    pub steps: usize,
    /// Picture/caption pairs per step (the contrastive negatives).
    pub batch: usize,
    pub lr: f64,
    /// How the rate moves: constant (the default, so a run extended by `--resume` repeats the
    /// uninterrupted one) or half a cosine to zero over `steps`.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from zero.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Seeds the initial weights and the data.
    pub seed: u64,
    /// Step `k` takes dataset items `k·batch ..`, modulo `pool` when set (a small pool shows the
    /// loss falling within seconds; real runs leave it unset).
    pub pool: Option<usize>,
    /// Steps between checkpoints (0: only the last one).
    pub checkpoint_every: usize,
    pub adam: AdamWConfig,
}

impl ClipTrainConfig {
    /// Defaults for `spec`: batch 64, lr 5e-4, CLIP's AdamW (β2 0.98, eps 1e-6, decay 0.1).
    pub fn new(spec: WorldModelSpec, steps: usize) -> Self {
        Self {
            spec,
            steps,
            batch: 64,
            lr: 5e-4,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            seed: 0,
            pool: None,
            checkpoint_every: 500,
            adam: AdamWConfig {
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-6,
                weight_decay: 0.1,
            },
        }
    }
}

/// The weight file of a transformers `CLIPModel` folder.
pub const CLIP_MODEL_FILE: &str = "model.safetensors";

/// The CLIP checkpoint weights, with transformers' key names.
pub const CLIP_FILE: &str = "clip.safetensors";

/// The transformers `CLIPModel` folder a finished CLIP run writes.
pub fn clip_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("clip")
}

/// Trains (or, when `run_dir` holds a CLIP run, continues from its latest checkpoint) the
/// world's CLIP on backend `B` through `Autodiff<B>`, then writes `run_dir/clip/`. On resume
/// the saved settings are kept except `steps`.
pub fn train_clip<B: Backend>(
    config: &ClipTrainConfig,
    run_dir: &Path,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    crate::events::with_error_event(
        run_clip::<B>(config, run_dir, device, events, cancel),
        events,
    )
}

fn run_clip<B: Backend>(
    config: &ClipTrainConfig,
    run_dir: &Path,
    device: &B::Device,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    if config.batch < 2 {
        return Err(TrainError::Invalid(
            "contrastive training needs at least 2 pairs per batch".into(),
        ));
    }
    let OpenedRun {
        run,
        settings: config,
        resume,
    } = open_run(run_dir, "world-clip", config, |saved: ClipTrainConfig| {
        ClipTrainConfig {
            steps: config.steps,
            ..saved
        }
    })?;
    let tokenizer = world_tokenizer()?;
    let clip = WorldClip::<Autodiff<B>>::random(&config.spec, config.seed, device)?;
    let plan = Plan {
        steps: config.steps,
        lr: config.lr,
        schedule: config.lr_schedule,
        warmup_steps: config.warmup_steps,
        seed: config.seed,
        checkpoint_every: config.checkpoint_every,
        weights_file: CLIP_FILE,
    };
    let batch = config.batch;
    let loss_at = |clip: &WorldClip<Autodiff<B>>, step: usize| {
        let indices: Vec<u64> = (step * batch..(step + 1) * batch)
            .map(|i| config.pool.map_or(i, |p| i % p.max(1)) as u64)
            .collect();
        let (pixels, ids) =
            clip_batch::<Autodiff<B>>(&config.spec, &tokenizer, config.seed, &indices, device)?;
        clip.contrastive_loss(pixels, ids)
    };
    let (clip, outcome) = train_loop(
        &run,
        &plan,
        clip,
        AdamW::<B>::new(config.adam),
        resume,
        device,
        loss_at,
        events,
        cancel,
    )?;
    if !outcome.cancelled {
        clip.valid().save_dir(&config.spec, &clip_dir(run.root()))?;
    }
    finish(&outcome, events);
    Ok(outcome)
}
