//! Timestep embeddings: diffusers' `get_timestep_embedding` / `Timesteps` (no weights) and
//! `TimestepEmbedding` (two linears with a SiLU between).

use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::error::Result;
use crate::nn::Linear;
use crate::weights::VarBuilder;

/// Sinusoidal embedding of (possibly fractional) timesteps, exactly as diffusers'
/// `get_timestep_embedding` with `scale` 1 and `max_period` 10000: returns [N, dim].
pub fn get_timestep_embedding<B: Backend>(
    timesteps: Tensor<B, 1>,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let device = timesteps.device();
    let n = timesteps.dims()[0];
    // diffusers builds the frequencies in f32: (-ln(max_period) * arange(half)) / (half - shift),
    // then exp; the scalars are rounded to f32 before each op as PyTorch does.
    let log_max = -(10000f64.ln()) as f32;
    let denom = (half as f64 - downscale_freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_max * i as f32) / denom).exp())
        .collect();
    let freqs = Tensor::<B, 2>::from_data(TensorData::new(freqs, [1, half]), &device);
    let args = timesteps.reshape([n, 1]) * freqs;
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        let pad = Tensor::zeros([n, 1], &device);
        Tensor::cat(vec![emb, pad], 1)
    } else {
        emb
    }
}

/// diffusers' `Timesteps`: the weightless sinusoidal projection of the timesteps.
#[derive(Debug, Clone)]
pub struct Timesteps {
    pub num_channels: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f64,
}

impl Timesteps {
    /// `[N]` timesteps → `[N, num_channels]` embedding.
    pub fn forward<B: Backend>(&self, timesteps: Tensor<B, 1>) -> Tensor<B, 2> {
        get_timestep_embedding(
            timesteps,
            self.num_channels,
            self.flip_sin_to_cos,
            self.downscale_freq_shift,
        )
    }
}

/// diffusers' `TimestepEmbedding` with `act_fn` silu and no condition/post activation.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// Loads `linear_1` (in → time_embed_dim) and `linear_2` (time_embed_dim → time_embed_dim).
    pub fn load(vb: &VarBuilder<B>, in_channels: usize, time_embed_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(&vb.pp("linear_1"), in_channels, time_embed_dim, true)?,
            linear_2: Linear::load(&vb.pp("linear_2"), time_embed_dim, time_embed_dim, true)?,
        })
    }

    /// [N, in] → [N, time_embed_dim].
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
