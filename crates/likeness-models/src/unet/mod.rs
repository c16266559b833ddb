//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x/2.x use it: the noise predictor
//! conditioned on a timestep and a text embedding. Field names are diffusers' so that every
//! weight key (`down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight`) reads
//! as a field path.

pub mod attention;
pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod embeddings;
pub mod plan;
pub mod resnet;

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::activation::silu;

pub use attention::{
    Attention, BasicTransformerBlock, FeedForward, GEGLU, Transformer2DModel, TransformerConfig,
};
pub use blocks::{DownBlock, UNetMidBlock2DCrossAttn, UpBlock, UpBlockChannels};
pub use config::{DownBlockType, PerBlock, UNet2DConditionConfig, UpBlockType};
pub use embeddings::{TimestepEmbedding, Timesteps, get_timestep_embedding};
pub use resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};

use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm};
use crate::weights::{VarBuilder, WeightStore};

/// diffusers' `UNet2DConditionModel` (SD 1.x/2.x subset; see [`UNet2DConditionConfig::validate`]).
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub time_proj: Timesteps,
    pub time_embedding: TimestepEmbedding<B>,
    pub down_blocks: Vec<DownBlock<B>>,
    pub mid_block: UNetMidBlock2DCrossAttn<B>,
    pub up_blocks: Vec<UpBlock<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
    /// The config the model was built from.
    pub config: UNet2DConditionConfig,
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Builds the model from `vb` (rooted at the UNet, keys without prefix), after validating
    /// `cfg`. Shapes follow diffusers' constructor exactly.
    pub fn load(vb: &VarBuilder<B>, cfg: &UNet2DConditionConfig) -> Result<Self> {
        cfg.validate(vb.store().display_path())?;
        let n = cfg.num_blocks();
        let ch = &cfg.block_out_channels;
        let groups = cfg.groups();
        let temb = cfg.time_embed_dim();
        let layers = cfg.layers();
        let heads = cfg.heads_per_block();
        let cross = cfg.cross_dims();
        let resnet = |in_channels, out_channels, output_scale_factor| ResnetConfig {
            in_channels,
            out_channels,
            temb_channels: temb,
            groups,
            eps: cfg.norm_eps,
            dropout: cfg.dropout,
            output_scale_factor,
        };
        // diffusers: Transformer2DModel(heads, out_channels // heads, in_channels=out_channels).
        let transformer = |channels: usize, heads: usize, cross_attention_dim| TransformerConfig {
            in_channels: channels,
            heads,
            dim_head: channels / heads,
            cross_attention_dim,
            groups,
            use_linear_projection: cfg.use_linear_projection,
            upcast_attention: cfg.upcast_attention,
            dropout: cfg.dropout,
        };

        let conv_in = Conv2d::load(
            &vb.pp("conv_in"),
            cfg.in_channels,
            ch[0],
            cfg.conv_in_kernel,
            1,
            (cfg.conv_in_kernel - 1) / 2,
        )?;
        let time_proj = Timesteps {
            num_channels: ch[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            downscale_freq_shift: cfg.freq_shift,
        };
        let time_embedding = TimestepEmbedding::load(&vb.pp("time_embedding"), ch[0], temb)?;

        let mut down_blocks = Vec::with_capacity(n);
        let mut output_channel = ch[0];
        for (i, kind) in cfg.down_types().into_iter().enumerate() {
            let input_channel = output_channel;
            output_channel = ch[i];
            let attn = (kind == DownBlockType::CrossAttnDownBlock2D)
                .then(|| transformer(output_channel, heads[i], cross[i]));
            down_blocks.push(DownBlock::load(
                &vb.pp("down_blocks").pp(i),
                layers[i],
                resnet(input_channel, output_channel, 1.0),
                attn,
                i + 1 < n,
                cfg.downsample_padding,
            )?);
        }

        let last = ch[n - 1];
        let mid_block = UNetMidBlock2DCrossAttn::load(
            &vb.pp("mid_block"),
            resnet(last, last, cfg.mid_block_scale_factor),
            transformer(last, heads[n - 1], cross[n - 1]),
        )?;

        let rev_ch: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut output_channel = rev_ch[0];
        for (i, kind) in cfg.up_types().into_iter().enumerate() {
            let prev_output_channel = output_channel;
            output_channel = rev_ch[i];
            let input_channel = rev_ch[(i + 1).min(n - 1)];
            let r = n - 1 - i;
            let attn = (kind == UpBlockType::CrossAttnUpBlock2D)
                .then(|| transformer(output_channel, heads[r], cross[r]));
            up_blocks.push(UpBlock::load(
                &vb.pp("up_blocks").pp(i),
                layers[r] + 1,
                UpBlockChannels {
                    in_channels: input_channel,
                    prev_output_channel,
                    out_channels: output_channel,
                },
                resnet(0, 0, 1.0),
                attn,
                i + 1 < n,
            )?);
        }

        let conv_norm_out = GroupNorm::load(&vb.pp("conv_norm_out"), groups, ch[0], cfg.norm_eps)?;
        let conv_out = Conv2d::load(
            &vb.pp("conv_out"),
            ch[0],
            cfg.out_channels,
            cfg.conv_out_kernel,
            1,
            (cfg.conv_out_kernel - 1) / 2,
        )?;
        Ok(Self {
            conv_in,
            time_proj,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            config: cfg.clone(),
        })
    }

    /// Loads a diffusers `unet/` folder: `config.json` and `diffusion_pytorch_model.safetensors`
    /// (or `diffusion_pytorch_model.fp16.safetensors` when the former is absent). Keys the model
    /// does not use are reported with a warning.
    /// How much smaller the innermost feature map is than the input (2^(blocks − 1)).
    pub fn downscale_factor(&self) -> usize {
        1 << self.config.num_blocks().saturating_sub(1)
    }

    /// Latent channels the model takes.
    pub fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    /// The latent size the model was trained at (64 for SD 1.5).
    pub fn sample_size(&self) -> usize {
        match &self.config.sample_size {
            Some(s) => s.expand(1).first().copied().unwrap_or(64),
            None => 64,
        }
    }

    pub fn load_from_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = UNet2DConditionConfig::from_file(dir.join("config.json"))?;
        let weights = crate::sd::part_weights(dir, "diffusion_pytorch_model")?;
        let store = Arc::new(WeightStore::open(std::slice::from_ref(&weights))?);
        let model = Self::load(&VarBuilder::new(store.clone(), device), &cfg)?;
        let unused = store.unused_keys();
        if !unused.is_empty() {
            tracing::warn!(
                file = %weights.display(),
                count = unused.len(),
                keys = ?unused,
                "UNet weights not used by the model"
            );
        }
        Ok(model)
    }

    /// Predicts the noise (or v) for `sample` `[N, in_channels, H, W]` at `timesteps` (`[N]` or `[1]`,
    /// float) given `encoder_hidden_states` [N, L, cross_attention_dim]; returns
    /// [N, out_channels, H, W].
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        // The prediction comes back in the sample's dtype whatever the weights' (mixed precision).
        let out_dtype = sample.dtype();
        let temb_act = self.time_embedding_act(timesteps, sample.dims()[0]);
        plan::run(
            self,
            &plan::plan(self),
            sample,
            &temb_act,
            &self.context_in_compute_dtype(encoder_hidden_states),
            out_dtype,
        )
    }

    /// The dtype its layers compute in: its weights' (a frozen base's half type under mixed
    /// precision; the norms' scales stay f32).
    pub fn compute_dtype(&self) -> burn::tensor::DType {
        self.conv_in.weight.val().dtype()
    }

    /// The text context in the weights' dtype, cast once for every cross-attention's keys and
    /// values (each projection would otherwise cast it again: two casts per transformer).
    pub(crate) fn context_in_compute_dtype(&self, context: Tensor<B, 3>) -> Tensor<B, 3> {
        crate::nn::in_dtype(context, self.compute_dtype())
    }

    /// SiLU of the time embedding of `timesteps` (`[N]`, or `[1]` broadcast over `batch` as
    /// diffusers does): every resnet applies SiLU to the embedding before its projection; the
    /// model does it once.
    pub fn time_embedding_act(&self, timesteps: Tensor<B, 1>, batch: usize) -> Tensor<B, 2> {
        let timesteps = if timesteps.dims()[0] == 1 && batch != 1 {
            timesteps.expand([batch])
        } else {
            timesteps
        };
        silu(
            self.time_embedding
                .forward(self.time_proj.forward(timesteps)),
        )
    }
}
