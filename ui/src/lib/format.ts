// Numbers as the progress line and the result messages show them.

const DASH = '—';

function finite(x: number | null | undefined): x is number {
  return typeof x === 'number' && Number.isFinite(x);
}

/** Remaining time: "45 s", "3 min 05 s", "2 h 07 min"; "—" when unknown or negative. */
export function formatEta(seconds: number | null | undefined): string {
  if (!finite(seconds) || seconds < 0) return DASH;
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) {
    const m = Math.floor(s / 60);
    return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  }
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return `${h} h ${String(m).padStart(2, '0')} min`;
}

/**
 * Training speed: "2.35 it/s" from one iteration a second up, "4.2 s/it" below (slow steps read
 * better as seconds per step); "—" when unknown or zero.
 */
export function formatRate(itPerSec: number | null | undefined): string {
  if (!finite(itPerSec) || itPerSec <= 0) return DASH;
  if (itPerSec >= 1) return `${itPerSec >= 100 ? itPerSec.toFixed(0) : itPerSec.toFixed(2)} it/s`;
  const secPerIt = 1 / itPerSec;
  return `${secPerIt >= 100 ? secPerIt.toFixed(0) : secPerIt.toFixed(1)} s/it`;
}

/** A loss value with 4 significant digits ("0.1235", "1.235e-5"). */
export function formatLoss(loss: number | null | undefined): string {
  if (!finite(loss)) return DASH;
  const a = Math.abs(loss);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return loss.toExponential(3);
  return loss.toPrecision(4);
}

/** A learning rate: "1e-4", "2.5e-6"; "0" for zero. */
export function formatLr(lr: number | null | undefined): string {
  if (!finite(lr)) return DASH;
  if (lr === 0) return '0';
  const [mantissa, exp] = lr.toExponential(2).split('e');
  const m = mantissa.replace(/\.?0+$/, '');
  return `${m}e${Number(exp)}`;
}

/** A file size: "512 B", "1.5 KB", "12.3 MB" (powers of 1024). */
export function formatBytes(bytes: number | null | undefined): string {
  if (!finite(bytes) || bytes < 0) return DASH;
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? `${v} B` : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
}

/** Unix seconds → a short local date and time. */
export function formatDate(unixSeconds: number): string {
  const d = new Date(unixSeconds * 1000);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** A score (IS, TS) with 3 decimals; "—" when absent. */
export function formatScore(x: number | null | undefined): string {
  return finite(x) ? x.toFixed(3) : DASH;
}

/** Step progress as a percentage in [0, 100]; 0 when the total is unknown. */
export function percent(step: number, total: number): number {
  if (!finite(step) || !finite(total) || total <= 0) return 0;
  return Math.min(100, Math.max(0, (step / total) * 100));
}

/** A default export file name: "<project>-<label>.safetensors" with unsafe characters replaced. */
export function exportFileName(project: string, label: string): string {
  const clean = (s: string) =>
    s
      .trim()
      // eslint-disable-next-line no-control-regex
      .replace(/[<>:"/\\|?*\u0000-\u001f]/g, '')
      .replace(/\s+/g, '-');
  const name = [clean(project), clean(label)].filter((s) => s !== '').join('-');
  return `${name || 'lora'}.safetensors`;
}

/** A file-name part: letters and digits (any script), `-` and `_` kept, every other character made `-`. */
export function safeFileStem(s: string): string {
  return s.replace(/[^\p{L}\p{N}_-]/gu, '-');
}

/**
 * The default export destination: `<workspace dir>/exports/<project>-<label>.safetensors`, the name
 * made safe with `safeFileStem`; joined with `\` when the workspace dir has one (Windows), else `/`.
 */
export function defaultExportPath(dir: string, project: string, label: string): string {
  const sep = dir.includes('\\') ? '\\' : '/';
  const base = dir.replace(/[\\/]+$/, '');
  const stem = [safeFileStem(project), safeFileStem(label)].filter((s) => s !== '').join('-') || 'lora';
  return `${base}${sep}exports${sep}${stem}.safetensors`;
}

/** The path with `.safetensors` appended unless it already ends so (any case); surrounding blanks dropped. */
export function withSafetensors(path: string): string {
  const p = path.trim();
  if (p === '') return p;
  return /\.safetensors$/i.test(p) ? p : `${p}.safetensors`;
}

/** The file name of a path (either separator) without its `.safetensors` extension. */
export function loraName(path: string): string {
  const name = path.trim().split(/[\\/]/).pop() ?? '';
  return name.replace(/\.safetensors$/i, '');
}
