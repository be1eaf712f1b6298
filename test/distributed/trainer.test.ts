/**
 * Data-parallel GrpoTrainer on the CPU (every rank in this process, over loopback): 2 ranks x 2 prompts per step
 * train as 1 process x 4 prompts (same draws, gradients summed over ranks against the whole step's normalizers),
 * the ranks hold identical adapters, rank 0 alone writes the run directory and its checkpoints resume every rank
 * exactly, the warm-up is refused, and a rank that goes away ends the others' step with ERR_DISTRIBUTED.
 */
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GrpoTrainer, type GrpoTrainerOptions } from '../../lib/grpo/trainer.js';
import type { Metrics } from '../../lib/grpo/metrics.js';
import { groupOf } from '../helpers/distributed.js';
import { tinyTrainerSetup } from '../helpers/trainer.js';

t.test('data-parallel GRPO', async (t) => {
  const setup = await tinyTrainerSetup(t);
  const { dir } = setup;
  const base: GrpoTrainerOptions = { ...setup.base, maxSteps: 2 };
  const tensors = (tr: GrpoTrainer) => tr.lora.tensorNames().map((n) => tr.lora.getTensor(n));

  // dapo normalizes by the whole step's tokens, grpo by its sequences (dr_grpo shares grpo's sequence count).
  for (const lossType of ['dapo', 'grpo'] as const) {
    await t.test(`2 ranks x 2 prompts train as 1 x 4 (${lossType})`, async (t) => {
      const one = await GrpoTrainer.create({ ...base, lossType, promptsPerStep: 4 });
      const oneMetrics: Metrics[] = [];
      for (let s = 0; s < 2; s++) oneMetrics.push((await one.trainStep()).metrics);
      const oneAdapter = tensors(one);
      await one.dispose();

      const groups = await groupOf(2, { timeoutMs: 60_000 });
      t.teardown(() => groups.forEach((g) => g.close()));
      const ranks = await Promise.all(groups.map((g) => GrpoTrainer.create({ ...base, lossType, promptsPerStep: 2, processGroup: g })));
      const rankMetrics: Metrics[][] = [[], []];
      for (let s = 0; s < 2; s++) {
        const r = await Promise.all(ranks.map((tr) => tr.trainStep()));
        r.forEach((x, k) => rankMetrics[k]!.push(x.metrics));
      }
      const adapters = ranks.map(tensors);
      await Promise.all(ranks.map((tr) => tr.dispose()));

      t.ok(adapters[0]!.every((w, k) => Buffer.from(w.buffer).equals(Buffer.from(adapters[1]![k]!.buffer))), 'the ranks hold the same adapter bytes');
      for (let s = 0; s < 2; s++) {
        const [a, b] = [rankMetrics[0]![s]!, rankMetrics[1]![s]!];
        t.same(a, b, `step ${s + 1}: every rank reports the same metrics`);
        const w = oneMetrics[s]!;
        // Same draws (each sequence's stream is its index in the whole step), so the same rewards and lengths.
        for (const k of ['reward', 'completions/mean_length', 'completions/min_length', 'completions/max_length', 'frac_reward_zero_std']) {
          t.ok(Math.abs(a[k]! - w[k]!) <= 1e-12 * Math.max(1, Math.abs(w[k]!)), `step ${s + 1} ${k}: ${a[k]} (2 ranks) vs ${w[k]} (1)`);
        }
        // f32 sums in another order (per rank, then over ranks in float64): agreement to rounding.
        for (const k of ['reward_std', 'loss', 'grad_norm', 'clip_ratio/region_mean', 'kl']) {
          t.ok(Math.abs(a[k]! - w[k]!) <= 1e-4 * Math.abs(w[k]!) + 1e-9, `step ${s + 1} ${k}: ${a[k]} (2 ranks) vs ${w[k]} (1)`);
        }
        t.equal(a['num_tokens'], w['num_tokens'], `step ${s + 1}: tokens counted over every rank`);
        t.type(a['time/all_reduce'], 'number', 'the all-reduce time is reported');
      }
      t.ok(oneMetrics[1]!['grad_norm']! > 0, 'a gradient in the second step');
      let worst = 0;
      oneAdapter.forEach((w, k) => w.forEach((x, i) => { worst = Math.max(worst, Math.abs(x - adapters[0]![k]![i]!)); }));
      // Two AdamW steps of about lr = 1e-2 each move an element by ~2e-2; summation-order differences of the
      // gradients moved it by 8e-6 at most here (the second step divides by sqrt(v), which magnifies them for small gradients).
      t.ok(worst < 5e-5, `largest adapter difference after 2 steps: ${worst}`);
    });
  }

  await t.test('train(): rank 0 writes the run directory, the others wait; both finish on the same step', async (t) => {
    const out = join(dir, 'dp-run');
    const groups = await groupOf(2, { timeoutMs: 60_000 });
    t.teardown(() => groups.forEach((g) => g.close()));
    const ranks = await Promise.all(groups.map((g) => GrpoTrainer.create({ ...base, outputDir: out, promptsPerStep: 2, saveSteps: 1, processGroup: g })));
    const results = await Promise.all(ranks.map((tr) => tr.train()));
    await Promise.all(ranks.map((tr) => tr.dispose()));
    t.same(results.map((r) => r.step), [2, 2]);
    t.same(results.map((r) => r.aborted), [false, false]);
    const lines = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n');
    t.equal(lines.length, 2, 'one metrics line per step (rank 0 only)');
    t.ok(existsSync(join(out, 'checkpoint-1', 'adapter.gguf')) && existsSync(join(out, 'checkpoint-2', 'adapter.gguf')), 'checkpoints by rank 0');
    t.ok(existsSync(join(out, 'final', 'adapter.gguf')));
    t.equal(results[1]!.adapterPath, join(out, 'final', 'adapter.gguf'), 'rank 1 points at the adapter rank 0 wrote');

    // Every rank resumes from rank 0's checkpoint-1 and repeats the straight run's second step exactly.
    const again = join(dir, 'dp-resumed');
    const g2 = await groupOf(2, { timeoutMs: 60_000 });
    t.teardown(() => g2.forEach((g) => g.close()));
    const resumed = await Promise.all(g2.map((g) => GrpoTrainer.create({ ...base, outputDir: again, promptsPerStep: 2, saveSteps: 1, processGroup: g,
      resumeFrom: join(out, 'checkpoint-1') })));
    const r2 = await Promise.all(resumed.map((tr) => tr.train()));
    await Promise.all(resumed.map((tr) => tr.dispose()));
    t.same(r2.map((r) => r.step), [2, 2], 'the resumed ranks run step 2 only');
    t.ok(readFileSync(join(again, 'final', 'adapter.gguf')).equals(readFileSync(join(out, 'final', 'adapter.gguf'))),
      'the resumed run\'s final adapter is byte-identical to the straight run\'s');
  });

  await t.test('the warm-up is refused in a data-parallel run', async (t) => {
    const groups = await groupOf(2, { timeoutMs: 5_000 });
    t.teardown(() => groups.forEach((g) => g.close()));
    await t.rejects(GrpoTrainer.create({ ...base, promptsPerStep: 2, sftSteps: 3, processGroup: groups[0]! }), { code: 'ERR_CONFIG', message: /sft_steps \(3\) runs in one process/ });
    const ranks = await Promise.all(groups.map((g) => GrpoTrainer.create({ ...base, promptsPerStep: 2, processGroup: g })));
    t.teardown(() => Promise.all(ranks.map((tr) => tr.dispose())));
    await t.rejects(ranks[1]!.warmup({ steps: 1 }), { code: 'ERR_CONFIG', message: /warm-up runs in one process/ }, 'warmup() called directly');
  });

  await t.test("ddp_backend: TCP on the CPU; 'nccl' asked for on the CPU is refused on every rank", async (t) => {
    const groups = await groupOf(2, { timeoutMs: 5_000 });
    t.teardown(() => groups.forEach((g) => g.close()));
    const refused = await Promise.allSettled(groups.map((g) => GrpoTrainer.create({ ...base, promptsPerStep: 2, ddpBackend: 'nccl', processGroup: g })));
    for (const r of refused) t.match(r, { status: 'rejected', reason: { code: 'ERR_CONFIG', message: /ddp_backend 'nccl'.*on the CPU/ } });
    const again = await groupOf(2, { timeoutMs: 5_000 });
    t.teardown(() => again.forEach((g) => g.close()));
    const ranks = await Promise.all(again.map((g) => GrpoTrainer.create({ ...base, promptsPerStep: 2, processGroup: g })));
    t.teardown(() => Promise.all(ranks.map((tr) => tr.dispose())));
    t.same(again.map((g) => g.backend), ['tcp', 'tcp'], "'auto' on the CPU moves the gradients over TCP");
  });

  await t.test('a rank that goes away ends the other\'s step with ERR_DISTRIBUTED', async (t) => {
    const groups = await groupOf(2, { timeoutMs: 60_000 });
    t.teardown(() => groups.forEach((g) => g.close()));
    const ranks = await Promise.all(groups.map((g) => GrpoTrainer.create({ ...base, promptsPerStep: 2, processGroup: g })));
    t.teardown(() => Promise.all(ranks.map((tr) => tr.dispose())));
    const t0 = Date.now();
    const step = ranks[0]!.trainStep();
    groups[1]!.close();
    await t.rejects(step, { code: 'ERR_DISTRIBUTED' });
    t.ok(Date.now() - t0 < 30_000, `failed in ${Date.now() - t0} ms, before the 60 s timeout`);
  });
});
