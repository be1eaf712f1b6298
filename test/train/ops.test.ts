/**
 * Every tensor op, forward: each device against a plain-loop float64 reference on odd shapes (5, 7, 13, with
 * broadcasting on either side), and CUDA against the CPU on the same inputs.
 *
 * Tolerance: normalized MSE (mse(out, ref) / mse(ref, 0), as ggml's test-backend-ops) <= 1e-10. Each result is
 * a float32 rounding of at most a few float32 operations (or ggml's vectorized expf/logf, within a few ulps),
 * so the NMSE sits near (2^-24)^2 ~ 4e-15; 1e-10 leaves margin for reductions over ~500 terms and still fails
 * on one wrong element out of 500 (NMSE >= ~1e-3). Step and clamp results are also exact where defined.
 */
import t from 'tap';
import { Tensor, evaluate } from '../../lib/train/index.js';
import { nmse, testDevices } from '../helpers/native.js';
import { bcastMap, refBinary, refSumRows, size, uniform, type Dev } from './fixtures/ref.js';

const devices = testDevices();
const TOL = 1e-10;

interface Case {
  name: string;
  inputs: Array<{ shape: number[]; lo?: number; hi?: number; mask?: boolean }>;
  build: (x: Tensor[]) => Tensor;
  ref: (x: Float32Array[], shapes: number[][]) => { data: ArrayLike<number>; shape: number[] };
}

const binaryOps: Array<[string, (a: Tensor, b: Tensor) => Tensor, (x: number, y: number) => number, number, number]> = [
  ['add', (a, b) => a.add(b), (x, y) => x + y, -2, 2],
  ['sub', (a, b) => a.sub(b), (x, y) => x - y, -2, 2],
  ['mul', (a, b) => a.mul(b), (x, y) => x * y, -2, 2],
  ['div', (a, b) => a.div(b), (x, y) => x / y, 0.5, 2],
  ['minimum', (a, b) => a.minimum(b), (x, y) => Math.min(x, y), -2, 2],
  ['maximum', (a, b) => a.maximum(b), (x, y) => Math.max(x, y), -2, 2],
];
const binaryShapes: Array<[number[], number[]]> = [
  [[7, 13], [7, 13]], [[7, 13], [7, 1]], [[7, 13], [13]], [[7, 13], []], [[7, 1], [7, 13]], [[13], [5, 7, 13]],
  [[5, 7, 13], [5, 1, 13]], [[5, 1, 1], [5, 7, 13]], [[1, 13], [7, 13]], [[2, 3, 5, 7], [3, 1, 7]],
];

const cases: Case[] = [];
for (const [name, f, r, lo, hi] of binaryOps) {
  for (const [as, bs] of binaryShapes) {
    cases.push({
      name: `${name}(${JSON.stringify(as)}, ${JSON.stringify(bs)})`,
      inputs: [{ shape: as, lo, hi }, { shape: bs, lo, hi }],
      build: ([a, b]) => f(a!, b!),
      ref: ([a, b], [sa, sb]) => refBinary(a!, sa!, b!, sb!, r),
    });
  }
}
const unary: Array<[string, (x: Tensor) => Tensor, (x: number) => number, number, number]> = [
  ['neg', (x) => x.neg(), (x) => -x, -3, 3],
  ['exp', (x) => x.exp(), Math.exp, -5, 5],
  ['log', (x) => x.log(), Math.log, 0.01, 10],
  ['step', (x) => x.step(), (x) => (x > 0 ? 1 : 0), -1, 1],
  ['scale(-2.5)', (x) => x.scale(-2.5), (x) => x * Math.fround(-2.5), -3, 3],
  ['addScalar(0.3)', (x) => x.addScalar(0.3), (x) => x + Math.fround(0.3), -3, 3],
  ['clamp(-0.5, 0.75)', (x) => x.clamp(-0.5, 0.75), (x) => Math.min(Math.max(x, -0.5), 0.75), -2, 2],
  ['clamp(0.8, 1.2) of ratios', (x) => x.clamp(0.8, 1.2), (x) => Math.min(Math.max(x, Math.fround(0.8)), Math.fround(1.2)), 0.5, 1.5],
  ['add(number)', (x) => x.add(1.5), (x) => x + 1.5, -3, 3],
  ['mul(number)', (x) => x.mul(3), (x) => x * 3, -3, 3],
  ['div(number 4)', (x) => x.div(4), (x) => x / 4, -3, 3],
];
for (const shape of [[5, 7, 13], [13], []]) {
  for (const [name, f, r, lo, hi] of unary) {
    cases.push({
      name: `${name} ${JSON.stringify(shape)}`,
      inputs: [{ shape, lo, hi }],
      build: ([x]) => f(x!),
      ref: ([x]) => ({ data: Array.from(x!, r), shape }),
    });
  }
  const cols = shape.length ? shape[shape.length - 1]! : 1;
  const rows = shape.length ? [...shape.slice(0, -1), 1] : [];
  cases.push(
    { name: `sum ${JSON.stringify(shape)}`, inputs: [{ shape }], build: ([x]) => x!.sum(), ref: ([x]) => ({ data: [x!.reduce((a, b) => a + b, 0)], shape: [] }) },
    { name: `mean ${JSON.stringify(shape)}`, inputs: [{ shape }], build: ([x]) => x!.mean(), ref: ([x]) => ({ data: [x!.reduce((a, b) => a + b, 0) / x!.length], shape: [] }) },
    { name: `sumRows ${JSON.stringify(shape)}`, inputs: [{ shape }], build: ([x]) => x!.sumRows(), ref: ([x]) => ({ data: refSumRows(x!, shape), shape: rows }) },
    { name: `meanRows ${JSON.stringify(shape)}`, inputs: [{ shape }], build: ([x]) => x!.meanRows(), ref: ([x]) => ({ data: refSumRows(x!, shape).map((v) => v / cols), shape: rows }) },
  );
}
cases.push({
  name: 'reshape [5, 7, 13] -> [35, 13] then sumRows',
  inputs: [{ shape: [5, 7, 13] }],
  build: ([x]) => x!.reshape([35, 13]).sumRows(),
  ref: ([x]) => ({ data: refSumRows(x!, [35, 13]), shape: [35, 1] }),
});

// Masked reductions; masks are 0/1 with one all-zero row (the denominator's max(., 1) gives 0 there).
for (const [xs, ms] of [[[7, 13], [7, 13]], [[5, 7, 13], [5, 7, 13]], [[7, 13], [13]], [[7, 13], [7, 1]]] as const) {
  const inputs = [{ shape: [...xs] }, { shape: [...ms], mask: true }];
  cases.push(
    {
      name: `maskedSum(${JSON.stringify(xs)}, mask ${JSON.stringify(ms)})`, inputs, build: ([x, m]) => x!.maskedSum(m!),
      ref: ([x, m], [sx, sm]) => ({ data: [refBinary(x!, sx!, m!, sm!, (a, b) => a * b).data.reduce((a, b) => a + b, 0)], shape: [] }),
    },
    {
      name: `maskedMean(${JSON.stringify(xs)}, mask ${JSON.stringify(ms)})`, inputs, build: ([x, m]) => x!.maskedMean(m!),
      ref: ([x, m], [sx, sm]) => {
        const num = refBinary(x!, sx!, m!, sm!, (a, b) => a * b).data.reduce((a, b) => a + b, 0);
        const den = Array.from(bcastMap(sx!, sm!), (j) => m![j]!).reduce((a, b) => a + b, 0);
        return { data: [num / Math.max(den, 1)], shape: [] };
      },
    },
    {
      name: `maskedMeanRows(${JSON.stringify(xs)}, mask ${JSON.stringify(ms)})`, inputs, build: ([x, m]) => x!.maskedMeanRows(m!),
      ref: ([x, m], [sx, sm]) => {
        const num = refSumRows(refBinary(x!, sx!, m!, sm!, (a, b) => a * b).data, sx!);
        const den = refSumRows(Array.from(bcastMap(sx!, sm!), (j) => m![j]!), sx!);
        return { data: num.map((v, r) => v / Math.max(den[r]!, 1)), shape: [...sx!.slice(0, -1), 1] };
      },
    },
  );
}

function makeInputs(c: Case, seed: number): Float32Array[] {
  return c.inputs.map((inp, k) => {
    const n = size(inp.shape);
    if (!inp.mask) return uniform(n, seed + k, inp.lo ?? -2, inp.hi ?? 2);
    const m = uniform(n, seed + k).map((v) => (v > -0.4 ? 1 : 0));
    const cols = inp.shape[inp.shape.length - 1]!;
    if (n / cols > 1) m.fill(0, 0, cols);  // an empty first row
    return m;
  });
}

async function runCase(c: Case, device: Dev, data: Float32Array[]) {
  const xs = data.map((d, k) => Tensor.constant(d, c.inputs[k]!.shape));
  const out = c.build(xs);
  const [v] = await evaluate([out], { device });
  return { data: v!, shape: [...out.shape] };
}

for (const device of devices) {
  t.test(`tensor ops forward on ${device} against float64 references`, async (t) => {
    let seed = 1000;
    for (const c of cases) {
      seed += 10;
      const data = makeInputs(c, seed);
      const ref = c.ref(data, c.inputs.map((i) => i.shape));
      const out = await runCase(c, device, data);
      const e = nmse(out.data, ref.data);
      t.same(out.shape, ref.shape, `${c.name}: shape`);
      t.ok(e <= TOL, `${c.name} on ${device}: nmse ${e.toExponential(2)} <= ${TOL} (seed ${seed})`);
      if (device === 'cuda') {
        const cpu = await runCase(c, 'cpu', data);
        const ec = nmse(out.data, cpu.data);
        t.ok(ec <= TOL, `${c.name}: cuda vs cpu nmse ${ec.toExponential(2)} (seed ${seed})`);
      }
    }
  });
}

t.test('clamp, minimum and maximum: exact on the pass-through side, within an ulp on the other', async (t) => {
  const x = Float32Array.from([0.5, 0.79, 0.8, 0.81, 1.0, 1.19, 1.2, 1.21, 3.0]);
  const [c] = await evaluate([Tensor.constant(x, [9]).clamp(0.8, 1.2)]);
  for (let i = 0; i < x.length; i++) {
    const want = Math.min(Math.max(x[i]!, Math.fround(0.8)), Math.fround(1.2));
    const inside = x[i]! >= Math.fround(0.8) && x[i]! <= Math.fround(1.2);
    if (inside) t.equal(c![i], want, `clamp(${x[i]}) exact inside`);
    else t.ok(Math.abs(c![i]! - want) <= 2 ** -23 * Math.abs(want), `clamp(${x[i]}) = ${c![i]} within an ulp of ${want}`);
  }
  // min(a, b) = a - relu(a - b) is exact where a is the minimum; max(a, b) = a + relu(b - a) where a is the maximum.
  const a = Float32Array.from([0.1, 0.7, -3.3, 5.5]), b = Float32Array.from([0.3, 0.2, -1.1, 5.5]);
  const [mn, mx] = await evaluate([Tensor.constant(a, [4]).minimum(Tensor.constant(b, [4])), Tensor.constant(a, [4]).maximum(Tensor.constant(b, [4]))]);
  t.equal(mn![0], a[0], 'min exact when a < b');
  t.equal(mn![2], a[2], 'min exact when a < b (negative)');
  t.equal(mn![3], a[3], 'min exact at a tie');
  t.ok(Math.abs(mn![1]! - b[1]!) <= 2 ** -23 * Math.abs(a[1]!), 'min within an ulp of b when b < a');
  t.equal(mx![1], a[1], 'max exact when a > b');
  t.equal(mx![3], a[3], 'max exact at a tie');
});
