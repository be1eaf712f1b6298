import type { SqlRow, SqlValue } from './executor.js';

/**
 * Identity of a value under Python's equality, which Spider's evaluator relies on: `1 == 1.0`, `None == None`,
 * text differs from bytes, and integers compare exactly (bigint and number with the same integer value meet).
 */
export function valueKey(v: SqlValue): string {
  if (v === null) return 'n';
  if (typeof v === 'bigint') return `i${v}`;
  if (typeof v === 'number') {
    // Integral floats equal the integer of the same value in Python; 1e300 == 10**300 holds there too.
    if (Number.isInteger(v)) return `i${BigInt(v)}`;
    return Number.isNaN(v) ? 'nan' : `f${v}`;
  }
  if (typeof v === 'string') return `s${v}`;
  return `b${Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex')}`;
}

const SEP = '\u0001';

/**
 * How two results are compared. `spider`: Spider's test-suite rules ({@link compareResults}: bags of rows, any
 * column permutation, row order when the gold has ORDER BY). `bird`: BIRD's evaluator, `set(pred) == set(gold)`
 * ({@link compareResultsBird}: duplicates and row order ignored, column order significant).
 */
export type ExecMetric = 'spider' | 'bird';
export const EXEC_METRICS: readonly ExecMetric[] = ['spider', 'bird'];

/** Keys of rows projected onto `cols` (the permuted column order), ready for bag or sequence comparison. */
function projectKeys(rows: readonly string[][], cols: readonly number[]): string[] {
  return rows.map((r) => cols.map((c) => r[c] as string).join(SEP));
}

function sameBag(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const counts = new Map<string, number>();
  for (const k of a) counts.set(k, (counts.get(k) ?? 0) + 1);
  for (const k of b) {
    const c = counts.get(k);
    if (!c) return false;
    counts.set(k, c - 1);
  }
  return true;
}

function sameSequence(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((k, i) => k === b[i]);
}

/**
 * Spider execution match (test-suite-sql-eval `result_eq`, with its defaults: values not plugged in, DISTINCT
 * not kept). Two results are equal when
 * 1. both are empty; otherwise the row counts must be equal and the column counts must be equal;
 * 2. some permutation of the predicted columns makes the two results equal: as bags of rows (multisets, so
 *    duplicates count) or, when `ordered` (the gold SQL has ORDER BY), as sequences of rows.
 * Values compare as Python does (see {@link valueKey}). Column names never matter. Permutations are searched
 * column by column, pruned by per-column value multisets and by comparing the partial projections, which finds
 * the same answer as the reference's enumeration without its factorial worst case on distinct columns.
 */
export function compareResults(gold: readonly SqlRow[], pred: readonly SqlRow[], ordered: boolean): boolean {
  if (gold.length === 0 && pred.length === 0) return true;
  if (gold.length !== pred.length) return false;
  const ncols = (gold[0] as SqlRow).length;
  if ((pred[0] as SqlRow).length !== ncols) return false;
  const g = gold.map((r) => r.map(valueKey));
  const p = pred.map((r) => r.map(valueKey));
  const columnBag = (rows: string[][], c: number): string => rows.map((r) => r[c]).sort().join(SEP);
  const goldCols = Array.from({ length: ncols }, (_, c) => columnBag(g, c));
  const predCols = Array.from({ length: ncols }, (_, c) => columnBag(p, c));
  // candidates[i]: predicted columns whose values could stand in gold column i.
  const candidates = goldCols.map((gc) => predCols.flatMap((pc, j) => (pc === gc ? [j] : [])));
  if (candidates.some((c) => c.length === 0)) return false;
  const same = ordered ? sameSequence : sameBag;
  const used = new Array<boolean>(ncols).fill(false);
  const perm: number[] = [];
  const search = (i: number): boolean => {
    if (i === ncols) return true;
    for (const j of candidates[i] as number[]) {
      if (used[j]) continue;
      perm.push(j);
      // A full match implies a match on every prefix of columns, so a failing prefix prunes the subtree.
      if (same(projectKeys(g, perm.map((_, k) => k)), projectKeys(p, perm))) {
        used[j] = true;
        if (search(i + 1)) return true;
        used[j] = false;
      }
      perm.pop();
    }
    return false;
  };
  return search(0);
}

/** Whether row order matters when comparing with `goldSql`'s result: the reference checks for "order by". */
export function orderMatters(goldSql: string): boolean {
  return /\border\s+by\b/i.test(goldSql);
}

/**
 * BIRD execution match (its evaluator's `set(predicted_res) == set(ground_truth_res)`): the results are equal as
 * sets of row tuples, so duplicates and row order do not matter while column order does. Values compare as in
 * Python (see {@link valueKey}); two empty results are equal.
 */
export function compareResultsBird(gold: readonly SqlRow[], pred: readonly SqlRow[]): boolean {
  const rowKey = (r: SqlRow): string => JSON.stringify(r.map(valueKey));
  const g = new Set(gold.map(rowKey));
  const p = new Set(pred.map(rowKey));
  if (g.size !== p.size) return false;
  for (const k of p) if (!g.has(k)) return false;
  return true;
}

/** Compares a predicted result with the gold one under `metric`; `goldSql` decides whether order matters for spider. */
export function resultsMatch(metric: ExecMetric, gold: readonly SqlRow[], pred: readonly SqlRow[], goldSql: string): boolean {
  return metric === 'bird' ? compareResultsBird(gold, pred) : compareResults(gold, pred, orderMatters(goldSql));
}
