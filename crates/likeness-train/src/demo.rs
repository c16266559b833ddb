//! The built-in demo: on the world's model and one of its concepts, a DreamBooth LoRA round, then
//! DPO stages, then the evaluation — and `report.md` with seed-matched galleries, the IS/TS table
//! beside the pixel checks that do not use CLIP, and the IS–TS scatter.
//!
//! Every phase is an ordinary run folder under the output folder (`dreambooth/`, `dpo/`, `eval/`),
//! so running the demo again continues where it stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::prelude::*;
use image::{Rgb, RgbImage, imageops};
use likeness_models::device::{BackendTask, Placement};
use likeness_models::lora::LoraTargets;
use likeness_models::png_meta::{encode_png, write_atomic};
use serde::{Deserialize, Serialize};

use crate::dpo::{DpoConfig, DpoJob, DpoSource, DpoTask, GeneratedImage, read_jsonl, stage_dir};
use crate::dreambooth::{DreamBoothConfig, DreamBoothJob, DreamBoothTask};
use crate::error::{Result, TrainError};
use crate::eval::{EvalConfig, EvalReport, EvalRow, EvalTask};
use crate::events::TrainEvent;
use crate::scoring::load_rgb;
use crate::trainable::TrainMode;
use crate::world::check::{CONCEPT_PRESENCE_THRESHOLD, check_prompt, concept_presence};
use crate::world::{CONCEPTS, Concept, concept, concept_template_split, parse_caption};

/// Every setting of a demo; stored as `demo.json` in the output folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    /// The world's diffusers folder.
    pub model: PathBuf,
    /// The world's CLIP folder.
    pub clip: PathBuf,
    /// A built-in concept's name.
    pub concept: String,
    pub token: String,
    pub out: PathBuf,
    pub dreambooth_steps: usize,
    pub dreambooth_lr: f64,
    pub lora_rank: usize,
    pub stages: usize,
    pub prompts_per_stage: usize,
    pub samples_per_prompt: usize,
    pub dpo_steps_per_stage: usize,
    pub dpo_lr: f64,
    pub beta: f64,
    pub angle_min: f64,
    pub angle_max: f64,
    /// Evaluation prompts (from the concept's held-out templates) and seeds per prompt.
    pub eval_prompts: usize,
    pub eval_seeds: usize,
    pub sample_steps: usize,
    pub guidance: f64,
    pub seed: u64,
}

impl DemoConfig {
    /// The full demo: 300 DreamBooth steps, 2 DPO stages of 8 prompts × 6 samples and 60 steps,
    /// window 20°–70°, 12 evaluation prompts × 4 seeds, 25 DDIM steps at guidance 4.
    pub fn new(model: &Path, clip: &Path, concept: &str, out: &Path) -> Self {
        Self {
            model: model.to_path_buf(),
            clip: clip.to_path_buf(),
            concept: concept.into(),
            token: "sks".into(),
            out: out.to_path_buf(),
            dreambooth_steps: 300,
            dreambooth_lr: 1e-3,
            lora_rank: 8,
            stages: 2,
            prompts_per_stage: 8,
            samples_per_prompt: 6,
            dpo_steps_per_stage: 60,
            dpo_lr: 1e-4,
            beta: 5000.0,
            angle_min: 20.0,
            angle_max: 70.0,
            eval_prompts: 12,
            eval_seeds: 4,
            sample_steps: 25,
            guidance: 4.0,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<&'static Concept> {
        let Some(c) = concept(&self.concept) else {
            let known: Vec<&str> = CONCEPTS.iter().map(|c| c.name).collect();
            return Err(TrainError::Invalid(format!(
                "unknown concept `{}` (known: {})",
                self.concept,
                known.join(", ")
            )));
        };
        for (name, v) in [
            ("dreambooth steps", self.dreambooth_steps),
            ("stages", self.stages),
            ("prompts per stage", self.prompts_per_stage),
            ("samples per prompt", self.samples_per_prompt),
            ("DPO steps per stage", self.dpo_steps_per_stage),
            ("evaluation prompts", self.eval_prompts),
            ("evaluation seeds", self.eval_seeds),
            ("sampling steps", self.sample_steps),
        ] {
            if v == 0 {
                return Err(TrainError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.samples_per_prompt < 2 {
            return Err(TrainError::Invalid(
                "samples per prompt must be at least 2 (pairs are formed between them)".into(),
            ));
        }
        Ok(c)
    }
}

/// The pixel checks of one variant's evaluation pictures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndependentCheck {
    pub variant: String,
    /// Share of pictures whose background is the one the prompt asked for.
    pub background: f64,
    /// Share of pictures where the concept's colour pattern is present.
    pub subject: f64,
    /// Both at once.
    pub both: f64,
    pub pictures: usize,
}

/// What a demo wrote.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub report: PathBuf,
    pub rows: Vec<EvalRow>,
    pub checks: Vec<IndependentCheck>,
    /// Pairs kept in each DPO stage.
    pub pairs: Vec<usize>,
    /// Seconds per phase: DreamBooth, DPO, evaluation.
    pub seconds: [f64; 3],
}

/// A demo for [`likeness_models::device::dispatch`]; `Ok(None)` when cancelled.
pub struct DemoTask<'a> {
    pub config: DemoConfig,
    pub events: &'a mut dyn FnMut(TrainEvent),
    pub cancel: Arc<AtomicBool>,
}

impl BackendTask for DemoTask<'_> {
    type Output = Result<Option<DemoReport>>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        // The phases report their own failures as events; the result carries every error.
        Ok(run_demo::<B>(
            self.config,
            device,
            placement,
            self.events,
            self.cancel,
        ))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::io(path, e)
}

fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    write_atomic(path, text.as_bytes()).map_err(|e| TrainError::io(path, e))
}

fn run_demo<B: Backend>(
    config: DemoConfig,
    device: B::Device,
    placement: Placement,
    events: &mut dyn FnMut(TrainEvent),
    cancel: Arc<AtomicBool>,
) -> Result<Option<DemoReport>> {
    let concept = config.validate()?;
    let out = config.out.clone();
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    let saved = out.join("demo.json");
    if saved.is_file() {
        let text = std::fs::read_to_string(&saved).map_err(io_err(&saved))?;
        let before: DemoConfig =
            serde_json::from_str(&text).map_err(|e| TrainError::io(&saved, e))?;
        if before != config {
            return Err(TrainError::io(
                &saved,
                "a demo with other settings is in this folder; choose another --out",
            ));
        }
    } else {
        let text = serde_json::to_string_pretty(&config).map_err(|e| TrainError::io(&saved, e))?;
        write_atomic(&saved, text.as_bytes()).map_err(|e| TrainError::io(&saved, e))?;
    }

    // The artist's side: photos and prompts.
    let photos = out.join("concept");
    if !photos.is_dir() {
        let tmp = out.join(".concept.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        crate::world::write_concept_photos(concept.name, &tmp, 64)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        std::fs::rename(&tmp, &photos).map_err(io_err(&photos))?;
    }
    let (eval_templates, train_templates) = concept_template_split(concept);
    let eval_templates: Vec<String> = eval_templates
        .into_iter()
        .take(config.eval_prompts)
        .collect();
    let prompts_dir = out.join("prompts");
    std::fs::create_dir_all(&prompts_dir).map_err(io_err(&prompts_dir))?;
    let (eval_file, train_file) = (prompts_dir.join("eval.txt"), prompts_dir.join("train.txt"));
    write_lines(&eval_file, &eval_templates)?;
    write_lines(&train_file, &train_templates)?;
    let class = concept.class_noun;

    // DreamBooth.
    let began = Instant::now();
    let db_dir = out.join("dreambooth");
    let job = if db_dir.join("config.json").is_file() {
        DreamBoothJob::Resume {
            run_dir: db_dir.clone(),
            steps: None,
            model: None,
        }
    } else {
        let mut c = DreamBoothConfig::new(&config.model, &photos, &config.token, class);
        c.mode = TrainMode::Lora {
            rank: config.lora_rank,
            alpha: config.lora_rank as f64,
            unet_targets: LoraTargets::unet_attention(),
            text_targets: None,
        };
        c.steps = config.dreambooth_steps;
        c.lr = config.dreambooth_lr;
        c.seed = config.seed;
        c.random_flip = true;
        c.checkpoint_every = config.dreambooth_steps;
        c.sample_every = 0;
        c.samples.steps = config.sample_steps;
        c.samples.guidance = config.guidance;
        DreamBoothJob::New {
            config: Box::new(c),
            run_dir: db_dir.clone(),
        }
    };
    events(TrainEvent::Status {
        message: "DreamBooth: teaching the model the concept".into(),
    });
    let outcome = DreamBoothTask {
        job,
        events: &mut *events,
        cancel: cancel.clone(),
    }
    .run::<B>(device.clone(), placement)??;
    if outcome.cancelled {
        return Ok(None);
    }
    let db_secs = began.elapsed().as_secs_f64();

    // DPO stages.
    let began = Instant::now();
    let dpo_dir = out.join("dpo");
    let job = if dpo_dir.join("config.json").is_file() {
        DpoJob::Resume {
            run_dir: dpo_dir.clone(),
        }
    } else {
        let mut c = DpoConfig::new(
            &config.model,
            DpoSource::Run(db_dir.clone()),
            &photos,
            &config.clip,
            &config.token,
            class,
        );
        c.prompts = Some(train_file.clone());
        c.stages = config.stages;
        c.prompts_per_stage = config.prompts_per_stage;
        c.samples_per_prompt = config.samples_per_prompt;
        c.filter.angle_min = config.angle_min;
        c.filter.angle_max = config.angle_max;
        c.beta = config.beta;
        c.steps_per_stage = config.dpo_steps_per_stage;
        c.lr = config.dpo_lr;
        c.sample_steps = config.sample_steps;
        c.guidance = config.guidance;
        c.seed = config.seed;
        c.checkpoint_every = config.dpo_steps_per_stage;
        DpoJob::New {
            config: Box::new(c),
            run_dir: dpo_dir.clone(),
        }
    };
    events(TrainEvent::Status {
        message: format!(
            "DPO: {} stages, angle window {}°–{}°",
            config.stages, config.angle_min, config.angle_max
        ),
    });
    let outcome = DpoTask {
        job,
        events: &mut *events,
        cancel: cancel.clone(),
    }
    .run::<B>(device.clone(), placement)??;
    if outcome.cancelled {
        return Ok(None);
    }
    let dpo_secs = began.elapsed().as_secs_f64();
    let pairs = (1..=config.stages)
        .map(|k| {
            let path = stage_dir(&dpo_dir, k).join("pairs.jsonl");
            read_jsonl::<serde_json::Value>(&path).map(|v| v.len())
        })
        .collect::<Result<Vec<_>>>()?;

    // Evaluation.
    let began = Instant::now();
    let mut e = EvalConfig::new(&config.model, &photos, &config.clip, &config.token, class);
    e.runs = vec![db_dir.clone(), dpo_dir.clone()];
    e.prompts = Some(eval_file.clone());
    e.seeds = config.eval_seeds;
    e.sample_steps = config.sample_steps;
    e.guidance = config.guidance;
    e.out = out.join("eval");
    events(TrainEvent::Status {
        message: "evaluating the base model, DreamBooth and every DPO stage".into(),
    });
    let Some(eval) = (EvalTask {
        config: e.clone(),
        events: &mut *events,
        cancel: cancel.clone(),
    })
    .run::<B>(device.clone(), placement)??
    else {
        return Ok(None);
    };
    let eval_secs = began.elapsed().as_secs_f64();

    // The pixel checks, the galleries and the report.
    let checks = eval
        .rows
        .iter()
        .map(|r| independent_check(&e.out.join(&r.variant), &r.variant, concept))
        .collect::<Result<Vec<_>>>()?;
    let report_dir = out.join("report");
    std::fs::create_dir_all(&report_dir).map_err(io_err(&report_dir))?;
    let variants: Vec<String> = eval.rows.iter().map(|r| r.variant.clone()).collect();
    let compare = report_dir.join("compare.png");
    write_comparison(&e.out, &variants, &compare)?;
    let mut galleries = Vec::new();
    for v in &variants {
        let path = report_dir.join(format!("gallery-{v}.png"));
        write_gallery(&e.out.join(v), config.eval_seeds, &path)?;
        galleries.push((v.clone(), path));
    }
    let report = DemoReport {
        report: out.join("report.md"),
        rows: eval.rows.clone(),
        checks,
        pairs,
        seconds: [db_secs, dpo_secs, eval_secs],
    };
    let text = report_markdown(&config, concept, &report, &eval, &galleries, &out);
    write_atomic(&report.report, text.as_bytes()).map_err(|e| TrainError::io(&report.report, e))?;
    Ok(Some(report))
}

/// Pixel checks of a variant's evaluation folder (its `index.jsonl` names prompt and file).
pub fn independent_check(dir: &Path, variant: &str, concept: &Concept) -> Result<IndependentCheck> {
    let items: Vec<GeneratedImage> = read_jsonl(&dir.join("index.jsonl"))?;
    let (mut bg_n, mut bg_ok, mut subj, mut both) = (0usize, 0usize, 0usize, 0usize);
    for it in &items {
        let path = dir.join(&it.file);
        let img = load_rgb(&path).map_err(|e| TrainError::io(&path, e))?;
        let present = concept_presence(&img, concept) >= CONCEPT_PRESENCE_THRESHOLD;
        subj += present as usize;
        let background = parse_caption(&it.prompt)
            .ok()
            .and_then(|p| check_prompt(&img, &p).background);
        if let Some(ok) = background {
            bg_n += 1;
            bg_ok += ok as usize;
            both += (ok && present) as usize;
        }
    }
    let rate = |k: usize, n: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    Ok(IndependentCheck {
        variant: variant.into(),
        background: rate(bg_ok, bg_n),
        subject: rate(subj, items.len()),
        both: rate(both, bg_n),
        pictures: items.len(),
    })
}

/// Pictures are small; galleries show them enlarged without smoothing.
const ZOOM: u32 = 3;
const GAP: u32 = 2;

fn paste_grid(cells: &[Vec<Option<RgbImage>>], path: &Path) -> Result<()> {
    let side = cells
        .iter()
        .flatten()
        .flatten()
        .map(|i| i.width().max(i.height()))
        .max()
        .unwrap_or(32)
        * ZOOM;
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let rows = cells.len() as u32;
    let mut grid = RgbImage::from_pixel(
        cols * (side + GAP) + GAP,
        rows * (side + GAP) + GAP,
        Rgb([40, 40, 40]),
    );
    for (r, row) in cells.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            if let Some(img) = cell {
                let big = imageops::resize(img, side, side, imageops::FilterType::Nearest);
                let (x, y) = (GAP + c as u32 * (side + GAP), GAP + r as u32 * (side + GAP));
                imageops::replace(&mut grid, &big, x as i64, y as i64);
            }
        }
    }
    let bytes = encode_png(&grid, &[]).map_err(|e| TrainError::io(path, e))?;
    write_atomic(path, &bytes).map_err(|e| TrainError::io(path, e))
}

/// One variant's gallery: a row per prompt, a column per seed.
fn write_gallery(dir: &Path, seeds: usize, path: &Path) -> Result<()> {
    let items: Vec<GeneratedImage> = read_jsonl(&dir.join("index.jsonl"))?;
    let mut rows: Vec<Vec<Option<RgbImage>>> = Vec::new();
    for chunk in items.chunks(seeds.max(1)) {
        rows.push(
            chunk
                .iter()
                .map(|it| load_rgb(&dir.join(&it.file)).ok())
                .collect(),
        );
    }
    paste_grid(&rows, path)
}

/// The before/after comparison: a row per (prompt, seed 0), a column per variant.
fn write_comparison(eval_dir: &Path, variants: &[String], path: &Path) -> Result<()> {
    let first = variants
        .first()
        .ok_or_else(|| TrainError::Invalid("no variant was evaluated".into()))?;
    let items: Vec<GeneratedImage> = read_jsonl(&eval_dir.join(first).join("index.jsonl"))?;
    let rows: Vec<Vec<Option<RgbImage>>> = items
        .iter()
        .filter(|it| it.seed == 0)
        .map(|it| {
            variants
                .iter()
                .map(|v| load_rgb(&eval_dir.join(v).join(&it.file)).ok())
                .collect()
        })
        .collect();
    paste_grid(&rows, path)
}

fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn report_markdown(
    config: &DemoConfig,
    concept: &Concept,
    report: &DemoReport,
    eval: &EvalReport,
    galleries: &[(String, PathBuf)],
    out: &Path,
) -> String {
    let mut s = String::new();
    let subject = format!("{} {}", config.token, concept.class_noun);
    s.push_str(&format!(
        "# Likeness demo: {} — “{}”\n\n",
        concept.name, concept.description
    ));
    s.push_str(&format!(
        "Base model `{}`, CLIP `{}`. DreamBooth LoRA (rank {}, {} steps, lr {}) on the {} concept \
         photos in `concept/` as “{subject}”, then {} DPO stages ({} prompts × {} samples, pairs \
         inside {}°–{}°, β {}, {} steps each), then the evaluation on {} held-out prompts × {} seeds \
         ({} DDIM steps, guidance {}).\n\n",
        config.model.display(),
        config.clip.display(),
        config.lora_rank,
        config.dreambooth_steps,
        config.dreambooth_lr,
        crate::world::CONCEPT_PHOTO_COUNT,
        config.stages,
        config.prompts_per_stage,
        config.samples_per_prompt,
        config.angle_min,
        config.angle_max,
        config.beta,
        config.dpo_steps_per_stage,
        config.eval_prompts,
        config.eval_seeds,
        config.sample_steps,
        config.guidance,
    ));
    s.push_str(&format!(
        "Time: DreamBooth {:.0} s, DPO {:.0} s, evaluation {:.0} s. Pairs kept per DPO stage: {}.\n\n",
        report.seconds[0],
        report.seconds[1],
        report.seconds[2],
        report
            .pairs
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    s.push_str("## Scores\n\n");
    s.push_str(
        "IS: mean CLIP image cosine to the concept photos; TS: CLIP cosine to the prompt without \
         the identifier (± standard error). The pixel checks do not use CLIP: *background* — the \
         background is the one the prompt asked for; *subject* — the concept's colour pattern is \
         present.\n\n",
    );
    s.push_str("| variant | IS | TS | background | subject | both | pictures |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for (r, c) in report.rows.iter().zip(&report.checks) {
        s.push_str(&format!(
            "| {} | {:.4} ± {:.4} | {:.4} ± {:.4} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.variant, r.is_mean, r.is_se, r.ts_mean, r.ts_se, c.background, c.subject, c.both, r.n
        ));
    }
    s.push_str(&format!("\n![IS–TS scatter]({})\n\n", rel(&eval.png, out)));
    s.push_str("## Before and after\n\n");
    s.push_str(&format!(
        "Each row one held-out prompt at seed 0; columns: {}.\n\n![comparison](report/compare.png)\n\n",
        report
            .rows
            .iter()
            .map(|r| r.variant.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    s.push_str("## Galleries\n\nA row per prompt, a column per seed; the same prompts and seeds for every variant.\n\n");
    let prompts: Vec<String> = std::fs::read_to_string(out.join("prompts/eval.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.replace("{}", &subject))
        .collect();
    s.push_str("Prompts, top to bottom:\n\n");
    for (i, p) in prompts.iter().enumerate() {
        s.push_str(&format!("{}. {p}\n", i + 1));
    }
    s.push('\n');
    for (v, path) in galleries {
        s.push_str(&format!("### {v}\n\n![{v}]({})\n\n", rel(path, out)));
    }
    s
}
