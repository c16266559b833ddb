//! Mixed precision: frozen weights cast to bf16 compute in bf16 (norms in f32), outputs come back
//! in f32, and LoRA adapters attached afterwards stay f32 with f32 gradients.

use crate::common;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::DType;
use common::{B, Io, fixture, rel_err, values};
use likeness_models::clip_text::ClipTextModel;
use likeness_models::lora::{self, Linears, LoraShape, LoraTargets};
use likeness_models::nn::cast_params;
use likeness_models::unet::UNet2DConditionModel;
use likeness_models::vae::AutoencoderKL;

/// Relative error that bf16 weights and activations leave on the tiny fixtures: bf16 keeps 8
/// bits of mantissa (≈4e-3 per rounding), a few layers deep.
const BF16_TOLERANCE: f32 = 3e-2;

fn unet_inputs(io: &Io) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 3>) {
    (
        io.tensor("sample"),
        io.tensor("timestep"),
        io.tensor("encoder_hidden_states"),
    )
}

#[test]
fn unet_with_bf16_weights_is_close_to_f32_and_answers_in_f32() {
    let device = Default::default();
    let model = UNet2DConditionModel::<B>::load_from_dir(fixture("unet_sd1"), &device).unwrap();
    let io = Io::open("unet_sd1/io.safetensors");
    let (x, t, ctx) = unet_inputs(&io);
    let full = model.forward(x.clone(), t.clone(), ctx.clone());

    let half = cast_params(model, DType::BF16);
    assert_eq!(half.conv_in.weight.val().dtype(), DType::BF16);
    // The norms compute in f32: their scales and shifts stay f32 rather than being cast back
    // at every call.
    assert_eq!(half.conv_norm_out.weight.val().dtype(), DType::F32);
    let out = half.forward(x, t, ctx);
    assert_eq!(out.dtype(), DType::F32, "the prediction comes back in f32");
    let err = rel_err(&values(out), &values(full));
    println!("UNet bf16 weights vs f32: rel err {err:.3e}");
    // Not equal (bf16 did run) and within bf16's rounding.
    assert!(err > 1e-6 && err <= BF16_TOLERANCE, "rel err {err}");
}

#[test]
fn text_encoder_and_vae_with_bf16_weights_answer_in_f32() {
    let device = Default::default();
    let (te, _) =
        ClipTextModel::<B>::from_dir(&fixture("text_encoder_quick_gelu"), &device).unwrap();
    let io = Io::open("text_encoder_quick_gelu/io.safetensors");
    let ids: Tensor<B, 2, Int> = Tensor::from_data(
        TensorData::new(
            io.values("input_ids")
                .iter()
                .map(|v| *v as i64)
                .collect::<Vec<_>>(),
            io.shape("input_ids"),
        ),
        &device,
    );
    let full = te.forward(ids.clone()).unwrap().last_hidden_state;
    let half = cast_params(te, DType::BF16).forward(ids).unwrap();
    assert_eq!(half.last_hidden_state.dtype(), DType::F32);
    assert_eq!(half.pooler_output.dtype(), DType::F32);
    let err = rel_err(&values(half.last_hidden_state), &values(full));
    println!("text encoder bf16 weights vs f32: rel err {err:.3e}");
    assert!(err <= BF16_TOLERANCE, "text encoder rel err {err}");

    let vae = AutoencoderKL::<B>::load_from_dir(&fixture("vae"), &device).unwrap();
    let io = Io::open("vae/io.safetensors");
    let image: Tensor<B, 4> = io.tensor("image");
    let latents: Tensor<B, 4> = io.tensor("latents_in");
    let mean = vae.encode(image.clone()).mean;
    let decoded = vae.decode(latents.clone());
    let vae = cast_params(vae, DType::BF16);
    let half_mean = vae.encode(image).mean;
    let half_decoded = vae.decode(latents);
    assert_eq!(half_mean.dtype(), DType::F32);
    assert_eq!(half_decoded.dtype(), DType::F32);
    for (what, a, b) in [
        ("VAE encode", half_mean, mean),
        ("VAE decode", half_decoded, decoded),
    ] {
        let err = rel_err(&values(a), &values(b));
        println!("{what} bf16 weights vs f32: rel err {err:.3e}");
        assert!(err <= BF16_TOLERANCE, "{what} rel err {err}");
    }
}

/// Every adapter's `down` and `up` gradients, in path order, with the UNet fixture's base
/// weights in `base_dtype` and rank-2 adapters attached afterwards (in f32, non-zero `up` so
/// both factors get gradients); checks that the base stays frozen in its dtype and that the
/// adapters and their gradients are f32.
fn lora_gradients(base_dtype: DType) -> Vec<(String, Vec<f32>)> {
    type AB = Autodiff<B>;
    let device = Default::default();
    let model = UNet2DConditionModel::<AB>::load_from_dir(fixture("unet_sd1"), &device).unwrap();
    let base = cast_params(model, base_dtype);
    let shape = LoraShape {
        rank: 2,
        alpha: 2.0,
    };
    let (mut unet, paths) = lora::attach(base, &LoraTargets::unet_attention(), shape, 7);
    assert!(!paths.is_empty());
    for (_, lin) in unet.linears_mut() {
        if let Some(adapter) = lin.lora.as_mut() {
            adapter.up = adapter
                .up
                .clone()
                .map(|u| (u.ones_like() * 0.01).detach().require_grad());
        }
    }
    let io = Io::open("unet_sd1/io.safetensors");
    let x = Tensor::<AB, 4>::from_inner(io.tensor("sample"));
    let t = Tensor::<AB, 1>::from_inner(io.tensor("timestep"));
    let ctx = Tensor::<AB, 3>::from_inner(io.tensor("encoder_hidden_states"));
    let out = unet.forward(x, t, ctx);
    assert_eq!(out.dtype(), DType::F32);
    let grads = out.powi_scalar(2).mean().backward();

    let mut all = Vec::new();
    for (path, lin) in unet.linears_mut() {
        assert_eq!(lin.weight.val().dtype(), base_dtype, "{path}: base weight");
        assert!(
            lin.weight.val().grad(&grads).is_none(),
            "{path}: a frozen weight got a gradient"
        );
        if let Some(adapter) = &lin.lora {
            for (factor, p) in [("down", &adapter.down), ("up", &adapter.up)] {
                assert_eq!(p.val().dtype(), DType::F32, "{path}.{factor}");
                let g = p
                    .val()
                    .grad(&grads)
                    .unwrap_or_else(|| panic!("{path}.{factor}: no gradient"));
                assert_eq!(g.dtype(), DType::F32, "{path}.{factor} gradient");
                let g = g.into_data().to_vec::<f32>().unwrap();
                assert!(g.iter().all(|v| v.is_finite()), "{path}.{factor}");
                assert!(
                    g.iter().any(|v| *v != 0.0),
                    "{path}.{factor}: zero gradient"
                );
                all.push((format!("{path}.{factor}"), g));
            }
        }
    }
    assert_eq!(all.len(), 2 * paths.len());
    all
}

/// The adapters' products run in the base's bf16 (the f32 adapters cast to it, as under
/// PyTorch's autocast); their gradients come back in f32 and follow an all-f32 run's within
/// bf16's rounding.
#[test]
fn lora_on_bf16_base_trains_in_f32() {
    let half = lora_gradients(DType::BF16);
    let full = lora_gradients(DType::F32);
    assert_eq!(half.len(), full.len());
    let (h, f): (Vec<f32>, Vec<f32>) = half
        .iter()
        .zip(&full)
        .flat_map(|((ph, h), (pf, f))| {
            assert_eq!(ph, pf);
            h.iter().copied().zip(f.iter().copied())
        })
        .unzip();
    let err = rel_err(&h, &f);
    println!("LoRA gradients, bf16 base vs f32: rel err {err:.3e}");
    assert!(err > 1e-6 && err <= BF16_TOLERANCE, "rel err {err}");
}
