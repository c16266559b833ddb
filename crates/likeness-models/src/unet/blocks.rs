//! The UNet's down, mid and up blocks: diffusers' `CrossAttnDownBlock2D` / `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn` and `CrossAttnUpBlock2D` / `UpBlock2D`.

use burn::prelude::*;

use super::attention::{Transformer2DModel, TransformerConfig};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::error::Result;
use crate::weights::VarBuilder;

const SKIPS_CHECKED: &str = "skip connections are checked by UNet2DConditionConfig::validate";

/// A down block: `CrossAttnDownBlock2D` when `attentions` is non-empty (one Transformer2DModel
/// after each resnet), `DownBlock2D` when it is empty; `downsamplers` holds 0 or 1 layer.
#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownBlock<B> {
    /// Loads `num_layers` resnets (first from `in_channels`), the attentions when `attn` is
    /// given (with `in_channels` set per layer here), and a downsampler when `add_downsample`.
    pub fn load(
        vb: &VarBuilder<B>,
        num_layers: usize,
        resnet: ResnetConfig,
        attn: Option<TransformerConfig>,
        add_downsample: bool,
        downsample_padding: usize,
    ) -> Result<Self> {
        let out = resnet.out_channels;
        let mut resnets = Vec::with_capacity(num_layers);
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let rc = ResnetConfig {
                in_channels: if i == 0 { resnet.in_channels } else { out },
                ..resnet
            };
            resnets.push(ResnetBlock2D::load(&vb.pp("resnets").pp(i), &rc)?);
            if let Some(tc) = &attn {
                attentions.push(Transformer2DModel::load(&vb.pp("attentions").pp(i), tc)?);
            }
        }
        let downsamplers = if add_downsample {
            vec![Downsample2D::load(
                &vb.pp("downsamplers").pp(0),
                out,
                downsample_padding,
            )?]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets,
            attentions,
            downsamplers,
        })
    }

    /// Runs the block, pushing every intermediate state the up path will use onto `skips`.
    pub fn forward(
        &self,
        mut x: Tensor<B, 4>,
        temb_act: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, temb_act.clone());
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context.clone());
            }
            skips.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// diffusers' `UNetMidBlock2DCrossAttn`: resnet, then (attention, resnet) per layer.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> UNetMidBlock2DCrossAttn<B> {
    /// Loads the one-layer mid block (two resnets around one transformer).
    pub fn load(vb: &VarBuilder<B>, resnet: ResnetConfig, attn: TransformerConfig) -> Result<Self> {
        Ok(Self {
            resnets: vec![
                ResnetBlock2D::load(&vb.pp("resnets").pp(0), &resnet)?,
                ResnetBlock2D::load(&vb.pp("resnets").pp(1), &resnet)?,
            ],
            attentions: vec![Transformer2DModel::load(&vb.pp("attentions").pp(0), &attn)?],
        })
    }

    /// [N, C, H, W] → [N, C, H, W].
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb_act: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let mut resnets = self.resnets.iter();
        let mut x = match resnets.next() {
            Some(first) => first.forward(x, temb_act.clone()),
            None => x,
        };
        for (attn, resnet) in self.attentions.iter().zip(resnets) {
            x = attn.forward(x, context.clone());
            x = resnet.forward(x, temb_act.clone());
        }
        x
    }
}

/// An up block: `CrossAttnUpBlock2D` when `attentions` is non-empty, `UpBlock2D` when empty;
/// `upsamplers` holds 0 or 1 layer.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
    pub upsamplers: Vec<Upsample2D<B>>,
}

/// Channel counts of one up block, named as in diffusers' `get_up_block`.
#[derive(Debug, Clone, Copy)]
pub struct UpBlockChannels {
    pub in_channels: usize,
    pub prev_output_channel: usize,
    pub out_channels: usize,
}

impl<B: Backend> UpBlock<B> {
    /// Loads `num_layers` resnets whose inputs concatenate a skip connection, the attentions
    /// when `attn` is given, and an upsampler when `add_upsample`.
    pub fn load(
        vb: &VarBuilder<B>,
        num_layers: usize,
        ch: UpBlockChannels,
        resnet: ResnetConfig,
        attn: Option<TransformerConfig>,
        add_upsample: bool,
    ) -> Result<Self> {
        let out = ch.out_channels;
        let mut resnets = Vec::with_capacity(num_layers);
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let res_skip = if i == num_layers - 1 {
                ch.in_channels
            } else {
                out
            };
            let res_in = if i == 0 { ch.prev_output_channel } else { out };
            let rc = ResnetConfig {
                in_channels: res_in + res_skip,
                out_channels: out,
                ..resnet
            };
            resnets.push(ResnetBlock2D::load(&vb.pp("resnets").pp(i), &rc)?);
            if let Some(tc) = &attn {
                attentions.push(Transformer2DModel::load(&vb.pp("attentions").pp(i), tc)?);
            }
        }
        let upsamplers = if add_upsample {
            vec![Upsample2D::load(&vb.pp("upsamplers").pp(0), out)?]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets,
            attentions,
            upsamplers,
        })
    }

    /// Runs the block, popping one skip connection per resnet from `skips`. The upsampler
    /// targets the size of the next skip on the stack: that is ×2 when the input size is a
    /// multiple of 2^(number of upsamplers) and diffusers' `upsample_size` otherwise.
    pub fn forward(
        &self,
        mut x: Tensor<B, 4>,
        temb_act: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect(SKIPS_CHECKED);
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), temb_act.clone());
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context.clone());
            }
        }
        for up in &self.upsamplers {
            let size = skips.last().map(|s| {
                let [_, _, h, w] = s.dims();
                [h, w]
            });
            x = up.forward(x, size);
        }
        x
    }
}
