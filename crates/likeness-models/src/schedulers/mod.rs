//! Samplers and the training noise schedule, ported from diffusers 0.35.2.
//!
//! `build_scheduler` turns a `scheduler_config.json` (whatever class saved it) into one of the
//! samplers below the way `<Class>.from_config(config, **overrides)` followed by
//! `set_timesteps(n)` does in diffusers. The sampling loop then calls, for each step `i`,
//! `scale_model_input(sample, i)`, runs the UNet at `timesteps()[i]`, and `step(...)`.

pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub(crate) mod schedule;

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;

pub use config::{
    BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, TimestepSpacing, sanitize_json,
};
pub use ddim::DdimScheduler;
pub use ddpm::NoiseSchedule;
pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;

use crate::error::{ModelError, Result};

/// A sampler the CLI offers, by diffusers class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `DDIMScheduler` (eta = 0).
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler` (draws noise every step).
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` (DPM++ 2M with the config's defaults).
    DpmPp2m,
}

impl SchedulerKind {
    /// All kinds, in CLI order.
    pub const ALL: [SchedulerKind; 4] =
        [Self::Ddim, Self::Euler, Self::EulerAncestral, Self::DpmPp2m];

    /// The CLI name (`ddim`, `euler`, `euler-a`, `dpmpp-2m`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::DpmPp2m => "dpmpp-2m",
        }
    }

    /// The diffusers class this kind mirrors.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::Ddim => "DDIMScheduler",
            Self::Euler => "EulerDiscreteScheduler",
            Self::EulerAncestral => "EulerAncestralDiscreteScheduler",
            Self::DpmPp2m => "DPMSolverMultistepScheduler",
        }
    }

    /// The kind for a diffusers class name, if it is one of ours.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.class_name() == name)
    }

    /// The overrides the CLI's sampler name implies: `dpmpp-2m` means DPM++ 2M Karras.
    pub fn default_overrides(&self) -> SchedulerOverrides {
        match self {
            Self::DpmPp2m => SchedulerOverrides {
                use_karras_sigmas: Some(true),
                ..Default::default()
            },
            _ => SchedulerOverrides::default(),
        }
    }
}

impl serde::Serialize for SchedulerKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for SchedulerKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "unknown scheduler `{s}` (expected one of ddim, euler, euler-a, dpmpp-2m)"
                ))
            })
    }
}

/// Keyword arguments passed to `from_config` on top of the file (they win over it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerOverrides {
    pub prediction_type: Option<PredictionType>,
    /// Only read by the classes that have it (Euler, DPM-Solver).
    pub use_karras_sigmas: Option<bool>,
}

/// One sampler with its timesteps set, driven step by step by the sampling loop.
pub trait Scheduler<B: Backend>: Send {
    /// The timesteps the UNet is run at, one per step, as diffusers' `scheduler.timesteps`.
    fn timesteps(&self) -> &[f64];
    /// The noise levels (one more than the steps), or empty for DDIM.
    fn sigmas(&self) -> &[f64];
    /// Factor on unit-variance noise for the initial latents.
    fn init_noise_sigma(&self) -> f64;
    /// The UNet input for step `step_index` (identity for DDIM and DPM-Solver).
    fn scale_model_input(&self, sample: Tensor<B, 4>, step_index: usize) -> Tensor<B, 4>;
    /// Whether `step` needs fresh standard-normal noise shaped like the sample.
    fn needs_noise(&self) -> bool;
    /// The sample after step `step_index`. Steps must be taken in order from 0 (multistep
    /// solvers keep a history); `noise` is required when `needs_noise()`.
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>>;
    /// Forgets the multistep history so the same schedule can sample again.
    fn reset(&mut self);
    /// The prediction type the sampler interprets the model output as.
    fn prediction_type(&self) -> PredictionType;
}

/// `<kind's class>.from_config(config, **overrides)` then `set_timesteps(num_inference_steps)`.
pub fn build_scheduler<B: Backend>(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    overrides: SchedulerOverrides,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler<B>>> {
    Ok(match kind {
        SchedulerKind::Ddim => {
            Box::new(DdimScheduler::new(config, overrides, num_inference_steps)?)
        }
        SchedulerKind::Euler => Box::new(EulerDiscreteScheduler::new(
            config,
            overrides,
            num_inference_steps,
        )?),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestralDiscreteScheduler::new(
            config,
            overrides,
            num_inference_steps,
        )?),
        SchedulerKind::DpmPp2m => Box::new(DpmSolverMultistepScheduler::new(
            config,
            overrides,
            num_inference_steps,
        )?),
    })
}

/// The error for a step index past the schedule.
pub(crate) fn step_out_of_range(step_index: usize, steps: usize) -> ModelError {
    ModelError::Invalid(format!(
        "scheduler step {step_index} is out of range for {steps} inference steps"
    ))
}

/// The common `num_inference_steps` check.
pub(crate) fn check_steps(config: &SchedulerConfig, steps: usize, train: usize) -> Result<()> {
    if steps == 0 {
        return Err(config.invalid("num_inference_steps must be at least 1"));
    }
    if steps > train {
        return Err(config.invalid(format!(
            "num_inference_steps {steps} cannot be larger than num_train_timesteps {train}"
        )));
    }
    Ok(())
}
