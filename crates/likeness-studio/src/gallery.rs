//! Seed-matched galleries: the same held-out prompts and seeds for the base model, DreamBooth
//! runs and DPO stages, each image scored for likeness (IS) and prompt following (TS) with CLIP.
//!
//! A gallery job writes one folder per column under `projects/<id>/galleries/<job>/` and records
//! it in `galleries` and `gallery_images`, keyed by everything that makes images comparable (base
//! model, prompts, seeds, sampler, size). A column already made with the same key is not made
//! again, so adding a DPO stage to a comparison costs one column.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::Backend;
use image::RgbImage;
use likeness_models::device::{BackendTask, DeviceChoice, Placement, Precision, dispatch};
use likeness_models::lora::LoraSet;
use likeness_models::lora_files::{merge_lora, read_lora_file};
use likeness_models::pipeline::GenerateParams;
use likeness_models::schedulers::SchedulerKind;
use likeness_models::sd::{LoadOptions, StableDiffusion};
use likeness_train::TrainEvent;
use likeness_train::checkpoint::load_checkpoint_lora;
use likeness_train::dpo::{GeneratedImage, STAGE_LORA_FILE, generate_set};
use likeness_train::pairs::ScoredImage;
use likeness_train::prompts::PromptSet;
use likeness_train::scoring::{Scorer, load_rgb, score_folder};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StudioError};
use crate::jobs::work::{clip_for, world_concept};
use crate::jobs::{Job, JobStatus, RunId, RunKind, to_json};
use crate::workspace::{BaseModel, BaseModelId, BaseModelKind, ProjectId, Workspace, now};

/// What a gallery job makes: its columns (`None` = the base model) and, for every column, the
/// same `prompts` held-out prompts × `seeds` seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GallerySettings {
    pub columns: Vec<Option<RunId>>,
    pub prompts: usize,
    pub seeds: usize,
    /// DDIM steps per image.
    pub sample_steps: usize,
    pub guidance: f64,
}

impl GallerySettings {
    /// 12 prompts × 4 seeds at 25 steps, guidance 4, for the built-in world model (as `likeness
    /// demo`); 8 DreamBench prompts × 4 seeds at 30 steps, guidance 7.5, for Stable Diffusion.
    pub fn defaults_for(model: &BaseModel, columns: Vec<Option<RunId>>) -> Self {
        if model.kind == BaseModelKind::Builtin {
            Self {
                columns,
                prompts: 12,
                seeds: 4,
                sample_steps: 25,
                guidance: 4.0,
            }
        } else {
            Self {
                columns,
                prompts: 8,
                seeds: 4,
                sample_steps: 30,
                guidance: 7.5,
            }
        }
    }
}

/// Everything that makes two galleries' images comparable: equal keys, seed-matched images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GalleryKey {
    pub base_model_id: BaseModelId,
    pub prompts: Vec<String>,
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: String,
    pub resolution: usize,
}

/// A gallery job's stored settings: the columns and the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GallerySpec {
    pub columns: Vec<Option<RunId>>,
    pub key: GalleryKey,
}

impl GallerySpec {
    /// Checks the columns and fixes the prompts, seeds and size.
    pub(crate) fn resolve(
        ws: &Workspace,
        project: ProjectId,
        settings: &GallerySettings,
    ) -> Result<Self> {
        let p = ws.project(project)?;
        if settings.prompts == 0 || settings.seeds == 0 || settings.sample_steps == 0 {
            return Err(StudioError::Invalid(
                "a gallery needs at least 1 prompt, 1 seed and 1 sampling step".into(),
            ));
        }
        if !(settings.guidance.is_finite() && settings.guidance >= 0.0) {
            return Err(StudioError::Invalid(
                "the guidance must be a number ≥ 0".into(),
            ));
        }
        let mut columns: Vec<Option<RunId>> = Vec::new();
        for c in &settings.columns {
            if !columns.contains(c) {
                columns.push(*c);
            }
        }
        let model = gallery_base_model(ws, project, &columns)?;
        let templates = if model.kind == BaseModelKind::Builtin {
            let (eval, _) = likeness_train::world::concept_template_split(world_concept(&p.class));
            PromptSet { templates: eval }
        } else {
            PromptSet::dreambench_for_class(&p.class)
        };
        let prompts: Vec<String> = templates
            .with_subject(&p.token, &p.class)
            .into_iter()
            .take(settings.prompts)
            .collect();
        let resolution = model.summary["native_size"]
            .as_u64()
            .map(|n| n as usize)
            .filter(|&n| n > 0)
            .unwrap_or(512);
        Ok(Self {
            columns,
            key: GalleryKey {
                base_model_id: model.id,
                prompts,
                seeds: (0..settings.seeds as u64).collect(),
                steps: settings.sample_steps,
                guidance: settings.guidance,
                scheduler: "ddim".into(),
                resolution,
            },
        })
    }

    /// Images the job makes when no column exists yet.
    pub(crate) fn image_count(&self) -> usize {
        self.columns.len() * self.key.prompts.len() * self.key.seeds.len()
    }
}

/// The base model of a gallery's columns: the one their runs trained from (they must agree);
/// for the base model alone, that of the project's latest run, else the workspace's only one.
pub(crate) fn gallery_base_model(
    ws: &Workspace,
    project: ProjectId,
    columns: &[Option<RunId>],
) -> Result<BaseModel> {
    ws.project(project)?;
    if columns.is_empty() {
        return Err(StudioError::Invalid(
            "a gallery needs at least one column".into(),
        ));
    }
    let mut model: Option<BaseModelId> = None;
    for run in columns.iter().flatten() {
        let record = ws.run_record(*run)?;
        if record.run.project_id != project {
            return Err(StudioError::Invalid(format!(
                "run {run} belongs to project {}, not {project}",
                record.run.project_id
            )));
        }
        if record.run.status != JobStatus::Done {
            return Err(StudioError::Invalid(format!(
                "run {run} ({}) is {}; galleries show finished runs",
                record.run.label,
                record.run.status.as_str()
            )));
        }
        let id = record.base_model_id.ok_or_else(|| {
            StudioError::Invalid(format!(
                "the base model of run {run} ({}) was removed from the workspace; add it again",
                record.run.label
            ))
        })?;
        match model {
            Some(m) if m != id => {
                return Err(StudioError::Invalid(format!(
                    "the columns come from different base models ({m} and {id}); a gallery \
                     compares runs of one base model"
                )));
            }
            _ => model = Some(id),
        }
    }
    if let Some(id) = model {
        return ws.base_model(id);
    }
    let latest = ws
        .run_records(project)?
        .into_iter()
        .rev()
        .find_map(|r| r.base_model_id);
    if let Some(id) = latest {
        return ws.base_model(id);
    }
    match ws.base_models()?.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(StudioError::Invalid(format!(
            "project {project} has no run yet, so its base model is not known; train a run \
             first (or keep a single base model in the workspace)"
        ))),
    }
}

/// How a column's model differs from the base model.
#[derive(Debug, Clone)]
enum ColumnWeights {
    Base,
    /// A DreamBooth run folder: its latest checkpoint's LoRA.
    Checkpoint(PathBuf),
    /// A DPO stage's LoRA file.
    LoraFile(PathBuf),
}

/// One column to make.
#[derive(Debug, Clone)]
pub(crate) struct ColumnPlan {
    pub run: Option<RunId>,
    pub label: String,
    pub dir: PathBuf,
    weights: ColumnWeights,
}

/// The label of a column.
pub(crate) fn column_label(ws: &Workspace, run: Option<RunId>) -> Result<String> {
    match run {
        None => Ok("Base model".into()),
        Some(id) => Ok(ws.run(id)?.label),
    }
}

/// Runs a gallery job: makes the columns that have no gallery with this key yet, scoring them
/// when a CLIP model is known. `progress(phase, images done)`. Returns false when cancelled.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_gallery(
    ws: &Workspace,
    job: &Job,
    spec: &GallerySpec,
    device: DeviceChoice,
    precision: Precision,
    progress: &mut dyn FnMut(&str, usize),
    cancel: Arc<AtomicBool>,
) -> Result<bool> {
    let project = ws.project(job.project_id)?;
    let model = ws.base_model(spec.key.base_model_id)?;
    let key = to_json(&spec.key)?;
    let per_column = spec.key.prompts.len() * spec.key.seeds.len();
    let mut done = 0;
    let mut plans = Vec::new();
    for &run in &spec.columns {
        if ws.complete_gallery(project.id, run, &key)?.is_some() {
            done += per_column;
            continue;
        }
        let weights = match run {
            None => ColumnWeights::Base,
            Some(id) => {
                let record = ws.run_record(id)?;
                match record.run.kind {
                    RunKind::Dreambooth => ColumnWeights::Checkpoint(record.root.clone()),
                    RunKind::Dpo => {
                        let file = record.files_dir().join(STAGE_LORA_FILE);
                        if !file.is_file() {
                            return Err(StudioError::io(&file, "the DPO stage is not finished"));
                        }
                        ColumnWeights::LoraFile(file)
                    }
                }
            }
        };
        let slug = match run {
            None => "base".to_string(),
            Some(id) => format!("run-{id}"),
        };
        plans.push(ColumnPlan {
            run,
            label: column_label(ws, run)?,
            dir: ws
                .project_dir(project.id)
                .join("galleries")
                .join(job.id.to_string())
                .join(slug),
            weights,
        });
    }
    if plans.is_empty() {
        return Ok(true);
    }
    let clip = clip_for(ws, &model)?;
    let concept = match &clip {
        Some(_) => ws
            .photos(project.id)?
            .iter()
            .map(|p| load_rgb(&p.normalized_file).map_err(score_err))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    // Without photos there is no likeness to measure.
    let clip = clip.filter(|_| !concept.is_empty());
    let items: Vec<GeneratedImage> = spec
        .key
        .prompts
        .iter()
        .enumerate()
        .flat_map(|(pi, prompt)| {
            spec.key.seeds.iter().map(move |&seed| GeneratedImage {
                file: image_file(pi, seed),
                prompt: prompt.clone(),
                seed,
            })
        })
        .collect();
    let scheduler: SchedulerKind = spec
        .key
        .scheduler
        .parse()
        .map_err(|e| StudioError::Invalid(format!("gallery sampler: {e}")))?;
    let params = GenerateParams {
        steps: spec.key.steps,
        guidance: spec.key.guidance,
        scheduler,
        width: spec.key.resolution,
        height: spec.key.resolution,
        ..Default::default()
    };
    let mut record = |plan: &ColumnPlan, scores: Option<Vec<ScoredImage>>| {
        ws.record_gallery(project.id, job, plan, &key, &spec.key, scores.as_deref())
    };
    let task = GalleryTask {
        model: model.path.clone(),
        plans,
        items,
        params,
        clip,
        concept,
        token: project.token.clone(),
        first_image: done,
        progress,
        record: &mut record,
        cancel,
    };
    dispatch(device, precision, task)?
}

/// The file of prompt `pi`, seed `seed` in a column folder.
fn image_file(prompt: usize, seed: u64) -> String {
    format!("p{prompt:02}-seed{seed}.png")
}

fn score_err(e: likeness_train::scoring::ScoreError) -> StudioError {
    StudioError::Invalid(e.to_string())
}

/// Stores a made column with its scores (when a CLIP model scored it).
type RecordColumn<'a> = dyn FnMut(&ColumnPlan, Option<Vec<ScoredImage>>) -> Result<()> + 'a;

/// The generation and scoring of a gallery's columns, on the backend `dispatch` picks.
struct GalleryTask<'a> {
    model: PathBuf,
    plans: Vec<ColumnPlan>,
    items: Vec<GeneratedImage>,
    params: GenerateParams,
    clip: Option<PathBuf>,
    concept: Vec<RgbImage>,
    token: String,
    /// Images already made by earlier jobs (columns reused).
    first_image: usize,
    progress: &'a mut dyn FnMut(&str, usize),
    record: &'a mut RecordColumn<'a>,
    cancel: Arc<AtomicBool>,
}

impl BackendTask for GalleryTask<'_> {
    type Output = Result<bool>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        tracing::info!("gallery on {placement}");
        Ok(self.make::<B>(&device, placement.precision))
    }
}

impl GalleryTask<'_> {
    fn make<B: Backend>(self, device: &B::Device, precision: Precision) -> Result<bool> {
        let GalleryTask {
            model: model_path,
            plans,
            items,
            params,
            clip,
            concept,
            token,
            first_image,
            progress,
            record,
            cancel,
        } = self;
        progress("loading the model", first_image);
        let opts = LoadOptions {
            precision,
            ..Default::default()
        };
        let mut model = StableDiffusion::<B>::load(&model_path, &opts, device)?;
        let scorer = match &clip {
            Some(dir) => {
                Some(Scorer::<B>::new(dir, None, &concept, &token, device).map_err(score_err)?)
            }
            None => None,
        };
        // Module clones share tensors: each column starts from these without copying weights.
        let (base_unet, base_text) = (model.unet.clone(), model.text_encoder.clone());
        let per_column = items.len();
        for (ci, plan) in plans.iter().enumerate() {
            if cancel.load(Ordering::SeqCst) {
                return Ok(false);
            }
            model.unet = base_unet.clone();
            model.text_encoder = base_text.clone();
            let set = match &plan.weights {
                ColumnWeights::Base => None,
                ColumnWeights::Checkpoint(dir) => Some(load_checkpoint_lora(dir, None)?),
                ColumnWeights::LoraFile(file) => Some(read_lora_file(file)?),
            };
            if let Some(set) = set {
                merge(&mut model, &set, &plan.label)?;
            }
            let phase = format!("generating {}", plan.label);
            let before = first_image + ci * per_column;
            let mut events = |e: TrainEvent| {
                if let TrainEvent::Status { message } = e
                    && let Some(i) = message
                        .strip_prefix("image ")
                        .and_then(|r| r.split_once(' '))
                        .and_then(|(i, _)| i.parse::<usize>().ok())
                {
                    progress(&phase, before + i.saturating_sub(1));
                }
            };
            if !generate_set(
                &model,
                &items,
                &plan.dir,
                None,
                &params,
                &mut events,
                &cancel,
            )? {
                return Ok(false);
            }
            let scores = match &scorer {
                Some(s) => {
                    progress(&format!("scoring {}", plan.label), before + per_column);
                    Some(score_folder(s, &plan.dir).map_err(score_err)?)
                }
                None => None,
            };
            record(plan, scores)?;
        }
        Ok(true)
    }
}

fn merge<B: Backend>(model: &mut StableDiffusion<B>, set: &LoraSet, label: &str) -> Result<()> {
    let report = merge_lora(set, &mut model.unet, &mut model.text_encoder, 1.0);
    match report.unplaced.first() {
        Some(first) => Err(StudioError::Invalid(format!(
            "{label}: {} LoRA layers found no place in the base model, e.g. `{first}`",
            report.unplaced.len()
        ))),
        None => Ok(()),
    }
}

/// A stored gallery: its column and key.
#[derive(Debug, Clone)]
pub(crate) struct GalleryRow {
    pub id: i64,
    pub run: Option<RunId>,
    pub key: String,
}

/// One stored gallery image.
#[derive(Debug, Clone)]
pub(crate) struct GalleryImage {
    pub prompt: usize,
    pub seed: u64,
    /// Relative to the workspace.
    pub file: String,
    pub is: Option<f32>,
    pub ts: Option<f32>,
}

impl Workspace {
    /// Records a made column and its images (with scores when there are).
    fn record_gallery(
        &self,
        project: ProjectId,
        job: &Job,
        plan: &ColumnPlan,
        key_text: &str,
        key: &GalleryKey,
        scores: Option<&[ScoredImage]>,
    ) -> Result<()> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.db_err(e))?;
        self.conn
            .execute(
                "INSERT INTO galleries (run_id, stage, dir, created_at, project_id, job_id, spec)
                 VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6)",
                params![
                    plan.run,
                    self.relative(&plan.dir),
                    now(),
                    project,
                    job.id,
                    key_text
                ],
            )
            .map_err(|e| self.db_err(e))?;
        let gallery = self.conn.last_insert_rowid();
        for (pi, _) in key.prompts.iter().enumerate() {
            for &seed in &key.seeds {
                let file = image_file(pi, seed);
                let score = scores.and_then(|s| s.iter().find(|x| x.image == file));
                self.conn
                    .execute(
                        "INSERT INTO gallery_images
                             (gallery_id, prompt_index, seed, file, image_score, text_score)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            gallery,
                            pi as i64,
                            seed as i64,
                            self.relative(&plan.dir.join(&file)),
                            score.map(|s| s.is),
                            score.map(|s| s.ts)
                        ],
                    )
                    .map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        tracing::info!("gallery {gallery}: {} recorded", plan.label);
        Ok(())
    }

    /// The project's galleries, newest first.
    pub(crate) fn galleries(&self, project: ProjectId) -> Result<Vec<GalleryRow>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, run_id, spec FROM galleries
                 WHERE project_id = ?1 AND spec IS NOT NULL ORDER BY id DESC",
            )
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([project], |r| {
                Ok(GalleryRow {
                    id: r.get(0)?,
                    run: r.get(1)?,
                    key: r.get(2)?,
                })
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))
    }

    /// A gallery's images, by prompt then seed.
    pub(crate) fn gallery_images(&self, gallery: i64) -> Result<Vec<GalleryImage>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT prompt_index, seed, file, image_score, text_score FROM gallery_images
                 WHERE gallery_id = ?1 ORDER BY prompt_index, seed",
            )
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([gallery], |r| {
                Ok(GalleryImage {
                    prompt: r.get::<_, i64>(0)?.max(0) as usize,
                    seed: r.get::<_, i64>(1)? as u64,
                    file: r.get(2)?,
                    is: r.get::<_, Option<f64>>(3)?.map(|v| v as f32),
                    ts: r.get::<_, Option<f64>>(4)?.map(|v| v as f32),
                })
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))
    }

    /// The newest gallery of `run` with this key whose image files are all there.
    fn complete_gallery(
        &self,
        project: ProjectId,
        run: Option<RunId>,
        key: &str,
    ) -> Result<Option<i64>> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM galleries WHERE project_id = ?1 AND run_id IS ?2 AND spec = ?3
                 ORDER BY id DESC LIMIT 1",
                params![project, run, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))?;
        let Some(id) = id else {
            return Ok(None);
        };
        let images = self.gallery_images(id)?;
        let all_there = !images.is_empty()
            && images
                .iter()
                .all(|i| Path::new(&self.absolute(&i.file)).is_file());
        Ok(all_there.then_some(id))
    }
}
