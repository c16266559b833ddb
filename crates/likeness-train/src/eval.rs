//! Evaluation: held-out prompts × seeds for the base model, every DreamBooth checkpoint of each
//! run and every DPO stage, all seed-matched (the same prompts and seeds for every variant), so
//! their mean likeness (IS, DINO) and prompt following (TS) compare directly.
//!
//! Output folder: `<variant>/` (images and `index.jsonl`, kept so galleries can be built later;
//! images already there are reused), `eval.csv` and the IS–TS scatter `scatter.png` /
//! `scatter.svg` (DreamBooth checkpoints joined as a frontier, DPO stages and the base model as
//! points).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use likeness_models::device::{BackendTask, Placement, Precision};
use likeness_models::lora::LoraSet;
use likeness_models::lora_files::{merge_lora, read_lora_file};
use likeness_models::pipeline::GenerateParams;
use likeness_models::png_meta::write_atomic;
use likeness_models::schedulers::SchedulerKind;
use likeness_models::sd::{LoadOptions, StableDiffusion};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{ADAPTERS_FILE, latest_checkpoint, list_checkpoints, load_checkpoint_lora};
use crate::dpo::{
    DpoRunConfig, DpoSource, GeneratedImage, STAGE_LORA_FILE, generate_set, stage_dir,
};
use crate::error::{Result, TrainError};
use crate::events::TrainEvent;
use crate::plot::{ScorePoint, Series, SeriesKind, mean_se, write_scatter};
use crate::prompts::PromptSet;
use crate::run_dir::RunDir;
use crate::scoring::{Scorer, load_concept, score_folder};
use crate::trainable::{TEXT_ENCODER_FILE, UNET_FILE, load_by_path};

/// Every setting of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    pub model: PathBuf,
    pub v_prediction: bool,
    /// DreamBooth and DPO run folders.
    pub runs: Vec<PathBuf>,
    pub concept: PathBuf,
    pub clip: PathBuf,
    pub dino: Option<PathBuf>,
    pub token: String,
    pub class: String,
    /// A prompt-template file; `None`: DreamBench's prompts for the class.
    pub prompts: Option<PathBuf>,
    /// Seeds 0..seeds for every prompt.
    pub seeds: usize,
    pub sample_steps: usize,
    pub guidance: f64,
    pub scheduler: String,
    /// Pixels per side; `None`: the model's native size.
    pub resolution: Option<usize>,
    pub out: PathBuf,
}

impl EvalConfig {
    /// 4 seeds, 50 DDIM steps at guidance 7.5.
    pub fn new(model: &Path, concept: &Path, clip: &Path, token: &str, class: &str) -> Self {
        Self {
            model: model.to_path_buf(),
            v_prediction: false,
            runs: Vec::new(),
            concept: concept.to_path_buf(),
            clip: clip.to_path_buf(),
            dino: None,
            token: token.into(),
            class: class.into(),
            prompts: None,
            seeds: 4,
            sample_steps: 50,
            guidance: 7.5,
            scheduler: "ddim".into(),
            resolution: None,
            out: PathBuf::from("eval"),
        }
    }
}

/// What a variant's model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantKind {
    Base,
    Dreambooth,
    Dpo,
}

impl VariantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VariantKind::Base => "base",
            VariantKind::Dreambooth => "dreambooth",
            VariantKind::Dpo => "dpo",
        }
    }
}

/// How a variant's weights differ from the base model.
#[derive(Debug, Clone)]
enum Weights {
    Base,
    Lora(LoraSet),
    /// A full fine-tune checkpoint folder.
    Full(PathBuf),
    /// A DPO stage trained on top of a full fine-tune: its weights, then the LoRA.
    FullThenLora(PathBuf, LoraSet),
}

/// One model to evaluate.
#[derive(Debug, Clone)]
struct Variant {
    name: String,
    kind: VariantKind,
    /// The checkpoint step (DreamBooth) or stage number (DPO).
    position: Option<usize>,
    /// The run it belongs to (its series in the plot).
    run: String,
    weights: Weights,
}

/// One row of `eval.csv`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    pub variant: String,
    pub kind: VariantKind,
    /// Step (DreamBooth) or stage (DPO).
    pub position: Option<usize>,
    pub is_mean: f64,
    pub is_se: f64,
    pub ts_mean: f64,
    pub ts_se: f64,
    pub dino_mean: Option<f64>,
    pub dino_se: Option<f64>,
    pub n: usize,
}

/// What an evaluation wrote.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub rows: Vec<EvalRow>,
    pub csv: PathBuf,
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// An evaluation for [`likeness_models::device::dispatch`]; `Ok(None)` when cancelled.
pub struct EvalTask<'a> {
    pub config: EvalConfig,
    pub events: &'a mut dyn FnMut(TrainEvent),
    pub cancel: std::sync::Arc<AtomicBool>,
}

impl BackendTask for EvalTask<'_> {
    type Output = Result<Option<EvalReport>>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        tracing::info!("evaluating on {placement}");
        Ok(evaluate::<B>(
            &self.config,
            &device,
            placement.precision,
            self.events,
            &self.cancel,
        ))
    }
}

fn run_name(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The trainer a run folder's `config.json` names.
fn trainer_of(run: &Path) -> Result<String> {
    let dir = RunDir::open(run)?;
    let value: serde_json::Value = dir.read_config()?;
    value
        .get("trainer")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| TrainError::io(dir.config_path(), "no `trainer` field"))
}

/// The base model, then every checkpoint of every run in order.
fn variants(runs: &[PathBuf]) -> Result<Vec<Variant>> {
    let mut out = vec![Variant {
        name: "base".into(),
        kind: VariantKind::Base,
        position: None,
        run: "base".into(),
        weights: Weights::Base,
    }];
    let mut names = std::collections::HashSet::new();
    for run in runs {
        let mut name = run_name(run);
        let mut k = 2;
        while !names.insert(name.clone()) {
            name = format!("{}-{k}", run_name(run));
            k += 1;
        }
        match trainer_of(run)?.as_str() {
            "dreambooth" => {
                let checkpoints = list_checkpoints(&RunDir::open(run)?)?;
                if checkpoints.is_empty() {
                    return Err(TrainError::NoCheckpoint(run.clone()));
                }
                for (step, dir) in checkpoints {
                    let weights = if dir.join(ADAPTERS_FILE).is_file() {
                        Weights::Lora(load_checkpoint_lora(run, Some(step))?)
                    } else {
                        Weights::Full(dir)
                    };
                    out.push(Variant {
                        name: format!("{name}-step-{step}"),
                        kind: VariantKind::Dreambooth,
                        position: Some(step),
                        run: name.clone(),
                        weights,
                    });
                }
            }
            "dpo" => {
                let saved: DpoRunConfig = RunDir::open(run)?.read_config()?;
                let full_base = full_source(&saved.dpo.source)?;
                let mut found = 0;
                for stage in 1.. {
                    let dir = stage_dir(run, stage);
                    if !dir.is_dir() {
                        break;
                    }
                    let path = dir.join(STAGE_LORA_FILE);
                    if !path.is_file() {
                        continue;
                    }
                    found += 1;
                    out.push(Variant {
                        name: format!("{name}-stage-{stage}"),
                        kind: VariantKind::Dpo,
                        position: Some(stage),
                        run: name.clone(),
                        weights: match &full_base {
                            Some(dir) => Weights::FullThenLora(dir.clone(), read_lora_file(&path)?),
                            None => Weights::Lora(read_lora_file(&path)?),
                        },
                    });
                }
                if found == 0 {
                    return Err(TrainError::io(run, "no finished DPO stage"));
                }
            }
            other => {
                return Err(TrainError::io(
                    run,
                    format!("a `{other}` run: only DreamBooth and DPO runs are evaluated"),
                ));
            }
        }
    }
    Ok(out)
}

/// The full fine-tune checkpoint a DPO run's LoRA sits on, if its source is one.
fn full_source(source: &DpoSource) -> Result<Option<PathBuf>> {
    let DpoSource::Run(dir) = source else {
        return Ok(None);
    };
    let Some((_, ckpt)) = latest_checkpoint(&RunDir::open(dir)?)? else {
        return Ok(None);
    };
    Ok((!ckpt.join(ADAPTERS_FILE).is_file() && ckpt.join(UNET_FILE).is_file()).then_some(ckpt))
}

fn load_full<B: Backend>(model: &mut StableDiffusion<B>, dir: &Path) -> Result<()> {
    model.unet = load_by_path(model.unet.clone(), &dir.join(UNET_FILE))?;
    if dir.join(TEXT_ENCODER_FILE).is_file() {
        model.text_encoder =
            load_by_path(model.text_encoder.clone(), &dir.join(TEXT_ENCODER_FILE))?;
    }
    Ok(())
}

fn merge<B: Backend>(model: &mut StableDiffusion<B>, set: &LoraSet, variant: &str) -> Result<()> {
    let report = merge_lora(set, &mut model.unet, &mut model.text_encoder, 1.0);
    match report.unplaced.first() {
        Some(first) => Err(TrainError::Invalid(format!(
            "{variant}: {} LoRA layers found no place in the model, e.g. `{first}`",
            report.unplaced.len()
        ))),
        None => Ok(()),
    }
}

fn score_err(e: crate::scoring::ScoreError) -> TrainError {
    TrainError::Invalid(e.to_string())
}

/// Generates, scores and summarises every variant with the models' weights in `precision`;
/// `Ok(None)` when cancelled.
pub fn evaluate<B: Backend>(
    config: &EvalConfig,
    device: &B::Device,
    precision: Precision,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<Option<EvalReport>> {
    if config.seeds == 0 || config.sample_steps == 0 {
        return Err(TrainError::Invalid(
            "--seeds and --sample-steps must be at least 1".into(),
        ));
    }
    let scheduler = config
        .scheduler
        .parse::<SchedulerKind>()
        .map_err(|e| TrainError::Invalid(format!("sampler: {e}")))?;
    let prompts = match &config.prompts {
        Some(p) => PromptSet::from_file(p).map_err(|e| TrainError::Invalid(e.to_string()))?,
        None => PromptSet::dreambench_for_class(&config.class),
    }
    .with_subject(&config.token, &config.class);
    let variants = variants(&config.runs)?;

    let concept = load_concept(&config.concept).map_err(score_err)?;
    let scorer = Scorer::<B>::new(
        &config.clip,
        config.dino.as_deref(),
        &concept,
        &config.token,
        device,
    )
    .map_err(score_err)?;
    events(TrainEvent::Status {
        message: format!("loading {}", config.model.display()),
    });
    let opts = LoadOptions {
        v_prediction: config.v_prediction,
        precision,
        ..Default::default()
    };
    let mut model = StableDiffusion::<B>::load(&config.model, &opts, device)?;
    // Module clones share tensors: each variant starts from these without copying weights.
    let (base_unet, base_text_encoder) = (model.unet.clone(), model.text_encoder.clone());
    let resolution = config.resolution.unwrap_or_else(|| model.native_size());
    let params = GenerateParams {
        steps: config.sample_steps,
        guidance: config.guidance,
        scheduler,
        width: resolution,
        height: resolution,
        ..Default::default()
    };
    let items: Vec<GeneratedImage> = prompts
        .iter()
        .enumerate()
        .flat_map(|(pi, prompt)| {
            (0..config.seeds as u64).map(move |seed| GeneratedImage {
                file: format!("p{pi:02}-seed{seed}.png"),
                prompt: prompt.clone(),
                seed,
            })
        })
        .collect();
    std::fs::create_dir_all(&config.out).map_err(|e| TrainError::io(&config.out, e))?;

    let mut rows = Vec::new();
    for v in &variants {
        events(TrainEvent::Status {
            message: format!("evaluating {}", v.name),
        });
        model.unet = base_unet.clone();
        model.text_encoder = base_text_encoder.clone();
        match &v.weights {
            Weights::Base => {}
            Weights::Lora(set) => merge(&mut model, set, &v.name)?,
            Weights::Full(dir) => load_full(&mut model, dir)?,
            Weights::FullThenLora(dir, set) => {
                load_full(&mut model, dir)?;
                merge(&mut model, set, &v.name)?;
            }
        }
        // A full fine-tune's weights load in f32: into `precision` like the base.
        model = model.with_precision(precision);
        let dir = config.out.join(&v.name);
        if !generate_set(&model, &items, &dir, None, &params, events, cancel)? {
            return Ok(None);
        }
        let scores = score_folder(&scorer, &dir).map_err(score_err)?;
        let is: Vec<f64> = scores.iter().map(|s| s.is).collect();
        let ts: Vec<f64> = scores.iter().map(|s| s.ts).collect();
        let dino: Vec<f64> = scores.iter().filter_map(|s| s.dino).collect();
        let (is_mean, is_se) = mean_se(&is);
        let (ts_mean, ts_se) = mean_se(&ts);
        let (dino_mean, dino_se) = if dino.is_empty() {
            (None, None)
        } else {
            let (m, s) = mean_se(&dino);
            (Some(m), Some(s))
        };
        rows.push(EvalRow {
            variant: v.name.clone(),
            kind: v.kind,
            position: v.position,
            is_mean,
            is_se,
            ts_mean,
            ts_se,
            dino_mean,
            dino_se,
            n: scores.len(),
        });
    }

    let csv = config.out.join("eval.csv");
    write_atomic(&csv, to_csv(&rows).as_bytes())?;
    let png = config.out.join("scatter.png");
    let svg = config.out.join("scatter.svg");
    write_scatter(
        &format!(
            "{} {}: likeness vs prompt following",
            config.token, config.class
        ),
        &series(&variants, &rows),
        &png,
        &svg,
    )
    .map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok(Some(EvalReport {
        rows,
        csv,
        png,
        svg,
    }))
}

/// `eval.csv`: one header line, then a row per variant (DINO columns empty without DINO).
pub fn to_csv(rows: &[EvalRow]) -> String {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    let mut text =
        String::from("variant,kind,position,is_mean,is_se,ts_mean,ts_se,dino_mean,dino_se,n\n");
    for r in rows {
        text.push_str(&format!(
            "{},{},{},{:.6},{:.6},{:.6},{:.6},{},{},{}\n",
            r.variant,
            r.kind.as_str(),
            r.position.map(|p| p.to_string()).unwrap_or_default(),
            r.is_mean,
            r.is_se,
            r.ts_mean,
            r.ts_se,
            opt(r.dino_mean),
            opt(r.dino_se),
            r.n
        ));
    }
    text
}

/// Plot series: the base model as a point, each DreamBooth run a frontier, each DPO run points.
fn series(variants: &[Variant], rows: &[EvalRow]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for (v, r) in variants.iter().zip(rows) {
        let point = ScorePoint {
            label: match v.kind {
                VariantKind::Base => "base".into(),
                VariantKind::Dreambooth => format!("{}", v.position.unwrap_or(0)),
                VariantKind::Dpo => format!("stage {}", v.position.unwrap_or(0)),
            },
            ts: r.ts_mean,
            is: r.is_mean,
            ts_se: r.ts_se,
            is_se: r.is_se,
        };
        let (name, kind) = match v.kind {
            VariantKind::Base => ("base".to_string(), SeriesKind::Points),
            VariantKind::Dreambooth => (format!("{} (DreamBooth)", v.run), SeriesKind::Frontier),
            VariantKind::Dpo => (format!("{} (DPO)", v.run), SeriesKind::Points),
        };
        match out.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => out.push(Series {
                name,
                kind,
                points: vec![point],
            }),
        }
    }
    out
}
