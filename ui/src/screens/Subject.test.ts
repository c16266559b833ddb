import { emit as emitTauriEvent } from '@tauri-apps/api/event';
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import type { ImportReport, Photo } from '../lib/types';
import { photo, project } from '../test/fixtures';
import { callsOf, mockBackend } from '../test/ipc';
import Subject from './Subject.svelte';

function setup(initial: Photo[]) {
  let photos = initial;
  const report: ImportReport = {
    imported: [{ source: '/home/a/new.jpg', photo: photo(10, { sourceName: 'new.jpg' }), notes: ['rotated upright (EXIF)'] }],
    skipped: [
      { path: '/home/a/notes.txt', reason: 'not an image' },
      { path: '/home/a/tiny.png', reason: 'too small: 100x80, the shorter side must be at least 256 px' },
    ],
  };
  const calls = mockBackend({
    list_projects: () => [project({ photoCount: photos.length })],
    list_photos: () => photos,
    'plugin:dialog|open': (a) => (a.options.directory ? '/home/a/folder' : ['/home/a/new.jpg', '/home/a/notes.txt', '/home/a/tiny.png']),
    import_photos: () => {
      photos = [...photos, report.imported[0].photo];
      return report;
    },
    remove_photo: (a) => {
      photos = photos.filter((p) => p.id !== a.photoId);
      return null;
    },
    crop_preview: (a) => `projects/1/crops/${a.photoId}-${a.resolution}.png`,
  });
  return calls;
}

async function openProject() {
  app.selectProject(1);
  await app.refreshProjects();
}

describe('Subject screen', () => {
  it('shows the photos with badges for flagged ones, and warns under 3 photos', async () => {
    setup([photo(1), photo(2, { flags: { nearDuplicateOf: 1, blurry: true } })]);
    await openProject();
    render(Subject);
    const grid = await screen.findByTestId('photo-grid');
    await waitFor(() => expect(within(grid).getAllByTestId('photo-item')).toHaveLength(2));
    const flags = within(grid).getAllByTestId('photo-flag').map((b) => b.textContent);
    expect(flags).toEqual(['Near-duplicate of IMG_1.jpg', 'Blurry']);
    expect(screen.getByTestId('few-photos').textContent).toContain('Only 2');
  });

  it('imports the files chosen in the dialog and reports what was skipped and why', async () => {
    const calls = setup([photo(1), photo(2), photo(3)]);
    await openProject();
    render(Subject);
    await waitFor(() => expect(screen.getAllByTestId('photo-item')).toHaveLength(3));
    expect(screen.queryByTestId('few-photos')).toBeNull();
    await fireEvent.click(screen.getByTestId('add-photos'));
    const report = await screen.findByTestId('import-report');
    expect(callsOf(calls, 'import_photos')).toEqual([
      { projectId: 1, paths: ['/home/a/new.jpg', '/home/a/notes.txt', '/home/a/tiny.png'] },
    ]);
    const open = callsOf(calls, 'plugin:dialog|open')[0].options;
    expect(open.multiple).toBe(true);
    expect(open.filters[0].extensions).toContain('jpg');
    expect(report.textContent).toContain('Imported 1 photo');
    const skipped = within(report).getAllByTestId('import-skipped').map((li) => li.textContent);
    expect(skipped).toEqual([
      '/home/a/notes.txt — not an image',
      '/home/a/tiny.png — too small: 100x80, the shorter side must be at least 256 px',
    ]);
    expect(report.textContent).toContain('rotated upright (EXIF)');
    await waitFor(() => expect(screen.getAllByTestId('photo-item')).toHaveLength(4));
  });

  it('imports a folder', async () => {
    const calls = setup([]);
    await openProject();
    render(Subject);
    await fireEvent.click(await screen.findByTestId('add-folder'));
    await waitFor(() => expect(callsOf(calls, 'import_photos')).toEqual([{ projectId: 1, paths: ['/home/a/folder'] }]));
    expect(callsOf(calls, 'plugin:dialog|open')[0].options.directory).toBe(true);
  });

  it('imports files dropped on the window', async () => {
    const calls = setup([]);
    await openProject();
    render(Subject);
    await screen.findByTestId('photo-grid');
    // The four drag-and-drop listeners are registered (event plugin calls are answered by the mock itself).
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    await waitFor(() => expect((window as any).__TAURI_INTERNALS__.callbacks.size).toBeGreaterThanOrEqual(4));
    await emitTauriEvent('tauri://drag-drop', { paths: ['/drop/a.jpg', '/drop/b.png'], position: { x: 1, y: 1 } });
    await waitFor(() =>
      expect(callsOf(calls, 'import_photos')).toEqual([{ projectId: 1, paths: ['/drop/a.jpg', '/drop/b.png'] }]),
    );
    expect(await screen.findByTestId('import-report')).toBeTruthy();
  });

  it('shows the training crop of a photo and removes photos', async () => {
    const calls = setup([photo(1), photo(2)]);
    await openProject();
    app.setBaseModel(1, 5);
    render(Subject);
    await waitFor(() => expect(screen.getAllByTestId('photo-item')).toHaveLength(2));
    await fireEvent.click(screen.getByRole('button', { name: 'Show the training crop of IMG_1.jpg' }));
    const crop = await screen.findByTestId('crop-preview');
    expect(crop.getAttribute('src')).toMatch(/projects\/1\/crops\/1-512\.png$/);
    expect(callsOf(calls, 'crop_preview')).toEqual([{ photoId: 1, resolution: 512 }]);
    await fireEvent.keyDown(window, { key: 'Escape' });
    expect(screen.queryByTestId('crop-preview')).toBeNull();

    await fireEvent.click(screen.getByRole('button', { name: 'Remove IMG_2.jpg' }));
    await waitFor(() => expect(screen.getAllByTestId('photo-item')).toHaveLength(1));
    expect(callsOf(calls, 'remove_photo')).toEqual([{ photoId: 2 }]);
  });
});
