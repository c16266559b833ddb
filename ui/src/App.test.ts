import { Channel } from '@tauri-apps/api/core';
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import App from './App.svelte';
import type { JobEvent } from './lib/types';
import { job, project } from './test/fixtures';
import { callsOf, emit, mockBackend } from './test/ipc';

describe('app shell', () => {
  it('has a nav link for every screen and routes by hash', async () => {
    mockBackend({ list_projects: () => [project()], list_jobs: () => [] });
    render(App);
    for (const id of ['projects', 'subject', 'model', 'dreambooth', 'dpo', 'compare', 'export']) {
      expect(screen.getByTestId(`nav-${id}`).getAttribute('href')).toBe(`#/${id}`);
    }
    expect(screen.getByTestId('nav-projects').getAttribute('aria-current')).toBe('page');
    location.hash = '#/export';
    window.dispatchEvent(new HashChangeEvent('hashchange'));
    await waitFor(() => expect(screen.getByTestId('nav-export').getAttribute('aria-current')).toBe('page'));
    expect(screen.getByText(/Choose a project first/)).toBeTruthy();
  });

  it('re-attaches to a running job on start and shows its progress in the indicator', async () => {
    let channel: Channel<JobEvent> | null = null;
    const calls = mockBackend({
      list_projects: () => [project()],
      list_jobs: () => [job({ id: 4, status: 'running', step: 40, total: 400, runId: 8 })],
      watch_job: (a) => {
        channel = a.onEvent;
        return null;
      },
      loss_history: () => [
        { step: 1, loss: 0.3 },
        { step: 40, loss: 0.2 },
      ],
    });
    render(App);
    const indicator = screen.getByTestId('jobs-indicator');
    await waitFor(() => expect(callsOf(calls, 'watch_job')).toHaveLength(1));
    expect(callsOf(calls, 'watch_job')[0].jobId).toBe(4);
    expect(callsOf(calls, 'watch_job')[0].onEvent).toBeInstanceOf(Channel);
    await waitFor(() => expect(indicator.textContent).toContain('40/400'));
    await waitFor(() => expect(callsOf(calls, 'loss_history')).toEqual([{ runId: 8 }]));
    emit(channel!, { event: 'step', jobId: 4, step: 41, total: 400, loss: 0.19, lr: 1e-4, etaSeconds: 359 });
    await waitFor(() => expect(indicator.textContent).toContain('41/400'));
    expect(indicator.textContent).toContain('5 min 59 s');
    emit(channel!, { event: 'finished', jobId: 4, runId: 8 });
    await waitFor(() => expect(indicator.textContent).toContain('No job running'));
  });

  it('offers to resume an interrupted job', async () => {
    const calls = mockBackend({
      list_projects: () => [project()],
      list_jobs: () => [job({ id: 5, status: 'interrupted', step: 120, total: 400 })],
      resume_job: () => job({ id: 5, status: 'queued', step: 120, total: 400 }),
    });
    render(App);
    const offer = await screen.findByTestId('resume-offer');
    expect(offer.textContent).toContain('interrupted at step 120 of 400');
    expect(offer.textContent).toContain('Rex');
    expect(callsOf(calls, 'watch_job')).toHaveLength(0);
    await fireEvent.click(within(offer).getByTestId('resume-offer-resume'));
    await waitFor(() => expect(callsOf(calls, 'resume_job')).toHaveLength(1));
    expect(callsOf(calls, 'resume_job')[0].jobId).toBe(5);
    await waitFor(() => expect(screen.queryByTestId('resume-offer')).toBeNull());
  });
});
