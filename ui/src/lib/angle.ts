// The fidelity ↔ prompt slider of the DPO screen.
//
// DPO keeps a candidate pair (better, worse) when the direction of its score difference,
//     angle = atan2(ΔIS, ΔTS)  in degrees,
// lies inside the window [angleMin, angleMax]. The angle is measured FROM THE TS AXIS:
//   - 0°  → the pair differs only in text similarity (TS): it rewards following the prompt;
//   - 90° → the pair differs only in image similarity (IS): it rewards looking like the subject.
// So a low window (0°–30°) is prompt-heavy and a high one (60°–90°) likeness-heavy.
//
// The slider position p ∈ [0, 1] runs from "Follow the prompt" (p = 0) to "Look like the subject"
// (p = 1). It moves a window WINDOW_WIDTH (50°) wide across [0°, 90°]:
//     lo = p · (90° − 50°) = 40° · p,   hi = lo + 50°
// p = 0 → 0°–50°, p = 0.5 → 20°–70° (the default, as the CLI's), p = 1 → 40°–90°.
// The window never leaves [0°, 90°]; positions outside [0, 1] are clamped.

export const ANGLE_MAX = 90;
export const WINDOW_WIDTH = 50;
/** How far the window's lower edge can travel: 40°. */
const TRAVEL = ANGLE_MAX - WINDOW_WIDTH;

export interface AngleWindow {
  /** Degrees, 0 ≤ min ≤ max ≤ 90. */
  min: number;
  max: number;
}

export const DEFAULT_POSITION = 0.5;

function clamp(x: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, x));
}

/** Rounds to 0.1° so that slider drags do not produce long fractions. */
function tidy(deg: number): number {
  return Math.round(deg * 10) / 10;
}

/**
 * Slider position → angle window. p = 0 is "Follow the prompt" (0°–50°), p = 1 "Look like the
 * subject" (40°–90°), p = 0.5 the default 20°–70°. NaN is taken as the default position.
 */
export function positionToWindow(p: number): AngleWindow {
  const pos = Number.isNaN(p) ? DEFAULT_POSITION : clamp(p, 0, 1);
  const min = tidy(TRAVEL * pos);
  return { min, max: tidy(min + WINDOW_WIDTH) };
}

/**
 * Angle window → slider position: the position whose 50° window has the same centre, clamped to
 * [0, 1]. Exact inverse of `positionToWindow` for windows it made; for a window typed in by hand
 * (any width) it places the slider at that window's centre.
 */
export function windowToPosition(w: AngleWindow): number {
  const centre = (w.min + w.max) / 2;
  const p = (centre - WINDOW_WIDTH / 2) / TRAVEL;
  if (Number.isNaN(p)) return DEFAULT_POSITION;
  return clamp(p, 0, 1);
}

/**
 * A window typed in as two numbers, made valid: each bound clamped to [0°, 90°] (NaN → the default
 * bound) and the two swapped if given the wrong way round.
 */
export function normalizeWindow(min: number, max: number): AngleWindow {
  const def = positionToWindow(DEFAULT_POSITION);
  const a = Number.isNaN(min) ? def.min : clamp(min, 0, ANGLE_MAX);
  const b = Number.isNaN(max) ? def.max : clamp(max, 0, ANGLE_MAX);
  return a <= b ? { min: a, max: b } : { min: b, max: a };
}

/** How a window leans, for the label under the slider. */
export function describeWindow(w: AngleWindow): string {
  const centre = (w.min + w.max) / 2;
  if (centre < 35) return 'mostly prompt following';
  if (centre > 55) return 'mostly likeness';
  return 'balanced';
}

/** The direction of a score difference, in degrees from the TS axis (as the backend measures it). */
export function pairAngle(dIs: number, dTs: number): number {
  return (Math.atan2(dIs, dTs) * 180) / Math.PI;
}
