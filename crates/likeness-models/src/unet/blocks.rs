//! The UNet's down, mid and up blocks: diffusers' `CrossAttnDownBlock2D` / `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn` and `CrossAttnUpBlock2D` / `UpBlock2D`: their layers. How the layers
//! connect (the skip connections) is the UNet's plan, in `plan.rs`.

use burn::prelude::*;

use super::attention::{Transformer2DModel, TransformerConfig};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::error::Result;
use crate::weights::VarBuilder;

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
}
