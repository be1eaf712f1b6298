import tap from 'tap';
import { createReward, defaultPreset, reasoningText, type RewardComponent, type RewardContext } from '../../lib/rewards/index.js';
import { SqlExecutor } from '../../lib/sql/executor.js';
import { makeFixtureRoot } from '../fixtures/company-db.js';

const fx = makeFixtureRoot();
tap.teardown(fx.remove);
const executor = new SqlExecutor({ workers: 2, timeoutMs: 400 });
tap.teardown(() => executor.close());

const GOLD = 'SELECT name FROM employees';
const fenced = (sql: string, before = 'Reasoning.'): string => `${before}\n\`\`\`sql\n${sql}\n\`\`\``;
const sample = (completion: string, goldSql = GOLD) => ({ completion, goldSql, dbPath: fx.companyDb });
const close = (t: Pick<typeof tap, 'ok'>, a: number | null, b: number, msg: string): void => {
  t.ok(a !== null && Math.abs(a - b) < 1e-9, `${msg}: ${a} ≈ ${b}`);
};

tap.test('default preset: each row of the table and the worked examples', async (t) => {
  const reward = createReward({ executor });
  t.same(reward.names, ['execution', 'format', 'partial_match']);

  const correctFormatted = await reward.score(sample(fenced('SELECT T1.name FROM employees AS T1')));
  t.same(correctFormatted.components, { execution: 1, format: 0.2, partial_match: null });
  close(t, correctFormatted.total, 1.2, 'correct and formatted');
  t.ok(correctFormatted.correct);

  const correctBare = await reward.score(sample('The answer: SELECT name FROM employees'));
  t.same(correctBare.components, { execution: 1, format: 0, partial_match: null });
  t.equal(correctBare.extracted.reason, 'bare');

  // {employees, name, salary, dept_id} vs {employees, name}: Jaccard 2/4.
  const halfOverlap = await reward.score(sample(fenced('SELECT name, salary FROM employees WHERE dept_id = 1')));
  t.equal(halfOverlap.components['execution'], 0.1);
  close(t, halfOverlap.components['partial_match'] as number, 0.15, 'partial match of half overlap');
  close(t, halfOverlap.total, 0.45, 'valid, wrong, half overlap, formatted');

  const invalidFormatted = await reward.score(sample(fenced('SELECT name FROM no_such_table')));
  t.same(invalidFormatted.components, { execution: -0.5, format: 0.2, partial_match: null });
  close(t, invalidFormatted.total, -0.3, 'invalid and formatted');

  const rejected = await reward.score(sample(fenced('DELETE FROM employees')));
  close(t, rejected.total, -0.3, 'a rejected statement is invalid');
  t.equal(rejected.pred?.ok === false && rejected.pred.error.code, 'ERR_SQL_REJECTED');

  const timedOut = await reward.score(sample(fenced('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c')));
  t.equal(timedOut.pred?.ok === false && timedOut.pred.error.code, 'ERR_SQL_TIMEOUT');
  close(t, timedOut.total, -0.3, 'a timeout is invalid');

  const nothing = await reward.score(sample('I do not know.'));
  t.same(nothing.components, { execution: -0.5, format: 0, partial_match: null });
  t.equal(nothing.pred, null);

  const custom = createReward({ executor, preset: defaultPreset({ correct: 2, format: 0.5 }) });
  close(t, (await custom.score(sample(fenced(GOLD)))).total, 2.5, 'preset values are options');
});

tap.test('SQL-R1 preset', async (t) => {
  const reward = createReward({ executor, preset: 'sql-r1' });
  t.same(reward.names, ['format', 'execution', 'result', 'length']);
  const reasoning = 'x'.repeat(512);
  const correct = await reward.score(sample(fenced(GOLD, reasoning)));
  t.same(correct.components, { format: 1, execution: 2, result: 3, length: 0.25 });
  close(t, correct.total, 6.25, 'correct with 512 characters of reasoning');
  const long = await reward.score(sample(`<think>${'y'.repeat(5000)}</think>\n${fenced(GOLD, '')}`));
  t.equal(long.components['length'], 0.5, 'the length bonus is capped');
  const wrong = await reward.score(sample(fenced('SELECT salary FROM employees')));
  t.same(wrong.components, { format: 1, execution: 2, result: -3, length: null });
  const broken = await reward.score(sample(fenced('SELECT FROM WHERE')));
  t.same(broken.components, { format: 1, execution: -2, result: null, length: null });
  const unformatted = await reward.score(sample('SELECT name FROM employees'));
  t.same(unformatted.components, { format: -1, execution: null, result: null, length: null }, 'no format, nothing else is scored');
  t.equal(unformatted.total, -1);
  t.equal(reasoningText('<think> a b </think> ```sql\nx\n```'), 'a b');
  t.equal(reasoningText('Plan.\n```sql\nSELECT 1\n```\nDone.'), 'Plan.\n\nDone.');
});

tap.test('weights', async (t) => {
  const noFormat = createReward({ executor, weights: { format: 0 } });
  close(t, (await noFormat.score(sample(fenced(GOLD)))).total, 1.0, 'format weighted 0');
  const double = createReward({ executor, weights: { execution: 2, partial_match: 0.5 } });
  const s = await double.score(sample(fenced('SELECT name, salary FROM employees WHERE dept_id = 1')));
  close(t, s.total, 2 * 0.1 + 0.2 + 0.5 * 0.15, 'weights multiply component values');
  t.equal(s.components['execution'], 0.1, 'components are reported before weighting');
  t.throws(() => createReward({ executor, weights: { formatt: 1 } }), { code: 'ERR_INVALID_ARG' }, 'a misspelled name is an error');
  t.throws(() => createReward({ executor, weights: { format: Number.NaN } }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => createReward({ executor, functions: [{ name: 'format', fn: () => 1 }] }), { code: 'ERR_INVALID_ARG' }, 'duplicate names');
});

tap.test('user reward functions: sync, async, null, batch metrics', async (t) => {
  const seen: RewardContext[] = [];
  const functions: RewardComponent[] = [
    { name: 'short', fn: (ctx) => (ctx.completion.length < 60 ? 1 : 0), weight: 0.5 },
    {
      name: 'rows',
      fn: async (ctx) => {
        seen.push(ctx);
        await new Promise((r) => setTimeout(r, 5));
        return ctx.pred?.ok ? ctx.pred.rows.length : null;
      },
      weight: 0.01,
    },
  ];
  const reward = createReward({ executor, preset: 'none', functions });
  t.same(reward.names, ['short', 'rows']);
  const batch = await reward.scoreBatch([
    { ...sample(fenced(GOLD)), extras: { question: 'Names?' } },
    sample('no sql here'),
    sample(fenced('SELECT name FROM departments')),
  ]);
  t.same(batch.components['rows'], [7, null, 3], 'null where the function does not apply');
  t.same(batch.components['short'], [1, 1, 1]);
  close(t, batch.totals[0] as number, 0.5 + 0.07, 'weighted sum');
  close(t, batch.totals[1] as number, 0.5, 'a null adds nothing');
  close(t, batch.metrics['rewards/rows/mean'] as number, 5, 'the mean skips nulls');
  close(t, batch.metrics['rewards/rows/std'] as number, 2, 'population std over applicable samples');
  close(t, batch.metrics['reward'] as number, (0.57 + 0.5 + 0.53) / 3, 'mean total');
  close(t, batch.metrics['frac_correct'] as number, 1 / 3, 'fraction correct');
  close(t, batch.metrics['frac_extracted/fenced_sql'] as number, 2 / 3, 'extraction reasons');
  t.equal(seen.find((c) => c.extras)?.extras?.['question'], 'Names?', 'extras reach user functions');
  t.ok(seen.every((c) => c.gold.ok && c.executor === executor), 'gold result and executor are in the context');

  const bad = createReward({ executor, preset: 'none', functions: [{ name: 'nan', fn: () => Number.NaN }] });
  await t.rejects(bad.score(sample(fenced(GOLD))), { code: 'ERR_INVALID_ARG' });
});

tap.test('a gold SQL that fails to execute: no reward, never the model\'s failure', async (t) => {
  const BROKEN = 'SELECT name FROM no_such_table';
  const reward = createReward({ executor });
  // The same completion that scores 1.2 against a working gold SQL.
  const s = await reward.score(sample(fenced(GOLD), BROKEN));
  t.equal(s.goldError, true);
  t.equal(s.total, null, 'no reward');
  t.equal(s.correct, false);
  t.same(s.components, { execution: null, format: 0.2, partial_match: null }, 'execution-dependent components are null, format is still logged');
  const noSql = await reward.score(sample('I do not know.', BROKEN));
  t.equal(noSql.total, null, 'not even a missing answer is penalized against a broken gold');
  t.same(noSql.components, { execution: null, format: 0, partial_match: null });
  const fine = await reward.score(sample(fenced(GOLD)));
  t.equal(fine.goldError, false);
  close(t, fine.total as number, 1.2, 'a working gold scores as before');

  const r1 = createReward({ executor, preset: 'sql-r1' });
  const s1 = await r1.score(sample(fenced('SELECT salary FROM employees'), BROKEN));
  t.same(s1.components, { format: 1, execution: null, result: null, length: null }, 'sql-r1: only format is scored');
  t.equal(s1.total, null);
  t.equal(s1.goldError, true);

  // User functions: needsExecution (default true) decides whether they run on a gold error.
  const calls: string[] = [];
  const mixed = createReward({
    executor, preset: 'none', functions: [
      { name: 'uses_rows', fn: (ctx) => { calls.push('uses_rows'); return ctx.pred?.ok ? 1 : 0; } },
      { name: 'short', fn: (ctx) => { calls.push('short'); return ctx.completion.length < 60 ? 1 : 0; }, needsExecution: false },
    ],
  });
  const m = await mixed.score(sample(fenced(GOLD), BROKEN));
  t.same(m.components, { uses_rows: null, short: 1 });
  t.same(calls, ['short'], 'a function that needs execution is not called on a gold error');
  t.equal(m.total, null);
});

tap.test('batch with gold errors: totals, goldError and metrics over the scored samples', async (t) => {
  const BROKEN = 'SELECT nope FROM employees';
  const reward = createReward({ executor });
  const batch = await reward.scoreBatch([
    sample(fenced(GOLD)),                                   // 1.2, correct
    sample(fenced(GOLD), BROKEN),                           // gold error
    sample(fenced('SELECT name FROM no_such_table')),       // -0.3
    sample('nothing', BROKEN),                              // gold error
  ]);
  t.same(batch.goldError, [false, true, false, true]);
  t.equal(batch.totals[1], null);
  t.equal(batch.totals[3], null);
  close(t, batch.totals[0] as number, 1.2, 'scored sample');
  close(t, batch.metrics['frac_gold_error'] as number, 0.5, 'frac_gold_error over all samples');
  close(t, batch.metrics['reward'] as number, (1.2 - 0.3) / 2, 'reward averages the scored samples only');
  close(t, batch.metrics['reward_std'] as number, 0.75, 'reward_std over the scored samples');
  close(t, batch.metrics['frac_correct'] as number, 0.5, 'frac_correct over the scored samples: a gold error is not a wrong answer');
  close(t, batch.metrics['rewards/execution/mean'] as number, (1 - 0.5) / 2, 'component means skip the nulls');
  close(t, batch.metrics['rewards/format/mean'] as number, (0.2 + 0.2 + 0.2 + 0) / 4, 'format is logged for every sample');

  const allBroken = await reward.scoreBatch([sample(fenced(GOLD), BROKEN), sample(fenced(GOLD), BROKEN)]);
  t.equal(allBroken.metrics['frac_gold_error'], 1);
  t.notOk('reward' in allBroken.metrics, 'no reward metric when no sample has a reward (not a silent 0)');
  t.notOk('frac_correct' in allBroken.metrics);
});
