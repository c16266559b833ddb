//! LoRA adapters: attaching starts at the base model, merging equals the adapter forward, and only
//! adapter parameters receive gradients.

use crate::common;

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::prelude::*;
use common::{B, Io, fixture, rel_err, values};
use likeness_models::lora::{Linears, LoraShape, LoraTargets, adapters, attach, merge_adapters};
use likeness_models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use likeness_models::weights::{VarBuilder, WeightStore};

fn unet<BB: Backend>() -> UNet2DConditionModel<BB> {
    let dir = fixture("unet_sd1");
    let cfg = UNet2DConditionConfig::from_file(dir.join("config.json")).unwrap();
    let store =
        Arc::new(WeightStore::open(&[dir.join("diffusion_pytorch_model.safetensors")]).unwrap());
    UNet2DConditionModel::load(&VarBuilder::new(store, &Default::default()), &cfg).unwrap()
}

fn run<BB: Backend>(m: &UNet2DConditionModel<BB>, io: &Io) -> Tensor<BB, 4> {
    let d = Default::default();
    let conv = |t: Tensor<B, 4>| Tensor::<BB, 4>::from_data(t.into_data(), &d);
    let sample = conv(io.tensor::<4>("sample"));
    let t = Tensor::<BB, 1>::from_data(io.tensor::<1>("timestep").into_data(), &d);
    let ehs = Tensor::<BB, 3>::from_data(io.tensor::<3>("encoder_hidden_states").into_data(), &d);
    m.forward(sample, t, ehs)
}

#[test]
fn attach_starts_at_base_and_merge_matches_adapter_forward() {
    let io = Io::open("unet_sd1/io.safetensors");
    let base = values(run(&unet::<B>(), &io));
    let (mut net, paths) = attach(
        unet::<B>(),
        &LoraTargets::unet_attention(),
        LoraShape {
            rank: 4,
            alpha: 8.0,
        },
        1,
    );
    // 2 transformers in the down block, 1 mid, 3 up (layers_per_block 2), 1 block each, 8 linears.
    assert_eq!(paths.len(), 6 * 8, "{paths:?}");
    assert!(paths.iter().all(|p| p.contains(".attn")));
    assert!(rel_err(&values(run(&net, &io)), &base) < 1e-6);

    // Give every up matrix values, then compare adapter forward with merged weights.
    for (_, lin) in net.linears_mut() {
        if let Some(a) = lin.lora.as_mut() {
            let [o, r] = a.up.dims();
            a.up = Param::from_tensor(Tensor::random(
                [o, r],
                burn::tensor::Distribution::Normal(0.0, 0.05),
                &Default::default(),
            ));
        }
    }
    let with_adapters = values(run(&net, &io));
    assert!(
        rel_err(&with_adapters, &base) > 1e-3,
        "adapters change the output"
    );
    assert_eq!(adapters(&mut net).len(), 48);
    merge_adapters(&mut net);
    assert!(adapters(&mut net).is_empty());
    let merged = values(run(&net, &io));
    let e = rel_err(&merged, &with_adapters);
    println!("merged vs adapter forward: {e:.3e}");
    assert!(e < 1e-5);
}

#[test]
fn only_adapters_get_gradients() {
    type A = Autodiff<B>;
    let io = Io::open("unet_sd1/io.safetensors");
    let (net, _) = attach(
        unet::<A>(),
        &LoraTargets::unet_attention(),
        LoraShape {
            rank: 2,
            alpha: 2.0,
        },
        3,
    );
    let loss = run(&net, &io).powf_scalar(2.0).mean();
    let grads = loss.backward();
    let mut net = net;
    let mut with_grad = 0;
    for (path, lin) in net.linears_mut() {
        assert!(
            lin.weight.val().grad(&grads).is_none(),
            "{path}: base weight got a gradient"
        );
        if let Some(a) = &lin.lora {
            // up starts at zero, so down's gradient is zero; up's is not.
            assert!(
                a.up.val().grad(&grads).is_some(),
                "{path}: adapter has no gradient"
            );
            with_grad += 1;
        }
    }
    assert_eq!(with_grad, 48);
    assert!(net.conv_in.weight.val().grad(&grads).is_none());
}
