import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { SqlExecutor } from '../../lib/sql/executor.js';
import { makeFixtureRoot, sha256File } from '../fixtures/company-db.js';

// Model-written SQL is hostile input: every query here must fail (rejected, error, limit or timeout) within the
// timeout plus 250 ms, leave every database file unchanged, and leave the pool serving.
const TIMEOUT_MS = 400;
const MARGIN_MS = 250;

const fx = makeFixtureRoot();
t.teardown(fx.remove);
const created = join(fx.root, 'created-by-attack.db');
const emp = (n: number): string => Array.from({ length: n }, (_, i) => `employees e${i}`).join(', ');
const forever = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)';

const HOSTILE: string[] = [
  // Writes and schema changes, plain and hidden behind WITH.
  'DELETE FROM employees',
  'UPDATE employees SET salary = 0',
  "INSERT INTO departments VALUES (9, 'Evil', 1)",
  "REPLACE INTO departments VALUES (1, 'Evil', 1)",
  'DROP TABLE projects',
  'CREATE TABLE evil (x)',
  'CREATE TEMP TABLE evil AS SELECT 1',
  'ALTER TABLE employees ADD COLUMN evil TEXT',
  'WITH x AS (SELECT 1) DELETE FROM employees',
  "WITH x AS (SELECT 1) INSERT INTO departments SELECT 9, 'Evil', 1 FROM x",
  'SELECT * FROM employees RETURNING *',
  // Other databases and connection state.
  `ATTACH DATABASE '${fx.otherDb}' AS o`,
  `ATTACH '${created}' AS x`,
  'SELECT * FROM o.secrets',
  'DETACH DATABASE main',
  'PRAGMA writable_schema = 1',
  'PRAGMA query_only = 0',
  'PRAGMA journal_mode = DELETE',
  'VACUUM',
  `VACUUM INTO '${created}'`,
  'REINDEX',
  'ANALYZE',
  'BEGIN IMMEDIATE',
  'SAVEPOINT s1',
  // Extensions and native-pointer functions.
  "SELECT load_extension('/tmp/evil.so')",
  `SELECT "load_extension"('/tmp/evil.so')`,
  "SELECT fts3_tokenizer('simple')",
  "SELECT writefile('/tmp/evil', 'x')",
  "SELECT name FROM employees UNION ALL SELECT load_extension('x')",
  // Several statements, and comment tricks.
  'SELECT 1; DELETE FROM employees',
  'SELECT 1; SELECT 2',
  'SELECT 1 -- harmless\n; DROP TABLE employees',
  'SELECT 1 /* ; */ ; DROP TABLE employees',
  '/* comment */ DELETE FROM employees',
  '-- SELECT\nDELETE FROM employees',
  "SELECT '/*' ; UPDATE employees SET salary = 1 -- */",
  "SELECT * FROM sqlite_master; PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = 'x'",
  ' ;; ',
  // Runaway work: streamed (cut at maxRows) and aggregated (cut by the timeout).
  `${forever} SELECT x FROM c`,
  `${forever} SELECT count(*) FROM c`,
  `${forever} SELECT max(x) FROM c`,
  `SELECT * FROM ${emp(8)}`,
  `SELECT count(*) FROM ${emp(12)}`,
  `SELECT name FROM employees ORDER BY (SELECT count(*) FROM ${emp(11)})`,
  // Huge values.
  'SELECT randomblob(2000000000)',
  'SELECT zeroblob(1500000000)',
  'SELECT randomblob(400000000)',
  `${forever} SELECT length(group_concat(hex(randomblob(100000)))) FROM c`,
  "SELECT replace(hex(zeroblob(100000000)), '0', 'abcdefgh')",
  // Deep nesting and huge text.
  `SELECT ${'abs('.repeat(3000)}1${')'.repeat(3000)}`,
  `SELECT ${'-('.repeat(20000)}1${')'.repeat(20000)}`,
  `SELECT ${Array.from({ length: 20000 }, () => '1').join(' + ')}`,
  `SELECT 1 WHERE 1 IN (${'SELECT 1 WHERE 1 IN ('.repeat(300)}SELECT 1${')'.repeat(300)})`,
  `SELECT '${'x'.repeat(200_000)}'`,
  // Invalid Unicode and NUL.
  "SELECT '\uD800'",
  "SELECT name FROM employees WHERE name = '\uDC00abc'",
  'SELECT 1\u0000; DROP TABLE employees',
];

t.test('hostile corpus', async (t) => {
  t.ok(HOSTILE.length >= 40, `${HOSTILE.length} hostile queries`);
  const dbs = [fx.companyDb, fx.otherDb];
  const before = dbs.map(sha256File);
  const rssBefore = process.memoryUsage().rss;
  const executor = new SqlExecutor({ workers: 2, timeoutMs: TIMEOUT_MS, maxRows: 10_000, maxMemoryMb: 256 });
  t.teardown(() => executor.close());
  const t0 = performance.now();
  const results = await Promise.all(HOSTILE.map((sql) => executor.run(fx.companyDb, sql)));
  const elapsed = performance.now() - t0;
  const codes: Record<string, number> = {};
  results.forEach((r, i) => {
    const label = JSON.stringify(HOSTILE[i]).slice(0, 70);
    t.notOk(r.ok, `fails: ${label}`);
    if (!r.ok) codes[r.error.code] = (codes[r.error.code] ?? 0) + 1;
    t.ok(r.ms <= TIMEOUT_MS + MARGIN_MS, `${r.ok ? 'ok' : r.error.code} in ${r.ms.toFixed(0)} ms: ${label}`);
  });
  t.comment(`corpus of ${HOSTILE.length} queries in ${elapsed.toFixed(0)} ms; outcomes ${JSON.stringify(codes)}`);
  t.ok((codes['ERR_SQL_TIMEOUT'] ?? 0) >= 4, 'the aggregating runaways time out');
  t.ok((codes['ERR_SQL_REJECTED'] ?? 0) >= 25, 'writes and tricks are rejected');
  t.ok((codes['ERR_SQL_LIMIT'] ?? 0) >= 3, 'streamed runaways and huge values hit limits');

  t.same(dbs.map(sha256File), before, 'every database file is unchanged');
  t.notOk(existsSync(created), 'no file was created');

  const good = await Promise.all([
    executor.run(fx.companyDb, 'SELECT count(*) FROM employees'),
    executor.run(fx.companyDb, 'SELECT name FROM departments ORDER BY dept_id'),
    executor.run(fx.otherDb, 'SELECT v FROM secrets'),
  ]);
  t.same(good.map((r) => r.ok && r.rows), [[[7]], [['Engineering'], ['Sales'], ['Research']], [['value']]], 'the pool keeps serving');
  const rssGrowth = process.memoryUsage().rss - rssBefore;
  t.ok(rssGrowth < 200 * 1024 * 1024, `parent rss grew by ${(rssGrowth / 1048576).toFixed(1)} MiB (bound 200 MiB)`);
});
