//! Layers with PyTorch's weight layout and names (`weight` [out, in], `bias`), so that a
//! diffusers/transformers key reads as a field path.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;

use crate::error::Result;
use crate::profile;
use crate::weights::{Init, VarBuilder};

/// `torch.nn.Linear`: weight [out, in], with an optional trainable low-rank adapter.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// LoRA adapter being trained (loaded LoRA files are merged into `weight` instead).
    pub lora: Option<LoraAdapter<B>>,
}

/// A low-rank update `alpha/rank · up(down(x))`: `down` [rank, in], `up` [out, rank] (PEFT's
/// `lora_A` / `lora_B`, kohya's `lora_down` / `lora_up`).
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    pub down: Param<Tensor<B, 2>>,
    pub up: Param<Tensor<B, 2>>,
    pub alpha: f64,
}

impl<B: Backend> LoraAdapter<B> {
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank().max(1) as f64
    }

    /// The update as a full weight: `scale · up @ down`, [out, in].
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.up.val().matmul(self.down.val()) * self.scale()
    }
}

impl<B: Backend> Linear<B> {
    pub fn load(vb: &VarBuilder<B>, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = vb.get("weight", [d_out, d_in], Init::FanIn(d_in))?;
        let bias = if bias {
            Some(vb.get("bias", [d_out], Init::FanIn(d_in))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
        })
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x @ weightᵀ + bias`, computed in the weight's dtype (the input is cast to it), plus the
    /// adapter's update `scale · (x @ downᵀ) @ upᵀ` in the same dtype: adapters kept in f32 on
    /// half-precision weights (mixed precision) are cast to it, as PyTorch's autocast casts
    /// them, so the products read the input the base product reads (one copy of it kept for
    /// the gradients, not an f32 copy per adapter) and the update needs no cast back. Their
    /// gradients come back through the casts in the adapters' own dtype. The trainers hand the
    /// adapters back in the base's dtype after each update, their f32 values kept by the
    /// optimizer (`likeness_train::optim::AdamW::keep_masters`), so there are no casts from the
    /// second step on. A scale of one (alpha
    /// equal to the rank, the default) is not multiplied; another scales `up` (`[out, rank]`),
    /// not the update.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let device = x.device();
        let weight = self.weight.val();
        let dtype = weight.dtype();
        let input = in_dtype(x, dtype);
        let bias = self.bias.as_ref().map(|b| b.val());
        let Some(l) = &self.lora else {
            return profile::span::<B, _>(&device, "linear", || {
                crate::kernels::matmul::linear(input, weight, bias)
            });
        };
        let base = profile::span::<B, _>(&device, "linear", || {
            crate::kernels::matmul::linear(input.clone(), weight, bias)
        });
        profile::span::<B, _>(&device, "lora", || {
            let scale = l.scale();
            // Scaled in the product's dtype, so that an adapter held in it (see above) and one
            // cast to it give the same numbers.
            let up = in_dtype(l.up.val(), dtype);
            let up = if scale == 1.0 { up } else { up * scale };
            let low = crate::kernels::matmul::linear(input, in_dtype(l.down.val(), dtype), None);
            base + crate::kernels::matmul::linear(low, up, None)
        })
    }

    /// Adds `delta` [out, in] to the weight (merging a LoRA file).
    pub fn merge_delta(&mut self, delta: Tensor<B, 2>) {
        self.weight = self.weight.clone().map(|w| {
            let dtype = w.dtype();
            w + in_dtype(delta, dtype)
        });
    }
}

/// `x` in `dtype`: a cast where it differs, nothing otherwise.
pub fn in_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// The float dtype of backend `B`'s tensors when nothing else is asked for.
pub fn default_float_dtype<B: Backend>() -> DType {
    <B::FloatElem as burn::tensor::Element>::dtype()
}

/// `torch.nn.Conv2d` with square kernel, stride and padding.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub stride: usize,
    pub padding: usize,
}

impl<B: Backend> Conv2d<B> {
    pub fn load(
        vb: &VarBuilder<B>,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let fan_in = c_in * kernel * kernel;
        let weight = vb.get("weight", [c_out, c_in, kernel, kernel], Init::FanIn(fan_in))?;
        let bias = Some(vb.get("bias", [c_out], Init::FanIn(fan_in))?);
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let name = if self.weight.dims()[3] == 1 {
            "conv1x1"
        } else {
            "conv3x3"
        };
        let weight = self.weight.val();
        let x = in_dtype(x, weight.dtype());
        profile::span::<B, _>(&x.device(), name, || {
            crate::kernels::conv::conv2d(
                x,
                weight,
                self.bias.as_ref().map(|b| b.val()),
                ConvOptions::new(
                    [self.stride, self.stride],
                    [self.padding, self.padding],
                    [1, 1],
                    1,
                ),
            )
        })
    }
}

/// `torch.nn.GroupNorm` over [N, C, H, W] (or [N, C, L]) with affine weight and bias.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub num_groups: usize,
    pub eps: f64,
}

impl<B: Backend> GroupNorm<B> {
    /// Scale and shift in f32 even in a model loaded in half precision (see [`cast_params`]).
    pub fn load(vb: &VarBuilder<B>, num_groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let vb = vb.clone().with_dtype(None);
        Ok(Self {
            weight: vb.get("weight", [channels], Init::Ones)?,
            bias: vb.get("bias", [channels], Init::Zeros)?,
            num_groups,
            eps,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        profile::span::<B, _>(&x.device(), "group_norm", || self.normalize(x, false))
    }

    /// `silu(self.forward(x))` as one op (one saved activation instead of several in training).
    pub fn forward_silu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        profile::span::<B, _>(&x.device(), "group_norm", || self.normalize(x, true))
    }

    /// Statistics and affine in f32 whatever the input's dtype (as PyTorch's autocast runs
    /// `group_norm`); the result has the input's dtype.
    fn normalize<const D: usize>(&self, x: Tensor<B, D>, silu: bool) -> Tensor<B, D> {
        crate::kernels::group_norm::group_norm(
            x,
            self.weight.val(),
            self.bias.val(),
            crate::kernels::group_norm::GroupNormOptions {
                groups: self.num_groups,
                eps: self.eps,
                silu,
            },
        )
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Scale and shift in f32 even in a model loaded in half precision (see [`cast_params`]).
    pub fn load(vb: &VarBuilder<B>, dim: usize, eps: f64) -> Result<Self> {
        let vb = vb.clone().with_dtype(None);
        Ok(Self {
            weight: vb.get("weight", [dim], Init::Ones)?,
            bias: vb.get("bias", [dim], Init::Zeros)?,
            eps,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        profile::span::<B, _>(&x.device(), "layer_norm", || self.normalize(x))
    }

    /// In f32 whatever the input's dtype, like [`GroupNorm`]; the result has the input's dtype.
    /// Every position is a one-group GroupNorm over its channels (`[positions, channels, 1]`),
    /// so training takes the same single autodiff op ([`crate::kernels::group_norm`]).
    fn normalize<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let channels = dims[D - 1];
        let rows: Tensor<B, 3> = x.reshape([-1, channels as i64, 1]);
        crate::kernels::group_norm::group_norm(
            rows,
            self.weight.val(),
            self.bias.val(),
            crate::kernels::group_norm::GroupNormOptions {
                groups: 1,
                eps: self.eps,
                silu: false,
            },
        )
        .reshape(dims)
    }
}

/// Multi-head attention on [B, N, H·D] projections: splits heads, attends, merges heads.
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    causal: bool,
) -> Tensor<B, 3> {
    let device = q.device();
    profile::span::<B, _>(&device, "attention", || {
        attend_heads(q, k, v, heads, causal)
    })
}

fn attend_heads<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    causal: bool,
) -> Tensor<B, 3> {
    let [b, n_q, inner] = q.dims();
    let n_k = k.dims()[1];
    let d = inner / heads;
    let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, n, heads, d]).swap_dims(1, 2);
    let out =
        crate::kernels::attention::attention(split(q, n_q), split(k, n_k), split(v, n_k), causal);
    out.swap_dims(1, 2).reshape([b, n_q, inner])
}

/// Casts every float parameter of `module` to `dtype`: under mixed precision the frozen base
/// weights go to bf16/f16 while trainable adapters attached afterwards stay in f32. The
/// GroupNorms' and LayerNorms' scales and shifts stay in f32: those layers compute in f32
/// whatever their input (as PyTorch's autocast runs them), so half-precision copies were cast
/// back at every call — two casts per norm and pass, ~480 launches in an SD 1.5 LoRA step.
pub fn cast_params<B: Backend, M: Module<B>>(module: M, dtype: DType) -> M {
    struct Caster {
        dtype: DType,
        /// The struct whose fields are being mapped, innermost last.
        within: Vec<String>,
    }
    impl<B: Backend> burn::module::ModuleMapper<B> for Caster {
        fn enter_module(&mut self, _name: &str, container_type: &str) {
            self.within.push(container_type.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.within.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let norm = matches!(
                self.within.last().map(String::as_str),
                Some("Struct:GroupNorm" | "Struct:LayerNorm")
            );
            let dtype = if norm { DType::F32 } else { self.dtype };
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, in_dtype(tensor, dtype), mapper)
        }
    }
    module.map(&mut Caster {
        dtype,
        within: Vec::new(),
    })
}
