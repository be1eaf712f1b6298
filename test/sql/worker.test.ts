import t from 'tap';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { WORKER_SOURCE, type WorkerReply, type WorkerRun } from '../../lib/sql/worker.js';
import { makeFixtureRoot, sha256File } from '../fixtures/company-db.js';

// The token guard stops these before they reach a worker; this test talks to a worker directly to check the
// layers behind it: read-only connection, query_only, and the reader/readonly check of prepared statements.
const fx = makeFixtureRoot();
t.teardown(fx.remove);

t.test('the worker refuses writes that get past the guard', async (t) => {
  const child = spawn(process.execPath, ['-e', WORKER_SOURCE], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], serialization: 'advanced' });
  t.teardown(() => { child.kill('SIGKILL'); });
  const replies = new Map<number, (r: WorkerReply) => void>();
  const ready = new Promise<void>((resolve) => {
    child.on('message', (m: WorkerReply) => {
      if (m.type === 'ready') resolve();
      else replies.get(m.id)?.(m);
    });
  });
  child.send({ type: 'init', modulePath: createRequire(import.meta.url).resolve('better-sqlite3') });
  await ready;
  let id = 0;
  const run = (sql: string): Promise<WorkerReply> =>
    new Promise((resolve) => {
      const msg: WorkerRun = { type: 'run', id: ++id, dbPath: fx.companyDb, sql, dquotes: [], maxRows: 100, maxBytes: 1 << 20 };
      replies.set(msg.id, resolve);
      child.send(msg);
    });
  const before = [sha256File(fx.companyDb), sha256File(fx.otherDb)];
  const writes = [
    'DELETE FROM employees',
    'WITH x AS (SELECT 1) UPDATE employees SET salary = 0',
    "INSERT INTO departments VALUES (9, 'x', 1)",
    'DROP TABLE projects',
    'CREATE TABLE evil (x)',
    `ATTACH DATABASE '${fx.otherDb}' AS o`,
    'PRAGMA writable_schema = 1',
    'VACUUM',
    'BEGIN',
    "SELECT load_extension('/tmp/evil.so')",
  ];
  for (const sql of writes) {
    const r = await run(sql);
    t.ok(r.type === 'result' && !r.ok, `refused: ${sql}`);
  }
  const ext = await run("SELECT load_extension('/tmp/evil.so')");
  t.match(ext.type === 'result' && !ext.ok && ext.message, /not authorized/, 'SQLite itself refuses load_extension()');
  const ok = await run('SELECT count(*) FROM employees');
  t.same(ok.type === 'result' && ok.ok && ok.rows, [[7]], 'reads still work');
  t.same([sha256File(fx.companyDb), sha256File(fx.otherDb)], before, 'files unchanged');
});
