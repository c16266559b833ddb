//! A Stable Diffusion 1.x/2.x model as an artist has it: a diffusers folder or a single-file
//! checkpoint, loaded into the four networks and the scheduler config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use serde_json::Value;

use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::error::{ModelError, Result, read_json};
use crate::schedulers::{PredictionType, SchedulerConfig};
use crate::single_file::{self, Family};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::weights::{VarBuilder, WeightStore};

/// How to read a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Force v-prediction (SD 2.x 768 models), whatever the scheduler config says.
    pub v_prediction: bool,
    /// For single files: a diffusers folder whose configs (and tokenizer) replace the detected ones.
    pub config_dir: Option<PathBuf>,
    /// For single files: a tokenizer folder (vocab.json + merges.txt).
    pub tokenizer_dir: Option<PathBuf>,
    /// The weights' type: bf16/f16 are converted on the host as they load, so the device never
    /// holds the f32 weights (the result equals loading in f32 and
    /// [`StableDiffusion::with_precision`]).
    pub precision: crate::device::Precision,
}

/// What was loaded, for the UI and the PNG metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub name: String,
    pub family: Family,
    pub prediction_type: PredictionType,
    pub single_file: bool,
    /// Weights present in the files that no network took.
    pub unused_keys: Vec<String>,
}

/// The four parts and the scheduler config of a Stable Diffusion model.
pub struct StableDiffusion<B: Backend> {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel<B>,
    pub unet: UNet2DConditionModel<B>,
    pub vae: AutoencoderKL<B>,
    pub scheduler_config: SchedulerConfig,
    pub info: ModelInfo,
}

/// Picks the safetensors file of a diffusers part: plain, then `.fp16` variant.
pub(crate) fn part_weights(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if dir.join(format!("{stem}.bin")).is_file() {
        return Err(ModelError::Layout {
            path: dir.join(format!("{stem}.bin")),
            message:
                "PyTorch pickle weights are not read (unsafe to load); convert to .safetensors"
                    .into(),
        });
    }
    Err(ModelError::Layout {
        path: dir.to_path_buf(),
        message: format!("no {stem}.safetensors (or .fp16.safetensors) in this folder"),
    })
}

fn part_dir(root: &Path, part: &str) -> Result<PathBuf> {
    let d = root.join(part);
    if !d.is_dir() {
        return Err(ModelError::Layout {
            path: d,
            message: format!("missing model part `{part}`"),
        });
    }
    Ok(d)
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ModelError::config(path, e.to_string()))
}

fn warn_unused(what: &str, store: &WeightStore) -> Vec<String> {
    let unused = store.unused_keys();
    if !unused.is_empty() {
        tracing::warn!(
            "{what}: {} weights not placed, e.g. {}",
            unused.len(),
            unused
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    unused
}

impl<B: Backend> StableDiffusion<B> {
    /// Loads a diffusers folder (with `model_index.json`) or a single `.safetensors` checkpoint.
    pub fn load(path: &Path, opts: &LoadOptions, device: &B::Device) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::io(path, "no such file or folder"));
        }
        if path.is_dir() {
            Self::load_diffusers(path, opts, device)
        } else {
            Self::load_single_file(path, opts, device)
        }
    }

    fn load_diffusers(root: &Path, opts: &LoadOptions, device: &B::Device) -> Result<Self> {
        let index = root.join("model_index.json");
        if !index.is_file() {
            return Err(ModelError::Layout {
                path: root.to_path_buf(),
                message: "not a diffusers model folder (no model_index.json)".into(),
            });
        }
        let _: Value = read_json(&index)?;
        let vb =
            |store| VarBuilder::<B>::new(store, device).with_dtype(opts.precision.half_dtype());
        let tok_dir = part_dir(root, "tokenizer")?;
        let tokenizer = ClipTokenizer::from_dir(&tok_dir)?;

        let te_dir = part_dir(root, "text_encoder")?;
        let te_cfg_path = te_dir.join("config.json");
        let te_cfg: ClipTextConfig = read_json(&te_cfg_path)?;
        let te_store = Arc::new(WeightStore::open(&[part_weights(&te_dir, "model")?])?);
        let text_encoder = ClipTextModel::load(&vb(te_store.clone()), &te_cfg)?;

        let unet_dir = part_dir(root, "unet")?;
        let unet_cfg_path = unet_dir.join("config.json");
        let unet_cfg: UNet2DConditionConfig = read_json(&unet_cfg_path)?;
        unet_cfg.validate(&unet_cfg_path)?;
        let unet_store = Arc::new(WeightStore::open(&[part_weights(
            &unet_dir,
            "diffusion_pytorch_model",
        )?])?);
        let unet = UNet2DConditionModel::load(&vb(unet_store.clone()), &unet_cfg)?;

        let vae_dir = part_dir(root, "vae")?;
        let vae_cfg_path = vae_dir.join("config.json");
        let vae_cfg: AutoencoderKLConfig = read_json(&vae_cfg_path)?;
        vae_cfg.validate(&vae_cfg_path)?;
        let vae_store = Arc::new(WeightStore::open(&[part_weights(
            &vae_dir,
            "diffusion_pytorch_model",
        )?])?);
        let vae = AutoencoderKL::load(&vb(vae_store.clone()), &vae_cfg)?;

        let sched_path = part_dir(root, "scheduler")?.join("scheduler_config.json");
        let mut scheduler_config = SchedulerConfig::from_file(&sched_path)?;
        if opts.v_prediction {
            scheduler_config.prediction_type = Some("v_prediction".into());
        }
        let family = if unet_cfg.cross_dims().first().copied().unwrap_or(0) >= 1024
            || te_cfg.hidden_act == "gelu"
        {
            Family::Sd2
        } else {
            Family::Sd1
        };
        let mut unused = Vec::new();
        for (what, store) in [
            ("text_encoder", &te_store),
            ("unet", &unet_store),
            ("vae", &vae_store),
        ] {
            unused.extend(
                warn_unused(what, store)
                    .into_iter()
                    .map(|k| format!("{what}.{k}")),
            );
        }
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            info: ModelInfo {
                path: root.to_path_buf(),
                name: model_name(root),
                family,
                prediction_type: scheduler_config.prediction_type(None)?,
                single_file: false,
                unused_keys: unused,
            },
            scheduler_config,
        })
    }

    fn load_single_file(path: &Path, opts: &LoadOptions, device: &B::Device) -> Result<Self> {
        let sf = single_file::open(path)?;
        let arch = &sf.arch;
        let (te_json, unet_json, vae_json, sched_json, tok_dir) = match &opts.config_dir {
            Some(dir) => {
                let te: Value = read_json(&dir.join("text_encoder/config.json"))?;
                let un: Value = read_json(&dir.join("unet/config.json"))?;
                let va: Value = read_json(&dir.join("vae/config.json"))?;
                let sc: Value = read_json(&dir.join("scheduler/scheduler_config.json"))?;
                (te, un, va, sc, Some(dir.join("tokenizer")))
            }
            None => (
                arch.text_encoder.clone(),
                arch.unet.clone(),
                arch.vae.clone(),
                crate::presets::scheduler_json(arch.family),
                None,
            ),
        };
        let tokenizer = match opts.tokenizer_dir.clone().or(tok_dir) {
            Some(dir) => ClipTokenizer::from_dir(&dir)?,
            None => crate::presets::bundled_tokenizer(arch.family)?,
        };
        let te_cfg: ClipTextConfig = parse(path, te_json)?;
        let unet_cfg: UNet2DConditionConfig = parse(path, unet_json)?;
        unet_cfg.validate(path)?;
        let vae_cfg: AutoencoderKLConfig = parse(path, vae_json)?;
        vae_cfg.validate(path)?;
        let mut scheduler_config = SchedulerConfig::from_value(sched_json, path)?;
        if opts.v_prediction {
            scheduler_config.prediction_type = Some("v_prediction".into());
        }
        let store = Arc::new(sf.store);
        let vb =
            VarBuilder::<B>::new(store.clone(), device).with_dtype(opts.precision.half_dtype());
        let text_encoder = ClipTextModel::load(&vb.pp("text_encoder"), &te_cfg)?;
        let unet = UNet2DConditionModel::load(&vb.pp("unet"), &unet_cfg)?;
        let vae = AutoencoderKL::load(&vb.pp("vae"), &vae_cfg)?;
        let unused = warn_unused("checkpoint", &store);
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            info: ModelInfo {
                path: path.to_path_buf(),
                name: model_name(path),
                family: arch.family,
                prediction_type: scheduler_config.prediction_type(None)?,
                single_file: true,
                unused_keys: unused,
            },
            scheduler_config,
        })
    }
}

/// The name shown for a model: the folder or file name without extension.
pub fn model_name(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

impl<B: Backend> StableDiffusion<B> {
    /// A model of the public SD 1.5 / 2.1 shape with seeded random weights (benchmarks, tests),
    /// in `precision` (converted on the host, as [`LoadOptions::precision`]).
    pub fn random(
        family: Family,
        seed: u64,
        precision: crate::device::Precision,
        device: &B::Device,
    ) -> Result<Self> {
        let path = PathBuf::from(format!("<random {family}>"));
        let te_cfg: ClipTextConfig = parse(&path, crate::presets::text_encoder_json(family))?;
        let unet_cfg = match family {
            Family::Sd1 => UNet2DConditionConfig::sd15(),
            Family::Sd2 => UNet2DConditionConfig::sd21(),
        };
        let vae_cfg = AutoencoderKLConfig::sd();
        let scheduler_config =
            SchedulerConfig::from_value(crate::presets::scheduler_json(family), &path)?;
        let store = Arc::new(WeightStore::random(seed));
        let vb = VarBuilder::<B>::new(store, device).with_dtype(precision.half_dtype());
        Ok(Self {
            tokenizer: crate::presets::bundled_tokenizer(family)?,
            text_encoder: ClipTextModel::load(&vb.pp("text_encoder"), &te_cfg)?,
            unet: UNet2DConditionModel::load(&vb.pp("unet"), &unet_cfg)?,
            vae: AutoencoderKL::load(&vb.pp("vae"), &vae_cfg)?,
            info: ModelInfo {
                path: path.clone(),
                name: format!("random-{family:?}").to_lowercase(),
                family,
                prediction_type: scheduler_config.prediction_type(None)?,
                single_file: false,
                unused_keys: Vec::new(),
            },
            scheduler_config,
        })
    }

    /// The picture size the model was trained at (UNet sample size × VAE factor).
    pub fn native_size(&self) -> usize {
        self.unet.sample_size() * self.vae.downscale_factor()
    }

    /// The model with its weights in `precision` (all three networks; a no-op for f32). Half
    /// precision runs as mixed precision on an f32 backend (see [`crate::device::dispatch`]):
    /// each layer computes in its weights' dtype and the networks answer in f32, so the pipeline
    /// around them (latents, schedulers, guidance) stays in f32. Merge LoRA files before this,
    /// so their deltas are added in f32.
    pub fn with_precision(mut self, precision: crate::device::Precision) -> Self {
        if let Some(dtype) = precision.half_dtype() {
            use crate::nn::cast_params;
            self.unet = cast_params(self.unet, dtype);
            self.text_encoder = cast_params(self.text_encoder, dtype);
            self.vae = cast_params(self.vae, dtype);
            // The f32 weights' pages go back to the driver: a GPU memory pool keeps what it
            // took, and these are twice what the model now holds.
            B::memory_cleanup(&self.unet.conv_in.weight.device());
        }
        self
    }
}

/// What a model is, read from its configs or tensor headers without loading any weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSummary {
    pub family: Family,
    pub v_prediction: bool,
    /// The UNet's transformer projections are 1×1 convs (SD 1.x) rather than linear (SD 2.x).
    pub conv_projection: bool,
    pub native_size: usize,
    pub name: String,
    pub single_file: bool,
}

/// Describes a diffusers folder or single-file checkpoint cheaply (configs and headers only).
pub fn summarize(path: &Path, opts: &LoadOptions) -> Result<ModelSummary> {
    if !path.exists() {
        return Err(ModelError::io(path, "no such file or folder"));
    }
    let (unet, sched, vae, single_file) = if path.is_dir() {
        let unet: Value = read_json(&part_dir(path, "unet")?.join("config.json"))?;
        let sched: Value = read_json(&part_dir(path, "scheduler")?.join("scheduler_config.json"))?;
        let vae: Value = read_json(&part_dir(path, "vae")?.join("config.json"))?;
        (unet, sched, vae, false)
    } else {
        let sf = single_file::open(path)?;
        let sched = crate::presets::scheduler_json(sf.arch.family);
        (sf.arch.unet, sched, sf.arch.vae, true)
    };
    let cross = match &unet["cross_attention_dim"] {
        Value::Array(a) => a.first().and_then(Value::as_u64).unwrap_or(768),
        v => v.as_u64().unwrap_or(768),
    };
    let family = if cross >= 1024 {
        Family::Sd2
    } else {
        Family::Sd1
    };
    let v_prediction =
        opts.v_prediction || sched["prediction_type"].as_str() == Some("v_prediction");
    let sample = match &unet["sample_size"] {
        Value::Array(a) => a.first().and_then(Value::as_u64).unwrap_or(64),
        v => v.as_u64().unwrap_or(64),
    } as usize;
    let vae_levels = vae["block_out_channels"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(4);
    Ok(ModelSummary {
        family,
        v_prediction,
        conv_projection: !unet["use_linear_projection"].as_bool().unwrap_or(false),
        native_size: sample << vae_levels.saturating_sub(1),
        name: model_name(path),
        single_file,
    })
}
