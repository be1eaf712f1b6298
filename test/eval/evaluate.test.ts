import tap from 'tap';
import { join } from 'node:path';
import { createToyDatabase, TOY_EXAMPLES } from '../../lib/demo/toy-db.js';
import {
  evalMetrics, evaluateModel, formatEvaluation, formatGold, formatPredictions, majorityOf, planBatches, scoreQuestion, type EvalItem,
} from '../../lib/eval/evaluate.js';
import { generate, loadModel } from '../../lib/model/index.js';
import { execMatch } from '../../lib/sql/exec-match.js';
import { SqlExecutor, type SqlResult, type SqlRow } from '../../lib/sql/executor.js';
import { extractSql } from '../../lib/sql/extract.js';
import { PromptRenderer } from '../../lib/spider/prompt.js';
import { classifyHardness } from '../../lib/spider/hardness.js';
import { tempDir, tinyModel } from '../helpers/native.js';

const done = (text: string) => ({ text, tokens: [1, 2, 3], finishReason: 'eog' as const });

tap.test('scoreQuestion: verdicts, gold errors and the majority vote on written completions', async (t) => {
  const dir = tempDir(t);
  const dbPath = createToyDatabase(join(dir, 'company.sqlite'));
  const executor = new SqlExecutor({ workers: 1, timeoutMs: 2000 });
  t.teardown(() => executor.close());
  const item: EvalItem = { question: 'How many employees are there?', dbPath, goldSql: 'SELECT count(*) FROM employee' };
  const right = 'Counting rows.\n```sql\nSELECT count(emp_id) FROM employee;\n```\n';
  const wrong = '```sql\nSELECT count(*) FROM project\n```\n';
  const broken = '```sql\nSELECT count(*) FROM nowhere\n```\n';

  const e = await scoreQuestion(executor, item, { primary: done(right), candidates: [done(wrong), done(right), done(broken), done(right), done(wrong)] });
  t.equal(e.prediction, 'SELECT count(emp_id) FROM employee', 'the SQL is extracted from the fenced block');
  t.equal(e.verdict, 'correct');
  t.equal(e.db, 'company', 'the database id defaults to the file name');
  t.equal(e.hardness, 'easy');
  t.same(e.candidates!.map((c) => c.verdict), ['wrong', 'correct', 'wrong', 'correct', 'wrong']);
  t.equal(e.candidates![2]!.error?.code, 'ERR_SQL_ERROR');
  // wrong x2, right x2, broken x1: a tie, which goes to the group whose first member came first (wrong).
  t.same(e.vote, { sql: 'SELECT count(*) FROM project', votes: 2, verdict: 'wrong' });
  const win = await scoreQuestion(executor, item, { primary: done(wrong), candidates: [done(wrong), done(right), done(right), done(right)] });
  t.same(win.vote, { sql: 'SELECT count(emp_id) FROM employee', votes: 3, verdict: 'correct' }, 'the most common result wins');
  t.equal(win.verdict, 'wrong', 'the greedy verdict is apart from the vote');
  const tie = await scoreQuestion(executor, item, { primary: done(wrong), candidates: [done(wrong), done(right), done(right), done(wrong)] });
  t.equal(tie.vote?.sql, 'SELECT count(*) FROM project', 'a tie goes to the earliest group');
  t.equal(tie.vote?.verdict, 'wrong');
  t.equal(tie.verdict, 'wrong');

  const none = await scoreQuestion(executor, item, { primary: done('I do not know.'), candidates: [done(broken), done(broken)] });
  t.equal(none.prediction, '');
  t.equal(none.primary.error?.code, 'ERR_SQL_REJECTED', 'no SQL is an invalid answer');
  t.same(none.vote, { sql: 'SELECT count(*) FROM nowhere', votes: 0, verdict: 'wrong' }, 'no candidate executed: no vote, wrong');

  const bad = await scoreQuestion(executor, { ...item, goldSql: 'SELECT nope FROM employee' }, { primary: done(right) });
  t.equal(bad.verdict, 'gold_error', 'a failing gold is a gold error, not a wrong prediction');
  t.equal(bad.goldError?.code, 'ERR_SQL_ERROR');

  // bird: set semantics (duplicates ignored), column order significant.
  const pairs = { question: 'q', dbPath, goldSql: 'SELECT name, title FROM employee' };
  const swapped = done('```sql\nSELECT title, name FROM employee\n```\n');
  t.equal((await scoreQuestion(executor, pairs, { primary: swapped })).verdict, 'correct');
  t.equal((await scoreQuestion(executor, pairs, { primary: swapped }, { metric: 'bird' })).verdict, 'wrong');
  const titles = { question: 'q', dbPath, goldSql: 'SELECT title FROM employee' };
  const distinct = done('```sql\nSELECT title FROM employee GROUP BY title\n```\n');
  t.equal((await scoreQuestion(executor, titles, { primary: distinct })).verdict, 'wrong');
  t.equal((await scoreQuestion(executor, titles, { primary: distinct }, { metric: 'bird' })).verdict, 'correct');
});

tap.test('majorityOf groups results by execution match', async (t) => {
  const ok = (rows: SqlRow[]): SqlResult => ({ ok: true, columns: [], rows, ms: 0 });
  const c = (sql: string, result: SqlResult) => ({ cand: { sql }, result });
  const fail: SqlResult = { ok: false, error: { code: 'ERR_SQL_ERROR', message: 'x' }, ms: 0 };
  t.equal(majorityOf([c('a', fail), c('b', fail)], 'spider'), null);
  const v = majorityOf([c('a', ok([[1]])), c('b', ok([[2]])), c('c', ok([[2]])), c('d', fail)], 'spider');
  t.same([v?.sql, v?.votes], ['b', 2]);
  // Under bird [[1],[1]] and [[1]] are the same set; under spider they differ.
  const dup = [c('a', ok([[1], [1]])), c('b', ok([[3]])), c('c', ok([[1]]))];
  t.same([majorityOf(dup, 'spider')?.sql, majorityOf(dup, 'spider')?.votes], ['a', 1]);
  t.same([majorityOf(dup, 'bird')?.sql, majorityOf(dup, 'bird')?.votes], ['a', 2]);
});

tap.test('planBatches keeps sequence and KV limits and groups by prompt length', async (t) => {
  const lengths = [50, 10, 40, 20, 30];
  const b = planBatches(lengths, { seqsPerQuestion: 2, maxSeqs: 4, maxNewTokens: 10, kvBytesPerToken: 1, kvBudget: 1e9 });
  t.same(b, [[1, 3], [4, 2], [0]]);
  // KV: 2 questions x 2 seqs x (30 + 10) = 160 bytes > 150, so the third-shortest starts a new batch.
  const kv = planBatches(lengths, { seqsPerQuestion: 2, maxSeqs: 100, maxNewTokens: 10, kvBytesPerToken: 1, kvBudget: 150 });
  t.same(kv, [[1, 3], [4], [2], [0]]);
  t.same(planBatches([5], { seqsPerQuestion: 8, maxSeqs: 8, maxNewTokens: 1, kvBytesPerToken: 1, kvBudget: 1 }), [[0]], 'one question always fits');
});

tap.test('evaluateModel on the toy task with a tiny model: the same text as generate(), the same verdicts as execMatch', async (t) => {
  const dir = tempDir(t);
  const dbPath = createToyDatabase(join(dir, 'company.sqlite'));
  const model = await loadModel(await tinyModel(dir), { device: 'cpu', log: () => undefined });
  t.teardown(() => model.dispose());
  const executor = new SqlExecutor({ workers: 1, timeoutMs: 2000 });
  t.teardown(() => executor.close());
  const examples: EvalItem[] = TOY_EXAMPLES.map((ex) => ({ question: ex.question, dbPath, goldSql: ex.query }));
  const maxNewTokens = 24;
  let progress = 0;
  // batchSize 5 forces three batches over the 12 questions, in length order, not question order.
  const report = await evaluateModel(model, { examples, maxNewTokens, executor, batchSize: 5, onProgress: (d) => { progress = d; } });
  t.equal(progress, examples.length);
  t.equal(report.n, 12);
  t.equal(report.metric, 'spider');
  t.equal(report.temperature, 0, 'greedy by default');

  // Reference: greedy generate() run separately over the same batches (planBatches: length order, at most 5
  // questions), scored with execMatch. The same batches, because greedy decoding of a random-weight model (near-
  // flat logits) can flip a near-tie when the batch shape changes the CPU kernels' summation order.
  const renderer = new PromptRenderer(model);
  const prompts = examples.map((ex) => renderer.tokens(ex));
  const batches = planBatches(prompts.map((p) => p.length), { seqsPerQuestion: 1, maxSeqs: 5, maxNewTokens, kvBytesPerToken: 0, kvBudget: 1 });
  t.equal(batches.length, 3);
  const texts = new Array<string>(examples.length);
  for (const batch of batches) {
    const { completions } = await generate(model, { prompts: batch.map((i) => prompts[i]!), maxNewTokens, temperature: 0, stop: ['```\n'] });
    batch.forEach((qi, j) => { texts[qi] = completions[j]!.text; });
  }
  for (const [i, ex] of examples.entries()) {
    const e = report.entries[i]!;
    t.equal(e.question, ex.question, `entry ${i} is question ${i}`);
    t.equal(e.primary.completion, texts[i], `question ${i}: the completion equals generate()'s greedy text`);
    const sql = extractSql(texts[i]!).sql ?? '';
    t.equal(e.prediction, sql);
    const m = await execMatch(executor, dbPath, sql, ex.goldSql);
    t.equal(e.verdict, m.correct ? 'correct' : 'wrong', `question ${i}: the verdict equals execMatch's`);
    t.equal(e.hardness, classifyHardness(ex.goldSql));
  }
  // One question per batch is one generate() call per prompt.
  const single = await evaluateModel(model, { examples: examples.slice(0, 3), maxNewTokens, executor, batchSize: 1 });
  for (const [i, ex] of examples.slice(0, 3).entries()) {
    const { completions } = await generate(model, { prompts: [renderer.tokens(ex)], maxNewTokens, temperature: 0, stop: ['```\n'] });
    t.equal(single.entries[i]!.primary.completion, completions[0]!.text, `batch of one, question ${i}: generate()'s text`);
  }
  const correct = report.entries.filter((e) => e.verdict === 'correct').length;
  t.equal(report.accuracy.all.count, 12);
  t.equal(report.accuracy.all.accuracy, correct / 12);
  const levelSum = (['easy', 'medium', 'hard', 'extra'] as const).reduce((s, l) => s + report.accuracy[l].count, 0);
  t.equal(levelSum, 12, 'every toy gold query is classified');
  const metrics = evalMetrics(report);
  t.equal(metrics['eval/execution_accuracy'], correct / 12);
  for (const k of Object.keys(metrics)) t.match(k, /^eval\/execution_accuracy(\/(easy|medium|hard|extra))?$/);
  t.equal(formatPredictions(report).split('\n').length, 13, 'one line per question and a final newline');
  t.match(formatGold(report), /^SELECT count\(\*\) FROM employee\tcompany\n/);
  t.match(formatEvaluation(report), /greedy/);
  t.comment(`toy task, tiny model, CPU: ${report.questionsPerSecond.toFixed(2)} questions/s, accuracy ${report.accuracy.all.accuracy.toFixed(3)}`);

  // K samples with a vote: the greedy column is unchanged, the vote is reported, K candidates per question.
  const calls: [number, number][] = [];
  const voted = await evaluateModel(model, {
    examples: examples.slice(0, 4), samples: 3, maxNewTokens, executor, seed: 5, onProgress: (d, tot) => calls.push([d, tot]),
  });
  t.same(calls.at(-1), [8, 8], 'progress counts the greedy pass and the voting pass');
  t.ok(calls.every(([d], i) => i === 0 || d > calls[i - 1]![0]), 'progress only moves forward');
  t.equal(voted.temperature, 0.7);
  t.ok(voted.voteAccuracy, 'vote accuracy when K > 1');
  t.same(voted.entries.map((e) => e.prediction), report.entries.slice(0, 4).map((e) => e.prediction), 'greedy predictions do not depend on the vote');
  for (const e of voted.entries) t.equal(e.candidates?.length, 3);

  await t.rejects(evaluateModel(model, { examples: [{ ...examples[0]!, hardness: 'trivial' }] }), { code: 'ERR_INVALID_ARG' });
  await t.rejects(evaluateModel(model, { examples, vote: true }), { code: 'ERR_INVALID_ARG', message: /vote needs samples/ });
  await t.rejects(evaluateModel(model, { examples, samples: 0 }), { code: 'ERR_INVALID_ARG' });
});
