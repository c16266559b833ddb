//! The job queue: DreamBooth runs, DPO rounds and seed-matched galleries, one at a time on one
//! worker thread, in the order they were submitted.
//!
//! The queue lives in the workspace database (`jobs`), so a restarted app finds its queued jobs
//! and runs them; a job the database still calls `running` when a [`JobRunner`] starts belonged
//! to a process that died, and becomes `interrupted`. Interrupted and cancelled jobs are resumed
//! with [`JobRunner::resume`]: the trainers continue from the run's last complete checkpoint.
//!
//! Progress reaches the app as [`JobEvent`]s through [`JobRunner::subscribe`], and the database
//! (step, total, status) at least every [`PROGRESS_WRITE_INTERVAL`], so a restarted app shows
//! where each job stood.

mod store;
pub(crate) mod work;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use likeness_models::device::{DeviceChoice, Precision};
use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StudioError};
use crate::gallery::{GallerySettings, GallerySpec};
use crate::workspace::{BaseModel, BaseModelId, BaseModelKind, ProjectId, Workspace};

pub use store::{Run, RunKind};

/// How often a running job's step is written to the database, at most.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The file a [`JobRunner`] holds locked while it runs the workspace's jobs.
pub const RUNNER_LOCK_FILE: &str = "jobs.lock";

macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                $name(id)
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(value).map($name)
            }
        }
    };
}

row_id!(
    /// A job's row id.
    JobId
);
row_id!(
    /// A run's row id (a DreamBooth run, or one stage of a DPO run).
    RunId
);

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Dreambooth,
    Dpo,
    Gallery,
}

impl JobKind {
    /// The name stored in the database and sent to the app.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Dreambooth => "dreambooth",
            JobKind::Dpo => "dpo",
            JobKind::Gallery => "gallery",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "dreambooth" => Some(JobKind::Dreambooth),
            "dpo" => Some(JobKind::Dpo),
            "gallery" => Some(JobKind::Gallery),
            _ => None,
        }
    }
}

/// Where a job (or a run) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    /// The app stopped (or died) while it ran; resumable.
    Interrupted,
}

impl JobStatus {
    /// The name stored in the database and sent to the app.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(JobStatus::Queued),
            "running" => Some(JobStatus::Running),
            "done" => Some(JobStatus::Done),
            "failed" => Some(JobStatus::Failed),
            "cancelled" => Some(JobStatus::Cancelled),
            "interrupted" => Some(JobStatus::Interrupted),
            _ => None,
        }
    }

    /// Whether [`JobRunner::resume`] accepts a job in this state.
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            JobStatus::Interrupted | JobStatus::Cancelled | JobStatus::Failed
        )
    }

    /// Whether the job has stopped (for now or for good).
    pub fn is_ended(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// One job of the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub project_id: ProjectId,
    /// The run it trains (DreamBooth: the run; DPO: the last stage's run); `None` for galleries.
    pub run_id: Option<RunId>,
    pub status: JobStatus,
    /// Training steps done (DPO: over all stages; galleries: images made).
    pub step: usize,
    pub total: usize,
    /// Why it failed.
    pub message: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A DreamBooth LoRA run's settings, as the app edits them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DreamBoothSettings {
    pub base_model_id: BaseModelId,
    pub steps: usize,
    pub lr: f64,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    /// Pixels per side.
    pub resolution: usize,
    pub batch: usize,
    pub prior_preservation: bool,
    pub train_text_encoder: bool,
    pub seed: u64,
    /// A preview gallery every this many steps (0: none).
    pub sample_every: usize,
    /// A checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Default: "a photo of {token} {class}".
    pub instance_prompt: Option<String>,
}

impl DreamBoothSettings {
    /// Settings that suit the model: the built-in world model is tiny and learns fast (its
    /// native size, 300 steps at 1e-3, rank 8, as `likeness demo` does); Stable Diffusion
    /// follows diffusers' LoRA recipe (rank 4, alpha 4, 400 steps at 1e-4) at its native size
    /// (512 px for SD 1.x, 768 px for SD 2.x v-prediction).
    pub fn defaults_for(model: &BaseModel) -> Self {
        let native = model.summary["native_size"]
            .as_u64()
            .map(|n| n as usize)
            .filter(|&n| n > 0);
        let common = Self {
            base_model_id: model.id,
            steps: 400,
            lr: 1e-4,
            lora_rank: 4,
            lora_alpha: 4.0,
            resolution: native.unwrap_or(512),
            batch: 1,
            prior_preservation: false,
            train_text_encoder: false,
            seed: 0,
            sample_every: 100,
            checkpoint_every: 100,
            instance_prompt: None,
        };
        if model.kind == BaseModelKind::Builtin {
            Self {
                steps: 300,
                lr: 1e-3,
                lora_rank: 8,
                lora_alpha: 8.0,
                resolution: native.unwrap_or(64),
                ..common
            }
        } else {
            common
        }
    }

    /// Checks what makes no sense whatever the model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StudioError::Invalid(m.into()));
        if self.steps == 0 {
            return bad("DreamBooth steps must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("the learning rate must be a positive number");
        }
        if self.lora_rank == 0 || !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return bad("the LoRA rank must be at least 1 and alpha a positive number");
        }
        if self.resolution < 8 || !self.resolution.is_multiple_of(8) {
            return bad("the resolution must be a multiple of 8 pixels");
        }
        if self.batch == 0 {
            return bad("the batch size must be at least 1");
        }
        if self
            .instance_prompt
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return bad("the instance prompt is empty");
        }
        Ok(())
    }
}

/// A DreamBooth-DPO round's settings, as the app edits them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DpoSettings {
    /// The finished DreamBooth run (or DPO stage) whose LoRA the stages start from.
    pub from_run_id: RunId,
    pub stages: usize,
    pub prompts_per_stage: usize,
    pub samples_per_prompt: usize,
    /// Inclusive window on atan2(ΔIS, ΔTS) in degrees: 0° = prompt following alone, 90° =
    /// likeness alone.
    pub angle_min: f64,
    pub angle_max: f64,
    /// Training steps per stage.
    pub steps: usize,
    pub lr: f64,
    pub beta: f64,
    pub seed: u64,
}

impl DpoSettings {
    /// The paper's defaults (2 stages of 100 prompts × 8 samples, 20°–70°, β 5000, 500 steps at
    /// 1e-5); the built-in world model uses the demo's smaller rounds.
    pub fn defaults_for(model: &BaseModel, from_run_id: RunId) -> Self {
        if model.kind == BaseModelKind::Builtin {
            Self {
                from_run_id,
                stages: 2,
                prompts_per_stage: 8,
                samples_per_prompt: 6,
                angle_min: 20.0,
                angle_max: 70.0,
                steps: 60,
                lr: 1e-4,
                beta: 5000.0,
                seed: 0,
            }
        } else {
            Self {
                from_run_id,
                stages: 2,
                prompts_per_stage: 100,
                samples_per_prompt: 8,
                angle_min: 20.0,
                angle_max: 70.0,
                steps: 500,
                lr: 1e-5,
                beta: 5000.0,
                seed: 0,
            }
        }
    }

    /// Checks what makes no sense whatever the model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StudioError::Invalid(m));
        if self.stages == 0 || self.prompts_per_stage == 0 || self.steps == 0 {
            return bad("DPO stages, prompts per stage and steps must be at least 1".into());
        }
        if self.samples_per_prompt < 2 {
            return bad("DPO needs at least 2 samples per prompt (pairs are made of two)".into());
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.lr) || !positive(self.beta) {
            return bad("the learning rate and beta must be positive numbers".into());
        }
        if !(self.angle_min.is_finite() && self.angle_max.is_finite())
            || self.angle_min > self.angle_max
            || self.angle_min < -180.0
            || self.angle_max > 180.0
        {
            return bad(format!(
                "the angle window {}°..{}° must be an increasing range within -180°..180°",
                self.angle_min, self.angle_max
            ));
        }
        Ok(())
    }
}

/// A generated image's scores in a DPO stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidatePoint {
    pub prompt: String,
    /// Likeness: mean CLIP image cosine with the project's photos.
    pub is: f64,
    /// Prompt following: CLIP cosine with the prompt without the identifier.
    pub ts: f64,
    /// Index of the sample within its prompt.
    pub sample: usize,
}

/// A preference pair a DPO stage trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChosenPair {
    pub prompt: String,
    /// Sample index (within `prompt`) of the preferred image.
    pub better: usize,
    /// Sample index (within `prompt`) of the rejected image.
    pub worse: usize,
}

/// One message about a job's progress, in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum JobEvent {
    /// Added to the queue (or put back by a resume).
    Queued {
        job_id: JobId,
    },
    /// The worker took it (phase `preparing`), or training began (phase `training`, `DPO stage
    /// K`…); `total` is the job's.
    Started {
        job_id: JobId,
        total: usize,
        phase: String,
    },
    /// One optimizer step: the step over the whole job, its loss and learning rate, the time
    /// left at the recent pace, and for DPO the implicit preference accuracy of its batch.
    Step {
        job_id: JobId,
        step: usize,
        total: usize,
        loss: f32,
        lr: f64,
        eta_seconds: Option<f64>,
        accuracy: Option<f64>,
    },
    /// Preview images of a DreamBooth step (paths relative to the workspace, `/`-separated).
    Preview {
        job_id: JobId,
        step: usize,
        images: Vec<String>,
    },
    /// A DPO stage's scored candidates and the pairs it kept.
    Candidates {
        job_id: JobId,
        stage: usize,
        points: Vec<CandidatePoint>,
        pairs: Vec<ChosenPair>,
    },
    /// Work that is not a training step: loading, class images, candidates, gallery images.
    Phase {
        job_id: JobId,
        phase: String,
        done: usize,
        total: usize,
    },
    /// The job is done; `run_id` is what it trained (`None` for a gallery).
    Finished {
        job_id: JobId,
        run_id: Option<RunId>,
    },
    Failed {
        job_id: JobId,
        message: String,
    },
    /// Stopped by [`JobRunner::cancel`] (a checkpoint was written); resumable.
    Cancelled {
        job_id: JobId,
    },
    /// Stopped because the runner shut down (a checkpoint was written); resumable.
    Interrupted {
        job_id: JobId,
    },
}

impl JobEvent {
    /// The job the event is about.
    pub fn job_id(&self) -> JobId {
        match self {
            JobEvent::Queued { job_id }
            | JobEvent::Started { job_id, .. }
            | JobEvent::Step { job_id, .. }
            | JobEvent::Preview { job_id, .. }
            | JobEvent::Candidates { job_id, .. }
            | JobEvent::Phase { job_id, .. }
            | JobEvent::Finished { job_id, .. }
            | JobEvent::Failed { job_id, .. }
            | JobEvent::Cancelled { job_id }
            | JobEvent::Interrupted { job_id } => *job_id,
        }
    }
}

/// A subscription made with [`JobRunner::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ListenerId(pub u64);

type Listener = Arc<dyn Fn(&JobEvent) + Send + Sync>;

/// What the API and the worker share.
pub(crate) struct Shared {
    dir: PathBuf,
    /// The API's own connection (the worker has another).
    db: Mutex<Workspace>,
    queue: Mutex<QueueState>,
    /// Signalled when a job is queued or the runner stops.
    wake: Condvar,
    listeners: Mutex<Vec<(ListenerId, Listener)>>,
    next_listener: AtomicU64,
    device: DeviceChoice,
    precision: Precision,
    /// Held locked for the runner's life; the OS releases it if the process dies.
    _lock: std::fs::File,
}

#[derive(Default)]
struct QueueState {
    /// The job the worker runs and its trainer's cancel flag.
    running: Option<(JobId, Arc<AtomicBool>)>,
    /// Jobs whose `Queued` event is being sent; the worker waits so `Queued` comes first.
    announcing: HashSet<JobId>,
    /// The job whose final event is being sent (it is no longer running).
    ending: Option<JobId>,
    /// Set by shutdown: the worker takes no new job.
    stop: bool,
}

/// Locks a mutex, taking over one poisoned by a panicking listener (the data is still sound:
/// every critical section here is a few assignments).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn emit(&self, event: &JobEvent) {
        // Listeners run outside the lock, so one may subscribe, unsubscribe or cancel.
        let listeners: Vec<Listener> = lock(&self.listeners)
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        for l in listeners {
            // A panicking listener must not take the job (or the worker) down with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(event))).is_err() {
                tracing::error!("a job event listener panicked on {event:?}");
            }
        }
    }
}

/// Runs the workspace's jobs one at a time on a worker thread. Share it with `Arc`.
pub struct JobRunner {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl JobRunner {
    /// Opens the workspace in `workspace_dir`, marks the jobs a dead process left `running` as
    /// `interrupted`, and starts the worker (which begins with the queued jobs). Only one runner
    /// may serve a workspace at a time.
    pub fn start(
        workspace_dir: &Path,
        device: DeviceChoice,
        precision: Precision,
    ) -> Result<JobRunner> {
        let ws = Workspace::open(workspace_dir)?;
        let lock_path = workspace_dir.join(RUNNER_LOCK_FILE);
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StudioError::io(&lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StudioError::Busy { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StudioError::io(&lock_path, e)),
        }
        let interrupted = ws.mark_interrupted()?;
        for id in &interrupted {
            tracing::warn!("job {id} was running when the app stopped; it can be resumed");
        }
        let worker_ws = Workspace::open(workspace_dir)?;
        let shared = Arc::new(Shared {
            dir: workspace_dir.to_path_buf(),
            db: Mutex::new(ws),
            queue: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            listeners: Mutex::new(Vec::new()),
            next_listener: AtomicU64::new(1),
            device,
            precision,
            _lock: lock_file,
        });
        let worker = work::Worker::new(shared.clone(), worker_ws);
        let handle = std::thread::Builder::new()
            .name("likeness-jobs".into())
            .spawn(move || worker.run())
            .map_err(|e| StudioError::Invalid(format!("cannot start the job thread: {e}")))?;
        Ok(JobRunner {
            shared,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// The workspace folder.
    pub fn workspace_dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Queues a DreamBooth LoRA run on the project's photos; its run row and folder
    /// (`projects/<id>/runs/<run>-dreambooth/`) are made now.
    pub fn submit_dreambooth(
        &self,
        project: ProjectId,
        settings: DreamBoothSettings,
    ) -> Result<Job> {
        settings.validate()?;
        self.enqueue(|ws| {
            ws.project(project)?;
            let model = ws.base_model(settings.base_model_id)?;
            if ws.photos(project)?.is_empty() {
                return Err(StudioError::Invalid(format!(
                    "project {project} has no photos; import some before training"
                )));
            }
            let text = to_json(&settings)?;
            ws.create_dreambooth_job(project, &model, &text, settings.steps)
        })
    }

    /// Queues DPO stages that start from a finished DreamBooth run (or DPO stage) of the
    /// project; one run row per stage is made now, sharing `projects/<id>/runs/<run>-dpo/`.
    pub fn submit_dpo(&self, project: ProjectId, settings: DpoSettings) -> Result<Job> {
        settings.validate()?;
        self.enqueue(|ws| {
            ws.project(project)?;
            let from = ws.run(settings.from_run_id)?;
            if from.project_id != project {
                return Err(StudioError::Invalid(format!(
                    "run {} belongs to project {}, not {project}",
                    from.id, from.project_id
                )));
            }
            if from.status != JobStatus::Done {
                return Err(StudioError::Invalid(format!(
                    "run {} ({}) is {}; DPO starts from a finished run",
                    from.id,
                    from.label,
                    from.status.as_str()
                )));
            }
            if ws.photos(project)?.is_empty() {
                return Err(StudioError::Invalid(format!(
                    "project {project} has no photos; DPO measures likeness against them"
                )));
            }
            let model = work::run_base_model(ws, from.id)?;
            work::clip_for(ws, &model)?.ok_or_else(|| work::no_clip_error(&model))?;
            let text = to_json(&settings)?;
            ws.create_dpo_job(project, &from, &settings, &text)
        })
    }

    /// Queues a seed-matched gallery of the project's columns (`None` = the base model) with
    /// the model's default prompts, seeds and sampler ([`GallerySettings::defaults_for`]).
    pub fn submit_gallery(&self, project: ProjectId, run_ids: Vec<Option<RunId>>) -> Result<Job> {
        let settings = {
            let ws = lock(&self.shared.db);
            let model = crate::gallery::gallery_base_model(&ws, project, &run_ids)?;
            GallerySettings::defaults_for(&model, run_ids)
        };
        self.submit_gallery_with(project, settings)
    }

    /// Queues a seed-matched gallery with explicit prompt and seed counts and sampler.
    pub fn submit_gallery_with(
        &self,
        project: ProjectId,
        settings: GallerySettings,
    ) -> Result<Job> {
        self.enqueue(|ws| {
            let spec = GallerySpec::resolve(ws, project, &settings)?;
            let text = to_json(&spec)?;
            ws.create_gallery_job(project, &text, spec.image_count())
        })
    }

    /// Writes a queued job with `write` and sends `Queued` before the worker may take it, so
    /// events arrive in order.
    fn enqueue(&self, write: impl FnOnce(&Workspace) -> Result<Job>) -> Result<Job> {
        let job = {
            // Queue before database, everywhere: the worker claims jobs under the queue lock.
            let mut queue = lock(&self.shared.queue);
            let ws = lock(&self.shared.db);
            let job = write(&ws)?;
            queue.announcing.insert(job.id);
            job
        };
        self.shared.emit(&JobEvent::Queued { job_id: job.id });
        lock(&self.shared.queue).announcing.remove(&job.id);
        self.shared.wake.notify_all();
        Ok(job)
    }

    /// Cancels a job: a queued one never runs; a running one stops after its current step,
    /// writes a checkpoint and ends `cancelled` (resumable).
    pub fn cancel(&self, id: JobId) -> Result<()> {
        let queue = lock(&self.shared.queue);
        if let Some((running, flag)) = &queue.running
            && *running == id
        {
            flag.store(true, Ordering::SeqCst);
            tracing::info!("job {id}: cancelling");
            return Ok(());
        }
        let ws = lock(&self.shared.db);
        let job = ws.job(id)?;
        if job.status != JobStatus::Queued {
            return Err(StudioError::JobState {
                id: id.0,
                status: job.status.as_str(),
                message: "only queued or running jobs can be cancelled".into(),
            });
        }
        ws.end_job(&job, JobStatus::Cancelled, None)?;
        drop(ws);
        drop(queue);
        self.shared.emit(&JobEvent::Cancelled { job_id: id });
        Ok(())
    }

    /// Puts an interrupted, cancelled or failed job back in the queue; DreamBooth and DPO
    /// continue from their run's last complete checkpoint, galleries keep the columns made.
    pub fn resume(&self, id: JobId) -> Result<Job> {
        self.enqueue(|ws| {
            let job = ws.job(id)?;
            if !job.status.is_resumable() {
                return Err(StudioError::JobState {
                    id: id.0,
                    status: job.status.as_str(),
                    message: "only interrupted, cancelled or failed jobs can be resumed".into(),
                });
            }
            if job.kind != JobKind::Gallery && job.run_id.is_none() {
                return Err(StudioError::JobState {
                    id: id.0,
                    status: job.status.as_str(),
                    message: "its run was deleted".into(),
                });
            }
            ws.requeue_job(&job)
        })
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        lock(&self.shared.db).jobs()
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Result<Job> {
        lock(&self.shared.db).job(id)
    }

    /// Waits until the job has ended (done, failed, cancelled or interrupted) and its final
    /// event was sent, or `timeout` passed, and returns it as it stands.
    pub fn wait(&self, id: JobId, timeout: Duration) -> Result<Job> {
        let until = Instant::now() + timeout;
        loop {
            let job = self.job(id)?;
            let busy = {
                let queue = lock(&self.shared.queue);
                queue.running.as_ref().is_some_and(|(r, _)| *r == id) || queue.ending == Some(id)
            };
            if (job.status.is_ended() && !busy) || Instant::now() >= until {
                return Ok(job);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Calls `listener` with every event from now on, on the thread that made it (the worker
    /// for progress); it must return quickly.
    pub fn subscribe(&self, listener: Box<dyn Fn(&JobEvent) + Send + Sync>) -> ListenerId {
        let id = ListenerId(self.shared.next_listener.fetch_add(1, Ordering::Relaxed));
        lock(&self.shared.listeners).push((id, Arc::from(listener)));
        id
    }

    /// Stops calling a listener.
    pub fn unsubscribe(&self, id: ListenerId) {
        lock(&self.shared.listeners).retain(|(l, _)| *l != id);
    }

    /// Stops the running job with a checkpoint (it becomes `interrupted`, resumable), keeps the
    /// queued ones for the next start, and waits for the worker to end.
    pub fn shutdown(self) {
        self.stop();
    }

    fn stop(&self) {
        {
            let mut queue = lock(&self.shared.queue);
            queue.stop = true;
            if let Some((_, flag)) = &queue.running {
                flag.store(true, Ordering::SeqCst);
            }
        }
        self.shared.wake.notify_all();
        let handle = lock(&self.worker).take();
        if let Some(h) = handle {
            // A listener dropping the last handle runs on the worker: it cannot wait for itself.
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("the job thread panicked");
            }
        }
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StudioError::Invalid(format!("settings: {e}")))
}
