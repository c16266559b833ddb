//! The worker thread: takes the head of the queue, runs it with the trainers (or the gallery
//! task), turns their [`TrainEvent`]s into [`JobEvent`]s and database progress, and records how
//! it ended.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use likeness_models::device::{
    DeviceChoice, Precision, dispatch, resolve, training_placement, tuning,
};
use likeness_models::lora::LoraTargets;
use likeness_train::TrainEvent;
use likeness_train::dpo::{DpoConfig, DpoJob, DpoLossRecord, DpoSource, DpoTask, STAGE_LORA_FILE};
use likeness_train::dreambooth::{DreamBoothConfig, DreamBoothJob, DreamBoothTask};
use likeness_train::pairs::{Pair, ScoredImage};
use likeness_train::trainable::TrainMode;
use likeness_train::world::{CONCEPTS, Concept};

use super::store::{RunKind, RunRecord};
use super::{
    DpoSettings, DreamBoothSettings, Job, JobEvent, JobId, JobKind, JobStatus,
    PROGRESS_WRITE_INTERVAL, RunId, Shared, lock,
};
use crate::error::{Result, StudioError};
use crate::gallery::{self, GallerySpec};
use crate::workspace::{BaseModel, BaseModelKind, Project, ProjectId, Workspace};

/// How a job that did not fail ended.
pub(crate) enum Ending {
    /// All done; what it trained.
    Done(Option<RunId>),
    /// The cancel flag stopped it (a checkpoint was written).
    Stopped,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    ws: Workspace,
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>, ws: Workspace) -> Self {
        Self { shared, ws }
    }

    pub(crate) fn run(self) {
        while let Some((job, cancel)) = self.claim_next() {
            self.execute(job, cancel);
        }
        tracing::debug!("job thread stopped");
    }

    /// Waits for the head of the queue and marks it running; `None` when the runner stops.
    fn claim_next(&self) -> Option<(Job, Arc<AtomicBool>)> {
        let mut queue = lock(&self.shared.queue);
        loop {
            if queue.stop {
                return None;
            }
            let next = match self.ws.next_queued() {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!("reading the job queue: {e}");
                    None
                }
            };
            if let Some(id) = next
                && !queue.announcing.contains(&id)
            {
                let claimed = self.ws.claim_job(id).and_then(|()| self.ws.job(id));
                match claimed {
                    Ok(job) => {
                        let cancel = Arc::new(AtomicBool::new(false));
                        queue.running = Some((id, cancel.clone()));
                        return Some((job, cancel));
                    }
                    Err(e) => tracing::error!("job {id}: cannot start it: {e}"),
                }
            }
            // The timeout only guards against a missed wake-up.
            queue = self
                .shared
                .wake
                .wait_timeout(queue, Duration::from_secs(5))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn execute(&self, job: Job, cancel: Arc<AtomicBool>) {
        let id = job.id;
        tracing::info!("job {id} ({}) started", job.kind.as_str());
        self.shared.emit(&JobEvent::Started {
            job_id: id,
            total: job.total,
            phase: "preparing".into(),
        });
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job.kind {
            JobKind::Dreambooth => self.dreambooth(&job, cancel.clone()),
            JobKind::Dpo => self.dpo(&job, cancel.clone()),
            JobKind::Gallery => self.gallery(&job, cancel.clone()),
        }));
        let result = outcome.unwrap_or_else(|panic| {
            Err(StudioError::Invalid(likeness_models::device::panic_line(
                &*panic,
            )))
        });
        let stopping = lock(&self.shared.queue).stop;
        let (status, message, event) = match result {
            Ok(Ending::Done(run_id)) => (
                JobStatus::Done,
                None,
                JobEvent::Finished { job_id: id, run_id },
            ),
            Ok(Ending::Stopped) if stopping => (
                JobStatus::Interrupted,
                None,
                JobEvent::Interrupted { job_id: id },
            ),
            Ok(Ending::Stopped) => (
                JobStatus::Cancelled,
                None,
                JobEvent::Cancelled { job_id: id },
            ),
            Err(e) => {
                let message = e.to_string();
                (
                    JobStatus::Failed,
                    Some(message.clone()),
                    JobEvent::Failed {
                        job_id: id,
                        message,
                    },
                )
            }
        };
        tracing::info!("job {id} ended {}", status.as_str());
        let ended = (|| {
            if status == JobStatus::Done {
                let job = self.ws.job(id)?;
                self.ws.set_job_progress(id, job.total, job.total)?;
            }
            self.ws.end_job(&job, status, message.as_deref())
        })();
        if let Err(e) = ended {
            tracing::error!("job {id}: recording its end: {e}");
        }
        {
            let mut queue = lock(&self.shared.queue);
            queue.running = None;
            queue.ending = Some(id);
        }
        self.shared.emit(&event);
        lock(&self.shared.queue).ending = None;
    }

    /// The device and the mixed precision the trainers run with.
    fn training_device(&self) -> Result<(DeviceChoice, Precision)> {
        let p = training_placement(self.shared.device, self.shared.precision)?;
        Ok((p.device, p.precision))
    }

    /// `work`: what the job runs on `device` ([`tuning::work`]), for the first-run tuning
    /// notice; `None` when it cannot be told.
    fn progress(
        &self,
        job: &Job,
        runs: Vec<RunRecord>,
        stage_steps: Option<usize>,
        device: DeviceChoice,
        work: Option<String>,
    ) -> Progress<'_> {
        Progress {
            tuning: work
                .filter(|w| tuning::needs_tuning(device, w))
                .map(|w| TuningNotice::start(&self.shared, job.id, device, w)),
            label: String::new(),
            shared: &self.shared,
            ws: &self.ws,
            job: job.id,
            total: job.total,
            runs,
            stage_steps,
            stage: 0,
            step: job.step,
            run_step: 0,
            recent: VecDeque::new(),
            last_write: None,
        }
    }

    fn dreambooth(&self, job: &Job, cancel: Arc<AtomicBool>) -> Result<Ending> {
        let settings: DreamBoothSettings = self.settings(job)?;
        let runs = self.ws.job_runs(job)?;
        let run = runs.first().cloned().ok_or_else(|| run_deleted(job))?;
        let (device, mixed) = self.training_device()?;
        // A resume reads its model from the run; the workspace's entry may be gone by then.
        let model = self.ws.base_model(settings.base_model_id);
        let work = model.as_ref().ok().map(|m| {
            let size = [settings.resolution; 2];
            tuning::work("dreambooth", &m.path, size, settings.batch, mixed)
        });
        let run_dir = run.root.clone();
        let train_job = if run_dir.join("config.json").is_file() {
            DreamBoothJob::Resume {
                run_dir: run_dir.clone(),
                steps: None,
                model: None,
            }
        } else {
            let project = self.ws.project(job.project_id)?;
            let model = model?;
            let photos = run_dir.join("photos");
            copy_photos(&self.ws, project.id, &photos)?;
            let config = dreambooth_config(&project, &model, &settings, &photos, mixed);
            DreamBoothJob::New {
                config: Box::new(config),
                run_dir: run_dir.clone(),
            }
        };
        self.ws.set_run_status(run.run.id, JobStatus::Running)?;
        let mut progress = self.progress(job, runs, None, device, work);
        let outcome = dispatch(
            device,
            Precision::F32,
            DreamBoothTask {
                job: train_job,
                events: &mut |e| progress.on(e),
                cancel,
            },
        )??;
        self.ws.set_run_steps(run.run.id, outcome.step)?;
        if outcome.cancelled {
            Ok(Ending::Stopped)
        } else {
            Ok(Ending::Done(Some(run.run.id)))
        }
    }

    fn dpo(&self, job: &Job, cancel: Arc<AtomicBool>) -> Result<Ending> {
        let settings: DpoSettings = self.settings(job)?;
        let stages = self.ws.job_runs(job)?;
        let first = stages.first().cloned().ok_or_else(|| run_deleted(job))?;
        let (device, mixed) = self.training_device()?;
        let work = self
            .ws
            .run_record(settings.from_run_id)
            .ok()
            .and_then(|from| {
                let model = run_base_model(&self.ws, from.run.id).ok()?;
                let size = [trained_resolution(&from).unwrap_or(0); 2];
                Some(tuning::work("dpo", &model.path, size, 1, mixed))
            });
        let run_dir = first.root.clone();
        let train_job = if run_dir.join("config.json").is_file() {
            DpoJob::Resume {
                run_dir: run_dir.clone(),
            }
        } else {
            let project = self.ws.project(job.project_id)?;
            let from = self.ws.run_record(settings.from_run_id)?;
            let model = run_base_model(&self.ws, from.run.id)?;
            let clip = clip_for(&self.ws, &model)?.ok_or_else(|| no_clip_error(&model))?;
            let photos = run_dir.join("photos");
            copy_photos(&self.ws, project.id, &photos)?;
            let source = match from.run.kind {
                RunKind::Dreambooth => DpoSource::Run(from.root.clone()),
                RunKind::Dpo => DpoSource::Lora(from.files_dir().join(STAGE_LORA_FILE)),
            };
            let mut c = DpoConfig::new(
                &model.path,
                source,
                &photos,
                &clip,
                &project.token,
                &project.class,
            );
            c.stages = settings.stages;
            c.prompts_per_stage = settings.prompts_per_stage;
            c.samples_per_prompt = settings.samples_per_prompt;
            c.filter.angle_min = settings.angle_min;
            c.filter.angle_max = settings.angle_max;
            c.steps_per_stage = settings.steps;
            c.lr = settings.lr;
            c.beta = settings.beta;
            c.seed = settings.seed;
            c.resolution = trained_resolution(&from);
            // A crash loses at most a quarter of a stage.
            c.checkpoint_every = settings.steps.div_ceil(4);
            c.mixed_precision = mixed;
            if model.kind == BaseModelKind::Builtin {
                // The world model knows only its own caption grammar: its concept templates.
                let (_, train) =
                    likeness_train::world::concept_template_split(world_concept(&project.class));
                let file = run_dir.join("prompts.txt");
                std::fs::create_dir_all(&run_dir).map_err(|e| StudioError::io(&run_dir, e))?;
                likeness_models::png_meta::write_atomic(&file, train.join("\n").as_bytes())?;
                c.prompts = Some(file);
                c.sample_steps = 25;
                c.guidance = 4.0;
            }
            DpoJob::New {
                config: Box::new(c),
                run_dir: run_dir.clone(),
            }
        };
        let last = stages.last().map(|s| s.run.id);
        let mut progress = self.progress(job, stages.clone(), Some(settings.steps), device, work);
        // The first unfinished stage runs first (finished ones are kept by a resume).
        if let Some(first) = stages.iter().find(|s| s.run.status != JobStatus::Done) {
            progress.touch_stage(first.run.stage.unwrap_or(1));
        }
        let outcome = dispatch(
            device,
            Precision::F32,
            DpoTask {
                job: train_job,
                events: &mut |e| progress.on(e),
                cancel,
            },
        )??;
        progress.finish_stages();
        if outcome.cancelled {
            Ok(Ending::Stopped)
        } else {
            Ok(Ending::Done(last))
        }
    }

    fn gallery(&self, job: &Job, cancel: Arc<AtomicBool>) -> Result<Ending> {
        let spec: GallerySpec = self.settings(job)?;
        let device = resolve(self.shared.device)?;
        let work = tuning::work(
            "gallery",
            &self.ws.base_model(spec.key.base_model_id)?.path,
            [spec.key.resolution; 2],
            1,
            self.shared.precision,
        );
        let mut first_run = tuning::needs_tuning(device, &work)
            .then(|| TuningNotice::start(&self.shared, job.id, device, work));
        let (shared, ws, id, total) = (&self.shared, &self.ws, job.id, job.total);
        let mut last_write: Option<Instant> = None;
        let mut on_progress = |phase: &str, done: usize| {
            let done = done.min(total);
            if done > 0
                && let Some(notice) = first_run.take()
            {
                notice.finish();
            }
            let phase = match &first_run {
                Some(notice) => notice.label(phase, done, total),
                None => phase.to_string(),
            };
            shared.emit(&JobEvent::Phase {
                job_id: id,
                phase,
                done,
                total,
            });
            if last_write.is_none_or(|t| t.elapsed() >= PROGRESS_WRITE_INTERVAL) {
                last_write = Some(Instant::now());
                if let Err(e) = ws.set_job_progress(id, done, total) {
                    tracing::warn!("job {id}: writing progress: {e}");
                }
            }
        };
        let finished = gallery::run_gallery(
            ws,
            job,
            &spec,
            device,
            self.shared.precision,
            &mut on_progress,
            cancel,
        )?;
        Ok(if finished {
            Ending::Done(None)
        } else {
            Ending::Stopped
        })
    }

    fn settings<T: serde::de::DeserializeOwned>(&self, job: &Job) -> Result<T> {
        let text = self.ws.job_settings(job.id)?;
        serde_json::from_str(&text).map_err(|e| StudioError::Database {
            path: self.ws.db_path().to_path_buf(),
            message: format!("job {}: unreadable settings: {e}", job.id),
        })
    }
}

fn run_deleted(job: &Job) -> StudioError {
    StudioError::JobState {
        id: job.id.0,
        status: job.status.as_str(),
        message: "its run was deleted".into(),
    }
}

/// The trainer's settings for a studio DreamBooth run.
fn dreambooth_config(
    project: &Project,
    model: &BaseModel,
    s: &DreamBoothSettings,
    photos: &Path,
    mixed: Precision,
) -> DreamBoothConfig {
    let mut c = DreamBoothConfig::new(&model.path, photos, &project.token, &project.class);
    c.instance_prompt = s.instance_prompt.clone();
    c.prior_preservation = s.prior_preservation;
    c.mode = TrainMode::Lora {
        rank: s.lora_rank,
        alpha: s.lora_alpha,
        unet_targets: LoraTargets::unet_attention(),
        text_targets: s.train_text_encoder.then(LoraTargets::text_attention),
    };
    c.steps = s.steps;
    c.lr = s.lr;
    c.batch = s.batch;
    c.resolution = Some(s.resolution);
    c.seed = s.seed;
    c.checkpoint_every = s.checkpoint_every;
    c.sample_every = s.sample_every;
    c.mixed_precision = mixed;
    if model.kind == BaseModelKind::Builtin {
        // As `likeness demo`: the world's pictures are symmetric and its model wants less guidance.
        c.random_flip = true;
        c.samples.guidance = 4.0;
    }
    c
}

/// The resolution a run trained at, from its `config.json` (`None`: the model's native size).
fn trained_resolution(run: &RunRecord) -> Option<usize> {
    let text = std::fs::read_to_string(run.root.join("config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let section = match run.run.kind {
        RunKind::Dreambooth => "dreambooth",
        RunKind::Dpo => "dpo",
    };
    value[section]["resolution"].as_u64().map(|r| r as usize)
}

/// The built-in world's concept whose class noun is `class` (else the first one): its prompt
/// templates are the ones the world model understands.
pub(crate) fn world_concept(class: &str) -> &'static Concept {
    let class = class.trim().to_lowercase();
    CONCEPTS
        .iter()
        .find(|c| c.class_noun == class)
        .unwrap_or(&CONCEPTS[0])
}

/// The base model a run was trained from.
pub(crate) fn run_base_model(ws: &Workspace, run: RunId) -> Result<BaseModel> {
    let record = ws.run_record(run)?;
    let id = record.base_model_id.ok_or_else(|| {
        StudioError::Invalid(format!(
            "the base model of run {run} ({}) was removed from the workspace; add it again",
            record.run.label
        ))
    })?;
    ws.base_model(id)
}

/// The CLIP model that scores images made with `model`: the built-in world's own CLIP beside
/// it, else the workspace's chosen CLIP folder.
pub(crate) fn clip_for(ws: &Workspace, model: &BaseModel) -> Result<Option<PathBuf>> {
    if model.kind == BaseModelKind::Builtin {
        let beside = model
            .path
            .parent()
            .map(|p| p.join(likeness_train::world_train::BUILTIN_CLIP));
        if let Some(dir) = beside
            && dir.join("config.json").is_file()
        {
            return Ok(Some(dir));
        }
        if let Ok((_, clip)) = likeness_train::world_train::builtin_models() {
            return Ok(Some(clip));
        }
    }
    ws.clip_model()
}

pub(crate) fn no_clip_error(model: &BaseModel) -> StudioError {
    StudioError::Invalid(format!(
        "DPO scores its images with CLIP, and no CLIP model is set for {} ({}): choose a \
         transformers CLIPModel folder (e.g. openai/clip-vit-large-patch14) in the settings",
        model.name,
        model.path.display()
    ))
}

/// Copies the project's normalized photos into `dir` (replacing what was there), the folder a
/// trainer reads.
pub(crate) fn copy_photos(ws: &Workspace, project: ProjectId, dir: &Path) -> Result<()> {
    let photos = ws.photos(project)?;
    if photos.is_empty() {
        return Err(StudioError::Invalid(format!(
            "project {project} has no photos; import some first"
        )));
    }
    // Written aside and renamed, so the folder is either complete or absent.
    let tmp = dir.with_extension("tmp");
    for d in [&tmp, &dir.to_path_buf()] {
        match std::fs::remove_dir_all(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StudioError::io(d, e)),
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| StudioError::io(&tmp, e))?;
    for (i, p) in photos.iter().enumerate() {
        let ext = p
            .normalized_file
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_else(|| "png".into());
        let target = tmp.join(format!("{i:04}-photo{}.{ext}", p.id));
        std::fs::copy(&p.normalized_file, &target)
            .map_err(|e| StudioError::io(&p.normalized_file, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| StudioError::io(dir, e))?;
    Ok(())
}

/// The notice of a first run on this GPU ([`tuning`]): the job's phase label gains it until
/// the first step, and while the kernels tune (inside one long call, with no trainer event) a
/// ticker re-sends the last phase with the number of kernels tuned so far.
struct TuningNotice {
    device: DeviceChoice,
    work: String,
    since: usize,
    /// The phase last shown, without the notice, with its counts.
    shown: Arc<Mutex<(String, usize, usize)>>,
    _ticker: tuning::Ticker,
}

/// How often a tuning job's label is refreshed (when the count has changed).
const TUNING_TICK: Duration = Duration::from_secs(2);

impl TuningNotice {
    fn start(shared: &Arc<Shared>, job_id: JobId, device: DeviceChoice, work: String) -> Self {
        let since = tuning::kernels_tuned();
        let shown = Arc::new(Mutex::new((String::new(), 0, 0)));
        let (last, shared) = (shown.clone(), shared.clone());
        let ticker = tuning::Ticker::start(TUNING_TICK, move |tuned| {
            let (phase, done, total) = lock(&last).clone();
            if !phase.is_empty() {
                shared.emit(&JobEvent::Phase {
                    job_id,
                    phase: format!("{phase} — {}", tuning::notice(tuned)),
                    done,
                    total,
                });
            }
        });
        Self {
            device,
            work,
            since,
            shown,
            _ticker: ticker,
        }
    }

    /// `phase` with the notice; remembered for the ticker.
    fn label(&self, phase: &str, done: usize, total: usize) -> String {
        *lock(&self.shown) = (phase.to_string(), done, total);
        format!("{phase} — {}", tuning::notice_since(self.since))
    }

    /// The first step ran: the work is marked tuned and the ticker stops.
    fn finish(self) {
        if let Err(e) = tuning::mark_tuned(self.device, &self.work) {
            tracing::warn!("recording kernel tuning: {e}");
        }
    }
}

/// Turns a trainer's events into job events and database progress.
struct Progress<'a> {
    /// Set until the first training step of work that has not run on this GPU before.
    tuning: Option<TuningNotice>,
    /// The phase shown, without the tuning notice.
    label: String,
    shared: &'a Shared,
    ws: &'a Workspace,
    job: JobId,
    total: usize,
    /// The runs trained: one for DreamBooth, one per stage for DPO.
    runs: Vec<RunRecord>,
    /// DPO: training steps per stage (the job's step counts over all stages).
    stage_steps: Option<usize>,
    /// The DPO stage being trained, from 1 (0 before the first).
    stage: usize,
    /// Step over the whole job.
    step: usize,
    /// Step within the current run (stage).
    run_step: usize,
    /// Seconds of the recent steps, for the ETA.
    recent: VecDeque<f64>,
    last_write: Option<Instant>,
}

/// Steps the ETA averages over.
const ETA_WINDOW: usize = 20;

impl Progress<'_> {
    fn emit(&self, event: JobEvent) {
        self.shared.emit(&event);
    }

    fn on(&mut self, event: TrainEvent) {
        match event {
            TrainEvent::Status { message } => self.status(&message),
            TrainEvent::Started {
                run_dir,
                start_step,
                ..
            } => {
                let phase = match self.stage_steps {
                    Some(_) => {
                        let stage = stage_of(&run_dir).unwrap_or(self.stage.max(1));
                        self.touch_stage(stage);
                        self.send_candidates(stage, &run_dir);
                        format!("DPO stage {stage}")
                    }
                    None => "training".to_string(),
                };
                self.run_step = start_step;
                self.step = self.offset() + start_step;
                self.recent.clear();
                let phase = self.with_notice(phase, 0, 0);
                self.emit(JobEvent::Started {
                    job_id: self.job,
                    total: self.total,
                    phase,
                });
                self.write(true);
            }
            TrainEvent::Step {
                step,
                loss,
                lr,
                secs,
            } => {
                if let Some(notice) = self.tuning.take() {
                    // The first step ran: its shapes are tuned; the label loses the notice.
                    notice.finish();
                    self.emit(JobEvent::Phase {
                        job_id: self.job,
                        phase: self.label.clone(),
                        done: 0,
                        total: 0,
                    });
                }
                self.run_step = step;
                self.step = self.offset() + step;
                self.recent.push_back(secs);
                if self.recent.len() > ETA_WINDOW {
                    self.recent.pop_front();
                }
                let eta_seconds = (!self.recent.is_empty()).then(|| {
                    let mean = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
                    mean * self.total.saturating_sub(self.step) as f64
                });
                let accuracy = self.stage_steps.and_then(|_| self.stage_accuracy(step));
                self.emit(JobEvent::Step {
                    job_id: self.job,
                    step: self.step,
                    total: self.total,
                    loss,
                    lr,
                    eta_seconds,
                    accuracy,
                });
                self.write(false);
            }
            TrainEvent::Checkpoint { .. } => self.write(true),
            TrainEvent::Sample { step, paths } => {
                let images = paths.iter().map(|p| self.ws.relative(p)).collect();
                self.emit(JobEvent::Preview {
                    job_id: self.job,
                    step: self.offset() + step,
                    images,
                });
            }
            TrainEvent::Finished { .. } | TrainEvent::Error { .. } => self.write(true),
        }
    }

    fn offset(&self) -> usize {
        match self.stage_steps {
            Some(n) => self.stage.saturating_sub(1) * n,
            None => 0,
        }
    }

    /// The run (stage) being trained.
    fn current_run(&self) -> Option<&RunRecord> {
        match self.stage_steps {
            Some(_) => self.runs.iter().find(|r| r.run.stage == Some(self.stage)),
            None => self.runs.first(),
        }
    }

    fn status(&mut self, message: &str) {
        let (phase, done, total) = if let Some((i, n, _)) = counted(message, "class image ") {
            ("making class images".to_string(), i - 1, n)
        } else if let Some((i, n, rest)) = counted(message, "image ") {
            let phase = match stage_of_images(rest) {
                Some(k) => {
                    self.touch_stage(k);
                    format!("DPO stage {k}: generating candidates")
                }
                None => "generating images".to_string(),
            };
            (phase, i - 1, n)
        } else if message.starts_with("loading ") && message.contains(std::path::MAIN_SEPARATOR) {
            // Messages naming a file stay in the log; the app hears what is happening.
            tracing::info!("job {}: {message}", self.job);
            ("loading the model".to_string(), 0, 0)
        } else {
            (message.to_string(), 0, 0)
        };
        let phase = self.with_notice(phase, done, total);
        self.emit(JobEvent::Phase {
            job_id: self.job,
            phase,
            done,
            total,
        });
    }

    /// Remembers `phase` as the label and adds the tuning notice while the first step has not
    /// run.
    fn with_notice(&mut self, phase: String, done: usize, total: usize) -> String {
        let shown = match &self.tuning {
            Some(notice) => notice.label(&phase, done, total),
            None => phase.clone(),
        };
        self.label = phase;
        shown
    }

    /// DPO stage `stage` is being worked on: the stages with a LoRA file are done, this one
    /// runs.
    fn touch_stage(&mut self, stage: usize) {
        if stage == self.stage {
            return;
        }
        self.stage = stage;
        self.finish_stages();
        if let Some(run) = self.current_run()
            && let Err(e) = self.ws.set_run_status(run.run.id, JobStatus::Running)
        {
            tracing::warn!("job {}: {e}", self.job);
        }
    }

    /// A DPO stage's scored candidates and kept pairs go out as it begins training.
    fn send_candidates(&self, stage: usize, stage_dir: &Path) {
        match candidates(stage_dir) {
            Ok((points, pairs)) => self.emit(JobEvent::Candidates {
                job_id: self.job,
                stage,
                points,
                pairs,
            }),
            Err(e) => tracing::warn!("job {}: stage {stage} candidates: {e}", self.job),
        }
    }

    /// Marks the DPO stages whose LoRA file exists done.
    fn finish_stages(&mut self) {
        let Some(steps) = self.stage_steps else {
            return;
        };
        for r in &mut self.runs {
            if r.run.status != JobStatus::Done && r.files_dir().join(STAGE_LORA_FILE).is_file() {
                let done = self
                    .ws
                    .set_run_status(r.run.id, JobStatus::Done)
                    .and_then(|()| self.ws.set_run_steps(r.run.id, steps));
                match done {
                    Ok(()) => r.run.status = JobStatus::Done,
                    Err(e) => tracing::warn!("job {}: {e}", self.job),
                }
            }
        }
    }

    /// The implicit preference accuracy of the DPO step just logged.
    fn stage_accuracy(&self, step: usize) -> Option<f64> {
        let run = self.current_run()?;
        let line = last_line(&run.files_dir().join("loss.jsonl"))?;
        let record: DpoLossRecord = serde_json::from_str(&line).ok()?;
        (record.step == step).then_some(record.implicit_accuracy)
    }

    /// Writes step and total (and the run's steps) at most every [`PROGRESS_WRITE_INTERVAL`]
    /// unless `force`.
    fn write(&mut self, force: bool) {
        if !force
            && self
                .last_write
                .is_some_and(|t| t.elapsed() < PROGRESS_WRITE_INTERVAL)
        {
            return;
        }
        self.last_write = Some(Instant::now());
        let mut result = self.ws.set_job_progress(self.job, self.step, self.total);
        if let Some(run) = self.current_run() {
            result = result.and_then(|()| self.ws.set_run_steps(run.run.id, self.run_step));
        }
        if let Err(e) = result {
            tracing::warn!("job {}: writing progress: {e}", self.job);
        }
    }
}

/// `prefix` then "I of N" then the rest: (I ≥ 1, N, rest).
fn counted<'m>(message: &'m str, prefix: &str) -> Option<(usize, usize, &'m str)> {
    let rest = message.strip_prefix(prefix)?;
    let (i, rest) = rest.split_once(" of ")?;
    let i: usize = i.parse().ok()?;
    let (n, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let n: usize = n.parse().ok()?;
    (i >= 1).then_some((i, n, rest))
}

/// The stage number of a `stage-K` folder.
fn stage_of(dir: &Path) -> Option<usize> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("stage-")?
        .parse()
        .ok()
}

/// The stage of "into …/stage-K/images".
fn stage_of_images(rest: &str) -> Option<usize> {
    let path = Path::new(rest.strip_prefix("into ")?);
    stage_of(path.parent()?)
}

/// The sample index in a DPO candidate's file name (`p003-s05.png` → 5).
fn sample_of(file: &str) -> Option<usize> {
    let stem = Path::new(file).file_stem()?.to_str()?;
    stem.rsplit_once("-s")?.1.parse().ok()
}

/// A DPO stage's scored candidates and kept pairs, from its `scores.jsonl` and `pairs.jsonl`.
fn candidates(
    stage_dir: &Path,
) -> std::result::Result<(Vec<super::CandidatePoint>, Vec<super::ChosenPair>), String> {
    let scores: Vec<ScoredImage> = likeness_train::dpo::read_jsonl(&stage_dir.join("scores.jsonl"))
        .map_err(|e| e.to_string())?;
    let pairs: Vec<Pair> = likeness_train::dpo::read_jsonl(&stage_dir.join("pairs.jsonl"))
        .map_err(|e| e.to_string())?;
    let points = scores
        .into_iter()
        .filter_map(|s| {
            Some(super::CandidatePoint {
                sample: sample_of(&s.image)?,
                prompt: s.prompt,
                is: s.is,
                ts: s.ts,
            })
        })
        .collect();
    let pairs = pairs
        .into_iter()
        .filter_map(|p| {
            Some(super::ChosenPair {
                better: sample_of(&p.winner)?,
                worse: sample_of(&p.loser)?,
                prompt: p.prompt,
            })
        })
        .collect();
    Ok((points, pairs))
}

/// The last line of a text file (reading only its tail).
fn last_line(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(4096);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_messages_are_read() {
        assert_eq!(
            counted("class image 3 of 100", "class image "),
            Some((3, 100, ""))
        );
        assert_eq!(
            counted("image 2 of 12 into /w/runs/5-dpo/stage-2/images", "image "),
            Some((2, 12, "into /w/runs/5-dpo/stage-2/images"))
        );
        assert_eq!(counted("image of", "image "), None);
        assert_eq!(
            stage_of_images("into /w/runs/5-dpo/stage-2/images"),
            Some(2)
        );
        assert_eq!(sample_of("p003-s05.png"), Some(5));
        assert_eq!(sample_of("photo.png"), None);
    }
}
