import { Channel } from '@tauri-apps/api/core';
import { describe, expect, it } from 'vitest';
import { job } from '../test/fixtures';
import { callsOf, emit, mockBackend } from '../test/ipc';
import { errorLine, eventChannel, imageUrl, isNoGalleryError, startGallery } from './api';
import { app } from './app.svelte';
import type { JobEvent } from './types';

const LINUX = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/605.1.15 (KHTML, like Gecko)';
const MAC = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)';
const WINDOWS = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Edg/120.0';

describe('imageUrl', () => {
  it('uses the likeness scheme on Linux and macOS', () => {
    expect(imageUrl('projects/1/photos/thumb-0001.png', LINUX)).toBe(
      'likeness://localhost/projects/1/photos/thumb-0001.png',
    );
    expect(imageUrl('a/b.png', MAC)).toBe('likeness://localhost/a/b.png');
  });

  it('uses http://likeness.localhost on Windows', () => {
    expect(imageUrl('projects/1/a.png', WINDOWS)).toBe('http://likeness.localhost/projects/1/a.png');
  });

  it('encodes each segment, keeping the slashes', () => {
    expect(imageUrl('projects/2/my photo #1?.png', LINUX)).toBe(
      'likeness://localhost/projects/2/my%20photo%20%231%3F.png',
    );
    expect(imageUrl('runs/Tëst 日本/100%.png', LINUX)).toBe(
      'likeness://localhost/runs/T%C3%ABst%20%E6%97%A5%E6%9C%AC/100%25.png',
    );
  });

  it('takes backslashes as separators and drops empty segments', () => {
    expect(imageUrl('runs\\3\\x y.png', WINDOWS)).toBe('http://likeness.localhost/runs/3/x%20y.png');
    expect(imageUrl('/a//b.png', LINUX)).toBe('likeness://localhost/a/b.png');
  });

  it('reads the user agent of the running webview by default', () => {
    expect(imageUrl('a.png')).toBe(
      navigator.userAgent.includes('Windows') ? 'http://likeness.localhost/a.png' : 'likeness://localhost/a.png',
    );
  });
});

describe('errorLine', () => {
  it('keeps the first non-empty line of a string error', () => {
    expect(errorLine('cannot read photo.jpg: denied\nbacktrace…')).toBe('cannot read photo.jpg: denied');
    expect(errorLine('\n  oops  ')).toBe('oops');
  });

  it('reads Error objects and others', () => {
    expect(errorLine(new Error('boom'))).toBe('boom');
    expect(errorLine({ code: 3 })).toBe('{"code":3}');
    expect(errorLine('')).toBe('Unknown error');
  });
});

describe('isNoGalleryError', () => {
  it('recognises the compare failures that a gallery job would answer', () => {
    expect(isNoGalleryError('project 3 has no gallery yet; make one with a gallery job')).toBe(true);
    expect(
      isNoGalleryError(
        'no seed-matched galleries of Base model, DreamBooth (the same prompts and seeds for each); make them with a gallery job of these columns',
      ),
    ).toBe(true);
    expect(isNoGalleryError(new Error('project 3 has no gallery yet; make one with a gallery job'))).toBe(true);
  });

  it('leaves other failures, those that mention galleries included, to the error bar', () => {
    expect(isNoGalleryError("likeness.db: database error: a gallery's settings are unreadable: EOF")).toBe(false);
    expect(isNoGalleryError('no run with id 7')).toBe(false);
    expect(isNoGalleryError('run 4 belongs to project 2, not 1')).toBe(false);
    expect(isNoGalleryError(null)).toBe(false);
  });
});

describe('startGallery', () => {
  it('invokes start_gallery with camelCase arguments and its event channel', async () => {
    const calls = mockBackend({ start_gallery: () => job({ id: 12, kind: 'gallery', total: 6 }) });
    const events: JobEvent[] = [];
    const onEvent = eventChannel((e) => events.push(e));
    const started = await startGallery({ projectId: 1, runIds: [2, 3], onEvent });
    expect(started.kind).toBe('gallery');
    expect(started.id).toBe(12);
    expect(calls.map((c) => c.cmd)).toEqual(['start_gallery']);
    const args = callsOf(calls, 'start_gallery')[0];
    expect(Object.keys(args).sort()).toEqual(['onEvent', 'projectId', 'runIds']);
    expect(args.projectId).toBe(1);
    expect(args.runIds).toEqual([2, 3]);
    expect(args.onEvent).toBeInstanceOf(Channel);
    emit(args.onEvent, { event: 'phase', jobId: 12, phase: 'gallery images', done: 1, total: 6 });
    emit(args.onEvent, { event: 'finished', jobId: 12, runId: null });
    expect(events.map((e) => e.event)).toEqual(['phase', 'finished']);
  });

  it('rejects with the backend\'s line', async () => {
    mockBackend({
      start_gallery: () => {
        throw 'runs/7/stage.safetensors: the DPO stage is not finished';
      },
    });
    await expect(startGallery({ projectId: 1, runIds: [7], onEvent: eventChannel(() => {}) })).rejects.toBe(
      'runs/7/stage.safetensors: the DPO stage is not finished',
    );
  });

  it('is tracked as a gallery job of the project by the app state, its events folded in', async () => {
    let channel: Channel<JobEvent> | null = null;
    mockBackend({
      start_gallery: (a) => {
        channel = a.onEvent;
        return job({ id: 12, kind: 'gallery', total: 6 });
      },
    });
    const started = await app.startGallery(1, [2]);
    expect(started?.id).toBe(12);
    expect(app.latestJob(1, 'gallery')?.jobId).toBe(12);
    emit(channel!, { event: 'started', jobId: 12, total: 6, phase: 'loading models' });
    emit(channel!, { event: 'phase', jobId: 12, phase: 'gallery images', done: 4, total: 6 });
    expect(app.jobs['12'].phaseProgress).toEqual({ done: 4, total: 6 });
    emit(channel!, { event: 'finished', jobId: 12, runId: null });
    expect(app.jobs['12'].status).toBe('done');
    expect(app.jobs['12'].runId).toBeNull();
  });

  it('puts a failure to start in the error bar', async () => {
    mockBackend({
      start_gallery: () => {
        throw 'no project with id 9';
      },
    });
    expect(await app.startGallery(9, [])).toBeUndefined();
    expect(app.error).toBe('no project with id 9');
    expect(app.latestJob(9, 'gallery')).toBeNull();
  });
});
