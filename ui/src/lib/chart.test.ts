import { describe, expect, it } from 'vitest';
import { linearScale, lossLayout, niceStep, niceTicks, scatterLayout, smooth, tickLabel } from './chart';

describe('niceTicks', () => {
  it('chooses 1-2-5 steps and widens the domain to whole steps', () => {
    const t = niceTicks(0.13, 0.87, 4);
    expect(t.step).toBe(0.2);
    expect(t.ticks).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(t.min).toBeLessThanOrEqual(0.13);
    expect(t.max).toBeGreaterThanOrEqual(0.87);
  });

  it('handles large and tiny ranges without float noise', () => {
    expect(niceTicks(0, 1000, 5).ticks).toEqual([0, 200, 400, 600, 800, 1000]);
    const tiny = niceTicks(0.0001, 0.0005, 4);
    expect(tiny.ticks).toEqual([0.0001, 0.0002, 0.0003, 0.0004, 0.0005]);
    expect(niceTicks(0.1, 0.3, 2).ticks).toEqual([0.1, 0.2, 0.3]);
    expect(niceTicks(0.05, 0.95, 2).ticks).toEqual([0, 0.5, 1]);
  });

  it('widens a zero-width domain around its value', () => {
    const t = niceTicks(0.5, 0.5, 4);
    expect(t.min).toBeLessThan(0.5);
    expect(t.max).toBeGreaterThan(0.5);
    const z = niceTicks(0, 0, 4);
    expect(z.min).toBeLessThan(0);
    expect(z.max).toBeGreaterThan(0);
  });

  it('accepts a reversed domain and falls back to [0, 1] for non-finite input', () => {
    expect(niceTicks(10, 0, 5).ticks).toEqual(niceTicks(0, 10, 5).ticks);
    expect(niceTicks(Number.NaN, 3).ticks).toEqual(niceTicks(0, 1).ticks);
  });

  it('niceStep is 1, 2 or 5 times a power of ten', () => {
    for (const span of [0.003, 0.7, 3, 42, 999, 12345]) {
      const step = niceStep(span, 5);
      const norm = step / 10 ** Math.floor(Math.log10(step) + 1e-12);
      expect([1, 2, 5, 10].some((f) => Math.abs(norm - f) < 1e-9)).toBe(true);
    }
  });
});

describe('tickLabel', () => {
  it('uses the decimals the step needs', () => {
    expect(tickLabel(0.25, 0.05)).toBe('0.25');
    expect(tickLabel(400, 100)).toBe('400');
    expect(tickLabel(0, 0.1)).toBe('0');
  });
});

describe('linearScale', () => {
  it('maps the domain onto the range, inverted ranges included', () => {
    const s = linearScale([0, 10], [100, 0]);
    expect(s(0)).toBe(100);
    expect(s(10)).toBe(0);
    expect(s(2.5)).toBe(75);
  });

  it('maps a zero-width domain to the middle', () => {
    expect(linearScale([3, 3], [0, 10])(3)).toBe(5);
  });
});

describe('smooth', () => {
  it('is an exponential moving average starting at the first value', () => {
    expect(smooth([1, 1, 1])).toEqual([1, 1, 1]);
    const s = smooth([0, 10], 0.5);
    expect(s).toEqual([0, 5]);
  });
});

describe('lossLayout', () => {
  const box = { width: 600, height: 220, margin: { top: 10, right: 10, bottom: 20, left: 40 } };

  it('is empty for no data', () => {
    const l = lossLayout([], box);
    expect(l.empty).toBe(true);
    expect(l.path).toBe('');
    expect(l.xTicks).toEqual([]);
    expect(l.yTicks).toEqual([]);
    expect(l.last).toBeNull();
  });

  it('draws a single point inside the plot area', () => {
    const l = lossLayout([{ step: 1, loss: 0.2 }], box);
    expect(l.empty).toBe(false);
    expect(l.count).toBe(1);
    expect(l.path).toMatch(/^M[\d.]+ [\d.]+$/);
    expect(l.last!.x).toBeGreaterThanOrEqual(40);
    expect(l.last!.x).toBeLessThanOrEqual(590);
    expect(l.last!.y).toBeGreaterThan(10);
    expect(l.last!.y).toBeLessThan(200);
    expect(l.yTicks.length).toBeGreaterThanOrEqual(2);
  });

  it('spans the plot: step 0 at the left, the total at the right, the y ticks around the losses', () => {
    const points = [
      { step: 0, loss: 0.5 },
      { step: 50, loss: 0.3 },
      { step: 100, loss: 0.1 },
    ];
    const l = lossLayout(points, { ...box, xMax: 200 });
    expect(l.path.split(' L').length).toBe(3);
    expect(l.path.startsWith('M40 ')).toBe(true);
    // Step 100 of 200 is in the middle of [40, 590].
    expect(l.last!.x).toBeCloseTo(315, 5);
    const values = l.yTicks.map((t) => t.value);
    expect(Math.min(...values)).toBeLessThanOrEqual(0.1);
    expect(Math.max(...values)).toBeGreaterThanOrEqual(0.5);
    // Higher loss is higher on screen (smaller y).
    const yOf = (v: number) => l.yTicks.find((t) => t.value === v)!.pos;
    expect(yOf(Math.max(...values))).toBeLessThan(yOf(Math.min(...values)));
    expect(l.xTicks.every((t) => t.value >= 0 && t.value <= 200)).toBe(true);
  });

  it('skips non-finite losses', () => {
    const l = lossLayout(
      [
        { step: 1, loss: 0.3 },
        { step: 2, loss: Number.NaN },
        { step: 3, loss: 0.2 },
      ],
      box,
    );
    expect(l.count).toBe(2);
    expect(l.path).not.toContain('NaN');
  });
});

describe('scatterLayout', () => {
  it('covers every point and its error bars, y growing upwards', () => {
    const l = scatterLayout(
      [
        { x: 0.2, y: 0.6, ex: 0.05, ey: 0.02 },
        { x: 0.3, y: 0.7, ex: 0.01, ey: 0.1 },
      ],
      { width: 400, height: 300, margin: { top: 10, right: 10, bottom: 20, left: 40 } },
    );
    expect(l.empty).toBe(false);
    const xs = l.xTicks.map((t) => t.value);
    const ys = l.yTicks.map((t) => t.value);
    expect(Math.min(...xs)).toBeLessThanOrEqual(0.15);
    expect(Math.max(...xs)).toBeGreaterThanOrEqual(0.31);
    expect(Math.min(...ys)).toBeLessThanOrEqual(0.58);
    expect(Math.max(...ys)).toBeGreaterThanOrEqual(0.8);
    for (const v of [0.15, 0.31]) {
      expect(l.x(v)).toBeGreaterThanOrEqual(40);
      expect(l.x(v)).toBeLessThanOrEqual(390);
    }
    expect(l.y(0.8)).toBeLessThan(l.y(0.58));
    expect(l.y(0.8)).toBeGreaterThanOrEqual(10);
    expect(l.y(0.58)).toBeLessThanOrEqual(280);
  });

  it('handles no points and one point', () => {
    expect(scatterLayout([]).empty).toBe(true);
    const one = scatterLayout([{ x: 0.25, y: 0.5 }], { width: 400, height: 300 });
    expect(one.empty).toBe(false);
    expect(Number.isFinite(one.x(0.25))).toBe(true);
    expect(one.xTicks.length).toBeGreaterThanOrEqual(2);
  });
});
