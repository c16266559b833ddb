//! Training the built-in world's own small models from scratch: an `AutoencoderKL`, a CLIP
//! (text and vision towers) and a `UNet2DConditionModel`, written as a diffusers folder and a
//! transformers CLIP folder that the ordinary loaders read.
//!
//! [`WorldModelSpec`] fixes their sizes and writes their `config.json` files; [`vae`] trains the
//! autoencoder, [`clip`] the contrastive CLIP and [`unet`] the denoiser on their outputs, each as a resumable run folder (`config.json`,
//! `loss.jsonl`, `checkpoints/step-NNNNNN/`) that ends with the model's own folder.

pub mod clip;
pub mod clip_probe;
pub mod quality;
mod run;
pub mod tokenizer;
pub mod unet;
pub mod vae;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use clip::{ClipTrainConfig, WorldClip, train_clip};
pub use clip_probe::{ClipBinding, ClipBindingTask, clip_binding};
pub use quality::{QualityConfig, QualityReport, QualityTask};
pub use tokenizer::{world_tokenizer, write_tokenizer_files};
pub use unet::{UNetTrainConfig, train_unet};
pub use vae::{VaeTrainConfig, train_vae};

/// The diffusers version the written configs claim (the one the fixtures are pinned to).
const DIFFUSERS_VERSION: &str = "0.35.2";
/// The transformers version the written CLIP config claims.
const TRANSFORMERS_VERSION: &str = "4.57.1";

/// The sizes of the world's built-in models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldModelSpec {
    /// Picture side in pixels the models train at.
    pub image_size: usize,
    /// VAE channels per level; `n` levels shrink the picture by `2^(n-1)`.
    pub vae_block_out_channels: Vec<usize>,
    pub vae_layers_per_block: usize,
    pub latent_channels: usize,
    /// Group-norm groups of the VAE and the UNet (divides every channel count).
    pub norm_num_groups: usize,
    /// CLIP text tower width, depth and heads.
    pub text_hidden: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    /// Longest tokenised caption, BOS and EOS included (77, the bundled CLIP tokenizer's length).
    pub max_text_tokens: usize,
    /// CLIP vision tower width, depth, heads and patch side.
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub patch_size: usize,
    /// Size of CLIP's shared embedding space.
    pub projection_dim: usize,
    /// UNet channels per level, ResNets per block and per-level attention head dimension.
    pub unet_block_out_channels: Vec<usize>,
    pub unet_layers_per_block: usize,
    pub unet_attention_head_dim: Vec<usize>,
}

impl Default for WorldModelSpec {
    /// 32-px pictures, 8×8×4 latents, a 64-wide CLIP and a three-level UNet.
    fn default() -> Self {
        Self {
            image_size: 32,
            vae_block_out_channels: vec![32, 64, 64],
            vae_layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 8,
            text_hidden: 64,
            text_layers: 4,
            text_heads: 4,
            max_text_tokens: 77,
            vision_hidden: 64,
            vision_layers: 4,
            vision_heads: 4,
            patch_size: 4,
            projection_dim: 64,
            unet_block_out_channels: vec![32, 64, 64],
            unet_layers_per_block: 1,
            unet_attention_head_dim: vec![8, 8, 8],
        }
    }
}

impl WorldModelSpec {
    /// Pixels per latent cell along a side.
    pub fn vae_downscale(&self) -> usize {
        1 << self.vae_block_out_channels.len().saturating_sub(1)
    }

    /// Latent side for `image_size` pictures.
    pub fn latent_size(&self) -> usize {
        self.image_size / self.vae_downscale()
    }

    /// diffusers `vae/config.json` for an `AutoencoderKL` with `scaling_factor`.
    pub fn vae_config(&self, scaling_factor: f64) -> Value {
        let n = self.vae_block_out_channels.len();
        json!({
            "_class_name": "AutoencoderKL",
            "_diffusers_version": DIFFUSERS_VERSION,
            "act_fn": "silu",
            "block_out_channels": self.vae_block_out_channels,
            "down_block_types": vec!["DownEncoderBlock2D"; n],
            "up_block_types": vec!["UpDecoderBlock2D"; n],
            "force_upcast": false,
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": self.latent_channels,
            "layers_per_block": self.vae_layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": self.image_size,
            "scaling_factor": scaling_factor,
            "mid_block_add_attention": true,
            "use_quant_conv": true,
            "use_post_quant_conv": true,
        })
    }

    /// diffusers `unet/config.json`: cross-attention blocks on every level but the deepest,
    /// conditioned on the CLIP text tower's hidden states.
    pub fn unet_config(&self) -> Value {
        let n = self.unet_block_out_channels.len();
        let mut down = vec!["CrossAttnDownBlock2D"; n];
        let mut up = vec!["CrossAttnUpBlock2D"; n];
        if let Some(last) = down.last_mut() {
            *last = "DownBlock2D";
        }
        if let Some(first) = up.first_mut() {
            *first = "UpBlock2D";
        }
        json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": DIFFUSERS_VERSION,
            "act_fn": "silu",
            "attention_head_dim": self.unet_attention_head_dim,
            "block_out_channels": self.unet_block_out_channels,
            "center_input_sample": false,
            "cross_attention_dim": self.text_hidden,
            "down_block_types": down,
            "up_block_types": up,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "downsample_padding": 1,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": self.latent_channels,
            "out_channels": self.latent_channels,
            "layers_per_block": self.unet_layers_per_block,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-5,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": self.latent_size(),
            "use_linear_projection": true,
        })
    }

    /// transformers `text_config` of the CLIP (also the pipeline's `text_encoder/config.json`
    /// with `architectures` set to `CLIPTextModel`).
    pub fn text_config(&self, vocab_size: usize) -> Value {
        json!({
            "model_type": "clip_text_model",
            "architectures": ["CLIPTextModel"],
            "vocab_size": vocab_size,
            "hidden_size": self.text_hidden,
            "intermediate_size": 4 * self.text_hidden,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "max_position_embeddings": self.max_text_tokens,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": self.projection_dim,
            // Prompts are padded with `<|endoftext|>`, as `world pack` records it.
            "pad_token_id": vocab_size - 1,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "torch_dtype": "float32",
            "transformers_version": TRANSFORMERS_VERSION,
        })
    }

    /// transformers `vision_config` of the CLIP.
    pub fn vision_config(&self) -> Value {
        json!({
            "model_type": "clip_vision_model",
            "hidden_size": self.vision_hidden,
            "intermediate_size": 4 * self.vision_hidden,
            "num_hidden_layers": self.vision_layers,
            "num_attention_heads": self.vision_heads,
            "num_channels": 3,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": self.projection_dim,
        })
    }

    /// transformers `config.json` of the whole `CLIPModel`.
    pub fn clip_config(&self, vocab_size: usize) -> Value {
        json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": 2.6592,
            "text_config": self.text_config(vocab_size),
            "vision_config": self.vision_config(),
            "torch_dtype": "float32",
            "transformers_version": TRANSFORMERS_VERSION,
        })
    }

    /// transformers `preprocessor_config.json`: `CLIPImageProcessor` at `image_size`, OpenAI
    /// mean and std.
    pub fn preprocessor_config(&self) -> Value {
        json!({
            "image_processor_type": "CLIPImageProcessor",
            "do_convert_rgb": true,
            "do_resize": true,
            "size": {"shortest_edge": self.image_size},
            "resample": 3,
            "do_center_crop": true,
            "crop_size": {"height": self.image_size, "width": self.image_size},
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
        })
    }
}

/// Which of the world's models a [`WorldTrainTask`] trains.
#[derive(Debug, Clone, PartialEq)]
pub enum WorldStage {
    Vae(VaeTrainConfig),
    Clip(ClipTrainConfig),
    UNet(UNetTrainConfig),
}

/// One world training run for [`likeness_models::device::dispatch`]: the backend (device and
/// precision) comes from there. Its output is the run's own result.
pub struct WorldTrainTask<'a> {
    pub stage: WorldStage,
    /// The run folder (continued when it already holds a run of the same stage).
    pub run_dir: std::path::PathBuf,
    pub events: &'a mut dyn FnMut(crate::events::TrainEvent),
    pub cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl likeness_models::device::BackendTask for WorldTrainTask<'_> {
    type Output = crate::error::Result<crate::events::TrainOutcome>;

    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        placement: likeness_models::device::Placement,
    ) -> likeness_models::Result<Self::Output> {
        tracing::info!("training on {placement}");
        let (dir, cancel) = (&self.run_dir, &*self.cancel);
        Ok(match &self.stage {
            WorldStage::Vae(c) => train_vae::<B>(c, dir, &device, self.events, cancel),
            WorldStage::Clip(c) => train_clip::<B>(c, dir, &device, self.events, cancel),
            WorldStage::UNet(c) => train_unet::<B>(c, dir, &device, self.events, cancel),
        })
    }
}

/// Folder names of the built-in world's models inside a models folder.
pub const BUILTIN_SD: &str = "world-sd";
pub const BUILTIN_CLIP: &str = "world-clip";

/// Where the built-in world's models are looked for, in order: `$LIKENESS_MODELS`, `models/`
/// beside the executable (an installed copy), then the repository's `assets/models` (a build from
/// source).
pub fn builtin_model_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("LIKENESS_MODELS") {
        dirs.push(std::path::PathBuf::from(d));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.to_path_buf()))
    {
        dirs.push(exe_dir.join("models"));
    }
    dirs.push(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models"));
    dirs
}

/// The built-in (diffusers model, CLIP) folders, or an error naming where they were looked for
/// and how to make them.
pub fn builtin_models() -> crate::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dirs = builtin_model_dirs();
    for d in &dirs {
        let (sd, clip) = (d.join(BUILTIN_SD), d.join(BUILTIN_CLIP));
        if sd.join("model_index.json").is_file() && clip.join("config.json").is_file() {
            return Ok((sd, clip));
        }
    }
    Err(crate::TrainError::Invalid(format!(
        "the built-in world models ({BUILTIN_SD}, {BUILTIN_CLIP}) are not in {}; make them with \
         `likeness world train --out RUN` then `likeness world pack --pipeline RUN/unet/pipeline \
         --clip RUN/clip/clip --out assets/models`, or pass --model and --clip",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
