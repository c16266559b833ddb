import { describe, expect, it } from 'vitest';
import { emptyView, isResumable, reduceAll, reduceJob, viewFromJob, withJob } from './jobState';
import type { Job, JobEvent } from './types';

const J = 7;
const step = (s: number, loss: number, extra: Partial<Extract<JobEvent, { event: 'step' }>> = {}): JobEvent => ({
  event: 'step',
  jobId: J,
  step: s,
  total: 100,
  loss,
  lr: 1e-4,
  etaSeconds: null,
  ...extra,
});

describe('reduceJob', () => {
  it('follows a job from queued to running with progress and a loss series', () => {
    const v = reduceAll(emptyView(J), [
      { event: 'queued', jobId: J },
      { event: 'started', jobId: J, total: 100, phase: 'training' },
      step(1, 0.5),
      step(2, 0.4),
      step(3, 0.3, { etaSeconds: 97 }),
    ]);
    expect(v.status).toBe('running');
    expect(v.phase).toBe('training');
    expect(v.step).toBe(3);
    expect(v.total).toBe(100);
    expect(v.loss).toEqual([
      { step: 1, loss: 0.5 },
      { step: 2, loss: 0.4 },
      { step: 3, loss: 0.3 },
    ]);
    expect(v.lastLoss).toBe(0.3);
    expect(v.lr).toBe(1e-4);
    expect(v.etaSeconds).toBe(97);
  });

  it('measures it/s from arrival times and derives an ETA when the backend gives none', () => {
    const events = [step(10, 1), step(12, 1), step(14, 1)];
    const v = reduceAll(emptyView(J), events, [0, 1000, 2000]);
    expect(v.itPerSec).toBeCloseTo(2, 9);
    // 86 steps left at 2 it/s.
    expect(v.etaSeconds).toBeCloseTo(43, 9);
    expect(reduceJob(emptyView(J), step(1, 1), 0).itPerSec).toBeNull();
  });

  it('keeps the rate window bounded', () => {
    let v = emptyView(J);
    for (let i = 1; i <= 50; i++) v = reduceJob(v, step(i, 1), i * 500);
    expect(v.rateWindow.length).toBe(20);
    expect(v.itPerSec).toBeCloseTo(2, 9);
  });

  it('replaces the steps a resumed run repeats', () => {
    const v = reduceAll(emptyView(J), [step(1, 0.5), step(2, 0.4), step(3, 0.3), step(2, 0.45), step(3, 0.35)]);
    expect(v.loss).toEqual([
      { step: 1, loss: 0.5 },
      { step: 2, loss: 0.45 },
      { step: 3, loss: 0.35 },
    ]);
  });

  it('records the accuracy only when sent', () => {
    const v = reduceAll(emptyView(J), [step(1, 0.7, { accuracy: 0.5 }), step(2, 0.6), step(3, 0.5, { accuracy: 0.75 })]);
    expect(v.accuracy).toEqual([
      { step: 1, accuracy: 0.5 },
      { step: 3, accuracy: 0.75 },
    ]);
  });

  it('collects previews by step and candidates by stage', () => {
    const v = reduceAll(emptyView(J), [
      { event: 'preview', jobId: J, step: 100, images: ['b.png'] },
      { event: 'preview', jobId: J, step: 0, images: ['a.png'] },
      { event: 'preview', jobId: J, step: 100, images: ['c.png'] },
      { event: 'candidates', jobId: J, stage: 2, points: [], pairs: [] },
      {
        event: 'candidates',
        jobId: J,
        stage: 1,
        points: [{ prompt: 'p', is: 0.5, ts: 0.3, sample: 0 }],
        pairs: [{ prompt: 'p', better: 0, worse: 1 }],
      },
    ]);
    expect(v.previews).toEqual([
      { step: 0, images: ['a.png'] },
      { step: 100, images: ['c.png'] },
    ]);
    expect(v.candidates.map((c) => c.stage)).toEqual([1, 2]);
    expect(v.candidates[0].pairs).toHaveLength(1);
  });

  it('shows phase progress until training steps resume', () => {
    let v = reduceJob(emptyView(J), { event: 'phase', jobId: J, phase: 'generating candidates', done: 3, total: 16 }, 0);
    expect(v.phase).toBe('generating candidates');
    expect(v.phaseProgress).toEqual({ done: 3, total: 16 });
    expect(v.status).toBe('running');
    v = reduceJob(v, step(1, 0.1), 0);
    expect(v.phaseProgress).toBeNull();
  });

  it('ends in done with the run id', () => {
    const v = reduceAll(emptyView(J), [
      { event: 'started', jobId: J, total: 100, phase: 'training' },
      step(99, 0.1),
      { event: 'finished', jobId: J, runId: 42 },
    ]);
    expect(v.status).toBe('done');
    expect(v.runId).toBe(42);
    expect(v.step).toBe(100);
    expect(v.etaSeconds).toBeNull();
  });

  it('ends in failed with the message, or cancelled', () => {
    const failed = reduceJob(emptyView(J), { event: 'failed', jobId: J, message: 'out of memory' }, 0);
    expect(failed.status).toBe('failed');
    expect(failed.message).toBe('out of memory');
    expect(reduceJob(emptyView(J), { event: 'cancelled', jobId: J }, 0).status).toBe('cancelled');
  });

  it('ignores progress after a terminal state, but a new start reopens the job', () => {
    const cancelled = reduceAll(emptyView(J), [step(5, 0.2), { event: 'cancelled', jobId: J }, step(6, 0.1)]);
    expect(cancelled.status).toBe('cancelled');
    expect(cancelled.step).toBe(5);
    expect(cancelled.loss).toHaveLength(1);
    const resumed = reduceAll(cancelled, [{ event: 'started', jobId: J, total: 100, phase: 'training' }, step(6, 0.1)]);
    expect(resumed.status).toBe('running');
    expect(resumed.loss).toHaveLength(2);
  });

  it('ignores events of other jobs', () => {
    const v = emptyView(J);
    const other: JobEvent[] = [
      { event: 'started', jobId: 8, total: 5, phase: 'x' },
      { ...step(1, 0.5), jobId: 8 },
      { event: 'finished', jobId: 8, runId: 1 },
      { event: 'failed', jobId: 8, message: 'no' },
    ];
    for (const e of other) expect(reduceJob(v, e, 0)).toBe(v);
  });
});

describe('viewFromJob / withJob', () => {
  const job: Job = {
    id: J,
    kind: 'dreambooth',
    projectId: 3,
    runId: 11,
    status: 'interrupted',
    step: 120,
    total: 400,
    message: null,
    createdAt: 0,
  };

  it('seeds a view from a job record', () => {
    const v = viewFromJob(job);
    expect(v).toMatchObject({ jobId: J, kind: 'dreambooth', projectId: 3, runId: 11, status: 'interrupted', step: 120, total: 400 });
  });

  it('does not let an older record overwrite what the channel said', () => {
    const live = reduceAll(emptyView(J), [{ event: 'started', jobId: J, total: 400, phase: 'training' }, step(130, 0.2)]);
    const merged = withJob(live, { ...job, status: 'queued', step: 0 });
    expect(merged.status).toBe('running');
    expect(merged.step).toBe(130);
    expect(merged.kind).toBe('dreambooth');
    expect(merged.projectId).toBe(3);
  });
});

describe('interrupted jobs', () => {
  it('an interrupted event ends the job as resumable', () => {
    const started = reduceJob(emptyView(J), { event: 'started', jobId: J, total: 10, phase: 'training' }, 0);
    const view = reduceJob(started, { event: 'interrupted', jobId: J }, 1);
    expect(view.status).toBe('interrupted');
    expect(isResumable(view.status)).toBe(true);
  });
});
