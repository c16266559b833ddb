//! The forward (noising) process of `DDPMScheduler`, for training: `add_noise`,
//! `get_velocity` and the SNR used by min-SNR loss weighting.

use burn::prelude::*;

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::Alphas;
use crate::error::{ModelError, Result};

/// `DDPMScheduler`'s alphas_cumprod and prediction type.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// f32 cumulative products of alphas, indexed by training timestep.
    pub alphas_cumprod: Vec<f32>,
    /// What the model is trained to predict.
    pub prediction_type: PredictionType,
}

impl NoiseSchedule {
    /// `DDPMScheduler.from_config(config)` (class defaults for absent keys).
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let betas = config.beta_config()?;
        Ok(Self {
            alphas_cumprod: Alphas::new(&betas, false).alphas_cumprod,
            prediction_type: config.prediction_type(None)?,
        })
    }

    /// The same schedule trained for another prediction type (`--prediction_type` in the
    /// diffusers training scripts).
    pub fn with_prediction_type(mut self, prediction_type: PredictionType) -> Self {
        self.prediction_type = prediction_type;
        self
    }

    /// The number of training timesteps.
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Per-sample `(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))` as `[B,1,1,1]` tensors.
    fn coefficients<B: Backend>(
        &self,
        timesteps: &[usize],
        batch: usize,
        device: &B::Device,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        if timesteps.len() != batch {
            return Err(ModelError::Invalid(format!(
                "{} timesteps for a batch of {batch}",
                timesteps.len()
            )));
        }
        let mut sqrt_a = Vec::with_capacity(batch);
        let mut sqrt_1m = Vec::with_capacity(batch);
        for &t in timesteps {
            let a = *self.alphas_cumprod.get(t).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "timestep {t} is outside 0..{}",
                    self.alphas_cumprod.len()
                ))
            })?;
            sqrt_a.push(a.sqrt());
            sqrt_1m.push((1.0 - a).sqrt());
        }
        let make =
            |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [batch, 1, 1, 1]), device);
        Ok((make(sqrt_a), make(sqrt_1m)))
    }

    /// `add_noise`: `sqrt(a_t) * original + sqrt(1 - a_t) * noise`, one timestep per sample.
    pub fn add_noise<B: Backend>(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, 4>> {
        let (a, s) = self.coefficients::<B>(timesteps, original.dims()[0], &original.device())?;
        Ok(original * a + noise * s)
    }

    /// `get_velocity`: `sqrt(a_t) * noise - sqrt(1 - a_t) * sample`, the v-prediction target.
    pub fn velocity<B: Backend>(
        &self,
        sample: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, 4>> {
        let (a, s) = self.coefficients::<B>(timesteps, sample.dims()[0], &sample.device())?;
        Ok(noise * a - sample * s)
    }

    /// The training target for the prediction type: the noise, or the velocity.
    pub fn target<B: Backend>(
        &self,
        sample: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, 4>> {
        match self.prediction_type {
            PredictionType::Epsilon => Ok(noise),
            PredictionType::VPrediction => self.velocity(sample, noise, timesteps),
        }
    }

    /// Signal-to-noise ratio `(sqrt(a_t) / sqrt(1 - a_t))^2` in f32, as diffusers'
    /// `training_utils.compute_snr`; `None` past the last timestep.
    pub fn snr(&self, t: usize) -> Option<f64> {
        let a = *self.alphas_cumprod.get(t)?;
        let ratio = a.sqrt() / (1.0 - a).sqrt();
        Some((ratio * ratio) as f64)
    }

    /// The Min-SNR-γ loss weight of timestep `t` (Hang et al. 2023, as diffusers' training
    /// scripts): `min(snr, γ) / snr` for ε-prediction, `min(snr, γ) / (snr + 1)` for
    /// v-prediction; 1 past the last timestep.
    pub fn min_snr_weight(&self, t: usize, gamma: f64) -> f64 {
        let Some(snr) = self.snr(t) else {
            return 1.0;
        };
        let snr = snr.max(1e-12);
        let clipped = snr.min(gamma);
        match self.prediction_type {
            PredictionType::Epsilon => clipped / snr,
            PredictionType::VPrediction => clipped / (snr + 1.0),
        }
    }

    /// [`Self::min_snr_weight`] of each sample's timestep, as a `[batch]` tensor that multiplies
    /// per-sample losses.
    pub fn min_snr_weights<B: Backend>(
        &self,
        timesteps: &[usize],
        gamma: f64,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let w: Vec<f32> = timesteps
            .iter()
            .map(|&t| self.min_snr_weight(t, gamma) as f32)
            .collect();
        Tensor::from_data(TensorData::new(w, [timesteps.len()]), device)
    }
}
