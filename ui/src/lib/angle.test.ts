import { describe, expect, it } from 'vitest';
import {
  describeWindow,
  normalizeWindow,
  pairAngle,
  positionToWindow,
  windowToPosition,
  WINDOW_WIDTH,
} from './angle';

describe('positionToWindow', () => {
  it('puts the default 20°–70° window in the middle of the slider', () => {
    expect(positionToWindow(0.5)).toEqual({ min: 20, max: 70 });
  });

  it('runs from the prompt end (0°–50°) to the likeness end (40°–90°)', () => {
    expect(positionToWindow(0)).toEqual({ min: 0, max: 50 });
    expect(positionToWindow(1)).toEqual({ min: 40, max: 90 });
    expect(positionToWindow(0.25)).toEqual({ min: 10, max: 60 });
  });

  it('always gives a 50° window inside [0°, 90°], increasing with the position', () => {
    let previous = -1;
    for (let i = 0; i <= 100; i++) {
      const w = positionToWindow(i / 100);
      expect(w.max - w.min).toBeCloseTo(WINDOW_WIDTH, 6);
      expect(w.min).toBeGreaterThanOrEqual(0);
      expect(w.max).toBeLessThanOrEqual(90);
      expect(w.min).toBeGreaterThanOrEqual(previous);
      previous = w.min;
    }
  });

  it('clamps positions outside the slider and takes NaN as the default', () => {
    expect(positionToWindow(-3)).toEqual({ min: 0, max: 50 });
    expect(positionToWindow(7)).toEqual({ min: 40, max: 90 });
    expect(positionToWindow(Number.NaN)).toEqual({ min: 20, max: 70 });
  });
});

describe('windowToPosition', () => {
  it('inverts positionToWindow', () => {
    for (const p of [0, 0.1, 0.33, 0.5, 0.77, 1]) {
      expect(windowToPosition(positionToWindow(p))).toBeCloseTo(p, 2);
    }
  });

  it('places a typed window by its centre, clamped to the slider', () => {
    // Centre 45° is the middle, whatever the width.
    expect(windowToPosition({ min: 30, max: 60 })).toBeCloseTo(0.5, 6);
    expect(windowToPosition({ min: 0, max: 10 })).toBe(0);
    expect(windowToPosition({ min: 85, max: 90 })).toBe(1);
  });
});

describe('normalizeWindow', () => {
  it('clamps both bounds to [0°, 90°]', () => {
    expect(normalizeWindow(-10, 120)).toEqual({ min: 0, max: 90 });
  });

  it('swaps bounds given the wrong way round', () => {
    expect(normalizeWindow(70, 20)).toEqual({ min: 20, max: 70 });
  });

  it('replaces a missing bound with the default one', () => {
    expect(normalizeWindow(Number.NaN, 60)).toEqual({ min: 20, max: 60 });
    expect(normalizeWindow(10, Number.NaN)).toEqual({ min: 10, max: 70 });
  });
});

describe('the angle convention', () => {
  it('measures from the TS axis: prompt-only differences are 0°, likeness-only 90°', () => {
    expect(pairAngle(0, 0.1)).toBeCloseTo(0, 9);
    expect(pairAngle(0.1, 0)).toBeCloseTo(90, 9);
    expect(pairAngle(0.1, 0.1)).toBeCloseTo(45, 9);
  });

  it('describes low windows as prompt-heavy and high ones as likeness-heavy', () => {
    expect(describeWindow(positionToWindow(0))).toBe('mostly prompt following');
    expect(describeWindow(positionToWindow(0.5))).toBe('balanced');
    expect(describeWindow(positionToWindow(1))).toBe('mostly likeness');
  });
});
