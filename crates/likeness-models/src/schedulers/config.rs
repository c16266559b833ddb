//! `scheduler/scheduler_config.json`, read the way diffusers' `from_config` reads it.
//!
//! Every field is optional. A scheduler class takes the fields it knows from the file and its
//! own default for the rest; fields a file lists in `_use_default_values` count as absent (so a
//! PNDM config re-saved by diffusers does not force PNDM's `timestep_spacing` on Euler).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::error::{ModelError, Result};

/// The raw contents of a diffusers scheduler config; every field is `None` when absent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The class that saved the config (`PNDMScheduler`, `DDIMScheduler`, …).
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Keys the saving class filled from its own defaults; they are ignored like absent keys.
    #[serde(rename = "_use_default_values")]
    pub use_default_values: Option<Vec<String>>,
    /// Where the config came from; named in every error.
    #[serde(skip)]
    pub path: PathBuf,

    pub num_train_timesteps: Option<usize>,
    #[serde(deserialize_with = "lenient_f64")]
    pub beta_start: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<i64>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub clip_sample_range: Option<f64>,
    pub thresholding: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub variance_type: Option<String>,
    pub interpolation_type: Option<String>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub use_dynamic_shifting: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub sigma_min: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    pub sigma_max: Option<f64>,
    pub timestep_type: Option<String>,
    pub final_sigmas_type: Option<String>,
    pub algorithm_type: Option<String>,
    pub solver_order: Option<usize>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub lambda_min_clipped: Option<f64>,
}

/// How betas grow over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

/// What the denoising network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

/// How inference timesteps are spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// The sigma appended after the last inference step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmasType {
    Zero,
    SigmaMin,
}

impl PredictionType {
    /// Parses a diffusers `prediction_type`; `sample` and anything else is unsupported.
    pub fn parse(path: &Path, value: &str) -> Result<Self> {
        match value {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            other => Err(ModelError::unsupported(path, "prediction_type", other)),
        }
    }

    /// The diffusers name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
        }
    }
}

/// The betas/alphas settings every scheduler class shares, resolved with diffusers' defaults.
#[derive(Debug, Clone)]
pub(crate) struct BetaConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub rescale_betas_zero_snr: bool,
}

impl SchedulerConfig {
    /// Reads `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config text; `path` only names the source in errors. Python's `-Infinity`,
    /// `Infinity` and `NaN` (which diffusers writes for `lambda_min_clipped`) are accepted.
    pub fn from_json_str(text: &str, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let mut cfg: Self = serde_json::from_str(&sanitize_json(text))
            .map_err(|e| ModelError::config(&path, e.to_string()))?;
        cfg.path = path;
        Ok(cfg)
    }

    /// Builds a config from an already parsed JSON value (e.g. one entry of a larger file).
    pub fn from_value(value: serde_json::Value, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let mut cfg: Self =
            serde_json::from_value(value).map_err(|e| ModelError::config(&path, e.to_string()))?;
        cfg.path = path;
        Ok(cfg)
    }

    /// The value of `key` unless the saving class marked it as one of its defaults.
    pub(crate) fn get<T: Clone>(&self, key: &str, value: &Option<T>) -> Option<T> {
        let defaulted = self
            .use_default_values
            .as_ref()
            .is_some_and(|keys| keys.iter().any(|k| k == key));
        if defaulted { None } else { value.clone() }
    }

    /// `get` with the class default filled in.
    pub(crate) fn get_or<T: Clone>(&self, key: &str, value: &Option<T>, default: T) -> T {
        self.get(key, value).unwrap_or(default)
    }

    /// A string field with its class default.
    pub(crate) fn str_or(&self, key: &str, value: &Option<String>, default: &str) -> String {
        self.get(key, value).unwrap_or_else(|| default.to_string())
    }

    pub(crate) fn unsupported(&self, field: &str, value: impl std::fmt::Display) -> ModelError {
        ModelError::unsupported(&self.path, field, value)
    }

    pub(crate) fn invalid(&self, message: impl Into<String>) -> ModelError {
        ModelError::config(&self.path, message)
    }

    /// The shared betas settings (same defaults in every diffusers scheduler class).
    pub(crate) fn beta_config(&self) -> Result<BetaConfig> {
        let beta_schedule = match self
            .str_or("beta_schedule", &self.beta_schedule, "linear")
            .as_str()
        {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredcosCapV2,
            other => return Err(self.unsupported("beta_schedule", other)),
        };
        let num_train_timesteps =
            self.get_or("num_train_timesteps", &self.num_train_timesteps, 1000);
        let trained_betas = self.get("trained_betas", &self.trained_betas);
        let len = trained_betas.as_ref().map_or(num_train_timesteps, Vec::len);
        if len < 2 {
            return Err(self.invalid(format!("needs at least 2 training timesteps, got {len}")));
        }
        Ok(BetaConfig {
            num_train_timesteps,
            beta_start: self.get_or("beta_start", &self.beta_start, 0.0001),
            beta_end: self.get_or("beta_end", &self.beta_end, 0.02),
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr: self.get_or(
                "rescale_betas_zero_snr",
                &self.rescale_betas_zero_snr,
                false,
            ),
        })
    }

    /// `prediction_type` (default `epsilon` in every class), with an override taking priority.
    pub(crate) fn prediction_type(
        &self,
        overridden: Option<PredictionType>,
    ) -> Result<PredictionType> {
        match overridden {
            Some(p) => Ok(p),
            None => PredictionType::parse(
                &self.path,
                &self.str_or("prediction_type", &self.prediction_type, "epsilon"),
            ),
        }
    }

    /// `timestep_spacing` with the class default (`leading` for DDIM/DDPM, `linspace` otherwise).
    pub(crate) fn timestep_spacing(&self, default: &str) -> Result<TimestepSpacing> {
        match self
            .str_or("timestep_spacing", &self.timestep_spacing, default)
            .as_str()
        {
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            other => Err(self.unsupported("timestep_spacing", other)),
        }
    }

    /// `final_sigmas_type` (default `zero`).
    pub(crate) fn final_sigmas_type(&self) -> Result<FinalSigmasType> {
        match self
            .str_or("final_sigmas_type", &self.final_sigmas_type, "zero")
            .as_str()
        {
            "zero" => Ok(FinalSigmasType::Zero),
            "sigma_min" => Ok(FinalSigmasType::SigmaMin),
            other => Err(self.unsupported("final_sigmas_type", other)),
        }
    }

    /// Rejects a boolean option this crate does not implement when it is switched on.
    pub(crate) fn require_false(&self, key: &str, value: &Option<bool>) -> Result<()> {
        if self.get_or(key, value, false) {
            Err(self.unsupported(key, true))
        } else {
            Ok(())
        }
    }
}

/// Turns Python's non-standard JSON tokens (`NaN`, `Infinity`, `-Infinity`) outside strings
/// into strings, so serde_json can read configs that Python's `json.dump` wrote.
pub fn sanitize_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            rest = &rest[1..];
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push('"');
            out.push_str(t);
            out.push('"');
            rest = &rest[t.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// A float that may also be `null` or one of the strings `sanitize_json` produces.
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
    }
    match Option::<Num>::deserialize(d)? {
        None => Ok(None),
        Some(Num::F(v)) => Ok(Some(v)),
        Some(Num::S(s)) => match s.as_str() {
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            "Infinity" => Ok(Some(f64::INFINITY)),
            "NaN" => Ok(Some(f64::NAN)),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, got {other:?}"
            ))),
        },
    }
}
