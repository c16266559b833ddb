import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import { project, run, table } from '../test/fixtures';
import { callsOf, mockBackend } from '../test/ipc';
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
    await fireEvent.change(seedSelect, { target: { value: '1' } });
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

  it('asks again with the runs the user chose', async () => {
    const calls = await setup();
    await screen.findByTestId('compare-table');
    const boxes = screen.getAllByTestId('compare-run') as HTMLInputElement[];
    expect(boxes).toHaveLength(2);
    await fireEvent.click(boxes[0]);
    await fireEvent.click(screen.getByTestId('compare-load'));
    await waitFor(() => expect(callsOf(calls, 'compare')).toHaveLength(2));
    expect(callsOf(calls, 'compare')[1]).toEqual({ projectId: 1, runIds: [3] });
    await waitFor(() => expect(screen.getAllByTestId('compare-cell')).toHaveLength(4));
  });
});
