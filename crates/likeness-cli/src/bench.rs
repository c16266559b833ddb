//! `likeness bench`: timings at Stable Diffusion 1.5 shape with seeded random weights. The
//! companion `tests/bench/diffusers_ref.py` times the same work in diffusers/PyTorch.

use std::time::Instant;

use anyhow::Context;
use burn::prelude::*;
use clap::Args;
use likeness_models::device::{BackendTask, DeviceChoice, Placement, Precision, dispatch};
use likeness_models::pipeline::{GenerateParams, SeededNoise};
use likeness_models::schedulers::SchedulerKind;
use likeness_models::sd::StableDiffusion;
use likeness_models::single_file::Family;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Picture size in pixels (latents are size/8).
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Steps of the timed generation.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Timed repetitions of the UNet forward (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Which parts: unet, generate, all (those two), or dpo-step (one DreamBooth-DPO
    /// optimizer step on one pair: model and reference UNet on winner and loser, backward,
    /// AdamW on rank-4 attention LoRA).
    #[arg(long, default_value = "all")]
    pub only: String,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    name: String,
    device: String,
    mean_ms: f64,
    min_ms: f64,
    runs: usize,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !["unet", "generate", "all", "dpo-step"].contains(&args.only.as_str()) {
        anyhow::bail!("--only must be unet, generate, all or dpo-step");
    }
    let rows = dispatch(
        args.device,
        args.precision,
        BenchTask { args: args.clone() },
    )?;
    println!("| benchmark | device | mean ms | min ms | runs |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {} |",
            r.name, r.device, r.mean_ms, r.min_ms, r.runs
        );
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&rows)?;
        likeness_models::png_meta::write_atomic(path, text.as_bytes())
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

struct BenchTask {
    args: BenchArgs,
}

fn time<B: Backend>(device: &B::Device, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    let _ = B::sync(device);
    t.elapsed().as_secs_f64() * 1e3
}

impl BackendTask for BenchTask {
    type Output = Vec<Row>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Vec<Row>> {
        let a = self.args;
        let label = format!("{placement} ({})", B::name(&device));
        let model = StableDiffusion::<B>::random(Family::Sd1, 0, &device)?;
        let lat = a.size / 8;
        let mut rows = Vec::new();
        if a.only == "dpo-step" {
            rows.push(dpo_step::<B>(&model, &a, &label, &device)?);
            return Ok(rows);
        }
        if a.only != "generate" {
            let sample = Tensor::<B, 4>::random(
                [2, 4, lat, lat],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let t = Tensor::<B, 1>::from_floats([981.0, 981.0], &device);
            let ctx = Tensor::<B, 3>::random(
                [2, 77, 768],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let mut times = Vec::new();
            for i in 0..=a.iters {
                let ms = time::<B>(&device, || {
                    let out = model.unet.forward(sample.clone(), t.clone(), ctx.clone());
                    let _ = out.into_data();
                });
                if i > 0 {
                    times.push(ms);
                }
                eprintln!(
                    "unet forward {i}: {ms:.1} ms{}",
                    if i == 0 { " (warm-up)" } else { "" }
                );
            }
            rows.push(row(
                &format!("UNet forward, batch 2, {}px", a.size),
                &label,
                &times,
            ));
        }
        if a.only != "unet" {
            let p = GenerateParams {
                prompt: "a photo of a dog on the beach".into(),
                negative_prompt: String::new(),
                steps: a.steps,
                guidance: 7.5,
                scheduler: SchedulerKind::DpmPp2m,
                seed: 0,
                count: 1,
                width: a.size,
                height: a.size,
                clip_skip: 0,
            };
            let ms = time::<B>(&device, || {
                let mut noise = SeededNoise::new(0, 1);
                if let Ok(l) =
                    model.sample(&p, None, &mut noise, &mut |s, n| eprintln!("step {s}/{n}"))
                {
                    let _ = model.decode(l).into_data();
                }
            });
            rows.push(row(
                &format!(
                    "generate {} steps (CFG, DPM++ 2M, decode), {}px",
                    a.steps, a.size
                ),
                &label,
                &[ms],
            ));
        }
        Ok(rows)
    }
}

/// One DPO step at the bench size: four UNet passes (model on winner and loser with autodiff,
/// reference on both without), backward, global-norm clipping and AdamW on the LoRA.
fn dpo_step<B: Backend>(
    model: &StableDiffusion<B>,
    a: &BenchArgs,
    label: &str,
    device: &B::Device,
) -> likeness_models::Result<Row> {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use likeness_models::lora::{self, LoraSet, LoraShape, LoraTargets};
    use likeness_models::schedulers::NoiseSchedule;
    use likeness_models::unet::UNet2DConditionModel;
    use likeness_train::dpo::{DpoBatch, dpo_terms};
    use likeness_train::optim::{AdamW, AdamWConfig, FlatGrads};
    use rand::SeedableRng;

    let shape = LoraShape {
        rank: 4,
        alpha: 4.0,
    };
    let (mut reference, _) =
        lora::attach(model.unet.clone(), &LoraTargets::unet_attention(), shape, 0);
    let mut start = LoraSet::default();
    start.add_adapters("unet", &mut reference)?;
    let mut unet = start.attach_to(
        "unet",
        UNet2DConditionModel::<Autodiff<B>>::from_inner(model.unet.clone()),
    )?;
    let schedule = NoiseSchedule::from_config(&model.scheduler_config)?;
    let lat = a.size / 8;
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let winners = Tensor::<B, 4>::random([1, 4, lat, lat], normal, device);
    let losers = Tensor::<B, 4>::random([1, 4, lat, lat], normal, device);
    let ctx = Tensor::<B, 3>::random([1, 77, 768], normal, device);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let batch = DpoBatch::draw(winners, losers, ctx, &schedule, &mut rng);
    let mut optim = AdamW::<B>::new(AdamWConfig::default());
    let mut times = Vec::new();
    for i in 0..=a.iters {
        let began = Instant::now();
        let terms = dpo_terms(&schedule, 5000.0, &unet, &reference, &batch)
            .map_err(|e| likeness_models::ModelError::Invalid(e.to_string()))?;
        let mut grads = FlatGrads::from_loss(terms.loss, &unet);
        grads.clip_global_norm(1.0);
        unet = optim.step(1e-5, unet, grads);
        // Reading a weight back waits for the step's work to finish.
        let _ = unet.conv_in.weight.val().inner().into_data();
        let _ = B::sync(device);
        let ms = began.elapsed().as_secs_f64() * 1e3;
        if i > 0 {
            times.push(ms);
        }
        eprintln!(
            "dpo step {i}: {ms:.1} ms{}",
            if i == 0 { " (warm-up)" } else { "" }
        );
    }
    Ok(row(
        &format!(
            "DPO step (4 UNet passes + backward + AdamW, LoRA r4), 1 pair, {}px",
            a.size
        ),
        label,
        &times,
    ))
}

fn row(name: &str, device: &str, times: &[f64]) -> Row {
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Row {
        name: name.into(),
        device: device.into(),
        mean_ms: mean,
        min_ms: min,
        runs: times.len(),
    }
}
