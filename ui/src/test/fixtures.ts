import type { CompareTable, DreamBoothSettings, Job, Photo, Project, Run } from '../lib/types';

export const project = (over: Partial<Project> = {}): Project => ({
  id: 1,
  name: 'Rex',
  token: 'sks',
  className: 'dog',
  createdAt: 1_700_000_000,
  photoCount: 5,
  coverThumb: 'projects/1/photos/thumb-1.png',
  ...over,
});

export const photo = (id: number, over: Partial<Photo> = {}): Photo => ({
  id,
  projectId: 1,
  sourceName: `IMG_${id}.jpg`,
  width: 1024,
  height: 768,
  thumb: `projects/1/photos/thumb-${id}.png`,
  normalized: `projects/1/photos/norm-${id}.png`,
  flags: { nearDuplicateOf: null, blurry: false },
  ...over,
});

export const settings = (over: Partial<DreamBoothSettings> = {}): DreamBoothSettings => ({
  baseModelId: 5,
  steps: 10,
  lr: 1e-4,
  loraRank: 4,
  loraAlpha: 4,
  resolution: 64,
  batch: 1,
  priorPreservation: false,
  trainTextEncoder: false,
  seed: 0,
  sampleEvery: 5,
  checkpointEvery: 5,
  instancePrompt: null,
  ...over,
});

export const job = (over: Partial<Job> = {}): Job => ({
  id: 9,
  kind: 'dreambooth',
  projectId: 1,
  runId: null,
  status: 'queued',
  step: 0,
  total: 10,
  message: null,
  createdAt: 1_700_000_100,
  ...over,
});

export const run = (over: Partial<Run> = {}): Run => ({
  id: 2,
  projectId: 1,
  kind: 'dreambooth',
  parentRunId: null,
  stage: null,
  label: 'DreamBooth',
  status: 'done',
  steps: 400,
  createdAt: 1_700_000_200,
  ...over,
});

/** `prompts` × (base + runs) cells, `seeds` seeds each. */
export function table(prompts: string[], runs: Run[], seeds = [0]): CompareTable {
  const columns = [{ runId: null, label: 'Base' }, ...runs.map((r) => ({ runId: r.id, label: r.label }))];
  const cells = prompts.flatMap((_, p) =>
    columns.flatMap((_, c) =>
      seeds.map((seed) => ({
        prompt: p,
        column: c,
        seed,
        image: `gallery/p${p}-c${c}-s${seed}.png`,
        is: 0.5 + c * 0.1,
        ts: 0.3 - c * 0.01,
      })),
    ),
  );
  return { prompts, columns, cells };
}
