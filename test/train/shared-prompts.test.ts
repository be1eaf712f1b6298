/**
 * Shared prompts in the trainer's layout (LoraTrainer.pack with sharePrompts): sequences with the same prompt run
 * it once, each completion seeing the prompt and itself. The log-probs and the adapter's gradients must equal
 * those of the same sequences one per row (sharePrompts: false), on every device and compute type; the batch
 * mixes groups of several completions (one of a single token), a one-token prompt (nothing shared but its last
 * token), a prompt alone in its group, and, for the CUDA kernels' 64-row tiles, a long group whose completions
 * cross tile boundaries.
 *
 * BF16 on the CPU runs the forward-only passes through ggml's flash attention with the layout's mask (one per
 * row); on CUDA the tiny model's head size (16) has no flash-attention kernel there, so its passes run written
 * out, and the backward through the project's kernels with the spans.
 *
 * Bounds (nmse): F32 on the CPU runs the same products on the same rows; only summation order in the longer
 * softmax rows and matrix products differs (float32, relative ~1e-7 per operation): 1e-9 for log-probs and
 * gradients. BF16 on the CPU: the forward runs each row's operations alike in both layouts (unseen keys add exact
 * zeros), 1e-9 for log-probs; the backward's products sum over different token counts with BF16-rounded
 * intermediates: 1e-4 for gradients (2.8e-6 measured). CUDA F32 computes large products on tensor cores, which
 * may round like TF32 and choose their blocking by the token count: 1e-5, as for CUDA against the CPU
 * (model-grad.test.ts). BF16 on CUDA: the two layouts round different intermediate tensors (the attention's
 * probabilities tile by tile, the head's chunks), at BF16's 2^-9: 1e-3 for log-probs and 1e-2 for gradients, the
 * bounds of BF16 against F32.
 */
import t from 'tap';
import { loadModel } from '../../lib/model/index.js';
import { LoraTrainer, packedTokens } from '../../lib/train/index.js';
import { microBatches } from '../../lib/grpo/rollout.js';
import { nmse, tempDir, testDevices, tinyModel } from '../helpers/native.js';
import { adapterWithB, TEMP, weights } from './fixtures/model-fd.js';

const seq = (seed: number, n: number) => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729) % 150000);

function groupedBatch() {
  const sequences: number[][] = [];
  const starts: number[] = [];
  const add = (prompt: number[], lengths: number[]) => lengths.forEach((n, k) => {
    sequences.push([...prompt, ...seq(1000 + sequences.length * 31 + k, n)]);
    starts.push(prompt.length);
  });
  add(seq(1, 9), [3, 5, 1]);
  add(seq(2, 1), [4, 2]);
  add(seq(3, 6), [7]);
  add(seq(4, 70), [40, 30, 65]);
  return { sequences, completionStart: starts };
}

t.test('packedTokens and micro-batches count the shared layout', async (t) => {
  const input = groupedBatch();
  // Rows: 8 + 9, 0 + 6, 5 + 7 and 69 + 135 tokens; the longest (204) pads all four.
  t.equal(packedTokens(input), 4 * 204, 'shared: one row per prompt');
  t.equal(packedTokens({ ...input, sharePrompts: false }), 9 * 135, 'one row per sequence');
  const one = { sequences: [input.sequences[0]!], completionStart: [9] };
  t.equal(packedTokens(one), 12, 'a single sequence: its own length');
  const idx = input.sequences.map((_, i) => i);
  const tokensOf = (mb: readonly number[]) => packedTokens({ sequences: mb.map((i) => input.sequences[i]!), completionStart: mb.map((i) => input.completionStart[i]!) });
  const mbs = microBatches(idx, 3 * 17, tokensOf);
  // [0..5]: rows of 17, 6 and 12 tokens padded to 17: 51. The long group's sequences exceed the budget alone.
  t.same(mbs, [[0, 1, 2, 3, 4, 5], [6], [7], [8]], 'the three short groups share a micro-batch; the long group does not fit');
  for (const mb of mbs) t.ok(mb.length === 1 || tokensOf(mb) <= 3 * 17, `micro-batch ${JSON.stringify(mb)} within budget`);
});

for (const device of testDevices()) {
  for (const compute of ['f32', 'bf16'] as const) {
    t.test(`shared prompts give the per-sequence log-probs and gradients (${device}, ${compute})`, async (t) => {
      const model = await loadModel(await tinyModel(tempDir(t), 'q8_0'), { device });
      t.teardown(() => model.dispose());
      const lora = adapterWithB(model, 3);
      const tr = await LoraTrainer.create(model, lora, { compute });
      t.teardown(() => tr.dispose());
      const input = groupedBatch();
      const shared = tr.pack(input), plain = tr.pack({ ...input, sharePrompts: false });
      t.equal(shared.rows, 4, 'one row per prompt');
      t.ok(shared.rows * shared.length < plain.rows * plain.length, `fewer tokens: ${shared.rows * shared.length} < ${plain.rows * plain.length}`);
      t.same(shared.mask, plain.mask, 'the same completion mask');

      const [lpBound, gBound] = device === 'cuda' ? (compute === 'bf16' ? [1e-3, 1e-2] : [1e-5, 1e-5]) : (compute === 'bf16' ? [1e-9, 1e-4] : [1e-9, 1e-9]);
      // The reference pass (adapter off, forward only: flash attention where the backend has it)
      const refShared = await tr.logprobs(shared, { adapter: false, temperature: TEMP });
      const refPlain = await tr.logprobs(plain, { adapter: false, temperature: TEMP });
      const eRef = nmse(refShared, refPlain);
      t.ok(eRef <= lpBound, `reference log-probs nmse ${eRef.toExponential(2)} <= ${lpBound}`);

      // The policy pass and the backward
      const P = tr.params;
      const pass = async (b: typeof shared) => {
        P.zeroGrad();
        const lp = await tr.logprobs(b, { keep: true, temperature: TEMP });
        await tr.backward(weights(b));
        return { lp, grads: new Map(P.names().map((n) => [n, Float32Array.from(P.grad(n)!)])) };
      };
      const a = await pass(shared), b = await pass(plain);
      const eLp = nmse(a.lp, b.lp);
      t.ok(eLp <= lpBound, `policy log-probs nmse ${eLp.toExponential(2)} <= ${lpBound}`);
      let worst = 0;
      for (const [name, g] of b.grads) worst = Math.max(worst, nmse(a.grads.get(name)!, g));
      t.ok(worst <= gBound, `worst gradient nmse over ${b.grads.size} tensors ${worst.toExponential(2)} <= ${gBound}`);
      t.ok([...b.grads.values()].every((g) => g.some((x) => x !== 0)), 'every gradient is non-zero (the comparison is not vacuous)');
    });
  }
}
