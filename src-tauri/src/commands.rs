//! The commands the web view invokes. Each is async and does its work on Tauri's thread pool
//! (or hands it to the job runner); errors reach the front end as one line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use likeness_studio::{
    CompareTable, DpoSettings, DreamBoothSettings, ExportResult, ImportOptions, Job, JobEvent,
    JobId, JobKind, JobRunner, LoraFormat, LossPoint, Run, RunId, ScatterPoint, Workspace,
};
use serde::Serialize;
use tauri::State;
use tauri::ipc::Channel;

use likeness_train::world::{CONCEPTS, write_concept_photos};

use crate::AppState;
use crate::views::{BaseModelView, ImportReportView, PhotoView, ProjectView, rel};

/// A command's error: its one line.
type Answer<T> = Result<T, String>;

fn line(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or_default().to_string()
}

fn workspace<'a>(state: &'a State<'_, AppState>) -> Answer<MutexGuard<'a, Workspace>> {
    state.workspace.lock().map_err(|_| {
        "the workspace is unavailable after an earlier failure; restart Likeness".into()
    })
}

/// Registers the built-in model on first start (when it is installed next to the app).
pub fn register_builtin_model(ws: &mut Workspace) {
    let Ok((model, _clip)) = likeness_train::world_train::builtin_models() else {
        tracing::info!("no built-in model installed");
        return;
    };
    // The workspace stores canonical paths; the built-in folder may be found through `..`.
    let model = model.canonicalize().unwrap_or(model);
    let known = ws
        .base_models()
        .map(|ms| ms.iter().any(|m| m.path == model))
        .unwrap_or(true);
    if !known && let Err(e) = ws.add_builtin(&model) {
        tracing::warn!("built-in model {}: {e}", model.display());
    }
}

/// Channels attached to jobs, fed from one runner listener.
#[derive(Default, Clone)]
pub struct Watchers(Arc<Mutex<HashMap<JobId, Vec<Channel<JobEvent>>>>>);

impl Watchers {
    /// Sends `event` to its job's channels; a job's channels are dropped when it ends.
    pub fn deliver(&self, event: &JobEvent) {
        let Ok(mut map) = self.0.lock() else { return };
        let job = event.job_id();
        let ended = matches!(
            event,
            JobEvent::Finished { .. }
                | JobEvent::Failed { .. }
                | JobEvent::Cancelled { .. }
                | JobEvent::Interrupted { .. }
        );
        if let Some(channels) = map.get_mut(&job) {
            // A closed window's channel fails; keep the others.
            channels.retain(|c| c.send(event.clone()).is_ok());
        }
        if ended {
            map.remove(&job);
        }
    }

    fn watch(&self, job: JobId, channel: Channel<JobEvent>) {
        if let Ok(mut map) = self.0.lock() {
            map.entry(job).or_default().push(channel);
        }
    }

    /// A job just submitted (or resumed), watched through `channel`.
    fn submitted(
        &self,
        job: likeness_studio::Result<Job>,
        channel: Channel<JobEvent>,
    ) -> Answer<Job> {
        let job = job.map_err(line)?;
        self.watch(job.id, channel);
        Ok(job)
    }
}

/// The columns Compare and galleries show: the base model's first, then `runs`.
fn base_and(runs: impl IntoIterator<Item = RunId>) -> Vec<Option<RunId>> {
    std::iter::once(None)
        .chain(runs.into_iter().map(Some))
        .collect()
}

/// Installs the listener that forwards runner events to the watching channels, and queues a
/// seed-matched gallery after every finished training job so Compare has its pictures.
pub fn forward_events(runner: &Arc<JobRunner>, watchers: Watchers) {
    let weak = Arc::downgrade(runner);
    runner.subscribe(Box::new(move |event| {
        watchers.deliver(event);
        if let JobEvent::Finished { job_id, .. } = event
            && let Some(runner) = weak.upgrade()
        {
            queue_gallery_after(&runner, *job_id);
        }
    }));
}

fn queue_gallery_after(runner: &JobRunner, finished: JobId) {
    let Ok(job) = runner.job(finished) else {
        return;
    };
    if job.kind == JobKind::Gallery {
        return;
    }
    if let Err(e) = runner.submit_gallery(job.project_id, base_and(job.run_id)) {
        tracing::warn!("gallery after job {finished:?}: {e}");
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceInfo {
    pub dir: String,
    pub schema_version: i64,
}

#[tauri::command]
async fn workspace_info(state: State<'_, AppState>) -> Answer<WorkspaceInfo> {
    let ws = workspace(&state)?;
    Ok(WorkspaceInfo {
        dir: ws.dir().display().to_string(),
        schema_version: ws.schema_version().map_err(line)?,
    })
}

fn project_view(ws: &Workspace, p: &likeness_studio::Project) -> Answer<ProjectView> {
    let photos = ws.photos(p.id).map_err(line)?;
    Ok(ProjectView::new(ws.dir(), p, &photos))
}

#[tauri::command]
async fn list_projects(state: State<'_, AppState>) -> Answer<Vec<ProjectView>> {
    let ws = workspace(&state)?;
    let projects = ws.projects().map_err(line)?;
    projects.iter().map(|p| project_view(&ws, p)).collect()
}

#[tauri::command]
async fn create_project(
    state: State<'_, AppState>,
    name: String,
    token: String,
    class_name: String,
) -> Answer<ProjectView> {
    let mut ws = workspace(&state)?;
    let p = ws
        .create_project(&name, &token, &class_name)
        .map_err(line)?;
    project_view(&ws, &p)
}

/// Renders a built-in concept's photos as an artist's folder inside the project and imports
/// them.
fn import_concept(
    ws: &mut Workspace,
    project: i64,
    name: &str,
) -> Result<likeness_studio::ImportReport, String> {
    let folder = ws.project_dir(project).join("builtin-subjects").join(name);
    write_concept_photos(name, &folder, CONCEPT_PHOTO_SIZE).map_err(line)?;
    ws.import_photos(project, &[folder], &ImportOptions::default())
        .map_err(line)
}

/// The pixel size built-in concept photos are rendered at (the import's minimum side).
const CONCEPT_PHOTO_SIZE: u32 = 256;

/// A project with the built-in world's first concept and its photos.
pub fn make_demo_project(ws: &mut Workspace) -> Answer<likeness_studio::Project> {
    let concept = &CONCEPTS[0];
    let name = format!("Demo: {}", concept.description);
    let p = ws
        .create_project(&name, "sks", concept.class_noun)
        .map_err(line)?;
    import_concept(ws, p.id, concept.name)?;
    Ok(p)
}

#[tauri::command]
async fn create_demo_project(state: State<'_, AppState>) -> Answer<ProjectView> {
    let mut ws = workspace(&state)?;
    let p = make_demo_project(&mut ws)?;
    project_view(&ws, &p)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltinConcept {
    pub name: String,
    pub description: String,
    pub class_noun: String,
}

/// The built-in world's subjects, for trying Likeness without photos of one's own.
#[tauri::command]
async fn list_builtin_concepts() -> Answer<Vec<BuiltinConcept>> {
    Ok(CONCEPTS
        .iter()
        .map(|c| BuiltinConcept {
            name: c.name.into(),
            description: c.description.into(),
            class_noun: c.class_noun.into(),
        })
        .collect())
}

#[tauri::command]
async fn import_builtin_concept(
    state: State<'_, AppState>,
    project_id: i64,
    concept: String,
) -> Answer<ImportReportView> {
    if likeness_train::world::concept(&concept).is_none() {
        return Err(format!("no built-in subject `{concept}`"));
    }
    let mut ws = workspace(&state)?;
    let report = import_concept(&mut ws, project_id, &concept)?;
    Ok(ImportReportView::new(ws.dir(), &report))
}

#[tauri::command]
async fn rename_project(state: State<'_, AppState>, id: i64, name: String) -> Answer<ProjectView> {
    let mut ws = workspace(&state)?;
    let p = ws.rename_project(id, &name).map_err(line)?;
    project_view(&ws, &p)
}

#[tauri::command]
async fn delete_project(state: State<'_, AppState>, id: i64) -> Answer<()> {
    workspace(&state)?.delete_project(id).map_err(line)
}

#[tauri::command]
async fn list_photos(state: State<'_, AppState>, project_id: i64) -> Answer<Vec<PhotoView>> {
    let ws = workspace(&state)?;
    let photos = ws.photos(project_id).map_err(line)?;
    Ok(photos.iter().map(|p| PhotoView::new(ws.dir(), p)).collect())
}

#[tauri::command]
async fn import_photos(
    state: State<'_, AppState>,
    project_id: i64,
    paths: Vec<PathBuf>,
) -> Answer<ImportReportView> {
    let mut ws = workspace(&state)?;
    let report = ws
        .import_photos(project_id, &paths, &ImportOptions::default())
        .map_err(line)?;
    Ok(ImportReportView::new(ws.dir(), &report))
}

#[tauri::command]
async fn remove_photo(state: State<'_, AppState>, photo_id: i64) -> Answer<()> {
    workspace(&state)?.remove_photo(photo_id).map_err(line)
}

/// Writes the training crop of a photo at `resolution` under the project's `previews/` and
/// returns its workspace-relative path.
#[tauri::command]
async fn crop_preview(
    state: State<'_, AppState>,
    photo_id: i64,
    resolution: u32,
) -> Answer<String> {
    if !(64..=2048).contains(&resolution) {
        return Err(format!("resolution {resolution} is outside 64–2048 px"));
    }
    let ws = workspace(&state)?;
    let photo = ws.photo(photo_id).map_err(line)?;
    let img = ws.crop_preview(photo_id, resolution).map_err(line)?;
    let path = ws
        .project_dir(photo.project_id)
        .join("previews")
        .join(format!("crop-{photo_id}-{resolution}.png"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(line)?;
    likeness_models::png_meta::write_atomic(&path, &bytes).map_err(line)?;
    Ok(rel(ws.dir(), &path))
}

#[tauri::command]
async fn list_base_models(state: State<'_, AppState>) -> Answer<Vec<BaseModelView>> {
    let ws = workspace(&state)?;
    let mut models: Vec<BaseModelView> = ws
        .base_models()
        .map_err(line)?
        .iter()
        .map(BaseModelView::new)
        .collect();
    // The built-in model first.
    models.sort_by_key(|m| (m.kind != "builtin", m.id));
    Ok(models)
}

#[tauri::command]
async fn add_base_model(state: State<'_, AppState>, path: PathBuf) -> Answer<BaseModelView> {
    let mut ws = workspace(&state)?;
    let m = ws.add_base_model(&path).map_err(line)?;
    Ok(BaseModelView::new(&m))
}

#[tauri::command]
async fn default_dreambooth_settings(
    state: State<'_, AppState>,
    base_model_id: i64,
) -> Answer<DreamBoothSettings> {
    let model = workspace(&state)?.base_model(base_model_id).map_err(line)?;
    Ok(DreamBoothSettings::defaults_for(&model))
}

#[tauri::command]
async fn start_dreambooth(
    state: State<'_, AppState>,
    watchers: State<'_, Watchers>,
    project_id: i64,
    settings: DreamBoothSettings,
    on_event: Channel<JobEvent>,
) -> Answer<Job> {
    watchers.submitted(
        state.runner.submit_dreambooth(project_id, settings),
        on_event,
    )
}

#[tauri::command]
async fn start_dpo(
    state: State<'_, AppState>,
    watchers: State<'_, Watchers>,
    project_id: i64,
    settings: DpoSettings,
    on_event: Channel<JobEvent>,
) -> Answer<Job> {
    watchers.submitted(state.runner.submit_dpo(project_id, settings), on_event)
}

/// Queues seed-matched pictures of the base model and `run_ids` (for Compare, where a run has
/// none yet: runs trained before galleries were made after every job, or whose gallery failed).
#[tauri::command]
async fn start_gallery(
    state: State<'_, AppState>,
    watchers: State<'_, Watchers>,
    project_id: i64,
    run_ids: Vec<RunId>,
    on_event: Channel<JobEvent>,
) -> Answer<Job> {
    watchers.submitted(
        state.runner.submit_gallery(project_id, base_and(run_ids)),
        on_event,
    )
}

#[tauri::command]
async fn list_jobs(state: State<'_, AppState>) -> Answer<Vec<Job>> {
    state.runner.jobs().map_err(line)
}

#[tauri::command]
async fn watch_job(
    state: State<'_, AppState>,
    watchers: State<'_, Watchers>,
    job_id: JobId,
    on_event: Channel<JobEvent>,
) -> Answer<()> {
    let job = state.runner.job(job_id).map_err(line)?;
    // Where it stands now, so the view does not wait for the next step.
    let _ = on_event.send(JobEvent::Started {
        job_id,
        total: job.total,
        phase: format!("{:?}", job.status).to_lowercase(),
    });
    watchers.watch(job_id, on_event);
    Ok(())
}

#[tauri::command]
async fn cancel_job(state: State<'_, AppState>, job_id: JobId) -> Answer<()> {
    state.runner.cancel(job_id).map_err(line)
}

#[tauri::command]
async fn resume_job(
    state: State<'_, AppState>,
    watchers: State<'_, Watchers>,
    job_id: JobId,
    on_event: Channel<JobEvent>,
) -> Answer<Job> {
    watchers.submitted(state.runner.resume(job_id), on_event)
}

#[tauri::command]
async fn list_runs(state: State<'_, AppState>, project_id: i64) -> Answer<Vec<Run>> {
    workspace(&state)?.runs(project_id).map_err(line)
}

#[tauri::command]
async fn loss_history(state: State<'_, AppState>, run_id: RunId) -> Answer<Vec<LossPoint>> {
    workspace(&state)?.loss_history(run_id).map_err(line)
}

#[tauri::command]
async fn compare(
    state: State<'_, AppState>,
    project_id: i64,
    run_ids: Vec<RunId>,
) -> Answer<CompareTable> {
    workspace(&state)?
        .compare(project_id, &base_and(run_ids))
        .map_err(line)
}

#[tauri::command]
async fn scatter(state: State<'_, AppState>, project_id: i64) -> Answer<Vec<ScatterPoint>> {
    workspace(&state)?.scatter(project_id).map_err(line)
}

#[tauri::command]
async fn export_lora(
    state: State<'_, AppState>,
    run_id: RunId,
    format: LoraFormat,
    path: PathBuf,
) -> Answer<ExportResult> {
    workspace(&state)?
        .export_lora(run_id, format, &path)
        .map_err(line)
}

/// Every command, for `invoke_handler`.
pub fn handler<R: tauri::Runtime>() -> impl Fn(tauri::ipc::Invoke<R>) -> bool + Send + Sync + 'static
{
    tauri::generate_handler![
        workspace_info,
        list_projects,
        create_project,
        create_demo_project,
        list_builtin_concepts,
        import_builtin_concept,
        rename_project,
        delete_project,
        list_photos,
        import_photos,
        remove_photo,
        crop_preview,
        list_base_models,
        add_base_model,
        default_dreambooth_settings,
        start_dreambooth,
        start_dpo,
        start_gallery,
        list_jobs,
        watch_job,
        cancel_job,
        resume_job,
        list_runs,
        loss_history,
        compare,
        scatter,
        export_lora,
    ]
}
