//! `likeness generate`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::prelude::*;
use clap::Args;
use likeness_models::device::{BackendTask, DeviceChoice, Placement, Precision, dispatch};
use likeness_models::pipeline::{GenerateParams, SeededNoise, to_rgb8};
use likeness_models::png_meta::{a1111_parameters, save_png, write_atomic};
use likeness_models::schedulers::SchedulerKind;
use likeness_models::sd::{LoadOptions, StableDiffusion};
use likeness_models::weights::WeightStore;

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A diffusers folder (with model_index.json) or a single-file .safetensors checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// ddim, euler, euler-a or dpmpp-2m (DPM++ 2M Karras).
    #[arg(long, default_value = "ddim")]
    pub scheduler: SchedulerKind,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Defaults to the model's native size.
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Initial noise: a safetensors file with tensor `latents` [count, 4, h, w] (f32).
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// Writes the final denoised latents (tensor `latents`, f32) to this safetensors file.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// Treat the model as v-prediction (SD 2.x 768 models).
    #[arg(long)]
    pub v_prediction: bool,
    /// Use the text encoder's k-th layer from the end (0: last).
    #[arg(long, default_value_t = 0)]
    pub clip_skip: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// A .png file, or a folder that receives PNGs and an index.jsonl line per image.
    #[arg(long)]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One line of `index.jsonl`: the format every later command reads.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct IndexEntry {
    pub file: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: SchedulerKind,
    pub width: usize,
    pub height: usize,
    pub model: String,
    pub loras: Vec<String>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let out_is_file = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if out_is_file {
        if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            bail!("{}: folder does not exist", parent.display());
        }
    } else {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("{}: cannot create folder", args.out.display()))?;
    }
    dispatch(args.device, args.precision, GenerateTask { args })?;
    Ok(())
}

struct GenerateTask {
    args: GenerateArgs,
}

fn read_latents(path: &Path) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let store = WeightStore::open(&[path.to_path_buf()])?;
    let shape = store
        .shape("latents")
        .with_context(|| format!("{}: no tensor `latents`", path.display()))?;
    let values = store.load_f32("latents", &shape, likeness_models::weights::Init::Zeros)?;
    Ok((shape, values))
}

fn save_latents(path: &Path, shape: &[usize], values: &[f32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .context("latents tensor")?;
    let data = safetensors::serialize([("latents", view)], None).context("serialising latents")?;
    write_atomic(path, &data)?;
    Ok(())
}

impl BackendTask for GenerateTask {
    type Output = ();

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<()> {
        let args = self.args;
        run_on::<B>(&args, &device, placement)
            .map_err(|e| likeness_models::ModelError::Invalid(format!("{e:#}")))
    }
}

fn run_on<B: Backend>(
    args: &GenerateArgs,
    device: &B::Device,
    placement: Placement,
) -> anyhow::Result<()> {
    let opts = LoadOptions {
        v_prediction: args.v_prediction,
        ..Default::default()
    };
    let model = StableDiffusion::<B>::load(&args.model, &opts, device)?;
    let native = model.native_size();
    let params = GenerateParams {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance: args.guidance,
        scheduler: args.scheduler,
        seed: args.seed,
        count: args.count,
        width: args.width.unwrap_or(native),
        height: args.height.unwrap_or(native),
        clip_skip: args.clip_skip,
    };
    let shape = model.latent_shape(&params)?;
    let init = match &args.latents {
        Some(path) => {
            let (s, v) = read_latents(path)?;
            if s != shape {
                bail!(
                    "{}: `latents` has shape {s:?}, expected {shape:?} for --count {} at {}x{}",
                    path.display(),
                    params.count,
                    params.width,
                    params.height
                );
            }
            Some(Tensor::<B, 4>::from_data(TensorData::new(v, shape), device))
        }
        None => None,
    };
    tracing::info!(
        "{} ({}, {:?}) on {placement}",
        model.info.name,
        model.info.family,
        model.info.prediction_type
    );
    let bar = (!args.quiet).then(|| {
        let b = indicatif::ProgressBar::new(params.steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({per_sec}, ETA {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut noise = SeededNoise::new(params.seed, params.count);
    let mut progress = |step: usize, total: usize| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(step as u64);
        }
    };
    let latents = model.sample(&params, init, &mut noise, &mut progress)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(path) = &args.save_latents {
        let values = latents
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading latents: {e:?}"))?;
        save_latents(path, &shape, &values)?;
    }
    let images = to_rgb8(model.decode(latents))?;
    write_images(args, &params, &model.info.name, &images)
}

fn write_images(
    args: &GenerateArgs,
    params: &GenerateParams,
    model_name: &str,
    images: &[image::RgbImage],
) -> anyhow::Result<()> {
    let out_is_file = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if out_is_file {
        for (i, img) in images.iter().enumerate() {
            let seed = params.seed + i as u64;
            let path = if images.len() == 1 {
                args.out.clone()
            } else {
                let stem = args.out.file_stem().unwrap_or_default().to_string_lossy();
                args.out.with_file_name(format!("{stem}-{i}.png"))
            };
            save_png(&path, img, &a1111_parameters(params, seed, model_name, &[]))?;
            println!("{}", path.display());
        }
        return Ok(());
    }
    let index_path = args.out.join("index.jsonl");
    let mut index = match std::fs::read_to_string(&index_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => bail!("{}: {e}", index_path.display()),
    };
    if !index.is_empty() && !index.ends_with('\n') {
        index.push('\n');
    }
    let mut next = index.lines().count();
    for (i, img) in images.iter().enumerate() {
        let seed = params.seed + i as u64;
        let file = loop {
            let name = format!("{next:05}-{seed}.png");
            next += 1;
            if !args.out.join(&name).exists() {
                break name;
            }
        };
        let path = args.out.join(&file);
        save_png(&path, img, &a1111_parameters(params, seed, model_name, &[]))?;
        let entry = IndexEntry {
            file: file.clone(),
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            seed,
            steps: params.steps,
            guidance: params.guidance,
            scheduler: params.scheduler,
            width: params.width,
            height: params.height,
            model: model_name.to_string(),
            loras: Vec::new(),
        };
        index.push_str(&serde_json::to_string(&entry)?);
        index.push('\n');
        println!("{}", path.display());
    }
    write_atomic(&index_path, index.as_bytes())?;
    Ok(())
}
