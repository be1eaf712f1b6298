/**
 * Gradients of every op from ggml's backward graph against central finite differences of the forward graph
 * (float32, step 1e-3 relative; the tolerance is derived in fixtures/ref.ts gradCheck). Each check differentiates
 * L = sum(f(inputs) * W) with a seeded random W, so every output element carries its own weight. Inputs avoid
 * kinks (clamp bounds, min/max ties) by at least 0.02, far more than the step.
 */
import t from 'tap';
import { Tensor, evaluate } from '../../lib/train/index.js';
import { testDevices } from '../helpers/native.js';
import { bcastMap, bcastShape, gradCheck, size, uniform, type Dev } from './fixtures/ref.js';

const devices = testDevices();

interface GradCase {
  name: string;
  shapes: number[][];
  range?: [number, number];
  /** 0/1 masks for these input indices: plain constants, no gradient checked through them. */
  masks?: number[];
  /** Inputs must stay this far from each other (min/max) or from these points (clamp). */
  gapPairs?: boolean;
  gapPoints?: number[];
  f: (x: Tensor[]) => Tensor;
}

const cases: GradCase[] = [];
const pairShapes: Array<[number[], number[]]> = [[[3, 5], [3, 5]], [[3, 5], [3, 1]], [[3, 5], [5]], [[3, 5], []], [[3, 1], [3, 5]], [[1, 5], [3, 5]], [[2, 3, 5], [3, 1]]];
for (const [as, bs] of pairShapes) {
  const tag = `${JSON.stringify(as)}, ${JSON.stringify(bs)}`;
  cases.push(
    { name: `add(${tag})`, shapes: [as, bs], f: ([a, b]) => a!.add(b!) },
    { name: `sub(${tag})`, shapes: [as, bs], f: ([a, b]) => a!.sub(b!) },
    { name: `mul(${tag})`, shapes: [as, bs], f: ([a, b]) => a!.mul(b!) },
    { name: `div(${tag})`, shapes: [as, bs], range: [0.5, 2], f: ([a, b]) => a!.div(b!) },
    { name: `minimum(${tag})`, shapes: [as, bs], gapPairs: true, f: ([a, b]) => a!.minimum(b!) },
    { name: `maximum(${tag})`, shapes: [as, bs], gapPairs: true, f: ([a, b]) => a!.maximum(b!) },
  );
}
for (const shape of [[3, 5], [7], []]) {
  const tag = JSON.stringify(shape);
  cases.push(
    { name: `neg ${tag}`, shapes: [shape], f: ([x]) => x!.neg() },
    { name: `exp ${tag}`, shapes: [shape], range: [-2, 2], f: ([x]) => x!.exp() },
    { name: `log ${tag}`, shapes: [shape], range: [0.5, 3], f: ([x]) => x!.log() },
    { name: `step ${tag} (gradient 0)`, shapes: [shape], gapPoints: [0], f: ([x]) => x!.step() },
    { name: `scale ${tag}`, shapes: [shape], f: ([x]) => x!.scale(-1.75) },
    { name: `addScalar ${tag}`, shapes: [shape], f: ([x]) => x!.addScalar(0.625) },
    { name: `clamp ${tag}`, shapes: [shape], range: [-1.5, 1.5], gapPoints: [-0.5, 0.75], f: ([x]) => x!.clamp(-0.5, 0.75) },
    { name: `sum ${tag}`, shapes: [shape], f: ([x]) => x!.sum() },
    { name: `mean ${tag}`, shapes: [shape], f: ([x]) => x!.mean() },
    { name: `sumRows ${tag}`, shapes: [shape], f: ([x]) => x!.sumRows() },
    { name: `meanRows ${tag}`, shapes: [shape], f: ([x]) => x!.meanRows() },
  );
}
cases.push(
  { name: 'reshape [3, 5] -> [5, 3] then meanRows', shapes: [[3, 5]], f: ([x]) => x!.reshape([5, 3]).meanRows() },
  { name: 'a node used twice: x * x + exp(x)', shapes: [[3, 5]], f: ([x]) => x!.mul(x!).add(x!.exp()) },
  { name: 'chain: log(exp(x) + 1) / (x*x + 1)', shapes: [[7]], f: ([x]) => x!.exp().addScalar(1).log().div(x!.mul(x!).addScalar(1)) },
  { name: 'maskedSum (x only)', shapes: [[3, 5], [3, 5]], masks: [1], f: ([x, m]) => x!.maskedSum(m!) },
  { name: 'maskedMean (x only)', shapes: [[3, 5], [3, 5]], masks: [1], f: ([x, m]) => x!.maskedMean(m!) },
  { name: 'maskedMeanRows (x only)', shapes: [[3, 5], [3, 5]], masks: [1], f: ([x, m]) => x!.maskedMeanRows(m!) },
  { name: 'maskedMean with a broadcast mask [5]', shapes: [[3, 5], [5]], masks: [1], f: ([x, m]) => x!.maskedMean(m!) },
  // Soft masks in [0.5, 1]: every sum stays well above 1, away from the max(., 1) kink, so the mask's gradient is smooth too.
  { name: 'maskedSum (x and a soft mask)', shapes: [[3, 5], [3, 5]], range: [0.5, 1], f: ([x, m]) => x!.maskedSum(m!) },
  { name: 'maskedMean (x and a soft mask)', shapes: [[3, 5], [3, 5]], range: [0.5, 1], f: ([x, m]) => x!.maskedMean(m!) },
  { name: 'maskedMeanRows (x and a soft mask)', shapes: [[3, 5], [3, 5]], range: [0.5, 1], f: ([x, m]) => x!.maskedMeanRows(m!) },
);

function minGap(c: GradCase, xs: Float32Array[]): number {
  let gap = Infinity;
  if (c.gapPairs) {
    const out = bcastShape(c.shapes[0]!, c.shapes[1]!);
    const ma = bcastMap(out, c.shapes[0]!), mb = bcastMap(out, c.shapes[1]!);
    for (let i = 0; i < ma.length; i++) gap = Math.min(gap, Math.abs(xs[0]![ma[i]!]! - xs[1]![mb[i]!]!));
  }
  for (const p of c.gapPoints ?? []) for (const v of xs[0]!) gap = Math.min(gap, Math.abs(v - p));
  return gap;
}

function inputsFor(c: GradCase, seed0: number): { seed: number; data: Float32Array[] } {
  for (let seed = seed0; ; seed += 7919) {
    const data = c.shapes.map((s, k) => {
      const d = uniform(size(s), seed + k, ...(c.range ?? [-2, 2]));
      return c.masks?.includes(k) ? d.map((v, i) => (i % 4 === 3 ? 0 : 1)) : d;
    });
    if (minGap(c, data) >= 0.02) return { seed, data };
  }
}

for (const device of devices) {
  t.test(`gradients of every op on ${device} match central finite differences`, async (t) => {
    let seed0 = 50_000;
    for (const c of cases) {
      seed0 += 100;
      const { seed, data } = inputsFor(c, seed0);
      const outShape = [...c.f(c.shapes.map((s) => Tensor.full(s, 1))).shape];
      const w = Tensor.constant(uniform(size(outShape), seed + 99), outShape);
      const inputs = data.map((d, k) => ({ data: d, shape: c.shapes[k]!, noGrad: c.masks?.includes(k) ?? false }));
      // Σ |w f| of the final weighted sum, for the rounding part of the tolerance.
      const [terms] = await evaluate([c.f(inputs.map((x) => Tensor.constant(x.data, x.shape))).mul(w)], { device });
      const scale = terms!.reduce((a, b) => a + Math.abs(b), 0);
      const g = await gradCheck(inputs, (xs) => c.f(xs).mul(w).sum(), scale, { device });
      t.ok(g.worst <= 1, `${c.name} on ${device}: worst |analytic - fd| / tol = ${g.worst.toFixed(3)} (seed ${seed})${g.worst > 1 ? ` at ${g.where}` : ''}`);
      if (c.name.startsWith('step')) t.ok(g.analytic[0]!.every((v) => v === 0), `${c.name}: the gradient is exactly 0`);
    }
  });
}
