import { Channel } from '@tauri-apps/api/core';
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import type { CompareTable, Job, JobEvent } from '../lib/types';
import { job, project, run, table } from '../test/fixtures';
import { callsOf, emit, mockBackend } from '../test/ipc';
import Compare from './Compare.svelte';

const runs = [
  run({ id: 2, label: 'DreamBooth' }),
  run({ id: 3, kind: 'dpo', label: 'DPO 1', stage: 1, parentRunId: 2 }),
  run({ id: 4, kind: 'dpo', label: 'DPO 2', stage: 2, parentRunId: 3, status: 'running' }),
];
const prompts = ['a photo of sks dog on the beach', 'a photo of sks dog in the snow'];

async function setup(seeds = [0]) {
  const calls = mockBackend({
    list_projects: () => [project()],
    list_runs: () => runs,
    compare: (a) =>
      table(
        prompts,
        runs.filter((r) => a.runIds.includes(r.id)),
        seeds,
      ),
    scatter: () => [
      { runId: null, label: 'Base', is: 0.5, ts: 0.3, seIs: 0.01, seTs: 0.01 },
      { runId: 2, label: 'DreamBooth', is: 0.7, ts: 0.26, seIs: 0.02, seTs: 0.01 },
      { runId: 3, label: 'DPO 1', is: 0.68, ts: 0.29, seIs: 0.02, seTs: 0.01 },
    ],
  });
  app.selectProject(1);
  await app.refreshProjects();
  render(Compare);
  return calls;
}

describe('Compare screen', () => {
  it('asks for the finished runs and renders a cell per (prompt, column)', async () => {
    const calls = await setup();
    const tableEl = await screen.findByTestId('compare-table');
    expect(callsOf(calls, 'compare')).toEqual([{ projectId: 1, runIds: [2, 3] }]);
    const cells = within(tableEl).getAllByTestId('compare-cell');
    expect(cells).toHaveLength(prompts.length * 3);
    const headers = [...tableEl.querySelectorAll('thead th')].map((th) => th.textContent?.trim());
    expect(headers).toEqual(['Prompt', 'Base', 'DreamBooth', 'DPO 1']);
    // Row-major: prompt 1, column 2 is the 6th cell.
    const cell = cells[5];
    expect(cell.dataset.prompt).toBe('1');
    expect(cell.dataset.column).toBe('2');
    expect(cell.querySelector('img')?.getAttribute('src')).toMatch(/gallery\/p1-c2-s0\.png$/);
    expect(within(cell).getByText('IS 0.700')).toBeTruthy();
    expect(within(cell).getByText('TS 0.280')).toBeTruthy();
  });

  it('shows one seed at a time when the table has several', async () => {
    await setup([0, 1]);
    const tableEl = await screen.findByTestId('compare-table');
    expect(within(tableEl).getAllByTestId('compare-cell')).toHaveLength(6);
    const seedSelect = screen.getByLabelText('Seed') as HTMLSelectElement;
    // The seed shown is the one selected from the start (not a blank choice).
    expect(seedSelect.value).toBe('0');
    await fireEvent.change(seedSelect, { target: { value: '1' } });
    await waitFor(() => expect(seedSelect.value).toBe('1'));
    await waitFor(() =>
      expect(within(tableEl).getAllByTestId('compare-cell')[0].querySelector('img')?.getAttribute('src')).toMatch(
        /p0-c0-s1\.png$/,
      ),
    );
  });

  it('enlarges a cell in a lightbox moved with the arrow keys and closed with Escape', async () => {
    await setup();
    const tableEl = await screen.findByTestId('compare-table');
    const cells = within(tableEl).getAllByTestId('compare-cell');
    await fireEvent.click(within(cells[1]).getByRole('button'));
    const box = await screen.findByTestId('lightbox');
    expect(box.querySelector('img')?.getAttribute('src')).toMatch(/p0-c1-s0\.png$/);
    await fireEvent.keyDown(window, { key: 'ArrowRight' });
    expect(screen.getByTestId('lightbox').querySelector('img')?.getAttribute('src')).toMatch(/p0-c2-s0\.png$/);
    await fireEvent.keyDown(window, { key: 'ArrowRight' });
    expect(screen.getByTestId('lightbox').querySelector('img')?.getAttribute('src')).toMatch(/p1-c0-s0\.png$/);
    await fireEvent.keyDown(window, { key: 'ArrowLeft' });
    expect(screen.getByTestId('lightbox').querySelector('img')?.getAttribute('src')).toMatch(/p0-c2-s0\.png$/);
    await fireEvent.keyDown(window, { key: 'Escape' });
    expect(screen.queryByTestId('lightbox')).toBeNull();
  });

  it('compares two columns with a clipped before/after view', async () => {
    await setup();
    await screen.findByTestId('compare-table');
    const view = screen.getByTestId('before-after');
    const [under, over] = view.querySelectorAll('img');
    expect(under.getAttribute('src')).toMatch(/p0-c0-s0\.png$/);
    expect(over.getAttribute('src')).toMatch(/p0-c1-s0\.png$/);
    expect(over.style.clipPath).toBe('inset(0 0 0 50%)');
    await fireEvent.input(screen.getByLabelText('Before/after split position'), { target: { value: '30' } });
    expect(over.style.clipPath).toBe('inset(0 0 0 30%)');
  });

  it('draws the run means with error bars', async () => {
    await setup();
    const svg = await screen.findByTestId('run-scatter');
    await waitFor(() => expect(svg.querySelectorAll('g.run')).toHaveLength(3));
    expect(svg.querySelectorAll('line.err')).toHaveLength(6);
    expect([...svg.querySelectorAll('text.label')].map((t) => t.textContent)).toEqual(['Base', 'DreamBooth', 'DPO 1']);
  });

  it('reloads the table when the user changes the runs, and again on Show', async () => {
    const calls = await setup();
    await screen.findByTestId('compare-table');
    const boxes = screen.getAllByTestId('compare-run') as HTMLInputElement[];
    expect(boxes).toHaveLength(2);
    await fireEvent.click(boxes[0]);
    await waitFor(() => expect(callsOf(calls, 'compare')).toHaveLength(2));
    expect(callsOf(calls, 'compare')[1]).toEqual({ projectId: 1, runIds: [3] });
    await waitFor(() => expect(screen.getAllByTestId('compare-cell')).toHaveLength(4));
    // Checked again, the run takes its place in the runs' order, not at the end.
    await fireEvent.click(boxes[0]);
    await waitFor(() => expect(callsOf(calls, 'compare')).toHaveLength(3));
    expect(callsOf(calls, 'compare')[2]).toEqual({ projectId: 1, runIds: [2, 3] });
    await waitFor(() => expect(screen.getAllByTestId('compare-cell')).toHaveLength(6));
    await fireEvent.click(screen.getByTestId('compare-load'));
    await waitFor(() => expect(callsOf(calls, 'compare')).toHaveLength(4));
    expect(callsOf(calls, 'compare')[3]).toEqual({ projectId: 1, runIds: [2, 3] });
  });

  it('shows the newest selection when an older answer comes last', async () => {
    const answers: { runIds: number[]; resolve: (t: CompareTable) => void }[] = [];
    mockBackend({
      list_projects: () => [project()],
      list_runs: () => runs,
      compare: (a) => new Promise<CompareTable>((resolve) => answers.push({ runIds: a.runIds, resolve })),
      scatter: () => [],
    });
    app.selectProject(1);
    await app.refreshProjects();
    render(Compare);
    await waitFor(() => expect(answers).toHaveLength(1));
    const boxes = screen.getAllByTestId('compare-run') as HTMLInputElement[];
    await fireEvent.click(boxes[1]);
    await waitFor(() => expect(answers).toHaveLength(2));
    const tableOf = (runIds: number[]) => table(prompts, runs.filter((r) => runIds.includes(r.id)));
    answers[1].resolve(tableOf(answers[1].runIds));
    await waitFor(() => expect(screen.getAllByTestId('compare-cell')).toHaveLength(4));
    answers[0].resolve(tableOf(answers[0].runIds));
    await new Promise((r) => setTimeout(r, 20));
    expect(screen.getAllByTestId('compare-cell')).toHaveLength(4);
    expect(screen.getByTestId('compare-load').hasAttribute('disabled')).toBe(false);
  });
});

describe('Compare screen without seed-matched pictures', () => {
  const noGallery = (labels: string[]) =>
    `no seed-matched galleries of ${labels.join(', ')} (the same prompts and seeds for each); make them with a gallery job of these columns`;
  const galleryJob = (over: Partial<Job> = {}) => job({ id: 12, kind: 'gallery', total: 6, ...over });

  /** A backend where only the runs in `galleried` have pictures; a gallery job adds its runs when it finishes. */
  function backend(galleried: Set<number>) {
    let channel: Channel<JobEvent> | null = null;
    let asked: number[] = [];
    const calls = mockBackend({
      list_projects: () => [project()],
      list_runs: () => runs,
      compare: (a) => {
        if (!a.runIds.every((id: number) => galleried.has(id))) {
          throw noGallery(['Base model', ...runs.filter((r) => a.runIds.includes(r.id)).map((r) => r.label)]);
        }
        return table(
          prompts,
          runs.filter((r) => a.runIds.includes(r.id)),
        );
      },
      scatter: () => [],
      start_gallery: (a) => {
        channel = a.onEvent;
        asked = a.runIds;
        emit(a.onEvent, { event: 'queued', jobId: 12 });
        return galleryJob();
      },
    });
    const finish = () => {
      for (const id of asked) galleried.add(id);
      emit(channel!, { event: 'finished', jobId: 12, runId: null });
    };
    return { calls, channel: () => channel!, finish };
  }

  async function open() {
    app.selectProject(1);
    await app.refreshProjects();
    render(Compare);
  }

  it('offers to make the pictures instead of reporting an error, and shows them when the job finishes', async () => {
    const { calls, channel, finish } = backend(new Set([2]));
    await open();
    const missing = await screen.findByTestId('compare-missing');
    expect(missing.textContent).toContain('No pictures of these models side by side yet.');
    expect(app.error).toBeNull();
    expect(screen.queryByTestId('compare-table')).toBeNull();

    const button = screen.getByTestId('make-gallery') as HTMLButtonElement;
    expect(button.textContent?.trim()).toBe('Make pictures');
    expect(button.disabled).toBe(false);
    await fireEvent.click(button);
    await waitFor(() => expect(callsOf(calls, 'start_gallery')).toHaveLength(1));
    const args = callsOf(calls, 'start_gallery')[0];
    expect(args.projectId).toBe(1);
    expect(args.runIds).toEqual([2, 3]);
    expect(args.onEvent).toBeInstanceOf(Channel);

    const progress = await screen.findByTestId('gallery-progress');
    expect(progress.dataset.status).toBe('queued');
    await waitFor(() => expect((screen.getByTestId('make-gallery') as HTMLButtonElement).disabled).toBe(true));

    emit(
      channel(),
      { event: 'started', jobId: 12, total: 6, phase: 'loading models' },
      { event: 'phase', jobId: 12, phase: 'gallery images', done: 3, total: 6 },
    );
    await waitFor(() => expect(screen.getByTestId('gallery-progress').dataset.status).toBe('running'));
    expect(screen.getByTestId('gallery-progress').textContent).toContain('gallery images');
    expect(screen.getByTestId('gallery-progress').textContent).toContain('3 / 6');
    expect(screen.getByRole('progressbar').getAttribute('aria-valuenow')).toBe('50');
    expect(callsOf(calls, 'compare')).toHaveLength(1);
    expect(callsOf(calls, 'scatter')).toHaveLength(1);

    finish();
    const tableEl = await screen.findByTestId('compare-table');
    expect(within(tableEl).getAllByTestId('compare-cell')).toHaveLength(prompts.length * 3);
    expect(callsOf(calls, 'compare')).toHaveLength(2);
    expect(callsOf(calls, 'compare')[1]).toEqual({ projectId: 1, runIds: [2, 3] });
    await waitFor(() => expect(callsOf(calls, 'scatter')).toHaveLength(2));
    expect(screen.queryByTestId('compare-missing')).toBeNull();
    expect(app.error).toBeNull();
  });

  it('shows a failed gallery job\'s message and lets the user try again', async () => {
    const { calls, channel } = backend(new Set([2]));
    await open();
    await fireEvent.click(await screen.findByTestId('make-gallery'));
    await screen.findByTestId('gallery-progress');
    emit(channel(), { event: 'failed', jobId: 12, message: 'out of memory while rendering DPO 1' });
    await waitFor(() => expect(screen.getByTestId('gallery-progress').dataset.status).toBe('failed'));
    expect(screen.getByTestId('gallery-progress').textContent).toContain('out of memory while rendering DPO 1');
    expect((screen.getByTestId('make-gallery') as HTMLButtonElement).disabled).toBe(false);
    expect(screen.queryByTestId('compare-table')).toBeNull();
    expect(app.error).toBeNull();
    expect(callsOf(calls, 'compare')).toHaveLength(1);
  });

  it('shows the table again when the selection changes to models that have pictures', async () => {
    const { calls } = backend(new Set([2]));
    await open();
    await screen.findByTestId('compare-missing');
    const boxes = screen.getAllByTestId('compare-run') as HTMLInputElement[];
    await fireEvent.click(boxes[1]);
    const tableEl = await screen.findByTestId('compare-table');
    expect(callsOf(calls, 'compare')[1]).toEqual({ projectId: 1, runIds: [2] });
    expect(within(tableEl).getAllByTestId('compare-cell')).toHaveLength(prompts.length * 2);
    expect(screen.queryByTestId('compare-missing')).toBeNull();
    // And back: the stale table gives way to the offer.
    await fireEvent.click(boxes[1]);
    await screen.findByTestId('compare-missing');
    expect(screen.queryByTestId('compare-table')).toBeNull();
    expect(app.error).toBeNull();
  });

  it('follows a gallery job that was already running when the screen opened', async () => {
    const galleried = new Set([2]);
    const calls = backend(galleried).calls;
    app.track(galleryJob({ status: 'running', step: 2 }));
    await open();
    await screen.findByTestId('compare-missing');
    expect(screen.getByTestId('gallery-progress').dataset.status).toBe('running');
    expect((screen.getByTestId('make-gallery') as HTMLButtonElement).disabled).toBe(true);
    galleried.add(3);
    app.handleEvent({ event: 'finished', jobId: 12, runId: null });
    await screen.findByTestId('compare-table');
    expect(callsOf(calls, 'compare')).toHaveLength(2);
    expect(callsOf(calls, 'start_gallery')).toHaveLength(0);
  });

  /** A backend whose compare fails with `message` until `heal()`. */
  function failingCompare(message: string) {
    let broken = true;
    const calls = mockBackend({
      list_projects: () => [project()],
      list_runs: () => runs,
      compare: (a) => {
        if (broken) throw message;
        return table(
          prompts,
          runs.filter((r) => a.runIds.includes(r.id)),
        );
      },
      scatter: () => [],
    });
    return { calls, heal: () => (broken = false) };
  }

  it('reports other compare failures in the error bar, and takes them away once a table loads', async () => {
    const { calls, heal } = failingCompare("likeness.db: database error: a gallery's settings are unreadable: EOF");
    await open();
    await waitFor(() => expect(app.error).toBe("likeness.db: database error: a gallery's settings are unreadable: EOF"));
    expect(screen.queryByTestId('compare-missing')).toBeNull();
    expect(screen.queryByTestId('make-gallery')).toBeNull();

    heal();
    await fireEvent.click(screen.getByTestId('compare-load'));
    await screen.findByTestId('compare-table');
    expect(callsOf(calls, 'compare')).toHaveLength(2);
    expect(app.error).toBeNull();
  });

  it('leaves an error of another call in the error bar when a table loads', async () => {
    const { heal } = failingCompare('project 1: database is locked');
    await open();
    await waitFor(() => expect(app.error).toBe('project 1: database is locked'));
    app.setError('cannot read photo.jpg: denied');
    heal();
    await fireEvent.click(screen.getByTestId('compare-load'));
    await screen.findByTestId('compare-table');
    expect(app.error).toBe('cannot read photo.jpg: denied');
  });
});
