//! transformers' `ViTModel`, the layout DINO checkpoints (`facebook/dino-vits16`, …) ship in: patch
//! and class embeddings, pre-norm layers, a final layer norm. The image embedding for scoring is
//! the class token of the last hidden state. Field names are transformers' so
//! `encoder.layer.0.attention.attention.query.weight` reads as a field path.

use std::path::Path;
use std::sync::Arc;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{gelu, tanh};
use image::RgbImage;
use serde::Deserialize;
use serde_json::Value;

use crate::clip_model::model_weights;
use crate::clip_vision::check_pixels;
use crate::error::{ModelError, Result, read_json};
use crate::image_preprocess::Preprocessor;
use crate::nn::{Conv2d, LayerNorm, Linear, multi_head_attention};
use crate::weights::{Init, VarBuilder, WeightStore};

fn default_hidden_size() -> usize {
    768
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    12
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_hidden_act() -> String {
    "gelu".to_string()
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    16
}
fn default_num_channels() -> usize {
    3
}
fn default_qkv_bias() -> bool {
    true
}

/// transformers' `ViTConfig`, with its defaults for absent fields.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ViTConfig {
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    #[serde(default = "default_qkv_bias")]
    pub qkv_bias: bool,
}

impl Default for ViTConfig {
    fn default() -> Self {
        Self {
            hidden_size: default_hidden_size(),
            num_hidden_layers: default_num_hidden_layers(),
            num_attention_heads: default_num_attention_heads(),
            intermediate_size: default_intermediate_size(),
            hidden_act: default_hidden_act(),
            layer_norm_eps: default_layer_norm_eps(),
            image_size: default_image_size(),
            patch_size: default_patch_size(),
            num_channels: default_num_channels(),
            qkv_bias: default_qkv_bias(),
        }
    }
}

/// The MLP non-linearities ViT configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViTActivation {
    /// Exact erf GELU (`gelu`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
}

impl ViTActivation {
    fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            ViTActivation::Gelu => gelu(x),
            ViTActivation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
                x * (tanh(inner) + 1.0) * 0.5
            }
        }
    }
}

impl ViTConfig {
    /// Reads a `ViTModel` config.json, refusing configs of other models.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = read_json(path)?;
        Self::from_value(&value, path)
    }

    /// Parses a config object; `path` is what errors name.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        if value.get("vision_config").is_some() {
            return Err(ModelError::config(
                path,
                "a CLIP-style config (has `vision_config`), not a ViTModel (DINO) one",
            ));
        }
        match value.get("model_type").and_then(Value::as_str) {
            None | Some("vit") => {}
            Some(other) => {
                return Err(ModelError::unsupported(
                    path,
                    "model_type",
                    format!(
                        "{other} (only transformers ViTModel layouts, as DINO v1 ships, are read)"
                    ),
                ));
            }
        }
        let cfg: Self = serde_json::from_value(value.clone())
            .map_err(|e| ModelError::config(path, e.to_string()))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The MLP activation, or an error naming `hidden_act`.
    pub fn activation(&self, path: &Path) -> Result<ViTActivation> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(ViTActivation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(ViTActivation::GeluTanh),
            other => Err(ModelError::unsupported(path, "hidden_act", other)),
        }
    }

    /// Number of patches along one side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Checks the values the model relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.activation(path)?;
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ModelError::config(
                path,
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(ModelError::config(
                path,
                format!(
                    "image_size {} and patch_size {} give no patches",
                    self.image_size, self.patch_size
                ),
            ));
        }
        Ok(())
    }
}

/// `ViTPatchEmbeddings`: a strided convolution with bias.
#[derive(Module, Debug)]
pub struct ViTPatchEmbeddings<B: Backend> {
    pub projection: Conv2d<B>,
}

/// `ViTEmbeddings`: class token, patch embeddings and learned absolute positions.
#[derive(Module, Debug)]
pub struct ViTEmbeddings<B: Backend> {
    pub cls_token: Param<Tensor<B, 3>>,
    pub position_embeddings: Param<Tensor<B, 3>>,
    pub patch_embeddings: ViTPatchEmbeddings<B>,
}

impl<B: Backend> ViTEmbeddings<B> {
    /// Loads the tables and the patch convolution.
    pub fn load(vb: &VarBuilder<B>, cfg: &ViTConfig) -> Result<Self> {
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        let positions = cfg.grid() * cfg.grid() + 1;
        Ok(Self {
            cls_token: vb.get("cls_token", [1, 1, h], Init::Normal(0.02))?,
            position_embeddings: vb.get(
                "position_embeddings",
                [1, positions, h],
                Init::Normal(0.02),
            )?,
            patch_embeddings: ViTPatchEmbeddings {
                projection: Conv2d::load(
                    &vb.pp("patch_embeddings").pp("projection"),
                    cfg.num_channels,
                    h,
                    p,
                    p,
                    0,
                )?,
            },
        })
    }

    /// [N, C, S, S] → [N, 1 + (S/P)², H].
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.patch_embeddings.projection.forward(pixels);
        let [n, h, gh, gw] = patches.dims();
        let patches = patches.reshape([n, h, gh * gw]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([n, 1, h]);
        Tensor::cat(vec![cls, patches], 1) + self.position_embeddings.val()
    }
}

/// `ViTSelfAttention`: the query/key/value projections.
#[derive(Module, Debug)]
pub struct ViTSelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub num_heads: usize,
}

/// `ViTSelfOutput`: the attention's output projection.
#[derive(Module, Debug)]
pub struct ViTSelfOutput<B: Backend> {
    pub dense: Linear<B>,
}

/// `ViTAttention`: self-attention and its output projection.
#[derive(Module, Debug)]
pub struct ViTAttention<B: Backend> {
    pub attention: ViTSelfAttention<B>,
    pub output: ViTSelfOutput<B>,
}

impl<B: Backend> ViTAttention<B> {
    /// Loads the four projections.
    pub fn load(vb: &VarBuilder<B>, cfg: &ViTConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let sa = vb.pp("attention");
        Ok(Self {
            attention: ViTSelfAttention {
                query: Linear::load(&sa.pp("query"), h, h, cfg.qkv_bias)?,
                key: Linear::load(&sa.pp("key"), h, h, cfg.qkv_bias)?,
                value: Linear::load(&sa.pp("value"), h, h, cfg.qkv_bias)?,
                num_heads: cfg.num_attention_heads,
            },
            output: ViTSelfOutput {
                dense: Linear::load(&vb.pp("output").pp("dense"), h, h, true)?,
            },
        })
    }

    /// Unmasked self-attention on [B, N, H], scale head_dim^-0.5.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let sa = &self.attention;
        let q = sa.query.forward(x.clone());
        let k = sa.key.forward(x.clone());
        let v = sa.value.forward(x);
        self.output
            .dense
            .forward(multi_head_attention(q, k, v, sa.num_heads, false))
    }
}

/// `ViTIntermediate`: the MLP's first projection and its activation.
#[derive(Module, Debug)]
pub struct ViTIntermediate<B: Backend> {
    pub dense: Linear<B>,
    #[module(skip)]
    pub activation: ViTActivation,
}

/// `ViTOutput`: the MLP's second projection (the residual is added by the layer).
#[derive(Module, Debug)]
pub struct ViTOutput<B: Backend> {
    pub dense: Linear<B>,
}

/// `ViTLayer`: pre-norm attention and MLP, each with a residual.
#[derive(Module, Debug)]
pub struct ViTLayer<B: Backend> {
    pub attention: ViTAttention<B>,
    pub intermediate: ViTIntermediate<B>,
    pub output: ViTOutput<B>,
    pub layernorm_before: LayerNorm<B>,
    pub layernorm_after: LayerNorm<B>,
}

impl<B: Backend> ViTLayer<B> {
    /// Loads one layer.
    pub fn load(vb: &VarBuilder<B>, cfg: &ViTConfig, activation: ViTActivation) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: ViTAttention::load(&vb.pp("attention"), cfg)?,
            intermediate: ViTIntermediate {
                dense: Linear::load(&vb.pp("intermediate").pp("dense"), h, i, true)?,
                activation,
            },
            output: ViTOutput {
                dense: Linear::load(&vb.pp("output").pp("dense"), i, h, true)?,
            },
            layernorm_before: LayerNorm::load(&vb.pp("layernorm_before"), h, cfg.layer_norm_eps)?,
            layernorm_after: LayerNorm::load(&vb.pp("layernorm_after"), h, cfg.layer_norm_eps)?,
        })
    }

    /// [B, N, H] → [B, N, H].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attention.forward(self.layernorm_before.forward(x));
        let mlp = self.intermediate.activation.forward(
            self.intermediate
                .dense
                .forward(self.layernorm_after.forward(x.clone())),
        );
        x + self.output.dense.forward(mlp)
    }
}

/// `ViTEncoder`: the stack of layers (transformers names the list `layer`).
#[derive(Module, Debug)]
pub struct ViTEncoder<B: Backend> {
    pub layer: Vec<ViTLayer<B>>,
}

/// A DINO (ViT) image encoder with the image processor of its folder.
pub struct ViTModel<B: Backend> {
    pub embeddings: ViTEmbeddings<B>,
    pub encoder: ViTEncoder<B>,
    pub layernorm: LayerNorm<B>,
    pub config: ViTConfig,
    /// The folder's `preprocessor_config.json`, or what `facebook/dino-vits16` ships.
    pub preprocessor: Preprocessor,
}

impl<B: Backend> ViTModel<B> {
    /// Loads a transformers `ViTModel` folder: `config.json`, `model.safetensors` (keys at the root
    /// or under `vit.`), and `preprocessor_config.json` when present. A pooler is ignored.
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Layout {
                path: dir.to_path_buf(),
                message: "not a folder (expected a transformers ViTModel folder, as DINO ships)"
                    .into(),
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::Layout {
                path: dir.to_path_buf(),
                message: "no config.json: not a transformers ViTModel (DINO) folder".into(),
            });
        }
        let config = ViTConfig::from_file(&config_path)?;
        let store = Arc::new(WeightStore::open(&model_weights(dir)?)?);
        // ViTFor…-style checkpoints keep the backbone under `vit.`.
        let prefixed =
            !store.contains("embeddings.cls_token") && store.contains("vit.embeddings.cls_token");
        let root = VarBuilder::new(store, device);
        let vb = if prefixed { root.pp("vit") } else { root };
        let preprocessor_path = dir.join("preprocessor_config.json");
        let preprocessor = if preprocessor_path.is_file() {
            Preprocessor::from_file(&preprocessor_path)?
        } else {
            Preprocessor::dino_default()
        };
        Self::load(&vb, config, preprocessor)
    }

    /// Builds the model from weights rooted at `vb` (`embeddings.…`, `encoder.layer.…`, `layernorm`).
    pub fn load(vb: &VarBuilder<B>, config: ViTConfig, preprocessor: Preprocessor) -> Result<Self> {
        let activation = config.activation(&vb.store().display_path())?;
        let layers_vb = vb.pp("encoder").pp("layer");
        let layer = (0..config.num_hidden_layers)
            .map(|i| ViTLayer::load(&layers_vb.pp(i), &config, activation))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: ViTEmbeddings::load(&vb.pp("embeddings"), &config)?,
            encoder: ViTEncoder { layer },
            layernorm: LayerNorm::load(
                &vb.pp("layernorm"),
                config.hidden_size,
                config.layer_norm_eps,
            )?,
            config,
            preprocessor,
        })
    }

    /// `last_hidden_state` [N, 1 + patches, H] (after the final layer norm) of normalised pixels
    /// [N, C, S, S] (S = the config's `image_size`).
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        check_pixels(
            &pixels,
            self.config.num_channels,
            self.config.image_size,
            "ViT (DINO) model",
        )?;
        let mut x = self.embeddings.forward(pixels);
        for layer in &self.encoder.layer {
            x = layer.forward(x);
        }
        Ok(self.layernorm.forward(x))
    }

    /// The class token of the last hidden state, [N, H]: DINO's image embedding.
    pub fn cls_embeds(&self, pixels: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        let x = self.forward(pixels)?;
        let [n, _, h] = x.dims();
        Ok(x.narrow(1, 0, 1).reshape([n, h]))
    }

    /// Preprocesses images with the folder's image processor and embeds them.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Tensor<B, 2>> {
        let device = self.layernorm.weight.device();
        let pixels = self.preprocessor.batch::<B>(images, &device)?;
        self.cls_embeds(pixels)
    }
}
