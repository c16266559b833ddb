// The data the Rust side sends and receives. Every key is camelCase on the wire (serde
// `rename_all = "camelCase"`); times are Unix seconds; image paths are relative to the workspace
// folder, with `/` separators, and are shown through `imageUrl()` (the `likeness` URI scheme).

export type Id = number;

export interface WorkspaceInfo {
  dir: string;
  schemaVersion: number;
}

export interface Project {
  id: Id;
  name: string;
  /** The rare identifier of the DreamBooth prompt ("sks"). */
  token: string;
  /** The class noun of the DreamBooth prompt ("dog"). */
  className: string;
  createdAt: number;
  photoCount: number;
  /** Workspace-relative path of the first photo's thumbnail, if any. */
  coverThumb: string | null;
}

export interface PhotoFlags {
  /** Id of a photo of the same project that looks almost the same. */
  nearDuplicateOf: Id | null;
  blurry: boolean;
}

export interface Photo {
  id: Id;
  projectId: Id;
  sourceName: string;
  width: number;
  height: number;
  /** Workspace-relative path of the thumbnail PNG (longest side ≤ 256 px). */
  thumb: string;
  /** Workspace-relative path of the upright, normalised PNG. */
  normalized: string;
  flags: PhotoFlags;
}

export interface ImportReport {
  imported: { source: string; photo: Photo; notes: string[] }[];
  skipped: { path: string; reason: string }[];
}

/** A subject the studio can render itself (the built-in world's concepts), for starting without photos. */
export interface BuiltinConcept {
  name: string;
  description: string;
  /** The class noun that suits it ("dog"). */
  classNoun: string;
}

export type BaseModelKind = 'builtin' | 'diffusers' | 'single_file';

export interface BaseModel {
  id: Id;
  name: string;
  path: string;
  kind: BaseModelKind;
  /** "SD 1.x", "SD 2.x v-prediction", "built-in world", … */
  architecture: string;
  /** Native training/generation resolution in pixels. */
  resolution: number;
}

export interface DreamBoothSettings {
  baseModelId: Id;
  steps: number;
  lr: number;
  loraRank: number;
  loraAlpha: number;
  resolution: number;
  batch: number;
  priorPreservation: boolean;
  trainTextEncoder: boolean;
  seed: number;
  sampleEvery: number;
  checkpointEvery: number;
  instancePrompt: string | null;
}

export interface DpoSettings {
  /** The DreamBooth (or earlier DPO) run whose LoRA the stages start from. */
  fromRunId: Id;
  stages: number;
  promptsPerStage: number;
  samplesPerPrompt: number;
  /** Inclusive window on atan2(ΔIS, ΔTS) in degrees: 0° = prompt following alone, 90° = likeness alone. */
  angleMin: number;
  angleMax: number;
  /** Training steps per stage. */
  steps: number;
  lr: number;
  beta: number;
  seed: number;
}

export type JobKind = 'dreambooth' | 'dpo' | 'gallery' | 'export';
export type JobStatus = 'queued' | 'running' | 'done' | 'failed' | 'cancelled' | 'interrupted';

export interface Job {
  id: Id;
  kind: JobKind;
  projectId: Id;
  runId: Id | null;
  status: JobStatus;
  step: number;
  total: number;
  message: string | null;
  createdAt: number;
}

export type RunKind = 'dreambooth' | 'dpo';

export interface Run {
  id: Id;
  projectId: Id;
  kind: RunKind;
  parentRunId: Id | null;
  stage: number | null;
  /** "DreamBooth", "DPO 1", … */
  label: string;
  status: JobStatus;
  steps: number;
  createdAt: number;
}

export interface CandidatePoint {
  prompt: string;
  is: number;
  ts: number;
  /** Index of the sample within its prompt. */
  sample: number;
}

export interface CandidatePair {
  prompt: string;
  /** Sample index (within `prompt`) of the preferred image. */
  better: number;
  /** Sample index (within `prompt`) of the rejected image. */
  worse: number;
}

/** One message on a job's progress channel, tagged by `event`. */
export type JobEvent =
  | { event: 'queued'; jobId: Id }
  | { event: 'started'; jobId: Id; total: number; phase: string }
  | {
      event: 'step';
      jobId: Id;
      step: number;
      total: number;
      loss: number;
      lr: number;
      etaSeconds: number | null;
      /** DPO only, optional: the implicit preference accuracy of the step's batch (0–1). */
      accuracy?: number | null;
    }
  | { event: 'preview'; jobId: Id; step: number; images: string[] }
  | { event: 'candidates'; jobId: Id; stage: number; points: CandidatePoint[]; pairs: CandidatePair[] }
  | { event: 'phase'; jobId: Id; phase: string; done: number; total: number }
  /** `runId` is null for jobs that train nothing (galleries). */
  | { event: 'finished'; jobId: Id; runId: Id | null }
  | { event: 'failed'; jobId: Id; message: string }
  | { event: 'cancelled'; jobId: Id }
  /** The app shut down while the job ran: it stopped at a checkpoint and can be resumed. */
  | { event: 'interrupted'; jobId: Id };

export interface CompareCell {
  /** Index into `prompts`. */
  prompt: number;
  /** Index into `columns`. */
  column: number;
  seed: number;
  image: string;
  is: number | null;
  ts: number | null;
}

export interface CompareTable {
  prompts: string[];
  /** The first column is the base model (runId null). */
  columns: { runId: Id | null; label: string }[];
  cells: CompareCell[];
}

export interface ScatterPoint {
  runId: Id | null;
  label: string;
  is: number;
  ts: number;
  /** Standard errors of the means. */
  seIs: number;
  seTs: number;
}

export interface LossPoint {
  step: number;
  loss: number;
}

export type LoraFormat = 'kohya' | 'diffusers';

export interface ExportResult {
  path: string;
  bytes: number;
}
