import { render } from '@testing-library/svelte';
import { afterEach, describe, expect, it } from 'vitest';
import { lossLayout, scatterLayout, type AxesFrame } from '../lib/chart';
import Axes from './Axes.svelte';

const SVG_NS = 'http://www.w3.org/2000/svg';

const drawn: Element[] = [];
afterEach(() => {
  for (const svg of drawn.splice(0)) svg.remove();
});

/** Renders the axes into an <svg>, as the charts do. */
function draw(props: { frame: AxesFrame; xGrid?: boolean; xTitle?: string; yTitle?: string }) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  document.body.appendChild(svg);
  drawn.push(svg);
  render(Axes, { target: svg, props });
  return svg;
}

const frame: AxesFrame = {
  width: 400,
  height: 300,
  margin: { top: 20, right: 10, bottom: 30, left: 50 },
  xTicks: [
    { value: 0, pos: 50, label: '0' },
    { value: 0.5, pos: 220, label: '0.5' },
    { value: 1, pos: 390, label: '1' },
  ],
  yTicks: [
    { value: 0.2, pos: 270, label: '0.20' },
    { value: 0.4, pos: 20, label: '0.40' },
  ],
};

const attrs = (el: Element, names: string[]) => Object.fromEntries(names.map((n) => [n, el.getAttribute(n)]));

describe('Axes', () => {
  it('draws SVG elements: a grid group, then an axis group', () => {
    const svg = draw({ frame });
    const groups = [...svg.children];
    expect(groups.map((g) => g.getAttribute('class'))).toEqual(['grid', 'axis']);
    for (const el of svg.querySelectorAll('g, line, text')) expect(el.namespaceURI).toBe(SVG_NS);
  });

  it('draws a horizontal grid line across the plot area at every y tick', () => {
    const svg = draw({ frame });
    const lines = [...svg.querySelectorAll('g.grid line')];
    expect(lines.map((l) => attrs(l, ['x1', 'x2', 'y1', 'y2']))).toEqual([
      { x1: '50', x2: '390', y1: '270', y2: '270' },
      { x1: '50', x2: '390', y1: '20', y2: '20' },
    ]);
  });

  it('adds vertical grid lines at the x ticks when asked', () => {
    const svg = draw({ frame, xGrid: true });
    const lines = [...svg.querySelectorAll('g.grid line')];
    expect(lines).toHaveLength(5);
    expect(lines.slice(2).map((l) => attrs(l, ['x1', 'x2', 'y1', 'y2']))).toEqual([
      { x1: '50', x2: '50', y1: '20', y2: '270' },
      { x1: '220', x2: '220', y1: '20', y2: '270' },
      { x1: '390', x2: '390', y1: '20', y2: '270' },
    ]);
  });

  it('labels the y ticks left of the plot and the x ticks under it', () => {
    const svg = draw({ frame });
    const texts = [...svg.querySelectorAll('g.axis text')];
    expect(texts.map((t) => t.textContent)).toEqual(['0.20', '0.40', '0', '0.5', '1']);
    expect(attrs(texts[0], ['x', 'y', 'text-anchor', 'dominant-baseline'])).toEqual({
      x: '44',
      y: '270',
      'text-anchor': 'end',
      'dominant-baseline': 'middle',
    });
    expect(attrs(texts[3], ['x', 'y', 'text-anchor'])).toEqual({ x: '220', y: '286', 'text-anchor': 'middle' });
  });

  it('draws the axis titles only when given: x at the bottom right, y at the top left', () => {
    expect(draw({ frame }).querySelectorAll('g.axis text')).toHaveLength(5);
    const svg = draw({ frame, xTitle: 'TS (prompt) →', yTitle: '↑ IS (likeness)' });
    const texts = [...svg.querySelectorAll('g.axis text')];
    expect(texts).toHaveLength(7);
    const [x, y] = texts.slice(5);
    expect(x.textContent).toBe('TS (prompt) →');
    expect(attrs(x, ['x', 'y', 'text-anchor'])).toEqual({ x: '390', y: '298', 'text-anchor': 'end' });
    expect(y.textContent).toBe('↑ IS (likeness)');
    expect(attrs(y, ['x', 'y'])).toEqual({ x: '4', y: '12' });
  });

  it('takes the layouts of the loss chart and the scatters as they are', () => {
    const loss = lossLayout(
      [
        { step: 0, loss: 0.5 },
        { step: 10, loss: 0.2 },
      ],
      { width: 600, height: 220 },
    );
    const svg = draw({ frame: loss });
    expect(svg.querySelectorAll('g.grid line')).toHaveLength(loss.yTicks.length);
    expect(svg.querySelectorAll('g.axis text')).toHaveLength(loss.yTicks.length + loss.xTicks.length);

    const scatter = scatterLayout([{ x: 0.2, y: 0.6 }, { x: 0.3, y: 0.7 }]);
    const s = draw({ frame: scatter, xGrid: true });
    expect(s.querySelectorAll('g.grid line')).toHaveLength(scatter.yTicks.length + scatter.xTicks.length);
  });

  it('draws nothing but the empty groups without ticks', () => {
    const svg = draw({ frame: { ...frame, xTicks: [], yTicks: [] }, xGrid: true });
    expect(svg.querySelectorAll('line, text')).toHaveLength(0);
  });
});
