import tap from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { register as registerEval } from '../../lib/cli/commands/eval.js';
import { register as registerEvalSql } from '../../lib/cli/commands/eval-sql.js';
import { TOY_EXAMPLES } from '../../lib/demo/toy-db.js';
import type { EvaluationReport } from '../../lib/eval/evaluate.js';
import type { EvalSqlReport } from '../../lib/eval/eval-sql.js';
import { HAS_SPIDER, SPIDER_DIR } from '../fixtures/company-db.js';
import { runCommand as run } from '../helpers/cli.js';
import { tempDir, tinyModel } from '../helpers/native.js';

tap.test('sqlr1 eval --toy writes predictions that sqlr1 eval-sql scores the same', async (t) => {
  const dir = tempDir(t);
  const model = await tinyModel(dir);
  const pred = join(dir, 'out', 'toy.sql');
  const json = join(dir, 'out', 'toy.json');
  const printed = await run(registerEval, ['eval', '--toy', '--model', model, '--device', 'cpu', '--max-new-tokens', '16',
    '--samples', '2', '--vote', '--out', pred, '--json', json, '--workers', '1']);
  t.match(printed, /EXECUTION ACCURACY \(spider\)/);
  t.match(printed, /^greedy /m);
  t.match(printed, /^vote@2 /m);
  t.match(printed, /12 questions in [\d.]+ s: [\d.]+ questions\/s/);
  const report = JSON.parse(readFileSync(json, 'utf8')) as EvaluationReport & { model: string };
  t.equal(report.model, model);
  t.equal(report.entries.length, TOY_EXAMPLES.length);
  const e = report.entries[0]!;
  for (const k of ['question', 'db', 'gold', 'prediction', 'candidates', 'verdict', 'hardness', 'timing', 'vote']) t.ok(k in e, `an entry has ${k}`);
  t.equal(e.candidates?.length, 2);
  const lines = readFileSync(pred, 'utf8').split('\n');
  t.equal(lines.length, 13, 'one prediction per line');
  t.same(lines.slice(0, 12), report.entries.map((x) => x.prediction.replace(/\s+/g, ' ').trim() || 'SELECT'), 'no SQL is written as a failing SELECT, never a blank line');
  t.equal(readFileSync(join(dir, 'out', 'toy.vote.sql'), 'utf8').split('\n').length, 13, 'the vote predictions');

  // The files are what eval-sql reads: the same accuracy per level, from the other scorer.
  const dbRoot = join(dir, 'db', 'company');
  const { mkdirSync } = await import('node:fs');
  const { createToyDatabase } = await import('../../lib/demo/toy-db.js');
  mkdirSync(dbRoot, { recursive: true });
  createToyDatabase(join(dbRoot, 'company.sqlite'));
  const scored = join(dir, 'out', 'scored.json');
  await run(registerEvalSql, ['eval-sql', '--gold', join(dir, 'out', 'toy.gold.sql'), '--pred', pred, '--db-root', join(dir, 'db'), '--json', scored, '--workers', '1']);
  const s = JSON.parse(readFileSync(scored, 'utf8')) as EvalSqlReport;
  for (const l of ['easy', 'medium', 'hard', 'extra', 'all'] as const) {
    t.equal(s.scores[l].count, report.accuracy[l].count, `${l}: the same count`);
    t.equal(s.scores[l].exec, report.accuracy[l].accuracy, `${l}: the same accuracy`);
  }

  await t.rejects(run(registerEval, ['eval', '--model', model]), { code: 'ERR_INVALID_ARG', message: /--spider DIR or --toy/ });
  await t.rejects(run(registerEval, ['eval', '--toy', '--model', model, '--vote']), { code: 'ERR_INVALID_ARG', message: /--samples/ });
});

tap.test('sqlr1 eval on a Spider dev subset', { skip: !HAS_SPIDER && `no Spider copy at ${SPIDER_DIR}` }, async (t) => {
  const dir = tempDir(t);
  const model = await tinyModel(dir);
  const json = join(dir, 'dev.json');
  await run(registerEval, ['eval', '--spider', SPIDER_DIR, '--max-samples', '6', '--model', model, '--device', 'cpu',
    '--max-new-tokens', '8', '--metric', 'bird', '--json', json, '--workers', '1']);
  const report = JSON.parse(readFileSync(json, 'utf8')) as EvaluationReport;
  t.equal(report.metric, 'bird');
  t.equal(report.n, 6);
  const dev = JSON.parse(readFileSync(join(SPIDER_DIR, 'dev.json'), 'utf8')) as Array<{ question: string; db_id: string; query: string }>;
  t.same(report.entries.map((e) => [e.question, e.db, e.gold]), dev.slice(0, 6).map((d) => [d.question, d.db_id, d.query]));
  t.ok(report.entries.every((e) => e.hardness !== null), 'hardness from dev.json\'s parsed SQL');
  t.equal(report.goldErrors, 0);
});
