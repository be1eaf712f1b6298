/**
 * The LoRA trainer's backward pass through the whole model (RMSNorm, RoPE, causal grouped-query attention,
 * SwiGLU, the LoRA products and the chunked output head), checked by central finite differences on a tiny F32
 * model (hidden 64, 2 layers, 4 query and 2 KV heads, rank 4), for A and B of every target in every layer.
 *
 * Finite differences and their bound: test/train/fixtures/model-fd.ts.
 *
 * Also: log-probs against the inference graph, a new adapter (B = 0) giving the base exactly, and a few AdamW
 * steps changing every adapter tensor while every base tensor stays bit-identical. On CUDA, log-probs and
 * gradients against the CPU (see the bounds there).
 */
import t from 'tap';
import { createLora, loadModel, teacherForcedLogprobs } from '../../lib/model/index.js';
import { AdamW, LoraTrainer, Tensor, backward, evaluate, grpoLoss, loraParams } from '../../lib/train/index.js';
import { nmse, tempDir, testDevices, tinyModel } from '../helpers/native.js';
import { adapterWithB, dot, fdCheck, SEQUENCES, STARTS, TEMP, weights } from './fixtures/model-fd.js';

t.test('backward through the tiny model by finite differences (cpu, f32)', async (t) => {
  const dir = tempDir(t);
  const model = await loadModel(await tinyModel(dir, 'f32'), { device: 'cpu' });
  t.teardown(() => model.dispose());
  t.equal(model.info.nLayer * 7 * 2, 28, 'tiny shape: 2 layers x 7 targets x (A, B)');
  const lora = adapterWithB(model, 1);
  const tr = await LoraTrainer.create(model, lora, { compute: 'f32' });
  t.teardown(() => tr.dispose());
  const batch = tr.pack({ sequences: SEQUENCES, completionStart: STARTS });
  const P = tr.params;
  const grad = (name: string) => P.grad(name);

  await t.test('a weighted sum of log-probs', async (t) => {
    const w = weights(batch);
    await tr.logprobs(batch, { keep: true, temperature: TEMP });
    P.zeroGrad();
    await tr.backward(w);
    await fdCheck(t, P, grad, async () => dot(await tr.logprobs(batch, { temperature: TEMP }), w), 'sum w logp');
  });

  await t.test('the GRPO loss: both sides of the clip boundary, with the KL term', async (t) => {
    const N = batch.n, C = batch.maxCompletion;
    const lp0 = await tr.logprobs(batch, { keep: true, temperature: TEMP });
    // Ratios r = exp(logp - old) cycle through 0.5 and 0.7 (below 1 - eps), 0.95 and 1.05 (inside), 1.5
    // (above 1 + eps); finite-difference steps move a log-prob by < 1e-2, so no ratio crosses a bound.
    const ratios = [0.5, 0.95, 1.5, 1.05, 0.7];
    const old = Float32Array.from(lp0, (v, i) => v - Math.log(ratios[i % ratios.length]!));
    const ref = Float32Array.from(lp0, (v, i) => v + 0.3 * Math.sin(i));
    const adv = Float32Array.of(0.8, -1.2);
    const lossOf = (lp: Float32Array, requiresGrad: boolean) => {
      const logp = Tensor.constant(lp, [N, C], { requiresGrad });
      const l = grpoLoss({ logp, oldLogp: Tensor.constant(old, [N, C]), refLogp: Tensor.constant(ref, [N, C]),
        advantages: Tensor.constant(adv, [N]), mask: Tensor.constant(batch.mask, [N, C]), beta: 0.05, epsLow: 0.2 });
      return { logp, l };
    };
    const { logp, l } = lossOf(lp0, true);
    const res = await backward(l.loss, { outputs: [l.clipLow, l.clipHigh] });
    t.ok(res.values.get(l.clipLow)![0]! > 0 && res.values.get(l.clipHigh)![0]! > 0, 'tokens are clipped on both sides');
    const g = res.grads.get(logp)!;
    P.zeroGrad();
    await tr.backward(g);
    await fdCheck(t, P, grad, async () => {
      const { l } = lossOf(await tr.logprobs(batch, { temperature: TEMP }), false);
      return (await evaluate([l.loss]))[0]![0]!;
    }, 'GRPO loss');
  });
});

for (const device of testDevices()) for (const type of ['f32', 'q4_0'] as const) {
  t.test(`log-probs, a new adapter, and steps that leave the base bit-identical (${device}, ${type} base)`, async (t) => {
    const dir = tempDir(t);
    const model = await loadModel(await tinyModel(dir, type), { device });
    t.teardown(() => model.dispose());
    const lora = createLora(model, { rank: 4, seed: 2 });
    const tr = await LoraTrainer.create(model, lora, { compute: 'f32' });
    t.teardown(() => tr.dispose());
    const batch = tr.pack({ sequences: SEQUENCES, completionStart: STARTS });

    const base = await tr.logprobs(batch, { adapter: false, temperature: TEMP });
    const fresh = await tr.logprobs(batch, { temperature: TEMP });
    if (device === 'cpu') {
      t.ok(Buffer.from(base.buffer).equals(Buffer.from(fresh.buffer)), 'a new adapter (B = 0) gives the base log-probs exactly');
    } else {
      // On CUDA the adapter's product [W; B]^T [x; zs] has a longer inner dimension than W^T x, and cuBLAS may
      // pick another kernel (another summation order): equal up to float32 rounding, nmse <= 1e-10.
      const e = nmse(fresh, base);
      t.ok(e <= 1e-10, `a new adapter (B = 0) gives the base log-probs (nmse ${e.toExponential(2)})`);
    }

    if (type === 'f32') {
      // Against the inference graph (flash attention over an F16 KV cache): K and V rounded to F16 move a
      // log-prob by ~2e-3 on this model; 1e-2 bounds it. (With quantized weights the inference kernels also
      // quantize activations, which the training graph does not: not comparable to this precision.)
      const tf = await teacherForcedLogprobs(model, { sequences: SEQUENCES, completionStart: STARTS, temperature: TEMP });
      let worst = 0;
      tf.forEach((row, i) => row.forEach((v, j) => { worst = Math.max(worst, Math.abs(v - base[i * batch.maxCompletion + j]!)); }));
      t.ok(worst < 1e-2, `== the inference graph's teacher-forced log-probs (max |diff| ${worst.toExponential(2)})`);
    }

    const digests = model.weightDigests();
    const before = new Map(lora.tensorNames().map((n) => [n, lora.getTensor(n)]));
    // No weight decay: every change below comes from a gradient (decay alone would move every tensor).
    const opt = new AdamW(tr.params, { lr: 1e-2, weightDecay: 0 });
    const names = lora.tensorNames();
    const nonZero = () => names.filter((n) => tr.params.grad(n)?.some((x) => x !== 0));
    const w = weights(batch);
    for (let step = 0; step < 3; step++) {
      await tr.logprobs(batch, { keep: true, temperature: TEMP });
      opt.zeroGrad();
      await tr.backward(w);
      // A new adapter has B = 0, so at the first step d loss / d A = (alpha / r) B^T ... is exactly zero and only
      // the B tensors have a gradient; once B has moved, every tensor has one.
      const expected = step === 0 ? names.filter((n) => n.endsWith('lora_b')) : names;
      t.same(nonZero(), expected, `step ${step + 1}: ${step === 0 ? 'every B and no A' : 'every adapter tensor'} has a non-zero gradient`);
      if (step === 0) t.ok(names.filter((n) => n.endsWith('lora_a')).every((n) => tr.params.grad(n)!.every((x) => x === 0)), 'step 1: the A gradients are exactly zero');
      const r = await opt.step();
      t.equal(r.updated, names.length, `step ${r.step}: every adapter tensor was flagged with a gradient`);
    }
    const unchanged = names.filter((n) => Buffer.from(before.get(n)!.buffer).equals(Buffer.from(lora.getTensor(n).buffer)));
    t.same(unchanged, [], 'every adapter tensor changed (through its gradient: no weight decay)');
    t.same(model.weightDigests(), digests, `every base tensor is bit-identical (${Object.keys(digests).length} tensors)`);
    const after = await tr.logprobs(batch, { adapter: false, temperature: TEMP });
    t.ok(Buffer.from(after.buffer).equals(Buffer.from(base.buffer)), 'the reference policy is unchanged');
    const trained = await tr.logprobs(batch, { temperature: TEMP });
    t.ok(dot(trained, w) < dot(base, w) - 1, `three steps lowered the loss sum(w logp) (${dot(base, w).toFixed(3)} -> ${dot(trained, w).toFixed(3)})`);
  });
}

const run = async (path: string, device: 'cpu' | 'cuda', compute: 'f32' | 'bf16', sequences = SEQUENCES, completionStart = STARTS, sync = false) => {
  const model = await loadModel(path, { device });
  const lora = adapterWithB(model, 5);
  const tr = await LoraTrainer.create(model, lora, { compute, sync });
  const batch = tr.pack({ sequences, completionStart });
  const lp = await tr.logprobs(batch, { keep: true, temperature: TEMP });
  await tr.backward(weights(batch));
  const P = tr.params;
  const grads = new Map(P.names().map((n) => [n, P.grad(n)!]));
  tr.dispose();
  lora.dispose();
  model.dispose();
  return { lp, grads };
};
// The CPU's BF16 mode (the graph CUDA runs where it has no fused kernels) against its F32 mode; same bounds.
t.test('BF16 vs F32 gradients on the CPU', async (t) => {
  const path = await tinyModel(tempDir(t), 'q8_0');
  const f32 = await run(path, 'cpu', 'f32'), bf16 = await run(path, 'cpu', 'bf16');
  const e = nmse(bf16.lp, f32.lp);
  t.ok(e <= 1e-3, `log-probs nmse ${e.toExponential(2)} <= 1e-3`);
  let worst = 0;
  for (const [name, g] of f32.grads) worst = Math.max(worst, nmse(bf16.grads.get(name)!, g));
  t.ok(worst <= 1e-2, `worst gradient nmse over ${f32.grads.size} tensors ${worst.toExponential(2)} <= 1e-2`);
});

if (testDevices().includes('cuda')) {
  // CUDA against the CPU on the same graph (the k-quants need rows of 256, wider than the tiny model's 64; their
  // conversion is covered per type by test/native/ops.test.ts's input-gradient test). F32 compute: products in float32 (on tensor cores the large ones
  // may round like TF32, nmse ~1e-7, as in ops.test.ts), bound 1e-5 on log-probs and gradients. BF16 compute:
  // weights and activations rounded to 8-bit mantissas (relative 2^-9 each) through two layers and the head,
  // forward-only attention with K and V in F16, and the backward's fused kernels (attention probabilities in
  // BF16): bound 1e-3 (log-probs) and 1e-2 (gradients, which compound the rounding of forward and backward).
  for (const type of ['f32', 'q4_0', 'q8_0'] as const) {
    t.test(`CUDA vs CPU gradients, ${type} base`, async (t) => {
      const dir = tempDir(t);
      const path = await tinyModel(dir, type);
      const cpu = await run(path, 'cpu', 'f32');
      for (const [compute, lpTol, gTol] of [['f32', 1e-5, 1e-5], ['bf16', 1e-3, 1e-2]] as const) {
        const gpu = await run(path, 'cuda', compute);
        const e = nmse(gpu.lp, cpu.lp);
        t.ok(e <= lpTol, `${compute}: log-probs nmse ${e.toExponential(2)} <= ${lpTol}`);
        let worst = 0;
        for (const [name, g] of cpu.grads) worst = Math.max(worst, nmse(gpu.grads.get(name)!, g));
        t.ok(worst <= gTol, `${compute}: worst gradient nmse over ${cpu.grads.size} tensors ${worst.toExponential(2)} <= ${gTol}`);
      }
    });
  }
}

if (testDevices().includes('cuda')) {
  // A qwen2.5-0.5b-shaped model (head size 64: ggml's flash attention in the forwards, the project's kernels in
  // the backward) on 4 sequences of 512 tokens. 512 keys, a multiple of 256, over several sequences make ggml's
  // flash attention scan the mask for tiles to skip, sequence by sequence.
  t.test('CUDA passes on several long sequences', async (t) => {
    const path = await tinyModel(tempDir(t), 'q4_0', 'qwen2.5-0.5b');
    const seqs = Array.from({ length: 4 }, (_, s) => Array.from({ length: 512 }, (_, i) => (s * 7919 + i * 104729) % 150000));
    const starts = [100, 200, 300, 500];
    const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

    // Each sequence alone against the batch (adapter off: the reference forward, one graph): a mask read for the
    // wrong sequence changes the attention by O(1). The bound allows for the products' summation order, which
    // cuBLAS may choose by the token count, compounded by BF16 rounding.
    {
      const model = await loadModel(path, { device: 'cuda' });
      const lora = adapterWithB(model, 5);
      const tr = await LoraTrainer.create(model, lora, { compute: 'bf16' });
      const batch = await tr.logprobs(tr.pack({ sequences: seqs, completionStart: starts }), { adapter: false });
      const C = batch.length / seqs.length;
      let worst = 0;
      for (let i = 0; i < seqs.length; i++) {
        const alone = await tr.logprobs(tr.pack({ sequences: [seqs[i]!], completionStart: [starts[i]!] }), { adapter: false });
        worst = Math.max(worst, nmse(batch.subarray(i * C, i * C + alone.length), alone));
      }
      t.ok(worst <= 1e-4, `each sequence alone vs in the batch: worst log-prob nmse ${worst.toExponential(2)} <= 1e-4`);
      tr.dispose();
      lora.dispose();
      model.dispose();
    }

    // Queued passes (graphs and kernels queued with no host waits, events ordering ggml's stream and the
    // project's) against passes that wait after each graph and kernel (the trainer's sync option): the same work
    // in the same order on the same data, so the same bits. Each graph here has more GPU work than the host needs
    // to build the next, so the queue runs ahead and a missing ordering would show.
    const waited = await run(path, 'cuda', 'bf16', seqs, starts, true), queued = await run(path, 'cuda', 'bf16', seqs, starts, false);
    t.ok(bits(queued.lp).equals(bits(waited.lp)), 'queued vs waiting: log-probs bit for bit');
    const differ = [...waited.grads].filter(([name, g]) => !bits(queued.grads.get(name)!).equals(bits(g))).map(([name]) => name);
    t.same(differ, [], `queued vs waiting: all ${waited.grads.size} gradients bit for bit`);
    t.ok([...waited.grads.values()].every((g) => g.some((x) => x !== 0)), 'every gradient is non-zero (the comparison is not vacuous)');
  });
}

t.test('trainer errors', async (t) => {
  const dir = tempDir(t);
  const model = await loadModel(await tinyModel(dir, 'f32'), { device: 'cpu' });
  t.teardown(() => model.dispose());
  const lora = createLora(model, { rank: 2 });
  const tr = await LoraTrainer.create(model, lora, { maxTokens: 64 });
  t.teardown(() => tr.dispose());
  const batch = tr.pack({ sequences: SEQUENCES, completionStart: STARTS });
  await t.rejects(tr.backward(new Float32Array(batch.n * batch.maxCompletion)), { code: 'ERR_INVALID_STATE' }, 'backward before a kept forward');
  await tr.logprobs(batch, { keep: true });
  await t.rejects(tr.backward(new Float32Array(3)), { code: 'ERR_INVALID_ARG' }, 'gradient of the wrong size');
  await tr.backward(new Float32Array(batch.n * batch.maxCompletion));
  await t.rejects(tr.backward(new Float32Array(batch.n * batch.maxCompletion)), { code: 'ERR_INVALID_STATE' }, 'a kept forward serves one backward');
  t.throws(() => tr.pack({ sequences: [[1, 2, 3]], completionStart: [3] }), { code: 'ERR_INVALID_ARG' }, 'empty completion');
  t.throws(() => tr.pack({ sequences: [[1, 2, 1e9]], completionStart: [1] }), { code: 'ERR_TOKEN_RANGE' }, 'token out of range');
  await t.rejects(tr.logprobs(batch, { adapter: false, keep: true }), { code: 'ERR_INVALID_ARG' }, 'keep needs the adapter');
  await t.rejects(tr.logprobs(batch, { temperature: 0 }), { code: 'ERR_INVALID_ARG' }, 'temperature 0');
  const long = tr.pack({ sequences: [Array.from({ length: 80 }, (_, i) => i + 1)], completionStart: [40] });
  await t.rejects(tr.logprobs(long), { code: 'ERR_INVALID_ARG' }, 'more tokens than maxTokens');
  await tr.logprobs(batch, { keep: true });
  // A step submitted while a backward is queued runs after it (the device's queue), on its gradients.
  const queued = tr.backward(weights(batch));
  const stepped = await tr.params.adamwStep({ lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 });
  await queued;
  t.equal(stepped, tr.params.names().length, 'AdamW queued behind a backward steps every parameter it gave a gradient');
  const other = createLora(await loadModel(await tinyModel(dir, 'f32', 'tiny', 8), { device: 'cpu' }), { rank: 2 });
  await t.rejects(LoraTrainer.create(model, other), { code: 'ERR_INVALID_ARG' }, 'an adapter of another model');
  await t.rejects(LoraTrainer.create(model, lora, { profile: 3 as 2 }), { code: 'ERR_INVALID_ARG' }, 'profile outside 0, 1, 2');
  await t.rejects(LoraTrainer.create(model, lora, { sync: 'yes' as unknown as boolean }), { code: 'ERR_INVALID_ARG' }, 'sync not a boolean');
  tr.dispose();
  await t.rejects(tr.logprobs(batch), { code: 'ERR_DISPOSED' }, 'after dispose');
});
