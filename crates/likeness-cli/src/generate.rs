//! `likeness generate`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::prelude::*;
use clap::Args;
use likeness_models::device::{BackendTask, DeviceChoice, Placement, Precision, dispatch, tuning};
use likeness_models::lora_files::{merge_lora, open_lora_file};
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
    /// A LoRA file (kohya/A1111/ComfyUI or diffusers layout) merged at strength SCALE (default 1);
    /// repeatable.
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = parse_lora)]
    pub lora: Vec<LoraArg>,
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

/// A LoRA file and the strength it is merged at.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraArg {
    pub path: PathBuf,
    pub scale: f32,
}

impl LoraArg {
    /// The name AUTOMATIC1111 calls it by in a prompt: the file name without extension.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `FILE:SCALE`, as `--lora` takes it back.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.path.display(), self.scale)
    }
}

/// `FILE[:SCALE]`: the text after the last `:` is a scale only if it is a number, so Windows
/// paths (`C:\loras\x.safetensors`) need no scale.
fn parse_lora(s: &str) -> Result<LoraArg, String> {
    if s.is_empty() {
        return Err("empty LoRA file name".into());
    }
    if let Some((path, scale)) = s.rsplit_once(':')
        && !path.is_empty()
        && let Ok(scale) = scale.trim().parse::<f32>()
    {
        if !scale.is_finite() {
            return Err(format!("LoRA scale `{scale}` is not a finite number"));
        }
        return Ok(LoraArg {
            path: path.into(),
            scale,
        });
    }
    Ok(LoraArg {
        path: s.into(),
        scale: 1.0,
    })
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
    for l in &args.lora {
        if !l.path.is_file() {
            bail!("{}: no such LoRA file", l.path.display());
        }
    }
    let device = likeness_models::device::resolve(args.device)?;
    let first_run = crate::first_run::announce(
        device,
        tuning::work(
            "generate",
            &args.model,
            [args.width.unwrap_or(0), args.height.unwrap_or(0)],
            1,
            args.precision,
        ),
    );
    dispatch(device, args.precision, GenerateTask { args })?;
    crate::first_run::record(first_run);
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
    // Straight into the half type unless LoRA files are merged first (in f32, then cast).
    let opts = LoadOptions {
        v_prediction: args.v_prediction,
        precision: if args.lora.is_empty() {
            placement.precision
        } else {
            Precision::F32
        },
        ..Default::default()
    };
    let mut model = StableDiffusion::<B>::load(&args.model, &opts, device)?;
    apply_loras(&args.lora, &mut model)?;
    let model = model.with_precision(placement.precision);
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

/// Merges each `--lora` file into the UNet and text encoder; one warning line per file for what
/// found no place.
fn apply_loras<B: Backend>(
    loras: &[LoraArg],
    model: &mut StableDiffusion<B>,
) -> anyhow::Result<()> {
    for l in loras {
        let file = open_lora_file(&l.path)?;
        let report = merge_lora(&file.set, &mut model.unet, &mut model.text_encoder, l.scale);
        let mut left: Vec<String> = file.skipped.iter().map(|s| s.to_string()).collect();
        left.extend(report.unplaced);
        if report.merged == 0 {
            bail!(
                "{}: none of its {} LoRA layers fits this model (e.g. {})",
                l.path.display(),
                file.set.layers.len(),
                left.first().map(String::as_str).unwrap_or("?")
            );
        }
        if !left.is_empty() {
            const SHOWN: usize = 4;
            eprintln!(
                "warning: {}: {} LoRA keys/layers not applied: {}{}",
                l.path.display(),
                left.len(),
                left[..left.len().min(SHOWN)].join(", "),
                if left.len() > SHOWN { ", …" } else { "" }
            );
        }
        tracing::info!(
            "{}: {} LoRA layers merged ({} layout) at {}",
            l.path.display(),
            report.merged,
            file.format,
            l.scale
        );
    }
    Ok(())
}

fn write_images(
    args: &GenerateArgs,
    params: &GenerateParams,
    model_name: &str,
    images: &[image::RgbImage],
) -> anyhow::Result<()> {
    let lora_tags: Vec<String> = args
        .lora
        .iter()
        .map(|l| format!("{}:{}", l.name(), l.scale))
        .collect();
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
            save_png(
                &path,
                img,
                &a1111_parameters(params, seed, model_name, &lora_tags),
            )?;
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
        save_png(
            &path,
            img,
            &a1111_parameters(params, seed, model_name, &lora_tags),
        )?;
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
            loras: args.lora.iter().map(LoraArg::spec).collect(),
        };
        index.push_str(&serde_json::to_string(&entry)?);
        index.push('\n');
        println!("{}", path.display());
    }
    write_atomic(&index_path, index.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_scale_is_taken_only_when_it_is_a_number() {
        let p = |s: &str| parse_lora(s).unwrap();
        assert_eq!(p("a.safetensors").scale, 1.0);
        assert_eq!(p("a.safetensors:0.5").scale, 0.5);
        assert_eq!(p("a.safetensors:0.5").path, PathBuf::from("a.safetensors"));
        assert_eq!(p("a.safetensors:-1").scale, -1.0);
        let win = p(r"C:\loras\x.safetensors");
        assert_eq!(
            (win.path, win.scale),
            (PathBuf::from(r"C:\loras\x.safetensors"), 1.0)
        );
        let win = p(r"C:\loras\x.safetensors:0.8");
        assert_eq!(
            (win.path, win.scale),
            (PathBuf::from(r"C:\loras\x.safetensors"), 0.8)
        );
        assert_eq!(p("odd:name").path, PathBuf::from("odd:name"));
        assert!(parse_lora("").is_err());
        assert!(parse_lora("a:inf").is_err());
        assert_eq!(p("dir/my lora.safetensors:0.7").name(), "my lora");
        assert_eq!(p("x.safetensors:0.7").spec(), "x.safetensors:0.7");
    }
}
