//! Gradient checkpointing on the UNet's layers (`UNet2DConditionModel::backward_checkpointed`):
//! every gradient equals plain backward's, for a full fine-tune (the time embedding and a tracked
//! text context take gradients through the pieces after the layers) and for LoRA; odd latent
//! sizes (upsamplers that target a skip's size); dropout refused.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use common::{B, fixture, numbers, rel_err, tensor, values};
use likeness_models::lora::{Linears, LoraShape, LoraTargets, attach};
use likeness_models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use likeness_models::weights::{VarBuilder, WeightStore};

type A = Autodiff<B>;

fn unet(name: &str) -> UNet2DConditionModel<A> {
    let dir = fixture(name);
    let cfg = UNet2DConditionConfig::from_file(dir.join("config.json")).unwrap();
    let store =
        Arc::new(WeightStore::open(&[dir.join("diffusion_pytorch_model.safetensors")]).unwrap());
    UNet2DConditionModel::load(&VarBuilder::new(store, &Default::default()), &cfg).unwrap()
}

/// The gradients of `module`'s parameters in `grads`, added to `into`.
struct Collect<'a> {
    grads: &'a mut <A as AutodiffBackend>::Gradients,
    into: &'a mut HashMap<ParamId, Vec<f32>>,
}

impl ModuleVisitor<A> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        if let Some(g) = param.val().grad_remove(self.grads) {
            let g = values(g);
            let sum = self
                .into
                .entry(param.id)
                .or_insert_with(|| vec![0.0; g.len()]);
            for (s, v) in sum.iter_mut().zip(g) {
                *s += v;
            }
        }
    }
}

struct Inputs {
    sample: Vec<f32>,
    dims: [usize; 4],
    context: Vec<f32>,
    context_dims: [usize; 3],
    weights: Vec<f32>,
}

impl Inputs {
    fn new(unet: &UNet2DConditionModel<A>, n: usize, h: usize, w: usize) -> Self {
        let cross = 32;
        let dims = [n, unet.in_channels(), h, w];
        let len = dims.iter().product();
        Self {
            sample: numbers(len, 1, 0.0, 1.0),
            dims,
            context: numbers(n * 5 * cross, 2, 0.0, 1.0),
            context_dims: [n, 5, cross],
            weights: numbers(len, 3, 0.0, 1.0),
        }
    }
}

/// A loss with a gradient unlike the prediction's own: Σ w·pred + mean(pred²).
fn loss(pred: Tensor<A, 4>, w: Tensor<A, 4>) -> Tensor<A, 1> {
    (pred.clone() * w).sum() + pred.powi_scalar(2).mean()
}

struct Grads {
    loss: f32,
    params: HashMap<ParamId, Vec<f32>>,
    context: Option<Vec<f32>>,
}

/// Plain backward, or the checkpointed one; with `track_context`, the context is computed from a
/// leaf (as a text encoder's output is) whose gradient is returned.
fn grads(
    unet: &UNet2DConditionModel<A>,
    x: &Inputs,
    t: &[f32],
    track_context: bool,
    checkpointed: bool,
) -> Grads {
    let sample = tensor::<A, 4>(&x.sample, x.dims);
    let w = tensor::<A, 4>(&x.weights, x.dims);
    let ts = tensor::<A, 1>(t, [t.len()]);
    let leaf = tensor::<A, 3>(&x.context, x.context_dims);
    let leaf = if track_context {
        leaf.require_grad()
    } else {
        leaf
    };
    let context = leaf.clone() * 1.5;
    let mut params = HashMap::new();
    let mut context_grad = None;
    let loss_value = if checkpointed {
        let mut take = |g: &mut <A as AutodiffBackend>::Gradients| {
            unet.visit(&mut Collect {
                grads: g,
                into: &mut params,
            });
            if let Some(c) = leaf.grad_remove(g) {
                assert!(context_grad.is_none(), "the context's gradient comes once");
                context_grad = Some(values(c));
            }
        };
        let l = unet
            .backward_checkpointed(sample, ts, context, |pred| loss(pred, w), &mut take)
            .unwrap();
        values(l)[0]
    } else {
        let l = loss(unet.forward(sample, ts, context), w);
        let value = values(l.clone())[0];
        let mut g = l.backward();
        unet.visit(&mut Collect {
            grads: &mut g,
            into: &mut params,
        });
        context_grad = leaf.grad_remove(&mut g).map(values);
        value
    };
    Grads {
        loss: loss_value,
        params,
        context: context_grad,
    }
}

/// The largest relative error over all parameters (each against its own largest value).
fn compare(what: &str, got: &Grads, want: &Grads) {
    assert_eq!(
        got.params.len(),
        want.params.len(),
        "{what}: parameters with a gradient"
    );
    assert!(!want.params.is_empty(), "{what}: some gradients");
    let mut worst = 0f32;
    for (id, w) in &want.params {
        let g = got
            .params
            .get(id)
            .unwrap_or_else(|| panic!("{what}: a parameter's gradient is missing"));
        worst = worst.max(rel_err(g, w));
    }
    let loss_err = ((got.loss - want.loss) / want.loss).abs();
    println!(
        "{what}: {} parameters, largest relative error {worst:.3e}, loss {loss_err:.3e}",
        want.params.len()
    );
    assert!(worst <= 1e-4, "{what}: gradients differ by {worst:.3e}");
    assert!(loss_err <= 1e-5, "{what}: loss differs by {loss_err:.3e}");
    match (&got.context, &want.context) {
        (Some(g), Some(w)) => {
            let e = rel_err(g, w);
            println!("{what}: context gradient relative error {e:.3e}");
            assert!(
                e <= 1e-4,
                "{what}: the context's gradient differs by {e:.3e}"
            );
        }
        (None, None) => {}
        (g, w) => panic!(
            "{what}: context gradient checkpointed {}, plain {}",
            g.is_some(),
            w.is_some()
        ),
    }
}

#[test]
fn full_fine_tune_gradients_match_plain_backward() {
    // SD 1 (conv projections) and SD 2 (linear projections, v-prediction config); batch 2 with
    // two timesteps; the second at an odd latent size, where the upsamplers take the skips' sizes.
    for (name, h, w) in [("unet_sd1", 8, 8), ("unet_sd2", 7, 9)] {
        let unet = unet(name);
        let x = Inputs::new(&unet, 2, h, w);
        let t = [10.0, 700.0];
        let want = grads(&unet, &x, &t, true, false);
        let got = grads(&unet, &x, &t, true, true);
        compare(name, &got, &want);
        assert!(
            want.params.len() == unet.num_params_tensors(),
            "{name}: every weight trains in a full fine-tune"
        );
    }
}

#[test]
fn lora_gradients_match_plain_backward() {
    let (mut net, _) = attach(
        unet("unet_sd1"),
        &LoraTargets::unet_attention(),
        LoraShape {
            rank: 2,
            alpha: 2.0,
        },
        3,
    );
    // Non-zero up matrices, so that the down matrices' gradients are not zero too.
    for (_, lin) in net.linears_mut() {
        if let Some(a) = lin.lora.as_mut() {
            let [o, r] = a.up.dims();
            a.up = Param::from_tensor(tensor::<A, 2>(&numbers(o * r, 4, 0.0, 0.05), [o, r]));
        }
    }
    let x = Inputs::new(&net, 1, 8, 8);
    let want = grads(&net, &x, &[500.0], false, false);
    let got = grads(&net, &x, &[500.0], false, true);
    compare("LoRA", &got, &want);
    // Up and down matrices of the 48 adapted linears; the base weights are frozen.
    assert_eq!(want.params.len(), 96);
}

#[test]
fn dropout_is_refused() {
    let mut net = unet("unet_sd1");
    net.config.dropout = 0.1;
    let x = Inputs::new(&net, 1, 8, 8);
    let err = net
        .backward_checkpointed(
            tensor::<A, 4>(&x.sample, x.dims),
            tensor::<A, 1>(&[1.0], [1]),
            tensor::<A, 3>(&x.context, x.context_dims),
            |pred| pred.sum(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("dropout"), "{err}");
}

/// The number of parameter tensors of a module.
trait CountParams {
    fn num_params_tensors(&self) -> usize;
}

impl<M: Module<A>> CountParams for M {
    fn num_params_tensors(&self) -> usize {
        struct Count(usize);
        impl ModuleVisitor<A> for Count {
            fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<A, D>>) {
                self.0 += 1;
            }
        }
        let mut c = Count(0);
        self.visit(&mut c);
        c.0
    }
}
