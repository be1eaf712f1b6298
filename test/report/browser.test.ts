/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
/**
 * The report in a real browser (headless Chromium through puppeteer-core): no console errors, no request
 * leaves the page, every chart shows its data points, the page fits a phone's width, and the screenshot is not
 * blank. Without Chromium the test is skipped outside CI and FAILS in CI (CI=true): CI must run it.
 * Set SQLR1_SCREENSHOT_DIR to keep the screenshots.
 */
import tap from 'tap';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeReport } from '../../lib/report/index.js';
import { tempDir } from '../helpers/native.js';
import { writeFixtureRun } from './fixture.js';

// CHROMIUM_PATH, when set, is the only candidate (so a wrong path is reported, not papered over).
const CANDIDATES = process.env['CHROMIUM_PATH'] ? [process.env['CHROMIUM_PATH']] : ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];
const chromium = CANDIDATES.find((p) => existsSync(p));
const inCi = process.env['CI'] === 'true' || process.env['CI'] === '1';

if (!chromium && !inCi) {
  const reason = `no Chromium at ${CANDIDATES.join(', ')} (apt-get install -y chromium, or set CHROMIUM_PATH)`;
  console.log(`# browser test skipped: ${reason}`);
  tap.test('the report in a browser', { skip: reason }, () => undefined);
} else {
  tap.test('the report in a browser', async (t) => {
    if (!chromium) {
      t.fail(`CI=true but no Chromium at ${CANDIDATES.join(', ')}: .ci/run must install it (apt-get install -y chromium)`);
      return;
    }
    const { default: puppeteer } = await import('puppeteer-core');
    const dir = tempDir(t);
    const fx = writeFixtureRun(join(dir, 'run'), { steps: 60, evalEvery: 10, truncated: true });
    const path = await writeReport(fx.dir);
    const shots = process.env['SQLR1_SCREENSHOT_DIR'] ?? dir;
    mkdirSync(shots, { recursive: true });

    const root = typeof process.getuid === 'function' && process.getuid() === 0;
    const browser = await puppeteer.launch({
      executablePath: chromium, headless: true,
      args: [...(root ? ['--no-sandbox'] : []), '--disable-gpu', '--disable-dev-shm-usage'],
    });
    t.teardown(() => browser.close());
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warn') problems.push(`console ${m.type()}: ${m.text()}`); });
    page.on('pageerror', (e) => problems.push(`page error: ${String(e)}`));
    const requests: string[] = [];
    page.on('request', (r) => requests.push(r.url()));

    await page.setViewport({ width: 1280, height: 900 });
    await page.goto(pathToFileURL(path).href, { waitUntil: 'load' });
    t.same(requests, [pathToFileURL(path).href], 'the page loads nothing but itself');

    // What the browser actually laid out: per chart, each series' vertices and markers, and the drawn size.
    const charts = await page.$$eval('figure.chart', (figs) => figs.map((f) => ({
      id: f.id,
      empty: f.classList.contains('empty'),
      series: [...f.querySelectorAll('path.raw')].map((p) => ({
        key: p.getAttribute('data-series') ?? '',
        vertices: ((p.getAttribute('d') ?? '').match(/[ML]/g) ?? []).length,
        length: (p as SVGPathElement).getTotalLength(),
        markers: f.querySelectorAll(`g.markers[data-series="${CSS.escape(p.getAttribute('data-series') ?? '')}"] circle`).length,
      })),
      width: f.querySelector('svg')?.getBoundingClientRect().width ?? 0,
      height: f.querySelector('svg')?.getBoundingClientRect().height ?? 0,
    })));
    t.ok(charts.length >= 12, `${charts.length} charts`);
    for (const c of charts) {
      t.notOk(c.empty, `${c.id} has data`);
      t.ok(c.width > 300 && c.height > 100, `${c.id} is drawn (${c.width.toFixed(0)} x ${c.height.toFixed(0)} px)`);
      for (const s of c.series) {
        t.equal(s.vertices, fx.counts[s.key], `${c.id} ${s.key}: ${fx.counts[s.key]} data points`);
        if (s.vertices > 1) t.ok(s.length > 0, `${c.id} ${s.key}: the line has length`);
        if (s.markers > 0) t.equal(s.markers, fx.counts[s.key], `${c.id} ${s.key}: a marker per point`);
      }
    }
    const evalChart = charts.find((c) => c.id === 'chart-eval');
    t.same(evalChart?.series.map((s) => [s.key, s.markers]), ['', '/easy', '/medium', '/hard', '/extra']
      .map((l) => [`eval/execution_accuracy${l}`, fx.evalSteps.length]), 'eval accuracy: all and each hardness, a marker per eval');
    t.equal(await page.$$eval('table.completions tbody tr', (r) => r.length), fx.completions);
    t.equal(await page.$$eval('script', (s) => s.length), 0, 'no script, even from model output');
    t.equal(await page.title(), `sqlr1 report: ${basename(dir)}/run`, 'model output did not change the page');
    const desktop = await page.screenshot({ type: 'png', fullPage: true });
    writeFileSync(join(shots, 'report-desktop.png'), desktop);

    await page.setViewport({ width: 390, height: 844, isMobile: true, deviceScaleFactor: 1 });
    await page.reload({ waitUntil: 'load' });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    t.ok(overflow <= 0, `phone width: no horizontal scrolling (overflow ${overflow} px)`);
    const phoneChart = await page.$eval('#chart-reward svg', (s) => s.getBoundingClientRect().width);
    t.ok(phoneChart > 300 && phoneChart <= 390, `phone width: a chart spans the screen (${phoneChart.toFixed(0)} px)`);
    const phone = await page.screenshot({ type: 'png', fullPage: false });
    writeFileSync(join(shots, 'report-phone.png'), phone);

    // Not blank: decode the screenshot in the browser (the report's policy allows data: images) and measure the
    // pixels' spread.
    const stats = await page.evaluate(async (b64: string) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const canvas = document.createElement('canvas');
      canvas.width = img.width;
      canvas.height = img.height;
      const ctx = canvas.getContext('2d')!;
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, img.width, img.height).data;
      let sum = 0, sq = 0, n = 0, colored = 0;
      for (let i = 0; i < d.length; i += 4) {
        const l = 0.299 * d[i]! + 0.587 * d[i + 1]! + 0.114 * d[i + 2]!;
        sum += l; sq += l * l; n++;
        if (Math.max(d[i]!, d[i + 1]!, d[i + 2]!) - Math.min(d[i]!, d[i + 1]!, d[i + 2]!) > 60) colored++;
      }
      const mean = sum / n;
      return { width: img.width, height: img.height, variance: sq / n - mean * mean, colored: colored / n };
    }, Buffer.from(desktop).toString('base64'));
    const measured = stats;
    t.comment(`desktop screenshot ${measured.width} x ${measured.height} px, luminance variance ${measured.variance.toFixed(0)}, ` +
      `${(measured.colored * 100).toFixed(2)}% coloured pixels; saved in ${shots}`);
    // A blank page has variance 0; text and grid lines on white give hundreds; the coloured curves must show.
    t.ok(measured.variance > 100, `the screenshot is not blank (luminance variance ${measured.variance.toFixed(0)})`);
    t.ok(measured.colored > 0.001, `coloured curves are visible (${(measured.colored * 100).toFixed(2)}% of pixels)`);
    t.same(problems, [], 'no console errors or warnings');
  });
}
