/**
 * The report page: one self-contained HTML file (inline CSS and SVG, no script, and a content security policy
 * that forbids loading anything), readable from phone width up. All text from the run is escaped.
 */
import { basename, dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { renderChart, type ChartOptions, type ChartSpec } from './chart.js';
import { escapeHtml, formatNumber } from './escape.js';
import type { CompletionRow, MetricRow, RunData } from './run-dir.js';

export interface ReportOptions extends ChartOptions {
  /** Most completions listed (the latest steps first). Default 60. */
  maxCompletions?: number;
  /** Longest completion text shown, in characters. Default 1500. */
  maxTextLength?: number;
  /** Page title (default: "sqlr1 report: <parent folder>/<run folder>", which tells runs named alike apart). */
  title?: string;
}

const LEVELS = ['easy', 'medium', 'hard', 'extra'] as const;

/** What chartSpecs reads from the run's config.yaml. */
export interface RunSettings {
  /** The KL coefficient: at 0 the trainer makes no reference pass and logs no KL. */
  beta?: number;
}

/** The keys of config.yaml the charts need (undefined where absent or unreadable: the charts then say less). */
function runSettings(configText: string | null): RunSettings {
  if (configText === null) return {};
  try {
    const beta = (parseYaml(configText) as { beta?: unknown } | null)?.beta;
    return typeof beta === 'number' ? { beta } : {};
  } catch {
    return {};
  }
}

/** The charts of a run: fixed panels for the contract's metric names, one panel per reward component. */
export function chartSpecs(rows: readonly MetricRow[], settings: RunSettings = {}): ChartSpec[] {
  const keys = new Set(rows.flatMap((r) => Object.keys(r)));
  const components = [...keys].map((k) => /^rewards\/(.+)\/mean$/.exec(k)?.[1]).filter((c): c is string => c !== undefined).sort();
  const specs: ChartSpec[] = [
    { id: 'chart-reward', title: 'Reward', series: [{ key: 'reward', label: 'mean reward' }], note: 'mean over the step\'s completions' },
    { id: 'chart-frac-correct', title: 'Fraction correct', series: [{ key: 'frac_correct', label: 'frac_correct' }], yInclude: [0, 1] },
    ...components.map((c): ChartSpec => ({
      id: `chart-component-${c.replace(/[^A-Za-z0-9_-]/g, '_')}`, title: `Reward component: ${c}`,
      series: [{ key: `rewards/${c}/mean`, label: 'mean' }],
    })),
    {
      id: 'chart-eval', title: 'Eval execution accuracy', yInclude: [0, 1], smooth: false,
      series: [{ key: 'eval/execution_accuracy', label: 'all' }, ...LEVELS.map((l) => ({ key: `eval/execution_accuracy/${l}`, label: l }))],
    },
    {
      id: 'chart-kl', title: 'KL to the reference', series: [{ key: 'kl', label: 'kl' }],
      ...(settings.beta === 0 ? { empty: 'no KL: beta is 0 in this run, so it has no reference pass' } : {}),
    },
    { id: 'chart-loss', title: 'Loss', series: [{ key: 'loss', label: 'loss' }] },
    { id: 'chart-grad-norm', title: 'Gradient norm', series: [{ key: 'grad_norm', label: 'grad_norm (before clipping)' }] },
    {
      id: 'chart-clip', title: 'Clip ratios', yInclude: [0, 0],
      series: [
        { key: 'clip_ratio/region_mean', label: 'region' }, { key: 'clip_ratio/low_mean', label: 'low' }, { key: 'clip_ratio/high_mean', label: 'high' },
      ],
    },
    {
      id: 'chart-length', title: 'Completion length (tokens)',
      series: [
        { key: 'completions/mean_length', label: 'mean' }, { key: 'completions/min_length', label: 'min' }, { key: 'completions/max_length', label: 'max' },
      ],
    },
    { id: 'chart-step-time', title: 'Step time (s)', series: [{ key: 'step_time', label: 'step_time' }] },
    { id: 'chart-tokens-per-second', title: 'Tokens per second', series: [{ key: 'tokens_per_second', label: 'tokens/s' }] },
  ];
  if (keys.has('learning_rate')) specs.push({ id: 'chart-lr', title: 'Learning rate', smooth: false, series: [{ key: 'learning_rate', label: 'learning_rate' }] });
  if (keys.has('entropy')) specs.push({ id: 'chart-entropy', title: 'Entropy', series: [{ key: 'entropy', label: 'entropy' }] });
  return specs;
}

function clip(text: string, max: number): string {
  return text.length <= max ? escapeHtml(text) : `${escapeHtml(text.slice(0, max))}<span class="more">… (${text.length - max} more characters)</span>`;
}

function completionsTable(rows: readonly CompletionRow[], o: Required<Pick<ReportOptions, 'maxCompletions' | 'maxTextLength'>>): string {
  if (rows.length === 0) return '<p class="nodata">no completions logged yet</p>';
  // The latest steps first; within a step, the logged order.
  const shown = rows.map((r, i) => ({ r, i })).sort((a, b) => b.r.step - a.r.step || a.i - b.i).slice(0, o.maxCompletions).map((x) => x.r);
  const comps = [...new Set(shown.flatMap((r) => Object.keys(r.components)))].sort();
  const head = ['step', 'question', 'completion', 'SQL', 'reward', ...comps, 'correct'];
  const body = shown.map((r) => {
    const cells = [
      `<td data-label="step" class="num">${r.step}</td>`,
      `<td data-label="question">${clip(r.prompt, o.maxTextLength)}</td>`,
      `<td data-label="completion"><pre>${clip(r.completion, o.maxTextLength)}</pre></td>`,
      `<td data-label="SQL"><code>${clip(r.sql, o.maxTextLength)}</code></td>`,
      `<td data-label="reward" class="num">${formatNumber(r.reward)}</td>`,
      ...comps.map((c) => `<td data-label="${escapeHtml(c)}" class="num">${formatNumber(r.components[c])}</td>`),
      `<td data-label="correct" class="${r.correct ? 'yes' : 'no'}">${r.correct === null ? '–' : r.correct ? '✓' : '✗'}</td>`,
    ];
    return `<tr>${cells.join('')}</tr>`;
  });
  const note = rows.length > shown.length ? `<p class="note">the latest ${shown.length} of ${rows.length} completions</p>` : '';
  return `${note}<div class="scroll"><table class="completions"><thead><tr>${head.map((h) => `<th>${escapeHtml(h)}</th>`).join('')}</tr></thead>` +
    `<tbody>${body.join('')}</tbody></table></div>`;
}

function summary(run: RunData): string {
  const last = (key: string): [number, number] | null => {
    for (let i = run.metrics.length - 1; i >= 0; i--) {
      const v = run.metrics[i]![key];
      if (typeof v === 'number') return [run.metrics[i]!.step, v];
    }
    return null;
  };
  let best: [number, number] | null = null;
  for (const r of run.metrics) {
    const v = r['eval/execution_accuracy'];
    if (typeof v === 'number' && (!best || v > best[1])) best = [r.step, v];
  }
  const lastStep = run.metrics.length > 0 ? Math.max(...run.metrics.map((r) => r.step)) : null;
  const item = (label: string, value: string, sub = ''): string =>
    `<div class="stat"><span>${escapeHtml(label)}</span><b>${escapeHtml(value)}</b>${sub ? `<small>${escapeHtml(sub)}</small>` : ''}</div>`;
  const at = (p: [number, number] | null): string => (p ? `step ${p[0]}` : '');
  const ev = last('eval/execution_accuracy');
  return `<section class="stats">${[
    item('steps logged', lastStep === null ? '–' : String(lastStep), `${run.metrics.length} lines`),
    item('reward', formatNumber(last('reward')?.[1]), at(last('reward'))),
    item('eval accuracy', formatNumber(ev?.[1]), ev ? at(ev) : 'no eval yet'),
    item('best eval accuracy', formatNumber(best?.[1]), at(best)),
    item('completions', String(run.completions.length)),
  ].join('')}</section>`;
}

const CSS = `
:root{color-scheme:light;--fg:#1b1f24;--muted:#5c6570;--line:#d8dde3;--bg:#fff;--panel:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1280px;margin:0 auto;padding:16px}
h1{font-size:1.35rem;margin:0 0 4px}h2{font-size:1.1rem;margin:28px 0 10px}h3{font-size:.95rem;margin:0 0 2px}
.sub,.note{color:var(--muted);font-size:.85rem;margin:0 0 6px}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px;margin-top:12px}
.stat{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:8px 10px;display:flex;flex-direction:column}
.stat span{color:var(--muted);font-size:.8rem}.stat b{font-size:1.2rem}.stat small{color:var(--muted);font-size:.75rem}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,420px),1fr));gap:12px}
figure.chart{margin:0;border:1px solid var(--line);border-radius:6px;padding:10px;background:var(--bg);min-width:0}
figure.chart svg{width:100%;height:auto;display:block}
svg .grid line{stroke:#eceff3;stroke-width:1}svg .axis line{stroke:#9aa4ae}svg text{font-size:12px;fill:var(--muted)}
svg path{fill:none;stroke-width:2;stroke-linejoin:round;stroke-linecap:round}svg path.faint{stroke-width:1.2;opacity:.35}
.legend{list-style:none;margin:6px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.82rem}
.swatch{display:inline-block;width:12px;height:3px;margin-right:5px;vertical-align:middle}
.nodata{color:var(--muted);font-style:italic}
pre.config{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:10px;overflow:auto;font-size:.8rem;max-height:480px}
.scroll{overflow-x:auto}
table.completions{border-collapse:collapse;width:100%;font-size:.82rem}
table.completions th,table.completions td{border-bottom:1px solid var(--line);padding:6px;vertical-align:top;text-align:left}
table.completions pre{margin:0;white-space:pre-wrap;word-break:break-word;max-width:42ch;font-size:.78rem}
table.completions code{white-space:pre-wrap;word-break:break-word}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.yes{color:#0a7d32}td.no{color:#b3261e}
.more{color:var(--muted)}
@media (max-width:640px){
 main{padding:10px}
 svg text{font-size:19px}
 table.completions,table.completions tbody,table.completions tr,table.completions td{display:block;width:100%}
 table.completions thead{display:none}
 table.completions tr{border:1px solid var(--line);border-radius:6px;margin-bottom:10px;padding:4px}
 table.completions td{border:0;padding:3px 4px;text-align:left}
 table.completions td::before{content:attr(data-label);display:block;color:var(--muted);font-size:.72rem}
 table.completions pre{max-width:none}
}`;

/** The whole page for one run. */
export function renderReport(run: RunData, options: ReportOptions = {}): { html: string; charts: Record<string, Record<string, number>> } {
  const title = options.title ?? `sqlr1 report: ${basename(dirname(resolve(run.dir)))}/${basename(resolve(run.dir))}`;
  const steps = run.metrics.map((r) => r.step);
  const xDomain: [number, number] | undefined = steps.length > 0 ? [Math.min(...steps), Math.max(...steps)] : undefined;
  const charts = chartSpecs(run.metrics, runSettings(run.configText)).map((spec) => ({ spec, out: renderChart(spec, run.metrics, { ...options, ...(xDomain ? { xDomain } : {}) }) }));
  const skipped = run.skippedLines.metrics + run.skippedLines.completions;
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>${escapeHtml(title)}</title><style>${CSS}</style></head>
<body><main>
<h1>${escapeHtml(title)}</h1>
<p class="sub">${escapeHtml(resolve(run.dir))} · written ${escapeHtml(new Date().toISOString().replace(/\.\d+Z$/, 'Z'))}` +
  `${options.smoothing !== 0 ? ` · smoothing ${formatNumber(options.smoothing ?? 0.6)} (faint: raw values)` : ''}</p>
${skipped > 0 ? `<p class="note">${skipped} unreadable log lines skipped (a run still writing, or cut off)</p>` : ''}
${summary(run)}
<h2>Training curves</h2>
<section class="charts">${charts.map((c) => c.out.html).join('\n')}</section>
<h2>Sampled completions</h2>
${completionsTable(run.completions, { maxCompletions: options.maxCompletions ?? 60, maxTextLength: options.maxTextLength ?? 1500 })}
<h2>Config</h2>
${run.configText === null ? '<p class="nodata">no config.yaml in the run directory</p>' : `<pre class="config">${escapeHtml(run.configText)}</pre>`}
</main></body></html>
`;
  return { html, charts: Object.fromEntries(charts.map((c) => [c.spec.id, c.out.points])) };
}
