/**
 * `sqlr1 report RUN_DIR`: the run's curves, sampled completions and config as one self-contained HTML page.
 */
import { existsSync, statSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sqlr1Error } from '../errors.js';
import { renderReport, type ReportOptions } from './html.js';
import { readRun } from './run-dir.js';

export { readRun, type RunData, type MetricRow, type CompletionRow } from './run-dir.js';
export { renderReport, chartSpecs, type ReportOptions, type RunSettings } from './html.js';
export { renderChart, emaSmooth, seriesPoints, type ChartSpec, type SeriesSpec } from './chart.js';
export { escapeHtml } from './escape.js';

export interface WriteReportOptions extends ReportOptions {
  /** Where to write the page. Default RUN_DIR/report.html. */
  out?: string;
}

/** Reads a run directory and writes its report page (written whole, then renamed); returns the page's path. */
export async function writeReport(runDir: string, options: WriteReportOptions = {}): Promise<string> {
  if (!existsSync(runDir) || !statSync(runDir).isDirectory()) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `writeReport: expected a run directory, received ${runDir} (${existsSync(runDir) ? 'not a directory' : 'not found'})`);
  }
  const out = options.out ?? join(runDir, 'report.html');
  const { html } = renderReport(readRun(runDir), options);
  const tmp = `${out}.tmp-${process.pid}`;
  await writeFile(tmp, html);
  await rename(tmp, out);
  return out;
}
