import t from 'tap';
import { compareResults, compareResultsBird, orderMatters, resultsMatch, valueKey } from '../../lib/sql/compare.js';
import type { SqlRow } from '../../lib/sql/executor.js';

t.test('empty results', async (t) => {
  t.ok(compareResults([], [], false), 'both empty');
  t.ok(compareResults([], [], true), 'both empty, ordered');
  t.notOk(compareResults([[1]], [], false), 'one empty');
  t.notOk(compareResults([], [[1]], false), 'other empty');
});

t.test('row and column counts', async (t) => {
  t.notOk(compareResults([[1], [2]], [[1]], false), 'row counts differ');
  t.notOk(compareResults([[1, 2]], [[1]], false), 'column counts differ');
  t.notOk(compareResults([[1]], [[1, 1]], false), 'extra column');
});

t.test('ORDER BY decides whether row order matters', async (t) => {
  const a: SqlRow[] = [[1, 'a'], [2, 'b']];
  const b: SqlRow[] = [[2, 'b'], [1, 'a']];
  t.ok(compareResults(a, b, false), 'bag semantics ignore order');
  t.notOk(compareResults(a, b, true), 'ordered results must match in order');
  t.ok(compareResults(a, [[1, 'a'], [2, 'b']], true));
  t.ok(orderMatters('SELECT a FROM t ORDER BY a'));
  t.ok(orderMatters('select a from t order\n  by a desc'));
  t.notOk(orderMatters('SELECT border_by FROM t'));
});

t.test('duplicates are counted (multisets)', async (t) => {
  t.ok(compareResults([[1], [1], [2]], [[2], [1], [1]], false));
  t.notOk(compareResults([[1], [1], [2]], [[1], [2], [2]], false), 'same set, different multiplicities');
  t.notOk(compareResults([['x'], ['x']], [['x'], ['y']], false));
});

t.test('column order is free (permutations)', async (t) => {
  t.ok(compareResults([[1, 'a', 2.5]], [['a', 2.5, 1]], false));
  t.ok(compareResults([[1, 'a'], [2, 'b']], [['b', 2], ['a', 1]], false), 'permuted columns and rows');
  t.ok(compareResults([[1, 'a'], [2, 'b']], [['a', 1], ['b', 2]], true), 'permuted columns, same row order');
  // Same per-column value multisets, but no permutation pairs the values row by row.
  t.notOk(compareResults([[1, 1], [2, 2]], [[1, 2], [2, 1]], false));
  // Columns with equal value multisets must be tried in both orders.
  t.ok(compareResults([[1, 2], [2, 1], [3, 3]], [[2, 1], [1, 2], [3, 3]], false));
  const wide = (n: number): SqlRow => Array.from({ length: 8 }, (_, i) => n * 10 + i);
  const g = [wide(1), wide(2), wide(3)];
  const p = g.map((r) => [...r].reverse());
  t.ok(compareResults(g, p, true), 'eight columns reversed');
});

t.test('values compare as in Python', async (t) => {
  t.ok(compareResults([[1]], [[1.0]], false), '1 == 1.0');
  t.ok(compareResults([[2n ** 60n]], [[2 ** 60]], false), 'bigint and number with the same value');
  t.notOk(compareResults([[2n ** 60n + 1n]], [[2 ** 60]], false), 'exact beyond 2^53');
  t.notOk(compareResults([[1]], [[1.5]], false));
  t.notOk(compareResults([['1']], [[1]], false), "'1' != 1");
  t.ok(compareResults([[null, 1]], [[null, 1]], false), 'None == None');
  t.notOk(compareResults([[null]], [[0]], false), 'None != 0');
  t.notOk(compareResults([[null]], [['']], false), "None != ''");
  t.ok(compareResults([[new Uint8Array([1, 2])]], [[Buffer.from([1, 2])]], false), 'bytes by content');
  t.notOk(compareResults([[Buffer.from('ab')]], [['ab']], false), "b'ab' != 'ab'");
  t.equal(valueKey(3), valueKey(3n));
  t.not(valueKey(0.1), valueKey(0.1000001));
});

t.test('bird semantics: set(pred) == set(gold)', async (t) => {
  t.ok(compareResultsBird([], []), 'both empty');
  t.notOk(compareResultsBird([[1]], []), 'one empty');
  t.ok(compareResultsBird([[1, 'a'], [2, 'b']], [[2, 'b'], [1, 'a']]), 'row order ignored');
  t.ok(compareResultsBird([[1], [1], [2]], [[2], [1]]), 'duplicates ignored');
  t.notOk(compareResultsBird([[1, 'a']], [['a', 1]]), 'column order significant');
  t.notOk(compareResultsBird([[1, 2]], [[1]]), 'column counts differ');
  t.ok(compareResultsBird([[1, null]], [[1.0, null]]), '1 == 1.0 and None == None as in Python');
  t.notOk(compareResultsBird([['1']], [[1]]), "'1' != 1");
  t.notOk(compareResultsBird([['a\u0001b']], [['a', 'b']]), 'a separator inside a value cannot fake a column split');
  // The same pair under both metrics: spider counts duplicates and permutes columns, bird the reverse.
  t.notOk(resultsMatch('spider', [[1], [1]], [[1]], 'SELECT a FROM t'));
  t.ok(resultsMatch('bird', [[1], [1]], [[1]], 'SELECT a FROM t'));
  t.ok(resultsMatch('spider', [[1, 'a']], [['a', 1]], 'SELECT a, b FROM t'));
  t.notOk(resultsMatch('bird', [[1, 'a']], [['a', 1]], 'SELECT a, b FROM t'));
  t.notOk(resultsMatch('spider', [[1], [2]], [[2], [1]], 'SELECT a FROM t ORDER BY a'));
  t.ok(resultsMatch('bird', [[1], [2]], [[2], [1]], 'SELECT a FROM t ORDER BY a'), 'bird ignores ORDER BY');
});
