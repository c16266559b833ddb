//! CLIP's text encoder as transformers' `CLIPTextModel`: token + position embeddings, pre-norm
//! causal transformer layers, final layer norm, pooled EOS feature. Field names are transformers'
//! so `text_model.encoder.layers.0.self_attn.q_proj.weight` reads as a field path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{gelu, sigmoid};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result, read_json};
use crate::nn::{LayerNorm, Linear, default_float_dtype, in_dtype, multi_head_attention};
use crate::weights::{Init, VarBuilder, WeightStore};

fn default_vocab_size() -> usize {
    49408
}
fn default_hidden_size() -> usize {
    512
}
fn default_intermediate_size() -> usize {
    2048
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    8
}
fn default_max_position_embeddings() -> usize {
    77
}
fn default_hidden_act() -> String {
    "quick_gelu".to_string()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_pad_token_id() -> i64 {
    1
}
fn default_bos_token_id() -> i64 {
    49406
}
fn default_eos_token_id() -> i64 {
    49407
}

/// transformers' `CLIPTextConfig`, with its defaults for absent fields.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClipTextConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: i64,
    #[serde(default = "default_bos_token_id")]
    pub bos_token_id: i64,
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: default_vocab_size(),
            hidden_size: default_hidden_size(),
            intermediate_size: default_intermediate_size(),
            num_hidden_layers: default_num_hidden_layers(),
            num_attention_heads: default_num_attention_heads(),
            max_position_embeddings: default_max_position_embeddings(),
            hidden_act: default_hidden_act(),
            layer_norm_eps: default_layer_norm_eps(),
            pad_token_id: default_pad_token_id(),
            bos_token_id: default_bos_token_id(),
            eos_token_id: default_eos_token_id(),
            projection_dim: None,
        }
    }
}

/// The MLP non-linearities CLIP text encoders use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD1).
    QuickGelu,
    /// Exact erf GELU (OpenCLIP, SD2).
    Gelu,
}

impl Activation {
    fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Activation::Gelu => gelu(x),
        }
    }
}

impl ClipTextConfig {
    /// Reads a `CLIPTextModel` config.json, or the `text_config` of a `CLIPModel` config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = read_json(path)?;
        Self::from_value(&value, path)
    }

    /// Parses a config object; a nested `text_config` (CLIPModel) takes precedence.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let text = match value.get("text_config") {
            Some(v @ Value::Object(_)) => v,
            _ => value,
        };
        let cfg: Self = serde_json::from_value(text.clone())
            .map_err(|e| ModelError::config(path, e.to_string()))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The MLP activation, or an error naming `hidden_act`.
    pub fn activation(&self, path: &Path) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(ModelError::unsupported(path, "hidden_act", other)),
        }
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
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        Ok(())
    }
}

/// `torch.nn.Embedding`: weight [num, dim].
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// Loads `weight` [num, dim] (random init N(0, 0.02) as transformers' CLIP init).
    pub fn load(vb: &VarBuilder<B>, num: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", [num, dim], Init::Normal(0.02))?,
        })
    }
}

/// `CLIPTextEmbeddings`: token embedding plus learned absolute positions.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings<B: Backend> {
    pub token_embedding: Embedding<B>,
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> ClipTextEmbeddings<B> {
    /// Loads both tables; the `position_ids` buffer some files carry is not needed.
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            token_embedding: Embedding::load(
                &vb.pp("token_embedding"),
                cfg.vocab_size,
                cfg.hidden_size,
            )?,
            position_embedding: Embedding::load(
                &vb.pp("position_embedding"),
                cfg.max_position_embeddings,
                cfg.hidden_size,
            )?,
        })
    }

    /// [B, N] ids → [B, N, H]; N must not exceed the number of positions (checked by the caller).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let n = input_ids.dims()[1];
        let tokens = burn::tensor::module::embedding(self.token_embedding.weight.val(), input_ids);
        let positions = self.position_embedding.weight.val().narrow(0, 0, n);
        tokens + positions.unsqueeze_dim(0)
    }
}

/// `CLIPAttention` with the text model's causal mask.
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: Backend> ClipAttention<B> {
    /// Loads the four `hidden_size`² projections with biases.
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipTextConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::load(&vb.pp("q_proj"), h, h, true)?,
            k_proj: Linear::load(&vb.pp("k_proj"), h, h, true)?,
            v_proj: Linear::load(&vb.pp("v_proj"), h, h, true)?,
            out_proj: Linear::load(&vb.pp("out_proj"), h, h, true)?,
            num_heads: cfg.num_attention_heads,
        })
    }

    /// Causal self-attention on [B, N, H], scale head_dim^-0.5.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        self.out_proj
            .forward(multi_head_attention(q, k, v, self.num_heads, true))
    }
}

/// `CLIPMLP`: fc1 → activation → fc2.
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> ClipMlp<B> {
    /// Loads fc1 [intermediate, hidden] and fc2 [hidden, intermediate].
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipTextConfig, activation: Activation) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(&vb.pp("fc1"), cfg.hidden_size, cfg.intermediate_size, true)?,
            fc2: Linear::load(&vb.pp("fc2"), cfg.intermediate_size, cfg.hidden_size, true)?,
            activation,
        })
    }

    /// [.., H] → [.., H].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2
            .forward(self.activation.forward(self.fc1.forward(x)))
    }
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP, each with a residual.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    pub self_attn: ClipAttention<B>,
    pub layer_norm1: LayerNorm<B>,
    pub mlp: ClipMlp<B>,
    pub layer_norm2: LayerNorm<B>,
}

impl<B: Backend> ClipEncoderLayer<B> {
    /// Loads one layer.
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipTextConfig, activation: Activation) -> Result<Self> {
        Ok(Self {
            self_attn: ClipAttention::load(&vb.pp("self_attn"), cfg)?,
            layer_norm1: LayerNorm::load(
                &vb.pp("layer_norm1"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            mlp: ClipMlp::load(&vb.pp("mlp"), cfg, activation)?,
            layer_norm2: LayerNorm::load(
                &vb.pp("layer_norm2"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// [B, N, H] → [B, N, H].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// `CLIPEncoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    pub layers: Vec<ClipEncoderLayer<B>>,
}

impl<B: Backend> ClipEncoder<B> {
    /// Loads `num_hidden_layers` layers under `layers.<i>`.
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipTextConfig, activation: Activation) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::load(&vb.pp(i), cfg, activation))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}

/// `CLIPTextTransformer`: embeddings, encoder, final layer norm.
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    pub embeddings: ClipTextEmbeddings<B>,
    pub encoder: ClipEncoder<B>,
    pub final_layer_norm: LayerNorm<B>,
    /// The config's `eos_token_id`, which picks the pooling rule.
    pub eos_token_id: i64,
}

/// What `CLIPTextModel(..., output_hidden_states=True)` returns.
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// final_layer_norm of the last layer's output, [B, N, H].
    pub last_hidden_state: Tensor<B, 3>,
    /// Embeddings output, then each layer's raw output: `num_hidden_layers + 1` tensors [B, N, H].
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// The EOS position of `last_hidden_state`, [B, H].
    pub pooler_output: Tensor<B, 2>,
}

impl<B: Backend> ClipTextTransformer<B> {
    /// Loads the transformer from `vb` (the `text_model` path).
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipTextConfig) -> Result<Self> {
        let activation = cfg.activation(&vb.store().display_path())?;
        Ok(Self {
            embeddings: ClipTextEmbeddings::load(&vb.pp("embeddings"), cfg)?,
            encoder: ClipEncoder::load(&vb.pp("encoder"), cfg, activation)?,
            final_layer_norm: LayerNorm::load(
                &vb.pp("final_layer_norm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            eos_token_id: cfg.eos_token_id,
        })
    }

    fn check_len(&self, input_ids: &Tensor<B, 2, Int>) -> Result<()> {
        let n = input_ids.dims()[1];
        let max = self.embeddings.position_embedding.weight.dims()[0];
        if n > max {
            return Err(ModelError::Invalid(format!(
                "sequence length {n} exceeds max_position_embeddings {max}"
            )));
        }
        Ok(())
    }

    /// Runs the embeddings and the first `layers` layers, keeping every intermediate state.
    fn run(&self, input_ids: Tensor<B, 2, Int>, layers: usize) -> Vec<Tensor<B, 3>> {
        let mut states = Vec::with_capacity(layers + 1);
        let mut x = self.embeddings.forward(input_ids);
        for layer in self.encoder.layers.iter().take(layers) {
            states.push(x.clone());
            x = layer.forward(x);
        }
        states.push(x);
        states
    }

    /// Full forward with hidden states and pooled output.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<ClipTextOutput<B>> {
        self.check_len(&input_ids)?;
        let hidden_states = self.run(input_ids.clone(), self.encoder.layers.len());
        let last = hidden_states
            .last()
            .cloned()
            .ok_or_else(|| ModelError::Invalid("text encoder produced no states".into()))?;
        // States leave in the backend's float dtype whatever the weights' (mixed precision).
        let out = |t: Tensor<B, 3>| in_dtype(t, default_float_dtype::<B>());
        let last_hidden_state = out(self.final_layer_norm.forward(last));
        let hidden_states = hidden_states.into_iter().map(out).collect();
        let pooler_output = self.pool(&last_hidden_state, input_ids)?;
        Ok(ClipTextOutput {
            last_hidden_state,
            hidden_states,
            pooler_output,
        })
    }

    /// transformers' pooling: with the legacy `eos_token_id == 2` the position of the largest id,
    /// else the first position holding `eos_token_id` (0 when there is none, as argmax of zeros).
    fn pool(&self, hidden: &Tensor<B, 3>, input_ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 2>> {
        let [b, n, h] = hidden.dims();
        let ids = input_ids
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| ModelError::Invalid(format!("input_ids: {e:?}")))?;
        let rows: Vec<i64> = ids
            .chunks(n.max(1))
            .enumerate()
            .map(|(row, seq)| {
                let pos = if self.eos_token_id == 2 {
                    // First maximal element, as torch.argmax.
                    let mut best = 0;
                    for (i, v) in seq.iter().enumerate() {
                        if *v > seq[best] {
                            best = i;
                        }
                    }
                    best
                } else {
                    seq.iter()
                        .position(|v| *v == self.eos_token_id)
                        .unwrap_or(0)
                };
                (row * n + pos) as i64
            })
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [b]), &hidden.device());
        Ok(hidden.clone().reshape([b * n, h]).select(0, index))
    }
}

/// transformers' `CLIPTextModel`.
#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    pub text_model: ClipTextTransformer<B>,
}

impl<B: Backend> ClipTextModel<B> {
    /// Loads from a builder rooted at the checkpoint root (keys `text_model.…`).
    pub fn load(vb: &VarBuilder<B>, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            text_model: ClipTextTransformer::load(&vb.pp("text_model"), cfg)?,
        })
    }

    /// Loads a transformers folder: `config.json` + `model.safetensors`.
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<(Self, ClipTextConfig)> {
        let cfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let weights: PathBuf = dir.join("model.safetensors");
        let store = Arc::new(WeightStore::open(&[weights])?);
        let model = Self::load(&VarBuilder::new(store, device), &cfg)?;
        Ok((model, cfg))
    }

    /// Forward with all hidden states, as `output_hidden_states=True`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<ClipTextOutput<B>> {
        self.text_model.forward(input_ids)
    }

    /// The prompt embedding diffusers feeds the UNet: `last_hidden_state` for `clip_skip` 0,
    /// else `final_layer_norm(hidden_states[-(clip_skip + 1)])`. Runs only the layers needed.
    pub fn encode_prompt(
        &self,
        input_ids: Tensor<B, 2, Int>,
        clip_skip: usize,
    ) -> Result<Tensor<B, 3>> {
        let tm = &self.text_model;
        tm.check_len(&input_ids)?;
        let layers = tm.encoder.layers.len();
        if clip_skip > layers {
            return Err(ModelError::Invalid(format!(
                "clip_skip {clip_skip} exceeds the text encoder's {layers} layers"
            )));
        }
        let states = tm.run(input_ids, layers - clip_skip);
        let x = states
            .into_iter()
            .last()
            .ok_or_else(|| ModelError::Invalid("text encoder produced no states".into()))?;
        Ok(in_dtype(
            tm.final_layer_norm.forward(x),
            default_float_dtype::<B>(),
        ))
    }
}
