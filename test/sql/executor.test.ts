import t from 'tap';
import { SqlExecutor } from '../../lib/sql/executor.js';
import { execMatch, normalizeForExecution } from '../../lib/sql/exec-match.js';
import { majorityVote } from '../../lib/sql/vote.js';
import { makeFixtureRoot } from '../fixtures/company-db.js';

const fx = makeFixtureRoot();
t.teardown(fx.remove);
const executor = new SqlExecutor({ workers: 2, timeoutMs: 2000 });
t.teardown(() => executor.close());

t.test('results: columns, rows, value types', async (t) => {
  const r = await executor.run(fx.companyDb, 'SELECT name, salary, bonus FROM employees WHERE emp_id IN (1, 2) ORDER BY emp_id');
  if (!r.ok) throw new Error(r.error.message);
  t.same(r.columns, ['name', 'salary', 'bonus']);
  t.same(r.rows, [['Ada', 120000, 1000], ['Grace', 110000, null]]);
  t.type(r.ms, 'number');
  const big = await executor.run(fx.companyDb, 'SELECT 9223372036854775807, 1.5, x\'00ff\'');
  if (!big.ok) throw new Error(big.error.message);
  t.equal(big.rows[0]?.[0], 9223372036854775807n, 'integers beyond 2^53 stay exact as bigint');
  t.equal(big.rows[0]?.[1], 1.5);
  t.same(Array.from(big.rows[0]?.[2] as Uint8Array), [0, 255]);
});

t.test('errors resolve, never reject', async (t) => {
  const cases: Array<[string, string]> = [
    ['SELECT nope FROM employees', 'ERR_SQL_ERROR'],
    ['SELECT * FROM no_such_table', 'ERR_SQL_ERROR'],
    ['SELEC name FROM employees', 'ERR_SQL_REJECTED'],
    ['DELETE FROM employees', 'ERR_SQL_REJECTED'],
    ['', 'ERR_SQL_REJECTED'],
  ];
  for (const [sql, code] of cases) {
    const r = await executor.run(fx.companyDb, sql);
    t.equal(r.ok ? 'ok' : r.error.code, code, sql || '(empty)');
  }
  const missing = await executor.run(`${fx.root}/nope/nope.sqlite`, 'SELECT 1');
  t.equal(missing.ok ? 'ok' : missing.error.code, 'ERR_DB_NOT_FOUND');
  await t.rejects(executor.run(42 as unknown as string, 'SELECT 1'), { code: 'ERR_INVALID_ARG' });
});

t.test('double-quoted strings fall back to literals like legacy SQLite', async (t) => {
  const r = await executor.run(fx.companyDb, 'SELECT "name" FROM employees WHERE name = "Grace"');
  t.same(r.ok && r.rows, [['Grace']], 'an existing column stays a column, an unknown name becomes a string');
  const q = await executor.run(fx.companyDb, `SELECT count(*) FROM employees WHERE name = "O'Hara" OR name = "Ada"`);
  t.same(q.ok && q.rows, [[2]], 'quotes inside are escaped');
});

t.test('row and byte caps', async (t) => {
  const small = new SqlExecutor({ workers: 1, maxRows: 3, maxBytes: 1000 });
  t.teardown(() => small.close());
  const rows = await small.run(fx.companyDb, 'SELECT * FROM employees');
  t.equal(!rows.ok && rows.error.code, 'ERR_SQL_LIMIT', 'more rows than maxRows');
  const bytes = await small.run(fx.companyDb, 'SELECT hex(zeroblob(2000))');
  t.equal(!bytes.ok && bytes.error.code, 'ERR_SQL_LIMIT', 'more bytes than maxBytes');
  const ok = await small.run(fx.companyDb, 'SELECT name FROM departments');
  t.ok(ok.ok, 'limits are per query');
});

t.test('options are validated', async (t) => {
  t.throws(() => new SqlExecutor({ workers: 0 }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => new SqlExecutor({ timeoutMs: 1.5 }), { code: 'ERR_INVALID_ARG' });
});

t.test('gold cache and shared in-flight queries', async (t) => {
  const a = executor.run(fx.companyDb, 'SELECT count(*) FROM projects', { cache: true });
  const b = executor.run(fx.companyDb, 'SELECT count(*) FROM projects', { cache: true });
  t.equal(a, b, 'the cache hands out one promise per (database, SQL)');
  const [ra, rb] = await Promise.all([a, b]);
  t.equal(ra, rb);
  const c = await executor.run(fx.companyDb, 'SELECT count(*) FROM projects', { cache: true });
  t.equal(c, ra, 'later calls reuse the cached result');
  const d = await executor.run(fx.otherDb, 'SELECT count(*) FROM secrets', { cache: true });
  t.same(d.ok && d.rows, [[1]], 'the key includes the database');
});

t.test('execution match', async (t) => {
  const m = await execMatch(executor, fx.companyDb, 'SELECT T1.name FROM employees AS T1 WHERE T1.salary > 100000', "SELECT name FROM employees WHERE salary  >  100000");
  t.ok(m.correct);
  const wrong = await execMatch(executor, fx.companyDb, 'SELECT name FROM employees', 'SELECT name FROM employees WHERE salary > 100000');
  t.notOk(wrong.correct);
  t.ok(wrong.pred.ok);
  const ordered = await execMatch(executor, fx.companyDb, 'SELECT name FROM employees WHERE dept_id = 1 ORDER BY salary', 'SELECT name FROM employees WHERE dept_id = 1 ORDER BY salary DESC');
  t.notOk(ordered.correct, 'gold ORDER BY makes order matter');
  const unordered = await execMatch(executor, fx.companyDb, 'SELECT name FROM employees WHERE dept_id = 1 ORDER BY salary', 'SELECT name FROM employees WHERE dept_id = 1');
  t.ok(unordered.correct, 'without gold ORDER BY, order is free');
  // DISTINCT is dropped on both sides, as in the reference evaluator's default.
  const distinct = await execMatch(executor, fx.companyDb, 'SELECT DISTINCT salary FROM employees', 'SELECT salary FROM employees');
  t.ok(distinct.correct);
  const kept = await execMatch(executor, fx.companyDb, 'SELECT DISTINCT salary FROM employees', 'SELECT salary FROM employees', { keepDistinct: true });
  t.notOk(kept.correct);
  const failed = await execMatch(executor, fx.companyDb, 'SELECT broken FROM', 'SELECT 1');
  t.notOk(failed.correct);
  t.equal(normalizeForExecution("SELECT count(DISTINCT a) FROM t WHERE b > = 2 AND c = 'distinct'"), "SELECT count( a) FROM t WHERE b >= 2 AND c = 'distinct'");
});

t.test('majority vote', async (t) => {
  const v = await majorityVote(executor, fx.companyDb, [
    'SELECT name FROM employees WHERE dept_id = 3',
    'SELECT name FROM employees WHERE salary > 100000',
    'SELECT nope',
    'SELECT T1.name FROM employees AS T1 WHERE T1.salary >= 110000',
    'SELECT name FROM employees WHERE salary BETWEEN 110000 AND 200000',
  ]);
  t.equal(v?.index, 1, 'three candidates return the second one\'s result');
  t.equal(v?.votes, 3);
  const tie = await majorityVote(executor, fx.companyDb, ['SELECT 1', 'SELECT 2', 'SELECT bad syntax here']);
  t.equal(tie?.index, 0, 'ties go to the earliest');
  t.equal(await majorityVote(executor, fx.companyDb, ['SELECT nope', 'DROP TABLE employees']), null, 'all failed');
});

t.test('close finishes calls already made and refuses later ones', async (t) => {
  const ex = new SqlExecutor({ workers: 1 });
  const pending = ex.run(fx.companyDb, 'SELECT count(*) FROM employees');
  await ex.close();
  const r = await pending;
  t.same(r.ok && r.rows, [[7]], 'a call made before close() finishes');
  await t.rejects(ex.run(fx.companyDb, 'SELECT 1'), { code: 'ERR_DISPOSED' });
});
