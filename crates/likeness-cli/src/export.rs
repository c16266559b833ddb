//! `likeness export-lora`: a run's LoRA as a kohya file (AUTOMATIC1111, ComfyUI) or a
//! diffusers/PEFT file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use likeness_models::lora_files::{ExportInfo, LoraFormat, write_lora_file};
use likeness_models::sd::{LoadOptions, summarize};
use likeness_train::checkpoint::load_checkpoint_lora;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Kohya,
    Diffusers,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// A DreamBooth run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// `latest` or a step number.
    #[arg(long, default_value = "latest")]
    pub checkpoint: String,
    #[arg(long, value_enum)]
    pub format: Format,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let step = match args.checkpoint.as_str() {
        "latest" => None,
        s => Some(
            s.parse::<usize>()
                .with_context(|| format!("--checkpoint must be `latest` or a step, not `{s}`"))?,
        ),
    };
    let config_path = args.run.join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}: not a Likeness run folder", args.run.display()))?,
    )
    .with_context(|| format!("{}", config_path.display()))?;
    let db = &config["dreambooth"];
    if db["mode"]["kind"].as_str() == Some("full") {
        bail!(
            "{}: a full fine-tune run has no LoRA to export (its weights are in the checkpoint folder)",
            args.run.display()
        );
    }
    let set = load_checkpoint_lora(&args.run, step)?;
    if set.layers.is_empty() {
        bail!(
            "{}: the checkpoint holds no LoRA layers",
            args.run.display()
        );
    }
    let base = config["base_model"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_default();
    let summary = summarize(
        &base,
        &LoadOptions {
            v_prediction: db["v_prediction"].as_bool().unwrap_or(false),
            ..Default::default()
        },
    )
    .with_context(|| {
        format!(
            "reading the run's base model {} (needed for the file's metadata)",
            base.display()
        )
    })?;
    let resolution = db["resolution"]
        .as_u64()
        .map(|r| r as usize)
        .unwrap_or(summary.native_size);
    let info = ExportInfo {
        base_model_family: Some(summary.family),
        v_prediction: summary.v_prediction,
        conv_projection: Some(summary.conv_projection),
        resolution: Some([resolution, resolution]),
        steps: Some(
            step.map(|s| s as u64)
                .unwrap_or_else(|| db["steps"].as_u64().unwrap_or(0)),
        ),
        output_name: args
            .out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned()),
        base_model_name: Some(summary.name.clone()),
        learning_rate: db["lr"].as_f64(),
        batch_size: db["batch"].as_u64(),
        seed: db["seed"].as_u64(),
        ..Default::default()
    };
    let format = match args.format {
        Format::Kohya => LoraFormat::Kohya,
        Format::Diffusers => LoraFormat::Diffusers,
    };
    write_lora_file(&args.out, &set, format, &info)?;
    println!(
        "{} LoRA layers written to {} ({:?} format)",
        set.layers.len(),
        args.out.display(),
        args.format
    );
    Ok(())
}
