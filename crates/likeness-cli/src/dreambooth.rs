//! `likeness dreambooth`: teach a model a subject from a folder of photos (LoRA or full
//! fine-tune), with checkpoints, preview galleries and resume.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use likeness_models::device::{
    DeviceChoice, Placement, Precision, dispatch, training_placement, tuning,
};
use likeness_models::lora::LoraTargets;
use likeness_train::TrainEvent;
use likeness_train::dreambooth::{DreamBoothConfig, DreamBoothJob, DreamBoothTask};
use likeness_train::optim::LrSchedule;
use likeness_train::trainable::TrainMode;

#[derive(Args, Debug, Clone)]
pub struct DreamBoothArgs {
    /// The base model: a diffusers folder or a single-file .safetensors checkpoint (with
    /// --resume: a new place of the same model).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// The folder of photos of the subject (PNG or JPEG; other files are skipped).
    #[arg(long, required_unless_present = "resume")]
    pub images: Option<PathBuf>,
    /// The rare token that will name the subject.
    #[arg(long, required_unless_present = "resume")]
    pub token: Option<String>,
    /// The subject's class, e.g. dog.
    #[arg(long, required_unless_present = "resume")]
    pub class: Option<String>,
    /// Default: "a photo of {token} {class}".
    #[arg(long)]
    pub instance_prompt: Option<String>,
    /// Default: "a photo of {class}".
    #[arg(long)]
    pub class_prompt: Option<String>,
    /// Also train on class images the base model makes (kept in the run folder).
    #[arg(long)]
    pub prior_preservation: bool,
    #[arg(long, default_value_t = 100)]
    pub class_images: usize,
    #[arg(long, default_value_t = 1.0)]
    pub prior_weight: f64,
    #[arg(long, default_value_t = 4)]
    pub lora_rank: usize,
    /// Default: the rank (scale 1).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// attention (to_q/k/v/out.0) or extended (also ff, proj_in, proj_out).
    #[arg(long, default_value = "attention")]
    pub lora_targets: String,
    /// Fine-tune every UNet weight instead of LoRA adapters.
    #[arg(long)]
    pub full: bool,
    /// Train the text encoder too (LoRA on q/k/v/out_proj and fc1/fc2, or fully with --full).
    #[arg(long)]
    pub train_text_encoder: bool,
    /// Total optimizer steps (default 400; with --resume: a new total).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// constant or cosine.
    #[arg(long, default_value = "constant")]
    pub lr_schedule: LrSchedule,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Global gradient-norm clipping (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Pixels per side (default: the model's native size).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Mirror photos at random.
    #[arg(long)]
    pub random_flip: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.0)]
    pub noise_offset: f64,
    /// Min-SNR-γ loss weighting (5 is usual).
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Preview gallery every N steps (0: none).
    #[arg(long, default_value_t = 100)]
    pub sample_every: usize,
    /// A text file of preview prompts, one a line (default: the instance prompt).
    #[arg(long)]
    pub sample_prompts: Option<PathBuf>,
    /// Preview seeds, comma-separated.
    #[arg(long, default_value = "0,1", value_delimiter = ',')]
    pub sample_seeds: Vec<u64>,
    /// Sampler steps of previews and class images.
    #[arg(long, default_value_t = 25)]
    pub sample_steps: usize,
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
    /// Continue the run in this folder from its last checkpoint, with its settings.
    #[arg(long, conflicts_with_all = ["images", "token", "class", "out", "full", "prior_preservation", "instance_prompt"])]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn config_from(args: &DreamBoothArgs) -> anyhow::Result<DreamBoothConfig> {
    let (Some(model), Some(images), Some(token), Some(class)) =
        (&args.model, &args.images, &args.token, &args.class)
    else {
        bail!("--model, --images, --token and --class are required for a new run");
    };
    let mut c = DreamBoothConfig::new(model, images, token, class);
    c.v_prediction = args.v_prediction;
    c.instance_prompt = args.instance_prompt.clone();
    c.class_prompt = args.class_prompt.clone();
    c.prior_preservation = args.prior_preservation;
    c.class_images = args.class_images;
    c.prior_weight = args.prior_weight;
    c.mode = if args.full {
        TrainMode::Full {
            text_encoder: args.train_text_encoder,
        }
    } else {
        let (unet_targets, text_targets) = match args.lora_targets.as_str() {
            "attention" => (LoraTargets::unet_attention(), LoraTargets::text_attention()),
            "extended" => (LoraTargets::unet_extended(), LoraTargets::text_extended()),
            other => bail!("unknown --lora-targets `{other}` (attention, extended)"),
        };
        TrainMode::Lora {
            rank: args.lora_rank,
            alpha: args.lora_alpha.unwrap_or(args.lora_rank as f64),
            unet_targets,
            text_targets: args.train_text_encoder.then_some(text_targets),
        }
    };
    c.steps = args.steps.unwrap_or(400);
    c.lr = args.lr;
    c.lr_schedule = args.lr_schedule;
    c.warmup_steps = args.warmup_steps;
    c.adam.weight_decay = args.weight_decay;
    c.adam.beta1 = args.adam_beta1;
    c.adam.beta2 = args.adam_beta2;
    c.adam.eps = args.adam_eps;
    c.max_grad_norm = (args.max_grad_norm > 0.0).then_some(args.max_grad_norm);
    c.batch = args.batch;
    c.grad_accum = args.grad_accum;
    c.resolution = args.resolution;
    c.random_flip = args.random_flip;
    c.seed = args.seed;
    c.noise_offset = args.noise_offset;
    c.min_snr_gamma = args.min_snr_gamma;
    c.checkpoint_every = args.checkpoint_every;
    c.sample_every = args.sample_every;
    c.samples.seeds = args.sample_seeds.clone();
    c.samples.steps = args.sample_steps;
    if let Some(path) = &args.sample_prompts {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the sample prompts", path.display()))?;
        c.samples.prompts = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
    }
    c.gradient_checkpointing = args.gradient_checkpointing;
    Ok(c)
}

/// The terminal's view of a run: a progress bar with loss, lr, it/s and ETA.
pub(crate) struct Terminal {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    /// What a run's training examples are: photos (DreamBooth) or pairs (DPO).
    examples: &'static str,
}

impl Terminal {
    pub(crate) fn new(quiet: bool) -> Self {
        Self {
            bar: None,
            quiet,
            examples: "photos",
        }
    }

    /// Names the training examples of the runs that follow.
    pub(crate) fn set_examples(&mut self, examples: &'static str) {
        self.examples = examples;
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    pub(crate) fn on(&mut self, event: TrainEvent) {
        match event {
            TrainEvent::Status { message } => match &self.bar {
                Some(b) => b.set_message(message),
                None if !self.quiet => eprintln!("{message}"),
                None => {}
            },
            TrainEvent::Started {
                run_dir,
                start_step,
                total_steps,
                photos,
                skipped,
                upscaled,
            } => {
                for (p, why) in &skipped {
                    eprintln!("warning: {}: skipped ({why})", p.display());
                }
                for p in &upscaled {
                    eprintln!(
                        "warning: {}: smaller than the resolution; upscaled",
                        p.display()
                    );
                }
                if !self.quiet {
                    eprintln!(
                        "training on {photos} {} into {} (steps {}..{total_steps})",
                        self.examples,
                        run_dir.display(),
                        start_step + 1
                    );
                    let b = indicatif::ProgressBar::new(total_steps as u64);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ({per_sec}, ETA {eta})",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    b.set_position(start_step as u64);
                    b.reset_eta();
                    self.bar = Some(b);
                }
            }
            TrainEvent::Step { step, loss, lr, .. } => {
                if let Some(b) = &self.bar {
                    b.set_position(step as u64);
                    b.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
                }
            }
            TrainEvent::Checkpoint { step, path } => {
                self.say(format!("step {step}: checkpoint {}", path.display()))
            }
            TrainEvent::Sample { step, paths } => {
                if let Some(dir) = paths.first().and_then(|p| p.parent()) {
                    self.say(format!("step {step}: previews in {}", dir.display()));
                }
            }
            TrainEvent::Finished { .. } | TrainEvent::Error { .. } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    }
}

pub fn run(args: DreamBoothArgs) -> anyhow::Result<()> {
    let job = match &args.resume {
        Some(run_dir) => DreamBoothJob::Resume {
            run_dir: run_dir.clone(),
            steps: args.steps,
            model: args.model.clone(),
        },
        None => {
            let Some(out) = &args.out else {
                bail!("--out is required for a new run");
            };
            DreamBoothJob::New {
                config: Box::new(config_from(&args)?),
                run_dir: out.clone(),
            }
        }
    };
    let run_dir = match &job {
        DreamBoothJob::New { run_dir, .. } | DreamBoothJob::Resume { run_dir, .. } => {
            run_dir.clone()
        }
    };
    let cancel = crate::interrupt::checkpointing_ctrl_c()?;
    let mut terminal = Terminal::new(args.quiet);
    let mut on_event = |e: TrainEvent| terminal.on(e);
    let Placement {
        device,
        precision: mixed,
    } = training_placement(args.device, args.precision)?;
    let job = match job {
        DreamBoothJob::New {
            mut config,
            run_dir,
        } => {
            config.mixed_precision = mixed;
            DreamBoothJob::New { config, run_dir }
        }
        resume => resume,
    };
    let first_run = match &job {
        DreamBoothJob::New { config, .. } => crate::first_run::announce(
            device,
            tuning::work(
                "dreambooth",
                &config.model,
                [config.resolution.unwrap_or(0); 2],
                config.batch,
                mixed,
            ),
        ),
        DreamBoothJob::Resume { .. } => None,
    };
    let outcome = dispatch(
        device,
        Precision::F32,
        DreamBoothTask {
            job,
            events: &mut on_event,
            cancel,
        },
    )??;
    if outcome.step > 0 {
        crate::first_run::record(first_run);
    }
    if let Some(path) = &outcome.checkpoint {
        println!("{}", path.display());
    }
    if outcome.cancelled {
        eprintln!(
            "stopped at step {}; continue with: likeness dreambooth --resume {}",
            outcome.step,
            run_dir.display()
        );
    }
    Ok(())
}
