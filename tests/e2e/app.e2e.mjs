// End-to-end test of the real built app (likeness-app, `tauri build --debug --no-bundle`), driven
// through tauri-driver (W3C WebDriver on :4444) and WebKitWebDriver, under Xvfb. No npm
// dependencies: the WebDriver protocol is spoken with fetch.
//
//   node tests/e2e/app.e2e.mjs <path to likeness-app> <screenshot folder>
//
// The walk: create a project → import the built-in concept photos → DreamBooth a few steps →
// one DPO stage → Compare shows seed-matched images from before and after → export a kohya file.
// A screenshot of each screen is saved. The caller checks the exported file with
// `likeness generate --lora` (scripts/e2e.sh).

import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import zlib from 'node:zlib';
import { join } from 'node:path';

const [app, shots = 'target/e2e-screens'] = process.argv.slice(2);
if (!app) {
  console.error('usage: app.e2e.mjs <likeness-app binary> [screenshot folder]');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const DRIVER = process.env.TAURI_DRIVER_URL ?? 'http://127.0.0.1:4444';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function wd(method, path, body, timeoutMs = 120_000) {
  const res = await fetch(`${DRIVER}${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    const v = json.value ?? {};
    throw new Error(`${method} ${path}: ${res.status} ${v.error ?? ''} ${v.message ?? ''}`.trim());
  }
  return json.value;
}

const ELEMENT = 'element-6066-11e4-a07c-4f3b8e6e0f0b';
/** The key the driver names element references with: the W3C one, WebKitWebDriver's
 * variant of it (`element-6066-11e4-a52e-4f735466cecf`) or the legacy `ELEMENT`. */
let elementKey = ELEMENT;
/** An element reference's id. */
function elementId(v) {
  if (!v || typeof v !== 'object') return undefined;
  const key = Object.keys(v).find((k) => k.startsWith('element-6066') || k === 'ELEMENT');
  if (key) elementKey = key;
  return key ? v[key] : undefined;
}
let session;

async function start() {
  const caps = {
    capabilities: {
      alwaysMatch: { browserName: 'wry', 'tauri:options': { application: app } },
    },
  };
  const value = await wd('POST', '/session', caps);
  session = value.sessionId;
}

const s = (path) => `/session/${session}${path}`;

async function find(css) {
  const v = await wd('POST', s('/element'), { using: 'css selector', value: css });
  const id = elementId(v);
  if (!id) throw new Error(`no element id in ${JSON.stringify(v)}`);
  return id;
}

async function findAll(css) {
  const v = await wd('POST', s('/elements'), { using: 'css selector', value: css });
  return v.map(elementId);
}

/** Waits until `css` matches an element (and `check(id)` holds), then returns it. */
async function waitFor(css, { timeout = 60_000, check } = {}) {
  const until = Date.now() + timeout;
  let last;
  while (Date.now() < until) {
    try {
      const id = await find(css);
      if (!check || (await check(id))) return id;
    } catch (e) {
      last = e;
    }
    await sleep(250);
  }
  await shot('timeout');
  throw new Error(`timed out waiting for ${css}${last ? ` (${last.message})` : ''}`);
}

const click = (id) => wd('POST', s(`/element/${id}/click`), {});
const text = (id) => wd('GET', s(`/element/${id}/text`));
const attr = (id, name) => wd('GET', s(`/element/${id}/attribute/${name}`));
async function type(id, value) {
  await wd('POST', s(`/element/${id}/clear`), {});
  await wd('POST', s(`/element/${id}/value`), { text: String(value) });
}
const tid = (name) => `[data-testid="${name}"]`;

let shotNo = 0;
/**
 * Saves the Xvfb screen as a PNG. WebKitWebDriver's own screenshot waits forever under Xvfb
 * more often than not (WebKitGTK snapshots wait for a frame), so the picture is taken from
 * the X server with `xwd` and converted here.
 */
async function shot(name) {
  await sleep(600);
  const file = join(shots, `${String(++shotNo).padStart(2, '0')}-${name}.png`);
  try {
    const xwd = execFileSync('xwd', ['-root', '-silent'], { maxBuffer: 64 << 20 });
    writeFileSync(file, xwdToPng(xwd));
    console.log(`screenshot ${file}`);
  } catch (e) {
    console.log(`screenshot ${name} failed: ${e.message}`);
  }
}

/** A 24/32-bit TrueColor ZPixmap XWD dump (what `xwd` gives on Xvfb) as PNG bytes. */
function xwdToPng(buf) {
  const u32 = (i) => buf.readUInt32BE(i * 4);
  const [headerSize, , format, , width, height] = [0, 1, 2, 3, 4, 5].map(u32);
  const byteOrder = u32(7);
  const bitsPerPixel = u32(11);
  const bytesPerLine = u32(12);
  const masks = [u32(14), u32(15), u32(16)];
  const ncolors = u32(19);
  if (format !== 2 || (bitsPerPixel !== 32 && bitsPerPixel !== 24)) {
    throw new Error(`unsupported xwd (format ${format}, ${bitsPerPixel} bpp)`);
  }
  const shifts = masks.map((m) => 31 - Math.clz32(m & -m));
  const data = headerSize + ncolors * 12;
  const step = bitsPerPixel / 8;
  const raw = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    const row = y * (1 + width * 3);
    for (let x = 0; x < width; x++) {
      const at = data + y * bytesPerLine + x * step;
      let px = 0;
      for (let b = 0; b < step; b++) {
        const byte = buf[at + b];
        px |= byteOrder === 0 ? byte << (8 * b) : byte << (8 * (step - 1 - b));
      }
      px >>>= 0;
      for (let c = 0; c < 3; c++) raw[row + 1 + x * 3 + c] = (px & masks[c]) >>> shifts[c];
    }
  }
  const chunk = (type, body) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    const tb = Buffer.concat([Buffer.from(type, 'ascii'), body]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(tb) >>> 0);
    return Buffer.concat([len, tb, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

async function errorBar() {
  const bars = await findAll(tid('error-bar'));
  return bars.length ? text(bars[0]) : '';
}

async function step(name, f) {
  const t0 = Date.now();
  try {
    await f();
  } catch (e) {
    const err = await errorBar().catch(() => '');
    throw new Error(`${name}: ${e.message}${err ? ` — app says: ${err}` : ''}`);
  }
  console.log(`ok ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

async function main() {
  await start();
  await step('projects screen', async () => {
    await waitFor(tid('nav-projects'));
    await shot('projects-first-start');
  });
  await step('create a project', async () => {
    await type(await find(tid('create-project-name')), 'E2E star');
    await type(await find(tid('create-project-token')), 'sks');
    await type(await find(tid('create-project-class')), 'star');
    await click(await find(tid('create-project-button')));
    // The first start also made a demo project: open the one just created.
    const until = Date.now() + 30_000;
    let opened = false;
    while (!opened && Date.now() < until) {
      for (const card of await findAll(tid('project-card'))) {
        const name = await wd('POST', s(`/element/${card}/element`), {
          using: 'css selector',
          value: tid('project-name'),
        });
        if ((await text(elementId(name))) === 'E2E star') {
          const open = await wd('POST', s(`/element/${card}/element`), {
            using: 'css selector',
            value: tid('project-open'),
          });
          await click(elementId(open));
          opened = true;
          break;
        }
      }
      if (!opened) await sleep(250);
    }
    if (!opened) throw new Error('the new project never appeared');
    await shot('projects');
  });
  await step('import the built-in concept photos', async () => {
    await click(await find(tid('nav-subject')));
    const button = await waitFor(tid('builtin-concept'));
    await click(button);
    await waitFor(tid('import-report'));
    await waitFor(tid('photo-item'));
    const photos = await findAll(tid('photo-item'));
    if (photos.length < 3) throw new Error(`${photos.length} photos imported`);
    await shot('subject');
  });
  await step('base model: the built-in one', async () => {
    await click(await find(tid('nav-model')));
    const items = await findAll(tid('model-item'));
    if (items.length === 0) throw new Error('no base model listed');
    await shot('base-model');
  });
  await step('DreamBooth a few steps', async () => {
    await click(await find(tid('nav-dreambooth')));
    await type(await waitFor(tid('db-steps')), 6);
    await click(await find(tid('dreambooth-start')));
    await waitFor(tid('dreambooth-progress'));
    await shot('dreambooth-running');
    // Done when the start button is enabled again and the progress shows the last step.
    await waitFor(tid('dreambooth-start'), {
      timeout: 600_000,
      check: async (id) => (await attr(id, 'disabled')) === null,
    });
    await shot('dreambooth-done');
  });
  await step('one DPO stage', async () => {
    await click(await find(tid('nav-dpo')));
    await waitFor(tid('dpo-from'));
    for (const [name, value] of [
      ['dpo-stages', 1],
      ['dpo-prompts', 2],
      ['dpo-samples', 2],
      ['dpo-steps', 2],
    ]) {
      const fields = await findAll(tid(name));
      if (fields.length) await type(fields[0], value);
    }
    await click(await find(tid('dpo-start')));
    await shot('dpo-running');
    await waitFor(tid('dpo-start'), {
      timeout: 900_000,
      check: async (id) => (await attr(id, 'disabled')) === null,
    });
    await shot('dpo-done');
  });
  await step('compare: seed-matched before and after', async () => {
    await click(await find(tid('nav-compare')));
    // Galleries are made by a job queued after training; poll until the table is full.
    const until = Date.now() + 600_000;
    for (;;) {
      await click(await waitFor(tid('compare-load')));
      const tables = await findAll(tid('compare-table'));
      if (tables.length) {
        const cells = await findAll(tid('compare-cell'));
        const columns = new Set();
        for (const c of cells) columns.add(await attr(c, 'data-column'));
        const imgs = await findAll(`${tid('compare-cell')} img`);
        if (columns.size >= 2 && imgs.length >= 2 * (cells.length / columns.size)) break;
      }
      if (Date.now() > until) throw new Error('the compare table never filled');
      await sleep(3000);
    }
    await shot('compare');
  });
  await step('export a kohya LoRA', async () => {
    await click(await find(tid('nav-export')));
    await waitFor(tid('export-run'));
    const format = await find(tid('export-format'));
    await wd('POST', s('/execute/sync'), {
      script: "arguments[0].value = 'kohya'; arguments[0].dispatchEvent(new Event('change'));",
      args: [{ [elementKey]: format }],
    });
    const out = process.env.E2E_EXPORT ?? join(shots, 'e2e-kohya.safetensors');
    await type(await find(tid('export-path')), out);
    await click(await find(tid('export-button')));
    const result = await waitFor(tid('export-result'), { timeout: 120_000 });
    const said = await text(result);
    if (!said.includes('e2e-kohya')) throw new Error(`export said: ${said}`);
    await shot('export');
    console.log(`exported ${out}`);
  });
}

main()
  .then(async () => {
    await wd('DELETE', `/session/${session}`).catch(() => {});
    console.log('e2e: all steps passed');
  })
  .catch(async (e) => {
    console.error(`e2e FAILED: ${e.message}`);
    if (session) await wd('DELETE', `/session/${session}`).catch(() => {});
    process.exit(1);
  });
