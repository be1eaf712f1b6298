/**
 * LoRA adapters: the linear-layer formula against a plain loop, a new adapter leaves the model unchanged,
 * switching it off gives the base model exactly, files round-trip bit-exactly in llama.cpp's format, and the
 * packed adapter (stacked products per group of targets) equals one product pair per target.
 *
 * Tolerances: the op test uses the same per-type bounds as ops.test.ts (1e-6 for an F32 base: CUDA runs F32
 * products on tensor cores at TF32-like precision; a quantized base contributes its 5e-4). Model-level checks are exact: adding B (A x) with B = 0
 * adds zeros, and a disabled adapter builds the base graph itself. Packed against per-target: the two forms
 * differ only in float32 rounding (the bias joins the adapter term first; the block products add zeros; s = 3
 * scales B before the product instead of after), relative differences of ~1e-7 per value that
 * the random model's layers amplify (and the F16 KV cache can move a cached value by one quantum): NMSE up to
 * 2.0e-9 measured on the CPU (2-core machine, 2026-12-07), bound 1e-8. CUDA's F32 products run
 * at TF32-like precision on the matrix units (inputs rounded to 2^-11), and the forms round different values
 * (s B against B): ~5e-4 relative on an adapter term about as large as the logits here gives NMSE ~2.5e-7;
 * measured up to 1.0e-6 (H100, 2026-12-07), bound 4e-6. Sampled log-probs: 1e-5 on the CPU, 1e-3 on CUDA.
 */
import t from 'tap';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { createLora, loadLora, loadModel, type Model } from '../../lib/model/index.js';
import { readGgufMetadata, ggufString, ggufNumber } from '../../lib/gguf/reader.js';
import { binding, nmse, randomArray, tempDir, testDevices, tinyModel } from '../helpers/native.js';
import { writeGguf } from '../helpers/gguf-writer.js';
import { AdamW, loraParams } from '../../lib/train/params.js';

const devices = testDevices();

/** Bit-for-bit equality of two float arrays (tap's deep compare is far too slow for 1.5M values). */
function bitEqual(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}
const tokens = [151644, 872, 198, 4340, 1657, 8256, 525, 1052, 30, 151645];

async function logits(model: Model, lora: ReturnType<typeof createLora> | null): Promise<Float32Array> {
  const ctx = model.createContext({ nSeq: 1, nCtx: 64 });
  ctx.setLora(lora);
  const r = await ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.from(tokens), nt: tokens.length, allLogits: true });
  await ctx.dispose();
  return r.logits!;
}

for (const device of devices) {
  t.test(`lora linear op on ${device}`, async (t) => {
    // T = 1, 5 and 40: a single column, a decode step's few tokens (A x per token) and a prompt's many.
    for (const [type, tol, T] of [['f32', 1e-6, 1], ['f32', 1e-6, 5], ['f32', 1e-6, 40], ['q4_0', 5e-4, 5], ['q4_0', 5e-4, 40]] as const) {
      const K = 64, N = 48, r = 4, scale = 2;
      const w = randomArray(K * N, 11), x = randomArray(K * T, 12), a = randomArray(K * r, 13), b = randomArray(r * N, 14);
      const wq = (await binding('cpu').runOp({ op: 'dequant', device: 'cpu', inputs: [{ data: w, shape: [K, N], type }] })).data;
      const out = await binding(device).runOp({
        op: 'lora', device, params: [scale],
        inputs: [{ data: w, shape: [K, N], type }, { data: x, shape: [K, T] }, { data: a, shape: [K, r] }, { data: b, shape: [r, N] }],
      });
      const ref = new Float64Array(N * T);
      for (let j = 0; j < T; j++) {
        const ax = new Float64Array(r);
        for (let q = 0; q < r; q++) for (let k = 0; k < K; k++) ax[q] += a[q * K + k]! * x[j * K + k]!;
        for (let n = 0; n < N; n++) {
          let s = 0;
          for (let k = 0; k < K; k++) s += wq[n * K + k]! * x[j * K + k]!;
          let l = 0;
          for (let q = 0; q < r; q++) l += b[n * r + q]! * ax[q]!;
          ref[j * N + n] = s + scale * l;
        }
      }
      const e = nmse(out.data, ref);
      t.ok(e <= tol, `LORA(type_w=${type},in=${K},out=${N},t=${T},r=${r}) nmse ${e.toExponential(2)} <= ${tol}`);
    }
  });

  t.test(`adapters on a model on ${device}`, async (t) => {
    const dir = tempDir(t);
    const model = await loadModel(await tinyModel(dir, 'q8_0'), { device });
    t.teardown(() => model.dispose());
    const base = await logits(model, null);
    const lora = createLora(model, { rank: 4, alpha: 8, seed: 3 });
    t.same(lora.info().targets, ['q', 'k', 'v', 'o', 'gate', 'up', 'down']);
    t.equal(lora.tensorNames().length, 2 * 7 * model.info.nLayer);
    t.ok(lora.getTensor('blk.0.ffn_down.weight.lora_b').every((v) => v === 0), 'B starts at zero');
    const a0 = lora.getTensor('blk.0.attn_q.weight.lora_a');
    const bound = 1 / Math.sqrt(model.info.nEmbd);
    t.ok(a0.every((v) => Math.abs(v) <= bound) && a0.some((v) => v !== 0), 'A is uniform in +-1/sqrt(in)');
    t.ok(bitEqual(await logits(model, lora), base), 'a new adapter (B = 0) leaves the logits unchanged');

    for (const name of lora.tensorNames()) {
      if (name.endsWith('lora_b')) lora.setTensor(name, randomArray(lora.getTensor(name).length, name.length, 0.05));
    }
    const adapted = await logits(model, lora);
    t.ok(nmse(adapted, base) > 1e-6, `a trained adapter changes the logits (nmse ${nmse(adapted, base).toExponential(2)})`);
    lora.setEnabled(false);
    t.ok(bitEqual(await logits(model, lora), base), 'switched off, the adapter gives the base model exactly');
    lora.setEnabled(true);

    const file = join(dir, 'adapter.gguf');
    await lora.save(file);
    const md = await readGgufMetadata(file);
    t.equal(ggufString(md, 'general.type'), 'adapter');
    t.equal(ggufString(md, 'adapter.type'), 'lora');
    t.equal(ggufString(md, 'general.architecture'), 'qwen2');
    t.equal(ggufNumber(md, 'adapter.lora.alpha'), 8);
    const qa = md.tensors.find((x) => x.name === 'blk.0.attn_q.weight.lora_a');
    const qb = md.tensors.find((x) => x.name === 'blk.0.attn_q.weight.lora_b');
    t.same(qa?.dims, [model.info.nEmbd, 4], 'lora_a is [in, r]');
    t.same(qb?.dims, [4, model.info.nHead * model.info.headDim], 'lora_b is [r, out]');
    const again = await loadLora(model, file);
    for (const name of lora.tensorNames()) {
      t.ok(bitEqual(again.getTensor(name), lora.getTensor(name)), `${name} round-trips bit-exactly`);
    }
    t.ok(bitEqual(await logits(model, again), adapted), 'the loaded adapter gives the same logits');

    // Subsets of targets, and bad files.
    const qv = createLora(model, { rank: 2, targets: ['q', 'v'] });
    t.equal(qv.tensorNames().length, 4 * model.info.nLayer);
    await t.rejects(loadLora(model, join(dir, 'missing.gguf')), { code: 'ERR_GGUF_NOT_FOUND' });
    const notAdapter = join(dir, 'not-adapter.gguf');
    writeFileSync(notAdapter, writeGguf({ 'general.type': { type: 'str', value: 'model' } }, []));
    await t.rejects(loadLora(model, notAdapter), { code: 'ERR_ADAPTER_INVALID' });
    const badShape = join(dir, 'bad-shape.gguf');
    writeFileSync(badShape, writeGguf({
      'general.architecture': { type: 'str', value: 'qwen2' }, 'general.type': { type: 'str', value: 'adapter' },
      'adapter.type': { type: 'str', value: 'lora' }, 'adapter.lora.alpha': { type: 'f32', value: 16 },
    }, [
      { name: 'blk.0.attn_q.weight.lora_a', ne: [63, 4], type: 0, data: new Uint8Array(63 * 4 * 4) },
      { name: 'blk.0.attn_q.weight.lora_b', ne: [4, 64], type: 0, data: new Uint8Array(4 * 64 * 4) },
    ]));
    await t.rejects(loadLora(model, badShape), { code: 'ERR_ADAPTER_INVALID' });
    t.throws(() => createLora(model, { rank: 0 }), { code: 'ERR_INVALID_ARG' });
    t.throws(() => createLora(model, { targets: ['nope' as 'q'] }), { code: 'ERR_INVALID_ARG' });
  });

  t.test(`packed and per-target adapters agree on ${device}`, async (t) => {
    const dir = tempDir(t);
    // F32 weights: with a quantized base, CUDA quantizes activations too, and a rounding-level difference in the
    // adapter's term can flip an activation's quantum (the CUDA-vs-CPU gap of a Q8_0 model is NMSE ~2e-4).
    const model = await loadModel(await tinyModel(dir, 'f32'), { device });
    t.teardown(() => model.dispose());
    // Bounds: see the file's comment (4-5x the worst values measured on each device).
    const tol = device === 'cpu' ? 1e-8 : 4e-6;
    const prompt = Int32Array.from(tokens);
    // Prefill all but the last token with every logit, then three one-token steps (the decode graph).
    async function run(lora: ReturnType<typeof createLora>, packAdapter: boolean, ctx = model.createContext({ nSeq: 1, nCtx: 64, packAdapter })) {
      await ctx.seqClear(0);
      ctx.setLora(lora);
      const out = [(await ctx.eval({ streams: Int32Array.of(0), tokens: prompt.subarray(0, 7), nt: 7, allLogits: true })).logits!];
      for (let i = 7; i < prompt.length; i++) out.push((await ctx.eval({ streams: Int32Array.of(0), tokens: prompt.subarray(i, i + 1), nt: 1, allLogits: true })).logits!);
      return { ctx, out };
    }
    const compare = (what: string, a: Float32Array[], b: Float32Array[]) => {
      const e = Math.max(...a.map((x, i) => nmse(x, b[i]!)));
      t.ok(e <= tol, `${what}: nmse ${e.toExponential(2)} <= ${tol}`);
    };
    const randomize = (lora: ReturnType<typeof createLora>, seed: number) => {
      for (const name of lora.tensorNames()) if (name.endsWith('lora_b')) lora.setTensor(name, randomArray(lora.getTensor(name).length, seed + name.length, 0.05));
    };
    for (const targets of [['q', 'k', 'v', 'o', 'gate', 'up', 'down'], ['q', 'v', 'up', 'down'], ['k', 'o', 'gate']] as const) {
      const lora = createLora(model, { rank: 4, alpha: 12, seed: 5, targets: [...targets] });
      randomize(lora, 1);
      const packed = await run(lora, true);
      const single = await run(lora, false);
      compare(`targets ${targets.join(',')}`, packed.out, single.out);
      // The pack follows the adapter: new values between calls reach the next pass of the same context.
      randomize(lora, 2);
      const again = await run(lora, true, packed.ctx);
      compare(`targets ${targets.join(',')} after the adapter changed`, again.out, (await run(lora, false, single.ctx)).out);
      t.ok(nmse(again.out[0]!, packed.out[0]!) > 1e-6, 'and the change shows');
      // The pack is copied only when the adapter changed: writes through its parameter store and AdamW steps
      // count as changes too.
      const store = loraParams(lora);
      const bName = lora.tensorNames().find((n) => n.endsWith('lora_b'))!;
      store.set(bName, randomArray(store.get(bName).length, 9, 0.2));
      const viaStore = await run(lora, true, packed.ctx);
      compare(`targets ${targets.join(',')} after ParamStore.set`, viaStore.out, (await run(lora, false, single.ctx)).out);
      t.ok(nmse(viaStore.out[0]!, again.out[0]!) > 1e-6, 'and that change shows');
      for (const name of store.names()) store.setGrad(name, randomArray(store.get(name).length, name.length, 1));
      await new AdamW(store, { lr: 1e-3 }).step();
      const stepped = await run(lora, true, packed.ctx);
      compare(`targets ${targets.join(',')} after an AdamW step`, stepped.out, (await run(lora, false, single.ctx)).out);
      t.ok(nmse(stepped.out[0]!, viaStore.out[0]!) > 1e-6, 'and the step shows');
      await packed.ctx.dispose();
      await single.ctx.dispose();
    }

    // Another adapter on the same context, and sampling over several native steps.
    const a = createLora(model, { rank: 8, alpha: 16, seed: 6 });
    const b = createLora(model, { rank: 2, alpha: 2, seed: 7, targets: ['v', 'gate'] });
    randomize(a, 3);
    randomize(b, 4);
    const ctx = model.createContext({ nSeq: 2, nCtx: 64 });
    t.teardown(() => ctx.dispose());
    await run(a, true, ctx);
    const swapped = await run(b, true, ctx);
    const ref = await run(b, false);
    compare('a second adapter on the same context', swapped.out, ref.out);
    await ref.ctx.dispose();
    const sample = async (packAdapter: boolean) => {
      const c = model.createContext({ nSeq: 2, nCtx: 64, packAdapter });
      c.setLora(a);
      await c.eval({ streams: Int32Array.of(0, 1), tokens: Int32Array.from([...tokens, ...tokens]), nt: tokens.length });
      const r = await c.decode({ streams: Int32Array.of(0, 1), tokens: Int32Array.of(30, 31), seeds: BigUint64Array.of(11n, 12n), budget: Int32Array.of(8, 8),
        eog: new Int32Array(0), steps: 8, temperature: 0.7, topK: 0, topP: 1 });
      await c.dispose();
      return r;
    };
    const [sp, ss] = [await sample(true), await sample(false)];
    t.same(Array.from(sp.tokens), Array.from(ss.tokens), 'seeded sampling draws the same tokens');
    const dlp = Math.max(...Array.from(sp.logprobs, (x, i) => Math.abs(x - ss.logprobs[i]!)));
    const lpTol = device === 'cpu' ? 1e-5 : 1e-3;
    t.ok(dlp <= lpTol, `and their log-probs agree within ${dlp.toExponential(2)} <= ${lpTol}`);
  });
}
