import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import App from '../App.svelte';
import { app } from '../lib/app.svelte';
import { project } from '../test/fixtures';
import { callsOf, mockBackend } from '../test/ipc';
import Projects from './Projects.svelte';

describe('Projects screen', () => {
  it('lists the projects list_projects returns, with their cover thumbnails', async () => {
    mockBackend({
      list_projects: () => [
        project(),
        project({ id: 2, name: 'Mug', className: 'mug', photoCount: 1, coverThumb: null }),
      ],
    });
    render(Projects);
    const cards = await screen.findAllByTestId('project-card');
    expect(cards).toHaveLength(2);
    expect(within(cards[0]).getByTestId('project-name').textContent).toBe('Rex');
    expect(within(cards[1]).getByTestId('project-name').textContent).toBe('Mug');
    expect(cards[0].querySelector('img')?.getAttribute('src')).toMatch(
      /^(likeness:\/\/localhost|http:\/\/likeness\.localhost)\/projects\/1\/photos\/thumb-1\.png$/,
    );
    expect(within(cards[1]).getByText(/1 photo\b/)).toBeTruthy();
  });

  it('shows the empty state when there is no project', async () => {
    mockBackend({ list_projects: () => [] });
    render(Projects);
    expect(await screen.findByText('No projects yet — create one, or open the demo project.')).toBeTruthy();
  });

  it('creates a project with camelCase arguments and the default token', async () => {
    let listed = [project({ id: 1, name: 'Old' })];
    const calls = mockBackend({
      list_projects: () => listed,
      create_project: (args) => {
        const made = project({ id: 2, name: args.name, token: args.token, className: args.className, photoCount: 0 });
        listed = [...listed, made];
        return made;
      },
    });
    render(Projects);
    await screen.findAllByTestId('project-card');
    const button = screen.getByTestId('create-project-button') as HTMLButtonElement;
    expect(button.disabled).toBe(true);
    expect((screen.getByTestId('create-project-token') as HTMLInputElement).value).toBe('sks');

    await fireEvent.input(screen.getByTestId('create-project-name'), { target: { value: '  Rex ' } });
    await fireEvent.input(screen.getByTestId('create-project-class'), { target: { value: 'dog' } });
    expect(button.disabled).toBe(false);
    await fireEvent.click(button);

    await waitFor(() => expect(screen.getAllByTestId('project-card')).toHaveLength(2));
    const createArgs = callsOf(calls, 'create_project');
    expect(createArgs).toEqual([{ name: 'Rex', token: 'sks', className: 'dog' }]);
    expect(app.currentProjectId).toBe(2);
  });

  it('deletes only after confirmation', async () => {
    let listed = [project()];
    const calls = mockBackend({
      list_projects: () => listed,
      delete_project: () => {
        listed = [];
        return null;
      },
    });
    render(Projects);
    await fireEvent.click(await screen.findByTestId('project-delete'));
    expect(callsOf(calls, 'delete_project')).toHaveLength(0);
    expect(screen.getByRole('dialog')).toBeTruthy();
    await fireEvent.click(screen.getByTestId('delete-confirm'));
    await waitFor(() => expect(callsOf(calls, 'delete_project')).toEqual([{ id: 1 }]));
    expect(await screen.findByText(/No projects yet/)).toBeTruthy();
  });

  it('closes the confirmation with Escape without deleting', async () => {
    const calls = mockBackend({ list_projects: () => [project()] });
    render(Projects);
    await fireEvent.click(await screen.findByTestId('project-delete'));
    await fireEvent.keyDown(window, { key: 'Escape' });
    expect(screen.queryByRole('dialog')).toBeNull();
    expect(callsOf(calls, 'delete_project')).toHaveLength(0);
  });

  it('renames through rename_project', async () => {
    const calls = mockBackend({ list_projects: () => [project()], rename_project: (a) => project({ name: a.name }) });
    render(Projects);
    await fireEvent.click(await screen.findByTestId('project-rename'));
    await fireEvent.input(screen.getByTestId('rename-input'), { target: { value: 'Rexy' } });
    await fireEvent.click(screen.getByTestId('rename-confirm'));
    await waitFor(() => expect(callsOf(calls, 'rename_project')).toEqual([{ id: 1, name: 'Rexy' }]));
  });
});

describe('error bar', () => {
  it('shows a failed invoke as one dismissible line', async () => {
    mockBackend({
      list_jobs: () => [],
      list_projects: () => Promise.reject('cannot open workspace /home/a/Likeness: database is locked\nmore detail'),
    });
    render(App);
    const bar = await screen.findByTestId('error-bar');
    expect(bar.textContent).toContain('cannot open workspace /home/a/Likeness: database is locked');
    expect(bar.textContent).not.toContain('more detail');
    await fireEvent.click(within(bar).getByRole('button', { name: 'Dismiss error' }));
    expect(screen.queryByTestId('error-bar')).toBeNull();
  });

  it('shows the error of a failed create', async () => {
    mockBackend({
      list_jobs: () => [],
      list_projects: () => [],
      create_project: () => {
        throw 'a project named Rex already exists';
      },
    });
    render(App);
    await fireEvent.input(await screen.findByTestId('create-project-name'), { target: { value: 'Rex' } });
    await fireEvent.input(screen.getByTestId('create-project-class'), { target: { value: 'dog' } });
    await fireEvent.click(screen.getByTestId('create-project-button'));
    expect((await screen.findByTestId('error-bar')).textContent).toContain('a project named Rex already exists');
  });
});
