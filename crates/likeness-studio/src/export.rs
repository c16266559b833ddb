//! LoRA export: a DreamBooth run's latest checkpoint or a DPO stage's LoRA as a kohya file
//! (AUTOMATIC1111, ComfyUI) or a diffusers/PEFT file, written atomically and recorded in
//! `exports`.

use std::path::{Path, PathBuf};

use likeness_models::lora_files::{ExportInfo, LoraFormat, read_lora_file, write_lora_file};
use likeness_models::sd::{LoadOptions, ModelSummary, summarize};
use likeness_train::checkpoint::{latest_checkpoint, load_checkpoint_lora};
use likeness_train::dpo::{DpoRunConfig, STAGE_LORA_FILE};
use likeness_train::dreambooth::RunConfig;
use likeness_train::run_dir::RunDir;
use likeness_train::trainable::TrainMode;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StudioError};
use crate::jobs::{RunId, RunKind};
use crate::workspace::{Workspace, now};

/// A written LoRA file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportResult {
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

fn family_info(summary: &ModelSummary, resolution: usize) -> ExportInfo {
    ExportInfo {
        base_model_family: Some(summary.family),
        v_prediction: summary.v_prediction,
        conv_projection: Some(summary.conv_projection),
        resolution: Some([resolution, resolution]),
        base_model_name: Some(summary.name.clone()),
        ..Default::default()
    }
}

fn describe(model: &Path, v_prediction: bool) -> Result<ModelSummary> {
    summarize(
        model,
        &LoadOptions {
            v_prediction,
            ..Default::default()
        },
    )
    .map_err(|e| {
        StudioError::NotAModel(format!(
            "the run's base model {} (needed for the file's metadata): {e}",
            model.display()
        ))
    })
}

impl Workspace {
    /// Writes a run's LoRA to `path` in `format`: a DreamBooth run's latest checkpoint (a
    /// cancelled run exports where it stopped), or a finished DPO stage's LoRA.
    pub fn export_lora(
        &mut self,
        run: RunId,
        format: LoraFormat,
        path: &Path,
    ) -> Result<ExportResult> {
        let record = self.run_record(run)?;
        let project = self.project(record.run.project_id)?;
        let (set, mut info) = match record.run.kind {
            RunKind::Dreambooth => {
                let dir = RunDir::open(&record.root).map_err(|_| {
                    StudioError::io(&record.root, "the run has not started: nothing to export")
                })?;
                let config: RunConfig = dir.read_config()?;
                if matches!(config.dreambooth.mode, TrainMode::Full { .. }) {
                    return Err(StudioError::io(
                        &record.root,
                        "a full fine-tune run has no LoRA to export",
                    ));
                }
                let step = latest_checkpoint(&dir)?.map(|(s, _)| s).ok_or_else(|| {
                    StudioError::io(
                        dir.checkpoints_dir(),
                        "no checkpoint yet: nothing to export",
                    )
                })?;
                let set = load_checkpoint_lora(&record.root, Some(step))?;
                let c = &config.dreambooth;
                let summary = describe(&config.base_model, c.v_prediction)?;
                let mut info = family_info(&summary, c.resolution.unwrap_or(summary.native_size));
                info.steps = Some(step as u64);
                info.learning_rate = Some(c.lr);
                info.batch_size = Some(c.batch as u64);
                info.seed = Some(c.seed);
                info.comment = Some(format!("Likeness DreamBooth, project {}", project.name));
                (set, info)
            }
            RunKind::Dpo => {
                let stage = record.run.stage.unwrap_or(1);
                let file = record.files_dir().join(STAGE_LORA_FILE);
                if !file.is_file() {
                    return Err(StudioError::io(
                        &file,
                        format!("DPO stage {stage} is not finished: nothing to export"),
                    ));
                }
                let set = read_lora_file(&file)?;
                let config: DpoRunConfig = RunDir::open(&record.root)?.read_config()?;
                let c = &config.dpo;
                let summary = describe(&c.model, c.v_prediction)?;
                let mut info = family_info(&summary, c.resolution.unwrap_or(summary.native_size));
                info.steps = Some((c.steps_per_stage * stage) as u64);
                info.learning_rate = Some(c.lr);
                info.batch_size = Some(c.batch as u64);
                info.seed = Some(c.seed);
                info.comment = Some(format!(
                    "Likeness DreamBooth-DPO stage {stage}, project {}",
                    project.name
                ));
                (set, info)
            }
        };
        if set.layers.is_empty() {
            return Err(StudioError::io(
                &record.root,
                "the run holds no LoRA layers",
            ));
        }
        info.trigger_phrase = Some(format!("{} {}", project.token, project.class));
        info.output_name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        write_lora_file(path, &set, format, &info)?;
        let bytes = std::fs::metadata(path)
            .map_err(|e| StudioError::io(path, e))?
            .len();
        let path = path.canonicalize().map_err(|e| StudioError::io(path, e))?;
        self.conn
            .execute(
                "INSERT INTO exports (run_id, stage, format, path, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    run,
                    record.run.stage.map(|s| s.to_string()),
                    format.to_string(),
                    path.to_string_lossy(),
                    now()
                ],
            )
            .map_err(|e| self.db_err(e))?;
        tracing::info!(
            "run {run}: {} LoRA layers exported to {} ({format})",
            set.layers.len(),
            path.display()
        );
        Ok(ExportResult { path, bytes })
    }
}
