//! The rows of jobs and runs: the queue's state and what each run trained.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{DpoSettings, Job, JobId, JobKind, JobStatus, RunId};
use crate::error::{Result, StudioError};
use crate::workspace::{BaseModel, BaseModelId, ProjectId, Workspace, now};

/// What trained a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Dreambooth,
    Dpo,
}

impl RunKind {
    /// The name stored in the database and sent to the app.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Dreambooth => "dreambooth",
            RunKind::Dpo => "dpo",
        }
    }
}

/// A model the project trained: a DreamBooth run, or one stage of a DPO run (the stages of a
/// DPO run share its folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: RunId,
    pub project_id: ProjectId,
    pub kind: RunKind,
    /// The run it started from (a DPO stage's DreamBooth run or earlier stage).
    pub parent_run_id: Option<RunId>,
    /// The DPO stage, from 1.
    pub stage: Option<usize>,
    /// "DreamBooth", "DPO 1", "DPO 2"… (numbered when the project has several).
    pub label: String,
    pub status: JobStatus,
    /// Training steps done.
    pub steps: usize,
    /// Unix seconds.
    pub created_at: i64,
}

/// A run's row with what only the core needs.
#[derive(Debug, Clone)]
pub(crate) struct RunRecord {
    pub run: Run,
    /// The run folder (for a DPO stage, the DPO run's folder).
    pub root: PathBuf,
    pub base_model_id: Option<BaseModelId>,
}

impl RunRecord {
    /// The folder holding this run's own files (a DPO stage's `stage-K` folder).
    pub fn files_dir(&self) -> PathBuf {
        match self.run.stage {
            Some(k) => likeness_train::dpo::stage_dir(&self.root, k),
            None => self.root.clone(),
        }
    }
}

const JOB_COLUMNS: &str = "id, kind, project_id, run_id, status, step, total, message, created_at";
const RUN_COLUMNS: &str =
    "id, project_id, kind, parent_run_id, stage, status, steps, created_at, dir, base_model_id";

fn bad_column(idx: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, what.into())
}

fn job_from_row(row: &Row) -> rusqlite::Result<Job> {
    let kind: String = row.get(1)?;
    let status: String = row.get(4)?;
    Ok(Job {
        id: row.get(0)?,
        kind: JobKind::parse(&kind).ok_or_else(|| bad_column(1, format!("job kind `{kind}`")))?,
        project_id: row.get(2)?,
        run_id: row.get(3)?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| bad_column(4, format!("job status `{status}`")))?,
        step: row.get::<_, i64>(5)?.max(0) as usize,
        total: row.get::<_, i64>(6)?.max(0) as usize,
        message: row.get(7)?,
        created_at: row.get(8)?,
    })
}

impl Workspace {
    fn run_record_from_row(&self, row: &Row) -> rusqlite::Result<RunRecord> {
        let kind: String = row.get(2)?;
        let status: String = row.get(5)?;
        let dir: String = row.get(8)?;
        let kind = match kind.as_str() {
            "dreambooth" => RunKind::Dreambooth,
            "dpo" => RunKind::Dpo,
            other => return Err(bad_column(2, format!("run kind `{other}`"))),
        };
        Ok(RunRecord {
            run: Run {
                id: row.get(0)?,
                project_id: row.get(1)?,
                kind,
                parent_run_id: row.get(3)?,
                stage: row.get::<_, Option<i64>>(4)?.map(|s| s.max(0) as usize),
                label: String::new(),
                status: JobStatus::parse(&status)
                    .ok_or_else(|| bad_column(5, format!("run status `{status}`")))?,
                steps: row.get::<_, i64>(6)?.max(0) as usize,
                created_at: row.get(7)?,
            },
            root: self.absolute(&dir),
            base_model_id: row.get(9)?,
        })
    }

    /// Every run of a project, oldest first (DPO stages in stage order), labelled.
    pub fn runs(&self, project: ProjectId) -> Result<Vec<Run>> {
        self.project(project)?;
        Ok(self
            .run_records(project)?
            .into_iter()
            .map(|r| r.run)
            .collect())
    }

    /// One run, labelled as in [`Workspace::runs`].
    pub fn run(&self, id: RunId) -> Result<Run> {
        Ok(self.run_record(id)?.run)
    }

    /// The folder of a run's files: a DreamBooth run's folder, a DPO stage's `stage-K` folder.
    pub fn run_dir(&self, id: RunId) -> Result<PathBuf> {
        Ok(self.run_record(id)?.files_dir())
    }

    pub(crate) fn run_record(&self, id: RunId) -> Result<RunRecord> {
        let project: ProjectId = self
            .conn
            .query_row("SELECT project_id FROM runs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.db_err(e))?
            .ok_or(StudioError::NotFound {
                what: "run",
                id: id.0,
            })?;
        self.run_records(project)?
            .into_iter()
            .find(|r| r.run.id == id)
            .ok_or(StudioError::NotFound {
                what: "run",
                id: id.0,
            })
    }

    /// The project's runs with their labels: the n-th DreamBooth run is "DreamBooth n" (the
    /// first plain "DreamBooth"), stage k of the m-th DPO run "DPO k (run m)" (the first "DPO k").
    pub(crate) fn run_records(&self, project: ProjectId) -> Result<Vec<RunRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE project_id = ?1 ORDER BY id"
            ))
            .map_err(|e| self.db_err(e))?;
        let mut records = stmt
            .query_map([project], |r| self.run_record_from_row(r))
            .map_err(|e| self.db_err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))?;
        let mut dreambooth = 0;
        let mut dpo_roots: Vec<PathBuf> = Vec::new();
        for r in &mut records {
            r.run.label = match r.run.kind {
                RunKind::Dreambooth => {
                    dreambooth += 1;
                    if dreambooth == 1 {
                        "DreamBooth".into()
                    } else {
                        format!("DreamBooth {dreambooth}")
                    }
                }
                RunKind::Dpo => {
                    let m = match dpo_roots.iter().position(|d| *d == r.root) {
                        Some(i) => i + 1,
                        None => {
                            dpo_roots.push(r.root.clone());
                            dpo_roots.len()
                        }
                    };
                    let k = r.run.stage.unwrap_or(1);
                    if m == 1 {
                        format!("DPO {k}")
                    } else {
                        format!("DPO {k} (run {m})")
                    }
                }
            };
        }
        Ok(records)
    }

    /// The runs a job trains, in stage order (one for DreamBooth, one per stage for DPO).
    pub(crate) fn job_runs(&self, job: &Job) -> Result<Vec<RunRecord>> {
        let Some(run_id) = job.run_id else {
            return Ok(Vec::new());
        };
        let record = self.run_record(run_id)?;
        if record.run.kind == RunKind::Dreambooth {
            return Ok(vec![record]);
        }
        let mut stages: Vec<RunRecord> = self
            .run_records(job.project_id)?
            .into_iter()
            .filter(|r| r.run.kind == RunKind::Dpo && r.root == record.root)
            .collect();
        stages.sort_by_key(|r| r.run.stage);
        Ok(stages)
    }

    pub(crate) fn set_run_status(&self, id: RunId, status: JobStatus) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET status = ?1 WHERE id = ?2",
                params![status.as_str(), id],
            )
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    pub(crate) fn set_run_steps(&self, id: RunId, steps: usize) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET steps = ?1 WHERE id = ?2",
                params![steps as i64, id],
            )
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn insert_run(
        &self,
        project: ProjectId,
        kind: RunKind,
        parent: Option<RunId>,
        stage: Option<usize>,
        base_model: Option<BaseModelId>,
    ) -> rusqlite::Result<RunId> {
        self.conn.execute(
            "INSERT INTO runs (project_id, kind, dir, parent_run_id, status, created_at, stage,
                               base_model_id, steps)
             VALUES (?1, ?2, '', ?3, 'queued', ?4, ?5, ?6, 0)",
            params![
                project,
                kind.as_str(),
                parent,
                now(),
                stage.map(|s| s as i64),
                base_model
            ],
        )?;
        Ok(RunId(self.conn.last_insert_rowid()))
    }

    fn set_run_folder(&self, id: RunId, dir: &str) -> rusqlite::Result<()> {
        self.conn
            .execute("UPDATE runs SET dir = ?1 WHERE id = ?2", params![dir, id])?;
        Ok(())
    }

    /// `projects/<project>/runs/<run>-<kind>`, as stored.
    fn run_folder(project: ProjectId, run: RunId, kind: RunKind) -> String {
        format!("projects/{project}/runs/{run}-{}", kind.as_str())
    }

    fn insert_job(
        &self,
        project: ProjectId,
        kind: JobKind,
        run: Option<RunId>,
        settings: &str,
        total: usize,
    ) -> rusqlite::Result<JobId> {
        let t = now();
        self.conn.execute(
            "INSERT INTO jobs (project_id, kind, run_id, status, settings, step, total, message,
                               queue_order, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'queued', ?4, 0, ?5, NULL,
                     COALESCE((SELECT MAX(queue_order) FROM jobs), 0) + 1, ?6, ?6)",
            params![project, kind.as_str(), run, settings, total as i64, t],
        )?;
        Ok(JobId(self.conn.last_insert_rowid()))
    }

    /// A queued DreamBooth job and its run row.
    pub(crate) fn create_dreambooth_job(
        &self,
        project: ProjectId,
        model: &BaseModel,
        settings: &str,
        total: usize,
    ) -> Result<Job> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.db_err(e))?;
        let id = (|| {
            let run = self.insert_run(project, RunKind::Dreambooth, None, None, Some(model.id))?;
            self.set_run_folder(run, &Self::run_folder(project, run, RunKind::Dreambooth))?;
            self.insert_job(project, JobKind::Dreambooth, Some(run), settings, total)
        })()
        .map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;
        self.job(id)
    }

    /// A queued DPO job and one run row per stage (the job's run is the last stage).
    pub(crate) fn create_dpo_job(
        &self,
        project: ProjectId,
        from: &Run,
        settings: &DpoSettings,
        text: &str,
    ) -> Result<Job> {
        let base_model = self.run_record(from.id)?.base_model_id;
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.db_err(e))?;
        let id = (|| {
            let mut folder = String::new();
            let mut last = None;
            for stage in 1..=settings.stages {
                let run = self.insert_run(
                    project,
                    RunKind::Dpo,
                    Some(from.id),
                    Some(stage),
                    base_model,
                )?;
                if stage == 1 {
                    folder = Self::run_folder(project, run, RunKind::Dpo);
                }
                self.set_run_folder(run, &folder)?;
                last = Some(run);
            }
            self.insert_job(
                project,
                JobKind::Dpo,
                last,
                text,
                settings.stages * settings.steps,
            )
        })()
        .map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;
        self.job(id)
    }

    /// A queued gallery job.
    pub(crate) fn create_gallery_job(
        &self,
        project: ProjectId,
        settings: &str,
        total: usize,
    ) -> Result<Job> {
        let id = self
            .insert_job(project, JobKind::Gallery, None, settings, total)
            .map_err(|e| self.db_err(e))?;
        self.job(id)
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Result<Job> {
        self.conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()
            .map_err(|e| self.db_err(e))?
            .ok_or(StudioError::NotFound {
                what: "job",
                id: id.0,
            })
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id"))
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([], job_from_row)
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))
    }

    /// A job's settings as stored (JSON).
    pub(crate) fn job_settings(&self, id: JobId) -> Result<String> {
        self.conn
            .query_row("SELECT settings FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .map_err(|e| self.db_err(e))
    }

    /// The job at the head of the queue.
    pub(crate) fn next_queued(&self) -> Result<Option<JobId>> {
        self.conn
            .query_row(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY queue_order, id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))
    }

    /// Marks a queued job running.
    pub(crate) fn claim_job(&self, id: JobId) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET status = 'running', message = NULL, updated_at = ?1
                 WHERE id = ?2",
                params![now(), id],
            )
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    pub(crate) fn set_job_progress(&self, id: JobId, step: usize, total: usize) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET step = ?1, total = ?2, updated_at = ?3 WHERE id = ?4",
                params![step as i64, total as i64, now(), id],
            )
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Ends a job with `status`; its runs that did not finish take the same status.
    pub(crate) fn end_job(
        &self,
        job: &Job,
        status: JobStatus,
        message: Option<&str>,
    ) -> Result<()> {
        let runs = self.job_runs(job)?;
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.db_err(e))?;
        self.conn
            .execute(
                "UPDATE jobs SET status = ?1, message = ?2, updated_at = ?3 WHERE id = ?4",
                params![status.as_str(), message, now(), job.id],
            )
            .map_err(|e| self.db_err(e))?;
        for r in runs {
            if r.run.status != JobStatus::Done {
                self.set_run_status(r.run.id, status)?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Puts an ended job at the back of the queue.
    pub(crate) fn requeue_job(&self, job: &Job) -> Result<Job> {
        let runs = self.job_runs(job)?;
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.db_err(e))?;
        self.conn
            .execute(
                "UPDATE jobs SET status = 'queued', message = NULL, updated_at = ?1,
                     queue_order = COALESCE((SELECT MAX(queue_order) FROM jobs), 0) + 1
                 WHERE id = ?2",
                params![now(), job.id],
            )
            .map_err(|e| self.db_err(e))?;
        for r in runs {
            if r.run.status != JobStatus::Done {
                self.set_run_status(r.run.id, JobStatus::Queued)?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        self.job(job.id)
    }

    /// Jobs and runs left `running` by a process that died become `interrupted`.
    pub(crate) fn mark_interrupted(&self) -> Result<Vec<JobId>> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.db_err(e))?;
        let ids: Vec<JobId> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM jobs WHERE status = 'running' ORDER BY id")
                .map_err(|e| self.db_err(e))?;
            stmt.query_map([], |r| r.get(0))
                .map_err(|e| self.db_err(e))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| self.db_err(e))?
        };
        self.conn
            .execute_batch(
                "UPDATE jobs SET status = 'interrupted' WHERE status = 'running';
                 UPDATE runs SET status = 'interrupted' WHERE status = 'running';",
            )
            .map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(ids)
    }
}
