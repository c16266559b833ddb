//! diffusers' `AutoencoderKL` (the Stable Diffusion VAE): an encoder from images to a diagonal
//! Gaussian over latents, and a decoder from latents back to images.
//!
//! Field names follow diffusers 0.35 so a weight key such as
//! `decoder.up_blocks.0.resnets.1.conv2.weight` reads as a field path.

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use serde::Deserialize;

use crate::error::{ModelError, Result, read_json};
use crate::nn::{Conv2d, GroupNorm, Linear, default_float_dtype, in_dtype, multi_head_attention};
use crate::weights::{VarBuilder, WeightStore};

/// Every norm of the diffusers VAE uses this eps (`resnet_eps=1e-6` and `GroupNorm(eps=1e-6)`).
const EPS: f64 = 1e-6;

/// `AutoencoderKL`'s `config.json`; defaults are diffusers' constructor defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Tile size in pixels; a `[h, w]` list in some configs, of which the first is kept.
    #[serde(deserialize_with = "sample_size_de")]
    pub sample_size: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics some VAEs ship; SD 1.x/2.x pipelines do not use them.
    pub latents_mean: Option<Vec<f64>>,
    /// See `latents_mean`.
    pub latents_std: Option<Vec<f64>>,
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN_BLOCK.to_string()],
            up_block_types: vec![UP_BLOCK.to_string()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".to_string(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

const DOWN_BLOCK: &str = "DownEncoderBlock2D";
const UP_BLOCK: &str = "UpDecoderBlock2D";

fn sample_size_de<'de, D: serde::Deserializer<'de>>(de: D) -> std::result::Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum SampleSize {
        One(usize),
        Many(Vec<usize>),
    }
    match SampleSize::deserialize(de)? {
        SampleSize::One(n) => Ok(n),
        SampleSize::Many(v) => v
            .first()
            .copied()
            .ok_or_else(|| serde::de::Error::custom("sample_size is an empty list")),
    }
}

impl AutoencoderKLConfig {
    /// The VAE shipped with Stable Diffusion 1.5 (and, but for `sample_size` 768, with 2.1).
    pub fn sd() -> Self {
        Self {
            down_block_types: vec![DOWN_BLOCK.to_string(); 4],
            up_block_types: vec![UP_BLOCK.to_string(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 512,
            scaling_factor: 0.18215,
            ..Self::default()
        }
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Rejects what this implementation does not support, naming the field; `path` is the
    /// file errors should point at.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if let Some(t) = self.down_block_types.iter().find(|t| *t != DOWN_BLOCK) {
            return Err(ModelError::unsupported(path, "down_block_types", t));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != UP_BLOCK) {
            return Err(ModelError::unsupported(path, "up_block_types", t));
        }
        // diffusers' get_activation maps both names to SiLU.
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(ModelError::unsupported(path, "act_fn", &self.act_fn));
        }
        if let Some(s) = self.shift_factor {
            return Err(ModelError::unsupported(path, "shift_factor", s));
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(ModelError::config(path, "block_out_channels is empty"));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(ModelError::config(
                path,
                format!(
                    "block_out_channels has {n} entries but down_block_types has {} and \
                     up_block_types {}",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err(ModelError::config(
                path,
                "in_channels, out_channels and latent_channels must be positive",
            ));
        }
        let g = self.norm_num_groups;
        if g == 0 {
            return Err(ModelError::config(path, "norm_num_groups must be positive"));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % g != 0)
        {
            return Err(ModelError::config(
                path,
                format!(
                    "block_out_channels entry {c} is not a positive multiple of norm_num_groups {g}"
                ),
            ));
        }
        if self.scaling_factor == 0.0 || !self.scaling_factor.is_finite() {
            return Err(ModelError::unsupported(
                path,
                "scaling_factor",
                self.scaling_factor,
            ));
        }
        Ok(())
    }

    /// How many pixels one latent cell spans per side: 2^(len(block_out_channels) - 1).
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

/// diffusers' `ResnetBlock2D` without a time embedding (`temb_channels=None`), output scale 1.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    pub conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// Loads a block from `c_in` to `c_out` channels; a 1×1 shortcut conv when they differ.
    pub fn load(vb: &VarBuilder<B>, c_in: usize, c_out: usize, groups: usize) -> Result<Self> {
        let conv_shortcut = if c_in != c_out {
            Some(Conv2d::load(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::load(&vb.pp("norm1"), groups, c_in, EPS)?,
            conv1: Conv2d::load(&vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            norm2: GroupNorm::load(&vb.pp("norm2"), groups, c_out, EPS)?,
            conv2: Conv2d::load(&vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut,
        })
    }

    /// `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`, the shortcut projected when needed.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(self.norm1.forward_silu(x.clone()));
        let h = self.conv2.forward(self.norm2.forward_silu(h));
        let x = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        // diffusers divides by output_scale_factor, which is 1 in every VAE block.
        x + h
    }
}

/// diffusers' `Downsample2D` with `padding=0`: pad right and bottom by one, then a stride-2 conv.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    /// Loads the 3×3 stride-2 conv over `channels`.
    pub fn load(vb: &VarBuilder<B>, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(&vb.pp("conv"), channels, channels, 3, 2, 0)?,
        })
    }

    /// Halves the spatial size.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        // F.pad(x, (0, 1, 0, 1)): (left, right, top, bottom). Padded in the backend's float
        // dtype: Flex pads half-precision tensors with f32 storage (the conv casts back).
        let x = in_dtype(x, default_float_dtype::<B>());
        self.conv.forward(x.pad((0, 1, 0, 1), 0.0f32))
    }
}

/// diffusers' `Upsample2D` with a conv: nearest-neighbour ×2, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// Loads the 3×3 conv over `channels`.
    pub fn load(vb: &VarBuilder<B>, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(&vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// Doubles the spatial size.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward(upsample_nearest2x(x))
    }
}

/// `F.interpolate(x, scale_factor=2.0, mode="nearest")`, done by broadcasting so that it is exact
/// on every backend whatever its interpolation coordinate convention.
fn upsample_nearest2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1])
        .expand([n, c, h, 2, w, 2])
        .reshape([n, c, 2 * h, 2 * w])
}

/// `layers` resnets under `resnets.i`, the first from `c_in` channels, all to `c_out`.
fn load_resnets<B: Backend>(
    vb: &VarBuilder<B>,
    c_in: usize,
    c_out: usize,
    layers: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock2D<B>>> {
    (0..layers)
        .map(|i| {
            let c = if i == 0 { c_in } else { c_out };
            ResnetBlock2D::load(&vb.pp("resnets").pp(i), c, c_out, groups)
        })
        .collect()
}

/// diffusers' `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty in the last block (diffusers' `None`).
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownEncoderBlock2D<B> {
    /// Loads `layers` resnets from `c_in` to `c_out`, and a downsampler when `downsample`.
    pub fn load(
        vb: &VarBuilder<B>,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
    ) -> Result<Self> {
        let resnets = load_resnets(vb, c_in, c_out, layers, groups)?;
        let downsamplers = if downsample {
            vec![Downsample2D::load(&vb.pp("downsamplers").pp(0), c_out)?]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets,
            downsamplers,
        })
    }

    /// Resnets, then the downsampler.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x));
        self.downsamplers.iter().fold(x, |x, d| d.forward(x))
    }
}

/// diffusers' `UpDecoderBlock2D` (no time embedding).
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty in the last block (diffusers' `None`).
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpDecoderBlock2D<B> {
    /// Loads `layers` resnets from `c_in` to `c_out`, and an upsampler when `upsample`.
    pub fn load(
        vb: &VarBuilder<B>,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
    ) -> Result<Self> {
        let resnets = load_resnets(vb, c_in, c_out, layers, groups)?;
        let upsamplers = if upsample {
            vec![Upsample2D::load(&vb.pp("upsamplers").pp(0), c_out)?]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets,
            upsamplers,
        })
    }

    /// Resnets, then the upsampler.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x));
        self.upsamplers.iter().fold(x, |x, u| u.forward(x))
    }
}

/// diffusers' `Attention` as the VAE mid block builds it: group norm first, one head over all
/// channels, a residual connection, `rescale_output_factor` 1.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub group_norm: GroupNorm<B>,
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    /// `to_out.0`; diffusers' `to_out.1` is a dropout.
    pub to_out: Vec<Linear<B>>,
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    /// Loads a self-attention over `channels`, accepting the pre-0.14 names
    /// (`query`, `key`, `value`, `proj_attn`) that old VAE folders still carry.
    pub fn load(vb: &VarBuilder<B>, channels: usize, groups: usize) -> Result<Self> {
        // The same fallback diffusers applies in `_convert_deprecated_attention_blocks`.
        let pick = |new: &str, old: &str| {
            let new_key = format!("{new}.weight");
            let old_key = format!("{old}.weight");
            if !vb.contains(&new_key) && vb.contains(&old_key) {
                vb.pp(old)
            } else {
                vb.pp(new)
            }
        };
        let linear = |vb: VarBuilder<B>| Linear::load(&vb, channels, channels, true);
        Ok(Self {
            group_norm: GroupNorm::load(&vb.pp("group_norm"), groups, channels, EPS)?,
            to_q: linear(pick("to_q", "query"))?,
            to_k: linear(pick("to_k", "key"))?,
            to_v: linear(pick("to_v", "value"))?,
            to_out: vec![linear(pick("to_out.0", "proj_attn"))?],
            // heads = in_channels // attention_head_dim with attention_head_dim = in_channels.
            heads: 1,
        })
    }

    /// Self-attention over the H·W positions, added to the input.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        // diffusers flattens to [N, HW, C] and normalises over channels transposed back; the
        // group norm is the same on the [N, C, HW] view.
        let normed: Tensor<B, 3> = self.group_norm.forward(x.clone().reshape([n, c, h * w]));
        let hs = normed.swap_dims(1, 2);
        let q = self.to_q.forward(hs.clone());
        let k = self.to_k.forward(hs.clone());
        let v = self.to_v.forward(hs);
        let mut out = multi_head_attention(q, k, v, self.heads, false);
        for proj in &self.to_out {
            out = proj.forward(out);
        }
        let out: Tensor<B, 4> = out.swap_dims(1, 2).reshape([n, c, h, w]);
        out + x
    }
}

/// diffusers' `UNetMidBlock2D` with one layer and no time embedding.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D<B: Backend> {
    /// One attention, or none when `mid_block_add_attention` is false.
    pub attentions: Vec<Attention<B>>,
    pub resnets: Vec<ResnetBlock2D<B>>,
}

impl<B: Backend> UNetMidBlock2D<B> {
    /// Loads resnet, attention (when `attention`), resnet over `channels`.
    pub fn load(
        vb: &VarBuilder<B>,
        channels: usize,
        groups: usize,
        attention: bool,
    ) -> Result<Self> {
        let attentions = if attention {
            vec![Attention::load(
                &vb.pp("attentions").pp(0),
                channels,
                groups,
            )?]
        } else {
            Vec::new()
        };
        let resnets = (0..2)
            .map(|i| ResnetBlock2D::load(&vb.pp("resnets").pp(i), channels, channels, groups))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            attentions,
            resnets,
        })
    }

    /// `resnets[0]`, then for each layer its attention (if any) and the next resnet.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = x;
        for (i, resnet) in self.resnets.iter().enumerate() {
            if i > 0
                && let Some(attn) = self.attentions.get(i - 1)
            {
                x = attn.forward(x);
            }
            x = resnet.forward(x);
        }
        x
    }
}

/// diffusers' VAE `Encoder` with `double_z=True`: outputs mean and logvar stacked on channels.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    pub mid_block: UNetMidBlock2D<B>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    /// Loads the encoder of `cfg` (assumed validated).
    pub fn load(vb: &VarBuilder<B>, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let last = ch.len() - 1;
        let down_blocks = ch
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                DownEncoderBlock2D::load(
                    &vb.pp("down_blocks").pp(i),
                    c_in,
                    c_out,
                    cfg.layers_per_block,
                    g,
                    i != last,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block: UNetMidBlock2D::load(
                &vb.pp("mid_block"),
                ch[last],
                g,
                cfg.mid_block_add_attention,
            )?,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), g, ch[last], EPS)?,
            conv_out: Conv2d::load(
                &vb.pp("conv_out"),
                ch[last],
                2 * cfg.latent_channels,
                3,
                1,
                1,
            )?,
        })
    }

    /// Image [N, in, H, W] → moments [N, 2·latent, H/f, W/f].
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.conv_in.forward(x);
        let x = self.down_blocks.iter().fold(x, |x, b| b.forward(x));
        let x = self.mid_block.forward(x);
        self.conv_out.forward(self.conv_norm_out.forward_silu(x))
    }
}

/// diffusers' VAE `Decoder` with group norms (`norm_type="group"`).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid_block: UNetMidBlock2D<B>,
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    /// Loads the decoder of `cfg` (assumed validated).
    pub fn load(vb: &VarBuilder<B>, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let last = rev.len() - 1;
        let up_blocks = rev
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                UpDecoderBlock2D::load(
                    &vb.pp("up_blocks").pp(i),
                    c_in,
                    c_out,
                    cfg.layers_per_block + 1,
                    g,
                    i != last,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?,
            mid_block: UNetMidBlock2D::load(
                &vb.pp("mid_block"),
                rev[0],
                g,
                cfg.mid_block_add_attention,
            )?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), g, rev[last], EPS)?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), rev[last], cfg.out_channels, 3, 1, 1)?,
        })
    }

    /// Latents [N, latent, h, w] → image [N, out, h·f, w·f].
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.conv_in.forward(z);
        let x = self.mid_block.forward(x);
        let x = self.up_blocks.iter().fold(x, |x, b| b.forward(x));
        self.conv_out.forward(self.conv_norm_out.forward_silu(x))
    }
}

/// diffusers' `DiagonalGaussianDistribution`: the posterior `encode` returns.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian<B: Backend> {
    pub mean: Tensor<B, 4>,
    /// Clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> DiagonalGaussian<B> {
    /// Splits encoder moments [N, 2L, h, w] into mean and clamped logvar.
    pub fn from_moments(moments: Tensor<B, 4>) -> Self {
        let l = moments.dims()[1] / 2;
        let mean = moments.clone().narrow(1, 0, l);
        let logvar = moments.narrow(1, l, l).clamp(-30.0, 20.0);
        Self { mean, logvar }
    }

    /// Standard deviation `exp(0.5 · logvar)`.
    pub fn std(&self) -> Tensor<B, 4> {
        (self.logvar.clone() * 0.5).exp()
    }

    /// `mean + std · noise`, with `noise` drawn from N(0, 1) in the mean's shape by the caller.
    pub fn sample(&self, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        self.mean.clone() + self.std() * noise
    }

    /// The mean, as diffusers' `mode()`.
    pub fn mode(&self) -> Tensor<B, 4> {
        self.mean.clone()
    }
}

/// diffusers' `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    pub encoder: Encoder<B>,
    pub decoder: Decoder<B>,
    pub quant_conv: Option<Conv2d<B>>,
    pub post_quant_conv: Option<Conv2d<B>>,
    #[module(skip)]
    pub config: AutoencoderKLConfig,
}

impl<B: Backend> AutoencoderKL<B> {
    /// Validates `cfg` and loads every weight from `vb` (rooted at the VAE's keys).
    pub fn load(vb: &VarBuilder<B>, cfg: &AutoencoderKLConfig) -> Result<Self> {
        cfg.validate(&vb.store().display_path())?;
        let l = cfg.latent_channels;
        let quant_conv = if cfg.use_quant_conv {
            Some(Conv2d::load(&vb.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(Conv2d::load(&vb.pp("post_quant_conv"), l, l, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::load(&vb.pp("encoder"), cfg)?,
            decoder: Decoder::load(&vb.pp("decoder"), cfg)?,
            quant_conv,
            post_quant_conv,
            config: cfg.clone(),
        })
    }

    /// Loads a diffusers `vae/` folder: `config.json` and `diffusion_pytorch_model.safetensors`
    /// (or its `.fp16` variant). Weights the model has no place for are reported with a warning.
    pub fn load_from_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        let cfg = AutoencoderKLConfig::from_file(&dir.join("config.json"))?;
        let weights = crate::sd::part_weights(dir, "diffusion_pytorch_model")?;
        let store = Arc::new(WeightStore::open(&[weights])?);
        let vb = VarBuilder::new(store.clone(), device);
        let model = Self::load(&vb, &cfg)?;
        let unused = store.unused_keys();
        if !unused.is_empty() {
            tracing::warn!(
                path = %store.display_path().display(),
                count = unused.len(),
                keys = ?unused,
                "VAE weights not used by the model"
            );
        }
        Ok(model)
    }

    /// Image in [-1, 1], [N, in, H, W] → posterior over latents [N, latent, H/f, W/f].
    pub fn encode(&self, x: Tensor<B, 4>) -> DiagonalGaussian<B> {
        let h = self.encoder.forward(x);
        let h = match &self.quant_conv {
            Some(conv) => conv.forward(h),
            None => h,
        };
        // Moments in the backend's float dtype whatever the weights' (mixed precision).
        DiagonalGaussian::from_moments(in_dtype(h, default_float_dtype::<B>()))
    }

    /// Raw decode of latents (already divided by the scaling factor) into an image in about [-1, 1].
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        in_dtype(self.decoder.forward(z), default_float_dtype::<B>())
    }

    /// diffusers' `forward` without sampling: decode of the posterior's mode.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decode(self.encode(x).mode())
    }

    /// Latents are multiplied by this before the UNet and divided by it before `decode`.
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// Pixels per latent cell per side.
    pub fn downscale_factor(&self) -> usize {
        self.config.downscale_factor()
    }

    /// Channels of the latent space.
    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }
}
