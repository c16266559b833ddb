//! `likeness score`: IS/TS (and DINO-IS) of a generated folder against concept photos.

use std::path::PathBuf;

use anyhow::Context;
use burn::prelude::*;
use clap::Args;
use likeness_models::device::{BackendTask, DeviceChoice, Placement, Precision, dispatch};
use likeness_models::png_meta::write_atomic;
use likeness_train::scoring::{Scorer, load_concept, score_folder};

#[derive(Args, Debug, Clone)]
pub struct ScoreArgs {
    /// A transformers CLIPModel folder (config.json with text_config/vision_config, model.safetensors).
    #[arg(long)]
    pub clip: PathBuf,
    /// A transformers ViTModel folder (DINO), for the second likeness score.
    #[arg(long)]
    pub dino: Option<PathBuf>,
    /// The concept photos.
    #[arg(long)]
    pub concept: PathBuf,
    /// A folder written by `likeness generate --out DIR` (its index.jsonl gives each prompt).
    #[arg(long)]
    pub images: PathBuf,
    /// The identifier token, removed from prompts for the text score.
    #[arg(long)]
    pub token: String,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let lines = dispatch(
        args.device,
        Precision::F32,
        ScoreTask { args: args.clone() },
    )?;
    let n = lines.len();
    let mut text = String::new();
    let (mut sum_is, mut sum_ts) = (0.0, 0.0);
    for l in &lines {
        sum_is += l.is;
        sum_ts += l.ts;
        text.push_str(&serde_json::to_string(l)?);
        text.push('\n');
    }
    write_atomic(&args.out, text.as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{n} images scored: mean IS {:.4}, mean TS {:.4} → {}",
        sum_is / n.max(1) as f64,
        sum_ts / n.max(1) as f64,
        args.out.display()
    );
    Ok(())
}

struct ScoreTask {
    args: ScoreArgs,
}

impl BackendTask for ScoreTask {
    type Output = Vec<likeness_train::pairs::ScoredImage>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        _placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        let a = self.args;
        let err = |e: likeness_train::scoring::ScoreError| {
            likeness_models::ModelError::Invalid(e.to_string())
        };
        let concept = load_concept(&a.concept).map_err(err)?;
        let scorer = Scorer::<B>::new(&a.clip, a.dino.as_deref(), &concept, &a.token, &device)
            .map_err(err)?;
        score_folder(&scorer, &a.images).map_err(err)
    }
}
