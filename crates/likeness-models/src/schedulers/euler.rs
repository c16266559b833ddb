//! `EulerDiscreteScheduler` (no churn), as diffusers 0.35.2.

use burn::prelude::*;

use super::config::{FinalSigmasType, PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{
    Alphas, karras_sigmas, log_f32, np_arange_f64, np_interp_index, np_linspace, np_round,
    sigma_to_t, sqrt_sigma2_plus_1,
};
use super::{Scheduler, SchedulerOverrides, check_steps, step_out_of_range};
use crate::error::Result;

/// Timesteps for the k-diffusion style samplers (Euler and Euler ancestral), as f64 values
/// of the f32 numbers diffusers computes.
pub(crate) fn sigma_sampler_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    n: usize,
    steps_offset: i64,
) -> Vec<f64> {
    let ntt = num_train_timesteps;
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (ntt - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| t as f32 as f64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = ntt / n;
            (0..n)
                .rev()
                .map(|i| ((i * ratio) as f32 + steps_offset as f32) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange_f64(ntt as f64, 0.0, -(ntt as f64 / n as f64))
            .into_iter()
            .map(|t| (np_round(t) as f32 - 1.0) as f64)
            .collect(),
    }
}

/// Euler's method on the probability-flow ODE in sigma space.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    timesteps: Vec<f64>,
    /// f32 values, widened.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
}

impl EulerDiscreteScheduler {
    /// `EulerDiscreteScheduler.from_config(config, **overrides)` + `set_timesteps(n)`.
    pub fn new(
        config: &SchedulerConfig,
        overrides: SchedulerOverrides,
        num_inference_steps: usize,
    ) -> Result<Self> {
        let betas = config.beta_config()?;
        let prediction_type = config.prediction_type(overrides.prediction_type)?;
        let spacing = config.timestep_spacing("linspace")?;
        let steps_offset = config.get_or("steps_offset", &config.steps_offset, 0);
        let interpolation =
            config.str_or("interpolation_type", &config.interpolation_type, "linear");
        if interpolation != "linear" {
            return Err(config.unsupported("interpolation_type", interpolation));
        }
        let timestep_type = config.str_or("timestep_type", &config.timestep_type, "discrete");
        if timestep_type != "discrete" {
            return Err(config.unsupported("timestep_type", timestep_type));
        }
        config.require_false("use_exponential_sigmas", &config.use_exponential_sigmas)?;
        config.require_false("use_beta_sigmas", &config.use_beta_sigmas)?;
        let use_karras = match overrides.use_karras_sigmas {
            Some(v) => v,
            None => config.get_or("use_karras_sigmas", &config.use_karras_sigmas, false),
        };
        let final_sigmas_type = config.final_sigmas_type()?;
        let sigma_min = config.get("sigma_min", &config.sigma_min);
        let sigma_max = config.get("sigma_max", &config.sigma_max);

        let alphas = Alphas::new(&betas, true);
        check_steps(config, num_inference_steps, betas.num_train_timesteps)?;
        let n = num_inference_steps;
        let mut timesteps =
            sigma_sampler_timesteps(spacing, betas.num_train_timesteps, n, steps_offset);

        let train_sigmas = alphas.sigmas();
        let fp: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| np_interp_index(t, &fp)).collect();
        if use_karras {
            let lo = sigma_min.unwrap_or(sigmas[n - 1]);
            let hi = sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(lo, hi, n);
            let log_sigmas = log_f32(&train_sigmas);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
        }
        let sigma_last = match final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => train_sigmas[0] as f64,
        };
        sigmas.push(sigma_last);
        let sigmas: Vec<f64> = sigmas.into_iter().map(|s| s as f32 as f64).collect();

        let init_noise_sigma = euler_init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction_type,
        })
    }
}

impl<B: Backend> Scheduler<B> for EulerDiscreteScheduler {
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
        false
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        _noise: Option<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>> {
        if step_index + 1 >= self.sigmas.len() {
            return Err(step_out_of_range(step_index, self.timesteps.len()));
        }
        let sigma = self.sigmas[step_index] as f32;
        let sigma_next = self.sigmas[step_index + 1] as f32;
        // s_churn = 0: gamma = 0, sigma_hat = sigma.
        let sigma_hat = sigma * (0.0 + 1.0);
        let pred_original = match self.prediction_type {
            PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma_hat),
            PredictionType::VPrediction => {
                model_output.mul_scalar(-sigma / sqrt_sigma2_plus_1(sigma))
                    + sample.clone().div_scalar(sigma * sigma + 1.0)
            }
        };
        let derivative = (sample.clone() - pred_original).div_scalar(sigma_hat);
        let dt = sigma_next - sigma_hat;
        Ok(sample + derivative.mul_scalar(dt))
    }

    fn reset(&mut self) {}

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}

/// Euler-family `init_noise_sigma`: the largest sigma, or sqrt(σ² + 1) of it for leading spacing.
pub(crate) fn euler_init_noise_sigma(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max_sigma = sigmas
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, |m, s| m.max(s as f32));
    (match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
        TimestepSpacing::Leading => sqrt_sigma2_plus_1(max_sigma),
    }) as f64
}

/// Euler-family `scale_model_input`: the sample divided by sqrt(σ² + 1) of its step.
pub(crate) fn scale_by_sigma<B: Backend>(
    sample: Tensor<B, 4>,
    sigmas: &[f64],
    step_index: usize,
) -> Tensor<B, 4> {
    match sigmas.get(step_index) {
        Some(&sigma) => sample.div_scalar(sqrt_sigma2_plus_1(sigma as f32)),
        None => sample,
    }
}
