//! Gradient checkpointing on the UNet's layers, as diffusers' `enable_gradient_checkpointing`
//! does for its resnets and transformers: the forward pass runs without autodiff and keeps only
//! each layer's output; the backward pass runs the layers in reverse, recomputing one at a time
//! under autodiff and taking its gradients before the next. What autodiff holds at once is one
//! layer's activations instead of the whole network's.
//!
//! It is done with ordinary backward calls, one per layer, not inside an autodiff op: Burn's
//! graph is locked while it runs a backward pass, so an op's backward cannot build and run a
//! graph of its own.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;

use super::UNet2DConditionModel;
use super::plan;
use crate::error::{ModelError, Result};
use crate::kernels::is_tracked;

type Inner<AB, const D: usize> = Tensor<<AB as AutodiffBackend>::InnerBackend, D>;

impl<AB: AutodiffBackend> UNet2DConditionModel<AB> {
    /// Runs `loss(forward(sample, timesteps, encoder_hidden_states))` and its backward pass with
    /// the UNet's layers recomputed (module notes); returns the loss's value.
    ///
    /// The gradients arrive in pieces: `on_grads` is called once with the loss's own graph (the
    /// prediction's gradient already taken out), once per layer, and once for the time embedding
    /// and the text encoder's graph behind `encoder_hidden_states` when they are tracked. Each
    /// parameter's gradient is in exactly one piece: a caller sums what it reads (as
    /// `FlatGrads::accumulate` does). The same numbers as `loss(forward(..)).backward()`; the
    /// sample gets no gradient. Dropout would draw new masks in the recomputation, so a model
    /// with dropout is refused.
    pub fn backward_checkpointed(
        &self,
        sample: Tensor<AB, 4>,
        timesteps: Tensor<AB, 1>,
        encoder_hidden_states: Tensor<AB, 3>,
        loss: impl FnOnce(Tensor<AB, 4>) -> Tensor<AB, 1>,
        on_grads: &mut dyn FnMut(&mut AB::Gradients),
    ) -> Result<Inner<AB, 1>> {
        if self.config.dropout > 0.0 {
            return Err(ModelError::Invalid(format!(
                "gradient checkpointing recomputes the UNet's layers, which dropout {} would \
                 change; train without checkpointing",
                self.config.dropout
            )));
        }
        let out_dtype = sample.dtype();
        let context = self.context_in_compute_dtype(encoder_hidden_states);
        let temb_act = self.time_embedding_act(timesteps, sample.dims()[0]);
        // Which of the layers' shared inputs lead back to trained weights.
        let temb_tracked = is_tracked(&temb_act);
        let context_tracked = is_tracked(&context);
        let steps = plan::plan(self);

        // Forward without autodiff, every layer's output kept.
        let inner = self.valid();
        let (temb_in, context_in) = (temb_act.clone().inner(), context.clone().inner());
        let mut values = plan::run_values(
            &inner,
            &steps,
            sample.inner(),
            &temb_in,
            &context_in,
            out_dtype,
            true,
        );
        drop(inner);

        // The loss, from the prediction as a leaf.
        let pred = values
            .last()
            .cloned()
            .flatten()
            .expect("the plan ends with the output layer");
        let pred = Tensor::<AB, 4>::from_inner(pred).require_grad();
        let loss = loss(pred.clone());
        let loss_value = loss.clone().inner();
        let mut grads = loss.backward();
        let mut grad_of: Vec<Option<Inner<AB, 4>>> = vec![None; values.len()];
        grad_of[steps.len()] = pred.grad_remove(&mut grads);
        on_grads(&mut grads);
        drop(grads);

        // The layers in reverse, each recomputed under autodiff from its kept inputs.
        let mut temb_grad: Option<Inner<AB, 2>> = None;
        let mut context_grad: Option<Inner<AB, 3>> = None;
        for (k, step) in steps.iter().enumerate().rev() {
            // Every later reader of this step's output has run: the output is not needed again.
            values[k + 1] = None;
            let Some(out_grad) = grad_of[k + 1].take() else {
                continue;
            };
            let leaf = |v: usize, grad: bool| {
                let t = Tensor::<AB, 4>::from_inner(
                    values[v].clone().expect("the plan reads computed values"),
                );
                if grad { t.require_grad() } else { t }
            };
            // The sample takes no gradient; an upsampler reads only its target's size.
            let input = leaf(step.input, step.input != 0);
            let extra_grad = matches!(step.layer, plan::Layer::UpResnet { .. });
            let extra = step.extra.map(|v| leaf(v, extra_grad));
            let temb = shared_input(&temb_in, temb_tracked);
            let ctx = shared_input(&context_in, context_tracked);
            let out = step.run(self, input.clone(), extra.clone(), &temb, &ctx, out_dtype);
            let out_grad = crate::nn::in_dtype(Tensor::from_inner(out_grad), out.dtype());
            let mut grads = (out * out_grad).sum().backward();
            add_grad(&mut grad_of[step.input], input.grad_remove(&mut grads));
            if let (Some(v), Some(extra), true) = (step.extra, extra, extra_grad) {
                add_grad(&mut grad_of[v], extra.grad_remove(&mut grads));
            }
            if temb_tracked {
                add_grad(&mut temb_grad, temb.grad_remove(&mut grads));
            }
            if context_tracked {
                add_grad(&mut context_grad, ctx.grad_remove(&mut grads));
            }
            on_grads(&mut grads);
        }

        // The shared inputs' gradients into the graphs behind them, in one backward pass. The
        // anchor, a leaf of its own, keeps the root tracked whatever the two turn out to be.
        if !(temb_tracked || context_tracked) {
            return Ok(loss_value);
        }
        let device = temb_act.device();
        let mut tail = Tensor::<AB, 1>::zeros([1], &device).require_grad().sum();
        if let (true, Some(g)) = (temb_tracked, temb_grad) {
            tail = tail + surrogate(temb_act, g);
        }
        if let (true, Some(g)) = (context_tracked, context_grad) {
            tail = tail + surrogate(context, g);
        }
        let mut grads = tail.backward();
        on_grads(&mut grads);
        Ok(loss_value)
    }
}

/// A layer's copy of an input all layers share: a leaf taking gradients where the original is
/// tracked.
fn shared_input<AB: AutodiffBackend, const D: usize>(
    t: &Inner<AB, D>,
    tracked: bool,
) -> Tensor<AB, D> {
    let t = Tensor::from_inner(t.clone());
    if tracked { t.require_grad() } else { t }
}

/// `sum(t · grad)` in f32: its backward hands `grad` to `t`.
fn surrogate<AB: AutodiffBackend, const D: usize>(
    t: Tensor<AB, D>,
    grad: Inner<AB, D>,
) -> Tensor<AB, 1> {
    crate::nn::in_dtype((t * Tensor::from_inner(grad)).sum(), DType::F32)
}

fn add_grad<B: Backend, const D: usize>(acc: &mut Option<Tensor<B, D>>, g: Option<Tensor<B, D>>) {
    if let Some(g) = g {
        *acc = Some(match acc.take() {
            Some(a) => a + g,
            None => g,
        });
    }
}
