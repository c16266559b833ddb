//! The Diffusion-DPO objective (Wallace et al. 2023), as DreamBooth-DPO trains with it: winner and
//! loser share noise and timestep; the trained model should lower the winner's denoising error
//! relative to the loser's more than the frozen reference does.

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;

/// Per-sample mean squared error over C, H, W: [N, C, H, W] → [N].
pub fn per_sample_mse<B: Backend>(pred: Tensor<B, 4>, target: Tensor<B, 4>) -> Tensor<B, 1> {
    let n = pred.dims()[0];
    (pred - target)
        .powi_scalar(2)
        .reshape([n as i64, -1])
        .mean_dim(1)
        .reshape([n])
}

/// The loss and the per-pair terms it is made of.
#[derive(Debug, Clone)]
pub struct DpoTerms<B: Backend> {
    /// −mean log σ(inside), a scalar [1].
    pub loss: Tensor<B, 1>,
    /// −β/2 · ((L_w − L_l) − (L_w,ref − L_l,ref)) per pair: positive when the model prefers the
    /// winner more than the reference does (the implicit reward margin).
    pub inside: Tensor<B, 1>,
}

/// `loss = −log σ(−β/2 · ((L_w − L_l) − (L_w,ref − L_l,ref)))`, averaged over pairs. The reference
/// losses carry no gradient.
pub fn diffusion_dpo_loss<B: Backend>(
    model_w: Tensor<B, 1>,
    model_l: Tensor<B, 1>,
    ref_w: Tensor<B, 1>,
    ref_l: Tensor<B, 1>,
    beta: f64,
) -> DpoTerms<B> {
    let model_diff = model_w - model_l;
    let ref_diff = (ref_w - ref_l).detach();
    let inside = (model_diff - ref_diff) * (-0.5 * beta);
    let loss = log_sigmoid(inside.clone()).mean().neg();
    DpoTerms { loss, inside }
}

/// Pair statistics for logs: fraction of pairs with a positive implicit margin, and its mean.
pub fn implicit_accuracy_and_margin(inside: &[f32]) -> (f64, f64) {
    if inside.is_empty() {
        return (0.0, 0.0);
    }
    let n = inside.len() as f64;
    let acc = inside.iter().filter(|v| **v > 0.0).count() as f64 / n;
    let margin = inside.iter().map(|v| *v as f64).sum::<f64>() / n;
    (acc, margin)
}
