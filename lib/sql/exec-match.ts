import { resultsMatch, type ExecMetric } from './compare.js';
import type { SqlExecutor, SqlResult } from './executor.js';
import { isWord, tokenize } from './lexer.js';

export interface ExecMatchOptions {
  /** Keep DISTINCT when executing (the reference's --keep_distinct). Default false, as in the reference. */
  keepDistinct?: boolean;
  /**
   * Comparison semantics (see {@link ExecMetric}). Default 'spider'. With 'bird' both queries run as written
   * (BIRD's evaluator rewrites nothing) and `keepDistinct` is ignored.
   */
  metric?: ExecMetric;
}

export interface ExecMatch {
  /** The predicted result equals the gold result under the metric; false when either fails. */
  correct: boolean;
  /** The gold query itself failed to execute: the example cannot be scored (not a wrong prediction). */
  goldError: boolean;
  pred: SqlResult;
  gold: SqlResult;
}

/**
 * Rewrites SQL the way test-suite-sql-eval does before executing either side: spaced comparison operators are
 * joined ("> =" -> ">="), YEAR(CURDATE()) becomes 2020, and, unless `keepDistinct`, every DISTINCT keyword is
 * dropped (the reference removes the token, so count(DISTINCT x) becomes count(x) as well).
 */
export function normalizeForExecution(sql: string, options: ExecMatchOptions = {}): string {
  let s = sql.replaceAll('> =', '>=').replaceAll('< =', '<=').replaceAll('! =', '!=');
  s = s.replace(/YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*/gi, '2020');
  if (!options.keepDistinct) {
    s = tokenize(s)
      .filter((t) => !isWord(t, 'distinct'))
      .map((t) => t.text)
      .join('');
  }
  return s;
}

/**
 * Execution match of one prediction. With the default 'spider' metric both queries are normalized (see
 * {@link normalizeForExecution}), run on `dbPath` (the gold through the executor's result cache), and compared
 * with compareResults, where row order matters only when the gold SQL has ORDER BY; with 'bird' they run as
 * written and compare as sets of rows (compareResultsBird).
 */
export async function execMatch(
  executor: SqlExecutor,
  dbPath: string,
  predSql: string,
  goldSql: string,
  options: ExecMatchOptions = {},
): Promise<ExecMatch> {
  const metric = options.metric ?? 'spider';
  const prepare = (sql: string): string => (metric === 'bird' ? sql : normalizeForExecution(sql, options));
  const gold = prepare(goldSql);
  const [goldResult, predResult] = await Promise.all([
    executor.run(dbPath, gold, { cache: true }),
    executor.run(dbPath, prepare(predSql)),
  ]);
  const correct = goldResult.ok && predResult.ok && resultsMatch(metric, goldResult.rows, predResult.rows, gold);
  return { correct, goldError: !goldResult.ok, pred: predResult, gold: goldResult };
}
