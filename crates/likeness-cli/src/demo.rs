//! `likeness demo`: DreamBooth, two DPO stages and the evaluation on the built-in world, ending in
//! `report.md`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use likeness_models::device::{DeviceChoice, Precision, dispatch};
use likeness_train::TrainEvent;
use likeness_train::demo::{DemoConfig, DemoTask};
use likeness_train::world_train::builtin_models;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// One of the built-in concepts: star-creature, ring-creature, heart-creature.
    #[arg(long, default_value = "star-creature")]
    pub concept: String,
    /// The world's diffusers folder (default: the built-in one).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The world's CLIP folder (default: the built-in one).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    #[arg(long)]
    pub dreambooth_steps: Option<usize>,
    #[arg(long)]
    pub stages: Option<usize>,
    #[arg(long)]
    pub prompts_per_stage: Option<usize>,
    #[arg(long)]
    pub samples_per_prompt: Option<usize>,
    #[arg(long)]
    pub dpo_steps_per_stage: Option<usize>,
    #[arg(long)]
    pub eval_prompts: Option<usize>,
    #[arg(long)]
    pub eval_seeds: Option<usize>,
    /// Sampling steps of every generated picture.
    #[arg(long)]
    pub sample_steps: Option<usize>,
    /// The DPO angle window in degrees (the fidelity ↔ prompt slider).
    #[arg(long)]
    pub angle_min: Option<f64>,
    #[arg(long)]
    pub angle_max: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub quiet: bool,
    /// Output folder; running again with the same settings continues there.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let (model, clip) = match (&a.model, &a.clip) {
        (Some(m), Some(c)) => (m.clone(), c.clone()),
        (None, None) => builtin_models()?,
        _ => bail!("give both --model and --clip, or neither for the built-in world"),
    };
    let mut c = DemoConfig::new(&model, &clip, &a.concept, &a.out);
    c.seed = a.seed;
    let set = |slot: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut c.dreambooth_steps, a.dreambooth_steps);
    set(&mut c.stages, a.stages);
    set(&mut c.prompts_per_stage, a.prompts_per_stage);
    set(&mut c.samples_per_prompt, a.samples_per_prompt);
    set(&mut c.dpo_steps_per_stage, a.dpo_steps_per_stage);
    set(&mut c.eval_prompts, a.eval_prompts);
    set(&mut c.eval_seeds, a.eval_seeds);
    set(&mut c.sample_steps, a.sample_steps);
    c.angle_min = a.angle_min.unwrap_or(c.angle_min);
    c.angle_max = a.angle_max.unwrap_or(c.angle_max);
    let cancel = crate::interrupt::checkpointing_ctrl_c()?;
    let mut terminal = crate::dreambooth::Terminal::new(a.quiet);
    let mut last_status = std::time::Instant::now() - std::time::Duration::from_secs(60);
    let quiet = a.quiet;
    let mut on_event = |e: TrainEvent| match e {
        // Per-picture lines come fast: at most one a second.
        TrainEvent::Status { message } if message.starts_with("image ") => {
            if !quiet && last_status.elapsed().as_secs() >= 1 {
                last_status = std::time::Instant::now();
                terminal.on(TrainEvent::Status { message });
            }
        }
        other => {
            if let TrainEvent::Status { message } = &other
                && message.starts_with("DPO:")
            {
                terminal.set_examples("pairs");
            }
            terminal.on(other)
        }
    };
    let report = dispatch(
        a.device,
        Precision::F32,
        DemoTask {
            config: c,
            events: &mut on_event,
            cancel,
        },
    )??;
    let Some(r) = report else {
        bail!(
            "stopped; run the same command again to continue in {}",
            a.out.display()
        );
    };
    if !a.quiet {
        println!("| variant | IS | TS | background | subject |");
        println!("|---|---|---|---|---|");
        for (row, check) in r.rows.iter().zip(&r.checks) {
            println!(
                "| {} | {:.4} | {:.4} | {:.2} | {:.2} |",
                row.variant, row.is_mean, row.ts_mean, check.background, check.subject
            );
        }
    }
    println!("{}", r.report.display());
    Ok(())
}
