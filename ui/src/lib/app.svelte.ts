// The app's shared state (Svelte 5 runes): the error bar, the open project, the base model chosen
// for each project, and the live view of every job the UI is attached to.

import * as api from './api';
import { emptyView, isResumable, reduceJob, viewFromJob, withJob, type JobView } from './jobState';
import type { Id, Job, JobEvent, JobKind, Project } from './types';

export type Route = 'projects' | 'subject' | 'model' | 'dreambooth' | 'dpo' | 'compare' | 'export';

export const ROUTES: { route: Route; label: string; needsProject: boolean }[] = [
  { route: 'projects', label: 'Projects', needsProject: false },
  { route: 'subject', label: 'Subject', needsProject: true },
  { route: 'model', label: 'Base model', needsProject: true },
  { route: 'dreambooth', label: 'DreamBooth', needsProject: true },
  { route: 'dpo', label: 'DPO', needsProject: true },
  { route: 'compare', label: 'Compare', needsProject: true },
  { route: 'export', label: 'Export', needsProject: true },
];

export function routeFromHash(hash: string): Route {
  const name = hash.replace(/^#\/?/, '').split(/[/?]/)[0];
  return (ROUTES.find((r) => r.route === name)?.route ?? 'projects') as Route;
}

const PROJECT_KEY = 'likeness.currentProject';
const MODEL_KEY = 'likeness.baseModelByProject';

function readStorage<T>(key: string, fallback: T): T {
  try {
    const raw = globalThis.localStorage?.getItem(key);
    return raw ? (JSON.parse(raw) as T) : fallback;
  } catch {
    return fallback;
  }
}

function writeStorage(key: string, value: unknown): void {
  try {
    globalThis.localStorage?.setItem(key, JSON.stringify(value));
  } catch {
    // Storage is a convenience; the app works without it.
  }
}

class AppState {
  /** The one-line message of the last failed call, shown in the error bar. */
  error = $state<string | null>(null);
  projects = $state<Project[]>([]);
  currentProjectId = $state<Id | null>(readStorage<Id | null>(PROJECT_KEY, null));
  /** Base model chosen per project (kept on this machine; the backend has no per-project setting). */
  baseModelByProject = $state<Record<string, Id>>(readStorage(MODEL_KEY, {}));
  /** Every job the UI knows of, by id. */
  jobs = $state<Record<string, JobView>>({});
  /** Jobs whose loss history was already asked for (not reactive). */
  #historyAsked = new Set<Id>();
  /** Interrupted jobs found at start-up that the user has not yet resumed or dismissed. */
  resumeOffers = $state<Id[]>([]);

  currentProject = $derived(this.projects.find((p) => p.id === this.currentProjectId) ?? null);

  /** The running job, else the oldest queued one (for the shell's indicator). */
  activeJob = $derived.by(() => {
    const all = Object.values(this.jobs);
    return (
      all.find((j) => j.status === 'running') ??
      all.filter((j) => j.status === 'queued').sort((a, b) => a.jobId - b.jobId)[0] ??
      null
    );
  });

  setError(error: unknown): void {
    this.error = api.errorLine(error);
  }

  clearError(): void {
    this.error = null;
  }

  /** Runs a backend call; a failure goes to the error bar and yields `undefined`. */
  async call<T>(fn: () => Promise<T>): Promise<T | undefined> {
    try {
      return await fn();
    } catch (e) {
      this.setError(e);
      return undefined;
    }
  }

  /** Runs a backend call for its effect; false (and the error bar) when it failed. */
  async run(fn: () => Promise<unknown>): Promise<boolean> {
    try {
      await fn();
      return true;
    } catch (e) {
      this.setError(e);
      return false;
    }
  }

  selectProject(id: Id | null): void {
    this.currentProjectId = id;
    writeStorage(PROJECT_KEY, id);
  }

  async refreshProjects(): Promise<void> {
    const list = await this.call(api.listProjects);
    if (list) {
      this.projects = list;
      if (this.currentProjectId !== null && !list.some((p) => p.id === this.currentProjectId)) {
        this.selectProject(null);
      }
    }
  }

  baseModelFor(projectId: Id): Id | null {
    return this.baseModelByProject[String(projectId)] ?? null;
  }

  setBaseModel(projectId: Id, modelId: Id): void {
    this.baseModelByProject[String(projectId)] = modelId;
    writeStorage(MODEL_KEY, $state.snapshot(this.baseModelByProject));
  }

  // ---- jobs ----------------------------------------------------------------------------------

  /** Folds a channel event into its job's view (creating the view on a job's first event). */
  handleEvent(event: JobEvent): void {
    const key = String(event.jobId);
    const view = this.jobs[key] ?? emptyView(event.jobId);
    this.jobs[key] = reduceJob(view, event, Date.now());
  }

  /** Records a job the backend returned, keeping what its channel already said. */
  track(job: Job): void {
    const key = String(job.id);
    const view = this.jobs[key];
    this.jobs[key] = view ? withJob(view, job) : viewFromJob(job);
  }

  channel(): api.EventChannel {
    return api.eventChannel((event) => this.handleEvent(event));
  }

  /** The newest job of `kind` for a project. */
  latestJob(projectId: Id, kind: JobKind): JobView | null {
    return (
      Object.values(this.jobs)
        .filter((j) => j.projectId === projectId && j.kind === kind)
        .sort((a, b) => b.jobId - a.jobId)[0] ?? null
    );
  }

  async startDreambooth(projectId: Id, settings: Parameters<typeof api.startDreambooth>[0]['settings']): Promise<Job | undefined> {
    const job = await this.call(() => api.startDreambooth({ projectId, settings, onEvent: this.channel() }));
    if (job) this.track(job);
    return job;
  }

  async startDpo(projectId: Id, settings: Parameters<typeof api.startDpo>[0]['settings']): Promise<Job | undefined> {
    const job = await this.call(() => api.startDpo({ projectId, settings, onEvent: this.channel() }));
    if (job) this.track(job);
    return job;
  }

  /** Queues seed-matched pictures of the base model and `runIds` (for Compare). */
  async startGallery(projectId: Id, runIds: Id[]): Promise<Job | undefined> {
    const job = await this.call(() => api.startGallery({ projectId, runIds, onEvent: this.channel() }));
    if (job) this.track(job);
    return job;
  }

  async cancel(jobId: Id): Promise<void> {
    await this.call(() => api.cancelJob({ jobId }));
  }

  async resume(jobId: Id): Promise<Job | undefined> {
    const job = await this.call(() => api.resumeJob({ jobId, onEvent: this.channel() }));
    if (job) {
      this.track(job);
      this.resumeOffers = this.resumeOffers.filter((id) => id !== jobId);
    }
    return job;
  }

  dismissOffer(jobId: Id): void {
    this.resumeOffers = this.resumeOffers.filter((id) => id !== jobId);
  }

  /** Seeds a job's loss curve from the run's history (after a reload, the channel only has what comes next). */
  async loadHistory(jobId: Id): Promise<void> {
    const view = this.jobs[String(jobId)];
    if (!view || view.runId === null || view.loss.length > 0 || this.#historyAsked.has(jobId)) return;
    this.#historyAsked.add(jobId);
    const history = await this.call(() => api.lossHistory({ runId: view.runId as Id }));
    const now = this.jobs[String(jobId)];
    if (history && history.length > 0 && now && now.loss.length === 0) {
      this.jobs[String(jobId)] = { ...now, loss: history, lastLoss: history[history.length - 1]?.loss ?? null };
    }
  }

  /**
   * At start-up: lists the jobs, re-attaches to the queued and running ones and offers to resume
   * the interrupted ones.
   */
  async restoreJobs(): Promise<void> {
    const jobs = await this.call(api.listJobs);
    if (!jobs) return;
    for (const job of jobs) this.track(job);
    for (const job of jobs) {
      if (job.status === 'running' || job.status === 'queued') {
        await this.call(() => api.watchJob({ jobId: job.id, onEvent: this.channel() }));
        void this.loadHistory(job.id);
      }
    }
    this.resumeOffers = jobs.filter((j) => j.status === 'interrupted').map((j) => j.id);
  }

  canResume(jobId: Id): boolean {
    const view = this.jobs[String(jobId)];
    return !!view && isResumable(view.status);
  }

  /** Forgets everything (tests). */
  reset(): void {
    this.error = null;
    this.projects = [];
    this.currentProjectId = null;
    this.baseModelByProject = {};
    this.jobs = {};
    this.resumeOffers = [];
    this.#historyAsked.clear();
  }
}

export const app = new AppState();
