import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sqlr1Error } from '../errors.js';
import { execMatch } from '../sql/exec-match.js';
import type { ExecMetric } from '../sql/compare.js';
import type { SqlErrorCode, SqlExecutor } from '../sql/executor.js';
import { classifyHardness, HARDNESS_LEVELS, type Hardness, type SpiderSql } from '../spider/hardness.js';

/** One gold line: `SQL<TAB>db_id`. */
export interface GoldEntry {
  sql: string;
  dbId: string;
  /** Spider's parsed SQL, when known, for the official hardness path; else hardness comes from `sql`. */
  parsed?: SpiderSql;
}

export interface EvalSqlOptions {
  gold: readonly GoldEntry[];
  /** One predicted SQL per gold entry, in the same order ('' for no prediction). */
  pred: readonly string[];
  /** Directory holding `<db_id>/<db_id>.sqlite`. */
  dbRoot: string;
  /** Known database ids (e.g. from tables.json); gold entries naming another are skipped. Default: no check. */
  tables?: ReadonlySet<string>;
  executor: SqlExecutor;
  /** Keep DISTINCT when executing (spider metric). Default false, as Spider's evaluator. */
  keepDistinct?: boolean;
  /** Comparison semantics: 'spider' (default) or 'bird' (see ExecMetric). */
  metric?: ExecMetric;
  /** Called after each scored example. */
  onProgress?: (done: number, total: number) => void;
}

export type EvalLevel = Hardness | 'all';
export const EVAL_LEVELS: readonly EvalLevel[] = [...HARDNESS_LEVELS, 'all'];

export interface EvalExample {
  /** 0-based line number in the gold and prediction files. */
  index: number;
  dbId: string;
  gold: string;
  pred: string;
  /** null when the gold SQL could not be parsed (the example then counts in 'all' only). */
  hardness: Hardness | null;
  /**
   * `skipped`: the database is missing or unknown; `gold_error`: the gold query failed to execute. Neither
   * counts in the accuracy (the prediction cannot be judged), both are reported.
   */
  status: 'correct' | 'wrong' | 'skipped' | 'gold_error';
  /** Why the prediction failed to execute. */
  error?: { code: SqlErrorCode; message: string };
  /** Why the gold query itself failed (status `gold_error`). */
  goldError?: { code: SqlErrorCode; message: string };
  ms?: number;
}

export interface EvalSqlReport {
  metric: ExecMetric;
  /** Count and execution accuracy per level; accuracy is 0 for an empty level. */
  scores: Record<EvalLevel, { count: number; exec: number }>;
  /** Examples skipped for a missing or unknown database, and which databases. */
  skipped: { count: number; dbIds: string[] };
  /** Examples whose gold query failed to execute (0-based indices): left out of every level, not counted wrong. */
  goldErrors: { count: number; indices: number[] };
  /** Examples whose gold SQL could not be parsed for hardness. */
  unclassified: number;
  examples: EvalExample[];
}

/** Reads a gold file: one `SQL<TAB>db_id` per line; trailing blank lines are ignored. */
export async function readGoldFile(path: string): Promise<GoldEntry[]> {
  const lines = await readLines(path);
  return lines.map((line, i) => {
    const tab = line.lastIndexOf('\t');
    if (tab < 0) throw new Sqlr1Error('ERR_DATA', `gold file ${path}, line ${i + 1}: expected "SQL<TAB>db_id", received no tab`);
    const sql = line.slice(0, tab).trim();
    const dbId = line.slice(tab + 1).trim();
    if (sql === '' || dbId === '') {
      throw new Sqlr1Error('ERR_DATA', `gold file ${path}, line ${i + 1}: expected "SQL<TAB>db_id", received an empty part`);
    }
    return { sql, dbId };
  });
}

/** Reads a prediction file: one SQL per line (an empty line is an empty prediction); trailing blank lines are ignored. */
export async function readPredFile(path: string): Promise<string[]> {
  return (await readLines(path)).map((l) => l.trim());
}

async function readLines(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new Sqlr1Error('ERR_DATA', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  while (lines.length > 0 && (lines[lines.length - 1] as string).trim() === '') lines.pop();
  return lines;
}

/**
 * Scores predictions by execution like Spider's evaluation script (`--etype exec`, test-suite semantics: see
 * compareResults and normalizeForExecution; or BIRD's set semantics with `metric: 'bird'`): per hardness level,
 * the count of examples and the fraction whose predicted result matches the gold result. Examples whose database
 * is missing (or not in `tables`) are skipped, and examples whose gold query fails are gold errors: both are
 * reported and left out of the counts, never scored as wrong predictions.
 */
export async function evalSql(options: EvalSqlOptions): Promise<EvalSqlReport> {
  const { gold, pred, dbRoot, tables, executor } = options;
  const metric = options.metric ?? 'spider';
  if (gold.length !== pred.length) {
    const counts = `${pred.length} predictions for ${gold.length} gold entries`;
    throw new Sqlr1Error('ERR_DATA', `evalSql: expected one prediction per gold entry, received ${counts}`);
  }
  const dbPath = (dbId: string): string => join(dbRoot, dbId, `${dbId}.sqlite`);
  const present = new Map<string, boolean>();
  const hasDb = (dbId: string): boolean => {
    let ok = present.get(dbId);
    if (ok === undefined) present.set(dbId, (ok = (!tables || tables.has(dbId)) && existsSync(dbPath(dbId))));
    return ok;
  };
  let done = 0;
  const examples = await Promise.all(
    gold.map(async (g, index): Promise<EvalExample> => {
      const base = { index, dbId: g.dbId, gold: g.sql, pred: pred[index] as string };
      if (!hasDb(g.dbId)) {
        options.onProgress?.(++done, gold.length);
        return { ...base, hardness: null, status: 'skipped' };
      }
      const hardness = classifyHardness(g.parsed ?? g.sql);
      const m = await execMatch(executor, dbPath(g.dbId), base.pred, g.sql, { keepDistinct: options.keepDistinct ?? false, metric });
      const status = m.goldError ? 'gold_error' : m.correct ? 'correct' : 'wrong';
      const ex: EvalExample = { ...base, hardness, status, ms: m.pred.ms };
      if (!m.pred.ok) ex.error = m.pred.error;
      if (!m.gold.ok) ex.goldError = m.gold.error;
      options.onProgress?.(++done, gold.length);
      return ex;
    }),
  );
  const scores = Object.fromEntries(EVAL_LEVELS.map((l) => [l, { count: 0, exec: 0 }])) as EvalSqlReport['scores'];
  const skippedDbs = new Set<string>();
  let unclassified = 0;
  for (const ex of examples) {
    if (ex.status === 'skipped') {
      skippedDbs.add(ex.dbId);
      continue;
    }
    if (ex.status === 'gold_error') continue;
    const levels: EvalLevel[] = ex.hardness ? [ex.hardness, 'all'] : ['all'];
    if (!ex.hardness) unclassified++;
    for (const l of levels) {
      scores[l].count++;
      if (ex.status === 'correct') scores[l].exec++;
    }
  }
  for (const l of EVAL_LEVELS) scores[l].exec = scores[l].count > 0 ? scores[l].exec / scores[l].count : 0;
  const skippedCount = examples.filter((e) => e.status === 'skipped').length;
  const goldErrors = examples.filter((e) => e.status === 'gold_error').map((e) => e.index);
  return {
    metric, scores, skipped: { count: skippedCount, dbIds: [...skippedDbs].sort() },
    goldErrors: { count: goldErrors.length, indices: goldErrors }, unclassified, examples,
  };
}

/** The score table in the layout of Spider's evaluation.py (20-character columns). */
export function formatScoreTable(report: EvalSqlReport): string {
  const cell = (s: string | number): string => String(s).padEnd(20);
  const lines = [
    [cell(''), ...EVAL_LEVELS.map(cell)].join(' ').trimEnd(),
    [cell('count'), ...EVAL_LEVELS.map((l) => cell(report.scores[l].count))].join(' ').trimEnd(),
    '=====================   EXECUTION ACCURACY     =====================',
    [cell('execution'), ...EVAL_LEVELS.map((l) => cell(report.scores[l].exec.toFixed(3)))].join(' ').trimEnd(),
  ];
  if (report.skipped.count > 0) {
    lines.push('', `skipped ${report.skipped.count} examples whose database is missing: ${report.skipped.dbIds.join(', ')}`);
  }
  if (report.goldErrors.count > 0) {
    const shown = report.goldErrors.indices.slice(0, 20).map((i) => i + 1).join(', ');
    const more = report.goldErrors.count > 20 ? ', ...' : '';
    lines.push(`${report.goldErrors.count} gold queries failed to execute (lines ${shown}${more}); they count nowhere`);
  }
  if (report.unclassified > 0) lines.push(`${report.unclassified} gold queries could not be parsed for hardness; they count in "all" only`);
  return `${lines.join('\n')}\n`;
}
