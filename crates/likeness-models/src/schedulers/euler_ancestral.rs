//! `EulerAncestralDiscreteScheduler`, as diffusers 0.35.2. Each step adds fresh noise, which
//! the caller draws (so the pipeline owns the random stream).

use burn::prelude::*;

use super::config::{PredictionType, SchedulerConfig};
use super::euler::sigma_sampler_timesteps;
use super::euler::{euler_init_noise_sigma, scale_by_sigma};
use super::schedule::{Alphas, np_interp_index, sqrt_sigma2_plus_1};
use super::{Scheduler, SchedulerOverrides, check_steps, step_out_of_range};
use crate::error::{ModelError, Result};

/// Ancestral Euler: an Euler step down to `sigma_down`, then noise up to the next sigma.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
}

impl EulerAncestralDiscreteScheduler {
    /// `EulerAncestralDiscreteScheduler.from_config(config, **overrides)` + `set_timesteps(n)`.
    pub fn new(
        config: &SchedulerConfig,
        overrides: SchedulerOverrides,
        num_inference_steps: usize,
    ) -> Result<Self> {
        let betas = config.beta_config()?;
        let prediction_type = config.prediction_type(overrides.prediction_type)?;
        let spacing = config.timestep_spacing("linspace")?;
        let steps_offset = config.get_or("steps_offset", &config.steps_offset, 0);

        let alphas = Alphas::new(&betas, true);
        check_steps(config, num_inference_steps, betas.num_train_timesteps)?;
        let timesteps = sigma_sampler_timesteps(
            spacing,
            betas.num_train_timesteps,
            num_inference_steps,
            steps_offset,
        );
        let fp: Vec<f64> = alphas.sigmas().iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| np_interp_index(t, &fp) as f32 as f64)
            .collect();
        sigmas.push(0.0);
        let init_noise_sigma = euler_init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction_type,
        })
    }
}

impl<B: Backend> Scheduler<B> for EulerAncestralDiscreteScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, step_index: usize) -> Tensor<B, 4> {
        scale_by_sigma(sample, &self.sigmas, step_index)
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>> {
        if step_index + 1 >= self.sigmas.len() {
            return Err(step_out_of_range(step_index, self.timesteps.len()));
        }
        let noise = noise.ok_or_else(|| {
            ModelError::Invalid("the Euler ancestral sampler needs noise at every step".into())
        })?;
        let sigma = self.sigmas[step_index] as f32;
        let sigma_to = self.sigmas[step_index + 1] as f32;
        let pred_original = match self.prediction_type {
            PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma),
            PredictionType::VPrediction => {
                model_output.mul_scalar(-sigma / sqrt_sigma2_plus_1(sigma))
                    + sample.clone().div_scalar(sigma * sigma + 1.0)
            }
        };
        let (from2, to2) = (sigma * sigma, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        let derivative = (sample.clone() - pred_original).div_scalar(sigma);
        let dt = sigma_down - sigma;
        Ok(sample + derivative.mul_scalar(dt) + noise.mul_scalar(sigma_up))
    }

    fn reset(&mut self) {}

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
