/**
 * The sampler alone (native/src/sampler.cpp and native/cuda/sampler.cu) on given logits: draw frequencies
 * match softmax(logits / T), log-probs match a float64 log-softmax, greedy and truncation behave, and the CUDA
 * kernel draws the same tokens as the CPU loop from the same logits, seeds and positions.
 *
 * Tolerances: frequencies within 4 standard deviations of the binomial count (a false alarm about once in
 * 15,000 per token class). Log-probs within 1e-5 of float64 (CPU, float32 arithmetic over <= 151,936 terms)
 * and 1e-4 on CUDA (its fast exp has ~2 ulp error per term).
 */
import t from 'tap';
import { binding, randomArray, testDevices } from '../helpers/native.js';

const logSoftmax = (row: ArrayLike<number>, T: number): number[] => {
  const z = Array.from(row, (v) => v / T);
  const mx = Math.max(...z);
  const lse = mx + Math.log(z.reduce((s, v) => s + Math.exp(v - mx), 0));
  return z.map((v) => v - lse);
};

function sample(device: 'cpu' | 'cuda', logits: Float32Array, V: number, opts: { temperature: number; topK?: number; topP?: number; seed?: bigint }) {
  const n = logits.length / V;
  return binding(device).sampleRows({
    device, logits, nVocab: V, temperature: opts.temperature, topK: opts.topK ?? 0, topP: opts.topP ?? 1,
    seeds: new BigUint64Array(n).fill(opts.seed ?? 7n), positions: BigUint64Array.from({ length: n }, (_, i) => BigInt(i)),
  });
}

for (const device of testDevices()) {
  t.test(`draws follow softmax(logits / T) on ${device}`, async (t) => {
    const row = [2, 1, 0, -1, 0.5], V = row.length, n = 20000, T = 0.7;
    const logits = new Float32Array(n * V);
    for (let i = 0; i < n; i++) logits.set(row, i * V);
    const r = sample(device, logits, V, { temperature: T });
    const lp = logSoftmax(Float32Array.from(row), T);
    const counts = new Array<number>(V).fill(0);
    r.tokens.forEach((tok) => counts[tok]!++);
    for (let k = 0; k < V; k++) {
      const p = Math.exp(lp[k]!), sd = Math.sqrt(n * p * (1 - p));
      t.ok(Math.abs(counts[k]! - n * p) <= 4 * sd, `token ${k}: ${counts[k]} draws, expected ${(n * p).toFixed(0)} +- ${(4 * sd).toFixed(0)}`);
    }
    const tol = device === 'cpu' ? 1e-5 : 1e-4;
    t.ok(r.tokens.every((tok, i) => Math.abs(r.logprobs[i]! - lp[tok]!) < tol), 'log-probs are log softmax(logits / T) of the drawn tokens');
    const greedy = sample(device, logits.subarray(0, 3 * V), V, { temperature: 0 });
    t.same(Array.from(greedy.tokens), [0, 0, 0], 'greedy takes the argmax');
    t.ok(Math.abs(greedy.logprobs[0]! - logSoftmax(Float32Array.from(row), 1)[0]!) < tol, 'greedy log-prob is taken at T = 1');
  });
}

t.test('top-k and top-p on the CPU', async (t) => {
  const row = [2, 1, 0, -1, 0.5], V = row.length, n = 8000;
  const logits = new Float32Array(n * V);
  for (let i = 0; i < n; i++) logits.set(row, i * V);
  const k2 = sample('cpu', logits, V, { temperature: 1, topK: 2 });
  const seen = new Set(k2.tokens);
  t.same([...seen].sort(), [0, 1], 'top-k 2 draws only the two most likely tokens');
  const p0 = 1 / (1 + Math.exp(-1));  // renormalized over {0, 1}
  const c0 = k2.tokens.filter((x) => x === 0).length, sd = Math.sqrt(n * p0 * (1 - p0));
  t.ok(Math.abs(c0 - n * p0) <= 4 * sd, `top-k renormalizes: ${c0} draws of token 0, expected ${(n * p0).toFixed(0)}`);
  const p1 = sample('cpu', logits.subarray(0, 50 * V), V, { temperature: 1, topP: 0.1 });
  t.ok(p1.tokens.every((x) => x === 0), 'top-p 0.1 keeps only the most likely token');
});

t.test('the CUDA kernel draws what the CPU loop draws', { skip: testDevices().includes('cuda') ? false : 'no CUDA device' }, async (t) => {
  const V = 151936, n = 37;
  const logits = randomArray(n * V, 99, 4);
  for (const temperature of [0, 0.7, 1.3]) {
    const cpu = sample('cpu', logits, V, { temperature, seed: 12345n });
    const cuda = sample('cuda', logits, V, { temperature, seed: 12345n });
    t.same(Array.from(cuda.tokens), Array.from(cpu.tokens), `T=${temperature}: same tokens for ${n} rows`);
    const worst = Math.max(...Array.from(cpu.logprobs, (v, i) => Math.abs(v - cuda.logprobs[i]!)));
    t.ok(worst < 1e-4, `T=${temperature}: log-probs agree (max |diff| ${worst.toExponential(2)})`);
  }
});

t.test('bad sampler requests', async (t) => {
  t.throws(() => binding('cpu').sampleRows({ device: 'cpu', logits: new Float32Array(10), nVocab: 3, seeds: new BigUint64Array(3), positions: new BigUint64Array(3), temperature: 1 }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => binding('cpu').sampleRows({ device: 'cpu', logits: new Float32Array(9), nVocab: 3, seeds: new BigUint64Array(2), positions: new BigUint64Array(3), temperature: 1 }), { code: 'ERR_INVALID_ARG' });
  if (!testDevices().includes('cuda')) {
    t.throws(() => binding('cpu').sampleRows({ device: 'cuda', logits: new Float32Array(9), nVocab: 3, seeds: new BigUint64Array(3), positions: new BigUint64Array(3), temperature: 1 }), { code: 'ERR_NO_CUDA' });
  }
});
