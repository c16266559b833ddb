// Scales and layouts for the hand-written SVG charts (loss line chart, IS–TS scatters).
// Everything here is pure: the components only draw what these functions return.

import type { LossPoint } from './types';

export interface Tick {
  value: number;
  /** Position on the chart in SVG units. */
  pos: number;
  label: string;
}

export interface Margin {
  top: number;
  right: number;
  bottom: number;
  left: number;
}

/** What the shared axes need of a chart's layout (LineLayout and ScatterLayout are both one). */
export interface AxesFrame {
  width: number;
  height: number;
  margin: Margin;
  xTicks: Tick[];
  yTicks: Tick[];
}

export const DEFAULT_MARGIN: Margin = { top: 12, right: 16, bottom: 28, left: 52 };

/** A "nice" step (1, 2 or 5 × 10ⁿ) that cuts `span` into about `count` intervals. */
export function niceStep(span: number, count: number): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const rough = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(rough));
  const norm = rough / mag;
  const factor = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
  return factor * mag;
}

function decimalsOf(step: number): number {
  return Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
}

/** Rounds away float noise (0.30000000000000004 → 0.3) at the step's precision. */
function roundTo(x: number, decimals: number): number {
  const r = Number(x.toFixed(Math.min(20, decimals + 2)));
  return Object.is(r, -0) ? 0 : r;
}

/**
 * Nice tick values covering [min, max]: the domain is widened outwards to whole steps. A zero-width
 * or reversed domain is first widened around its value; non-finite input gives [0, 1].
 */
export function niceTicks(min: number, max: number, count = 5): { ticks: number[]; step: number; min: number; max: number } {
  let lo = min;
  let hi = max;
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) {
    lo = 0;
    hi = 1;
  }
  if (lo > hi) [lo, hi] = [hi, lo];
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const step = niceStep(hi - lo, count);
  const decimals = decimalsOf(step);
  const start = Math.floor(lo / step + 1e-9) * step;
  const end = Math.ceil(hi / step - 1e-9) * step;
  const ticks: number[] = [];
  const n = Math.round((end - start) / step);
  for (let i = 0; i <= n; i++) ticks.push(roundTo(start + i * step, decimals));
  return { ticks, step, min: ticks[0], max: ticks[ticks.length - 1] };
}

/** Formats a tick value with just the decimals its step needs ("0.25", "1000", "2e-5"). */
export function tickLabel(value: number, step: number): string {
  if (value === 0) return '0';
  const a = Math.abs(value);
  if (a >= 1e5 || a < 1e-3) return value.toExponential(Math.max(0, Math.min(3, decimalsOf(step / a)))).replace('e+', 'e');
  return value.toFixed(Math.min(6, decimalsOf(step)));
}

/** A linear map from `domain` to `range` (a zero-width domain maps everything to the range's middle). */
export function linearScale(domain: [number, number], range: [number, number]): (v: number) => number {
  const [d0, d1] = domain;
  const [r0, r1] = range;
  if (d1 === d0) return () => (r0 + r1) / 2;
  const k = (r1 - r0) / (d1 - d0);
  return (v: number) => r0 + (v - d0) * k;
}

/** Exponential moving average (as TensorBoard's smoothing), `weight` ∈ [0, 1). */
export function smooth(values: number[], weight = 0.8): number[] {
  const out: number[] = [];
  let last: number | null = null;
  for (const v of values) {
    last = last === null ? v : last * weight + (1 - weight) * v;
    out.push(last);
  }
  return out;
}

function fmt(n: number): string {
  return (Math.round(n * 10) / 10).toString();
}

/** An SVG path through the points (M x y L x y …); "" for none. */
export function linePath(xy: [number, number][]): string {
  return xy.map(([x, y], i) => `${i === 0 ? 'M' : 'L'}${fmt(x)} ${fmt(y)}`).join(' ');
}

export interface LineLayout {
  width: number;
  height: number;
  margin: Margin;
  /** True when there is no finite point to draw. */
  empty: boolean;
  /** The raw series and its smoothed version as SVG paths. */
  path: string;
  smoothPath: string;
  /** The last point's position, for a marker. */
  last: { x: number; y: number; step: number; loss: number } | null;
  xTicks: Tick[];
  yTicks: Tick[];
  /** Number of points drawn. */
  count: number;
}

/**
 * Lays out a loss curve in a `width` × `height` box. The x axis runs from the first step (or 0) to
 * the last step or `xMax` (the job's total, so the line grows rightwards), the y axis over the
 * losses with nice ticks. Non-finite losses are skipped. One point is drawn as a point in a domain
 * widened around it; no point gives `empty` and no ticks.
 */
export function lossLayout(
  points: LossPoint[],
  opts: { width?: number; height?: number; margin?: Margin; xMax?: number | null; smoothing?: number } = {},
): LineLayout {
  const width = opts.width ?? 600;
  const height = opts.height ?? 220;
  const margin = opts.margin ?? DEFAULT_MARGIN;
  const data = points.filter((p) => Number.isFinite(p.loss) && Number.isFinite(p.step));
  const base = { width, height, margin };
  if (data.length === 0) {
    return { ...base, empty: true, path: '', smoothPath: '', last: null, xTicks: [], yTicks: [], count: 0 };
  }
  const steps = data.map((p) => p.step);
  const losses = data.map((p) => p.loss);
  const firstStep = Math.min(...steps);
  const xLo = Math.min(0, firstStep);
  let xHi = Math.max(...steps, opts.xMax ?? -Infinity);
  if (xHi <= xLo) xHi = xLo + 1;
  const xt = niceTicks(xLo, xHi, 6);
  // Keep the x axis tight at the data's ends (ticks inside only) so the line spans the chart.
  const xTicksValues = xt.ticks.filter((t) => t >= xLo && t <= xHi);
  const yt = niceTicks(Math.min(...losses), Math.max(...losses), 4);
  const x = linearScale([xLo, xHi], [margin.left, width - margin.right]);
  const y = linearScale([yt.min, yt.max], [height - margin.bottom, margin.top]);
  const xy: [number, number][] = data.map((p) => [x(p.step), y(p.loss)]);
  const sm = smooth(losses, opts.smoothing ?? 0.8);
  const smoothXy: [number, number][] = data.map((p, i) => [x(p.step), y(sm[i])]);
  const lastP = data[data.length - 1];
  return {
    ...base,
    empty: false,
    path: linePath(xy),
    smoothPath: data.length > 2 ? linePath(smoothXy) : '',
    last: { x: x(lastP.step), y: y(lastP.loss), step: lastP.step, loss: lastP.loss },
    xTicks: xTicksValues.map((v) => ({ value: v, pos: x(v), label: tickLabel(v, xt.step) })),
    yTicks: yt.ticks.map((v) => ({ value: v, pos: y(v), label: tickLabel(v, yt.step) })),
    count: data.length,
  };
}

export interface ScatterInput {
  x: number;
  y: number;
  /** Half-lengths of the error bars (standard errors), if any. */
  ex?: number;
  ey?: number;
}

export interface ScatterLayout {
  width: number;
  height: number;
  margin: Margin;
  empty: boolean;
  x: (v: number) => number;
  y: (v: number) => number;
  xTicks: Tick[];
  yTicks: Tick[];
}

/**
 * Scales for a scatter in a `width` × `height` box: both axes cover every point and its error bar,
 * padded by 5 % of the span, then widened to nice ticks. y grows upwards.
 */
export function scatterLayout(
  points: ScatterInput[],
  opts: { width?: number; height?: number; margin?: Margin } = {},
): ScatterLayout {
  const width = opts.width ?? 420;
  const height = opts.height ?? 320;
  const margin = opts.margin ?? DEFAULT_MARGIN;
  const data = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const range = (lo: number[], hi: number[]): [number, number] => {
    const a = Math.min(...lo);
    const b = Math.max(...hi);
    const pad = (b - a) * 0.05;
    return [a - pad, b + pad];
  };
  let xd: [number, number] = [0, 1];
  let yd: [number, number] = [0, 1];
  if (data.length > 0) {
    const err = (e: number | undefined) => (e !== undefined && Number.isFinite(e) ? Math.abs(e) : 0);
    xd = range(
      data.map((p) => p.x - err(p.ex)),
      data.map((p) => p.x + err(p.ex)),
    );
    yd = range(
      data.map((p) => p.y - err(p.ey)),
      data.map((p) => p.y + err(p.ey)),
    );
  }
  const xt = niceTicks(xd[0], xd[1], 5);
  const yt = niceTicks(yd[0], yd[1], 5);
  const x = linearScale([xt.min, xt.max], [margin.left, width - margin.right]);
  const y = linearScale([yt.min, yt.max], [height - margin.bottom, margin.top]);
  return {
    width,
    height,
    margin,
    empty: data.length === 0,
    x,
    y,
    xTicks: xt.ticks.map((v) => ({ value: v, pos: x(v), label: tickLabel(v, xt.step) })),
    yTicks: yt.ticks.map((v) => ({ value: v, pos: y(v), label: tickLabel(v, yt.step) })),
  };
}
