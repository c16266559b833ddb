// A fake backend for working on the UI in a plain browser: `npm run dev`, then open
// http://localhost:1420/mock.html. Not part of the build (only index.html is). Pictures do not
// load (the likeness scheme exists only inside Tauri); everything else behaves like the contract.

import type { Channel } from '@tauri-apps/api/core';
import { mockIPC, mockWindows } from '@tauri-apps/api/mocks';
import type { BaseModel, Job, JobEvent, Photo, Project, Run } from '../lib/types';

const now = () => Math.floor(Date.now() / 1000);
let nextId = 100;

const projects: Project[] = [
  { id: 1, name: 'Rex', token: 'sks', className: 'dog', createdAt: now() - 86400, photoCount: 6, coverThumb: 'p/1/t1.png' },
  { id: 2, name: 'Star creature', token: 'sks', className: 'creature', createdAt: now() - 3600, photoCount: 2, coverThumb: null },
];
const photos: Photo[] = Array.from({ length: 6 }, (_, i) => ({
  id: i + 1,
  projectId: 1,
  sourceName: `IMG_20${i}.jpg`,
  width: 3024,
  height: 4032,
  thumb: `p/1/t${i + 1}.png`,
  normalized: `p/1/n${i + 1}.png`,
  flags: { nearDuplicateOf: i === 4 ? 3 : null, blurry: i === 5 },
}));
const models: BaseModel[] = [
  { id: 1, name: 'Likeness world', path: '/opt/likeness/models/world-sd', kind: 'builtin', architecture: 'built-in world', resolution: 64 },
  { id: 2, name: 'v1-5-pruned-emaonly', path: '/home/me/models/v1-5-pruned-emaonly.safetensors', kind: 'single_file', architecture: 'SD 1.x', resolution: 512 },
];
const runs: Run[] = [
  { id: 2, projectId: 1, kind: 'dreambooth', parentRunId: null, stage: null, label: 'DreamBooth', status: 'done', steps: 400, createdAt: now() - 7200 },
  { id: 3, projectId: 1, kind: 'dpo', parentRunId: 2, stage: 1, label: 'DPO 1', status: 'done', steps: 500, createdAt: now() - 3600 },
];
const jobs: Job[] = [];
/** The columns (null = the base model) that have seed-matched pictures; DPO 1 has none until a gallery job makes them. */
const galleried = new Set<number | null>([null, 2]);
const galleryPrompts = ['a photo of sks dog on the beach', 'a sks dog wearing a red hat', 'a painting of sks dog in the style of Monet'];

function simulate(job: Job, channel: Channel<JobEvent>, kind: 'dreambooth' | 'dpo') {
  const send = (e: JobEvent) => (channel as unknown as { onmessage: (e: JobEvent) => void }).onmessage(e);
  const total = job.total;
  let step = 0;
  send({ event: 'started', jobId: job.id, total, phase: kind === 'dpo' ? 'stage 1: training' : 'training' });
  if (kind === 'dpo') {
    const points = Array.from({ length: 24 }, (_, i) => ({
      prompt: `prompt ${i % 4}`,
      is: 0.55 + Math.random() * 0.2,
      ts: 0.22 + Math.random() * 0.1,
      sample: Math.floor(i / 4),
    }));
    send({
      event: 'candidates',
      jobId: job.id,
      stage: 1,
      points,
      pairs: [0, 1, 2, 3].map((p) => ({ prompt: `prompt ${p}`, better: 0, worse: 1 })),
    });
  }
  const timer = setInterval(() => {
    step += 1;
    job.step = step;
    const loss = 0.2 * Math.exp(-step / 60) + 0.05 + Math.random() * 0.03;
    send({ event: 'step', jobId: job.id, step, total, loss, lr: 1e-4, etaSeconds: (total - step) * 0.1, accuracy: kind === 'dpo' ? Math.min(1, 0.5 + step / 200) : undefined });
    if (step % 25 === 0) send({ event: 'preview', jobId: job.id, step, images: ['s/0.png', 's/1.png', 's/2.png', 's/3.png'] });
    if (step >= total || job.status === 'cancelled') {
      clearInterval(timer);
      if (job.status === 'cancelled') send({ event: 'cancelled', jobId: job.id });
      else {
        job.status = 'done';
        send({ event: 'finished', jobId: job.id, runId: 2 });
      }
    }
  }, 100);
}

function simulateGallery(job: Job, channel: Channel<JobEvent>, columns: (number | null)[]) {
  const send = (e: JobEvent) => (channel as unknown as { onmessage: (e: JobEvent) => void }).onmessage(e);
  send({ event: 'started', jobId: job.id, total: job.total, phase: 'loading models' });
  let done = 0;
  const timer = setInterval(() => {
    done += 1;
    job.step = done;
    send({ event: 'phase', jobId: job.id, phase: 'gallery images', done, total: job.total });
    if (done >= job.total) {
      clearInterval(timer);
      for (const c of columns) galleried.add(c);
      job.status = 'done';
      send({ event: 'finished', jobId: job.id, runId: null });
    }
  }, 150);
}

// Open the first project unless the page was used before.
if (localStorage.getItem('likeness.currentProject') === null) localStorage.setItem('likeness.currentProject', '1');

mockWindows('main');
mockIPC((cmd, raw) => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const a = (raw ?? {}) as any;
  switch (cmd) {
    case 'workspace_info':
      return { dir: '/home/me/Likeness', schemaVersion: 1 };
    case 'list_projects':
      return projects;
    case 'create_project': {
      const p = { id: nextId++, name: a.name, token: a.token, className: a.className, createdAt: now(), photoCount: 0, coverThumb: null };
      projects.push(p);
      return p;
    }
    case 'rename_project':
      return Object.assign(projects.find((p) => p.id === a.id)!, { name: a.name });
    case 'delete_project':
      projects.splice(projects.findIndex((p) => p.id === a.id), 1);
      return null;
    case 'list_photos':
      return photos.filter((p) => p.projectId === a.projectId);
    case 'import_photos':
      return { imported: [], skipped: a.paths.map((path: string) => ({ path, reason: 'not an image' })) };
    case 'list_builtin_concepts':
      return [
        { name: 'star-creature', description: 'A five-armed star creature of the built-in world', classNoun: 'creature' },
        { name: 'red-dog', description: 'A red dog of the built-in world', classNoun: 'dog' },
      ];
    case 'import_builtin_concept': {
      const added = Array.from({ length: 4 }, (_, i): Photo => ({
        id: nextId++,
        projectId: a.projectId,
        sourceName: `${a.concept}-${i}.png`,
        width: 512,
        height: 512,
        thumb: `p/${a.projectId}/b${i}.png`,
        normalized: `p/${a.projectId}/bn${i}.png`,
        flags: { nearDuplicateOf: null, blurry: false },
      }));
      photos.push(...added);
      const p = projects.find((x) => x.id === a.projectId);
      if (p) p.photoCount += added.length;
      return { imported: added.map((photo) => ({ source: photo.sourceName, photo, notes: [] })), skipped: [] };
    }
    case 'crop_preview':
      return `crops/${a.photoId}.png`;
    case 'list_base_models':
      return models;
    case 'default_dreambooth_settings':
      return { baseModelId: a.baseModelId, steps: 400, lr: 1e-4, loraRank: 4, loraAlpha: 4, resolution: 512, batch: 1, priorPreservation: false, trainTextEncoder: false, seed: 0, sampleEvery: 100, checkpointEvery: 100, instancePrompt: null };
    case 'start_dreambooth':
    case 'start_dpo': {
      const kind = cmd === 'start_dpo' ? 'dpo' : 'dreambooth';
      const job: Job = { id: nextId++, kind, projectId: a.projectId, runId: null, status: 'running', step: 0, total: kind === 'dpo' ? 200 : 400, message: null, createdAt: now() };
      jobs.push(job);
      setTimeout(() => simulate(job, a.onEvent, kind), 50);
      return job;
    }
    case 'start_gallery': {
      const columns: (number | null)[] = [null, ...a.runIds];
      const total = galleryPrompts.length * columns.length;
      const job: Job = { id: nextId++, kind: 'gallery', projectId: a.projectId, runId: null, status: 'queued', step: 0, total, message: null, createdAt: now() };
      jobs.push(job);
      setTimeout(() => simulateGallery(job, a.onEvent, columns), 50);
      return job;
    }
    case 'list_jobs':
      return jobs;
    case 'cancel_job': {
      const job = jobs.find((j) => j.id === a.jobId);
      if (job) job.status = 'cancelled';
      return null;
    }
    case 'list_runs':
      return runs.filter((r) => r.projectId === a.projectId);
    case 'loss_history':
      return Array.from({ length: 400 }, (_, i) => ({ step: i + 1, loss: 0.2 * Math.exp(-i / 80) + 0.05 + Math.random() * 0.03 }));
    case 'compare': {
      const prompts = galleryPrompts;
      const cols = [{ runId: null, label: 'Base' }, ...runs.filter((r) => a.runIds.includes(r.id)).map((r) => ({ runId: r.id, label: r.label }))];
      if (!cols.every((c) => galleried.has(c.runId))) {
        throw `no seed-matched galleries of ${cols.map((c) => c.label).join(', ')} (the same prompts and seeds for each); make them with a gallery job of these columns`;
      }
      return {
        prompts,
        columns: cols,
        cells: prompts.flatMap((_, p) => cols.map((_, c) => ({ prompt: p, column: c, seed: 0, image: `g/${p}-${c}.png`, is: 0.5 + 0.1 * c, ts: 0.3 - 0.01 * c }))),
      };
    }
    case 'scatter':
      return [
        { runId: null, label: 'Base', is: 0.52, ts: 0.31, seIs: 0.01, seTs: 0.006 },
        { runId: 2, label: 'DreamBooth', is: 0.74, ts: 0.27, seIs: 0.012, seTs: 0.007 },
        { runId: 3, label: 'DPO 1', is: 0.72, ts: 0.295, seIs: 0.011, seTs: 0.006 },
      ].filter((p) => galleried.has(p.runId));
    case 'export_lora':
      return { path: a.path, bytes: 3_276_800 };
    case 'plugin:dialog|save':
      return `/home/me/${a.options.defaultPath}`;
    case 'plugin:dialog|open':
      return null;
    default:
      if (cmd.startsWith('plugin:event|')) return 0;
      throw `mock backend: no command ${cmd}`;
  }
});

await import('../main');

// mock.html?autostart=dreambooth#/dreambooth presses that screen's Start button (for screenshots).
const autostart = new URLSearchParams(location.search).get('autostart');
if (autostart) {
  setTimeout(() => document.querySelector<HTMLButtonElement>(`[data-testid="${autostart}-start"]`)?.click(), 500);
}
