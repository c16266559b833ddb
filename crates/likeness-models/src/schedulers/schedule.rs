//! Schedule arithmetic done the way diffusers does it with torch (f32) and numpy (f64), so
//! that betas, alphas_cumprod, sigmas and timesteps come out bit-for-bit or within an ulp.
//!
//! Two sources of 1-ulp differences remain and are accepted: torch's CPU `sqrt`/`** 0.5` (MKL
//! VML, faithfully but not correctly rounded) and numpy's SIMD f32 `log`. They only matter where
//! diffusers amplifies them: `rescale_betas_zero_snr` (1 - alphas_cumprod cancels near t = 0)
//! and fractional Karras timesteps (≤ 1 f32 ulp).

use super::config::{BetaConfig, BetaSchedule};

/// `torch.linspace(start, end, n, dtype=torch.float32)` on CPU.
///
/// Torch computes `start + step * i` for the first half and `end - step * (n - 1 - i)` for
/// the second, in f32; its AVX2/AVX-512 kernels contract each into one fused multiply-add.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    match n {
        0 => return Vec::new(),
        1 => return vec![start as f32],
        _ => {}
    }
    let (s, e) = (start as f32, end as f32);
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((n - 1 - i) as f32, e)
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform (`squaredcos_cap_v2`).
fn betas_for_alpha_bar(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `torch.cumprod` of an f32 tensor on CPU: accumulated in f64, each output rounded to f32.
pub(crate) fn cumprod_f32(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr`, in f32 like its torch code.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let first = sqrt[0];
    let last = sqrt[sqrt.len() - 1];
    let scale = first / (first - last);
    for v in &mut sqrt {
        *v = (*v - last) * scale;
    }
    let bar: Vec<f32> = sqrt.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// The f32 betas and alphas_cumprod a diffusers scheduler builds in `__init__`.
#[derive(Debug, Clone)]
pub(crate) struct Alphas {
    pub alphas_cumprod: Vec<f32>,
}

impl Alphas {
    /// `zero_snr_floor`: Euler/DPM set the last alphas_cumprod to 2^-24 after rescaling
    /// (DDIM/DDPM do not).
    pub fn new(cfg: &BetaConfig, zero_snr_floor: bool) -> Self {
        let mut betas = match (&cfg.trained_betas, cfg.beta_schedule) {
            (Some(trained), _) => trained.iter().map(|&b| b as f32).collect(),
            (None, BetaSchedule::Linear) => {
                torch_linspace_f32(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps)
            }
            (None, BetaSchedule::ScaledLinear) => torch_linspace_f32(
                cfg.beta_start.sqrt(),
                cfg.beta_end.sqrt(),
                cfg.num_train_timesteps,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            (None, BetaSchedule::SquaredcosCapV2) => betas_for_alpha_bar(cfg.num_train_timesteps),
        };
        if cfg.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = cumprod_f32(&alphas);
        if cfg.rescale_betas_zero_snr
            && zero_snr_floor
            && let Some(last) = alphas_cumprod.last_mut()
        {
            *last = 2f32.powi(-24);
        }
        Self { alphas_cumprod }
    }

    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in f32, indexed by training timestep.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

/// numpy's `np.linspace(start, stop, num)` (endpoint included), in f64.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = (0..num)
        .map(|i| {
            let i = i as f64;
            if step == 0.0 {
                i / div * delta + start
            } else {
                i * step + start
            }
        })
        .collect();
    y[num - 1] = stop;
    y
}

/// numpy's `np.arange(start, stop, step)` for floats: `start + i * delta` where
/// `delta = (start + step) - start`, as numpy's fill function computes it.
pub(crate) fn np_arange_f64(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    // NaN (zero step) or a non-positive count: numpy returns an empty array.
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, np.arange(len(fp)), fp)`.
pub(crate) fn np_interp_index(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0];
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    let slope = fp[j + 1] - fp[j];
    slope * (x - j as f64) + fp[j]
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma matches, mixing
/// f64 and f32 as numpy does (`log_sigmas` is an f32 array).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // argmax of the cumulative count of `log_sigma >= log_sigmas[i]` = the last such i (0 if none).
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `np.log` of an f32 array, correctly rounded.
pub(crate) fn log_f32(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| (v as f64).ln() as f32).collect()
}

/// diffusers' `_convert_to_karras` (rho = 7) in f64.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// numpy's `round` (half to even).
pub(crate) fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// Scaled-input factor and alpha/sigma helpers shared by the samplers, in f32.
pub(crate) fn sqrt_sigma2_plus_1(sigma: f32) -> f32 {
    (sigma * sigma + 1.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_matches_numpy_shape() {
        let v = np_arange_f64(1000.0, 0.0, -1000.0 / 7.0);
        assert_eq!(v.len(), 7);
        assert_eq!(v[0], 1000.0);
    }

    #[test]
    fn linspace_endpoints() {
        let v = np_linspace(0.0, 999.0, 7);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[6], 999.0);
    }
}
