//! `likeness`: the command line over Likeness' core.

mod bench;
mod demo;
mod dpo;
mod dreambooth;
mod eval;
mod export;
mod first_run;
mod generate;
mod interrupt;
mod score;
mod world;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "likeness",
    version,
    about = "Teach Stable Diffusion your subject, then make it follow the prompt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Text-to-image with a Stable Diffusion 1.x/2.x model.
    Generate(Box<generate::GenerateArgs>),
    /// Teach a model a subject from a folder of photos (DreamBooth, LoRA or full).
    Dreambooth(Box<dreambooth::DreamBoothArgs>),
    /// Time the UNet and a generation at SD 1.5 shape with random weights.
    Bench(bench::BenchArgs),
    /// Score generated images: likeness to the concept (IS) and prompt following (TS).
    Score(score::ScoreArgs),
    /// Export a run's LoRA in kohya (AUTOMATIC1111, ComfyUI) or diffusers format.
    ExportLora(export::ExportArgs),
    /// The built-in synthetic world: concept photos, and training its small models.
    #[command(subcommand)]
    World(world::WorldCommand),
    /// Rounds of DreamBooth-DPO: generate, score, pair inside the angle window, train.
    Dpo(Box<dpo::DpoArgs>),
    /// Compare the base model, DreamBooth checkpoints and DPO stages on held-out prompts.
    Eval(Box<eval::EvalArgs>),
    /// The whole method on the built-in world: DreamBooth, 2 DPO stages, evaluation, report.md.
    Demo(Box<demo::DemoArgs>),
}

fn main() -> ExitCode {
    likeness_models::device::tuning::init_logging(
        tracing_subscriber::EnvFilter::try_from_env("LIKENESS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    );
    // A panic's message and place go to the log (`LIKENESS_LOG=debug`); the terminal gets one
    // line: from `dispatch` for work on a backend, from the catch below for anything else.
    std::panic::set_hook(Box::new(|info| tracing::debug!("panic: {info}")));
    let cli = Cli::parse();
    let result = std::panic::catch_unwind(|| run(cli)).unwrap_or_else(|payload| {
        Err(anyhow::anyhow!(likeness_models::device::panic_line(
            &*payload
        )))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Dreambooth(args) => dreambooth::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Score(args) => score::run(args),
        Command::ExportLora(args) => export::run(args),
        Command::World(cmd) => world::run(cmd),
        Command::Dpo(args) => dpo::run(*args),
        Command::Eval(args) => eval::run(*args),
        Command::Demo(args) => demo::run(*args),
    }
}
