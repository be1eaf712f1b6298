/**
 * Reading a run directory for the report: config.yaml (kept as text, comments and all), metrics.jsonl and
 * completions.jsonl. A run may be read while it trains or after it was killed, so a missing file, a truncated
 * last line or a stray bad line is tolerated: it is skipped and counted, never fatal.
 *
 * Formats (written by the trainer, lib/grpo/metrics.ts):
 * - metrics.jsonl: one JSON object per logged step, `{ step, epoch?, <metric>: number, ... }` with the contract's
 *   metric names (reward, rewards/<component>/mean, kl, loss, ..., eval/execution_accuracy[/<level>]). Eval
 *   values may share a step's line or come on lines of their own; a series is made of every line holding its key.
 * - completions.jsonl: one JSON object per sampled completion, `{ step, prompt, completion, sql, reward,
 *   components: { name: number | null }, correct }`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { COMPLETIONS_FILE, METRICS_FILE, type CompletionRecord } from '../grpo/metrics.js';

export interface MetricRow {
  step: number;
  [key: string]: number;
}

/** A completions.jsonl line as the trainer writes it; `correct` is null where a line lacks it. */
export type CompletionRow = Omit<CompletionRecord, 'correct'> & { correct: boolean | null };

export interface RunData {
  dir: string;
  /** config.yaml as written (null when absent). */
  configText: string | null;
  metrics: MetricRow[];
  completions: CompletionRow[];
  /** Lines that could not be read (a truncated last line, a corrupt line), per file. */
  skippedLines: { metrics: number; completions: number };
}

/** Each line of a JSONL file parsed as an object; unparsable lines are counted. */
function readJsonl(path: string): { rows: Record<string, unknown>[]; skipped: number } {
  if (!existsSync(path)) return { rows: [], skipped: 0 };
  const rows: Record<string, unknown>[] = [];
  let skipped = 0;
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line.trim() === '') continue;
    try {
      const v: unknown = JSON.parse(line);
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) rows.push(v as Record<string, unknown>);
      else skipped++;
    } catch {
      skipped++;
    }
  }
  return { rows, skipped };
}

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** Keeps a metric line's finite numbers (JSON has no NaN; null marks a value that was not finite). */
function toMetricRow(r: Record<string, unknown>): MetricRow | null {
  if (!finite(r['step'])) return null;
  const row: MetricRow = { step: r['step'] };
  for (const [k, v] of Object.entries(r)) if (finite(v)) row[k] = v;
  return row;
}

function toCompletionRow(r: Record<string, unknown>): CompletionRow | null {
  if (!finite(r['step'])) return null;
  const str = (v: unknown): string => (typeof v === 'string' ? v : v === undefined || v === null ? '' : JSON.stringify(v));
  const components: Record<string, number | null> = {};
  if (r['components'] !== null && typeof r['components'] === 'object') {
    for (const [k, v] of Object.entries(r['components'] as Record<string, unknown>)) components[k] = finite(v) ? v : null;
  }
  return {
    step: r['step'], prompt: str(r['prompt']), completion: str(r['completion']), sql: str(r['sql']),
    reward: finite(r['reward']) ? r['reward'] : null, components,
    correct: typeof r['correct'] === 'boolean' ? r['correct'] : null,
  };
}

export function readRun(dir: string): RunData {
  const configPath = join(dir, 'config.yaml');
  const metrics = readJsonl(join(dir, METRICS_FILE));
  const completions = readJsonl(join(dir, COMPLETIONS_FILE));
  const m = metrics.rows.map(toMetricRow);
  const c = completions.rows.map(toCompletionRow);
  return {
    dir,
    configText: existsSync(configPath) ? readFileSync(configPath, 'utf8') : null,
    metrics: m.filter((r): r is MetricRow => r !== null),
    completions: c.filter((r): r is CompletionRow => r !== null),
    skippedLines: {
      metrics: metrics.skipped + m.filter((r) => r === null).length,
      completions: completions.skipped + c.filter((r) => r === null).length,
    },
  };
}
