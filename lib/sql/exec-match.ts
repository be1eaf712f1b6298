import { compareResults, orderMatters } from './compare.js';
import type { SqlExecutor, SqlResult } from './executor.js';
import { isWord, tokenize } from './lexer.js';

export interface ExecMatchOptions {
  /** Keep DISTINCT when executing (the reference's --keep_distinct). Default false, as in the reference. */
  keepDistinct?: boolean;
}

export interface ExecMatch {
  /** The predicted result equals the gold result (see {@link compareResults}); false when either fails. */
  correct: boolean;
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
 * Spider execution match of one prediction: both queries are normalized (see {@link normalizeForExecution}),
 * run on `dbPath` (the gold through the executor's result cache), and compared with {@link compareResults}, where row
 * order matters only when the gold SQL has ORDER BY.
 */
export async function execMatch(
  executor: SqlExecutor,
  dbPath: string,
  predSql: string,
  goldSql: string,
  options: ExecMatchOptions = {},
): Promise<ExecMatch> {
  const gold = normalizeForExecution(goldSql, options);
  const [goldResult, predResult] = await Promise.all([
    executor.run(dbPath, gold, { cache: true }),
    executor.run(dbPath, normalizeForExecution(predSql, options)),
  ]);
  const correct = goldResult.ok && predResult.ok && compareResults(goldResult.rows, predResult.rows, orderMatters(gold));
  return { correct, pred: predResult, gold: goldResult };
}
