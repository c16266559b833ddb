//! `DPMSolverMultistepScheduler` (DPM-Solver++ / DPM-Solver, orders 1-3, optional SDE
//! variants and Karras sigmas), as diffusers 0.35.2.

use burn::prelude::*;

use super::config::{
    BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, TimestepSpacing,
};
use super::schedule::{
    Alphas, karras_sigmas, log_f32, np_arange_f64, np_interp_index, np_linspace, np_round,
    sigma_to_t, sqrt_sigma2_plus_1,
};
use super::{Scheduler, SchedulerOverrides, check_steps, step_out_of_range};
use crate::error::{ModelError, Result};

/// Which DPM-Solver formulation the steps use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// `dpmsolver++` (data prediction; "DPM++").
    DpmSolverPlusPlus,
    /// `dpmsolver` (noise prediction).
    DpmSolver,
    /// `sde-dpmsolver++` (adds noise every step).
    SdeDpmSolverPlusPlus,
    /// `sde-dpmsolver`.
    SdeDpmSolver,
}

impl DpmAlgorithm {
    fn is_sde(&self) -> bool {
        matches!(self, Self::SdeDpmSolverPlusPlus | Self::SdeDpmSolver)
    }

    fn predicts_data(&self) -> bool {
        matches!(self, Self::DpmSolverPlusPlus | Self::SdeDpmSolverPlusPlus)
    }
}

/// DPM-Solver multistep sampler; keeps the last `solver_order` converted model outputs.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler<B: Backend> {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction_type: PredictionType,
    algorithm: DpmAlgorithm,
    solver_order: usize,
    heun: bool,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_type: FinalSigmasType,
    model_outputs: Vec<Option<Tensor<B, 4>>>,
    lower_order_nums: usize,
}

/// `_sigma_to_alpha_sigma_t` in f32: (alpha_t, sigma_t) of a k-diffusion sigma.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / sqrt_sigma2_plus_1(sigma);
    (alpha, sigma * alpha)
}

/// log(alpha) - log(sigma), f32 as torch computes it (infinite at sigma = 0).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl<B: Backend> DpmSolverMultistepScheduler<B> {
    /// `DPMSolverMultistepScheduler.from_config(config, **overrides)` + `set_timesteps(n)`.
    pub fn new(
        config: &SchedulerConfig,
        overrides: SchedulerOverrides,
        num_inference_steps: usize,
    ) -> Result<Self> {
        let betas = config.beta_config()?;
        let prediction_type = config.prediction_type(overrides.prediction_type)?;
        let spacing = config.timestep_spacing("linspace")?;
        let steps_offset = config.get_or("steps_offset", &config.steps_offset, 0);
        config.require_false("thresholding", &config.thresholding)?;
        config.require_false("use_exponential_sigmas", &config.use_exponential_sigmas)?;
        config.require_false("use_beta_sigmas", &config.use_beta_sigmas)?;
        config.require_false("use_lu_lambdas", &config.use_lu_lambdas)?;
        config.require_false("use_flow_sigmas", &config.use_flow_sigmas)?;
        config.require_false("use_dynamic_shifting", &config.use_dynamic_shifting)?;
        if let Some(v) = config.get("variance_type", &config.variance_type)
            && (v == "learned" || v == "learned_range")
        {
            return Err(config.unsupported("variance_type", v));
        }
        let algorithm = match config
            .str_or("algorithm_type", &config.algorithm_type, "dpmsolver++")
            .as_str()
        {
            // diffusers maps `deis` to dpmsolver++.
            "dpmsolver++" | "deis" => DpmAlgorithm::DpmSolverPlusPlus,
            "dpmsolver" => DpmAlgorithm::DpmSolver,
            "sde-dpmsolver++" => DpmAlgorithm::SdeDpmSolverPlusPlus,
            "sde-dpmsolver" => DpmAlgorithm::SdeDpmSolver,
            other => return Err(config.unsupported("algorithm_type", other)),
        };
        let heun = match config
            .str_or("solver_type", &config.solver_type, "midpoint")
            .as_str()
        {
            "midpoint" | "logrho" | "bh1" | "bh2" => false,
            "heun" => true,
            other => return Err(config.unsupported("solver_type", other)),
        };
        let solver_order = config.get_or("solver_order", &config.solver_order, 2);
        if !(1..=3).contains(&solver_order)
            || (solver_order == 3 && algorithm == DpmAlgorithm::SdeDpmSolver)
        {
            return Err(config.unsupported("solver_order", solver_order));
        }
        let final_sigmas_type = config.final_sigmas_type()?;
        if !algorithm.predicts_data() && final_sigmas_type == FinalSigmasType::Zero {
            return Err(config.invalid(
                "final_sigmas_type `zero` needs algorithm_type dpmsolver++ or sde-dpmsolver++",
            ));
        }
        let use_karras = match overrides.use_karras_sigmas {
            Some(v) => v,
            None => config.get_or("use_karras_sigmas", &config.use_karras_sigmas, false),
        };
        let lambda_min_clipped = config.get_or(
            "lambda_min_clipped",
            &config.lambda_min_clipped,
            f64::NEG_INFINITY,
        );
        // Only in the config when another class (Euler) saved it; DPM's Karras reads it anyway.
        let sigma_min = config.get("sigma_min", &config.sigma_min);
        let sigma_max = config.get("sigma_max", &config.sigma_max);

        let alphas = Alphas::new(&betas, true);
        let ntt = betas.num_train_timesteps;
        check_steps(config, num_inference_steps, ntt)?;
        let n = num_inference_steps;

        // searchsorted(flip(lambda_t), lambda_min_clipped): how many of the lowest lambdas
        // (highest timesteps) fall below the clip.
        let lambda_t: Vec<f32> = alphas
            .alphas_cumprod
            .iter()
            .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
            .collect();
        let clipped_idx = lambda_t
            .iter()
            .rev()
            .take_while(|&&l| (l as f64) < lambda_min_clipped)
            .count();
        let last_timestep = ntt as i64 - clipped_idx as i64;

        let mut timesteps: Vec<f64> = match spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = np_linspace(0.0, (last_timestep - 1) as f64, n + 1)
                    .into_iter()
                    .map(np_round)
                    .collect();
                t.remove(0);
                t.reverse();
                t
            }
            TimestepSpacing::Leading => {
                let ratio = last_timestep / (n as i64 + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i as i64 * ratio + steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                np_arange_f64(last_timestep as f64, 0.0, -(ntt as f64 / n as f64))
                    .into_iter()
                    .map(|t| np_round(t) - 1.0)
                    .collect()
            }
        };

        let train_sigmas = alphas.sigmas();
        let mut sigmas: Vec<f64> = if use_karras {
            let log_sigmas = log_f32(&train_sigmas);
            let lo = sigma_min.unwrap_or(train_sigmas[0] as f64);
            let hi = sigma_max.unwrap_or(train_sigmas[train_sigmas.len() - 1] as f64);
            let sigmas = karras_sigmas(lo, hi, n);
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    // Rounded, except for cosine schedules where the int64 cast truncates.
                    if betas.beta_schedule == BetaSchedule::SquaredcosCapV2 {
                        t.trunc()
                    } else {
                        np_round(t)
                    }
                })
                .collect();
            sigmas
        } else {
            let fp: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
            timesteps.iter().map(|&t| np_interp_index(t, &fp)).collect()
        };
        sigmas.push(match final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => train_sigmas[0] as f64,
        });
        let sigmas = sigmas.into_iter().map(|s| s as f32 as f64).collect();

        Ok(Self {
            timesteps,
            sigmas,
            prediction_type,
            algorithm,
            solver_order,
            heun,
            lower_order_final: config.get_or("lower_order_final", &config.lower_order_final, true),
            euler_at_final: config.get_or("euler_at_final", &config.euler_at_final, false),
            final_sigmas_type,
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
        })
    }

    /// `convert_model_output`: x0 for the ++ variants, epsilon otherwise.
    fn convert_model_output(
        &self,
        model_output: Tensor<B, 4>,
        sample: &Tensor<B, 4>,
        i: usize,
    ) -> Tensor<B, 4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i] as f32);
        let sample = sample.clone();
        match (self.algorithm.predicts_data(), self.prediction_type) {
            (true, PredictionType::Epsilon) => {
                (sample - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t)
            }
            (true, PredictionType::VPrediction) => {
                sample.mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t)
            }
            (false, PredictionType::Epsilon) => model_output,
            (false, PredictionType::VPrediction) => {
                model_output.mul_scalar(alpha_t) + sample.mul_scalar(sigma_t)
            }
        }
    }

    fn first_order(
        &self,
        i: usize,
        m: Tensor<B, 4>,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1] as f32);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i] as f32);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        match (self.algorithm, noise) {
            (DpmAlgorithm::DpmSolverPlusPlus, _) => {
                sample.mul_scalar(sigma_t / sigma_s) - m.mul_scalar(alpha_t * ((-h).exp() - 1.0))
            }
            (DpmAlgorithm::DpmSolver, _) => {
                sample.mul_scalar(alpha_t / alpha_s) - m.mul_scalar(sigma_t * (h.exp() - 1.0))
            }
            (DpmAlgorithm::SdeDpmSolverPlusPlus, Some(z)) => {
                sample.mul_scalar(sigma_t / sigma_s * (-h).exp())
                    + m.mul_scalar(alpha_t * (1.0 - (-2.0 * h).exp()))
                    + z.mul_scalar(sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())
            }
            (DpmAlgorithm::SdeDpmSolver, Some(z)) => {
                sample.mul_scalar(alpha_t / alpha_s)
                    - m.mul_scalar(2.0 * (sigma_t * (h.exp() - 1.0)))
                    + z.mul_scalar(sigma_t * ((2.0 * h).exp() - 1.0).sqrt())
            }
            // `step` checks that SDE variants get noise.
            (_, None) => sample,
        }
    }

    fn second_order(
        &self,
        i: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1] as f32);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i] as f32);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1] as f32);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let k = self.solver_order;
        let (Some(m0), Some(m1)) = (
            self.model_outputs[k - 1].clone(),
            self.model_outputs[k - 2].clone(),
        ) else {
            return sample;
        };
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d0 = m0.clone();
        let d1 = (m0 - m1).mul_scalar(1.0 / r0);
        let e = (-h).exp();
        let eh = h.exp();
        match (self.algorithm, self.heun, noise) {
            (DpmAlgorithm::DpmSolverPlusPlus, false, _) => {
                sample.mul_scalar(sigma_t / sigma_s0)
                    - d0.mul_scalar(alpha_t * (e - 1.0))
                    - d1.mul_scalar(0.5 * (alpha_t * (e - 1.0)))
            }
            (DpmAlgorithm::DpmSolverPlusPlus, true, _) => {
                sample.mul_scalar(sigma_t / sigma_s0) - d0.mul_scalar(alpha_t * (e - 1.0))
                    + d1.mul_scalar(alpha_t * ((e - 1.0) / h + 1.0))
            }
            (DpmAlgorithm::DpmSolver, false, _) => {
                sample.mul_scalar(alpha_t / alpha_s0)
                    - d0.mul_scalar(sigma_t * (eh - 1.0))
                    - d1.mul_scalar(0.5 * (sigma_t * (eh - 1.0)))
            }
            (DpmAlgorithm::DpmSolver, true, _) => {
                sample.mul_scalar(alpha_t / alpha_s0)
                    - d0.mul_scalar(sigma_t * (eh - 1.0))
                    - d1.mul_scalar(sigma_t * ((eh - 1.0) / h - 1.0))
            }
            (DpmAlgorithm::SdeDpmSolverPlusPlus, heun, Some(z)) => {
                let e2 = (-2.0 * h).exp();
                let c1 = if heun {
                    alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0)
                } else {
                    0.5 * (alpha_t * (1.0 - e2))
                };
                sample.mul_scalar(sigma_t / sigma_s0 * e)
                    + d0.mul_scalar(alpha_t * (1.0 - e2))
                    + d1.mul_scalar(c1)
                    + z.mul_scalar(sigma_t * (1.0 - e2).sqrt())
            }
            (DpmAlgorithm::SdeDpmSolver, heun, Some(z)) => {
                let c1 = if heun {
                    2.0 * (sigma_t * ((eh - 1.0) / h - 1.0))
                } else {
                    sigma_t * (eh - 1.0)
                };
                sample.mul_scalar(alpha_t / alpha_s0)
                    - d0.mul_scalar(2.0 * (sigma_t * (eh - 1.0)))
                    - d1.mul_scalar(c1)
                    + z.mul_scalar(sigma_t * ((2.0 * h).exp() - 1.0).sqrt())
            }
            (_, _, None) => sample,
        }
    }

    fn third_order(
        &self,
        i: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1] as f32);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i] as f32);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1] as f32);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[i - 2] as f32);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let lambda_s2 = lambda(alpha_s2, sigma_s2);
        let (Some(m0), Some(m1), Some(m2)) = (
            self.model_outputs[2].clone(),
            self.model_outputs[1].clone(),
            self.model_outputs[0].clone(),
        ) else {
            return sample;
        };
        let (h, h_0, h_1) = (
            lambda_t - lambda_s0,
            lambda_s0 - lambda_s1,
            lambda_s1 - lambda_s2,
        );
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m0.clone();
        let d1_0 = (m0 - m1.clone()).mul_scalar(1.0 / r0);
        let d1_1 = (m1 - m2).mul_scalar(1.0 / r1);
        let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()).mul_scalar(r0 / (r0 + r1));
        let d2 = (d1_0 - d1_1).mul_scalar(1.0 / (r0 + r1));
        let e = (-h).exp();
        let eh = h.exp();
        match (self.algorithm, noise) {
            (DpmAlgorithm::DpmSolverPlusPlus, _) => {
                sample.mul_scalar(sigma_t / sigma_s0) - d0.mul_scalar(alpha_t * (e - 1.0))
                    + d1.mul_scalar(alpha_t * ((e - 1.0) / h + 1.0))
                    - d2.mul_scalar(alpha_t * ((e - 1.0 + h) / (h * h) - 0.5))
            }
            (DpmAlgorithm::DpmSolver, _) => {
                sample.mul_scalar(alpha_t / alpha_s0)
                    - d0.mul_scalar(sigma_t * (eh - 1.0))
                    - d1.mul_scalar(sigma_t * ((eh - 1.0) / h - 1.0))
                    - d2.mul_scalar(sigma_t * ((eh - 1.0 - h) / (h * h) - 0.5))
            }
            (DpmAlgorithm::SdeDpmSolverPlusPlus, Some(z)) => {
                let e2 = (-2.0 * h).exp();
                sample.mul_scalar(sigma_t / sigma_s0 * e)
                    + d0.mul_scalar(alpha_t * (1.0 - e2))
                    + d1.mul_scalar(alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0))
                    + d2.mul_scalar(
                        alpha_t * ((1.0 - e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5),
                    )
                    + z.mul_scalar(sigma_t * (1.0 - e2).sqrt())
            }
            // Rejected at construction (order 3 with sde-dpmsolver) or missing noise.
            _ => sample,
        }
    }
}

impl<B: Backend> Scheduler<B> for DpmSolverMultistepScheduler<B> {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, _step_index: usize) -> Tensor<B, 4> {
        sample
    }

    fn needs_noise(&self) -> bool {
        self.algorithm.is_sde()
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>> {
        let n = self.timesteps.len();
        if step_index >= n || step_index + 1 >= self.sigmas.len() {
            return Err(step_out_of_range(step_index, n));
        }
        if self.algorithm.is_sde() && noise.is_none() {
            return Err(ModelError::Invalid(
                "the SDE DPM-Solver needs noise at every step".into(),
            ));
        }
        let i = step_index;
        let lower_order_final = i == n - 1
            && (self.euler_at_final
                || (self.lower_order_final && n < 15)
                || self.final_sigmas_type == FinalSigmasType::Zero);
        let lower_order_second = n >= 2 && i == n - 2 && self.lower_order_final && n < 15;

        let converted = self.convert_model_output(model_output, &sample, i);
        self.model_outputs.rotate_left(1);
        let k = self.solver_order;
        self.model_outputs[k - 1] = Some(converted.clone());

        // Higher orders need earlier sigmas; a history shorter than the order falls back.
        let prev = if k == 1 || self.lower_order_nums < 1 || lower_order_final || i < 1 {
            self.first_order(i, converted, sample, noise)
        } else if k == 2 || self.lower_order_nums < 2 || lower_order_second || i < 2 {
            self.second_order(i, sample, noise)
        } else {
            self.third_order(i, sample, noise)
        };
        if self.lower_order_nums < k {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }

    fn reset(&mut self) {
        self.model_outputs = vec![None; self.solver_order];
        self.lower_order_nums = 0;
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
