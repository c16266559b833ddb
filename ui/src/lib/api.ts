// The backend contract: every Tauri command the UI calls, with its argument and result types.
//
// - Commands are invoked by their snake_case name; argument objects use camelCase keys (Tauri's
//   default for command arguments: Rust `project_id` is `projectId` here).
// - A failing command rejects with a one-line string (the Rust side returns `Result<T, String>`).
// - Long jobs report progress on a `Channel<JobEvent>` passed as the `onEvent` argument
//   (Rust: `on_event: tauri::ipc::Channel<JobEvent>`); see `JobEvent` in ./types.ts.
// - Pictures are never read through commands: they are shown with `imageUrl(relPath)`, which points
//   at the `likeness` URI scheme the Rust side registers over the workspace folder.

import { Channel, invoke } from '@tauri-apps/api/core';
import type {
  BaseModel,
  BuiltinConcept,
  CompareTable,
  DpoSettings,
  DreamBoothSettings,
  ExportResult,
  Id,
  ImportReport,
  Job,
  JobEvent,
  LoraFormat,
  LossPoint,
  Photo,
  Project,
  Run,
  ScatterPoint,
  WorkspaceInfo,
} from './types';

export type EventChannel = Channel<JobEvent>;

/** A channel that hands every job event to `handler`, in the order the backend sent them. */
export function eventChannel(handler: (event: JobEvent) => void): EventChannel {
  return new Channel<JobEvent>(handler);
}

/** The URI scheme that serves workspace files (registered by the Rust side). */
export const IMAGE_SCHEME = 'likeness';

/** True when the UI runs in WebView2 (Windows), which reaches custom schemes as `http://<scheme>.localhost/`. */
export function isWindows(userAgent: string = globalThis.navigator?.userAgent ?? ''): boolean {
  return userAgent.includes('Windows');
}

/**
 * The URL of a workspace file for an `<img src>`: `likeness://localhost/<relPath>`, or
 * `http://likeness.localhost/<relPath>` on Windows. Each path segment is percent-encoded
 * (spaces, `#`, `?`, unicode…); `\` separators are taken as `/`; empty segments are dropped.
 */
export function imageUrl(relPath: string, userAgent?: string): string {
  const encoded = relPath
    .replace(/\\/g, '/')
    .split('/')
    .filter((segment) => segment !== '')
    .map(encodeURIComponent)
    .join('/');
  return isWindows(userAgent)
    ? `http://${IMAGE_SCHEME}.localhost/${encoded}`
    : `${IMAGE_SCHEME}://localhost/${encoded}`;
}

/** The one line to show for a failed call (invoke rejects with a string; anything else is made one). */
export function errorLine(error: unknown): string {
  let text: string;
  if (typeof error === 'string') text = error;
  else if (error instanceof Error) text = error.message;
  else {
    try {
      text = JSON.stringify(error);
    } catch {
      text = String(error);
    }
  }
  const line = text.split(/\r?\n/).find((l) => l.trim() !== '') ?? '';
  return line.trim() || 'Unknown error';
}

/**
 * True when a failed `compare` only says that the chosen models have no seed-matched pictures yet
 * ("project 3 has no gallery yet; make one with a gallery job", "no seed-matched galleries of …;
 * make them with a gallery job of these columns"): a state to offer `startGallery` for, not an error.
 */
export function isNoGalleryError(error: unknown): boolean {
  const line = errorLine(error);
  return /\bno (seed-matched )?galler(y|ies)\b/i.test(line) && /\bgallery job\b/i.test(line);
}

// ---- workspace and projects -------------------------------------------------------------------

export const workspaceInfo = () => invoke<WorkspaceInfo>('workspace_info');

export const listProjects = () => invoke<Project[]>('list_projects');

export const createProject = (args: { name: string; token: string; className: string }) =>
  invoke<Project>('create_project', args);

/**
 * Not in the first draft of the contract: makes the demo project (a built-in world subject's
 * photos, as `likeness demo` does) and returns it.
 */
export const createDemoProject = () => invoke<Project>('create_demo_project');

export const renameProject = (args: { id: Id; name: string }) => invoke<Project>('rename_project', args);

export const deleteProject = (args: { id: Id }) => invoke<void>('delete_project', args);

// ---- photos -----------------------------------------------------------------------------------

export const listPhotos = (args: { projectId: Id }) => invoke<Photo[]>('list_photos', args);

export const importPhotos = (args: { projectId: Id; paths: string[] }) =>
  invoke<ImportReport>('import_photos', args);

/** The built-in subjects whose rendered photos `import_builtin_concept` can import. */
export const listBuiltinConcepts = () => invoke<BuiltinConcept[]>('list_builtin_concepts');

/** Imports a built-in subject's rendered photos into the project, as an artist's folder would be. */
export const importBuiltinConcept = (args: { projectId: Id; concept: string }) =>
  invoke<ImportReport>('import_builtin_concept', args);

export const removePhoto = (args: { photoId: Id }) => invoke<void>('remove_photo', args);

/** The training crop of a photo at `resolution`, as a workspace-relative PNG path. */
export const cropPreview = (args: { photoId: Id; resolution: number }) =>
  invoke<string>('crop_preview', args);

// ---- base models ------------------------------------------------------------------------------

export const listBaseModels = () => invoke<BaseModel[]>('list_base_models');

export const addBaseModel = (args: { path: string }) => invoke<BaseModel>('add_base_model', args);

export const defaultDreamboothSettings = (args: { baseModelId: Id }) =>
  invoke<DreamBoothSettings>('default_dreambooth_settings', args);

// ---- jobs -------------------------------------------------------------------------------------

export const startDreambooth = (args: { projectId: Id; settings: DreamBoothSettings; onEvent: EventChannel }) =>
  invoke<Job>('start_dreambooth', args);

export const startDpo = (args: { projectId: Id; settings: DpoSettings; onEvent: EventChannel }) =>
  invoke<Job>('start_dpo', args);

/**
 * Queues seed-matched pictures (the same prompts and seeds) of the base model and `runIds`: the
 * columns Compare shows, for runs that have no such gallery yet. A job of kind `gallery`; its
 * `finished` event has `runId: null`.
 */
export const startGallery = (args: { projectId: Id; runIds: Id[]; onEvent: EventChannel }) =>
  invoke<Job>('start_gallery', args);

export const listJobs = () => invoke<Job[]>('list_jobs');

/** Re-attaches a channel to a queued or running job (after a reload of the UI). */
export const watchJob = (args: { jobId: Id; onEvent: EventChannel }) => invoke<void>('watch_job', args);

export const cancelJob = (args: { jobId: Id }) => invoke<void>('cancel_job', args);

/** Continues an interrupted or cancelled job from its last checkpoint. */
export const resumeJob = (args: { jobId: Id; onEvent: EventChannel }) => invoke<Job>('resume_job', args);

// ---- runs and results -------------------------------------------------------------------------

export const listRuns = (args: { projectId: Id }) => invoke<Run[]>('list_runs', args);

export const lossHistory = (args: { runId: Id }) => invoke<LossPoint[]>('loss_history', args);

export const compare = (args: { projectId: Id; runIds: Id[] }) => invoke<CompareTable>('compare', args);

export const scatter = (args: { projectId: Id }) => invoke<ScatterPoint[]>('scatter', args);

export const exportLora = (args: { runId: Id; format: LoraFormat; path: string }) =>
  invoke<ExportResult>('export_lora', args);
