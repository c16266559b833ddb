import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import type { BaseModel } from '../lib/types';
import { project } from '../test/fixtures';
import { callsOf, mockBackend } from '../test/ipc';
import BaseModelScreen from './BaseModel.svelte';

const sd15: BaseModel = { id: 2, name: 'v1-5', path: '/m/v1-5.safetensors', kind: 'single_file', architecture: 'SD 1.x', resolution: 512 };
const world: BaseModel = { id: 7, name: 'Likeness world', path: '/opt/world-sd', kind: 'builtin', architecture: 'built-in world', resolution: 64 };
const sd2: BaseModel = { id: 9, name: 'sd2', path: '/m/sd2', kind: 'diffusers', architecture: 'SD 2.x v-prediction', resolution: 768 };

describe('Base model screen', () => {
  it('lists built-in models first with their architecture, and chooses one for the project', async () => {
    let models = [sd15, world];
    const calls = mockBackend({
      list_projects: () => [project()],
      list_base_models: () => models,
      'plugin:dialog|open': () => '/m/sd2',
      add_base_model: () => {
        models = [...models, sd2];
        return sd2;
      },
    });
    app.selectProject(1);
    await app.refreshProjects();
    render(BaseModelScreen);
    await waitFor(() => expect(screen.getAllByTestId('model-item')).toHaveLength(2));
    const items = screen.getAllByTestId('model-item');
    expect(items[0].textContent).toContain('Likeness world');
    expect(items[0].textContent).toContain('built-in world · 64 px');
    expect(items[1].textContent).toContain('SD 1.x · 512 px');
    // No choice yet: the built-in one is taken.
    await waitFor(() => expect(app.baseModelFor(1)).toBe(7));

    await fireEvent.click(within(items[1]).getByRole('radio'));
    expect(app.baseModelFor(1)).toBe(2);
    expect(JSON.parse(localStorage.getItem('likeness.baseModelByProject')!)).toEqual({ 1: 2 });

    await fireEvent.click(screen.getByTestId('add-model-folder'));
    await waitFor(() => expect(callsOf(calls, 'add_base_model')).toEqual([{ path: '/m/sd2' }]));
    expect(callsOf(calls, 'plugin:dialog|open')[0].options.directory).toBe(true);
    await waitFor(() => expect(screen.getAllByTestId('model-item')).toHaveLength(3));
    expect(app.baseModelFor(1)).toBe(9);
  });
});
