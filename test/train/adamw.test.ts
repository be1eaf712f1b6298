/**
 * ParamStore and AdamW: ggml's opt_step_adamw against a plain-loop reference of the same formula (read from
 * ggml-cpu/ops.cpp ggml_compute_forward_opt_step_adamw_f32 and ggml-opt.cpp's bias corrections):
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   w = w (1 - lr wd) - lr (m b1h) / (sqrt(v b2h) + eps),  b1h = 1 / (1 - b1^t), b2h = 1 / (1 - b2^t)
 * (weight decay decoupled from the moments and scaled by lr, as PyTorch's AdamW); gradient accumulation, the
 * global grad norm and clipping against plain loops; and the full loop recovering a noisy linear fit.
 */
import t from 'tap';
import { AdamW, ParamStore, Tensor, backward, type AdamWOptions } from '../../lib/train/index.js';
import { testDevices } from '../helpers/native.js';
import { normal, setGrads, uniform, type Dev } from './fixtures/ref.js';

const devices = testDevices();

function store(t: { teardown(fn: () => void): void }, device: Dev = 'cpu'): ParamStore {
  const s = new ParamStore({ device, threads: 1 });
  t.teardown(() => s.dispose());
  return s;
}

function adamwRef(w: Float64Array, m: Float64Array, v: Float64Array, g: ArrayLike<number>, o: Required<Omit<AdamWOptions, 'maxGradNorm'>>, step: number): void {
  // The kernel reads its hyperparameters as float32.
  const f = Math.fround;
  const [b1, b2] = [f(o.betas[0]), f(o.betas[1])];
  const lr = f(o.lr), eps = f(o.eps), wd = f(o.weightDecay);
  const b1h = f(1 / (1 - o.betas[0] ** step)), b2h = f(1 / (1 - o.betas[1] ** step));
  for (let i = 0; i < w.length; i++) {
    m[i] = m[i]! * b1 + g[i]! * (1 - b1);
    v[i] = v[i]! * b2 + g[i]! * g[i]! * (1 - b2);
    w[i] = w[i]! * (1 - lr * wd) - (lr * m[i]! * b1h) / (Math.sqrt(v[i]! * b2h) + eps);
  }
}

/** Adds uniform-random parameters to the store; returns their float64 copies with zero moments (the reference). */
function addParams(s: ParamStore, shapes: [string, number[]][], seed: number) {
  const ref: Record<string, { w: Float64Array; m: Float64Array; v: Float64Array }> = {};
  shapes.forEach(([name, shape], k) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const w0 = uniform(n, seed + k);
    s.add(name, shape, w0);
    ref[name] = { w: Float64Array.from(w0), m: new Float64Array(n), v: new Float64Array(n) };
  });
  return ref;
}

for (const device of devices) {
  t.test(`AdamW steps on ${device} match the plain-loop reference`, async (t) => {
    const s = store(t, device);
    const seed = 4242;
    const shapes: Record<string, number[]> = { w: [7, 13], b: [13], untouched: [5] };
    const ref = addParams(s, Object.entries(shapes), seed);
    const o = { lr: 0.01, betas: [0.9, 0.999] as [number, number], eps: 1e-8, weightDecay: 0.1 };
    const opt = new AdamW(s, o);
    for (let step = 1; step <= 3; step++) {
      const grads = { w: uniform(91, seed + 10 * step, -3, 3), b: uniform(13, seed + 10 * step + 1, -0.01, 0.01) };
      await setGrads(s, grads);
      const res = await opt.step();
      t.same({ step: res.step, updated: res.updated }, { step, updated: 2 }, `step ${step} updated the two parameters with gradients`);
      opt.zeroGrad();
      for (const name of ['w', 'b'] as const) {
        adamwRef(ref[name]!.w, ref[name]!.m, ref[name]!.v, grads[name], o, step);
        const got = s.get(name), { m, v } = s.moments(name);
        // float32 kernel vs float64 loop: a few ulps of |w| plus a few ulps of the lr-sized update.
        const tolW = (i: number) => 4e-7 * (Math.abs(ref[name]!.w[i]!) + o.lr);
        t.ok(got.every((x, i) => Math.abs(x - ref[name]!.w[i]!) <= tolW(i)), `step ${step}: ${name} matches (seed ${seed})`);
        // Moments: float32 sums of a few terms of size <= gmax (m) or gmax^2 (v); m may cancel to ~0, so the
        // bound is a few ulps of the terms, not of the result.
        const gmax = name === 'w' ? 3 : 0.01;
        t.ok(m.every((x, i) => Math.abs(x - ref[name]!.m[i]!) <= 4e-7 * gmax), `step ${step}: ${name} first moment`);
        t.ok(v.every((x, i) => Math.abs(x - ref[name]!.v[i]!) <= 4e-7 * gmax * gmax), `step ${step}: ${name} second moment`);
      }
      t.same(Array.from(s.get('untouched')), Array.from(ref.untouched!.w, Math.fround), 'a parameter without a gradient is not updated (not even decayed)');
    }
    t.equal(opt.stepCount, 3);
  });
}

for (const device of devices) t.test(`gradients accumulate across backward calls until zeroGrad (${device})`, async (t) => {
  const s = store(t, device);
  s.add('p', [2, 3], [1, 2, 3, 4, 5, 6]);
  const g = Float32Array.from([0.5, -1, 2, 0, 3, -4]);
  t.equal(s.grad('p'), undefined, 'no gradient before a backward');
  await setGrads(s, { p: g });
  await setGrads(s, { p: g });
  t.same(Array.from(s.grad('p')!), Array.from(g, (x) => 2 * x), 'two backward calls add up');
  s.zeroGrad();
  t.equal(s.grad('p'), undefined, 'zeroGrad clears the gradient');
  t.equal(s.gradNorm(), 0);
  t.equal(await s.adamwStep({ lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 }), 0, 'a step after zeroGrad updates nothing');
  t.same(Array.from(s.get('p')), [1, 2, 3, 4, 5, 6]);
});

for (const device of devices) t.test(`setGrad replaces the accumulated gradient, which AdamW then uses (${device})`, async (t) => {
  const s = store(t, device);
  s.add('p', [2, 2], [1, -1, 2, -2]);
  s.add('q', [3]);
  await setGrads(s, { p: Float32Array.from([9, 9, 9, 9]) });
  const g = Float32Array.from([0.25, -0.5, 1, 0]);
  s.setGrad('p', g);
  t.same(Array.from(s.grad('p')!), Array.from(g), 'the written gradient replaces the accumulated one');
  s.setGrad('q', [1, 2, 3]);
  t.same(Array.from(s.grad('q')!), [1, 2, 3], 'a parameter without a backward gets one');
  t.ok(Math.abs(s.gradNorm() - Math.sqrt(0.0625 + 0.25 + 1 + 14)) <= 1e-6 * 4.04, 'gradNorm sees the written gradients');
  t.equal(await s.adamwStep({ lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 }), 2, 'AdamW steps both');
  // First AdamW step: w -= lr * g / (|g| + eps): a step of lr against each non-zero gradient's sign.
  const p = s.get('p');
  [1 - 0.1, -1 + 0.1, 2 - 0.1, -2].forEach((w, i) => t.ok(Math.abs(p[i]! - w) <= 1e-6, `p[${i}] = ${p[i]} (expected ${w})`));
  t.throws(() => s.setGrad('p', [1, 2, 3]), { code: 'ERR_INVALID_ARG' }, 'a wrong length is ERR_INVALID_ARG');
  t.throws(() => s.setGrad('nope', [1]), /nope/, 'an unknown name is an error naming it');
});

for (const device of devices) t.test(`grad norm and clipping match plain loops (${device})`, async (t) => {
  const s = store(t, device);
  const seed = 777;
  s.add('a', [5, 7]);
  s.add('b', [13]);
  s.add('c', [3]);  // no gradient: not part of the norm
  const grads = { a: uniform(35, seed, -2, 2), b: uniform(13, seed + 1, -5, 5) };
  await setGrads(s, grads);
  let ss = 0;
  for (const g of Object.values(grads)) for (const x of g) ss += x * x;
  const norm = Math.sqrt(ss);
  // Per-tensor sums of squares run in float32 on the CPU (relative error ~1e-7 sqrt(n) for n terms), in float64
  // on CUDA: 1e-6 covers both.
  t.ok(Math.abs(s.gradNorm() - norm) <= 1e-6 * norm, `gradNorm ${s.gradNorm()} = ${norm} (seed ${seed})`);
  const above = s.clipGradNorm(norm * 10);
  t.ok(Math.abs(above - norm) <= 1e-6 * norm, `clipping above the norm returns the norm (${above} vs the float64 ${norm})...`);
  t.same(Array.from(s.grad('a')!), Array.from(grads.a), '...and leaves the gradients alone');
  const max = norm / 3;
  t.ok(Math.abs(s.clipGradNorm(max) - norm) <= 1e-6 * norm, 'clipGradNorm returns the norm before clipping');
  // The scale comes from the float32-summed norm above: within 1e-6 of max / (norm + 1e-6).
  const coef = max / (norm + 1e-6);
  for (const [name, g] of Object.entries(grads)) {
    const got = s.grad(name)!;
    t.ok(got.every((x, i) => Math.abs(x - g[i]! * coef) <= 1e-6 * Math.abs(g[i]! * coef)), `${name} scaled by max / (norm + 1e-6)`);
  }
  t.ok(Math.abs(s.gradNorm() - max) <= 1e-6 * max, `the clipped norm is maxNorm (${s.gradNorm()} vs ${max})`);
  t.equal(s.grad('c'), undefined);
});

t.test('AdamW recovers a noisy linear fit through the full loop', async (t) => {
  const seed = 2024;
  const n = 64;
  const x = uniform(n, seed, -1, 1);
  const noise = normal(n, seed + 1);
  const y = Float32Array.from(x, (v, i) => 3 * v - 2 + 0.1 * noise[i]!);
  // The least-squares optimum the loss is minimized at (float64 closed form).
  const mx = x.reduce((a, v) => a + v, 0) / n, my = y.reduce((a, v) => a + v, 0) / n;
  let sxy = 0, sxx = 0;
  for (let i = 0; i < n; i++) { sxy += (x[i]! - mx) * (y[i]! - my); sxx += (x[i]! - mx) ** 2; }
  const aLs = sxy / sxx, bLs = my - aLs * mx;

  const s = store(t);
  const a = s.add('a', []), b = s.add('b', []);
  const X = Tensor.constant(x, [n]), Y = Tensor.constant(y, [n]);
  const d = X.mul(a).add(b).sub(Y);
  const loss = d.mul(d).mean();
  const opt = new AdamW(s, { lr: 0.1, weightDecay: 0 });
  const steps = 400;
  let last = Infinity;
  for (let i = 0; i < steps; i++) {
    const r = await backward(loss);
    last = r.loss;
    s.clipGradNorm(1.0);
    await opt.step({ lr: 0.001 + 0.5 * (0.1 - 0.001) * (1 + Math.cos((Math.PI * i) / steps)) });  // cosine to 1e-3
    opt.zeroGrad();
  }
  const [av, bv] = [s.get('a')[0]!, s.get('b')[0]!];
  t.ok(Math.abs(av - aLs) < 1e-2 && Math.abs(bv - bLs) < 1e-2, `a=${av} b=${bv} vs least squares a=${aLs} b=${bLs} within 1e-2 (seed ${seed})`);
  t.ok(Math.abs(av - 3) < 0.05 && Math.abs(bv + 2) < 0.05, `close to the generating y = 3x - 2 (a=${av}, b=${bv})`);
  t.ok(last < 0.02, `final loss ${last} near the noise floor 0.01`);
});

if (devices.includes('cuda')) {
  t.test('AdamW on CUDA matches the CPU over a few steps', async (t) => {
    const seed = 99;
    const w0 = uniform(7 * 13, seed);
    const result: Float32Array[] = [];
    for (const device of ['cpu', 'cuda'] as const) {
      const s = store(t, device);
      s.add('w', [7, 13], w0);
      const opt = new AdamW(s, { lr: 0.01, weightDecay: 0.05 });
      for (let step = 1; step <= 4; step++) {
        await setGrads(s, { w: uniform(91, seed + step, -1, 1) });
        await opt.step();
        opt.zeroGrad();
      }
      result.push(s.get('w'));
    }
    t.ok(result[1]!.every((v, i) => Math.abs(v - result[0]![i]!) <= 1e-6), `cuda and cpu agree within 1e-6 (seed ${seed})`);
  });
}

if (devices.includes('cuda')) {
  // On CUDA the passes run over all tensors at once, each tensor cut into chunks of 16384 elements: sizes
  // below, at and across chunk boundaries, and many small tensors in one launch.
  t.test('CUDA multi-tensor passes: norm, clipping, AdamW and zeroGrad across chunk boundaries', async (t) => {
    const s = store(t, 'cuda');
    const seed = 31337;
    const shapes: [string, number[]][] = [['big', [3, 20000]], ['edge', [16384]], ['edge1', [16385]], ['one', []]];
    for (let i = 0; i < 40; i++) shapes.push([`small${i}`, [1 + (i * 37) % 97]]);
    const ref = addParams(s, shapes, seed);
    const o = { lr: 0.003, betas: [0.9, 0.95] as [number, number], eps: 1e-8, weightDecay: 0.02 };
    const opt = new AdamW(s, o);
    for (let step = 1; step <= 2; step++) {
      const grads: Record<string, Float32Array> = {};
      shapes.forEach(([name], k) => { grads[name] = uniform(ref[name]!.w.length, seed + 1000 * step + k, -2, 2); });
      await setGrads(s, grads);
      let ss = 0;
      for (const g of Object.values(grads)) for (const x of g) ss += x * x;
      // float64 sums of float32 squares on both sides: only the order of additions differs.
      t.ok(Math.abs(s.gradNorm() - Math.sqrt(ss)) <= 1e-12 * Math.sqrt(ss), `step ${step}: norm ${s.gradNorm()} vs ${Math.sqrt(ss)}`);
      const max = Math.sqrt(ss) / 4, coef = max / (Math.sqrt(ss) + 1e-6);
      s.clipGradNorm(max);
      for (const [name, g] of Object.entries(grads)) {
        const got = s.grad(name)!;
        t.ok(got.every((x, i) => Math.abs(x - g[i]! * coef) <= 1e-6 * Math.abs(g[i]! * coef)), `step ${step}: ${name} clipped`);
        grads[name] = got;
      }
      await opt.step();
      opt.zeroGrad();
      for (const [name] of shapes) {
        adamwRef(ref[name]!.w, ref[name]!.m, ref[name]!.v, grads[name]!, o, step);
        const got = s.get(name);
        t.ok(got.every((x, i) => Math.abs(x - ref[name]!.w[i]!) <= 4e-7 * (Math.abs(ref[name]!.w[i]!) + o.lr)), `step ${step}: ${name} updated as the reference`);
        t.equal(s.grad(name), undefined, `step ${step}: ${name} gradient cleared`);
      }
    }
    await setGrads(s, { big: uniform(60000, seed, -1, 1) });
    s.zeroGrad();
    await setGrads(s, { edge: uniform(16384, seed, -1, 1) });
    t.same(Array.from(s.grad('edge')!), Array.from(uniform(16384, seed, -1, 1)), 'zeroGrad left nothing behind: a new gradient reads back as itself');
    t.equal(s.grad('big'), undefined);
  });
}

t.test('moments round-trip for checkpoints; AdamW state', async (t) => {
  const s = store(t);
  s.add('p', [3], [1, 2, 3]);
  s.setMoments('p', { m: [0.1, 0.2, 0.3], v: [1, 2, 3] });
  const { m, v } = s.moments('p');
  t.same(Array.from(m), Array.from(Float32Array.from([0.1, 0.2, 0.3])));
  t.same(Array.from(v), [1, 2, 3]);
  const opt = new AdamW(s, { lr: 0.5 });
  opt.loadState({ step: 41, lr: 0.25 });
  t.same(opt.state(), { step: 41, lr: 0.25 });
  t.throws(() => s.setMoments('p', { m: [1], v: [1, 2, 3] }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => new AdamW(s, { betas: [1, 0.9] }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => new AdamW(s, { lr: -1 }), { code: 'ERR_INVALID_ARG' });
  await t.rejects(s.adamwStep({ lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 0 }), { code: 'ERR_INVALID_ARG' });
});
