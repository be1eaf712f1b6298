import tap from 'tap';
import { Command } from 'commander';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { register } from '../../lib/cli/commands/eval-sql.js';
import { evalSql, formatScoreTable, readGoldFile, readPredFile, type EvalSqlReport } from '../../lib/eval/eval-sql.js';
import { SqlExecutor } from '../../lib/sql/executor.js';
import { HAS_SPIDER, makeFixtureRoot, SPIDER_DIR } from '../fixtures/company-db.js';
import { runCommand } from '../helpers/cli.js';

const fx = makeFixtureRoot();
tap.teardown(fx.remove);

// [gold SQL, db, prediction, expected hardness, expected outcome]
const CASES: Array<[string, string, string, string, 'correct' | 'wrong' | 'skipped']> = [
  ['SELECT count(*) FROM employees', 'company', 'SELECT count(emp_id) FROM employees', 'easy', 'correct'],
  ['SELECT name FROM departments ORDER BY budget DESC', 'company', 'SELECT name FROM departments ORDER BY budget', 'easy', 'wrong'],
  ['SELECT v FROM secrets', 'other', 'SELECT v FROM secrets', 'easy', 'correct'],
  ["SELECT T1.name FROM employees AS T1 JOIN departments AS T2 ON T1.dept_id = T2.dept_id WHERE T2.name = 'Sales'", 'company', 'SELECT name FROM employees WHERE dept_id = 2', 'medium', 'correct'],
  ['SELECT name, salary FROM employees WHERE salary > 90000 AND dept_id = 1', 'company', 'SELECT salary, name FROM employees WHERE dept_id = 1 AND salary > 90000', 'medium', 'correct'],
  ['SELECT name FROM employees WHERE salary > (SELECT avg(salary) FROM employees)', 'company', 'SELECT nme FROM employees', 'hard', 'wrong'],
  ['SELECT name FROM employees WHERE dept_id = 1 INTERSECT SELECT name FROM employees WHERE salary > 100000', 'company', '', 'hard', 'wrong'],
  ['SELECT 1', 'missing_db', 'SELECT 1', 'easy', 'skipped'],
];

function writeInputs(dir: string): { gold: string; pred: string } {
  const gold = join(dir, 'gold.sql');
  const pred = join(dir, 'pred.sql');
  writeFileSync(gold, `${CASES.map(([g, db]) => `${g}\t${db}`).join('\n')}\n\n`);
  writeFileSync(pred, `${CASES.map(([, , p]) => p).join('\n')}\n`);
  return { gold, pred };
}

function checkToyReport(t: Pick<typeof tap, 'same'>, report: EvalSqlReport): void {
  t.same(report.scores.easy, { count: 3, exec: 2 / 3 });
  t.same(report.scores.medium, { count: 2, exec: 1 });
  t.same(report.scores.hard, { count: 2, exec: 0 });
  t.same(report.scores.extra, { count: 0, exec: 0 });
  t.same(report.scores.all, { count: 7, exec: 4 / 7 });
  t.same(report.skipped, { count: 1, dbIds: ['missing_db'] });
  t.same(report.examples.map((e) => e.status), CASES.map((c) => c[4]));
  t.same(report.examples.filter((e) => e.status !== 'skipped').map((e) => e.hardness), CASES.filter((c) => c[4] !== 'skipped').map((c) => c[3]));
}

tap.test('evalSql on the toy databases', async (t) => {
  const files = writeInputs(fx.root);
  const gold = await readGoldFile(files.gold);
  const pred = await readPredFile(files.pred);
  t.equal(gold.length, CASES.length, 'trailing blank lines are ignored');
  const executor = new SqlExecutor({ workers: 2, timeoutMs: 2000 });
  t.teardown(() => executor.close());
  let progress = 0;
  const report = await evalSql({ gold, pred, dbRoot: fx.dbRoot, executor, onProgress: (done) => { progress = done; } });
  checkToyReport(t, report);
  t.equal(progress, CASES.length);
  t.equal(report.examples[5]?.error?.code, 'ERR_SQL_ERROR');
  t.equal(report.examples[6]?.error?.code, 'ERR_SQL_REJECTED', 'an empty prediction fails');
  const table = formatScoreTable(report);
  t.match(table, /^ {21}easy {17}medium {15}hard {17}extra {16}all\n/);
  t.match(table, /count {16}3 {20}2 {20}2 {20}0 {20}7\n/);
  t.match(table, /execution {12}0\.667 {16}1\.000 {16}0\.000 {16}0\.000 {16}0\.571\n/);
  t.match(table, /skipped 1 examples whose database is missing: missing_db/);

  const known = await evalSql({ gold, pred, dbRoot: fx.dbRoot, executor, tables: new Set(['company']) });
  t.same(known.skipped, { count: 2, dbIds: ['missing_db', 'other'] }, 'databases unknown to tables.json are skipped');
  await t.rejects(evalSql({ gold, pred: pred.slice(1), dbRoot: fx.dbRoot, executor }), { code: 'ERR_DATA' });
});

tap.test('bad input files', async (t) => {
  const bad = join(fx.root, 'bad-gold.sql');
  writeFileSync(bad, 'SELECT 1 no tab here\n');
  await t.rejects(readGoldFile(bad), { code: 'ERR_DATA', message: /line 1/ });
  await t.rejects(readGoldFile(join(fx.root, 'absent.sql')), { code: 'ERR_DATA' });
});

tap.test('the eval-sql command, in process', async (t) => {
  const files = writeInputs(fx.root);
  const json = join(fx.root, 'out', 'report.json');
  const tables = join(fx.root, 'tables.json');
  writeFileSync(tables, JSON.stringify([{ db_id: 'company' }, { db_id: 'other' }, { db_id: 'missing_db' }]));
  mkdirSync(join(fx.root, 'out'), { recursive: true });
  const printed = await runCommand(register, ['eval-sql', '--gold', files.gold, '--pred', files.pred, '--db-root', fx.dbRoot, '--tables', tables, '--json', json, '--timeout-ms', '2000', '--workers', '1']);
  t.match(printed, /EXECUTION ACCURACY/);
  t.match(printed, /execution {12}0\.667/);
  t.ok(existsSync(json), 'the JSON report is written');
  checkToyReport(t, JSON.parse(readFileSync(json, 'utf8')) as EvalSqlReport);
  const bad = new Command('sqlr1').exitOverride();
  register(bad);
  bad.configureOutput({ writeErr: () => undefined });
  await t.rejects(bad.parseAsync(['eval-sql', '--gold', files.gold], { from: 'user' }), /required option/);
});

tap.test('Spider dev gold as predictions scores 1.000 in every class', { skip: !HAS_SPIDER && `no Spider copy at ${SPIDER_DIR}` }, async (t) => {
  const dev = JSON.parse(readFileSync(join(SPIDER_DIR, 'dev.json'), 'utf8')) as Array<{ query: string; db_id: string }>;
  const gold = dev.map((e) => ({ sql: e.query, dbId: e.db_id }));
  const executor = new SqlExecutor({ workers: 2 });
  t.teardown(() => executor.close());
  const t0 = performance.now();
  const report = await evalSql({ gold, pred: dev.map((e) => e.query), dbRoot: join(SPIDER_DIR, 'database'), executor });
  t.comment(`972 gold queries executed and compared in ${(performance.now() - t0).toFixed(0)} ms`);
  t.same(report.skipped, { count: 62, dbIds: ['wta_1'] });
  t.equal(report.scores.all.count, 972);
  for (const level of ['easy', 'medium', 'hard', 'extra', 'all'] as const) t.equal(report.scores[level].exec, 1, `${level} accuracy`);
  t.equal(report.unclassified, 0);
});

tap.test('metric bird against spider, and gold errors counted apart', async (t) => {
  // [gold, prediction, spider verdict, bird verdict]
  const cases: Array<[string, string, string, string]> = [
    ['SELECT name FROM departments ORDER BY budget DESC', 'SELECT name FROM departments ORDER BY budget', 'wrong', 'correct'],
    ['SELECT dept_id FROM employees', 'SELECT dept_id FROM employees GROUP BY dept_id', 'wrong', 'correct'],
    ['SELECT name, salary FROM employees', 'SELECT salary, name FROM employees', 'correct', 'wrong'],
    ['SELECT count(*) FROM employees', 'SELECT count(*) FROM departments', 'wrong', 'wrong'],
    ['SELECT no_such_column FROM employees', 'SELECT 1', 'gold_error', 'gold_error'],
  ];
  const gold = cases.map(([g]) => ({ sql: g, dbId: 'company' }));
  const pred = cases.map(([, p]) => p);
  const executor = new SqlExecutor({ workers: 1, timeoutMs: 2000 });
  t.teardown(() => executor.close());
  const spider = await evalSql({ gold, pred, dbRoot: fx.dbRoot, executor });
  const bird = await evalSql({ gold, pred, dbRoot: fx.dbRoot, executor, metric: 'bird' });
  t.equal(spider.metric, 'spider');
  t.equal(bird.metric, 'bird');
  t.same(spider.examples.map((e) => e.status), cases.map((c) => c[2]));
  t.same(bird.examples.map((e) => e.status), cases.map((c) => c[3]));
  for (const r of [spider, bird]) {
    t.same(r.goldErrors, { count: 1, indices: [4] }, 'the failing gold is reported');
    t.equal(r.scores.all.count, 4, 'and left out of the counts, not scored wrong');
    t.equal(r.examples[4]?.goldError?.code, 'ERR_SQL_ERROR');
    t.match(formatScoreTable(r), /1 gold queries failed to execute \(lines 5\)/);
  }
  t.equal(spider.scores.all.exec, 1 / 4);
  t.equal(bird.scores.all.exec, 2 / 4);
});
