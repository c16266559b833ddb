import { emit as emitTauriEvent } from '@tauri-apps/api/event';
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import { app } from '../lib/app.svelte';
import type { ImportReport, Photo } from '../lib/types';
import { photo, project } from '../test/fixtures';
import { callsOf, mockBackend, type Handler } from '../test/ipc';
import Subject from './Subject.svelte';

function setup(initial: Photo[], over: Record<string, Handler> = {}) {
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
    ...over,
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

  describe('built-in subjects', () => {
    const CONCEPTS = [
      { name: 'star-creature', description: 'A star-shaped creature', classNoun: 'creature' },
      { name: 'red-dog', description: 'A red dog', classNoun: 'dog' },
    ];

    it('imports the chosen built-in subject, shows the report and refreshes the grid', async () => {
      let photos: Photo[] = [];
      const rendered = [photo(21, { sourceName: 'red-dog-0.png' }), photo(22, { sourceName: 'red-dog-1.png' })];
      const calls = setup([], {
        list_photos: () => photos,
        list_builtin_concepts: () => CONCEPTS,
        import_builtin_concept: () => {
          photos = rendered;
          return {
            imported: rendered.map((p) => ({ source: `builtin:${p.sourceName}`, photo: p, notes: [] })),
            skipped: [{ path: 'builtin:red-dog-2.png', reason: 'near-duplicate' }],
          } satisfies ImportReport;
        },
      });
      await openProject();
      render(Subject);
      const buttons = await screen.findAllByTestId('builtin-concept');
      expect(buttons.map((b) => b.getAttribute('data-concept'))).toEqual(['star-creature', 'red-dog']);
      expect(screen.getByText('Or start from a built-in subject:')).toBeTruthy();
      const button = buttons[1];
      expect(button.tagName).toBe('BUTTON');
      expect(button.getAttribute('title')).toBe('A red dog');
      await fireEvent.click(button);
      const report = await screen.findByTestId('import-report');
      expect(callsOf(calls, 'import_builtin_concept')).toEqual([{ projectId: 1, concept: 'red-dog' }]);
      expect(callsOf(calls, 'import_photos')).toHaveLength(0);
      expect(report.textContent).toContain('Imported 2 photos');
      expect(within(report).getAllByTestId('import-skipped').map((li) => li.textContent)).toEqual([
        'builtin:red-dog-2.png — near-duplicate',
      ]);
      await waitFor(() => expect(screen.getAllByTestId('photo-item')).toHaveLength(2));
      expect(callsOf(calls, 'list_projects').length).toBeGreaterThanOrEqual(2);
    });

    it('shows a failed built-in import in the error bar', async () => {
      setup([], {
        list_builtin_concepts: () => CONCEPTS,
        import_builtin_concept: () => Promise.reject('rendering failed: out of memory\nbacktrace…'),
      });
      await openProject();
      render(Subject);
      await fireEvent.click((await screen.findAllByTestId('builtin-concept'))[0]);
      await waitFor(() => expect(app.error).toBe('rendering failed: out of memory'));
      expect(screen.queryByTestId('import-report')).toBeNull();
    });

    it('is hidden when there are no built-in subjects', async () => {
      const calls = setup([photo(1)], { list_builtin_concepts: () => [] });
      await openProject();
      render(Subject);
      await waitFor(() => expect(screen.getAllByTestId('photo-item')).toHaveLength(1));
      await waitFor(() => expect(callsOf(calls, 'list_builtin_concepts')).toHaveLength(1));
      await Promise.resolve();
      expect(screen.queryByTestId('builtin-concept')).toBeNull();
      expect(screen.queryByText('Or start from a built-in subject:')).toBeNull();
    });

    it('is hidden, without an error, when the list cannot be had', async () => {
      const calls = setup([photo(1)], { list_builtin_concepts: () => Promise.reject('unknown command') });
      await openProject();
      render(Subject);
      await waitFor(() => expect(screen.getAllByTestId('photo-item')).toHaveLength(1));
      await waitFor(() => expect(callsOf(calls, 'list_builtin_concepts')).toHaveLength(1));
      await Promise.resolve();
      expect(screen.queryByTestId('builtin-concept')).toBeNull();
      expect(app.error).toBeNull();
    });
  });
});
