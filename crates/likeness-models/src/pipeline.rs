//! Text-to-image sampling with classifier-free guidance, as diffusers' `StableDiffusionPipeline`.

use burn::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

use crate::error::{ModelError, Result};
use crate::rng::randn;
use crate::schedulers::{SchedulerKind, build_scheduler};
use crate::sd::StableDiffusion;

/// Everything that decides a picture, besides the model and the initial noise.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct GenerateParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: SchedulerKind,
    /// Seed of the first image; image `i` uses `seed + i`, so each is reproducible alone.
    pub seed: u64,
    pub count: usize,
    pub width: usize,
    pub height: usize,
    /// 0: last hidden state; k: the k-th layer from the end, final-layer-normed (A1111's clip skip − 1).
    pub clip_skip: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 30,
            guidance: 7.5,
            scheduler: SchedulerKind::Ddim,
            seed: 0,
            count: 1,
            width: 512,
            height: 512,
            clip_skip: 0,
        }
    }
}

/// Where Gaussian noise comes from: the seeded default, or recorded noise in parity tests.
pub trait NoiseSource {
    /// Initial latents, `count × per_image` values in image order.
    fn initial(&mut self, count: usize, per_image: usize) -> Vec<f32>;
    /// Noise an ancestral sampler draws at `step`.
    fn step(&mut self, step: usize, count: usize, per_image: usize) -> Vec<f32>;
}

/// One RNG stream per image, seeded `seed + i`: initial noise first, then each step's noise.
pub struct SeededNoise {
    streams: Vec<StdRng>,
}

impl SeededNoise {
    pub fn new(seed: u64, count: usize) -> Self {
        Self {
            streams: (0..count as u64)
                .map(|i| StdRng::seed_from_u64(seed.wrapping_add(i)))
                .collect(),
        }
    }

    fn draw(&mut self, per_image: usize) -> Vec<f32> {
        self.streams
            .iter_mut()
            .flat_map(|rng| randn(rng, per_image))
            .collect()
    }
}

impl NoiseSource for SeededNoise {
    fn initial(&mut self, _count: usize, per_image: usize) -> Vec<f32> {
        self.draw(per_image)
    }
    fn step(&mut self, _step: usize, _count: usize, per_image: usize) -> Vec<f32> {
        self.draw(per_image)
    }
}

/// Progress of a generation: `(step, total)` after each denoising step.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

impl<B: Backend> StableDiffusion<B> {
    /// Latent shape [count, C, h, w] for the requested pixel size, checked against the networks.
    pub fn latent_shape(&self, p: &GenerateParams) -> Result<[usize; 4]> {
        let f = self.vae.downscale_factor();
        let unet_f = self.unet.downscale_factor();
        let step = f * unet_f;
        if p.width == 0
            || p.height == 0
            || !p.width.is_multiple_of(step)
            || !p.height.is_multiple_of(step)
        {
            return Err(ModelError::Invalid(format!(
                "width and height must be positive multiples of {step} for this model (got {}x{})",
                p.width, p.height
            )));
        }
        Ok([p.count, self.unet.in_channels(), p.height / f, p.width / f])
    }

    /// Prompt embeddings [1, 77, D].
    pub fn encode_text(&self, text: &str, clip_skip: usize) -> Result<Tensor<B, 3>> {
        let ids = self.tokenizer.encode(text);
        let n = ids.len();
        let device = self.device();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                ids.into_iter().map(|i| i as i64).collect::<Vec<_>>(),
                [1, n],
            ),
            &device,
        );
        self.text_encoder.encode_prompt(ids, clip_skip)
    }

    pub fn device(&self) -> B::Device {
        self.unet.devices().into_iter().next().unwrap_or_default()
    }

    /// Runs the sampler and returns the final latents (diffusers' `output_type="latent"`).
    pub fn sample(
        &self,
        p: &GenerateParams,
        init_latents: Option<Tensor<B, 4>>,
        noise: &mut dyn NoiseSource,
        progress: Progress<'_>,
    ) -> Result<Tensor<B, 4>> {
        if p.steps == 0 {
            return Err(ModelError::Invalid("steps must be at least 1".into()));
        }
        if p.count == 0 {
            return Err(ModelError::Invalid("count must be at least 1".into()));
        }
        let shape = self.latent_shape(p)?;
        let device = self.device();
        let per_image: usize = shape[1..].iter().product();
        let mut scheduler = build_scheduler::<B>(
            p.scheduler,
            &self.scheduler_config,
            p.scheduler.default_overrides(),
            p.steps,
        )?;
        let latents = match init_latents {
            Some(l) => {
                if l.dims() != shape {
                    return Err(ModelError::Invalid(format!(
                        "initial latents have shape {:?}, expected {:?}",
                        l.dims(),
                        shape
                    )));
                }
                l
            }
            None => Tensor::from_data(
                TensorData::new(noise.initial(p.count, per_image), shape),
                &device,
            ),
        };
        let mut latents = latents * scheduler.init_noise_sigma();

        let cfg = p.guidance > 1.0;
        let cond = self.encode_text(&p.prompt, p.clip_skip)?;
        let [_, seq, dim] = cond.dims();
        let cond = cond.expand([p.count, seq, dim]);
        let context = if cfg {
            let uncond = self
                .encode_text(&p.negative_prompt, p.clip_skip)?
                .expand([p.count, seq, dim]);
            Tensor::cat(vec![uncond, cond], 0)
        } else {
            cond
        };

        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if cfg {
                Tensor::cat(vec![latents.clone(), latents.clone()], 0)
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(input, i);
            let batch = input.dims()[0];
            let t_in =
                Tensor::<B, 1>::from_data(TensorData::new(vec![t as f32; batch], [batch]), &device);
            let pred = self.unet.forward(input, t_in, context.clone());
            let pred = if cfg {
                let mut halves = pred.chunk(2, 0).into_iter();
                let (uncond, text) = match (halves.next(), halves.next()) {
                    (Some(u), Some(t)) => (u, t),
                    _ => return Err(ModelError::Invalid("guidance split failed".into())),
                };
                uncond.clone() + (text - uncond) * p.guidance
            } else {
                pred
            };
            let step_noise = scheduler.needs_noise().then(|| {
                Tensor::from_data(
                    TensorData::new(noise.step(i, p.count, per_image), shape),
                    &device,
                )
            });
            latents = scheduler.step(pred, i, latents, step_noise)?;
            progress(i + 1, total);
        }
        Ok(latents)
    }

    /// Decodes latents into images in [0, 1], [N, 3, H, W].
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let image = self.vae.decode(latents / self.vae.scaling_factor());
        (image / 2.0 + 0.5).clamp(0.0, 1.0)
    }
}

/// Turns decoded images [N, 3, H, W] in [0, 1] into 8-bit RGB pictures (rounding as diffusers).
pub fn to_rgb8<B: Backend>(images: Tensor<B, 4>) -> Result<Vec<image::RgbImage>> {
    let [n, c, h, w] = images.dims();
    if c != 3 {
        return Err(ModelError::Invalid(format!("expected 3 channels, got {c}")));
    }
    let data = images
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ModelError::Invalid(format!("reading image data: {e:?}")))?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut img = image::RgbImage::new(w as u32, h as u32);
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| {
                    let v = data[((i * 3 + ch) * h + y) * w + x];
                    (v * 255.0).round().clamp(0.0, 255.0) as u8
                };
                img.put_pixel(x as u32, y as u32, image::Rgb([px(0), px(1), px(2)]));
            }
        }
        out.push(img);
    }
    Ok(out)
}
