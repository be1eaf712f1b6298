import tap from 'tap';
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { emaSmooth, escapeHtml, readRun, renderReport, writeReport } from '../../lib/report/index.js';
import { register } from '../../lib/cli/commands/report.js';
import { runCommand } from '../helpers/cli.js';
import { tempDir } from '../helpers/native.js';
import { HOSTILE, writeFixtureRun } from './fixture.js';

/** Each raw series path in the page: its chart id, key, declared point count and vertex count. */
export function rawPaths(html: string): { chart: string; key: string; declared: number; vertices: number }[] {
  const out: { chart: string; key: string; declared: number; vertices: number }[] = [];
  for (const fig of html.matchAll(/<figure class="chart" id="([^"]+)">([\s\S]*?)<\/figure>/g)) {
    for (const p of fig[2]!.matchAll(/<path class="raw[^"]*" data-series="([^"]+)" data-points="(\d+)" stroke="[^"]+" d="([^"]*)"/g)) {
      out.push({ chart: fig[1]!, key: p[1]!, declared: Number(p[2]), vertices: (p[3]!.match(/[ML]/g) ?? []).length });
    }
  }
  return out;
}

tap.test('every chart series has one vertex per metric line holding its key', async (t) => {
  const dir = tempDir(t);
  const fx = writeFixtureRun(join(dir, 'run'), { truncated: true });
  const run = readRun(fx.dir);
  t.equal(run.metrics.length, fx.steps + fx.evalSteps.length, 'every complete line is read');
  t.same(run.skippedLines, { metrics: 1, completions: 0 }, 'the cut-off last line is skipped and counted');
  const { html, charts } = renderReport(run);
  const paths = rawPaths(html);
  t.ok(paths.length >= 20, `${paths.length} series drawn`);
  for (const p of paths) {
    t.equal(p.declared, fx.counts[p.key], `${p.chart} ${p.key}: ${fx.counts[p.key]} points`);
    t.equal(p.vertices, fx.counts[p.key], `${p.chart} ${p.key}: one vertex per point`);
  }
  const drawn = new Set(paths.map((p) => p.key));
  for (const key of ['reward', 'rewards/execution/mean', 'rewards/format/mean', 'rewards/partial/mean', 'eval/execution_accuracy',
    'eval/execution_accuracy/easy', 'eval/execution_accuracy/medium', 'eval/execution_accuracy/hard', 'eval/execution_accuracy/extra',
    'kl', 'loss', 'grad_norm', 'clip_ratio/low_mean', 'clip_ratio/high_mean', 'clip_ratio/region_mean', 'completions/mean_length',
    'step_time', 'tokens_per_second']) {
    t.ok(drawn.has(key), `${key} is drawn`);
  }
  t.equal(charts['chart-eval']!['eval/execution_accuracy'], fx.evalSteps.length);
  t.equal(charts['chart-kl']!['kl'], fx.steps - 1, 'a series starts where its key starts');
  // The eval chart: few points, so a marker per point and no smoothing.
  const evalFig = /<figure class="chart" id="chart-eval">([\s\S]*?)<\/figure>/.exec(html)![1]!;
  t.equal((evalFig.match(/<circle /g) ?? []).length, 5 * fx.evalSteps.length);
  t.notMatch(evalFig, /class="smooth"/);
  // Every chart spans the run's steps: an eval point sits at the same x as the training step it was logged at.
  const cx = (fig: string, step: number): string | undefined =>
    [...fig.matchAll(/<circle cx="([\d.]+)"[^>]*><title>[^<]* at step (\d+):/g)].find((m) => Number(m[2]) === step)?.[1];
  const rewardFig = /<figure class="chart" id="chart-reward">([\s\S]*?)<\/figure>/.exec(html)![1]!;
  for (const step of fx.evalSteps) t.equal(cx(evalFig, step), cx(rewardFig, step), `eval at step ${step} lines up with training`);
  t.match(/<figure class="chart" id="chart-reward">([\s\S]*?)<\/figure>/.exec(html)![1]!, /class="smooth"/, 'noisy curves are smoothed');
});

tap.test('the page is self-contained and run text is escaped', async (t) => {
  const dir = tempDir(t);
  const fx = writeFixtureRun(join(dir, 'run'));
  const { html } = renderReport(readRun(fx.dir));
  t.notMatch(html, /<script/i, 'no script element, not even from model output');
  t.notMatch(html, /<img/i);
  t.notMatch(html, /<[^>]*\s(src|href)=/i, 'no element loads anything');
  t.notMatch(html, /https?:\/\//, 'no network address');
  t.match(html, /Content-Security-Policy" content="default-src 'none'/);
  for (const h of HOSTILE) t.ok(html.includes(escapeHtml(h)), `hostile text shown escaped: ${h.slice(0, 30)}`);
  t.ok(html.includes('&lt;b&gt;not bold&lt;/b&gt;'), 'the config is escaped too');
  t.match(html, /<meta name="viewport" content="width=device-width/);
  t.match(html, /@media \(max-width:640px\)/, 'a phone layout');
  // The completions table: the latest steps first, one row per completion, a column per component.
  const rows = html.match(/<tr><td data-label="step"/g) ?? [];
  t.equal(rows.length, fx.completions);
  t.match(html, /<th>execution<\/th><th>format<\/th><th>partial<\/th>/);
  const firstStep = /<tr><td data-label="step" class="num">(\d+)</.exec(html)![1];
  t.equal(Number(firstStep), 36, 'the latest step comes first');
});

tap.test('a run without eval, completions or config, or with nothing at all, still gives a page', async (t) => {
  const dir = tempDir(t);
  const run = join(dir, 'young');
  mkdirSync(run);
  writeFileSync(join(run, 'metrics.jsonl'), '{"step":1,"reward":0.1,"kl":null}\n{"step":2,"reward":0.2}\nnot json\n[1,2]\n{"reward":3}\n');
  const path = await writeReport(run);
  t.equal(path, join(run, 'report.html'));
  const html = readFileSync(path, 'utf8');
  t.match(html, /<figure class="chart empty" id="chart-eval">[\s\S]*?no data yet/);
  t.match(html, /no eval yet/);
  t.match(html, /no completions logged yet/);
  t.match(html, /no config.yaml/);
  t.match(html, /<figure class="chart empty" id="chart-kl">[\s\S]*?no data yet/, 'without a config the KL panel cannot say why');
  t.match(html, /3 unreadable log lines skipped/);
  t.same(rawPaths(html).map((p) => [p.key, p.vertices]), [['reward', 2]]);

  // beta 0: the trainer makes no reference pass, and the KL panel says so instead of "no data yet".
  writeFileSync(join(run, 'config.yaml'), 'beta: 0\nnum_generations: 4\n');
  const noKl = readFileSync(await writeReport(run), 'utf8');
  t.match(noKl, /<figure class="chart empty" id="chart-kl">[\s\S]*?no KL: beta is 0 in this run, so it has no reference pass/);
  writeFileSync(join(run, 'config.yaml'), 'beta: [unclosed\n');
  t.match(readFileSync(await writeReport(run), 'utf8'), /<figure class="chart empty" id="chart-kl">[\s\S]*?no data yet/, 'an unreadable config changes nothing');

  const empty = join(dir, 'empty');
  mkdirSync(empty);
  t.ok(existsSync(await writeReport(empty, { out: join(dir, 'elsewhere.html') })));
  await t.rejects(writeReport(join(dir, 'absent')), { code: 'ERR_INVALID_ARG', message: /not found/ });
});

tap.test('emaSmooth is TensorBoard\'s debiased EMA', async (t) => {
  const xs = [1, 3, 2, 5, 4];
  const w = 0.6;
  // Reference: the debiased form written out, s_n = sum_i w^(n-i) (1-w) x_i / (1 - w^(n+1)).
  const ref = xs.map((_, n) => xs.slice(0, n + 1).reduce((s, x, i) => s + w ** (n - i) * (1 - w) * x, 0) / (1 - w ** (n + 1)));
  const got = emaSmooth(xs, w);
  got.forEach((v, i) => t.ok(Math.abs(v - ref[i]!) < 1e-12, `point ${i}: ${v} vs ${ref[i]}`));
  t.equal(got[0], 1, 'the first value is unbiased');
  t.same(emaSmooth(xs, 0), xs, 'weight 0 is no smoothing');
});

tap.test('sqlr1 report, in process', async (t) => {
  const dir = tempDir(t);
  const fx = writeFixtureRun(join(dir, 'run'), { steps: 12, evalEvery: 4 });
  const out = await runCommand(register, ['report', fx.dir, '--smoothing', '0']);
  t.equal(out, `${join(fx.dir, 'report.html')}\n`);
  const html = readFileSync(join(fx.dir, 'report.html'), 'utf8');
  t.notMatch(html, /class="smooth"/, '--smoothing 0 draws raw curves only');
  t.equal(rawPaths(html).find((p) => p.key === 'reward')?.vertices, 12);
});
