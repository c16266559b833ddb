//! `likeness world`: the built-in synthetic world — its concept photos, and training its small
//! VAE, CLIP and UNet with Likeness' own trainers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use likeness_models::device::{DeviceChoice, Precision, dispatch, tuning};
use likeness_train::TrainEvent;
use likeness_train::optim::LrSchedule;
use likeness_train::world::{CONCEPTS, write_concept_photos};
use likeness_train::world_train::{
    ClipBindingTask, ClipTrainConfig, QualityConfig, QualityTask, UNetTrainConfig, VaeTrainConfig,
    WorldModelSpec, WorldStage, WorldTrainTask,
};

#[derive(Subcommand, Debug, Clone)]
pub enum WorldCommand {
    /// Write the concept photos of the built-in subjects, as an artist's photos would be.
    Concepts(ConceptArgs),
    /// Train the world's VAE, then CLIP, then UNet (resumable: run it again to continue).
    Train(TrainArgs),
    /// Copy trained world models into a folder with every weight in f16 (how they are committed).
    Pack(PackArgs),
    /// Measure a world model without CLIP: held-out captions, pictures checked from their pixels.
    Check(CheckArgs),
    /// Whether a world CLIP tells a held-out scene's caption from the same caption with its
    /// background or object colour changed (on rendered scenes; chance 0.5).
    ClipCheck(ClipCheckArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ClipCheckArgs {
    /// The transformers CLIP folder (`assets/models/world-clip`).
    #[arg(long)]
    pub clip: PathBuf,
    /// Held-out scenes.
    #[arg(long, default_value_t = 500)]
    pub scenes: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

#[derive(Args, Debug, Clone)]
pub struct PackArgs {
    /// The diffusers folder `world train` wrote (`OUT/unet/pipeline`).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// The CLIP folder `world train` wrote (`OUT/clip/clip`).
    #[arg(long)]
    pub clip: PathBuf,
    /// Writes `OUT/world-sd` and `OUT/world-clip` (replacing them).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The world's diffusers folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Held-out captions, one picture each.
    #[arg(long, default_value_t = 200)]
    pub pictures: usize,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 4.0)]
    pub guidance: f64,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub quiet: bool,
    /// Pictures, `index.jsonl` and `quality.json` go here.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ConceptArgs {
    /// One concept by name (default: all).
    #[arg(long)]
    pub concept: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[arg(long, default_value_t = 3000)]
    pub vae_steps: usize,
    #[arg(long, default_value_t = 3000)]
    pub clip_steps: usize,
    #[arg(long, default_value_t = 6000)]
    pub unet_steps: usize,
    /// Pictures per VAE step (default 8); larger batches suit a GPU.
    #[arg(long)]
    pub vae_batch: Option<usize>,
    /// Caption–picture pairs per CLIP step (default 64).
    #[arg(long)]
    pub clip_batch: Option<usize>,
    /// Pictures per UNet step (default 32).
    #[arg(long)]
    pub unet_batch: Option<usize>,
    /// Min-SNR-γ loss weighting for the UNet (5 is the usual γ): high noise levels, where layout
    /// and colours are decided, count more; kept by a resumed run unless given again.
    #[arg(long)]
    pub unet_min_snr_gamma: Option<f64>,
    /// Loss weight of the latent cells that hold part of an object (others weigh 1), so the
    /// few cells that carry an object's colour are not drowned by the background's; kept by a
    /// resumed run unless given again.
    #[arg(long)]
    pub unet_object_weight: Option<f64>,
    /// Multiplies every stage's default learning rate (e.g. 2 with batches twice the default).
    #[arg(long, default_value_t = 1.0)]
    pub lr_scale: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Condition the UNet on this trained CLIP (a transformers folder with the world tokenizer's
    /// vocabulary, such as `assets/models/world-clip`) instead of training one: `--clip-steps`
    /// is then ignored and no `clip/` run is made.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub quiet: bool,
    /// Run folder: `vae/`, `clip/` and `unet/` runs, the finished models under each.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(cmd: WorldCommand) -> anyhow::Result<()> {
    match cmd {
        WorldCommand::Concepts(a) => concepts(a),
        WorldCommand::Train(a) => train(a),
        WorldCommand::Pack(a) => pack(a),
        WorldCommand::Check(a) => check(a),
        WorldCommand::ClipCheck(a) => clip_check(a),
    }
}

fn clip_check(a: ClipCheckArgs) -> anyhow::Result<()> {
    let task = ClipBindingTask {
        clip: a.clip.clone(),
        scenes: a.scenes,
    };
    let b = dispatch(a.device, Precision::F32, task)??;
    println!(
        "| the true caption beats the same caption with … changed | share of scenes (chance 0.5) |"
    );
    println!("|---|---|");
    println!("| the background colour | {:.3} |", b.background);
    println!(
        "| the first object group's colour | {:.3} |",
        b.object_colour
    );
    println!("scenes: {}", b.scenes);
    Ok(())
}

fn pack(a: PackArgs) -> anyhow::Result<()> {
    for (src, name) in [(&a.pipeline, "world-sd"), (&a.clip, "world-clip")] {
        if !src.is_dir() {
            bail!("{}: not a folder", src.display());
        }
        let dst = a.out.join(name);
        let tmp = a.out.join(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("{}", tmp.display()))?;
        }
        copy_as_f16(src, &tmp)?;
        cut_vocabulary(&tmp, name == "world-clip")?;
        if dst.exists() {
            std::fs::remove_dir_all(&dst).with_context(|| format!("{}", dst.display()))?;
        }
        std::fs::rename(&tmp, &dst).with_context(|| format!("{}", dst.display()))?;
        println!("{}", dst.display());
    }
    Ok(())
}

/// A text tower trained on CLIP's full vocabulary keeps only the world tokenizer's rows (two
/// thirds of the models' size otherwise); towers trained with the world tokenizer are left as
/// they are. `clip`: a transformers CLIP folder (tokenizer files at its root), else a diffusers
/// pipeline (`text_encoder/`, `tokenizer/`).
fn cut_vocabulary(dir: &Path, clip: bool) -> anyhow::Result<()> {
    use likeness_train::world_train::tokenizer::cut_text_tower_vocabulary;
    let (tower, tokenizer) = if clip {
        (dir.to_path_buf(), dir.to_path_buf())
    } else {
        (dir.join("text_encoder"), dir.join("tokenizer"))
    };
    let cut = cut_text_tower_vocabulary(
        &tower.join("model.safetensors"),
        &tower.join("config.json"),
        &tokenizer.join("vocab.json"),
    )?;
    if cut {
        likeness_train::world_train::write_tokenizer_files(&tokenizer)?;
        eprintln!("{}: cut to the world vocabulary", tower.display());
    }
    Ok(())
}

/// Copies a folder tree, storing every `.safetensors` file's tensors as f16.
fn copy_as_f16(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("{}", dst.display()))?;
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .with_context(|| format!("{}", src.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        if from.is_dir() {
            copy_as_f16(&from, &to)?;
        } else if from.extension().is_some_and(|e| e == "safetensors") {
            let file = likeness_train::checkpoint::TensorFile::read(&from)?;
            let bytes = file.to_bytes_as(safetensors::Dtype::F16)?;
            likeness_models::png_meta::write_atomic(&to, &bytes)
                .with_context(|| format!("{}", to.display()))?;
        } else {
            std::fs::copy(&from, &to).with_context(|| format!("{}", from.display()))?;
        }
    }
    Ok(())
}

fn check(a: CheckArgs) -> anyhow::Result<()> {
    let mut config = QualityConfig::new(&a.model, &a.out);
    config.pictures = a.pictures;
    config.steps = a.steps;
    config.guidance = a.guidance;
    let cancel = crate::interrupt::checkpointing_ctrl_c()?;
    let quiet = a.quiet;
    let mut events = |e: TrainEvent| {
        if let TrainEvent::Status { message } = e
            && !quiet
        {
            eprintln!("{message}");
        }
    };
    let report = dispatch(
        a.device,
        Precision::F32,
        QualityTask {
            config,
            events: &mut events,
            cancel,
        },
    )??;
    let Some(r) = report else {
        bail!("cancelled; run the same command again to continue");
    };
    println!("| check | asked scene | chance (another scene) |");
    println!("|---|---|---|");
    println!(
        "| background colour | {:.3} | {:.3} |",
        r.asked.background, r.chance.background
    );
    println!(
        "| object colour | {:.3} | {:.3} |",
        r.asked.object_colour, r.chance.object_colour
    );
    println!("| both | {:.3} | {:.3} |", r.asked.both, r.chance.both);
    println!("pictures: {}", r.asked.pictures);
    if let Some(rec) = r.reconstruction {
        println!(
            "VAE reconstruction MSE on [-1, 1]: held-out scenes {:.4}, concept photos {:.4}",
            rec.scenes, rec.concept_photos
        );
        if let Some(c) = rec.scene_checks {
            println!(
                "checks on the VAE's own reconstructions of the held-out scenes (the most a picture through this VAE can pass): background {:.3}, object {:.3}, both {:.3}",
                c.background, c.object_colour, c.both
            );
        }
    }
    Ok(())
}

fn concepts(a: ConceptArgs) -> anyhow::Result<()> {
    let names: Vec<&str> = match &a.concept {
        Some(n) => {
            if !CONCEPTS.iter().any(|c| c.name == n.as_str()) {
                let known: Vec<&str> = CONCEPTS.iter().map(|c| c.name).collect();
                bail!("unknown concept `{n}` (known: {})", known.join(", "));
            }
            vec![n.as_str()]
        }
        None => CONCEPTS.iter().map(|c| c.name).collect(),
    };
    for name in names {
        let dir = a.out.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        write_concept_photos(name, &dir, a.size)?;
        println!("{}", dir.display());
    }
    Ok(())
}

fn stage(
    what: &str,
    stage: WorldStage,
    run_dir: &Path,
    a: &TrainArgs,
    device: DeviceChoice,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let quiet = a.quiet;
    let label = what.to_string();
    let mut events = move |e: TrainEvent| {
        if quiet {
            return;
        }
        match e {
            TrainEvent::Step { step, loss, .. } if step % 50 == 0 || step == 1 => {
                eprintln!("{label}: step {step} loss {loss:.4}")
            }
            TrainEvent::Error { message } => eprintln!("{label}: {message}"),
            _ => {}
        }
    };
    let outcome = dispatch(
        device,
        Precision::F32,
        WorldTrainTask {
            stage,
            run_dir: run_dir.to_path_buf(),
            events: &mut events,
            cancel: cancel.clone(),
        },
    )??;
    tracing::info!("{what}: {outcome:?}");
    Ok(())
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.clip
        && !dir.join("config.json").is_file()
    {
        bail!("{}: not a CLIP folder (no config.json)", dir.display());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let cancel = Arc::new(AtomicBool::new(false));
    let spec = WorldModelSpec::default();
    let device = likeness_models::device::resolve(a.device)?;
    let first_run = crate::first_run::announce(
        device,
        tuning::work(
            "world train",
            Path::new("built-in world"),
            [spec.image_size; 2],
            a.unet_batch.unwrap_or(0),
            Precision::F32,
        ),
    );
    let (vae_run, clip_run, unet_run) = (a.out.join("vae"), a.out.join("clip"), a.out.join("unet"));
    // What every stage shares: the seed, the batch asked for, the scaled rate, and a warm-up
    // over 5 % of the steps (at most 200) before half a cosine.
    macro_rules! shared_settings {
        ($config:ident, $batch:expr) => {
            $config.seed = a.seed;
            $config.batch = $batch.unwrap_or($config.batch);
            $config.lr *= a.lr_scale;
            $config.lr_schedule = LrSchedule::Cosine;
            $config.warmup_steps = ($config.steps / 20).min(200);
        };
    }
    let mut vae = VaeTrainConfig::new(spec.clone(), a.vae_steps);
    shared_settings!(vae, a.vae_batch);
    stage("vae", WorldStage::Vae(vae), &vae_run, &a, device, &cancel)?;
    let clip_dir = match &a.clip {
        Some(dir) => dir.clone(),
        None => {
            let mut clip = ClipTrainConfig::new(spec.clone(), a.clip_steps);
            shared_settings!(clip, a.clip_batch);
            stage(
                "clip",
                WorldStage::Clip(clip),
                &clip_run,
                &a,
                device,
                &cancel,
            )?;
            clip_run.join("clip")
        }
    };
    let mut unet = UNetTrainConfig::new(spec, vae_run.join("vae"), clip_dir.clone(), a.unet_steps);
    shared_settings!(unet, a.unet_batch);
    unet.min_snr_gamma = a.unet_min_snr_gamma;
    unet.object_weight = a.unet_object_weight;
    stage(
        "unet",
        WorldStage::UNet(unet),
        &unet_run,
        &a,
        device,
        &cancel,
    )?;
    crate::first_run::record(first_run);
    println!("{}", unet_run.join("pipeline").display());
    println!("{}", clip_dir.display());
    Ok(())
}
