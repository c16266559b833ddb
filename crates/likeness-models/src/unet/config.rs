//! `UNet2DConditionModel`'s `config.json`, with diffusers' defaults and the checks that keep it to
//! what Stable Diffusion 1.x/2.x checkpoints use.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result, read_json};

/// A config value that is either one number for every block or a list with one per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for each of `n` blocks (a list is returned as is; its length is checked elsewhere).
    pub fn expand(&self, n: usize) -> Vec<T> {
        match self {
            PerBlock::One(v) => vec![v.clone(); n],
            PerBlock::Each(v) => v.clone(),
        }
    }

    fn len_ok(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(v) => v.len() == n,
        }
    }
}

impl<T: serde::Serialize> std::fmt::Display for PerBlock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            PerBlock::One(v) => serde_json::to_string(v),
            PerBlock::Each(v) => serde_json::to_string(v),
        };
        f.write_str(&text.unwrap_or_default())
    }
}

/// The kind of a down block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockType {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

/// The kind of an up block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockType {
    CrossAttnUpBlock2D,
    UpBlock2D,
}

/// diffusers' `UNet2DConditionModel` config (fields SD 1.x/2.x use; unknown fields are ignored).
/// Field names, meanings and defaults are diffusers' (`unet_2d_condition.py`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    /// Latent size the model was trained at: one number, or [height, width].
    pub sample_size: Option<PerBlock<usize>>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    /// `null` in the file means "no mid block", which this crate does not support.
    #[serde(default = "default_mid_block_type")]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub dropout: f64,
    pub act_fn: String,
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    /// Kept raw: diffusers also accepts nested lists here; only 1 is supported.
    pub transformer_layers_per_block: Value,
    pub reverse_transformer_layers_per_block: Option<Value>,
    pub encoder_hid_dim: Option<usize>,
    pub encoder_hid_dim_type: Option<String>,
    /// Despite its name, the number of attention heads when `num_attention_heads` is null.
    pub attention_head_dim: PerBlock<usize>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub attention_type: String,
    pub class_embeddings_concat: bool,
    pub mid_block_only_cross_attention: Option<bool>,
    pub cross_attention_norm: Option<String>,
}

fn default_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".to_string())
}

fn default_norm_num_groups() -> Option<usize> {
    Some(32)
}

impl Default for UNet2DConditionConfig {
    /// diffusers' defaults (which are SD 1.x's values but for `cross_attention_dim` 1280).
    fn default() -> Self {
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: default_mid_block_type(),
            up_block_types: [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".to_string(),
            norm_num_groups: default_norm_num_groups(),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: Value::from(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".to_string(),
            time_embedding_type: "positional".to_string(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".to_string(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
        }
    }
}

/// Display for optional strings in error messages, as JSON shows them.
fn show<T: std::fmt::Debug>(v: &Option<T>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "null".to_string(),
    }
}

/// diffusers strips a leading "UNetRes" from block type names.
fn strip_unetres(name: &str) -> &str {
    name.strip_prefix("UNetRes").unwrap_or(name)
}

impl UNet2DConditionConfig {
    /// Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5 `unet/config.json`).
    pub fn sd15() -> Self {
        Self {
            sample_size: Some(PerBlock::One(64)),
            attention_head_dim: PerBlock::One(8),
            cross_attention_dim: PerBlock::One(768),
            ..Self::default()
        }
    }

    /// Stable Diffusion 2.1's UNet (stabilityai/stable-diffusion-2-1 `unet/config.json`).
    pub fn sd21() -> Self {
        Self {
            sample_size: Some(PerBlock::One(96)),
            attention_head_dim: PerBlock::Each(vec![5, 10, 20, 20]),
            cross_attention_dim: PerBlock::One(1024),
            use_linear_projection: true,
            upcast_attention: true,
            ..Self::default()
        }
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: Self = read_json(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Number of down (and up) blocks.
    pub fn num_blocks(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Width of the time embedding fed to every resnet.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels.first().copied().unwrap_or(0) * 4)
    }

    /// `norm_num_groups` (validated to be set).
    pub fn groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(32)
    }

    /// Attention heads of each down block, as diffusers counts them: `num_attention_heads` if set,
    /// else `attention_head_dim` (a historical misnomer kept by diffusers).
    pub fn heads_per_block(&self) -> Vec<usize> {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(self.num_blocks())
    }

    /// Resnets in each down block.
    pub fn layers(&self) -> Vec<usize> {
        self.layers_per_block.expand(self.num_blocks())
    }

    /// Cross-attention (text embedding) width of each down block.
    pub fn cross_dims(&self) -> Vec<usize> {
        self.cross_attention_dim.expand(self.num_blocks())
    }

    /// Down block kinds (validated names).
    pub fn down_types(&self) -> Vec<DownBlockType> {
        self.down_block_types
            .iter()
            .map(|t| match strip_unetres(t) {
                "CrossAttnDownBlock2D" => DownBlockType::CrossAttnDownBlock2D,
                _ => DownBlockType::DownBlock2D,
            })
            .collect()
    }

    /// Up block kinds (validated names).
    pub fn up_types(&self) -> Vec<UpBlockType> {
        self.up_block_types
            .iter()
            .map(|t| match strip_unetres(t) {
                "CrossAttnUpBlock2D" => UpBlockType::CrossAttnUpBlock2D,
                _ => UpBlockType::UpBlock2D,
            })
            .collect()
    }

    /// Checks every field against what this implementation supports; errors name `path` and
    /// the field.
    pub fn validate(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let unsupported =
            |field: &str, value: String| Err(ModelError::unsupported(path, field, value));
        let n = self.num_blocks();
        if n == 0 {
            return Err(ModelError::config(path, "`block_out_channels` is empty"));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(ModelError::config(
                path,
                format!(
                    "`down_block_types` ({}), `up_block_types` ({}) and `block_out_channels` ({n}) must have the same length",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            ));
        }
        for t in &self.down_block_types {
            if !matches!(strip_unetres(t), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return unsupported("down_block_types", format!("{t:?}"));
            }
        }
        for t in &self.up_block_types {
            if !matches!(strip_unetres(t), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return unsupported("up_block_types", format!("{t:?}"));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return unsupported("mid_block_type", show(&self.mid_block_type));
        }
        for (name, ok) in [
            ("layers_per_block", self.layers_per_block.len_ok(n)),
            ("attention_head_dim", self.attention_head_dim.len_ok(n)),
            ("cross_attention_dim", self.cross_attention_dim.len_ok(n)),
            ("only_cross_attention", self.only_cross_attention.len_ok(n)),
        ] {
            if !ok {
                return Err(ModelError::config(
                    path,
                    format!("`{name}` must have one entry per block ({n})"),
                ));
            }
        }
        // diffusers 0.35 refuses `num_attention_heads` outright (see its issue #2011).
        if let Some(h) = &self.num_attention_heads {
            return unsupported("num_attention_heads", h.to_string());
        }
        if self.only_cross_attention.expand(n).iter().any(|&b| b) {
            return unsupported(
                "only_cross_attention",
                self.only_cross_attention.to_string(),
            );
        }
        if self.mid_block_only_cross_attention == Some(true) {
            return unsupported("mid_block_only_cross_attention", "true".to_string());
        }
        let tlpb_ok = match &self.transformer_layers_per_block {
            Value::Number(x) => x.as_u64() == Some(1),
            Value::Array(v) => v.len() == n && v.iter().all(|x| x.as_u64() == Some(1)),
            _ => false,
        };
        if !tlpb_ok {
            return unsupported(
                "transformer_layers_per_block",
                self.transformer_layers_per_block.to_string(),
            );
        }
        if let Some(v) = &self.reverse_transformer_layers_per_block {
            return unsupported("reverse_transformer_layers_per_block", v.to_string());
        }
        if self.center_input_sample {
            return unsupported("center_input_sample", "true".to_string());
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return unsupported("act_fn", format!("{:?}", self.act_fn));
        }
        if self.time_embedding_type != "positional" {
            return unsupported(
                "time_embedding_type",
                format!("{:?}", self.time_embedding_type),
            );
        }
        for (field, value) in [
            ("class_embed_type", &self.class_embed_type),
            ("addition_embed_type", &self.addition_embed_type),
            ("encoder_hid_dim_type", &self.encoder_hid_dim_type),
            ("time_embedding_act_fn", &self.time_embedding_act_fn),
            ("timestep_post_act", &self.timestep_post_act),
            ("cross_attention_norm", &self.cross_attention_norm),
        ] {
            if value.is_some() {
                return unsupported(field, show(value));
            }
        }
        for (field, value) in [
            ("num_class_embeds", &self.num_class_embeds),
            ("encoder_hid_dim", &self.encoder_hid_dim),
            ("time_cond_proj_dim", &self.time_cond_proj_dim),
        ] {
            if value.is_some() {
                return unsupported(field, show(value));
            }
        }
        if self.class_embeddings_concat {
            return unsupported("class_embeddings_concat", "true".to_string());
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention", "true".to_string());
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported(
                "resnet_time_scale_shift",
                format!("{:?}", self.resnet_time_scale_shift),
            );
        }
        if self.attention_type != "default" {
            return unsupported("attention_type", format!("{:?}", self.attention_type));
        }
        // Padding 0 switches diffusers' Downsample2D to an asymmetric pad; not SD's layout.
        if self.downsample_padding != 1 {
            return unsupported("downsample_padding", self.downsample_padding.to_string());
        }
        if self.conv_in_kernel != 3 {
            return unsupported("conv_in_kernel", self.conv_in_kernel.to_string());
        }
        if self.conv_out_kernel != 3 {
            return unsupported("conv_out_kernel", self.conv_out_kernel.to_string());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return unsupported("dropout", self.dropout.to_string());
        }
        if self.mid_block_scale_factor == 0.0 || !self.mid_block_scale_factor.is_finite() {
            return unsupported(
                "mid_block_scale_factor",
                self.mid_block_scale_factor.to_string(),
            );
        }
        let Some(groups) = self.norm_num_groups else {
            return unsupported("norm_num_groups", "null".to_string());
        };
        if groups == 0 {
            return unsupported("norm_num_groups", "0".to_string());
        }
        if self.block_out_channels.contains(&0) || self.time_embed_dim() == 0 {
            return Err(ModelError::config(
                path,
                "`block_out_channels` must be positive",
            ));
        }
        for (i, (&h, &c)) in self
            .heads_per_block()
            .iter()
            .zip(&self.block_out_channels)
            .enumerate()
        {
            if h == 0 || c / h == 0 {
                return Err(ModelError::config(
                    path,
                    format!("block {i}: {h} attention heads for {c} channels"),
                ));
            }
        }
        self.check_channels(path, groups)
    }

    /// Walks the skip connections as diffusers' forward does, so that a config whose up blocks
    /// do not fit its down blocks (or whose channels GroupNorm cannot split) fails here rather
    /// than deep in a forward pass.
    fn check_channels(&self, path: &Path, groups: usize) -> Result<()> {
        let n = self.num_blocks();
        let ch = &self.block_out_channels;
        let layers = self.layers();
        let bad_groups = |what: String, c: usize| {
            Err(ModelError::config(
                path,
                format!("{what}: {c} channels are not divisible by norm_num_groups {groups}"),
            ))
        };
        let mut skips = vec![ch[0]];
        let mut prev = ch[0];
        for i in 0..n {
            for j in 0..layers[i] {
                let c_in = if j == 0 { prev } else { ch[i] };
                if !c_in.is_multiple_of(groups) {
                    return bad_groups(format!("down_blocks.{i}.resnets.{j}"), c_in);
                }
                skips.push(ch[i]);
            }
            if !ch[i].is_multiple_of(groups) {
                return bad_groups(format!("down_blocks.{i}"), ch[i]);
            }
            if i + 1 < n {
                skips.push(ch[i]);
            }
            prev = ch[i];
        }
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut prev_out = rev[0];
        for i in 0..n {
            let out = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let num = layers[n - 1 - i] + 1;
            for j in 0..num {
                let expected_skip = if j == num - 1 { input } else { out };
                let found = skips.pop().unwrap_or(0);
                if found != expected_skip {
                    return Err(ModelError::config(
                        path,
                        format!(
                            "up_blocks.{i}.resnets.{j} expects a {expected_skip}-channel skip connection, the down path gives {found} (layers_per_block / block_out_channels do not fit)"
                        ),
                    ));
                }
                let c_in = (if j == 0 { prev_out } else { out }) + expected_skip;
                if !c_in.is_multiple_of(groups) {
                    return bad_groups(format!("up_blocks.{i}.resnets.{j}"), c_in);
                }
            }
            prev_out = out;
        }
        Ok(())
    }
}
