import { Channel } from '@tauri-apps/api/core';
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import type { JobEvent } from '../lib/types';
import { job, project, settings } from '../test/fixtures';
import { callsOf, emit, mockBackend } from '../test/ipc';
import DreamBooth from './DreamBooth.svelte';

async function openProject(photoCount = 5) {
  app.selectProject(1);
  app.setBaseModel(1, 5);
  await app.refreshProjects();
  expect(app.currentProject?.photoCount).toBe(photoCount);
}

function backend(photoCount = 5) {
  let channel: Channel<JobEvent> | null = null;
  const calls = mockBackend({
    list_projects: () => [project({ photoCount })],
    default_dreambooth_settings: (a) => settings({ baseModelId: a.baseModelId }),
    list_runs: () => [],
    start_dreambooth: (a) => {
      channel = a.onEvent;
      // The backend may speak before the command returns.
      emit(a.onEvent, { event: 'queued', jobId: 9 });
      return job();
    },
    cancel_job: () => null,
    resume_job: (a) => {
      channel = a.onEvent;
      return job({ status: 'queued' });
    },
  });
  return { calls, channel: () => channel! };
}

const step = (s: number, loss: number): JobEvent => ({
  event: 'step',
  jobId: 9,
  step: s,
  total: 10,
  loss,
  lr: 1e-4,
  etaSeconds: 10 - s,
});

describe('DreamBooth screen', () => {
  it('fills the form from default_dreambooth_settings of the chosen base model', async () => {
    const { calls } = backend();
    await openProject();
    render(DreamBooth);
    const steps = (await screen.findByTestId('db-steps')) as HTMLInputElement;
    expect(steps.value).toBe('10');
    expect(callsOf(calls, 'default_dreambooth_settings')).toEqual([{ baseModelId: 5 }]);
  });

  it('starts a job and follows its channel: progress, loss chart, previews', async () => {
    const { calls, channel } = backend();
    await openProject();
    render(DreamBooth);
    const stepsInput = await screen.findByTestId('db-steps');
    await fireEvent.input(stepsInput, { target: { value: '12' } });
    await fireEvent.click(screen.getByTestId('dreambooth-start'));

    await waitFor(() => expect(callsOf(calls, 'start_dreambooth')).toHaveLength(1));
    const args = callsOf(calls, 'start_dreambooth')[0];
    expect(args.projectId).toBe(1);
    expect(args.settings).toEqual(settings({ steps: 12 }));
    expect(args.onEvent).toBeInstanceOf(Channel);

    const progress = await screen.findByTestId('dreambooth-progress');
    expect(progress.dataset.status).toBe('queued');

    emit(channel(), { event: 'started', jobId: 9, total: 10, phase: 'training' }, step(1, 0.9), step(2, 0.7), step(3, 0.6));
    await waitFor(() => expect(screen.getByTestId('progress-step').textContent).toBe('3 / 10'));
    expect(screen.getByTestId('dreambooth-progress').dataset.status).toBe('running');
    expect(screen.getByTestId('progress-loss').textContent).toBe('0.6000');
    expect(screen.getByTestId('progress-eta').textContent).toBe('7 s');
    const chart = screen.getByTestId('loss-chart');
    expect(chart.getAttribute('data-points')).toBe('3');
    expect(chart.querySelector('path.raw')?.getAttribute('d')?.match(/[ML]/g)).toHaveLength(3);
    expect((screen.getByRole('progressbar') as HTMLElement).getAttribute('aria-valuenow')).toBe('30');

    emit(channel(), { event: 'preview', jobId: 9, step: 5, images: ['runs/2/samples/step-000005/0.png', 'runs/2/samples/step-000005/1.png'] });
    const previews = await screen.findByTestId('dreambooth-previews');
    const srcs = [...previews.querySelectorAll('img')].map((i) => i.getAttribute('src'));
    expect(srcs).toHaveLength(2);
    expect(srcs[0]).toMatch(/runs\/2\/samples\/step-000005\/0\.png$/);

    // Events of another job do not touch this one.
    emit(channel(), { ...step(9, 0.1), jobId: 77 } as JobEvent);
    await Promise.resolve();
    expect(screen.getByTestId('progress-step').textContent).toBe('3 / 10');
    expect(screen.getByTestId('loss-chart').getAttribute('data-points')).toBe('3');
  });

  it('cancels, then offers Resume, which calls resume_job with a new channel', async () => {
    const { calls, channel } = backend();
    await openProject();
    render(DreamBooth);
    await fireEvent.click(await screen.findByTestId('dreambooth-start'));
    await waitFor(() => expect(callsOf(calls, 'start_dreambooth')).toHaveLength(1));
    emit(channel(), { event: 'started', jobId: 9, total: 10, phase: 'training' }, step(4, 0.5));

    await fireEvent.click(await screen.findByTestId('dreambooth-cancel'));
    expect(callsOf(calls, 'cancel_job')).toEqual([{ jobId: 9 }]);
    const first = channel();
    emit(first, { event: 'cancelled', jobId: 9 });

    await fireEvent.click(await screen.findByTestId('dreambooth-resume'));
    await waitFor(() => expect(callsOf(calls, 'resume_job')).toHaveLength(1));
    expect(callsOf(calls, 'resume_job')[0].jobId).toBe(9);
    expect(channel()).not.toBe(first);
    emit(channel(), { event: 'started', jobId: 9, total: 10, phase: 'training' }, step(5, 0.45));
    await waitFor(() => expect(screen.getByTestId('progress-step').textContent).toBe('5 / 10'));
    expect(screen.getByTestId('loss-chart').getAttribute('data-points')).toBe('2');
  });

  it('shows a failure and the finished state', async () => {
    const { calls, channel } = backend();
    await openProject();
    render(DreamBooth);
    await fireEvent.click(await screen.findByTestId('dreambooth-start'));
    await waitFor(() => expect(callsOf(calls, 'start_dreambooth')).toHaveLength(1));
    emit(channel(), { event: 'failed', jobId: 9, message: 'out of GPU memory at step 3' });
    expect(await screen.findByText('out of GPU memory at step 3')).toBeTruthy();
    expect(screen.getByTestId('dreambooth-progress').dataset.status).toBe('failed');
  });

  it('will not start with fewer than 3 photos', async () => {
    backend(2);
    await openProject(2);
    render(DreamBooth);
    const start = (await screen.findByTestId('dreambooth-start')) as HTMLButtonElement;
    expect(start.disabled).toBe(true);
    expect(screen.getByText(/Add at least 3 photos first/)).toBeTruthy();
  });
});
