/**
 * The project's forward against an independent implementation: llama.cpp's own (libllama built from the same
 * fetched source, test/reference/llama_reference.cpp). Every other model test compares the project with
 * itself; a wiring error shared by all its graphs (RoPE mode, a bias, head grouping, a norm, the adapter scale)
 * shows only here.
 *
 * Models: makeModel's 'tiny' preset (hidden 64, head dim 16, tied embeddings, norm weights of one) for the
 * types whose blocks fit its rows, and a 'small' shape written by the reference program's `synth` (hidden 256,
 * 4 heads over 2 KV heads of dim 64, FFN 512, 2 layers, untied output, random norm weights, biases in +-0.5)
 * for every weight type including the k-quants, whose 256-wide blocks 'tiny' cannot hold. Both use the real
 * Qwen2 vocabulary. Each model runs without and with a LoRA adapter (rank 8, alpha 16, random A and B, saved
 * as GGUF and loaded by llama.cpp at scale 1, so alpha / rank is read from the file on both sides).
 *
 * Compared: the log-softmax of the logits at every prompt position (max |difference| and the logits' NMSE), and
 * 8 greedy tokens decoded one at a time through each side's KV cache (equal tokens with equal log-probs up to
 * the first step where llama.cpp's top-2 margin is a near-tie, <= 2 x the tolerance: random weights give flat
 * distributions, so a flip there is rounding, not a bug).
 *
 * llama.cpp runs with its CPU weight repacking off (use_extra_bufts = false: the repacked Q4_0 kernels round
 * differently), flash attention on and an F16 KV cache, as the project does. Measured on the CPU:
 *  - no adapter, quantized weights (Q8_0, Q4_0, Q4_K, Q6_K): bit-identical logits. Both sides run the same
 *    ggml ops in the same order.
 *  - no adapter, F32/F16/BF16 weights: logits agree to float rounding at most positions (per-position NMSE
 *    ~1e-13 for F32) with isolated positions up to ~1e-8, where a value re-rounded by a later step (the F16 KV
 *    cache; F16/BF16 activations of F16/BF16 products) lands on the other side of a rounding step. Max
 *    |log-softmax difference| 2.4e-3 (F32), 3.9e-3 (F16), 1.9e-2 (BF16, whose step is 2^-8).
 *  - adapter on all seven layers: the two add the bias and the LoRA term in different orders (the project:
 *    W x + (s B A x + b), the packed form of native/src/lora_pack.h; llama.cpp: (W x + s B A x) + b). That
 *    1e-7 difference is amplified where the next product re-quantizes its input to Q8_0/Q8_K blocks (one
 *    activation moving a step changes the product by up to half a step of its block): up to 6.4e-2 in
 *    log-probs on quantized bases.
 *  - adapter on o/gate/up/down only (no bias; s = 2 folded into B exactly): bit-identical on Q4_0; elsewhere
 *    the packed products' other shapes (gate and up's as one, the block product's zeros) round differently
 *    (Q4_K: NMSE 5e-14), which the Q8_0/Q8_K re-quantization amplifies at a few positions (up to 1.4e-2 on
 *    Q8_0, 8.3e-2 on Q6_K).
 * An adapter moves the log-probs by 2.6 to 4.0 here, so its bounds still catch a wrong scale, target or
 * orientation. The bounds in TOLERANCES are 2-5x the worst measured values, listed next to them
 * (`npx tap test/reference/llama-forward.test.ts`).
 * The F16 products' rounding depends on the CPU's SIMD path: on the GPU machine's host the F16 models differed
 * more (max 1.5e-2, NMSE 5.4e-6) than on the 2-core CI machine (4.2e-3, 4.1e-7); the F16 bounds cover both.
 * CUDA, prompt logits (H100 2026-12-07, the packed adapter): both sides run the same ggml-cuda graph without an
 * adapter, so the logits are bit-identical for every type. The packed adapter's products have other shapes than
 * llama.cpp's per-target ones (gate and up's A products as one), and CUDA's F32 products round by shape: with an
 * adapter on o/gate/up/down, bit-identical for BF16, Q4_0 and Q4_K, up to 2.7e-3 (F32, NMSE 4.6e-8), 2.0e-3
 * (F16), 1.0e-4 (Q8_0) and 4.3e-2 (Q6_K, NMSE 5.6e-6: re-quantization again); on all seven layers up to 3.3e-3
 * (F32), 1.2e-2 (F16), 1.8e-2 (BF16), 5.3e-2 (Q8_0), 7.6e-2 (Q4_0), 3.7e-2 (Q4_K) and 3.8e-2 (Q6_K). (One pair
 * per target, before the packing, H200 2026-12-03 and H100: bit-identical on o/gate/up/down; on all seven 3.3e-3
 * (F32), 1.4e-2 (F16), 8.6e-3 (BF16), 5.7e-2 (Q8_0), 7.2e-2 (Q4_0), 5.5e-2 (Q4_K), 3.3e-2 (Q6_K).)
 * CUDA, greedy decode (H100 2026-12-07): the same tokens as llama.cpp's except at near-ties (Q4_K with the
 * seven-layer adapter parted at step 0, margin 3.3e-2; Q6_K base at step 4, margin 1.7e-3), but the one-token
 * steps' log-probs are not bit-identical although the prompt's are: up to 1.3e-3 (F32), 3.5e-3 (F16), 3.4e-3
 * (BF16), 3.4e-2 (Q8_0), 8.6e-2 (Q4_0), 4.2e-2 (Q4_K), 3.1e-2 (Q6_K) over the three variants. The growth with
 * coarser weights is that of rounding amplified by the products' re-quantization of activations (a wiring error
 * moves log-probs by O(1)); which one-token kernel rounds differently has not been isolated. CUDA decode has its
 * own bounds (`decode` below), 2-3x those values. With ggml's CUDA graphs on, the decode parted from llama.cpp's
 * at step 1 where the margin was 0.10 to 0.23 (as in the 2026-12-03 run), and the project's own one-token decode
 * at head size 64 was off its full forward by NMSE 0.73 (model.test.ts): the addon switches the graphs off
 * (native/src/model.cpp), and with them off both checks pass.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { createLora, generate, loadModel, LORA_TARGETS, type LoraAdapter, type LoraTarget, type Model } from '../../lib/model/index.js';
import { nmse, randomArray, tempDir, testDevices, tinyModel } from '../helpers/native.js';
import { ensureReference, referenceEval, referenceSynth, type ReferenceEval } from './llama-reference.js';

// A build of llama.cpp on a small machine takes minutes; the comparisons themselves well under one.
t.setTimeout(3_600_000);

type Device = 'cpu' | 'cuda';
/** Bounds on max |log-softmax difference| and on the logits' NMSE, without and with an adapter. */
/** `decode`: the bound on the greedy decode's log-probs where it differs from the prompt's (CUDA). */
interface Bound { base: { maxAbs: number; nmse: number }; lora: { maxAbs: number; nmse: number }; decode?: number }
const bound = (baseMax: number, baseNmse: number, loraMax: number, loraNmse: number, decode?: number): Bound =>
  ({ base: { maxAbs: baseMax, nmse: baseNmse }, lora: { maxAbs: loraMax, nmse: loraNmse }, ...(decode !== undefined ? { decode } : {}) });

// CPU: measured worst values (both shapes, both adapters) in the comments; bounds about 2-5x above them.
const TOLERANCES: Record<Device, Record<string, Bound>> = {
  cpu: {
    f32: bound(1e-2, 2e-7, 1e-2, 5e-7),    // max 2.4e-3 / nmse 5.7e-8; adapters 3.1e-3 / 1.0e-7
    f16: bound(5e-2, 2e-5, 5e-2, 2e-5),    // 1.5e-2 / 4.9e-6; adapters 1.4e-2 / 5.4e-6 (GPU host; 2-core: 4.2e-3 / 4.1e-7)
    bf16: bound(5e-2, 1e-5, 1e-1, 5e-5),   // 1.9e-2 / 6.6e-6; adapters 2.1e-2 / 7.5e-6
    q8_0: bound(1e-5, 1e-10, 2e-1, 1e-3),  // 0 / 0 (bit-identical); adapters 6.4e-2 / 1.0e-4
    q4_0: bound(1e-5, 1e-10, 2e-1, 1e-3),  // 0 / 0; adapters 4.0e-2 / 3.0e-6
    q4_K: bound(1e-5, 1e-10, 2e-1, 1e-3),  // 0 / 0; adapters 4.4e-2 / 3.6e-6
    q6_K: bound(1e-5, 1e-10, 2e-1, 1e-3),  // 0 / 0; adapters 8.3e-2 / 1.1e-4
  },
  // Measured on an H100 with the packed adapter (header): 0 without an adapter (bounds far below any wiring error's O(1));
  // adapters on all seven layers as listed, bounds about 3x above; decode log-probs: the worst of the three
  // variants, bound 2-3x above.
  cuda: {
    f32: bound(1e-4, 1e-9, 1e-2, 5e-7, 3e-3),    // 0 / 0; adapters 3.3e-3 / 1.2e-7; decode 1.3e-3
    f16: bound(1e-4, 1e-9, 5e-2, 5e-6, 1e-2),    // 0 / 0; adapters 1.2e-2 / 1.7e-6; decode 3.5e-3
    bf16: bound(1e-4, 1e-9, 5e-2, 3e-6, 1e-2),   // 0 / 0; adapters 1.8e-2 / 8.4e-7; decode 3.4e-3
    q8_0: bound(1e-4, 1e-9, 2e-1, 2e-4, 1e-1),   // 0 / 0; adapters 5.3e-2 / 7.0e-5; decode 3.4e-2
    q4_0: bound(1e-4, 1e-9, 2e-1, 5e-4, 2e-1),   // 0 / 0; adapters 7.6e-2 / 1.3e-4; decode 8.6e-2
    q4_K: bound(1e-4, 1e-9, 2e-1, 3e-5, 1e-1),   // 0 / 0; adapters 5.5e-2 / 6.6e-6; decode 4.2e-2
    q6_K: bound(1e-4, 1e-9, 1e-1, 2e-5, 1e-1),   // 0 / 0; adapters 4.3e-2 / 5.6e-6; decode 3.1e-2
  },
};

const TINY_TYPES = ['f32', 'f16', 'q8_0', 'q4_0'] as const;
const SMALL_TYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_K', 'q6_K'] as const;
const SMALL = { embd: 256, ff: 512, heads: 4, kvHeads: 2, layers: 2, untied: true };
const N_GEN = 8;
// The base model; an adapter on the layers without a bias (both sides add the same terms in the same order);
// an adapter on all seven (q, k and v add bias and LoRA term in different orders, see the header).
const VARIANTS: { name: string; targets: readonly LoraTarget[] | null }[] = [
  { name: 'base', targets: null },
  { name: 'adapter-o-ffn', targets: ['o', 'gate', 'up', 'down'] },
  { name: 'adapter-all', targets: LORA_TARGETS },
];
const PROMPT = [
  { role: 'system' as const, content: 'You translate questions into SQLite queries.' },
  { role: 'user' as const, content: 'CREATE TABLE singer (singer_id INTEGER, name TEXT, country TEXT, age INTEGER);\nHow many singers from France are older than 30?' },
];

/** Max |log-softmax difference| over all positions and tokens, and the logits' NMSE. */
function compareLogits(ours: Float32Array, ref: Float32Array, V: number): { maxAbs: number; nmse: number } {
  const lse = (a: Float32Array, o: number) => {
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, a[o + v]!);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(a[o + v]! - m);
    return m + Math.log(s);
  };
  let maxAbs = 0;
  for (let o = 0; o < ref.length; o += V) {
    const lo = lse(ours, o), lr = lse(ref, o);
    for (let v = 0; v < V; v++) {
      const d = Math.abs((ours[o + v]! - lo) - (ref[o + v]! - lr));
      if (!(d <= maxAbs)) maxAbs = Number.isNaN(d) ? Infinity : d;
    }
  }
  return { maxAbs, nmse: nmse(ours, ref) };
}

async function ourLogits(model: Model, tokens: number[], lora: LoraAdapter | null): Promise<Float32Array> {
  const ctx = model.createContext({ nSeq: 1, nCtx: tokens.length });
  try {
    ctx.setLora(lora);
    const r = await ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.from(tokens), nt: tokens.length, allLogits: true });
    return r.logits!;
  } finally {
    await ctx.dispose();
  }
}

/** A rank-8 adapter with random non-zero A and B (seeded), saved where llama.cpp can load it. */
async function randomAdapter(model: Model, path: string, seed: number, targets: readonly LoraTarget[]): Promise<LoraAdapter> {
  const lora = createLora(model, { rank: 8, alpha: 16, seed, targets });
  lora.tensorNames().forEach((name, i) => {
    const n = lora.getTensor(name).length;
    lora.setTensor(name, randomArray(n, seed * 1000 + i, name.endsWith('lora_a') ? 0.1 : 0.05));
  });
  await lora.save(path);
  return lora;
}

async function check(t: Test, model: Model, device: Device, bin: string, dir: string, label: string, type: string): Promise<void> {
  const tokens = model.encodeChat(PROMPT);
  const V = model.info.nVocab;
  const bounds = TOLERANCES[device][type]!;
  let base: ReferenceEval | undefined;
  for (const variant of VARIANTS) {
    const adapterPath = join(dir, `${label}-${variant.name}.gguf`);
    const lora = variant.targets ? await randomAdapter(model, adapterPath, 3, variant.targets) : null;
    try {
      const { maxAbs: tol, nmse: tolNmse } = variant.targets ? bounds.lora : bounds.base;
      const what = `${label} ${variant.name} on ${device}`;
      const ref = referenceEval(bin, {
        model: model.path, tokens, out: join(dir, `${label}-${variant.name}.f32`), nGen: N_GEN, device, ...(lora ? { lora: adapterPath } : {}),
      });
      t.equal(ref.nVocab, V, `${what}: llama.cpp sees the same vocabulary`);
      const ours = await ourLogits(model, tokens, lora);
      const d = compareLogits(ours, ref.logits, V);
      t.comment(`${what}: ${tokens.length} positions, max |dlogp| ${d.maxAbs.toExponential(2)}, logits nmse ${d.nmse.toExponential(2)}`);
      t.ok(d.maxAbs <= tol, `${what}: max |log-softmax difference| ${d.maxAbs.toExponential(2)} <= ${tol}`);
      t.ok(d.nmse <= tolNmse, `${what}: logits nmse ${d.nmse.toExponential(2)} <= ${tolNmse}`);

      if (!lora) base = ref;
      else {
        const change = compareLogits(ref.logits, base!.logits, V).maxAbs;
        t.ok(change > 10 * tol, `${what}: the adapter moves llama.cpp's log-probs by up to ${change.toExponential(2)}, far above the tolerance`);
      }

      const { completions } = await generate(model, { prompts: [tokens], temperature: 0, maxNewTokens: N_GEN, stopAtEog: false, lora });
      const got = completions[0]!;
      let i = 0;
      let worst = 0;
      while (i < N_GEN && got.tokens[i] === ref.greedy[i]) {
        worst = Math.max(worst, Math.abs(got.logprobs[i]! - ref.logprob[i]!));
        i++;
      }
      const decodeTol = bounds.decode ?? tol;
      t.ok(worst <= decodeTol, `${what}: greedy log-probs agree over ${i} equal tokens (max |d| ${worst.toExponential(2)} <= ${decodeTol})`);
      if (i < N_GEN) {
        t.ok(ref.margin[i]! <= 2 * decodeTol,
          `${what}: greedy tokens part at step ${i} (ours ${got.tokens[i]}, llama.cpp ${ref.greedy[i]}) only where llama.cpp's top-2 margin ` +
          `${ref.margin[i]!.toExponential(2)} is a near-tie (<= ${2 * decodeTol})`);
      } else {
        t.pass(`${what}: ${N_GEN} greedy tokens equal`);
      }
    } finally {
      lora?.dispose();
    }
  }
}

const devices: Device[] = testDevices();

t.test('the project\'s forward matches llama.cpp\'s', async (t) => {
  const dir = tempDir(t, 'sqlr1-llama-ref-');
  const bins: Partial<Record<Device, string>> = {};
  for (const device of devices) bins[device] = await ensureReference(device);
  // The small models are written by llama.cpp's CPU build (also where only the CUDA cases run).
  const synth = bins.cpu ?? await ensureReference('cpu');
  const tinyF32 = await tinyModel(dir, 'f32', 'tiny', 7);
  const files: { label: string; type: string; path: string }[] = [];
  for (const type of TINY_TYPES) files.push({ label: `tiny-${type}`, type, path: type === 'f32' ? tinyF32 : await tinyModel(dir, type, 'tiny', 7) });
  for (const type of SMALL_TYPES) {
    const path = join(dir, `small-${type}.gguf`);
    referenceSynth(synth, { base: tinyF32, out: path, type, seed: 11, ...SMALL });
    files.push({ label: `small-${type}`, type, path });
  }
  for (const device of devices) {
    for (const f of files) {
      await t.test(`${f.label} on ${device}`, async (t) => {
        const model = await loadModel(f.path, { device });
        try {
          await check(t, model, device, bins[device]!, dir, f.label, f.type);
        } finally {
          model.dispose();
        }
      });
    }
  }
});
