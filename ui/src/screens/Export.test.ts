import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import { project, run } from '../test/fixtures';
import { callsOf, mockBackend } from '../test/ipc';
import Export from './Export.svelte';

describe('Export screen', () => {
  it('saves the newest finished run in the chosen format and reports path and size', async () => {
    const calls = mockBackend({
      list_projects: () => [project()],
      list_runs: () => [run({ id: 2 }), run({ id: 3, kind: 'dpo', label: 'DPO 1' }), run({ id: 4, label: 'DPO 2', status: 'running' })],
      'plugin:dialog|save': () => '/home/a/loras/Rex-DPO-1.safetensors',
      export_lora: (a) => ({ path: a.path, bytes: 3 * 1024 * 1024 }),
    });
    app.selectProject(1);
    await app.refreshProjects();
    render(Export);
    await waitFor(() => expect((screen.getByTestId('export-run') as HTMLSelectElement).value).toBe('3'));
    await fireEvent.change(screen.getByTestId('export-format'), { target: { value: 'diffusers' } });
    await fireEvent.click(screen.getByTestId('export-button'));
    const result = await screen.findByTestId('export-result');
    expect(callsOf(calls, 'plugin:dialog|save')[0].options.defaultPath).toBe('Rex-DPO-1.safetensors');
    expect(callsOf(calls, 'export_lora')).toEqual([
      { runId: 3, format: 'diffusers', path: '/home/a/loras/Rex-DPO-1.safetensors' },
    ]);
    expect(result.textContent).toContain('3.0 MB');
    expect(result.textContent).toContain('/home/a/loras/Rex-DPO-1.safetensors');
  });

  it('does nothing when the save dialog is cancelled', async () => {
    const calls = mockBackend({
      list_projects: () => [project()],
      list_runs: () => [run({ id: 2 })],
      'plugin:dialog|save': () => null,
    });
    app.selectProject(1);
    await app.refreshProjects();
    render(Export);
    await waitFor(() => expect((screen.getByTestId('export-run') as HTMLSelectElement).value).toBe('2'));
    await fireEvent.click(screen.getByTestId('export-button'));
    await waitFor(() => expect(callsOf(calls, 'plugin:dialog|save')).toHaveLength(1));
    expect(callsOf(calls, 'export_lora')).toHaveLength(0);
    expect(screen.queryByTestId('export-result')).toBeNull();
  });
});
