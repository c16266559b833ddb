//! CLIP's image encoder as transformers' `CLIPVisionTransformer`: patch + class embeddings,
//! `pre_layrnorm` (transformers' spelling), pre-norm transformer layers without a mask, and
//! `post_layernorm` on the class token as the pooled output. Field names are transformers' so
//! `vision_model.encoder.layers.0.self_attn.q_proj.weight` reads as a field path.

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use crate::clip_text::{Activation, ClipAttention, ClipMlp, ClipTextConfig, Embedding};
use crate::error::{ModelError, Result};
use crate::nn::{Conv2d, LayerNorm, multi_head_attention};
use crate::weights::{Init, VarBuilder};

fn default_hidden_size() -> usize {
    768
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    12
}
fn default_num_channels() -> usize {
    3
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    32
}
fn default_hidden_act() -> String {
    "quick_gelu".to_string()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}

/// transformers' `CLIPVisionConfig`, with its defaults for absent fields.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClipVisionConfig {
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: default_hidden_size(),
            intermediate_size: default_intermediate_size(),
            num_hidden_layers: default_num_hidden_layers(),
            num_attention_heads: default_num_attention_heads(),
            num_channels: default_num_channels(),
            image_size: default_image_size(),
            patch_size: default_patch_size(),
            hidden_act: default_hidden_act(),
            layer_norm_eps: default_layer_norm_eps(),
            projection_dim: None,
        }
    }
}

impl ClipVisionConfig {
    /// Parses a config object; a nested `vision_config` (CLIPModel) takes precedence.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let vision = match value.get("vision_config") {
            Some(v @ Value::Object(_)) => v,
            _ => value,
        };
        let cfg: Self = serde_json::from_value(vision.clone())
            .map_err(|e| ModelError::config(path, format!("vision_config: {e}")))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The MLP activation, or an error naming `hidden_act`.
    pub fn activation(&self, path: &Path) -> Result<Activation> {
        self.layer_shape().activation(path)
    }

    /// Number of patches along one side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Checks the values the model relies on; `path` is what errors name.
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.activation(path)?;
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ModelError::config(
                path,
                format!(
                    "vision_config: hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(ModelError::config(
                path,
                format!(
                    "vision_config: image_size {} and patch_size {} give no patches",
                    self.image_size, self.patch_size
                ),
            ));
        }
        Ok(())
    }

    /// The encoder-layer shape in the text config's terms, so the vision tower reuses
    /// `ClipAttention` / `ClipMlp` (transformers uses one `CLIPEncoderLayer` for both towers).
    fn layer_shape(&self) -> ClipTextConfig {
        ClipTextConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            hidden_act: self.hidden_act.clone(),
            layer_norm_eps: self.layer_norm_eps,
            ..ClipTextConfig::default()
        }
    }
}

/// `CLIPVisionEmbeddings`: a learned class token, a bias-free patch convolution and learned
/// absolute positions.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings<B: Backend> {
    pub class_embedding: Param<Tensor<B, 1>>,
    pub patch_embedding: Conv2d<B>,
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> ClipVisionEmbeddings<B> {
    /// Loads the three tables.
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipVisionConfig) -> Result<Self> {
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        let patch = vb.pp("patch_embedding");
        Ok(Self {
            class_embedding: vb.get("class_embedding", [h], Init::Normal(1.0))?,
            patch_embedding: Conv2d {
                weight: patch.get(
                    "weight",
                    [h, cfg.num_channels, p, p],
                    Init::FanIn(cfg.num_channels * p * p),
                )?,
                bias: None,
                stride: p,
                padding: 0,
            },
            position_embedding: Embedding::load(
                &vb.pp("position_embedding"),
                cfg.grid() * cfg.grid() + 1,
                h,
            )?,
        })
    }

    /// [N, C, S, S] pixels → [N, 1 + (S/P)², H].
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.patch_embedding.forward(pixels);
        let [n, h, gh, gw] = patches.dims();
        let patches = patches.reshape([n, h, gh * gw]).swap_dims(1, 2);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, h])
            .expand([n, 1, h]);
        let x = Tensor::cat(vec![class, patches], 1);
        x + self.position_embedding.weight.val().unsqueeze_dim(0)
    }
}

/// `CLIPEncoderLayer` as the vision tower runs it: the same weights as the text layer, attention
/// without the causal mask.
#[derive(Module, Debug)]
pub struct ClipVisionEncoderLayer<B: Backend> {
    pub self_attn: ClipAttention<B>,
    pub layer_norm1: LayerNorm<B>,
    pub mlp: ClipMlp<B>,
    pub layer_norm2: LayerNorm<B>,
}

impl<B: Backend> ClipVisionEncoderLayer<B> {
    /// Loads one layer.
    pub fn load(
        vb: &VarBuilder<B>,
        cfg: &ClipVisionConfig,
        activation: Activation,
    ) -> Result<Self> {
        let shape = cfg.layer_shape();
        Ok(Self {
            self_attn: ClipAttention::load(&vb.pp("self_attn"), &shape)?,
            layer_norm1: LayerNorm::load(
                &vb.pp("layer_norm1"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            mlp: ClipMlp::load(&vb.pp("mlp"), &shape, activation)?,
            layer_norm2: LayerNorm::load(
                &vb.pp("layer_norm2"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// [B, N, H] → [B, N, H].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let attn = &self.self_attn;
        let normed = self.layer_norm1.forward(x.clone());
        let q = attn.q_proj.forward(normed.clone());
        let k = attn.k_proj.forward(normed.clone());
        let v = attn.v_proj.forward(normed);
        let attended = attn
            .out_proj
            .forward(multi_head_attention(q, k, v, attn.num_heads, false));
        let x = x + attended;
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// The vision `CLIPEncoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct ClipVisionEncoder<B: Backend> {
    pub layers: Vec<ClipVisionEncoderLayer<B>>,
}

/// What `CLIPVisionTransformer` returns.
#[derive(Debug, Clone)]
pub struct ClipVisionOutput<B: Backend> {
    /// The last layer's raw output, [B, 1 + patches, H].
    pub last_hidden_state: Tensor<B, 3>,
    /// `post_layernorm` of the class token, [B, H].
    pub pooler_output: Tensor<B, 2>,
}

/// `CLIPVisionTransformer`: embeddings, pre-norm, encoder, post-norm of the class token.
#[derive(Module, Debug)]
pub struct ClipVisionTransformer<B: Backend> {
    pub embeddings: ClipVisionEmbeddings<B>,
    pub pre_layrnorm: LayerNorm<B>,
    pub encoder: ClipVisionEncoder<B>,
    pub post_layernorm: LayerNorm<B>,
    pub num_channels: usize,
    pub image_size: usize,
}

impl<B: Backend> ClipVisionTransformer<B> {
    /// Loads the tower from `vb` (the `vision_model` path).
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipVisionConfig) -> Result<Self> {
        let activation = cfg.activation(&vb.store().display_path())?;
        let layers_vb = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipVisionEncoderLayer::load(&layers_vb.pp(i), cfg, activation))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: ClipVisionEmbeddings::load(&vb.pp("embeddings"), cfg)?,
            pre_layrnorm: LayerNorm::load(
                &vb.pp("pre_layrnorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            encoder: ClipVisionEncoder { layers },
            post_layernorm: LayerNorm::load(
                &vb.pp("post_layernorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            num_channels: cfg.num_channels,
            image_size: cfg.image_size,
        })
    }

    /// Runs the tower on normalised pixels [N, C, S, S] (S = the config's `image_size`).
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Result<ClipVisionOutput<B>> {
        check_pixels(
            &pixels,
            self.num_channels,
            self.image_size,
            "CLIP vision model",
        )?;
        let mut x = self.pre_layrnorm.forward(self.embeddings.forward(pixels));
        for layer in &self.encoder.layers {
            x = layer.forward(x);
        }
        let [n, _, h] = x.dims();
        let class = x.clone().narrow(1, 0, 1).reshape([n, h]);
        Ok(ClipVisionOutput {
            last_hidden_state: x,
            pooler_output: self.post_layernorm.forward(class),
        })
    }
}

/// Checks that pixels are [N ≥ 1, channels, size, size]; the error says what the model expects.
pub(crate) fn check_pixels<B: Backend>(
    pixels: &Tensor<B, 4>,
    channels: usize,
    size: usize,
    model: &str,
) -> Result<()> {
    let [n, c, h, w] = pixels.dims();
    if n == 0 || c != channels || h != size || w != size {
        return Err(ModelError::Invalid(format!(
            "{model} expects pixels [N, {channels}, {size}, {size}], got [{n}, {c}, {h}, {w}]"
        )));
    }
    Ok(())
}
