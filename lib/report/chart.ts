/**
 * Line charts as inline SVG, computed here (d3-scale for scales and ticks, d3-shape for the paths) so the page
 * needs no script. Each series is drawn raw (faint when a smoothed line is drawn over it) and, for noisy
 * curves, smoothed with TensorBoard's debiased exponential moving average.
 */
import { scaleLinear } from 'd3-scale';
import { line } from 'd3-shape';
import { escapeHtml, formatNumber } from './escape.js';
import type { MetricRow } from './run-dir.js';

export interface SeriesSpec {
  /** The metric name in metrics.jsonl. */
  key: string;
  label: string;
}

export interface ChartSpec {
  id: string;
  title: string;
  series: SeriesSpec[];
  /** A y range the axis always includes (e.g. [0, 1] for accuracies). */
  yInclude?: [number, number];
  /** Draw an EMA-smoothed line over the raw one (default true). */
  smooth?: boolean;
  /** A one-line note under the title. */
  note?: string;
  /** What the panel says when no series has data (default: not logged by the run so far). */
  empty?: string;
}

export interface ChartOptions {
  /** EMA weight in [0, 1): 0 is no smoothing. Default 0.6 (TensorBoard's default). */
  smoothing?: number;
  /** The step range every chart spans (the run's), so sparse series such as eval sit where they were logged. */
  xDomain?: [number, number];
}

/** Eight colours that stay apart for common colour-vision deficiencies (Okabe-Ito, black replaced by grey). */
export const PALETTE = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#666666', '#F0E442'];

const W = 640;
const H = 250;
const M = { top: 12, right: 14, bottom: 30, left: 56 };
/** Series with at most this many points get a marker per point. */
const MARKER_LIMIT = 60;

/** The (step, value) points of one metric, in step order (lines without the key are skipped). */
export function seriesPoints(rows: readonly MetricRow[], key: string): [number, number][] {
  const pts: [number, number][] = [];
  for (const r of rows) {
    const v = r[key];
    if (typeof v === 'number' && Number.isFinite(v)) pts.push([r.step, v]);
  }
  return pts.sort((a, b) => a[0] - b[0]);
}

/** TensorBoard's smoothing: an exponential moving average with its start-up bias divided out. */
export function emaSmooth(values: readonly number[], weight: number): number[] {
  let last = 0;
  return values.map((v, i) => {
    last = last * weight + (1 - weight) * v;
    return last / (1 - weight ** (i + 1));
  });
}

export interface RenderedChart {
  html: string;
  /** Points drawn per series key (0 for a series without data). */
  points: Record<string, number>;
}

/** One chart panel: title, SVG (or a "no data yet" note), and a legend with each series' last value. */
export function renderChart(spec: ChartSpec, rows: readonly MetricRow[], options: ChartOptions = {}): RenderedChart {
  const weight = options.smoothing ?? 0.6;
  const data = spec.series.map((s, i) => ({ ...s, color: PALETTE[i % PALETTE.length]!, pts: seriesPoints(rows, s.key) }));
  const points = Object.fromEntries(data.map((d) => [d.key, d.pts.length]));
  const head = `<h3>${escapeHtml(spec.title)}</h3>${spec.note ? `<p class="note">${escapeHtml(spec.note)}</p>` : ''}`;
  const all = data.flatMap((d) => d.pts);
  if (all.length === 0) {
    return { html: `<figure class="chart empty" id="${escapeHtml(spec.id)}">${head}<p class="nodata">${escapeHtml(spec.empty ?? 'no data yet (not logged by this run so far)')}</p></figure>`, points };
  }
  const steps = all.map((p) => p[0]);
  const values = all.map((p) => p[1]).concat(spec.yInclude ?? []);
  const xs = steps.concat(options.xDomain ?? []);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  let [y0, y1] = [Math.min(...values), Math.max(...values)];
  if (y0 === y1) [y0, y1] = [y0 - (Math.abs(y0) || 1) * 0.1, y1 + (Math.abs(y1) || 1) * 0.1];
  const x = scaleLinear().domain([x0, x1]).range([M.left, W - M.right]).nice(6);
  const y = scaleLinear().domain([y0, y1]).range([H - M.bottom, M.top]).nice(5);
  const xt = x.ticks(6);
  const yt = y.ticks(5);
  const xf = x.tickFormat(6);
  const yf = y.tickFormat(5);
  const path = line<[number, number]>().x((p) => x(p[0])).y((p) => y(p[1])).digits(2);

  const parts: string[] = [];
  parts.push(`<g class="grid">${yt.map((t) => `<line x1="${M.left}" x2="${W - M.right}" y1="${y(t).toFixed(1)}" y2="${y(t).toFixed(1)}"/>`).join('')}</g>`);
  parts.push(`<g class="axis x">${xt.map((t) => `<text x="${x(t).toFixed(1)}" y="${H - M.bottom + 18}" text-anchor="middle">${escapeHtml(xf(t))}</text>`).join('')}` +
    `<line x1="${M.left}" x2="${W - M.right}" y1="${H - M.bottom}" y2="${H - M.bottom}"/></g>`);
  parts.push(`<g class="axis y">${yt.map((t) => `<text x="${M.left - 6}" y="${(y(t) + 4).toFixed(1)}" text-anchor="end">${escapeHtml(yf(t))}</text>`).join('')}</g>`);
  for (const d of data) {
    if (d.pts.length === 0) continue;
    const smooth = spec.smooth !== false && weight > 0 && d.pts.length >= 3;
    const key = escapeHtml(d.key);
    parts.push(`<path class="raw${smooth ? ' faint' : ''}" data-series="${key}" data-points="${d.pts.length}" stroke="${d.color}" d="${path(d.pts) ?? ''}"/>`);
    if (smooth) {
      const sm = emaSmooth(d.pts.map((p) => p[1]), weight);
      parts.push(`<path class="smooth" data-series="${key}" stroke="${d.color}" d="${path(d.pts.map((p, i) => [p[0], sm[i]!])) ?? ''}"/>`);
    }
    if (d.pts.length <= MARKER_LIMIT) {
      parts.push(`<g class="markers" data-series="${key}" fill="${d.color}">${d.pts.map((p) =>
        `<circle cx="${x(p[0]).toFixed(2)}" cy="${y(p[1]).toFixed(2)}" r="${smooth ? 2 : 3}"><title>${escapeHtml(`${d.label} at step ${p[0]}: ${formatNumber(p[1])}`)}</title></circle>`).join('')}</g>`);
    }
  }
  const label = `${spec.title}: ${data.filter((d) => d.pts.length > 0).map((d) => `${d.label} ${formatNumber(d.pts.at(-1)![1])} at step ${d.pts.at(-1)![0]}`).join(', ')}`;
  const svg = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(label)}" preserveAspectRatio="xMidYMid meet">${parts.join('')}</svg>`;
  const legend = `<ul class="legend">${data.map((d) => `<li><span class="swatch" style="background:${d.color}"></span>${escapeHtml(d.label)}` +
    ` <b>${d.pts.length > 0 ? formatNumber(d.pts.at(-1)![1]) : '–'}</b></li>`).join('')}</ul>`;
  return { html: `<figure class="chart" id="${escapeHtml(spec.id)}">${head}${svg}${legend}</figure>`, points };
}
