//! `likeness dpo`: rounds of DreamBooth-DPO on a DreamBooth run or a LoRA file — generate,
//! score, pair inside the angle window, train — with checkpoints and resume.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use likeness_models::device::{
    DeviceChoice, Placement, Precision, dispatch, training_placement, tuning,
};
use likeness_train::TrainEvent;
use likeness_train::dpo::{DpoConfig, DpoJob, DpoSource, DpoTask};

#[derive(Args, Debug, Clone)]
pub struct DpoArgs {
    /// The base model: a diffusers folder or a single-file .safetensors checkpoint.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// A DreamBooth run folder: DPO starts from its latest checkpoint.
    #[arg(long, conflicts_with = "lora", required_unless_present_any = ["resume", "lora"])]
    pub run: Option<PathBuf>,
    /// A LoRA file (kohya or diffusers layout) to start from.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Photos of the subject (likeness is measured against them).
    #[arg(long, required_unless_present = "resume")]
    pub concept: Option<PathBuf>,
    /// A transformers CLIPModel folder.
    #[arg(long, required_unless_present = "resume")]
    pub clip: Option<PathBuf>,
    /// A transformers ViTModel folder (DINO), for the extra likeness score.
    #[arg(long)]
    pub dino: Option<PathBuf>,
    #[arg(long, required_unless_present = "resume")]
    pub token: Option<String>,
    #[arg(long, required_unless_present = "resume")]
    pub class: Option<String>,
    /// Prompt templates, one a line with `{}` for the subject (default: the training contexts).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub stages: usize,
    #[arg(long, default_value_t = 100)]
    pub prompts_per_stage: usize,
    #[arg(long, default_value_t = 8)]
    pub samples_per_prompt: usize,
    /// The pair window on atan2(ΔIS, ΔTS) in degrees: 0 favours prompt following, 90 likeness.
    #[arg(long, default_value_t = 20.0, allow_hyphen_values = true)]
    pub angle_min: f64,
    #[arg(long, default_value_t = 70.0, allow_hyphen_values = true)]
    pub angle_max: f64,
    /// Smallest score difference |Δ| of a kept pair.
    #[arg(long, default_value_t = 0.0)]
    pub min_margin: f64,
    /// Keep at most this many pairs per prompt, largest difference first (0: all).
    #[arg(long, default_value_t = 0)]
    pub max_pairs_per_prompt: usize,
    #[arg(long, default_value_t = 5000.0)]
    pub beta: f64,
    #[arg(long, default_value_t = 500)]
    pub steps_per_stage: usize,
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Pairs per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Sampler steps of the generated images.
    #[arg(long, default_value_t = 50)]
    pub sample_steps: usize,
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pixels per side (default: the model's native size).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Checkpoint every N steps of a stage (0: only at its end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Treat the model as v-prediction (SD 2.x 768 models).
    #[arg(long)]
    pub v_prediction: bool,
    /// Recompute the UNet's layers in backward instead of keeping their activations (less GPU
    /// memory, one more forward pass per step).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// bf16 or f16: mixed precision (base weights and activations in that dtype; LoRA adapters,
    /// gradients and optimiser state in f32). The CPU trains in f32. A resumed run keeps its own.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// The run folder to create.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder: finished stages, images and scores are kept, training
    /// continues from the last checkpoint.
    #[arg(long, conflicts_with_all = ["model", "run", "lora", "concept", "clip", "token", "class", "out"])]
    pub resume: Option<PathBuf>,
    /// Only errors and the result.
    #[arg(long)]
    pub quiet: bool,
}

fn config_from(args: &DpoArgs) -> anyhow::Result<DpoConfig> {
    let (Some(model), Some(concept), Some(clip), Some(token), Some(class)) = (
        &args.model,
        &args.concept,
        &args.clip,
        &args.token,
        &args.class,
    ) else {
        bail!("--model, --concept, --clip, --token and --class are required for a new run");
    };
    let source = match (&args.run, &args.lora) {
        (Some(r), None) => DpoSource::Run(r.clone()),
        (None, Some(l)) => DpoSource::Lora(l.clone()),
        _ => bail!("give one of --run DREAMBOOTH_RUN or --lora FILE"),
    };
    let mut c = DpoConfig::new(model, source, concept, clip, token, class);
    c.v_prediction = args.v_prediction;
    c.dino = args.dino.clone();
    c.prompts = args.prompts.clone();
    c.stages = args.stages;
    c.prompts_per_stage = args.prompts_per_stage;
    c.samples_per_prompt = args.samples_per_prompt;
    c.filter.angle_min = args.angle_min;
    c.filter.angle_max = args.angle_max;
    c.filter.min_margin = args.min_margin;
    c.filter.max_pairs_per_prompt = args.max_pairs_per_prompt;
    c.beta = args.beta;
    c.steps_per_stage = args.steps_per_stage;
    c.lr = args.lr;
    c.batch = args.batch;
    c.sample_steps = args.sample_steps;
    c.guidance = args.guidance;
    c.seed = args.seed;
    c.resolution = args.resolution;
    c.checkpoint_every = args.checkpoint_every;
    c.gradient_checkpointing = args.gradient_checkpointing;
    Ok(c)
}

/// Progress lines on stderr.
fn report(quiet: bool) -> impl FnMut(TrainEvent) {
    let mut last_status = std::time::Instant::now() - std::time::Duration::from_secs(60);
    move |event| {
        if quiet {
            return;
        }
        match event {
            // Per-image lines come fast; show at most one a second.
            TrainEvent::Status { message }
                if !message.starts_with("image ") || last_status.elapsed().as_secs() >= 1 =>
            {
                last_status = std::time::Instant::now();
                eprintln!("{message}");
            }
            TrainEvent::Started {
                run_dir,
                start_step,
                total_steps,
                photos,
                ..
            } => eprintln!(
                "training {} on {photos} pairs (steps {}..{total_steps})",
                run_dir.display(),
                start_step + 1
            ),
            TrainEvent::Step {
                step, loss, secs, ..
            } if step % 10 == 0 => eprintln!("step {step}: loss {loss:.4} ({secs:.2}s)"),
            TrainEvent::Checkpoint { step, path } => {
                eprintln!("step {step}: checkpoint {}", path.display())
            }
            _ => {}
        }
    }
}

pub fn run(args: DpoArgs) -> anyhow::Result<()> {
    let (job, run_dir) = match &args.resume {
        Some(run_dir) => (
            DpoJob::Resume {
                run_dir: run_dir.clone(),
            },
            run_dir.clone(),
        ),
        None => {
            let Some(out) = &args.out else {
                bail!("--out is required for a new run");
            };
            (
                DpoJob::New {
                    config: Box::new(config_from(&args)?),
                    run_dir: out.clone(),
                },
                out.clone(),
            )
        }
    };
    let cancel = crate::interrupt::checkpointing_ctrl_c()?;
    let mut on_event = report(args.quiet);
    let Placement {
        device,
        precision: mixed,
    } = training_placement(args.device, args.precision)?;
    let job = match job {
        DpoJob::New {
            mut config,
            run_dir,
        } => {
            config.mixed_precision = mixed;
            DpoJob::New { config, run_dir }
        }
        resume => resume,
    };
    let first_run = match &job {
        DpoJob::New { config, .. } => crate::first_run::announce(
            device,
            tuning::work(
                "dpo",
                &config.model,
                [config.resolution.unwrap_or(0); 2],
                1,
                mixed,
            ),
        ),
        DpoJob::Resume { .. } => None,
    };
    let outcome = dispatch(
        device,
        Precision::F32,
        DpoTask {
            job,
            events: &mut on_event,
            cancel,
        },
    )??;
    if !outcome.loras.is_empty() {
        crate::first_run::record(first_run);
    }
    for lora in &outcome.loras {
        println!("{}", lora.display());
    }
    if outcome.cancelled {
        eprintln!(
            "stopped after {} finished stages; continue with: likeness dpo --resume {}",
            outcome.stages_done,
            run_dir.display()
        );
    }
    Ok(())
}
