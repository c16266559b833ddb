import type { Channel } from '@tauri-apps/api/core';
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import type { JobEvent } from '../lib/types';
import { job, project, run } from '../test/fixtures';
import { callsOf, emit, mockBackend } from '../test/ipc';
import Dpo from './Dpo.svelte';

async function setup() {
  let channel: Channel<JobEvent> | null = null;
  const calls = mockBackend({
    list_projects: () => [project()],
    list_runs: () => [run({ id: 2 }), run({ id: 6, status: 'failed', label: 'DreamBooth' })],
    start_dpo: (a) => {
      channel = a.onEvent;
      return job({ id: 12, kind: 'dpo', total: 60 });
    },
  });
  app.selectProject(1);
  await app.refreshProjects();
  render(Dpo);
  return { calls, channel: () => channel! };
}

const value = (id: string) => (screen.getByTestId(id) as HTMLInputElement).value;

describe('DPO screen', () => {
  it('maps the slider to the angle window, and typed angles back to the slider', async () => {
    await setup();
    expect(value('dpo-angle-min')).toBe('20');
    expect(value('dpo-angle-max')).toBe('70');
    expect(value('dpo-slider')).toBe('0.5');
    expect(screen.getByText('Follow the prompt')).toBeTruthy();
    expect(screen.getByText('Look like the subject')).toBeTruthy();

    await fireEvent.input(screen.getByTestId('dpo-slider'), { target: { value: '0' } });
    expect(value('dpo-angle-min')).toBe('0');
    expect(value('dpo-angle-max')).toBe('50');
    await fireEvent.input(screen.getByTestId('dpo-slider'), { target: { value: '1' } });
    expect(value('dpo-angle-min')).toBe('40');
    expect(value('dpo-angle-max')).toBe('90');

    const lo = screen.getByTestId('dpo-angle-min');
    const hi = screen.getByTestId('dpo-angle-max');
    await fireEvent.input(lo, { target: { value: '150' } });
    await fireEvent.change(lo);
    await fireEvent.input(hi, { target: { value: '10' } });
    await fireEvent.change(hi);
    // Clamped to 90 and swapped: 10°–90°, centre 50° → slider at (50 − 25) / 40.
    expect(value('dpo-angle-min')).toBe('10');
    expect(value('dpo-angle-max')).toBe('90');
    expect(Number(value('dpo-slider'))).toBeCloseTo(0.625, 3);
  });

  it('starts from the finished DreamBooth run with the chosen window, and draws candidates and pairs', async () => {
    const { calls, channel } = await setup();
    await fireEvent.input(screen.getByTestId('dpo-slider'), { target: { value: '0.25' } });
    await fireEvent.click(screen.getByTestId('dpo-start'));
    await waitFor(() => expect(callsOf(calls, 'start_dpo')).toHaveLength(1));
    const args = callsOf(calls, 'start_dpo')[0];
    expect(args.projectId).toBe(1);
    expect(args.settings).toEqual({
      fromRunId: 2,
      stages: 2,
      promptsPerStage: 100,
      samplesPerPrompt: 8,
      angleMin: 10,
      angleMax: 60,
      steps: 500,
      lr: 1e-5,
      beta: 5000,
      seed: 0,
    });

    emit(
      channel(),
      { event: 'started', jobId: 12, total: 60, phase: 'stage 1' },
      { event: 'phase', jobId: 12, phase: 'generating candidates', done: 4, total: 16 },
      {
        event: 'candidates',
        jobId: 12,
        stage: 1,
        points: [
          { prompt: 'beach', is: 0.6, ts: 0.3, sample: 0 },
          { prompt: 'beach', is: 0.5, ts: 0.25, sample: 1 },
          { prompt: 'snow', is: 0.7, ts: 0.2, sample: 0 },
        ],
        pairs: [{ prompt: 'beach', better: 0, worse: 1 }],
      },
      { event: 'step', jobId: 12, step: 1, total: 60, loss: 0.69, lr: 1e-5, etaSeconds: null, accuracy: 0.5 },
    );
    const svg = await screen.findByTestId('candidate-scatter');
    expect(svg.querySelectorAll('circle.point')).toHaveLength(3);
    const pairs = svg.querySelectorAll('line.pair');
    expect(pairs).toHaveLength(1);
    // Better (higher IS) is drawn first, towards the worse point.
    expect(Number(pairs[0].getAttribute('y1'))).toBeLessThan(Number(pairs[0].getAttribute('y2')));
    expect(screen.getByTestId('loss-chart').getAttribute('data-points')).toBe('1');
    expect(screen.getByTestId('accuracy-chart').getAttribute('data-points')).toBe('1');
  });
});
