//! The UNet's wiring as a list of layer steps: which layer runs on which earlier value (the down
//! path's skip connections included). The forward pass runs it in order; gradient checkpointing
//! (`checkpoint.rs`) keeps every step's output, runs the list backwards and recomputes one step
//! at a time under autodiff.

use burn::prelude::*;
use burn::tensor::DType;

use super::UNet2DConditionModel;

const SKIPS_CHECKED: &str = "skip connections are checked by UNet2DConditionConfig::validate";

/// One layer of the UNet, by its place in diffusers' module tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    ConvIn,
    DownResnet {
        block: usize,
        layer: usize,
    },
    DownAttention {
        block: usize,
        layer: usize,
    },
    Downsample {
        block: usize,
    },
    MidResnet {
        layer: usize,
    },
    MidAttention {
        layer: usize,
    },
    /// Takes the hidden state and one skip connection, concatenated on channels.
    UpResnet {
        block: usize,
        layer: usize,
    },
    UpAttention {
        block: usize,
        layer: usize,
    },
    /// Upsamples to the size of the skip connection the next up block takes.
    Upsample {
        block: usize,
    },
    /// `conv_norm_out` + SiLU + `conv_out`, answered in the sample's dtype.
    Out,
}

/// A layer and the values it reads. Value 0 is the sample; step `k` writes value `k + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub layer: Layer,
    pub input: usize,
    /// The skip connection of an up resnet; for an upsampler, the value whose size it targets.
    pub extra: Option<usize>,
}

impl Step {
    /// The value ids the step reads.
    pub fn reads(&self) -> impl Iterator<Item = usize> {
        std::iter::once(self.input).chain(self.extra)
    }

    /// Runs the step's layer of `unet` on `input` (and `extra`, see [`Step::extra`]), with the
    /// time embedding's SiLU `temb_act` and the text `context`; `out_dtype` is the sample's.
    pub fn run<B: Backend>(
        &self,
        unet: &UNet2DConditionModel<B>,
        input: Tensor<B, 4>,
        extra: Option<Tensor<B, 4>>,
        temb_act: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        out_dtype: DType,
    ) -> Tensor<B, 4> {
        let x = input;
        match self.layer {
            Layer::ConvIn => unet.conv_in.forward(x),
            Layer::DownResnet { block, layer } => {
                unet.down_blocks[block].resnets[layer].forward(x, temb_act.clone())
            }
            Layer::DownAttention { block, layer } => {
                unet.down_blocks[block].attentions[layer].forward(x, context.clone())
            }
            Layer::Downsample { block } => unet.down_blocks[block].downsamplers[0].forward(x),
            Layer::MidResnet { layer } => {
                unet.mid_block.resnets[layer].forward(x, temb_act.clone())
            }
            Layer::MidAttention { layer } => {
                unet.mid_block.attentions[layer].forward(x, context.clone())
            }
            Layer::UpResnet { block, layer } => {
                let skip = extra.expect("an up resnet reads a skip connection");
                unet.up_blocks[block].resnets[layer]
                    .forward(Tensor::cat(vec![x, skip], 1), temb_act.clone())
            }
            Layer::UpAttention { block, layer } => {
                unet.up_blocks[block].attentions[layer].forward(x, context.clone())
            }
            Layer::Upsample { block } => {
                let size = extra.map(|s| {
                    let [_, _, h, w] = s.dims();
                    [h, w]
                });
                unet.up_blocks[block].upsamplers[0].forward(x, size)
            }
            Layer::Out => {
                let out = unet.conv_out.forward(unet.conv_norm_out.forward_silu(x));
                crate::nn::in_dtype(out, out_dtype)
            }
        }
    }
}

/// The steps of `unet`'s forward pass, in order; the last one's output is the prediction.
pub fn plan<B: Backend>(unet: &UNet2DConditionModel<B>) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut push = |layer, input, extra| {
        steps.push(Step {
            layer,
            input,
            extra,
        });
        steps.len()
    };
    let mut x = push(Layer::ConvIn, 0, None);
    // Every state the up path takes again: conv_in's output, each down layer's, each
    // downsampler's.
    let mut skips = vec![x];
    for (block, b) in unet.down_blocks.iter().enumerate() {
        for layer in 0..b.resnets.len() {
            x = push(Layer::DownResnet { block, layer }, x, None);
            if layer < b.attentions.len() {
                x = push(Layer::DownAttention { block, layer }, x, None);
            }
            skips.push(x);
        }
        if !b.downsamplers.is_empty() {
            x = push(Layer::Downsample { block }, x, None);
            skips.push(x);
        }
    }
    let mid = &unet.mid_block;
    if !mid.resnets.is_empty() {
        x = push(Layer::MidResnet { layer: 0 }, x, None);
    }
    for layer in 0..mid
        .attentions
        .len()
        .min(mid.resnets.len().saturating_sub(1))
    {
        x = push(Layer::MidAttention { layer }, x, None);
        x = push(Layer::MidResnet { layer: layer + 1 }, x, None);
    }
    for (block, b) in unet.up_blocks.iter().enumerate() {
        for layer in 0..b.resnets.len() {
            let skip = skips.pop().expect(SKIPS_CHECKED);
            x = push(Layer::UpResnet { block, layer }, x, Some(skip));
            if layer < b.attentions.len() {
                x = push(Layer::UpAttention { block, layer }, x, None);
            }
        }
        // The upsampler targets the size of the next skip on the stack: ×2 when the input size
        // is a multiple of 2^(number of upsamplers), diffusers' `upsample_size` otherwise.
        if !b.upsamplers.is_empty() {
            x = push(Layer::Upsample { block }, x, skips.last().copied());
        }
    }
    push(Layer::Out, x, None);
    steps
}

/// Runs `steps` from `sample`, dropping each value after the last step that reads it; returns
/// the last step's output.
pub fn run<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    steps: &[Step],
    sample: Tensor<B, 4>,
    temb_act: &Tensor<B, 2>,
    context: &Tensor<B, 3>,
    out_dtype: DType,
) -> Tensor<B, 4> {
    run_values(unet, steps, sample, temb_act, context, out_dtype, false)
        .pop()
        .flatten()
        .expect("the plan ends with the output layer")
}

/// Runs `steps` from `sample` and returns every value by id (the sample, then each step's
/// output). With `keep_all` false each value is taken by the last step that reads it (so that an
/// op may reuse its buffer) and only the last step's output is left; with it, all are kept.
pub fn run_values<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    steps: &[Step],
    sample: Tensor<B, 4>,
    temb_act: &Tensor<B, 2>,
    context: &Tensor<B, 3>,
    out_dtype: DType,
    keep_all: bool,
) -> Vec<Option<Tensor<B, 4>>> {
    let mut last_read = vec![None; steps.len() + 1];
    if !keep_all {
        for (k, step) in steps.iter().enumerate() {
            for v in step.reads() {
                last_read[v] = Some(k);
            }
        }
    }
    let mut values: Vec<Option<Tensor<B, 4>>> = Vec::with_capacity(steps.len() + 1);
    values.push(Some(sample));
    for (k, step) in steps.iter().enumerate() {
        let mut read = |v: usize| {
            let value = if last_read[v] == Some(k) {
                values[v].take()
            } else {
                values[v].clone()
            };
            value.expect("the plan reads only values already computed")
        };
        let input = read(step.input);
        let extra = step.extra.map(&mut read);
        let out = step.run(unet, input, extra, temb_act, context, out_dtype);
        values.push(Some(out));
    }
    values
}
