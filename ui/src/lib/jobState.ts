// A job's view state, folded from its channel's events by a pure reducer.

import type { CandidatePair, CandidatePoint, Id, Job, JobEvent, JobKind, JobStatus, LossPoint } from './types';

export interface CandidateStage {
  stage: number;
  points: CandidatePoint[];
  pairs: CandidatePair[];
}

export interface JobView {
  jobId: Id;
  kind: JobKind | null;
  projectId: Id | null;
  runId: Id | null;
  status: JobStatus;
  /** What the job is doing now ("training", "generating candidates", …). */
  phase: string | null;
  step: number;
  total: number;
  /** Progress of a phase without training steps (candidate generation, scoring…). */
  phaseProgress: { done: number; total: number } | null;
  loss: LossPoint[];
  /** DPO's implicit accuracy per step, where the backend sends it. */
  accuracy: { step: number; accuracy: number }[];
  lastLoss: number | null;
  lr: number | null;
  etaSeconds: number | null;
  /** Steps per second over the recent window; null until two step events arrived. */
  itPerSec: number | null;
  /** Recent (step, time in ms) samples the rate is measured over. */
  rateWindow: { step: number; t: number }[];
  /** Sample galleries, oldest first. */
  previews: { step: number; images: string[] }[];
  /** DPO candidate scores and chosen pairs, by stage, ascending. */
  candidates: CandidateStage[];
  /** The failure message, or the job's last message. */
  message: string | null;
}

/** How many recent step events the it/s figure is measured over. */
export const RATE_WINDOW = 20;

export const TERMINAL: readonly JobStatus[] = ['done', 'failed', 'cancelled', 'interrupted'];

export function isTerminal(status: JobStatus): boolean {
  return TERMINAL.includes(status);
}

/** True for a job the user can continue (resume_job). */
export function isResumable(status: JobStatus): boolean {
  return status === 'interrupted' || status === 'cancelled';
}

export function emptyView(jobId: Id): JobView {
  return {
    jobId,
    kind: null,
    projectId: null,
    runId: null,
    status: 'queued',
    phase: null,
    step: 0,
    total: 0,
    phaseProgress: null,
    loss: [],
    accuracy: [],
    lastLoss: null,
    lr: null,
    etaSeconds: null,
    itPerSec: null,
    rateWindow: [],
    previews: [],
    candidates: [],
    message: null,
  };
}

/** A view seeded from a `Job` record (list_jobs, or what start_* returned). */
export function viewFromJob(job: Job): JobView {
  return withJob(emptyView(job.id), job);
}

/**
 * Merges a `Job` record into a view: identity fields always; status, step and total only when the
 * view has not heard from the channel yet (the channel is newer than the record).
 */
export function withJob(view: JobView, job: Job): JobView {
  if (view.jobId !== job.id) return view;
  const heard = view.loss.length > 0 || view.phase !== null || view.status !== 'queued';
  return {
    ...view,
    kind: job.kind,
    projectId: job.projectId,
    runId: view.runId ?? job.runId,
    ...(heard
      ? {}
      : {
          status: job.status,
          step: job.step,
          total: job.total,
          message: job.message,
        }),
  };
}

function upsertStage(list: CandidateStage[], entry: CandidateStage): CandidateStage[] {
  const rest = list.filter((c) => c.stage !== entry.stage);
  return [...rest, entry].sort((a, b) => a.stage - b.stage);
}

/** Appends a point, dropping any at or after its step (a resumed run repeats steps after its checkpoint). */
function appendSeries<T extends { step: number }>(series: T[], point: T): T[] {
  const last = series[series.length - 1];
  if (last === undefined || last.step < point.step) return [...series, point];
  return [...series.filter((p) => p.step < point.step), point];
}

function measureRate(window: { step: number; t: number }[]): number | null {
  if (window.length < 2) return null;
  const a = window[0];
  const b = window[window.length - 1];
  const dt = (b.t - a.t) / 1000;
  if (dt <= 0 || b.step <= a.step) return null;
  return (b.step - a.step) / dt;
}

/**
 * Folds one event into the view. `nowMs` is the time the event arrived (for it/s). Events of another
 * job are ignored (the view is returned unchanged); so are progress events after a terminal state,
 * except `queued`/`started`, which begin a resumed job again.
 */
export function reduceJob(view: JobView, event: JobEvent, nowMs: number): JobView {
  if (event.jobId !== view.jobId) return view;
  const terminal = isTerminal(view.status);
  switch (event.event) {
    case 'queued':
      return { ...view, status: 'queued', message: null };
    case 'started':
      return {
        ...view,
        status: 'running',
        total: event.total,
        phase: event.phase,
        phaseProgress: null,
        message: null,
        rateWindow: [],
        itPerSec: null,
        etaSeconds: null,
      };
    case 'step': {
      if (terminal) return view;
      const rateWindow = [...view.rateWindow.filter((s) => s.step < event.step), { step: event.step, t: nowMs }].slice(
        -RATE_WINDOW,
      );
      const itPerSec = measureRate(rateWindow);
      const eta =
        event.etaSeconds ??
        (itPerSec !== null && event.total > event.step ? (event.total - event.step) / itPerSec : null);
      const accuracy =
        typeof event.accuracy === 'number' && Number.isFinite(event.accuracy)
          ? appendSeries(view.accuracy, { step: event.step, accuracy: event.accuracy })
          : view.accuracy;
      return {
        ...view,
        status: 'running',
        step: event.step,
        total: event.total,
        loss: appendSeries(view.loss, { step: event.step, loss: event.loss }),
        accuracy,
        lastLoss: event.loss,
        lr: event.lr,
        etaSeconds: eta,
        itPerSec,
        rateWindow,
        phaseProgress: null,
      };
    }
    case 'preview': {
      if (terminal) return view;
      const previews = [...view.previews.filter((p) => p.step !== event.step), { step: event.step, images: event.images }].sort(
        (a, b) => a.step - b.step,
      );
      return { ...view, previews };
    }
    case 'candidates':
      if (terminal) return view;
      return {
        ...view,
        candidates: upsertStage(view.candidates, { stage: event.stage, points: event.points, pairs: event.pairs }),
      };
    case 'phase':
      if (terminal) return view;
      return {
        ...view,
        status: 'running',
        phase: event.phase,
        phaseProgress: { done: event.done, total: event.total },
      };
    case 'finished':
      return {
        ...view,
        status: 'done',
        runId: event.runId,
        step: view.total > 0 ? view.total : view.step,
        etaSeconds: null,
        phaseProgress: null,
      };
    case 'failed':
      return { ...view, status: 'failed', message: event.message, etaSeconds: null };
    case 'cancelled':
      return { ...view, status: 'cancelled', etaSeconds: null };
    case 'interrupted':
      return { ...view, status: 'interrupted', etaSeconds: null };
    default:
      return view;
  }
}

/** Folds a sequence of events (all arriving at `nowMs`, or at the given times). */
export function reduceAll(view: JobView, events: JobEvent[], times?: number[]): JobView {
  return events.reduce((v, e, i) => reduceJob(v, e, times?.[i] ?? 0), view);
}
