/**
 * Every loss type x KL estimator of grpoLoss against the float64 reference (fixtures/loss-ref.ts) on random
 * inputs: value, metrics and d loss / d logp (through backward(), as the trainer gets it), with and without
 * truncated importance-sampling weights; then gradient accumulation: the micro-batches' losses and gradients
 * with whole-batch normalizers add up to the whole batch's, for grpo, dr_grpo and dapo; bnpo's documented
 * local normalizer; zero-advantage (zero-std) sequences contribute only their KL.
 */
import t from 'tap';
import { Tensor, backward, grpoLoss, type GrpoLossNormalizer, type GrpoLossType, type KlEstimator } from '../../lib/train/index.js';
import { rng, testDevices } from '../helpers/native.js';
import { grpoLossRef } from './fixtures/loss-ref.js';

const devices = testDevices();
const EPS_LOW = 0.2, EPS_HIGH = 0.28, CAP = 2;
const TYPES: readonly GrpoLossType[] = ['grpo', 'bnpo', 'dr_grpo', 'dapo'];

interface Batch {
  N: number; T: number; seed: number;
  logp: Float32Array; old: Float32Array; ref: Float32Array; adv: Float32Array; mask: Float32Array; isw: Float32Array;
}

/**
 * Random log-probs in [-3, -0.05]; ratios uniform in [0.5, 1.7] (so both clip sides occur), kept >= 1e-3 away from
 * the clip bounds so float32 rounding cannot move a token across a kink; ref within +-0.5 of logp; advantages
 * standard-ish with a zero; sequence lengths 0..T (one empty row); IS weights min(exp(old - sampler), CAP) with
 * sampler log-probs within +-0.9 of old (some weights capped).
 */
function randomBatch(seed: number, N: number, T: number): Batch {
  const r = rng(seed);
  const u = () => (r() + 1) / 2;
  const n = N * T;
  const logp = new Float32Array(n), old = new Float32Array(n), ref = new Float32Array(n), isw = new Float32Array(n);
  for (let k = 0; k < n; k++) {
    logp[k] = -0.05 - 2.95 * u();
    let ratio = 0.5 + 1.2 * u();
    for (const b of [1 - EPS_LOW, 1 + EPS_HIGH]) if (Math.abs(ratio - b) < 1e-3) ratio = b + 2e-3;
    old[k] = logp[k]! - Math.log(ratio);
    ref[k] = logp[k]! + (u() - 0.5);
    isw[k] = Math.min(Math.exp(0.9 * (2 * u() - 1)), CAP);
  }
  const adv = new Float32Array(N);
  for (let s = 0; s < N; s++) adv[s] = s === 1 ? 0 : 2.4 * (u() - 0.5);
  const mask = new Float32Array(n);
  for (let s = 0; s < N; s++) {
    const len = s === 2 ? 0 : s === 0 ? T : 1 + Math.floor(u() * T);
    for (let i = 0; i < len; i++) mask[s * T + i] = 1;
  }
  return { N, T, seed, logp, old, ref, adv, mask, isw };
}

function rows(b: Batch, from: number, to: number, T: number): Batch {
  const pick = (a: Float32Array) => {
    const out = new Float32Array((to - from) * T);
    for (let s = from; s < to; s++) for (let i = 0; i < T; i++) out[(s - from) * T + i] = a[s * b.T + i]!;
    return out;
  };
  return { N: to - from, T, seed: b.seed, logp: pick(b.logp), old: pick(b.old), ref: pick(b.ref), adv: b.adv.slice(from, to), mask: pick(b.mask), isw: pick(b.isw) };
}

interface Opts { lossType: GrpoLossType; beta: number; kl: KlEstimator; is: boolean; normalizer?: GrpoLossNormalizer; maxLen?: number }

async function run(b: Batch, o: Opts, device: 'cpu' | 'cuda') {
  const logp = Tensor.constant(b.logp, [b.N, b.T], { requiresGrad: true });
  const g = grpoLoss({
    logp, oldLogp: Tensor.constant(b.old, [b.N, b.T]), refLogp: Tensor.constant(b.ref, [b.N, b.T]),
    advantages: Tensor.constant(b.adv, [b.N]), mask: Tensor.constant(b.mask, [b.N, b.T]),
    epsLow: EPS_LOW, epsHigh: EPS_HIGH, beta: o.beta, lossType: o.lossType, klEstimator: o.kl,
    ...(o.is ? { isWeights: Tensor.constant(b.isw, [b.N, b.T]) } : {}),
    ...(o.normalizer ? { normalizer: o.normalizer } : {}), ...(o.maxLen ? { maxLen: o.maxLen } : {}),
  });
  const r = await backward(g.loss, { device, outputs: [g.kl!, g.clipLow, g.clipHigh, g.clipRegion] });
  return { loss: r.loss, grad: r.grads.get(logp)!, kl: r.values.get(g.kl!)![0]!, clipLow: r.values.get(g.clipLow)![0]!, clipHigh: r.values.get(g.clipHigh)![0]!, clipRegion: r.values.get(g.clipRegion)![0]! };
}

function refOf(b: Batch, o: Opts) {
  return grpoLossRef({
    N: b.N, T: b.T, logp: b.logp, old: b.old, ref: b.ref, adv: b.adv, mask: b.mask, ...(o.is ? { isw: b.isw } : {}),
    epsLow: EPS_LOW, epsHigh: EPS_HIGH, beta: o.beta, lossType: o.lossType, klEstimator: o.kl,
    ...(o.normalizer ? { normalizer: o.normalizer } : {}), ...(o.maxLen ? { maxLen: o.maxLen } : {}),
  });
}

/** max |a - b| / (atol + rtol |b|): <= 1 passes. */
function worst(a: ArrayLike<number>, b: ArrayLike<number>, atol: number, rtol: number): number {
  let w = 0;
  for (let i = 0; i < b.length; i++) w = Math.max(w, Math.abs(a[i]! - b[i]!) / (atol + rtol * Math.abs(b[i]!)));
  return w;
}

// float32 throughout: exp and products round at ~6e-8 relative per op and reductions run over <= 200 terms, so
// 2e-5 relative with a 1e-7 absolute floor (gradients are O(1 / tokens) ~ 1e-3) leaves a wide margin while a
// wrong normalizer (a factor 2 or more) or a wrong sign fails by orders of magnitude.
const RTOL = 2e-5, ATOL_LOSS = 1e-6, ATOL_GRAD = 1e-8;

for (const device of devices) {
  t.test(`${device}: every loss type and KL estimator on random inputs, with and without IS weights`, async (t) => {
    let seed = 100;
    for (const lossType of TYPES) for (const kl of ['k3', 'k1'] as const) for (const is of [false, true]) {
      const b = randomBatch(seed++, 6, 11);
      const o: Opts = { lossType, beta: 0.07, kl, is };
      const got = await run(b, o, device), want = refOf(b, o);
      const tag = `${lossType} ${kl}${is ? ' +IS' : ''} (seed ${b.seed})`;
      t.ok(Math.abs(got.loss - want.loss) <= ATOL_LOSS + RTOL * Math.abs(want.loss), `${tag}: loss ${got.loss} vs ${want.loss}`);
      const wg = worst(got.grad, want.grad, ATOL_GRAD, RTOL);
      t.ok(wg <= 1, `${tag}: d loss / d logp on all ${b.N * b.T} tokens (worst ratio ${wg.toFixed(3)})`);
      t.ok(Math.abs(got.kl - want.kl) <= 1e-6 + 1e-5 * Math.abs(want.kl), `${tag}: kl ${got.kl} vs ${want.kl}`);
      // A ratio of two counts: the CUDA reduction divides in float32 in another order (one ulp, ~6e-8), while one
      // token counted wrongly moves it by 1 / 66 ~ 1.5e-2.
      t.ok(Math.abs(got.clipRegion - want.clipRegion) <= 1e-6, `${tag}: clip_ratio/region_mean ${got.clipRegion} vs ${want.clipRegion}`);
      if (kl === 'k1') t.ok(want.kl !== 0 && Math.sign(got.kl) === Math.sign(want.kl), `${tag}: k1 keeps its sign (logp - ref)`);
    }
  });

  t.test(`${device}: the IS weight multiplies the surrogate only, never the KL`, async (t) => {
    const b = randomBatch(7, 4, 6);
    b.isw.fill(0);                              // weight 0 everywhere: only beta * KL is left
    for (const kl of ['k3', 'k1'] as const) {
      const got = await run(b, { lossType: 'dapo', beta: 0.5, kl, is: true }, device);
      const klOnly = refOf({ ...b, adv: new Float32Array(b.N) }, { lossType: 'dapo', beta: 0.5, kl, is: false });
      t.ok(Math.abs(got.loss - klOnly.loss) <= 1e-6 + RTOL * Math.abs(klOnly.loss), `${kl}: loss with zero IS weights = the KL term alone (${got.loss} vs ${klOnly.loss})`);
      t.ok(worst(got.grad, klOnly.grad, ATOL_GRAD, RTOL) <= 1, `${kl}: gradient = the KL term's alone`);
    }
  });

  t.test(`${device}: micro-batches with whole-batch normalizers add up to the whole batch`, async (t) => {
    const N = 9, T = 13;
    const b = randomBatch(42, N, T);
    const splits = [[0, 4], [4, 6], [6, 9]] as const;
    for (const lossType of ['grpo', 'dr_grpo', 'dapo'] as const) for (const kl of ['k3', 'k1'] as const) {
      const o: Opts = { lossType, beta: 0.04, kl, is: true, maxLen: T };
      const whole = await run(b, o, device);
      const wholeRef = refOf(b, o);
      const tokens = b.mask.reduce((a, v) => a + v, 0);
      let sum = 0;
      const grad = new Float64Array(N * T);
      for (const [from, to] of splits) {
        // Each micro-batch is padded to its own longest row, as the trainer packs it.
        let Tm = 1;
        for (let s = from; s < to; s++) for (let i = 0; i < T; i++) if (b.mask[s * T + i]) Tm = Math.max(Tm, i + 1);
        const mb = rows(b, from, to, Tm);
        const part = await run(mb, { ...o, normalizer: { sequences: N, tokens } }, device);
        sum += part.loss;
        for (let s = 0; s < mb.N; s++) for (let i = 0; i < Tm; i++) grad[(from + s) * T + i] = part.grad[s * Tm + i]!;
      }
      const tag = `${lossType} ${kl} (seed ${b.seed}, micro-batches of 4, 2, 3 rows)`;
      t.ok(Math.abs(sum - whole.loss) <= ATOL_LOSS + RTOL * Math.abs(whole.loss), `${tag}: sum of micro losses ${sum} = whole ${whole.loss}`);
      t.ok(Math.abs(sum - wholeRef.loss) <= ATOL_LOSS + RTOL * Math.abs(wholeRef.loss), `${tag}: = the float64 reference ${wholeRef.loss}`);
      const wg = worst(grad, wholeRef.grad, ATOL_GRAD, RTOL);
      t.ok(wg <= 1, `${tag}: concatenated micro gradients = whole-batch gradient (worst ratio ${wg.toFixed(3)})`);
      // Without the whole-batch normalizer the sum is wrong: the test can tell.
      let local = 0;
      for (const [from, to] of splits) local += (await run(rows(b, from, to, T), o, device)).loss;
      t.ok(Math.abs(local - whole.loss) > 1e-3 * Math.abs(whole.loss), `${tag}: local normalizers would give ${local}, not ${whole.loss}`);
    }
  });

  t.test(`${device}: bnpo normalizes by the micro-batch's own tokens (TRL's local batch), divided by the micro-batch count`, async (t) => {
    const N = 8, T = 10;
    const b = randomBatch(77, N, T);
    const splits = [[0, 3], [3, 8]] as const;
    const o: Opts = { lossType: 'bnpo', beta: 0.04, kl: 'k3', is: false };
    let sum = 0, meanOfMeans = 0;
    for (const [from, to] of splits) {
      const mb = rows(b, from, to, T);
      sum += (await run(mb, { ...o, normalizer: { microBatches: splits.length } }, device)).loss;
      meanOfMeans += refOf(mb, o).loss / splits.length;
    }
    t.ok(Math.abs(sum - meanOfMeans) <= ATOL_LOSS + RTOL * Math.abs(meanOfMeans), `sum ${sum} = mean of the micro-batches' token means ${meanOfMeans}`);
    const whole = refOf(b, o).loss;
    t.ok(Math.abs(sum - whole) > 1e-4 * Math.abs(whole), `and differs from the whole batch's token mean ${whole} when token counts differ (documented)`);
  });

  t.test(`${device}: zero-advantage sequences (zero-std groups, gold errors) contribute only their KL`, async (t) => {
    const b = randomBatch(5, 5, 8);
    b.adv.fill(0);
    for (const lossType of TYPES) {
      const none = await run(b, { lossType, beta: 0, kl: 'k3', is: false }, device);
      t.equal(none.loss, 0, `${lossType}: beta 0: zero loss`);
      t.ok(none.grad.every((v) => v === 0), `${lossType}: beta 0: exactly zero gradient`);
      const withKl = await run(b, { lossType, beta: 0.1, kl: 'k3', is: false }, device);
      const want = refOf(b, { lossType, beta: 0.1, kl: 'k3', is: false });
      t.ok(worst(withKl.grad, want.grad, ATOL_GRAD, RTOL) <= 1 && want.grad.some((v) => v !== 0), `${lossType}: beta 0.1: the KL gradient only`);
    }
  });
}
