//! `likeness eval`: the base model, every DreamBooth checkpoint and every DPO stage on the same
//! held-out prompts and seeds; writes `eval.csv` and the IS–TS scatter.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::bail;
use clap::Args;
use likeness_models::device::{DeviceChoice, Precision, dispatch};
use likeness_train::TrainEvent;
use likeness_train::eval::{EvalConfig, EvalTask};

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// The base model: a diffusers folder or a single-file .safetensors checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// DreamBooth and DPO run folders.
    #[arg(long, num_args = 1.., required = true)]
    pub runs: Vec<PathBuf>,
    #[arg(long)]
    pub concept: PathBuf,
    /// A transformers CLIPModel folder.
    #[arg(long)]
    pub clip: PathBuf,
    /// A transformers ViTModel folder (DINO).
    #[arg(long)]
    pub dino: Option<PathBuf>,
    #[arg(long)]
    pub token: String,
    #[arg(long)]
    pub class: String,
    /// Prompt templates with `{}` for the subject (default: DreamBench's for the class).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Seeds 0..N for every prompt.
    #[arg(long, default_value_t = 4)]
    pub seeds: usize,
    #[arg(long, default_value_t = 50)]
    pub sample_steps: usize,
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Pixels per side (default: the model's native size).
    #[arg(long)]
    pub resolution: Option<usize>,
    #[arg(long)]
    pub v_prediction: bool,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut c = EvalConfig::new(
        &args.model,
        &args.concept,
        &args.clip,
        &args.token,
        &args.class,
    );
    c.v_prediction = args.v_prediction;
    c.runs = args.runs.clone();
    c.dino = args.dino.clone();
    c.prompts = args.prompts.clone();
    c.seeds = args.seeds;
    c.sample_steps = args.sample_steps;
    c.guidance = args.guidance;
    c.resolution = args.resolution;
    c.out = args.out.clone();
    let quiet = args.quiet;
    let mut on_event = |e: TrainEvent| {
        if let TrainEvent::Status { message } = e
            && !quiet
            && !message.starts_with("image ")
        {
            eprintln!("{message}");
        }
    };
    let report = dispatch(
        args.device,
        args.precision,
        EvalTask {
            config: c,
            events: &mut on_event,
            cancel: Arc::new(AtomicBool::new(false)),
        },
    )??;
    let Some(report) = report else {
        bail!("evaluation stopped");
    };
    for r in &report.rows {
        println!(
            "{:<32} IS {:.4} ± {:.4}  TS {:.4} ± {:.4}  n {}",
            r.variant, r.is_mean, r.is_se, r.ts_mean, r.ts_se, r.n
        );
    }
    println!("{}", report.csv.display());
    Ok(())
}
