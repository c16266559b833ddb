import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import { project, run } from '../test/fixtures';
import { callsOf, mockBackend, type Handler } from '../test/ipc';
import Export from './Export.svelte';

const RUNS = () => [
  run({ id: 2 }),
  run({ id: 3, kind: 'dpo', label: 'DPO 1' }),
  run({ id: 4, label: 'DPO 2', status: 'running' }),
];

async function setup(over: Record<string, Handler> = {}, dir = '/home/a/Likeness') {
  const calls = mockBackend({
    workspace_info: () => ({ dir, schemaVersion: 1 }),
    list_projects: () => [project()],
    list_runs: () => RUNS(),
    export_lora: (a) => ({ path: a.path, bytes: 3 * 1024 * 1024 }),
    ...over,
  });
  app.selectProject(1);
  await app.refreshProjects();
  render(Export);
  await waitFor(() => expect((screen.getByTestId('export-run') as HTMLSelectElement).value).toBe('3'));
  return calls;
}

const pathField = () => screen.getByTestId('export-path') as HTMLInputElement;
const exportButton = () => screen.getByTestId('export-button') as HTMLButtonElement;

describe('Export screen', () => {
  it('defaults the destination to <workspace>/exports/<project>-<run>.safetensors and follows the run', async () => {
    await setup();
    await waitFor(() => expect(pathField().value).toBe('/home/a/Likeness/exports/Rex-DPO-1.safetensors'));
    expect(screen.getByLabelText('Save to')).toBe(pathField());
    expect(screen.getByText(/<lora:Rex-DPO-1:1>/)).toBeTruthy();
    await fireEvent.change(screen.getByTestId('export-run'), { target: { value: '2' } });
    await waitFor(() => expect(pathField().value).toBe('/home/a/Likeness/exports/Rex-DreamBooth.safetensors'));
  });

  it('sanitises the default file name and joins with backslashes for a Windows workspace', async () => {
    await setup(
      {
        list_projects: () => [project({ name: 'Mon chien: Rëx?' })],
        list_runs: () => [run({ id: 3, label: 'DPO 1/2' })],
      },
      'C:\\Users\\a\\Likeness\\',
    );
    await waitFor(() =>
      expect(pathField().value).toBe('C:\\Users\\a\\Likeness\\exports\\Mon-chien--Rëx--DPO-1-2.safetensors'),
    );
  });

  it('exports the newest finished run to the path typed in the field, appending .safetensors', async () => {
    const calls = await setup();
    await waitFor(() => expect(pathField().value).not.toBe(''));
    await fireEvent.change(screen.getByTestId('export-format'), { target: { value: 'diffusers' } });
    await fireEvent.input(pathField(), { target: { value: '/tmp/out/my lora' } });
    await fireEvent.click(exportButton());
    const result = await screen.findByTestId('export-result');
    expect(callsOf(calls, 'export_lora')).toEqual([
      { runId: 3, format: 'diffusers', path: '/tmp/out/my lora.safetensors' },
    ]);
    expect(callsOf(calls, 'plugin:dialog|save')).toHaveLength(0);
    expect(pathField().value).toBe('/tmp/out/my lora.safetensors');
    expect(result.textContent).toContain('3.0 MB');
    expect(result.textContent).toContain('/tmp/out/my lora.safetensors');
  });

  it('exports to the default path as is', async () => {
    const calls = await setup();
    await waitFor(() => expect(exportButton().disabled).toBe(false));
    await fireEvent.click(exportButton());
    const result = await screen.findByTestId('export-result');
    expect(callsOf(calls, 'export_lora')).toEqual([
      { runId: 3, format: 'kohya', path: '/home/a/Likeness/exports/Rex-DPO-1.safetensors' },
    ]);
    expect(result.textContent).toContain('/home/a/Likeness/exports/Rex-DPO-1.safetensors');
  });

  it('disables Export while the field is empty', async () => {
    const calls = await setup();
    await waitFor(() => expect(exportButton().disabled).toBe(false));
    await fireEvent.input(pathField(), { target: { value: '   ' } });
    expect(exportButton().disabled).toBe(true);
    await fireEvent.click(exportButton());
    expect(callsOf(calls, 'export_lora')).toHaveLength(0);
  });

  it('Choose… fills the field from the save dialog, and a cancelled dialog leaves it', async () => {
    let answer: string | null = '/home/a/loras/picked.safetensors';
    const calls = await setup({ 'plugin:dialog|save': () => answer });
    await waitFor(() => expect(pathField().value).toBe('/home/a/Likeness/exports/Rex-DPO-1.safetensors'));
    await fireEvent.click(screen.getByTestId('export-choose'));
    await waitFor(() => expect(pathField().value).toBe('/home/a/loras/picked.safetensors'));
    const options = callsOf(calls, 'plugin:dialog|save')[0].options;
    expect(options.defaultPath).toBe('/home/a/Likeness/exports/Rex-DPO-1.safetensors');
    expect(options.filters[0].extensions).toEqual(['safetensors']);
    expect(callsOf(calls, 'export_lora')).toHaveLength(0);

    answer = null;
    await fireEvent.click(screen.getByTestId('export-choose'));
    await waitFor(() => expect(callsOf(calls, 'plugin:dialog|save')).toHaveLength(2));
    expect(pathField().value).toBe('/home/a/loras/picked.safetensors');

    // A chosen path stays when another run is picked; Export writes there.
    await fireEvent.change(screen.getByTestId('export-run'), { target: { value: '2' } });
    expect(pathField().value).toBe('/home/a/loras/picked.safetensors');
    await fireEvent.click(exportButton());
    await screen.findByTestId('export-result');
    expect(callsOf(calls, 'export_lora')).toEqual([
      { runId: 2, format: 'kohya', path: '/home/a/loras/picked.safetensors' },
    ]);
  });

  it('leaves the field empty when the workspace folder is unknown', async () => {
    const calls = await setup({ workspace_info: () => Promise.reject('no workspace') });
    await waitFor(() => expect(app.error).toBe('no workspace'));
    expect(pathField().value).toBe('');
    expect(exportButton().disabled).toBe(true);
    expect(callsOf(calls, 'export_lora')).toHaveLength(0);
  });
});
