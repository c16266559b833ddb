//! `DDIMScheduler` with eta = 0 (deterministic), as diffusers 0.35.2.

use burn::prelude::*;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{Alphas, np_linspace, np_round};
use super::{Scheduler, SchedulerOverrides, check_steps, step_out_of_range};
use crate::error::Result;

/// DDIM: deterministic steps between training timesteps.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// `num_train_timesteps // num_inference_steps`: DDIM's step to the previous timestep,
    /// used whatever the spacing (as diffusers does).
    step_ratio: i64,
    prediction_type: PredictionType,
    clip_sample: Option<f32>,
}

impl DdimScheduler {
    /// `DDIMScheduler.from_config(config, **overrides)` + `set_timesteps(num_inference_steps)`.
    pub fn new(
        config: &SchedulerConfig,
        overrides: SchedulerOverrides,
        num_inference_steps: usize,
    ) -> Result<Self> {
        let betas = config.beta_config()?;
        config.require_false("thresholding", &config.thresholding)?;
        let prediction_type = config.prediction_type(overrides.prediction_type)?;
        let spacing = config.timestep_spacing("leading")?;
        let steps_offset = config.get_or("steps_offset", &config.steps_offset, 0);
        let set_alpha_to_one = config.get_or("set_alpha_to_one", &config.set_alpha_to_one, true);
        let clip_sample = config.get_or("clip_sample", &config.clip_sample, true);
        let clip_sample_range = config.get_or("clip_sample_range", &config.clip_sample_range, 1.0);

        let alphas = Alphas::new(&betas, false);
        let train = alphas.alphas_cumprod.len();
        check_steps(config, num_inference_steps, train)?;
        let n = num_inference_steps;
        let ntt = betas.num_train_timesteps;
        let timesteps: Vec<f64> = match spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (ntt - 1) as f64, n)
                .into_iter()
                .rev()
                .map(np_round)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = ntt / n;
                (0..n)
                    .rev()
                    .map(|i| (i * ratio) as f64 + steps_offset as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = ntt as f64 / n as f64;
                super::schedule::np_arange_f64(ntt as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| np_round(t) - 1.0)
                    .collect()
            }
        };
        for &t in &timesteps {
            if t < 0.0 || t as usize >= train {
                return Err(config.invalid(format!(
                    "timestep {t} (steps_offset {steps_offset}) is outside 0..{train}"
                )));
            }
        }
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            alphas.alphas_cumprod[0]
        };
        Ok(Self {
            final_alpha_cumprod,
            alphas_cumprod: alphas.alphas_cumprod,
            timesteps,
            step_ratio: (ntt / n) as i64,
            prediction_type,
            clip_sample: clip_sample.then_some(clip_sample_range as f32),
        })
    }

    /// The f32 cumulative alphas, indexed by training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }
}

impl<B: Backend> Scheduler<B> for DdimScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &[]
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, _step_index: usize) -> Tensor<B, 4> {
        sample
    }

    fn needs_noise(&self) -> bool {
        false
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        _noise: Option<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>> {
        let &t = self
            .timesteps
            .get(step_index)
            .ok_or_else(|| step_out_of_range(step_index, self.timesteps.len()))?;
        let t = t as i64;
        let prev = t - self.step_ratio;
        let alpha_prod_t = self.alphas_cumprod[t as usize];
        let alpha_prod_t_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (sqrt_a, sqrt_b) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        let (pred_original, pred_epsilon) = match self.prediction_type {
            PredictionType::Epsilon => (
                (sample - model_output.clone().mul_scalar(sqrt_b)).div_scalar(sqrt_a),
                model_output,
            ),
            PredictionType::VPrediction => (
                sample.clone().mul_scalar(sqrt_a) - model_output.clone().mul_scalar(sqrt_b),
                model_output.mul_scalar(sqrt_a) + sample.mul_scalar(sqrt_b),
            ),
        };
        let pred_original = match self.clip_sample {
            Some(r) => pred_original.clamp(-r, r),
            None => pred_original,
        };
        // eta = 0: std_dev_t is 0, so the direction term is sqrt(1 - alpha_prev).
        let direction = pred_epsilon.mul_scalar((1.0 - alpha_prod_t_prev - 0.0).sqrt());
        Ok(pred_original.mul_scalar(alpha_prod_t_prev.sqrt()) + direction)
    }

    fn reset(&mut self) {}

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
