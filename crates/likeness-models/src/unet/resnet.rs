//! diffusers' `ResnetBlock2D` (time-conditioned, "default" shift), `Downsample2D` (strided conv)
//! and `Upsample2D` (nearest ×2 then conv).

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::VarBuilder;

/// diffusers' `ResnetBlock2D` with `time_embedding_norm="default"`, pre-norm, SiLU.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub time_emb_proj: Linear<B>,
    pub norm2: GroupNorm<B>,
    pub dropout: Dropout,
    pub conv2: Conv2d<B>,
    /// 1×1 conv on the skip path, present when the channel count changes.
    pub conv_shortcut: Option<Conv2d<B>>,
    pub output_scale_factor: f64,
}

/// Shapes and norms of one [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub dropout: f64,
    pub output_scale_factor: f64,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// Loads the block's weights under `vb`.
    pub fn load(vb: &VarBuilder<B>, c: &ResnetConfig) -> Result<Self> {
        let (ci, co) = (c.in_channels, c.out_channels);
        let conv_shortcut = if ci != co {
            Some(Conv2d::load(&vb.pp("conv_shortcut"), ci, co, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::load(&vb.pp("norm1"), c.groups, ci, c.eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), ci, co, 3, 1, 1)?,
            time_emb_proj: Linear::load(&vb.pp("time_emb_proj"), c.temb_channels, co, true)?,
            norm2: GroupNorm::load(&vb.pp("norm2"), c.groups, co, c.eps)?,
            dropout: Dropout { prob: c.dropout },
            conv2: Conv2d::load(&vb.pp("conv2"), co, co, 3, 1, 1)?,
            conv_shortcut,
            output_scale_factor: c.output_scale_factor,
        })
    }

    /// `x` [N, C_in, H, W]; `temb_act` is SiLU(time embedding) [N, T] (diffusers applies the
    /// activation inside every block; the caller computes it once instead — same numbers).
    pub fn forward(&self, x: Tensor<B, 4>, temb_act: Tensor<B, 2>) -> Tensor<B, 4> {
        let h = self.conv1.forward(self.norm1.forward_silu(x.clone()));
        let t: Tensor<B, 4> = self.time_emb_proj.forward(temb_act).unsqueeze_dims(&[2, 3]);
        let h = self.norm2.forward_silu(h + t);
        let h = self.conv2.forward(self.dropout.forward(h));
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = skip + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out.div_scalar(self.output_scale_factor)
        }
    }
}

/// diffusers' `Downsample2D` with `use_conv=True`: a 3×3 conv with stride 2.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    /// Loads `conv` (channels → channels, stride 2, padding `padding`).
    pub fn load(vb: &VarBuilder<B>, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(&vb.pp("conv"), channels, channels, 3, 2, padding)?,
        })
    }

    /// [N, C, H, W] → [N, C, ⌈H/2⌉, ⌈W/2⌉].
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward(x)
    }
}

/// diffusers' `Upsample2D` with `use_conv=True`: nearest-neighbour upsampling, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// Loads `conv` (channels → channels, 3×3, padding 1).
    pub fn load(vb: &VarBuilder<B>, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(&vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// Upsamples to `size` ([H, W]; ×2 when `None`) with PyTorch's "nearest" rule, then convolves.
    pub fn forward(&self, x: Tensor<B, 4>, size: Option<[usize; 2]>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([h * 2, w * 2]);
        // Burn's nearest maps out → floor(out · in/out), as torch's `mode="nearest"` does.
        let up = interpolate(x, size, InterpolateOptions::new(InterpolateMode::Nearest));
        self.conv.forward(up)
    }
}
