/**
 * One device, one queue: overlapping calls on one model (and on two models of one device) give exactly what the
 * same calls give one after the other, synchronous reads see the effect of every call made before them, and
 * disposing an object while its work is queued is safe.
 *
 * Every comparison is bit for bit: the serial and the overlapping runs do the same work in the same order on
 * the same data, so any difference means two calls saw each other's buffers.
 */
import t, { type Test } from 'tap';
import { createLora, generate, loadModel, teacherForcedLogprobs, type LoraAdapter, type Model } from '../../lib/model/index.js';
import { LoraTrainer, loraParams, type TrainBatch } from '../../lib/train/index.js';
import { randomArray, tempDir, testDevices, tinyModel } from '../helpers/native.js';

const ROUNDS = 8;
const PROMPTS_A = [[151644, 872, 198, 4340, 1657], [7, 8, 9]];
const PROMPTS_B = [[11, 12, 13, 14, 15, 16, 17], [3000, 17]];
const SEQUENCES = [[151644, 872, 198, 4340, 1657, 8256, 30, 151645, 198, 3000, 17, 42], [7, 8, 9, 10, 11, 12, 13]];
const STARTS = [9, 3];

function bits(a: Float32Array | readonly number[]): Buffer {
  const f = a instanceof Float32Array ? a : Float32Array.from(a);
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
}

/** An adapter with non-zero B, so that it changes every pass that uses it. */
function adapterWithB(model: Model, seed: number): LoraAdapter {
  const lora = createLora(model, { rank: 4, alpha: 8, seed });
  lora.tensorNames().forEach((name, k) => {
    if (name.endsWith('lora_b')) lora.setTensor(name, randomArray(lora.getTensor(name).length, 100 + k, 0.05));
  });
  return lora;
}

interface RoundResult {
  genA: string;
  genB: string;
  tf: Buffer[];
  lp: Buffer;
  grads: Map<string, Buffer>;
}

/** Greedy completions (4 samples per prompt) as one comparable string: tokens and log-prob bits. */
async function gen(model: Model, prompts: number[][], lora: LoraAdapter | null): Promise<string> {
  const r = await generate(model, { prompts, samplesPerPrompt: 4, maxNewTokens: 6, temperature: 0, stepsPerCall: 2, stopAtEog: false, lora });
  return JSON.stringify(r.completions.map((c) => [c.tokens, bits(c.logprobs).toString('hex')]));
}

async function trainStep(tr: LoraTrainer, batch: TrainBatch, grad: Float32Array): Promise<Buffer> {
  const lp = await tr.logprobs(batch, { keep: true, temperature: 0.7 });
  await tr.backward(grad);
  return bits(lp);
}

function takeGrads(lora: LoraAdapter): Map<string, Buffer> {
  const store = loraParams(lora);
  const out = new Map(store.names().map((n) => [n, bits(store.grad(n) ?? new Float32Array(0))]));
  store.zeroGrad();
  return out;
}

function sameRound(t: Test, got: RoundResult, want: RoundResult, what: string): boolean {
  const diffs: string[] = [];
  if (got.genA !== want.genA) diffs.push('generate A');
  if (got.genB !== want.genB) diffs.push('generate B');
  if (got.tf.length !== want.tf.length || got.tf.some((b, i) => !b.equals(want.tf[i]!))) diffs.push('teacher-forced log-probs');
  if (!got.lp.equals(want.lp)) diffs.push('trainer log-probs');
  const g = [...want.grads].filter(([n, b]) => !got.grads.get(n)?.equals(b)).map(([n]) => n);
  if (g.length) diffs.push(`${g.length} gradients`);
  return t.same(diffs, [], `${what}: equal to the serial run bit for bit`);
}

/**
 * Rounds of Promise.all([generate, generate, teacher-forced log-probs, a trainer's kept forward + backward]) on
 * one model against the same calls run one after the other.
 */
async function overlapRounds(t: Test, device: 'cpu' | 'cuda', path: string, compute: 'f32' | 'bf16', rounds: number): Promise<void> {
  const model = await loadModel(path, { device, threads: 2 });
  t.teardown(() => model.dispose());
  const lora = adapterWithB(model, 3);
  const tr = await LoraTrainer.create(model, lora, { compute });
  t.teardown(() => tr.dispose());
  const batch = tr.pack({ sequences: SEQUENCES, completionStart: STARTS });
  const grad = randomArray(batch.n * batch.maxCompletion, 5);
  const tfArgs = { sequences: SEQUENCES, completionStart: STARTS, temperature: 0.7, lora };

  const serial: RoundResult = {
    genA: await gen(model, PROMPTS_A, lora),
    genB: await gen(model, PROMPTS_B, null),
    tf: (await teacherForcedLogprobs(model, tfArgs)).map(bits),
    lp: await trainStep(tr, batch, grad),
    grads: takeGrads(lora),
  };
  t.ok([...serial.grads.values()].every((b) => b.length > 0 && new Float32Array(b.buffer, b.byteOffset, b.length / 4).some((x) => x !== 0)),
    'every gradient is non-zero (the comparison is not vacuous)');

  let equal = 0;
  for (let r = 0; r < rounds; r++) {
    const [genA, genB, tf, lp] = await Promise.all([
      gen(model, PROMPTS_A, lora),
      gen(model, PROMPTS_B, null),
      teacherForcedLogprobs(model, tfArgs).then((x) => x.map(bits)),
      trainStep(tr, batch, grad),
    ]);
    if (sameRound(t, { genA, genB, tf, lp, grads: takeGrads(lora) }, serial, `round ${r}`)) equal++;
  }
  t.equal(equal, rounds, `${rounds} of ${rounds} overlapping rounds equal the serial run`);
}

for (const device of testDevices()) {
  t.test(`overlapping calls on one model serialize on ${device}`, async (t) => {
    await overlapRounds(t, device, await tinyModel(tempDir(t), 'q8_0'), 'f32', ROUNDS);
  });

  if (device === 'cuda') {
    // Head size 64: the trainer's BF16 passes run layer by layer around the project's kernels, queued on CUDA
    // streams with no host waits, while sampling and scoring calls are submitted in between.
    t.test('overlapping calls around the fused CUDA training passes', async (t) => {
      await overlapRounds(t, device, await tinyModel(tempDir(t), 'q4_0', 'qwen2.5-0.5b'), 'bf16', 3);
    });
  }

  t.test(`two models on one device overlap safely on ${device}`, async (t) => {
    const dir = tempDir(t);
    const path = await tinyModel(dir, 'q8_0');
    const m1 = await loadModel(path, { device, threads: 2 });
    const m2 = await loadModel(path, { device, threads: 2 });
    t.teardown(() => { m1.dispose(); m2.dispose(); });
    const tfArgs = { sequences: SEQUENCES, completionStart: STARTS, temperature: 0.7 };
    const wantA = await gen(m1, PROMPTS_A, null), wantB = await gen(m2, PROMPTS_B, null);
    const wantTf = (await teacherForcedLogprobs(m2, tfArgs)).map(bits);
    t.equal(await gen(m2, PROMPTS_A, null), wantA, 'the two models are the same model');
    for (let r = 0; r < 4; r++) {
      const [a, b, tf] = await Promise.all([gen(m1, PROMPTS_A, null), gen(m2, PROMPTS_B, null), teacherForcedLogprobs(m1, tfArgs)]);
      t.ok(a === wantA && b === wantB && tf.every((x, i) => bits(x).equals(wantTf[i]!)), `round ${r}: both models' results equal the serial run`);
    }
  });

  t.test(`synchronous calls see the calls queued before them on ${device}`, async (t) => {
    const dir = tempDir(t);
    const model = await loadModel(await tinyModel(dir, 'q8_0'), { device, threads: 2 });
    t.teardown(() => model.dispose());
    const b = model.binding;
    const ctx = new b.Context(model.nativeModel, { nSeq: 2, nCtx: 32, nBatch: 32 });
    const p = ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(1, 2, 3, 4, 5), nt: 5 });
    t.equal(ctx.seqLength(0), 5, 'seqLength after a queued eval counts its tokens');
    ctx.seqCopy(0, Int32Array.of(1));
    t.equal(ctx.seqLength(1), 5, 'seqCopy after a queued eval copies its cells');
    await p;
    // An eval queued behind another on the same context: the second's room check sees the first's tokens.
    const room = ctx.memory().capacity - 5;
    const first = ctx.eval({ streams: Int32Array.of(0), tokens: new Int32Array(room - 2).fill(7), nt: room - 2 });
    const second = ctx.eval({ streams: Int32Array.of(0), tokens: new Int32Array(4).fill(7), nt: 4 });
    await first;
    await t.rejects(second, { code: 'ERR_CONTEXT_OVERFLOW' }, 'the room check runs in submission order');
    ctx.dispose();

    const lora = adapterWithB(model, 4);
    const store = loraParams(lora);
    const name = store.names()[0]!;
    const before = store.get(name);
    const graph = store.binding.runGraph({ store: store.handle(), loss: 1, nodes: [{ op: 'param', param: name }, { op: 'sum', inputs: [0] }] });
    const g = store.grad(name);
    t.ok(g && g.every((x) => x === 1), 'a gradient read after a queued graph run sees its gradient (d sum / d w = 1)');
    await graph;
    const step = store.handle().adamwStep({ lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 });
    const after = store.get(name);
    t.ok(after.every((x, i) => Math.abs(x - (before[i]! - 0.1)) < 1e-5), 'a read after a queued AdamW step sees the step (w - lr for a gradient of 1)');
    t.equal(await step, 1, 'the step updated the one parameter with a gradient');
    lora.dispose();
  });

  t.test(`disposing while work is queued is safe on ${device}`, async (t) => {
    const dir = tempDir(t);
    const path = await tinyModel(dir, 'q8_0');
    const ref = await loadModel(path, { device, threads: 2 });
    t.teardown(() => ref.dispose());
    const want = await gen(ref, PROMPTS_A, null);

    // A model disposed while a generation on it runs: the generation completes; the model refuses new work.
    const m = await loadModel(path, { device, threads: 2 });
    const running = gen(m, PROMPTS_A, null);
    m.dispose();
    t.equal(await running, want, 'the generation started before dispose completes with the same result');
    t.throws(() => m.createContext(), { code: 'ERR_DISPOSED' });

    // A native context disposed with two calls queued: both complete; later calls fail with ERR_DISPOSED.
    const b = ref.binding;
    const ctx = new b.Context(ref.nativeModel, { nSeq: 1, nCtx: 32, nBatch: 32 });
    const p1 = ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(1, 2, 3), nt: 3 });
    const p2 = ctx.decode({ streams: Int32Array.of(0), tokens: Int32Array.of(4), seeds: BigUint64Array.of(1n), budget: Int32Array.of(4), eog: new Int32Array(0), steps: 4, temperature: 0, topK: 0, topP: 1 });
    ctx.dispose();
    await p1;
    t.equal((await p2).steps, 4, 'a decode queued before dispose runs all its steps');
    t.throws(() => ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(1), nt: 1 }), { code: 'ERR_DISPOSED' });

    // An adapter and a trainer disposed with a forward and a backward queued.
    const lora = adapterWithB(ref, 6);
    const tr = await LoraTrainer.create(ref, lora, { compute: 'f32' });
    const batch = tr.pack({ sequences: SEQUENCES, completionStart: STARTS });
    const step = trainStep(tr, batch, randomArray(batch.n * batch.maxCompletion, 9));
    lora.dispose();
    t.ok((await step).length > 0, 'a forward and backward queued before the adapter was disposed complete');
    t.throws(() => lora.getTensor('blk.0.attn_q.weight.lora_a'), { code: 'ERR_DISPOSED' });
    const fwd = tr.logprobs(batch);
    tr.dispose();
    t.equal((await fwd).length, batch.n * batch.maxCompletion, 'a forward queued before the trainer was disposed completes');
    await t.rejects(tr.logprobs(batch), { code: 'ERR_DISPOSED' });

    // A parameter store disposed with a graph run queued.
    const train = b;
    const s = new train.ParamStore({ device, threads: 1 });
    s.add('w', [4], Float32Array.of(1, 2, 3, 4));
    const run = train.runGraph({ store: s, loss: 1, nodes: [{ op: 'param', param: 'w' }, { op: 'sum', inputs: [0] }] });
    s.dispose();
    t.equal((await run).loss, 10, 'a graph run queued before the store was disposed completes');
    t.throws(() => s.get('w'), { code: 'ERR_DISPOSED' });
  });
}
