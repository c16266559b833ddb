//! diffusers' `Transformer2DModel` (continuous input) with its `BasicTransformerBlock`s:
//! self-attention, cross-attention on the text embedding, and a GEGLU feed-forward.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

use crate::error::Result;
use crate::nn::{GroupNorm, LayerNorm, Linear, multi_head_attention};
use crate::weights::VarBuilder;

/// diffusers' `Attention` run by `AttnProcessor2_0`: no q/k/v bias, output projection with bias.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    /// `to_out.0` (Linear) and `to_out.1` (Dropout), as diffusers' ModuleList.
    pub to_out: (Linear<B>, Dropout),
    pub heads: usize,
    /// Attend in f32 when the model runs in f16/bf16 (a no-op in f32).
    pub upcast_attention: bool,
}

impl<B: Backend> Attention<B> {
    /// Loads an attention over `query_dim` features, keys/values from `context_dim` features.
    pub fn load(
        vb: &VarBuilder<B>,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        dim_head: usize,
        dropout: f64,
        upcast_attention: bool,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        Ok(Self {
            to_q: Linear::load(&vb.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::load(&vb.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::load(&vb.pp("to_v"), context_dim, inner, false)?,
            to_out: (
                Linear::load(&vb.pp("to_out").pp(0), inner, query_dim, true)?,
                Dropout { prob: dropout },
            ),
            heads,
            upcast_attention,
        })
    }

    /// `x` [N, L, query_dim]; `context` [N, M, context_dim] or `None` for self-attention.
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let q = self.to_q.forward(x.clone());
        let ctx = context.unwrap_or(x);
        let k = self.to_k.forward(ctx.clone());
        let v = self.to_v.forward(ctx);
        let dtype = q.dtype();
        let out = if self.upcast_attention && matches!(dtype, DType::F16 | DType::BF16) {
            let f32 = |t: Tensor<B, 3>| t.cast(FloatDType::F32);
            multi_head_attention(f32(q), f32(k), f32(v), self.heads, false).cast(dtype)
        } else {
            multi_head_attention(q, k, v, self.heads, false)
        };
        self.to_out.1.forward(self.to_out.0.forward(out))
    }
}

/// diffusers' `GEGLU`: one projection to twice the width, split into value and GELU gate.
#[derive(Module, Debug)]
pub struct GEGLU<B: Backend> {
    pub proj: Linear<B>,
}

impl<B: Backend> GEGLU<B> {
    /// [.., L, dim_in] → [.., L, dim_out] as `h * gelu(gate)` (exact erf GELU), one op
    /// ([`crate::kernels::geglu`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        crate::kernels::geglu::geglu(self.proj.forward(x))
    }
}

/// diffusers' `FeedForward` with `activation_fn="geglu"`, `mult=4`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `net.0` (GEGLU), `net.1` (Dropout), `net.2` (Linear), as diffusers' ModuleList.
    pub net: (GEGLU<B>, Dropout, Linear<B>),
}

impl<B: Backend> FeedForward<B> {
    /// Loads a feed-forward over `dim` features with a `4·dim` hidden width.
    pub fn load(vb: &VarBuilder<B>, dim: usize, dropout: f64) -> Result<Self> {
        let inner = dim * 4;
        let net = vb.pp("net");
        Ok(Self {
            net: (
                GEGLU {
                    proj: Linear::load(&net.pp(0).pp("proj"), dim, inner * 2, true)?,
                },
                Dropout { prob: dropout },
                Linear::load(&net.pp(2), inner, dim, true)?,
            ),
        })
    }

    /// [N, L, dim] → [N, L, dim].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (geglu, dropout, out) = &self.net;
        out.forward(dropout.forward(geglu.forward(x)))
    }
}

/// diffusers' `BasicTransformerBlock` with `norm_type="layer_norm"` (eps 1e-5).
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn1: Attention<B>,
    pub norm2: LayerNorm<B>,
    pub attn2: Attention<B>,
    pub norm3: LayerNorm<B>,
    pub ff: FeedForward<B>,
}

/// Shapes of one [`Transformer2DModel`].
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    pub in_channels: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub cross_attention_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub dropout: f64,
}

impl<B: Backend> BasicTransformerBlock<B> {
    /// Loads a block over `dim = heads · dim_head` features.
    pub fn load(vb: &VarBuilder<B>, c: &TransformerConfig) -> Result<Self> {
        let dim = c.heads * c.dim_head;
        // BasicTransformerBlock's own default; the UNet's norm_eps does not reach it.
        let eps = 1e-5;
        let attn = |name: &str, context_dim: usize| {
            Attention::load(
                &vb.pp(name),
                dim,
                context_dim,
                c.heads,
                c.dim_head,
                c.dropout,
                c.upcast_attention,
            )
        };
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, eps)?,
            attn1: attn("attn1", dim)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), dim, eps)?,
            attn2: attn("attn2", c.cross_attention_dim)?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, eps)?,
            ff: FeedForward::load(&vb.pp("ff"), dim, c.dropout)?,
        })
    }

    /// `x` [N, L, dim], `context` [N, M, cross_attention_dim].
    pub fn forward(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// diffusers' `Transformer2DModel` on continuous [N, C, H, W] input with one block.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// GroupNorm with eps 1e-6 (fixed in diffusers).
    pub norm: GroupNorm<B>,
    /// A Linear also when the checkpoint holds a 1×1 conv (`use_linear_projection` false): the
    /// two are the same per-pixel map, and the loader accepts the [out, in, 1, 1] weight.
    pub proj_in: Linear<B>,
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// Same representation as `proj_in`.
    pub proj_out: Linear<B>,
    /// Whether the checkpoint stores `proj_in`/`proj_out` as Linear (else as 1×1 conv).
    pub use_linear_projection: bool,
}

impl<B: Backend> Transformer2DModel<B> {
    /// Loads the norm, projections and one transformer block.
    pub fn load(vb: &VarBuilder<B>, c: &TransformerConfig) -> Result<Self> {
        let inner = c.heads * c.dim_head;
        Ok(Self {
            norm: GroupNorm::load(&vb.pp("norm"), c.groups, c.in_channels, 1e-6)?,
            proj_in: Linear::load(&vb.pp("proj_in"), c.in_channels, inner, true)?,
            transformer_blocks: vec![BasicTransformerBlock::load(
                &vb.pp("transformer_blocks").pp(0),
                c,
            )?],
            proj_out: Linear::load(&vb.pp("proj_out"), inner, c.in_channels, true)?,
            use_linear_projection: c.use_linear_projection,
        })
    }

    /// `x` [N, C, H, W], `context` [N, M, cross_attention_dim] → [N, C, H, W].
    pub fn forward(&self, x: Tensor<B, 4>, context: Tensor<B, 3>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .permute([0, 2, 3, 1])
            .reshape([n, h * w, c]);
        let mut t = self.proj_in.forward(tokens);
        for block in &self.transformer_blocks {
            t = block.forward(t, context.clone());
        }
        let t = self.proj_out.forward(t);
        t.reshape([n, h, w, c]).permute([0, 3, 1, 2]) + x
    }
}
